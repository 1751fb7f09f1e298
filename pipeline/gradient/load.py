"""Loading a month into Gradient: services, accounts and unit counts, with the ledger.

Plain async functions over a ``PartnerSession`` (one partner's token) and the state DB; the
Dagster assets in ``assets/gradient_load.py`` call them. The rules:

* a partner's counts only ever travel with its own token; a 401 puts that partner in error
  and the others go on;
* one call per (account, service); 404 = unmapped, recorded, not retried in the run;
* a pair that had a non-zero value in Gradient and has none now is sent as 0;
* ``no_build=true`` on every call of a partner's batch but the last;
* a month older than the newest month delivered to the partner is recorded as superseded,
  not pushed, unless forced (Gradient has no month: a push overwrites);
* a re-run sends only what is not already delivered with the same value, once the ledger is
  known to still describe Gradient: every push asks Gradient which organization and
  integration the key reaches and which accounts it holds (``pipeline.gradient.identity``);
  another organization or integration, or an integration Gradient reports neither active nor
  pending, voids the partner's delivered state; an account Gradient no longer has voids its
  pairs; either way they are sent again;
* a call whose answer was never recorded (the crash window) counts as possibly held: sent
  again, and sent as 0 when its pair has no users now;
* ``resend`` sends every pair whatever the ledger says (for what Gradient lost unseen);
* one push per partner at a time, whoever starts it (``pipeline.gradient.locks``): the
  superseded guard and the plan are decided inside the lock; services are synced under a
  vendor-wide lock and never created twice under one name;
* ids and names Gradient cannot take are refused with a reason (``pipeline.gradient.ids``);
* the ledger is written every 100 answers or every second (the crash window), by a writer
  thread so the event loop never waits on a commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date

import pandas as pd
import sqlalchemy as sa

from pipeline.gradient import ledger, locks
from pipeline.gradient.client import GradientClient, PartnerSession, Secret
from pipeline.gradient.errors import GradientAuthError, GradientError
from pipeline.gradient.identity import GradientSide, key_fingerprint, void_reason
from pipeline.gradient.ids import account_id_problem, company_problem, name_problem, service_id_problem
from pipeline.gradient.ledger import DELIVERED, FAILED, SUPERSEDED, Delivered, LedgerEntry
from pipeline.source.partners import PartnerConnection, ServiceDefinition

PENDING = "pending"
ACTIVE = "active"
ERROR = "error"
INACTIVE = "inactive"
# Ledger writes during a push (the crash window, see _PartnerPush): whichever comes first.
LEDGER_FLUSH_ENTRIES = 100
LEDGER_FLUSH_SECONDS = 1.0
# Count calls scheduled at once (the client's semaphore bounds those in flight).
SEND_CHUNK = 500
# Ledger writes of every push go through this one thread, off the event loop, one at a time.
_LEDGER_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradient-ledger")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class ServiceSync:
    """sku -> (Gradient id, name) for the services that map to exactly one id; the skus whose
    name Gradient holds under several ids (never pushed to); every duplicated name in Gradient."""

    ids: dict[str, tuple[str, str]]
    conflicts: dict[str, tuple[str, list[str]]]
    duplicates: dict[str, list[str]]
    created: int = 0
    # services not synced because Gradient cannot take their name: sku -> reason
    refused: dict[str, str] = field(default_factory=dict)


def _retryable(exc: GradientError) -> bool:
    return exc.status_code is None or exc.status_code == 429 or 500 <= exc.status_code <= 599


async def _services_by_name(session: PartnerSession) -> dict[str, list[str]]:
    vendor = await session.get_vendor()
    by_name: dict[str, list[str]] = {}
    for sku in vendor.get("skus", []):
        sid = sku.get("id") or sku.get("_id")
        if sid is not None and str(sid) not in by_name.setdefault(sku.get("name"), []):
            by_name[sku.get("name")].append(str(sid))
    return by_name


async def sync_services(
    session: PartnerSession,
    services: Sequence[ServiceDefinition],
    *,
    attempts: int = 4,
    backoff_seconds: float = 0.5,
) -> ServiceSync:
    """Create the vendor's missing services by name, never two of one name.

    ``POST /service`` is sent once per attempt; after a failed or unanswered attempt the
    services are read again by name before another (the lost answer may hide a creation).
    Run it under the services lock (``sync_vendor_services``) so two runs cannot both create.
    """
    by_name = await _services_by_name(session)
    created = 0
    for service in services:
        tries = 0
        while not by_name.get(service.name):
            tries += 1
            try:
                sku = await session.create_service(
                    name=service.name,
                    description=service.description or service.name,
                    category=service.category,
                    subcategory=service.subcategory,
                )
                by_name[service.name] = [str(sku.get("id") or sku.get("_id"))]
                created += 1
            except GradientError as exc:
                if not _retryable(exc) or tries >= attempts:
                    raise
                await asyncio.sleep(backoff_seconds * 2 ** (tries - 1))
                by_name = await _services_by_name(session)
    ids: dict[str, tuple[str, str]] = {}
    conflicts: dict[str, tuple[str, list[str]]] = {}
    for service in services:
        found = by_name[service.name]
        if len(found) == 1:
            ids[service.sku] = (found[0], service.name)
        else:
            conflicts[service.sku] = (service.name, sorted(found))
    duplicates = {str(name): sorted(found) for name, found in by_name.items() if len(found) > 1}
    return ServiceSync(ids=ids, conflicts=conflicts, duplicates=duplicates, created=created)


async def sync_vendor_services(
    client: GradientClient,
    targets: Sequence[PartnerTarget],
    services: Sequence[ServiceDefinition],
    state_db: sa.Engine,
    run_id: str,
    *,
    lock_wait_seconds: float = locks.DEFAULT_WAIT_SECONDS,
) -> ServiceSync:
    """Sync services under the vendor-wide services lock and store the result.

    Vendor-level calls need a partner's token; the first connected partner whose key Gradient
    accepts is used. A service whose name Gradient cannot take (``pipeline.gradient.ids``) is
    not created (``refused``, with the reason); its counts then fail, the others go on.
    """
    refused = {
        s.sku: f"SERVICES_SQL returned a name Gradient cannot take: {problem}; fix the service's name"
        for s in services
        if (problem := name_problem(s.name, "service name"))
    }
    services = [s for s in services if s.sku not in refused]
    async with locks.holding(state_db, locks.SERVICES_LOCK, run_id, wait_seconds=lock_wait_seconds):
        last_error: GradientError | None = None
        for target in targets:
            try:
                synced = await sync_services(client.partner(target.partner_id, target.api_key), services)
                break
            except GradientAuthError as exc:
                last_error = exc
        else:
            assert last_error is not None
            raise last_error
        ledger.save_service_conflicts(state_db, [s.sku for s in services], synced.conflicts)
        ledger.save_service_ids(state_db, synced.ids)
    return replace(synced, refused=refused)


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class AccountSync:
    existing: int
    created: int
    renamed: int
    # the account ids Gradient held before this sync created any
    found: frozenset[str] = frozenset()


async def sync_accounts(
    session: PartnerSession,
    companies: Sequence[tuple[str, str]],
    accounts: Sequence[dict] | None = None,
) -> AccountSync:
    """Read the partner's accounts (unless ``accounts`` were just read), bulk-create the
    missing in one call, rename the renamed."""
    wanted = dict(companies)
    if accounts is None:
        accounts = await session.get_accounts()
    existing = {str(a["id"]): a for a in accounts}
    found = frozenset(existing)
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
    renames = [(cid, name) for cid, name in wanted.items() if cid in existing and existing[cid].get("name") != name]
    await asyncio.gather(*(session.update_account(cid, name=name) for cid, name in renames))
    return AccountSync(existing=len(existing), created=created, renamed=len(renames), found=found)


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
    unanswered: dict[tuple[str, str], int] | None = None,
    *,
    resend: bool = False,
) -> PushPlan:
    """What to send for one partner's month.

    ``counts`` holds the partner's (company_id, sku, billable_users). Pairs already delivered
    for this month with the same value (to the service's current Gradient id, when
    ``service_ids`` is given) are skipped, unless ``resend``; pairs Gradient holds with a
    non-zero value and that have no count now are sent as 0. ``unanswered`` pairs (sent, answer
    never recorded) may hold anything: never skipped, and sent as 0 when they have no count
    now. Pairs delivered before come last, so the final call (the one that lets Gradient
    rebuild) is most likely a mapped one.
    """
    service_ids = service_ids or {}
    unanswered = unanswered or {}
    wanted = {(str(r.company_id), str(r.sku)): int(r.billable_users) for r in counts.itertuples(index=False)}
    for pair, held in delivered.items():
        if pair not in wanted and held.value != 0:
            wanted[pair] = 0
    for pair in unanswered:
        wanted.setdefault(pair, 0)
    to_send: list[CountCall] = []
    skipped = 0
    for (account_id, sku), value in sorted(wanted.items()):
        held = delivered.get((account_id, sku))
        same_service = sku not in service_ids or held is None or held.service_id == service_ids[sku]
        certain = not resend and (account_id, sku) not in unanswered
        if certain and held is not None and held.month == month and held.value == value and same_service:
            skipped += 1
            continue
        to_send.append(CountCall(account_id, sku, value))
    to_send.sort(key=lambda c: (c.account_id, c.sku) in delivered or (c.account_id, c.sku) in unanswered)
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
    # seconds spent waiting for another run's push of this partner (the state-DB lock)
    waited_seconds: float = 0.0
    # companies refused on the way to Gradient: company id -> reason
    refused: dict[str, str] = field(default_factory=dict)
    # what Gradient reported that voided (part of) the delivered state, so it is sent again
    gradient_changes: list[str] = field(default_factory=list)

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n

    @property
    def failed(self) -> bool:
        return self.error is not None or self.outcomes.get(FAILED, 0) > 0

    @property
    def summary(self) -> str:
        """What this run did for the partner, e.g. ``waited 4.1 s; delivered 12, superseded 0``."""
        parts = [f"waited {self.waited_seconds:.1f} s for another push"] if self.waited_seconds >= 0.5 else []
        parts += [f"{o} {n}" for o, n in sorted(self.outcomes.items())]
        if self.refused:
            parts.append(f"{len(self.refused)} compan{'y' if len(self.refused) == 1 else 'ies'} refused")
        parts += [f"Gradient changed: {change}" for change in self.gradient_changes]
        if self.error:
            parts.append(f"error: {self.error}")
        return "; ".join(parts) or "nothing to send"


class _PartnerPush:
    """Sends one partner's planned counts, writing the ledger as Gradient answers.

    Crash window: acknowledged calls are written to the ledger every ``LEDGER_FLUSH_ENTRIES``
    answers or every ``LEDGER_FLUSH_SECONDS``, whichever comes first, and at the end. The
    writes run in a thread (``_LEDGER_WRITER``), one at a time, while answers keep coming; the
    push returns only once everything is written. A crash (kill -9) loses at most the
    acknowledgements of that last second or 100 answers (plus those that came during the one
    write in progress, a few milliseconds' worth), plus the calls in flight (at most the
    client's ``max_concurrency``): a re-run sends those again, with the same values (a count
    call overwrites, so values stay exact).
    """

    def __init__(
        self,
        session: PartnerSession,
        month: date,
        service_ids: dict[str, str],
        state: sa.Engine,
        run_id: str,
        report: PartnerLoad,
        service_conflicts: dict[str, str] | None = None,
        lock: locks.HeldLock | None = None,
        billing_timezone: str | None = None,
    ) -> None:
        self.session = session
        self.billing_timezone = billing_timezone
        self.month = month
        self.service_ids = service_ids
        self.service_conflicts = service_conflicts or {}
        self.state = state
        self.run_id = run_id
        self.report = report
        self.lock = lock
        self.auth_error: GradientAuthError | None = None
        self.pending: list[LedgerEntry] = []
        self.last_delivered: CountCall | None = None
        self.flushed_at = time.monotonic()
        self.due = asyncio.Event()
        self.closing = False
        self.write_error: Exception | None = None

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
        if call.sku in self.service_conflicts:
            return self.entry(call, FAILED, None, self.service_conflicts[call.sku])
        service_id = self.service_ids.get(call.sku)
        if service_id is None:
            return self.entry(
                call,
                FAILED,
                None,
                f"service {call.sku} does not exist in Gradient (services sync failed or it is "
                "not in SERVICES_SQL); re-run after the services sync succeeds",
            )
        problem = service_id_problem(service_id)
        if problem is not None:
            return self.entry(call, FAILED, None, f"not sent: {problem}")
        if self.auth_error is not None:
            # no HTTP status: nothing went out, so this says nothing of what Gradient holds (an
            # earlier unanswered value of the pair stays possibly held)
            return self.entry(call, FAILED, None, "not sent: Gradient rejected the partner's key (401)")
        if self.lock is not None and self.lock.lost:
            return self.entry(
                call,
                FAILED,
                None,
                "not sent: this run lost its push lease of the partner (the state database "
                "could not be reached to renew it); re-run the month",
            )
        try:
            result = await self.session.set_unit_count(service_id, call.account_id, call.value, no_build=no_build)
        except GradientAuthError as exc:
            self.auth_error = exc
            return self.entry(call, FAILED, 401, str(exc))
        except GradientError as exc:
            return self.entry(call, FAILED, exc.status_code, str(exc))
        return self.entry(call, result.outcome, result.status_code, result.message)

    def keep(self, entry: LedgerEntry) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.pending.append(entry)
        self.report.count(entry.outcome)
        if entry.outcome == DELIVERED:
            self.last_delivered = CountCall(entry.account_id, entry.sku, entry.value)
        if len(self.pending) >= LEDGER_FLUSH_ENTRIES or time.monotonic() - self.flushed_at >= LEDGER_FLUSH_SECONDS:
            self.due.set()

    async def _write_ledger(self) -> None:
        """The ledger writer: writes what is pending whenever it is due, in a thread (a commit
        waits on the disk or the network; on the event loop it would hold every request back).
        One write at a time per partner; answers keep coming while it writes."""
        loop = asyncio.get_running_loop()
        while True:
            await self.due.wait()
            self.due.clear()
            batch, self.pending = self.pending, []
            self.flushed_at = time.monotonic()
            if batch:
                try:
                    await loop.run_in_executor(_LEDGER_WRITER, self._record, batch)
                except BaseException as exc:
                    self.write_error = exc if isinstance(exc, Exception) else None
                    raise
            if self.closing and not self.pending:
                return

    def _record(self, batch: list[LedgerEntry]) -> None:
        ledger.record(self.state, batch, billing_timezone=self.billing_timezone)

    async def _note_unanswered(self, calls: Sequence[CountCall]) -> None:
        """Record the calls about to go out (through the ledger writer, so after every answer
        already pending): until their answers are written they count as possibly held."""
        rows = [(c.account_id, c.sku, c.value) for c in calls]
        await asyncio.get_running_loop().run_in_executor(
            _LEDGER_WRITER, ledger.record_unanswered, self.state, self.report.partner_id, self.month, rows, self.run_id
        )

    async def _flush_every_interval(self) -> None:
        while True:
            await asyncio.sleep(LEDGER_FLUSH_SECONDS)
            self.due.set()

    async def _close_ledger(self, writer: asyncio.Task) -> None:
        """Write everything still pending and wait for it (raises what the writer raised)."""
        self.closing = True
        self.due.set()
        try:
            await asyncio.shield(writer)
        except asyncio.CancelledError:
            # cancelled while closing: the answers still get written before we go
            await writer
            raise

    async def _send_and_keep(self, call: CountCall, *, no_build: bool) -> LedgerEntry:
        entry = await self.send(call, no_build=no_build)
        self.keep(entry)
        return entry

    async def run(self, plan: PushPlan) -> None:
        calls = plan.to_send
        head, last = calls[:-1], calls[-1:]
        writer = asyncio.create_task(self._write_ledger())
        ticker = asyncio.create_task(self._flush_every_interval())
        try:
            for i in range(0, len(head), SEND_CHUNK):
                chunk = head[i : i + SEND_CHUNK]
                await self._note_unanswered(chunk)
                await asyncio.gather(*(self._send_and_keep(c, no_build=True) for c in chunk))
            await self._note_unanswered(last)
            final = [await self._send_and_keep(c, no_build=False) for c in last]
            if final and final[0].outcome != DELIVERED and self.last_delivered and not self.auth_error:
                # The last call was not accepted, so Gradient was never told to rebuild:
                # re-send one value it did accept (same value, idempotent), without no_build.
                self.pending.append(await self.send(self.last_delivered, no_build=False))
        finally:
            ticker.cancel()
            await self._close_ledger(writer)


def superseded_entries(
    partner_id: str, month: date, counts: pd.DataFrame, newest: date, run_id: str
) -> list[LedgerEntry]:
    detail = (
        f"not pushed: {newest:%Y-%m} was already delivered and Gradient keeps only the latest "
        "value; force the run to roll the partner back to this month"
    )
    return [
        LedgerEntry(
            partner_id=partner_id,
            month=month,
            account_id=str(r.company_id),
            sku=str(r.sku),
            service_id=None,
            value=int(r.billable_users),
            outcome=SUPERSEDED,
            http_status=None,
            detail=detail,
            run_id=run_id,
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


async def onboard_partner(
    session: PartnerSession,
    target: PartnerTarget,
    state_db: sa.Engine,
    run_id: str,
    side: GradientSide | None = None,
) -> GradientSide:
    """Verify the key (``side``: what ``GET /organization`` already answered), tell Gradient the
    integration is pending, forget stale deliveries, record which Gradient they now belong to."""
    previous = ledger.partner_state(state_db, target.partner_id)
    if side is None:
        side = await gradient_side(session, target)
    await session.set_integration_status(PENDING)
    side = replace(side, status=PENDING)
    ledger.set_partner_status(
        state_db,
        target.partner_id,
        PENDING,
        run_id=run_id,
        onboarded_connection_at=target.connection.connected_at,
        reset_delivered=previous is not None,
        gradient_side=side,
    )
    return side


async def gradient_side(session: PartnerSession, target: PartnerTarget) -> GradientSide:
    """Which Gradient organization and integration the partner's key reaches, and its status."""
    organization = await session.get_organization()
    return GradientSide.from_organization(organization, key_fingerprint(target.api_key.get_secret_value()))


