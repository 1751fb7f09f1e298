"""In-memory model of one Gradient vendor and its partners (thread-safe, plain Python).

Guesses about Gradient behaviour that no public source states are marked ``GUESS:``.
"""

from __future__ import annotations

import hmac
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import (
    API_PREFIX,
    INTEGRATION_STATUSES,
    SERVICE_CATEGORIES,
    SERVICE_SUBCATEGORIES,
    iso_now,
    new_id,
    new_uuid,
    sha256_hex,
    split_token,
)
from .errors import BadRequest, Conflict, NotFound, Unauthorized
from .faults import FaultConfig, FaultInjector, SlidingWindowRateLimiter
from .requestlog import RequestLog

Number = int | float

DEFAULT_VENDOR_NAME = "Emulated Vendor"
DEFAULT_INITIAL_STATUS = "inactive"


@dataclass
class Account:
    id: str
    name: str
    description: str | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description}


@dataclass
class PsaItem:
    """A company or product in the partner's PSA (what Gradient maps accounts/services to)."""

    id: str
    name: str


@dataclass
class CountRecord:
    unit_count: Number
    updated_at: str
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Partner:
    organization_id: str
    name: str
    integration_id: str
    key_fingerprint: str | None
    auto_map_all: bool = False
    status: str = DEFAULT_INITIAL_STATUS
    last_synced_at: str | None = None
    revoked: bool = False
    accounts: dict[str, Account] = field(default_factory=dict)
    psa_companies: list[PsaItem] = field(default_factory=list)
    psa_products: list[PsaItem] = field(default_factory=list)
    account_mappings: set[str] = field(default_factory=set)
    service_mappings: set[str] = field(default_factory=set)
    counts: dict[tuple[str, str], CountRecord] = field(default_factory=dict)
    billing_builds: int = 0
    last_build_at: str | None = None
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def psa_company_names(self) -> set[str]:
        return {item.name for item in self.psa_companies}

    def psa_product_names(self) -> set[str]:
        return {item.name for item in self.psa_products}


@dataclass
class Vendor:
    id: str
    name: str = DEFAULT_VENDOR_NAME
    description: str = "Vendor emulated locally for gradient-billing-sync"
    vendor_support_page_url: str | None = None
    integration_portal_url: str | None = None
    created_at: str = field(default_factory=iso_now)
    updated_at: str = field(default_factory=iso_now)
    skus: list[dict[str, Any]] = field(default_factory=list)


def _merge_psa_items(existing: list[PsaItem], names: Iterable[str]) -> list[PsaItem]:
    """New PSA list for ``names``; names already present keep their ids (stable pagination)."""
    by_name = {item.name: item for item in existing}
    merged: list[PsaItem] = []
    for name in dict.fromkeys(names):
        merged.append(by_name.get(name) or PsaItem(id=new_id(), name=name))
    return sorted(merged, key=lambda item: item.id)


