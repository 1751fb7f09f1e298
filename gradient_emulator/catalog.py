"""Constants of Gradient's vendor API and small helpers shared by the emulator modules."""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import secrets
import time
import uuid
from datetime import UTC, datetime

API_PREFIX = "/api/vendor-api"
ADMIN_PREFIX = "/_admin"
TOKEN_HEADER = "gradient-token"

SERVICE_CATEGORIES: frozenset[str] = frozenset(
    {"security", "backup", "productivity", "infrastructure", "service delivery", "consulting", "other"}
)

# Values of the public SDK's ServiceSubCategoryEnum, spelling quirks ("priviledged") included.
SERVICE_SUBCATEGORIES: frozenset[str] = frozenset(
    {
        "endpoint detection and response (EDR)",
        "email security",
        "virtual private network services (VPN)",
        "DNS filtering",
        "dark web monitoring",
        "password management",
        "single sign on (SSO)",
        "priviledged access and identity management (PAM/PIM)",
        "security information and event management (SIEM)",
        "mobile device management (MDM)",
        "application security",
        "mobile application management (MAM)",
        "multi factor authentication (MFA)",
        "cloud backup",
        "local backup",
        "desktop backup",
        "data archiving",
        "physical offsite storage",
        "business continuity",
        "hosted email",
        "video conferencing",
        "voice over IP services (VOIP)",
        "line of business application support",
        "unified communications as a service (UCaaS)",
        "customer relationship management",
        "cloud storage",
        "website hosting",
        "hardware as a service (HaaS)",
        "managed print services",
        "virtual desktop infrastructure (VDI)",
        "virtual server hosting",
        "infrastructure as a service (IaaS)",
        "end user support",
        "server management and support",
        "network management and support",
        "printer management and support",
        "desktop management and support",
        "hosted security operations centre (SOC)",
        "software development",
        "penetration testing",
        "project services",
        "governance and compliance",
        "business intelligence services / analytics",
        "phishing simulation",
        "privacy and security awareness training",
        # Not in the SDK enum but named in the brief; a generic bucket for endpoint products.
        "endpoint security",
        "other",
    }
)

INTEGRATION_STATUSES: frozenset[str] = frozenset({"active", "inactive", "pending", "disabled", "error"})

_PROCESS_EPOCH = int(time.time())
_ID_COUNTER = itertools.count(secrets.randbelow(1 << 32))


def new_id() -> str:
    """A 24-hex-digit id shaped like a Mongo ObjectId, strictly increasing within the process.

    Monotonic ids make keyset pagination (``previousId``) a plain string comparison.
    """
    return f"{_PROCESS_EPOCH:08x}{next(_ID_COUNTER):016x}"


def new_uuid() -> str:
    return str(uuid.uuid4())


def iso_now() -> str:
    """Current UTC time the way a JavaScript API prints it: ``2024-05-01T12:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def make_token(vendor_api_key: str, partner_api_key: str) -> str:
    """The ``GRADIENT-TOKEN`` header value: base64 of ``"<vendor key>:<partner key>"``."""
    return base64.b64encode(f"{vendor_api_key}:{partner_api_key}".encode()).decode("ascii")


def split_token(token: str) -> tuple[str, str] | None:
    """Decode a token into (vendor key, partner key), or None when it is not decodable."""
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    vendor_key, sep, partner_key = decoded.partition(":")
    if not sep or not vendor_key or not partner_key:
        return None
    return vendor_key, partner_key
