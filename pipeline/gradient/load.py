"""Loading a month into Gradient: services, accounts and unit counts, with the ledger.

Plain async functions over a ``PartnerSession`` (one partner's token) and the state DB; the
Dagster assets in ``assets/gradient_load.py`` call them. The rules (``../shared/design.md``):

* a partner's counts only ever travel with its own token; a 401 puts that partner in error
  and the others go on;
* one call per (account, service); 404 = unmapped, recorded, not retried in the run;
* a pair that had a non-zero value in Gradient and has none now is sent as 0;
* ``no_build=true`` on every call of a partner's batch but the last;
* a month older than the newest month delivered to the partner is recorded as superseded,
  not pushed, unless forced (Gradient has no month: a push overwrites);
* a re-run sends only what is not already delivered with the same value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

import pandas as pd
import sqlalchemy as sa

from pipeline.gradient import ledger
from pipeline.gradient.client import GradientClient, PartnerSession, Secret
from pipeline.gradient.errors import GradientAuthError, GradientError
from pipeline.gradient.ledger import DELIVERED, FAILED, SUPERSEDED, Delivered, LedgerEntry
from pipeline.source.partners import PartnerConnection, ServiceDefinition

PENDING = "pending"
ACTIVE = "active"
ERROR = "error"
INACTIVE = "inactive"
LEDGER_BATCH = 500

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------- services


async def sync_services(
    session: PartnerSession, services: Sequence[ServiceDefinition]
) -> dict[str, tuple[str, str]]:
    """Create the vendor's missing services by name (idempotent); sku -> (service id, name)."""
    vendor = await session.get_vendor()
    by_name = {s["name"]: str(s.get("id") or s.get("_id")) for s in vendor.get("skus", [])}
    for service in services:
        if service.name in by_name:
            continue
        created = await session.create_service(
            name=service.name,
            description=service.description or service.name,
            category=service.category,
            subcategory=service.subcategory,
        )
        by_name[service.name] = str(created.get("id") or created.get("_id"))
    return {s.sku: (by_name[s.name], s.name) for s in services}


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class AccountSync:
    existing: int
    created: int
    renamed: int


async def sync_accounts(session: PartnerSession, companies: Sequence[tuple[str, str]]) -> AccountSync:
    """Read the partner's accounts, bulk-create the missing in one call, rename the renamed."""
    wanted = dict(companies)
    existing = {str(a["id"]): a for a in await session.get_accounts()}
    missing = [{"id": cid, "name": name} for cid, name in wanted.items() if cid not in existing]
    created = 0
    if missing:
        try:
            created = len(await session.create_accounts(missing))
        except GradientError as exc:
            if exc.status_code != 409:
                raise
            # Someone (or our own timed-out first attempt) created some meanwhile: read again.
            existing = {str(a["id"]): a for a in await session.get_accounts()}
            missing = [{"id": c, "name": n} for c, n in wanted.items() if c not in existing]
            created = len(await session.create_accounts(missing)) if missing else 0
    renames = [
        (cid, name)
        for cid, name in wanted.items()
        if cid in existing and existing[cid].get("name") != name
    ]
    await asyncio.gather(*(session.update_account(cid, name=name) for cid, name in renames))
    return AccountSync(existing=len(existing), created=created, renamed=len(renames))


# --------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class CountCall:
    account_id: str
    sku: str
    value: int


@dataclass(frozen=True)
class PushPlan:
    to_send: list[CountCall]
    already_delivered: int