class EmulatorState:
    """Everything the emulator knows: vendor, skus, partners, counts, request log, faults.

    Every public method takes the lock, so the state can be read from a test thread while the
    server thread mutates it. Partner keys are never stored: only their SHA-256 fingerprints.
    """

    def __init__(self, *, clients_page_size: int = 50, max_logged_requests: int = 10_000) -> None:
        self._lock = threading.RLock()
        self.clients_page_size = clients_page_size
        self.requests = RequestLog(max_logged_requests)
        self.faults = FaultInjector(API_PREFIX)
        self._default_rate_limit = 100
        self.rate_limiter = SlidingWindowRateLimiter(self._default_rate_limit)
        self._vendor_key_digest: str | None = None
        self._vendor = Vendor(id=new_id())
        self._partners: dict[str, Partner] = {}
        self._key_index: dict[str, str] = {}

    # -- configuration -------------------------------------------------------------------------

    def set_vendor_key(self, vendor_api_key: str) -> None:
        if not vendor_api_key or ":" in vendor_api_key:
            raise ValueError("the vendor API key must be non-empty and contain no ':'")
        with self._lock:
            self._vendor_key_digest = sha256_hex(vendor_api_key)

    def set_default_rate_limit(self, per_second: int) -> None:
        if per_second < 1:
            raise ValueError("rate_limit_per_second must be >= 1")
        with self._lock:
            self._default_rate_limit = per_second
            self._apply_rate_limit()

    def set_faults(self, config: FaultConfig) -> dict[str, Any]:
        with self._lock:
            self.faults.configure(config)
            self._apply_rate_limit()
            return self.describe_faults()

    def clear_faults(self) -> dict[str, Any]:
        with self._lock:
            self.faults.reset()
            self._apply_rate_limit()
            return self.describe_faults()

    def describe_faults(self) -> dict[str, Any]:
        described = self.faults.describe()
        described["rate_limit_per_second"] = self.rate_limiter.limit
        return described

    def _apply_rate_limit(self) -> None:
        self.rate_limiter.set_limit(self.faults.rate_limit_override or self._default_rate_limit)

    def reset(self) -> None:
        """Forget everything except the vendor key and the configured defaults."""
        with self._lock:
            self._vendor = Vendor(id=new_id())
            self._partners.clear()
            self._key_index.clear()
            self.requests.clear()
            self.faults.reset()
            self._apply_rate_limit()

    # -- authentication ------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> str:
        """Organization id of the partner the token belongs to; raises Unauthorized otherwise."""
        if not token:
            raise Unauthorized("Missing GRADIENT-TOKEN header")
        keys = split_token(token)
        if keys is None:
            raise Unauthorized("Malformed GRADIENT-TOKEN: expected base64 of '<vendor key>:<partner key>'")
        vendor_key, partner_key = keys
        with self._lock:
            digest = self._vendor_key_digest
            if digest is None or not hmac.compare_digest(digest, sha256_hex(vendor_key)):
                raise Unauthorized("Invalid vendor API key")
            organization_id = self._key_index.get(sha256_hex(partner_key))
            if organization_id is None:
                raise Unauthorized("Invalid or revoked partner API key")
            return organization_id

    def resolve_organization(self, token: str | None) -> str | None:
        try:
            return self.authenticate(token)
        except Unauthorized:
            return None

    # -- vendor and services ---------------------------------------------------------------------

    def vendor_view(self) -> dict[str, Any]:
        with self._lock:
            vendor = self._vendor
            return {
                "_id": vendor.id,
                "id": vendor.id,
                "name": vendor.name,
                "description": vendor.description,
                "integrationType": "api",
                "imageUri": None,
                "skus": [dict(sku) for sku in vendor.skus],
                "isDistributor": False,
                "integrationPortalUrl": vendor.integration_portal_url,
                "vendorSupportPageUrl": vendor.vendor_support_page_url,
                "externalIntegrationStatus": "active",
                "mappingResponsibilities": [],
                "modules": ["billing", "alerting"],
                "organizationId": None,
                "updatedAt": vendor.updated_at,
                "createdAt": vendor.created_at,
            }

    def update_vendor(self, fields: Mapping[str, str | None]) -> dict[str, Any]:
        with self._lock:
            vendor = self._vendor
            if "name" in fields:
                vendor.name = fields["name"] or vendor.name
            if "description" in fields:
                vendor.description = fields["description"] or ""
            if "vendorSupportPageUrl" in fields:
                vendor.vendor_support_page_url = fields["vendorSupportPageUrl"]
            if "integrationPortalUrl" in fields:
                vendor.integration_portal_url = fields["integrationPortalUrl"]
            vendor.updated_at = iso_now()
            return self.vendor_view()

    def create_service(
        self,
        *,
        name: str,
        description: str,
        category: str,
        subcategory: str,
        support_article: str | None = None,
        support_contact: str | None = None,
    ) -> dict[str, Any]:
        """Add a SKU and return the vendor. Gradient does not dedupe by name, neither do we."""
        if category not in SERVICE_CATEGORIES:
            raise BadRequest(f"category must be one of: {', '.join(sorted(SERVICE_CATEGORIES))}")
        if subcategory not in SERVICE_SUBCATEGORIES:
            raise BadRequest(f"subcategory '{subcategory}' is not a valid service subcategory")
        with self._lock:
            service_id = new_id()
            self._vendor.skus.append(
                {
                    "_id": service_id,
                    "id": service_id,
                    "name": name,
                    "description": description,
                    "logo": None,
                    "category": category,
                    "subcategory": subcategory,
                    "supportArticle": support_article,
                    "supportContact": support_contact,
                }
            )
            self._vendor.updated_at = iso_now()
            for partner in self._partners.values():
                if partner.auto_map_all or name in partner.psa_product_names():
                    partner.service_mappings.add(service_id)
            return self.vendor_view()

    def get_service(self, service_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._sku(service_id))

    def _sku(self, service_id: str) -> dict[str, Any]:
        for sku in self._vendor.skus:
            if sku["id"] == service_id:
                return sku
        raise NotFound(f"No service found with id: {service_id}")

    # -- partners (admin) ------------------------------------------------------------------------

    def register_partner(
        self,
        partner_key: str,
        name: str | None,
        *,
        organization_id: str | None = None,
        auto_map_all: bool | None = None,
        status: str | None = None,
    ) -> dict[str, Any]:
        """Register a partner key. Re-registering an existing organization regenerates its key:
        the old key stops working and accounts, mappings and counts stay."""
        if not partner_key:
            raise BadRequest("partner_key must be a non-empty string")
        if status is not None and status not in INTEGRATION_STATUSES:
            raise BadRequest(f"status must be one of {sorted(INTEGRATION_STATUSES)}")
        fingerprint = sha256_hex(partner_key)
        with self._lock:
            holder = self._key_index.get(fingerprint)
            if holder is not None and holder != organization_id:
                raise Conflict("this partner key is already registered to another organization")
            partner = self._partners.get(organization_id) if organization_id else None
            if partner is None:
                if not name:
                    raise BadRequest("name is required for a new partner")
                partner = self._new_partner(organization_id or new_id(), name, fingerprint)
            else:
                self._replace_key(partner, fingerprint)
                partner.name = name or partner.name
            if status is not None:
                partner.status = status
            if auto_map_all is not None:
                partner.auto_map_all = auto_map_all
            if partner.auto_map_all:
                self._map_everything(partner)
            return self._partner_summary(partner)

    def _new_partner(self, organization_id: str, name: str, fingerprint: str) -> Partner:
        partner = Partner(
            organization_id=organization_id,
            name=name,
            integration_id=new_id(),
            key_fingerprint=fingerprint,
        )
        self._partners[organization_id] = partner
        self._key_index[fingerprint] = organization_id
        return partner

    def _replace_key(self, partner: Partner, fingerprint: str) -> None:
        if partner.key_fingerprint is not None:
            self._key_index.pop(partner.key_fingerprint, None)
        partner.key_fingerprint = fingerprint
        partner.revoked = False
        self._key_index[fingerprint] = partner.organization_id

    def _map_everything(self, partner: Partner) -> None:
        partner.account_mappings.update(partner.accounts)
        partner.service_mappings.update(sku["id"] for sku in self._vendor.skus)

    def revoke_partner(self, organization_id: str) -> dict[str, Any]:
        with self._lock:
            partner = self._partner(organization_id)
            if partner.key_fingerprint is not None:
                self._key_index.pop(partner.key_fingerprint, None)
            partner.key_fingerprint = None
            partner.revoked = True
            return self._partner_summary(partner)

    def _partner(self, organization_id: str) -> Partner:
        partner = self._partners.get(organization_id)
        if partner is None:
            raise NotFound(f"No partner with organization id: {organization_id}")
        return partner

    def _partner_summary(self, partner: Partner) -> dict[str, Any]:
        return {
            "organization_id": partner.organization_id,
            "name": partner.name,
            "integration_id": partner.integration_id,
            "status": partner.status,
            "revoked": partner.revoked,
            "auto_map_all": partner.auto_map_all,
        }

    def set_psa_companies(self, organization_id: str, names: Iterable[str]) -> list[dict[str, str]]:
        """Replace the partner's PSA companies; accounts with an identical name get mapped."""
        with self._lock:
            partner = self._partner(organization_id)
            partner.psa_companies = _merge_psa_items(partner.psa_companies, names)
            companies = partner.psa_company_names()
            for account in partner.accounts.values():
                if account.name in companies:
                    partner.account_mappings.add(account.id)
            return [{"id": item.id, "name": item.name} for item in partner.psa_companies]

    def set_psa_products(self, organization_id: str, names: Iterable[str]) -> list[dict[str, str]]:
        """Replace the partner's PSA products; services with an identical name get mapped."""
        with self._lock:
            partner = self._partner(organization_id)
            partner.psa_products = _merge_psa_items(partner.psa_products, names)
            products = partner.psa_product_names()
            for sku in self._vendor.skus:
                if sku["name"] in products:
                    partner.service_mappings.add(sku["id"])
            return [{"id": item.id, "name": item.name} for item in partner.psa_products]

    def map_account(self, organization_id: str, account_id: str, mapped: bool = True) -> None:
        with self._lock:
            partner = self._partner(organization_id)
            if account_id not in partner.accounts:
                raise NotFound(f"No account found with id: {account_id}")
            if mapped:
                partner.account_mappings.add(account_id)
            else:
                partner.account_mappings.discard(account_id)

    def map_service(self, organization_id: str, service_id: str, mapped: bool = True) -> None:
        with self._lock:
            partner = self._partner(organization_id)
            self._sku(service_id)
            if mapped:
                partner.service_mappings.add(service_id)
            else:
                partner.service_mappings.discard(service_id)

    # -- organization (partner-scoped) ------------------------------------------------------------

    def integration_view(self, organization_id: str) -> dict[str, Any]:
        with self._lock:
            partner = self._partner(organization_id)
            return {
                "organizationId": partner.organization_id,
                "name": partner.name,
                "vendorId": self._vendor.id,
                "vendorName": self._vendor.name,
                "integrationId": partner.integration_id,
                "status": partner.status,
                "lastSyncedAt": partner.last_synced_at,
            }

    def set_status(self, organization_id: str, status: str) -> dict[str, Any]:
        """Set the integration status; ``inactive`` drops the partner's accounts (as Gradient does)."""
        if status not in INTEGRATION_STATUSES:
            raise BadRequest(f"status must be one of: {', '.join(sorted(INTEGRATION_STATUSES))}")
        with self._lock:
            partner = self._partner(organization_id)
            partner.status = status
            if status == "inactive":
                partner.accounts.clear()
                partner.account_mappings.clear()
                partner.counts.clear()
            if status == "active":
                partner.last_synced_at = iso_now()
            return self.integration_view(organization_id)

    def list_clients(
        self, organization_id: str, search: str | None, previous_id: str | None
    ) -> dict[str, Any]:
        """Keyset page of the partner's PSA companies.

        GUESS: the item shape (``{"id","name"}``) and the ``meta`` fields are not documented.
        """
        with self._lock:
            partner = self._partner(organization_id)
            needle = (search or "").casefold()
            matching = [item for item in partner.psa_companies if needle in item.name.casefold()]
            after = [item for item in matching if not previous_id or item.id > previous_id]
            page = after[: self.clients_page_size]
            return {
                "meta": {
                    "total": len(matching),
                    "count": len(page),
                    "pageSize": self.clients_page_size,
                    "previousId": previous_id or None,
                    "lastId": page[-1].id if page else None,
                    "hasMore": len(after) > len(page),
                },
                "clients": [{"id": item.id, "name": item.name} for item in page],
            }

    # -- accounts ----------------------------------------------------------------------------------

    def list_accounts(self, organization_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [account.view() for account in self._partner(organization_id).accounts.values()]

    def create_accounts(self, organization_id: str, items: list[Account]) -> list[dict[str, Any]]:
        """All-or-nothing bulk create.

        GUESS: an id that already exists, or appears twice in the array, answers 409 and nothing
        is created (Gradient does not document duplicate handling).
        """
        with self._lock:
            partner = self._partner(organization_id)
            ids = Counter(item.id for item in items)
            duplicated = sorted(i for i, n in ids.items() if n > 1)
            if duplicated:
                raise Conflict(f"Duplicate account ids in request: {', '.join(duplicated)}")
            existing = sorted(i for i in ids if i in partner.accounts)
            if existing:
                raise Conflict(f"Accounts already exist with ids: {', '.join(existing)}")
            companies = partner.psa_company_names()
            for item in items:
                partner.accounts[item.id] = item
                if partner.auto_map_all or item.name in companies:
                    partner.account_mappings.add(item.id)
            return [item.view() for item in items]

    def delete_account(self, organization_id: str, account_id: str) -> dict[str, Any]:
        """Delete one account with its mapping and counts (what Gradient, or the partner in
        Gradient, can do behind the vendor's back); returns what was removed."""
        with self._lock:
            partner = self._partner(organization_id)
            account = partner.accounts.pop(account_id, None)
            if account is None:
                raise NotFound(f"No account found with id: {account_id}")
            partner.account_mappings.discard(account_id)
            dropped = [key for key in partner.counts if key[0] == account_id]
            for key in dropped:
                del partner.counts[key]
            return {"organization_id": organization_id, "account": account.view(), "counts_deleted": len(dropped)}

    def update_account(
        self, organization_id: str, account_id: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Patch id/name/description. A new id carries the mapping and counts along (Gradient maps
        its own account record, not the vendor id). A new name equal to a PSA company auto-maps."""
        with self._lock:
            partner = self._partner(organization_id)
            account = partner.accounts.get(account_id)
            if account is None:
                raise NotFound(f"No account found with id: {account_id}")
            new_id_value = fields.get("id", account.id)
            if new_id_value != account.id and new_id_value in partner.accounts:
                raise Conflict(f"An account already exists with id: {new_id_value}")
            if "name" in fields:
                account.name = fields["name"]
            if "description" in fields:
                account.description = fields["description"]
            if new_id_value != account.id:
                self._rekey_account(partner, account, new_id_value)
            if partner.auto_map_all or account.name in partner.psa_company_names():
                partner.account_mappings.add(account.id)
            return account.view()

    def _rekey_account(self, partner: Partner, account: Account, new_account_id: str) -> None:
        old = account.id
        account.id = new_account_id
        partner.accounts = {
            (new_account_id if key == old else key): value for key, value in partner.accounts.items()
        }
        if old in partner.account_mappings:
            partner.account_mappings.discard(old)
            partner.account_mappings.add(new_account_id)
        partner.counts = {
            ((new_account_id if acc == old else acc), svc): record
            for (acc, svc), record in partner.counts.items()
        }

    # -- counts ------------------------------------------------------------------------------------

    def set_count(
        self, organization_id: str, service_id: str, account_id: str, unit_count: Number, *, no_build: bool
    ) -> None:
        """Overwrite the (account, service) count; 404 when either is unknown or unmapped.

        GUESS: the account check comes before the service check (the documented 404 message is
        about the account map); the service message mirrors it.
        """
        with self._lock:
            partner = self._partner(organization_id)
            if account_id not in partner.accounts or account_id not in partner.account_mappings:
                raise NotFound(f"No account map found with id: {account_id}")
            if not any(sku["id"] == service_id for sku in self._vendor.skus) or (
                service_id not in partner.service_mappings
            ):
                raise NotFound(f"No service map found with id: {service_id}")
            now = iso_now()
            record = partner.counts.get((account_id, service_id))
            if record is None:
                record = partner.counts[(account_id, service_id)] = CountRecord(unit_count, now)
            record.unit_count = unit_count
            record.updated_at = now
            record.history.append({"unit_count": unit_count, "no_build": no_build, "at": now})
            if not no_build:
                partner.billing_builds += 1
                partner.last_build_at = now

    # -- alerts ------------------------------------------------------------------------------------

    def create_alert(self, organization_id: str, account_id: str, alert: Mapping[str, Any]) -> dict[str, str]:
        """Queue an alert. GUESS: delivery fails (visible in the debug endpoint) when the account
        does not exist or is not mapped, the way an unmapped count does."""
        with self._lock:
            partner = self._partner(organization_id)
            message_id = new_uuid()
            deliverable = account_id in partner.accounts and account_id in partner.account_mappings
            partner.alerts[message_id] = {
                "messageId": message_id,
                "accountId": account_id,
                "alert": dict(alert),
                "status": "success" if deliverable else "failed",
                "errors": [] if deliverable else [f"No account map found with id: {account_id}"],
                "createdAt": iso_now(),
            }
            return {"messageId": message_id, "alertId": alert["alertId"], "correlationID": new_uuid()}

    def alert_status(self, organization_id: str, message_id: str) -> dict[str, Any]:
        with self._lock:
            alert = self._partner(organization_id).alerts.get(message_id)
            if alert is None:
                raise NotFound(f"No alert message found with id: {message_id}")
            return {"status": alert["status"], "errors": list(alert["errors"]), "messageId": message_id}

    # -- admin views ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything, for tests and the demo; partners by organization id, never by key."""
        with self._lock:
            return {
                "vendor": self.vendor_view(),
                "partners": {org: self._partner_snapshot(p) for org, p in self._partners.items()},
            }

    def _partner_snapshot(self, partner: Partner) -> dict[str, Any]:
        return {
            **self._partner_summary(partner),
            "last_synced_at": partner.last_synced_at,
            "psa_companies": [item.name for item in partner.psa_companies],
            "psa_products": [item.name for item in partner.psa_products],
            "accounts": [account.view() for account in partner.accounts.values()],
            "account_mappings": sorted(partner.account_mappings),
            "service_mappings": sorted(partner.service_mappings),
            "counts": [
                {
                    "account_id": acc,
                    "service_id": svc,
                    "unit_count": rec.unit_count,
                    "updated_at": rec.updated_at,
                }
                for (acc, svc), rec in partner.counts.items()
            ],
            "billing_builds": partner.billing_builds,
            "last_build_at": partner.last_build_at,
            "alerts": [dict(alert) for alert in partner.alerts.values()],
        }

    def counts_report(self) -> list[dict[str, Any]]:
        with self._lock:
            names = {sku["id"]: sku["name"] for sku in self._vendor.skus}
            return [
                {
                    "organization_id": partner.organization_id,
                    "partner_name": partner.name,
                    "account_id": account_id,
                    "account_name": partner.accounts[account_id].name
                    if account_id in partner.accounts
                    else None,
                    "service_id": service_id,
                    "service_name": names.get(service_id),
                    "unit_count": record.unit_count,
                    "updated_at": record.updated_at,
                    "history": [dict(entry) for entry in record.history],
                }
                for partner in self._partners.values()
                for (account_id, service_id), record in partner.counts.items()
            ]
