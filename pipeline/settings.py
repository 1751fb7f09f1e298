"""Configuration from the environment.

Every setting has a default that needs no service: local SQLite files under ``var/`` in the
repository (or ``GBS_DATA_DIR``), so a fresh clone runs end to end as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BILLING_TIMEZONE = "America/New_York"
DEFAULT_QUARANTINE_THRESHOLD = 0.01
PACKAGE_SQL_DIR = Path(__file__).resolve().parent / "source" / "sql"


# The embedded default talks to the local Gradient emulator (`gradient-billing-sync emulator`);
# production sets GRADIENT_BASE_URL=https://app.usegradient.com and the real vendor key.
DEFAULT_GRADIENT_BASE_URL = "http://127.0.0.1:8765"
DEMO_VENDOR_API_KEY = "demo-vendor-key"


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


def data_dir() -> Path:
    return Path(os.environ.get("GBS_DATA_DIR") or REPO_ROOT / "var")


def default_product_db_url() -> str:
    return f"sqlite:///{data_dir() / 'product.db'}"


def default_state_db_url() -> str:
    return f"sqlite:///{data_dir() / 'state.db'}"


def product_db_url() -> str:
    return os.environ.get("PRODUCT_DB_URL") or default_product_db_url()


def state_db_url() -> str:
    return os.environ.get("STATE_DB_URL") or default_state_db_url()


def billing_timezone() -> str:
    name = os.environ.get("BILLING_TIMEZONE") or DEFAULT_BILLING_TIMEZONE
    return validate_timezone(name)


def validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"BILLING_TIMEZONE={name!r} is not an IANA time zone; use a name such as "
            "'America/New_York' or 'Europe/London'."
        ) from exc
    return name


def quarantine_threshold() -> float:
    raw = os.environ.get("QUARANTINE_THRESHOLD")
    if not raw:
        return DEFAULT_QUARANTINE_THRESHOLD
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"QUARANTINE_THRESHOLD={raw!r} is not a number; give a share such as 0.01 for 1 %."
        ) from exc
    if not 0 <= value <= 1:
        raise ConfigurationError(
            f"QUARANTINE_THRESHOLD={raw!r} must be a share between 0 and 1 (0.01 = 1 %)."
        )
    return value


def utilization_sql_path() -> str | None:
    """The vendor's own query file, or None for the reference schema's query."""
    return os.environ.get("UTILIZATION_SQL") or None


def local_encryption_key() -> str:
    """The embedded default's Fernet key: generated once into the data dir (mode 600).

    Only for the no-services default; deployments set GRADIENT_KEY_ENCRYPTION_KEYS.
    """
    from cryptography.fernet import Fernet

    path = data_dir() / "partner-key-encryption.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(Fernet.generate_key().decode())
    return path.read_text().strip()


def redact_url(url: str) -> str:
    """A database URL safe for logs and metadata (password hidden)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def reference_sql(dialect: str, name: str) -> Path:
    """Path of a reference-schema query for a SQLAlchemy dialect name (dialect-specific
    file when there is one, else the common one)."""
    if dialect.startswith("postgres"):
        folder = "postgresql"
    elif dialect in ("mysql", "mariadb"):
        folder = "mysql"
    else:
        folder = "sqlite"
    specific = PACKAGE_SQL_DIR / folder / name
    return specific if specific.exists() else PACKAGE_SQL_DIR / "common" / name