def plan_push(
    month: date,
    counts: pd.DataFrame,
    delivered: dict[tuple[str, str], Delivered],
    service_ids: dict[str, str] | None = None,
) -> PushPlan:
    """What to send for one partner's month.

    ``counts`` holds the partner's (company_id, sku, billable_users). Pairs already delivered
    for this month with the same value (to the service's current Gradient id, when
    ``service_ids`` is given) are skipped; pairs Gradient holds with a non-zero value and that
    have no count now are sent as 0. Pairs delivered before come last, so the final call (the
    one that lets Gradient rebuild) is most likely a mapped one.
    """
    service_ids = service_ids or {}
    wanted = {
        (str(r.company_id), str(r.sku)): int(r.billable_users)
        for r in counts.itertuples(index=False)
    }
    for pair, held in delivered.items():
        if pair not in wanted and held.value != 0:
            wanted[pair] = 0
    to_send: list[CountCall] = []
    skipped = 0
    for (account_id, sku), value in sorted(wanted.items()):
        held = delivered.get((account_id, sku))
        same_service = sku not in service_ids or held is None or held.service_id == service_ids[sku]
        if held is not None and held.month == month and held.value == value and same_service:
            skipped += 1
            continue
        to_send.append(CountCall(account_id, sku, value))
    to_send.sort(key=lambda c: (c.account_id, c.sku) in delivered)
    return PushPlan(to_send=to_send, already_delivered=skipped)


@dataclass
class PartnerLoad:
    """What happened to one partner in one run."""

    partner_id: str
    outcomes: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    accounts_created: int = 0
    accounts_renamed: int = 0
    status: str | None = None
    error: str | None = None

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n

    @property
    def failed(self) -> bool:
        return self.error is not None or self.outcomes.get(FAILED, 0) > 0


class _PartnerPush:
    """Sends one partner's planned counts, writing the ledger as Gradient answers."""

    def __init__(
        self,
        session: PartnerSession,
        month: date,
        service_ids: dict[str, str],
        state: sa.Engine,
        run_id: str,
        report: PartnerLoad,
    ) -> None:
        self.session = session
        self.month = month
        self.service_ids = service_ids
        self.state = state
        self.run_id = run_id
        self.report = report
        self.auth_error: GradientAuthError | None = None
        self.pending: list[LedgerEntry] = []
        self.last_delivered: CountCall | None = None

    def entry(self, call: CountCall, outcome: str, status: int | None, detail: str | None) -> LedgerEntry:
        return LedgerEntry(
            partner_id=self.report.partner_id,
            month=self.month,
            account_id=call.account_id,
            sku=call.sku,
            service_id=self.service_ids.get(call.sku),
            value=call.value,
            outcome=outcome,
            http_status=status,
            detail=detail,
            run_id=self.run_id,
        )

    async def send(self, call: CountCall, *, no_build: bool) -> LedgerEntry:
        service_id = self.service_ids.get(call.sku)
        if service_id is None:
            return self.entry(
                call, FAILED, None,
                f"service {call.sku} does not exist in Gradient (services sync failed or it is "
                "not in SERVICES_SQL); re-run after the services sync succeeds",
            )
        if self.auth_error is not None:
            return self.entry(call, FAILED, 401, "not sent: Gradient rejected the partner's key")
        try:
            result = await self.session.set_unit_count(
                service_id, call.account_id, call.value, no_build=no_build
            )
        except GradientAuthError as exc:
            self.auth_error = exc
            return self.entry(call, FAILED, 401, str(exc))
        except GradientError as exc:
            return self.entry(call, FAILED, exc.status_code, str(exc))
        return self.entry(call, result.outcome, result.status_code, result.message)

    def keep(self, entries: Sequence[LedgerEntry]) -> None:
        self.pending.extend(entries)
        for e in entries:
            self.report.count(e.outcome)
            if e.outcome == DELIVERED:
                self.last_delivered = CountCall(e.account_id, e.sku, e.value)
        if len(self.pending) >= LEDGER_BATCH:
            self.flush()

    def flush(self) -> None:
        ledger.record(self.state, self.pending)
        self.pending = []

    async def run(self, plan: PushPlan) -> None:
        calls = plan.to_send
        head, last = calls[:-1], calls[-1:]
        for i in range(0, len(head), LEDGER_BATCH):
            batch = head[i : i + LEDGER_BATCH]
            self.keep(await asyncio.gather(*(self.send(c, no_build=True) for c in batch)))
        final = [await self.send(c, no_build=False) for c in last]
        self.keep(final)
        if final and final[0].outcome != DELIVERED and self.last_delivered and not self.auth_error:
            # The last call was not accepted, so Gradient was never told to rebuild: re-send
            # one value it did accept (same value, idempotent), without no_build.
            self.pending.append(await self.send(self.last_delivered, no_build=False))
        self.flush()


