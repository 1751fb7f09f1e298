"""Partner API keys encrypted at rest with Fernet, with key rotation.

``GRADIENT_KEY_ENCRYPTION_KEYS`` is a comma-separated list of Fernet keys: the first one
encrypts, all of them decrypt (MultiFernet), so a new key is put first and the old ones kept
until every stored partner key has been re-encrypted under the new one.

The stored keys live in the product's database, which the pipeline only reads: re-encryption
(``gradient-billing-sync rotate``) writes the new ciphertexts to a file for the product to
store; ``key_diagnosis`` says which configured key opens each stored key, so an operator
knows when an old key can be dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# What fixes a stored key no configured key opens; names only what exists.
UNDECRYPTABLE_FIX = (
    "if GRADIENT_KEY_ENCRYPTION_KEYS was changed, add the key it had before after the new one "
    "(comma-separated; `gradient-billing-sync check-config` then shows every partner's key opens, "
    "and `gradient-billing-sync rotate` re-encrypts them under the newest); otherwise the stored "
    "value is corrupt and the partner pastes its Gradient key in the product again"
)


class PartnerKeyError(ValueError):
    """A partner key cannot be encrypted or decrypted; the message says why and what to do."""


def generate_encryption_key() -> str:
    return Fernet.generate_key().decode()


def keyring(encryption_keys: str) -> MultiFernet:
    return MultiFernet(fernet_keys(encryption_keys))


def fernet_keys(encryption_keys: str) -> list[Fernet]:
    """The configured keys in order (the first encrypts), or why they do not parse."""
    keys = [k.strip() for k in (encryption_keys or "").split(",") if k.strip()]
    if not keys:
        raise PartnerKeyError(
            "GRADIENT_KEY_ENCRYPTION_KEYS is empty: set it to one or more Fernet keys "
            "(comma-separated, newest first); `gradient-billing-sync generate-encryption-key` makes one."
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise PartnerKeyError(
                f"key #{position} in GRADIENT_KEY_ENCRYPTION_KEYS is not a Fernet key "
                "(32 url-safe base64-encoded bytes)."
            ) from None
    return fernets


def encrypt_partner_key(partner_api_key: str, encryption_keys: str) -> str:
    if not partner_api_key or not partner_api_key.strip():
        raise PartnerKeyError("the partner API key is empty.")
    return keyring(encryption_keys).encrypt(partner_api_key.strip().encode()).decode()


def decrypt_partner_key(encrypted: str, encryption_keys: str, partner_id: str) -> str:
    if not encrypted:
        raise PartnerKeyError(
            f"partner {partner_id} is connected but has no stored API key; ask the partner to "
            "paste its Gradient key in the product again."
        )
    try:
        return keyring(encryption_keys).decrypt(encrypted.encode()).decode()
    except InvalidToken:
        raise PartnerKeyError(
            f"partner {partner_id}'s stored API key cannot be decrypted with any key in "
            f"GRADIENT_KEY_ENCRYPTION_KEYS: {UNDECRYPTABLE_FIX}."
        ) from None


def rotate(encrypted: str, encryption_keys: str) -> str:
    """Re-encrypt a stored key under the first (newest) encryption key."""
    try:
        return keyring(encryption_keys).rotate(encrypted.encode()).decode()
    except InvalidToken:
        raise PartnerKeyError(
            f"a stored partner key cannot be decrypted with any key in GRADIENT_KEY_ENCRYPTION_KEYS: "
            f"{UNDECRYPTABLE_FIX}."
        ) from None


@dataclass(frozen=True)
class StoredKey:
    """Which configured key opens one partner's stored key: ``opened_by`` is its position in
    GRADIENT_KEY_ENCRYPTION_KEYS (1 = the newest), None when none does (``problem`` says why)."""

    partner_id: str
    opened_by: int | None
    problem: str = ""

    @property
    def under_newest(self) -> bool:
        return self.opened_by == 1


def key_diagnosis(stored: Iterable[tuple[str, str | None]], encryption_keys: str) -> list[StoredKey]:
    """For each (partner id, stored ciphertext): the first configured key that decrypts it.
    Never returns or repeats a key; raises ``PartnerKeyError`` when the keys do not parse."""
    fernets = fernet_keys(encryption_keys)
    out = []
    for partner_id, encrypted in stored:
        if not encrypted:
            out.append(
                StoredKey(
                    partner_id,
                    None,
                    "connected but no stored API key: the partner pastes its Gradient key in the product again",
                )
            )
            continue
        opened_by = None
        for position, fernet in enumerate(fernets, start=1):
            try:
                fernet.decrypt(encrypted.encode())
            except InvalidToken:
                continue
            opened_by = position
            break
        out.append(
            StoredKey(
                partner_id,
                opened_by,
                ""
                if opened_by
                else f"no key in GRADIENT_KEY_ENCRYPTION_KEYS decrypts the stored API key: {UNDECRYPTABLE_FIX}",
            )
        )
    return out
