"""Partner API keys encrypted at rest with Fernet, with key rotation.

``GRADIENT_KEY_ENCRYPTION_KEYS`` is a comma-separated list of Fernet keys: the first one
encrypts, all of them decrypt (MultiFernet), so a new key is put first and the old ones kept
until every stored partner key has been re-encrypted (``rotate``).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class PartnerKeyError(ValueError):
    """A partner key cannot be encrypted or decrypted; the message says why and what to do."""


def generate_encryption_key() -> str:
    return Fernet.generate_key().decode()


def keyring(encryption_keys: str) -> MultiFernet:
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
    return MultiFernet(fernets)


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
            "GRADIENT_KEY_ENCRYPTION_KEYS: the key that encrypted it was removed (keep old keys "
            "after the new one until `rotate` has run) or the stored value is corrupt."
        ) from None


def rotate(encrypted: str, encryption_keys: str) -> str:
    """Re-encrypt a stored key under the first (newest) encryption key."""
    try:
        return keyring(encryption_keys).rotate(encrypted.encode()).decode()
    except InvalidToken:
        raise PartnerKeyError(
            "a stored partner key cannot be decrypted with any key in GRADIENT_KEY_ENCRYPTION_KEYS."
        ) from None