def superseded_entries(
    partner_id: str, month: date, counts: pd.DataFrame, newest: date, run_id: str
) -> list[LedgerEntry]:
    detail = (
        f"not pushed: {newest:%Y-%m} was already delivered and Gradient keeps only the latest "
        "value; force the run to roll the partner back to this month"
    )
    return [
        LedgerEntry(
            partner_id=partner_id, month=month, account_id=str(r.company_id), sku=str(r.sku),
            service_id=None, value=int(r.billable_users), outcome=SUPERSEDED, http_status=None,
            detail=detail, run_id=run_id,
        )
        for r in counts.itertuples(index=False)
    ]


@dataclass(frozen=True)
class PartnerTarget:
    """A connected partner with its decrypted key (never printed)."""

    connection: PartnerConnection
    api_key: Secret

    @property
    def partner_id(self) -> str:
        return self.connection.partner_id


def needs_onboarding(target: PartnerTarget, state: ledger.PartnerState | None) -> bool:
    """New partner, reconnected since it was last onboarded, or last seen disconnected."""
    if state is None or state.status == INACTIVE:
        return True
    connected_at = target.connection.connected_at
    return connected_at is not None and (
        state.onboarded_connection_at is None or connected_at > state.onboarded_connection_at
    )


async def onboard_partner(session: PartnerSession, target: PartnerTarget, state_db: sa.Engine, run_id: str) -> None:
    """Verify the key, tell Gradient the integration is pending, forget stale deliveries."""
    previous = ledger.partner_state(state_db, target.partner_id)
    await session.get_organization()
    await session.set_integration_status(PENDING)
    ledger.set_partner_status(
        state_db,
        target.partner_id,
        PENDING,
        run_id=run_id,
        onboarded_connection_at=target.connection.connected_at,
        reset_delivered=previous is not None,
    )


async def sync_partner_accounts(
    client: GradientClient,
    target: PartnerTarget,
    companies: Sequence[tuple[str, str]],
    state_db: sa.Engine,
    run_id: str,
    log: Log = _quiet,
) -> PartnerLoad:
    """Onboard when needed, then keep the partner's accounts in step with its companies."""
    report = PartnerLoad(target.partner_id)
    session = client.partner(target.partner_id, target.api_key)
    try:
        if needs_onboarding(target, ledger.partner_state(state_db, target.partner_id)):
            await onboard_partner(session, target, state_db, run_id)
            report.status = PENDING
            log(f"{target.partner_id}: key verified, integration set to pending")
        synced = await sync_accounts(session, companies)
    except GradientError as exc:
        return _partner_failed(report, exc, state_db, run_id, log)
    report.accounts_created = synced.created
    report.accounts_renamed = synced.renamed
    return report


def _partner_failed(report: PartnerLoad, exc: GradientError, state_db: sa.Engine, run_id: str, log: Log) -> PartnerLoad:
    report.error = str(exc)
    if isinstance(exc, GradientAuthError):
        report.status = ERROR
        ledger.set_partner_status(state_db, report.partner_id, ERROR, run_id=run_id, last_error=str(exc))
    log(f"{report.partner_id}: {exc}")
    return report


