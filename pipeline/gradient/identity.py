"""Which Gradient a partner's delivered state belongs to, and when that belief is void.

The ledger says what Gradient acknowledged; it stays true only while the partner's token
reaches the same Gradient organization and integration, and that integration keeps its
accounts. A push asks ``GET /organization`` when the key changed or believed accounts are
missing (``pipeline.gradient.load``) and compares what Gradient reports with what the
delivered state was recorded against: another organization,
another integration, or an integration that is neither ``active`` nor ``pending`` (Gradient
drops the accounts and counts of an inactive integration) voids the partner's delivered state,
so the push treats the partner as newly connected and sends every pair again.

Keys are compared by fingerprint only: a salted SHA-256 prefix, enough to tell two keys apart,
never enough to recover one (a partner key is a long random secret).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

# Integration statuses under which Gradient keeps the partner's accounts and counts.
HOLDING_STATUSES = frozenset({"active", "pending"})
_FINGERPRINT_SALT = b"gradient-billing-sync partner key fingerprint\0"


def key_fingerprint(api_key: str) -> str:
    """16 hex characters that tell two partner keys apart; never the key."""
    return hashlib.sha256(_FINGERPRINT_SALT + api_key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class GradientSide:
    """What Gradient reported for a partner's token at a push."""

    organization_id: str | None
    integration_id: str | None
    status: str | None
    key_fingerprint: str

    @classmethod
    def from_organization(cls, organization: dict[str, Any], fingerprint: str) -> GradientSide:
        def text(name: str) -> str | None:
            value = organization.get(name)
            return None if value is None or value == "" else str(value)

        return cls(text("organizationId"), text("integrationId"), text("status"), fingerprint)


class RecordedSide(Protocol):
    """What the delivered state was recorded against (``ledger.PartnerState``)."""

    organization_id: str | None
    integration_id: str | None
    key_fingerprint: str | None


def _short(value: str | None) -> str:
    return "unknown" if value is None else repr(value[:64])


def void_reason(recorded: RecordedSide | None, side: GradientSide) -> str | None:
    """Why the delivered state recorded for the partner no longer describes what Gradient
    holds, or None when it still does.

    A key regenerated in the same organization keeps the state (Gradient keeps the accounts).
    A new key whose organization cannot be compared (Gradient did not name it, or the state
    predates identities) is treated as another organization: re-sending is harmless, a stale
    bill is not.
    """
    if recorded is not None:
        changed = _identity_change(recorded, side)
        if changed is not None:
            return changed
    if side.status is not None and side.status not in HOLDING_STATUSES:
        return (
            f"Gradient reports the integration as {side.status[:32]!r}, under which it drops the "
            "partner's accounts and counts"
        )
    return None


def _identity_change(recorded: RecordedSide, side: GradientSide) -> str | None:
    if recorded.organization_id is not None and side.organization_id is not None:
        if recorded.organization_id != side.organization_id:
            return (
                f"the partner's key now belongs to another Gradient organization "
                f"({_short(side.organization_id)}, was {_short(recorded.organization_id)}); the "
                "old organization keeps the counts last sent to it until the partner disconnects it "
                "in Gradient"
            )
        if (
            recorded.integration_id is not None
            and side.integration_id is not None
            and recorded.integration_id != side.integration_id
        ):
            return (
                f"Gradient reports another integration ({_short(side.integration_id)}, was "
                f"{_short(recorded.integration_id)}) for the partner's organization"
            )
        return None
    if recorded.key_fingerprint is not None and recorded.key_fingerprint != side.key_fingerprint:
        return "the partner's key changed and Gradient's organization cannot be compared"
    return None