def _held_accounts(state_db: sa.Engine, partner_id: str) -> set[str]:
    """Accounts the ledger believes hold a value of the partner (delivered or unanswered)."""
    held = {account for account, _ in ledger.delivered_pairs(state_db, partner_id)}
    return held | {account for account, _ in ledger.unanswered_pairs(state_db, partner_id)}


async def _check_gradient_side(
    session: PartnerSession,
    target: PartnerTarget,
    state_db: sa.Engine,
    run_id: str,
    report: PartnerLoad,
    log: Log,
    *,
    accounts_missing: bool = False,
) -> bool:
    """Onboard a new or reconnected partner. Otherwise, when the key is not the one the
    delivered state was recorded with (or ``accounts_missing``: Gradient lacks accounts the
    ledger believes hold counts), ask Gradient which organization and integration the key
    reaches and in which status, and onboard again when the delivered state no longer
    describes it (``identity.void_reason``). Returns whether the delivered state was voided.

    An unchanged key with every believed account present costs no request here: Gradient
    drops an integration's accounts when it goes inactive, so the accounts read (one request,
    made anyway) is what reveals it.
    """
    state = ledger.partner_state(state_db, target.partner_id)
    fingerprint = key_fingerprint(target.api_key.get_secret_value())
    onboarding = needs_onboarding(target, state)
    if not onboarding and not accounts_missing and state is not None and state.key_fingerprint == fingerprint:
        return False
    side = await gradient_side(session, target)
    reason = None if onboarding or state is None else void_reason(state, side)
    if reason is not None:
        report.gradient_changes.append(f"{reason}; every pair is sent again")
        log(f"{target.partner_id}: {reason}; its delivered state is void and every pair is sent again")
    if onboarding or reason is not None:
        await onboard_partner(session, target, state_db, run_id, side)
        report.status = PENDING
        log(f"{target.partner_id}: key verified, integration set to pending")
        return reason is not None
    ledger.record_gradient_side(state_db, target.partner_id, side)
    return False