async def push_partner_month(
    client: GradientClient,
    target: PartnerTarget,
    month: date,
    counts: pd.DataFrame,
    service_ids: dict[str, str],
    state_db: sa.Engine,
    run_id: str,
    *,
    force: bool = False,
    accounts_error: str | None = None,
    log: Log = _quiet,
) -> PartnerLoad:
    """Push one partner's counts for the month under the superseded guard.

    ``accounts_error`` says the partner's accounts could not be synced in this run: nothing is
    pushed (every count would 404 and pass for "unmapped"); the planned values are recorded as
    failed so the run fails and a re-run finishes the job.
    """
    report = PartnerLoad(target.partner_id)
    newest = ledger.newest_delivered_month(state_db, target.partner_id)
    if newest is not None and month < newest and not force:
        entries = superseded_entries(target.partner_id, month, counts, newest, run_id)
        ledger.record(state_db, entries)
        report.count(SUPERSEDED, len(entries))
        log(f"{target.partner_id}: {month:%Y-%m} superseded by {newest:%Y-%m}; recorded, not pushed")
        return report
    plan = plan_push(month, counts, ledger.delivered_pairs(state_db, target.partner_id), service_ids)
    report.skipped = plan.already_delivered
    if accounts_error is not None:
        detail = f"not sent: the partner's accounts could not be synced in this run ({accounts_error})"
        entries = [
            LedgerEntry(target.partner_id, month, c.account_id, c.sku, service_ids.get(c.sku),
                        c.value, FAILED, None, detail, run_id)
            for c in plan.to_send
        ]
        ledger.record(state_db, entries)
        report.count(FAILED, len(entries))
        report.error = detail
        log(f"{target.partner_id}: {detail}")
        return report
    session = client.partner(target.partner_id, target.api_key)
    push = _PartnerPush(session, month, service_ids, state_db, run_id, report)
    if plan.to_send:
        await push.run(plan)
    if push.auth_error is not None:
        return _partner_failed(report, push.auth_error, state_db, run_id, log)
    current = ledger.partner_state(state_db, target.partner_id)
    if not report.failed and (current is None or current.status != ACTIVE):
        try:
            await session.set_integration_status(ACTIVE)
        except GradientError as exc:
            return _partner_failed(report, exc, state_db, run_id, log)
        ledger.set_partner_status(state_db, target.partner_id, ACTIVE, run_id=run_id)
        report.status = ACTIVE
    return report


async def disconnect_partner(
    client: GradientClient,
    connection: PartnerConnection,
    api_key: Secret | None,
    state_db: sa.Engine,
    run_id: str,
    log: Log = _quiet,
) -> str:
    """Stop syncing a disconnected partner and forget what it was delivered.

    Gradient drops the partner's accounts on disconnect, so a later reconnection must create
    accounts and send every count again. The integration is set ``inactive`` while the key
    still works; a key Gradient no longer accepts means it already dropped the integration.
    The ledger is reset even when Gradient cannot be reached (the error is raised afterwards,
    so the run fails and is retried).
    """
    outcome = "no stored key: Gradient not told"
    failure: GradientError | None = None
    if api_key is not None:
        try:
            await client.partner(connection.partner_id, api_key).set_integration_status(INACTIVE)
            outcome = "Gradient integration set to inactive"
        except GradientAuthError:
            outcome = "Gradient no longer accepts the key; it has dropped the integration already"
        except GradientError as exc:
            failure = exc
            outcome = f"could not tell Gradient: {exc}"
    ledger.set_partner_status(
        state_db, connection.partner_id, INACTIVE, run_id=run_id, reset_delivered=True,
        last_error=str(failure) if failure else None,
    )
    log(f"{connection.partner_id} disconnected: {outcome}; delivered state forgotten")
    if failure is not None:
        raise failure
    return outcome


async def raise_failure_alerts(
    client: GradientClient,
    targets: dict[str, PartnerTarget],
    affected: Sequence,
    run_id: str,
    max_per_partner: int,
    log: Log = _quiet,
) -> int:
    """Raise a Gradient alert on (a few of) each affected partner's failed accounts."""
    from pipeline.automation.failures import alert_text

    raised = 0
    for partner in affected:
        target = targets.get(partner.partner_id)
        if target is None or not partner.accounts:
            continue
        session = client.partner(partner.partner_id, target.api_key)
        title, description = alert_text(partner, run_id)
        for account_id in partner.accounts[:max_per_partner]:
            try:
                await session.create_alert(
                    account_id, title, description, alert_id=f"gbs-{run_id[:8]}-{account_id}", priority=3
                )
                raised += 1
            except GradientError as exc:
                log(f"{partner.partner_id}: alert for {account_id} not raised: {exc}")
                break
    return raised
