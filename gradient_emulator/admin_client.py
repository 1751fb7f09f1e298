"""Small synchronous httpx client for the emulator's admin API (tests and the demo)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import httpx

from .catalog import ADMIN_PREFIX

JsonObject = dict[str, Any]
_RATE_OF_KIND = {"maintenance_page": "maintenance_rate", "empty_answer": "empty_answer_rate", "trickle": "trickle_rate"}


def _segment(value: str) -> str:
    return quote(value, safe="")


class EmulatorAdmin:
    """Every method raises ``httpx.HTTPStatusError`` when the admin API answers an error."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EmulatorAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        response = self._client.request(method, f"{ADMIN_PREFIX}{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    def _object(self, method: str, path: str, body: Any = None) -> JsonObject:
        return cast(JsonObject, self._call(method, path, body))

    def _list(self, method: str, path: str, body: Any = None) -> list[JsonObject]:
        return cast(list[JsonObject], self._call(method, path, body))

    def _partner_path(self, organization_id: str, suffix: str) -> str:
        return f"/partners/{_segment(organization_id)}{suffix}"

    def _mapping_path(self, organization_id: str, kind: str, item_id: str) -> str:
        return self._partner_path(organization_id, f"/{kind}-mappings/{_segment(item_id)}")

    def health(self) -> JsonObject:
        return self._object("GET", "/health")

    def register_partner(
        self,
        partner_key: str,
        name: str | None = None,
        organization_id: str | None = None,
        *,
        auto_map_all: bool | None = None,
        status: str | None = None,
    ) -> JsonObject:
        """Register (or, for a known organization, regenerate) a partner key; returns the partner
        summary (``organization_id``, ``name``, ``integration_id``, ``status``, ...)."""
        body: dict[str, Any] = {"partner_key": partner_key}
        optional = {
            "name": name,
            "organization_id": organization_id,
            "auto_map_all": auto_map_all,
            "status": status,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return self._object("POST", "/partners", body)

    def revoke_partner(self, organization_id: str) -> JsonObject:
        return self._object("POST", self._partner_path(organization_id, "/revoke"))

    def set_integration_status(self, organization_id: str, status: str) -> JsonObject:
        """Set the organization's integration status behind the vendor's back; ``inactive`` drops
        its accounts, mappings and counts. Returns ``GET /organization``'s view."""
        return self._object("PUT", self._partner_path(organization_id, "/status"), {"status": status})

    def delete_account(self, organization_id: str, account_id: str) -> JsonObject:
        """Delete one account of the organization with its mapping and counts; returns
        ``{"organization_id", "account", "counts_deleted"}``."""
        return self._object("POST", self._partner_path(organization_id, "/delete-account"), {"account_id": account_id})

    def set_psa_companies(self, organization_id: str, names: Iterable[str]) -> list[JsonObject]:
        return self._list("PUT", self._partner_path(organization_id, "/psa-companies"), list(names))

    def set_psa_products(self, organization_id: str, names: Iterable[str]) -> list[JsonObject]:
        return self._list("PUT", self._partner_path(organization_id, "/psa-products"), list(names))

    def map_account(self, organization_id: str, account_id: str) -> JsonObject:
        return self._object("POST", self._mapping_path(organization_id, "account", account_id))

    def unmap_account(self, organization_id: str, account_id: str) -> JsonObject:
        return self._object("DELETE", self._mapping_path(organization_id, "account", account_id))

    def map_service(self, organization_id: str, service_id: str) -> JsonObject:
        return self._object("POST", self._mapping_path(organization_id, "service", service_id))

    def unmap_service(self, organization_id: str, service_id: str) -> JsonObject:
        return self._object("DELETE", self._mapping_path(organization_id, "service", service_id))

    def state(self) -> JsonObject:
        return self._object("GET", "/state")

    def counts(self) -> list[JsonObject]:
        return self._list("GET", "/counts")

    def requests(self) -> list[JsonObject]:
        return self._list("GET", "/requests")

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def faults(self) -> JsonObject:
        return self._object("GET", "/faults")

    def set_faults(self, faults: Mapping[str, Any] | None = None, **settings: Any) -> JsonObject:
        """Replace the fault settings, e.g. ``set_faults(error_rate=1.0, paths=["/service"])``."""
        return self._object("PUT", "/faults", {**(faults or {}), **settings})

    def answer_count_calls(self, kind: str, *, trickle_interval_seconds: float | None = None) -> JsonObject:
        """Make every count call (``POST /service/{id}/count``) answer badly until faults are
        cleared: ``"maintenance_page"`` (200 text/html, nothing stored), ``"empty_answer"`` (201,
        empty body, nothing stored) or ``"trickle"`` (stored, then the answer sent one byte every
        ``trickle_interval_seconds``). Replaces the other fault settings."""
        rate = _RATE_OF_KIND.get(kind)
        if rate is None:
            raise ValueError(f"Unknown count-call answer {kind!r}: use one of {sorted(_RATE_OF_KIND)}")
        settings: dict[str, Any] = {rate: 1.0, "paths": ["/service/"], "methods": ["POST"]}
        if trickle_interval_seconds is not None:
            settings["trickle_interval_seconds"] = trickle_interval_seconds
        return self.set_faults(settings)

    def clear_faults(self) -> JsonObject:
        return self._object("DELETE", "/faults")

    def reset(self) -> None:
        self._call("POST", "/reset")