NULL_COMPANY_FIX = (
    "COMPANIES_SQL returned a NULL company_id or company_name: the company is not sent to "
    'Gradient (it would become an account named "None"); fix the product\'s companies row or '
    "make COMPANIES_SQL return a non-null id and name for every company"
)


def split_companies(companies: Sequence[tuple[object, object]]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(company id, name) pairs Gradient can take, and the refused ones: id -> reason."""
    valid: list[tuple[str, str]] = []
    refused: dict[str, str] = {}
    for company_id, name in companies:
        problem = company_problem(company_id, name)
        if problem is None:
            valid.append((str(company_id), str(name)))
        elif company_id is None or name is None:
            refused["NULL" if company_id is None else str(company_id)] = f"{problem}: {NULL_COMPANY_FIX}"
        else:
            refused[str(company_id)] = f"not sent: {problem}"
    return valid, refused


def _lock_timeout(report: PartnerLoad, exc: locks.LockTimeout, what: str, log: Log) -> PartnerLoad:
    report.error = f"{exc}; {what} nothing was sent for this partner — re-run once the other push is done"
    log(f"{report.partner_id}: {report.error}")
    return report


async def sync_partner_accounts(
    client: GradientClient,
    target: PartnerTarget,
    companies: Sequence[tuple[object, object]],
    state_db: sa.Engine,
    run_id: str,
    log: Log = _quiet,
    *,
    lock_wait_seconds: float = locks.DEFAULT_WAIT_SECONDS,
) -> PartnerLoad:
    """Onboard when needed, then keep the partner's accounts in step with its companies.

    Runs under the partner's push lock. Companies whose id or name Gradient cannot take
    (``pipeline.gradient.ids``) are refused with the reason in ``report.refused``; the
    others go on.
    """
    report = PartnerLoad(target.partner_id)
    valid, report.refused = split_companies(companies)
    for company, reason in report.refused.items():
        log(f"{target.partner_id}: company {company[:80]!r} refused: {reason}")
    session = client.partner(target.partner_id, target.api_key)
    try:
        async with locks.holding(
            state_db, locks.partner_lock_name(target.partner_id), run_id, wait_seconds=lock_wait_seconds
        ) as held:
            report.waited_seconds = held.waited_seconds
            await _check_gradient_side(session, target, state_db, run_id, report, log)
            believed = _held_accounts(state_db, target.partner_id)
            accounts = await session.get_accounts()
            gone = sorted(believed - {str(a["id"]) for a in accounts})
            if gone and await _check_gradient_side(
                session, target, state_db, run_id, report, log, accounts_missing=True
            ):
                gone = []  # the whole delivered state is void: everything is sent again
            if gone:
                detail = (
                    "Gradient no longer has this account (deleted in Gradient): its value is no "
                    "longer delivered; the account is created again and the value re-sent"
                )
                pairs = ledger.record_dropped_accounts(state_db, target.partner_id, gone, run_id, detail)
                change = f"{len(gone)} account(s) with delivered counts missing in Gradient ({pairs} pair(s)); re-created and re-sent"
                report.gradient_changes.append(change)
                log(f"{target.partner_id}: {change}: {', '.join(repr(a[:64]) for a in gone[:10])}")
            synced = await sync_accounts(session, valid, accounts)
    except locks.LockTimeout as exc:
        return _lock_timeout(report, exc, "accounts not synced;", log)
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


def _refused_in_counts(counts: pd.DataFrame) -> dict[str, str]:
    """Company ids of ``counts`` Gradient cannot take (or whose name it cannot take): id -> reason."""
    names = "company_name" in counts.columns
    refused: dict[str, str] = {}
    for r in counts.drop_duplicates("company_id").itertuples(index=False):
        problem = account_id_problem(r.company_id) or (name_problem(r.company_name) if names else None)
        if problem is not None:
            refused[str(r.company_id)] = f"not sent: {problem}"
    return refused


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
    service_conflicts: dict[str, str] | None = None,
    lock_wait_seconds: float = locks.DEFAULT_WAIT_SECONDS,
    log: Log = _quiet,
    resend: bool = False,
    billing_timezone: str | None = None,
) -> PartnerLoad:
    """Push one partner's counts for the month, under the partner's push lock.

    ``resend`` sends every pair whatever the ledger says; ``billing_timezone`` (the zone the
    counts were made in) is recorded with every entry.

    Only one push of a partner runs at a time, whoever starts it: a second one waits up to
    ``lock_wait_seconds`` (``report.waited_seconds``) and then decides the superseded guard and
    what is left to send against the ledger as it is *now*, or stops with ``report.error``.

    ``accounts_error`` says the partner's accounts could not be synced in this run: nothing is
    pushed (every count would 404 and pass for "unmapped"); the planned values are recorded as
    failed so the run fails and a re-run finishes the job. Counts of companies Gradient cannot
    take and of services whose name maps to several Gradient ids (``service_conflicts``: sku ->
    reason) are recorded as failed with the reason; the rest goes on.
    """
    report = PartnerLoad(target.partner_id)
    try:
        async with locks.holding(
            state_db, locks.partner_lock_name(target.partner_id), run_id, wait_seconds=lock_wait_seconds
        ) as held:
            report.waited_seconds = held.waited_seconds
            if held.waited_seconds >= 0.5:
                log(f"{target.partner_id}: waited {held.waited_seconds:.1f} s for another run's push")
            return await _push_locked(
                client,
                target,
                month,
                counts,
                service_ids,
                state_db,
                run_id,
                report,
                held,
                force=force,
                accounts_error=accounts_error,
                service_conflicts=service_conflicts or {},
                log=log,
                resend=resend,
                billing_timezone=billing_timezone,
            )
    except locks.LockTimeout as exc:
        return _lock_timeout(report, exc, f"{month:%Y-%m} not pushed;", log)


async def _push_locked(
    client: GradientClient,
    target: PartnerTarget,
    month: date,
    counts: pd.DataFrame,
    service_ids: dict[str, str],
    state_db: sa.Engine,
    run_id: str,
    report: PartnerLoad,
    held: locks.HeldLock,
    *,
    force: bool,
    accounts_error: str | None,
    service_conflicts: dict[str, str],
    log: Log,
    resend: bool = False,
    billing_timezone: str | None = None,
) -> PartnerLoad:
    newest = ledger.newest_delivered_month(state_db, target.partner_id)
    if newest is not None and month < newest and not force:
        entries = superseded_entries(target.partner_id, month, counts, newest, run_id)
        ledger.record(state_db, entries, billing_timezone=billing_timezone)
        report.count(SUPERSEDED, len(entries))
        log(f"{target.partner_id}: {month:%Y-%m} superseded by {newest:%Y-%m}; recorded, not pushed")
        return report
    refused = _refused_in_counts(counts)
    if refused:
        report.refused = refused
        refused_rows = counts[counts.company_id.astype(str).isin(list(refused))]
        entries = [
            LedgerEntry(
                target.partner_id,
                month,
                str(r.company_id),
                str(r.sku),
                service_ids.get(str(r.sku)),
                int(r.billable_users),
                FAILED,
                None,
                refused[str(r.company_id)],
                run_id,
            )
            for r in refused_rows.itertuples(index=False)
        ]
        ledger.record(state_db, entries, billing_timezone=billing_timezone)
        report.count(FAILED, len(entries))
        for company, reason in refused.items():
            log(f"{target.partner_id}: company {company[:80]!r} {reason}")
        counts = counts[~counts.company_id.astype(str).isin(list(refused))]
    delivered = {
        pair: held_value
        for pair, held_value in ledger.delivered_pairs(state_db, target.partner_id).items()
        if pair[0] not in refused
    }
    unanswered = {
        pair: value
        for pair, value in ledger.unanswered_pairs(state_db, target.partner_id).items()
        if pair[0] not in refused
    }
    plan = plan_push(month, counts, delivered, service_ids, unanswered, resend=resend)
    report.skipped = plan.already_delivered
    if accounts_error is not None:
        detail = f"not sent: the partner's accounts could not be synced in this run ({accounts_error})"
        entries = [
            LedgerEntry(
                target.partner_id,
                month,
                c.account_id,
                c.sku,
                service_ids.get(c.sku),
                c.value,
                FAILED,
                None,
                detail,
                run_id,
            )
            for c in plan.to_send
        ]
        ledger.record(state_db, entries, billing_timezone=billing_timezone)
        report.count(FAILED, len(entries))
        report.error = detail
        log(f"{target.partner_id}: {detail}")
        return report
    session = client.partner(target.partner_id, target.api_key)
    push = _PartnerPush(
        session, month, service_ids, state_db, run_id, report, service_conflicts, held, billing_timezone
    )
    if plan.to_send:
        await push.run(plan)
    if push.auth_error is not None:
        return _partner_failed(report, push.auth_error, state_db, run_id, log)
    current = ledger.partner_state(state_db, target.partner_id)
    stale = current is None or current.status != ACTIVE or current.gradient_status not in (None, ACTIVE)
    if not report.failed and stale:
        try:
            await session.set_integration_status(ACTIVE)
        except GradientError as exc:
            return _partner_failed(report, exc, state_db, run_id, log)
        ledger.set_partner_status(state_db, target.partner_id, ACTIVE, run_id=run_id)
        ledger.set_gradient_status(state_db, target.partner_id, ACTIVE)
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
        state_db,
        connection.partner_id,
        INACTIVE,
        run_id=run_id,
        reset_delivered=True,
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
    """Raise a Gradient alert on (a few of) each affected partner's failed accounts; an account
    id that Gradient's id limits refuse (``ids.account_id_problem``) gets none, and is logged."""
    from pipeline.automation.failures import alert_accounts, alert_text
    from pipeline.outputs import one_line

    raised = 0
    for partner in affected:
        target = targets.get(partner.partner_id)
        if target is None or not partner.accounts:
            continue
        accounts, skipped = alert_accounts(partner, max_per_partner)
        for account_id, problem in skipped.items():
            log(f"{one_line(partner.partner_id, 80)}: no alert for account {one_line(account_id, 60)!r}: {problem}")
        session = client.partner(partner.partner_id, target.api_key)
        title, description = alert_text(partner, run_id)
        for account_id in accounts:
            try:
                await session.create_alert(
                    account_id, title, description, alert_id=f"gbs-{run_id[:8]}-{account_id}", priority=3
                )
                raised += 1
            except GradientError as exc:
                log(f"{one_line(partner.partner_id, 80)}: alert for {one_line(account_id, 60)!r} not raised: {exc}")
                break
    return raised
