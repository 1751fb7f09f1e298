"""What the sensors decide, as plain functions: which events and months need a run.

Sensors keep a cursor so each evaluation looks only at what is new; the ledger's partner
state makes the decisions idempotent (a partner already onboarded for a connection is not
onboarded again, even with a lost cursor).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from pipeline.billing.month import BillingMonth, add_months, last_closed_month
from pipeline.gradient import ledger
from pipeline.settings import load_settings, reference_sql
from pipeline.source.partners import CONNECTED, DISCONNECTED, PartnerConnection, as_utc
from pipeline.source.utilization import SourceQuery

# --------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class ConnectionEvent:
    partner_id: str
    kind: str  # connected | disconnected
    at: datetime

    @property
    def run_key(self) -> str:
        return f"{self.kind}:{self.partner_id}:{self.at.isoformat()}"


def _event_time(connection: PartnerConnection) -> datetime | None:
    if connection.state == CONNECTED:
        return connection.connected_at or connection.updated_at
    return connection.disconnected_at or connection.updated_at


def connection_events(
    connections: Iterable[PartnerConnection],
    kind: str,
    cursor: str | None,
    states: dict[str, ledger.PartnerState | None],
) -> tuple[list[ConnectionEvent], str]:
    """New ``kind`` events since the cursor that the ledger has not handled yet.

    The cursor maps partner -> the last event time seen. A connection counts as handled when
    the ledger already onboarded it (connect) or already marked the partner inactive since
    (disconnect), so re-delivering a lost cursor triggers no double work.
    """
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    events: list[ConnectionEvent] = []
    for connection in connections:
        if connection.state != kind:
            continue
        at = _event_time(connection)
        if at is None:
            continue
        stamp = at.isoformat()
        if seen.get(connection.partner_id) == stamp:
            continue
        seen[connection.partner_id] = stamp
        state = states.get(connection.partner_id)
        if kind == CONNECTED and _already_onboarded(state, at):
            continue
        if kind == DISCONNECTED and (state is None or state.status == "inactive"):
            continue
        events.append(ConnectionEvent(connection.partner_id, kind, at))
    return events, json.dumps(seen, sort_keys=True)


def _already_onboarded(state: ledger.PartnerState | None, connected_at: datetime) -> bool:
    return (
        state is not None
        and state.status != "inactive"
        and state.onboarded_connection_at is not None
        and state.onboarded_connection_at >= connected_at
    )


# --------------------------------------------------------------------------- sync requests

UPDATE_COUNTS = "update_counts"
SYNC_ACCOUNTS = "sync_accounts"


@dataclass(frozen=True)
class SyncRequest:
    request_id: int
    partner_id: str
    kind: str
    requested_at: datetime | None

    @property
    def run_key(self) -> str:
        return f"sync-request:{self.request_id}"


def load_sync_requests(conn: sa.Connection, sql_path: str | None, after_id: int, limit: int) -> list[SyncRequest]:
    query = SourceQuery.load(sql_path or reference_sql(conn.dialect.name, "sync_requests.sql"))
    rows = conn.execute(sa.text(query.sql), {"after_id": after_id}).mappings().fetchmany(limit)
    return [
        SyncRequest(
            request_id=int(r["request_id"]),
            partner_id=str(r["partner_id"]),
            kind=str(r["kind"]),
            requested_at=as_utc(r["requested_at"]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class WaitingRequests:
    """The requests of one partner and kind not served yet: ids ``first``..``last``, ``count`` of them."""

    partner_id: str
    kind: str
    first: int
    last: int
    count: int

    @property
    def run_key(self) -> str:
        """The newest request's: unique (each request waits in one group) and new after every
        run, so a request made once a run finished always gets a run of its own."""
        return f"sync-request:{self.last}"

    @property
    def served(self) -> str:
        if self.count == 1:
            return f"request {self.last}"
        return f"{self.count} requests {self.first}..{self.last}"

    def merged(self, request: SyncRequest) -> WaitingRequests:
        return WaitingRequests(
            self.partner_id,
            self.kind,
            min(self.first, request.request_id),
            max(self.last, request.request_id),
            self.count + 1,
        )


@dataclass(frozen=True)
class SyncRequestsCursor:
    """The sync-requests sensor's cursor: the last request id read, and the requests read but
    waiting for a run of their partner and kind to finish. An old cursor (an id alone) reads
    as that id with nothing waiting."""

    after: int = 0
    waiting: tuple[WaitingRequests, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> SyncRequestsCursor:
        if not text:
            return cls()
        if text.strip().isdigit():
            return cls(after=int(text))
        data = json.loads(text)
        return cls(after=int(data["after"]), waiting=tuple(WaitingRequests(*w) for w in data.get("waiting", [])))

    def dumps(self) -> str:
        waiting = [[w.partner_id, w.kind, w.first, w.last, w.count] for w in self.waiting]
        return json.dumps({"after": self.after, "waiting": waiting}, sort_keys=True)


@dataclass(frozen=True)
class SyncRequestPlan:
    """What one tick of the sync-requests sensor does: the groups to run now, the groups
    served by a run already queued (it starts after them, so it serves them), the requests
    ignored and why, and the next cursor."""

    to_run: list[WaitingRequests]
    served_by_queued: list[tuple[WaitingRequests, str]]
    ignored: list[str]
    cursor: SyncRequestsCursor


def plan_sync_requests(
    cursor: SyncRequestsCursor,
    new_requests: Sequence[SyncRequest],
    connected: set[str],
    queued_runs: dict[tuple[str, str], str],
    running: set[tuple[str, str]],
) -> SyncRequestPlan:
    """Coalesce the product's button presses: one run per partner and kind at a time.

    ``queued_runs``: (partner, kind) -> the id of a run of theirs that has not started yet;
    it serves every request made before it starts. ``running``: (partner, kind) with a run
    started: it may have read the product already, so requests made meanwhile wait (in the
    cursor) and get one run of their own once it has finished. Otherwise the waiting requests
    of a partner and kind become one run. Nothing is dropped but a request of a partner that
    is not connected or of an unknown kind."""
    groups = {(w.partner_id, w.kind): w for w in cursor.waiting}
    after = cursor.after
    ignored = []
    for request in new_requests:
        after = max(after, request.request_id)
        if request.partner_id not in connected:
            ignored.append(f"request {request.request_id}: {request.partner_id} is not connected; ignored")
            continue
        if request.kind not in (UPDATE_COUNTS, SYNC_ACCOUNTS):
            ignored.append(f"request {request.request_id}: unknown kind {request.kind!r}; ignored")
            continue
        key = (request.partner_id, request.kind)
        group = groups.get(key)
        groups[key] = (
            group.merged(request)
            if group
            else WaitingRequests(request.partner_id, request.kind, request.request_id, request.request_id, 1)
        )
    to_run, served, waiting = [], [], []
    for key, group in sorted(groups.items(), key=lambda item: item[1].last):
        if group.partner_id not in connected:  # disconnected while its requests waited
            ignored.append(f"{group.served} of {group.partner_id}: no longer connected; ignored")
        elif key in queued_runs:
            served.append((group, queued_runs[key]))
        elif key in running:
            waiting.append(group)
        else:
            to_run.append(group)
    return SyncRequestPlan(to_run, served, ignored, SyncRequestsCursor(after, tuple(waiting)))


# --------------------------------------------------------------------------- months


def scheduled_load_time(month: BillingMonth) -> datetime:
    """When the schedule loads ``month``: in the next month, on the schedule's day and time
    (BILLING_SCHEDULE_DAY / _TIME / _TIMEZONE; by default the 1st, 08:00 America/New_York)."""
    settings = load_settings()
    nxt = add_months(month.month, 1).replace(day=settings.billing_schedule_day)
    return datetime.combine(nxt, settings.schedule_time, tzinfo=ZoneInfo(settings.schedule_timezone))


def watched_months(now: datetime, tz_name: str, lookback: int, first_month: date) -> list[BillingMonth]:
    """Closed months, newest last, whose scheduled load is due (with an hour's grace)."""
    newest = last_closed_month(now, tz_name)
    months = []
    for back in range(lookback - 1, -1, -1):
        month = BillingMonth(add_months(newest.month, -back), tz_name)
        if month.month < first_month:
            continue
        if now < scheduled_load_time(month) + timedelta(hours=1):
            continue
        months.append(month)
    return months


@dataclass(frozen=True)
class MonthDecision:
    month: BillingMonth
    reason: str
    run_key: str


def decide_months(
    months: Sequence[BillingMonth],
    loaded: set[str],
    in_progress: set[str],
    stored_fingerprints: dict[date, str],
    current_fingerprints: dict[date, str],
    today: date,
    stored_runs: dict[date, str] | None = None,
) -> list[MonthDecision]:
    """Months to request again: never successfully loaded, or source changed since counted.

    ``stored_fingerprints`` / ``current_fingerprints``: digests of the month's source
    watermark as recorded when it was counted and as read now; ``stored_runs``: the run that
    recorded it. A missed month is asked for at most once a day (the run key carries the day);
    a late month once per change: the run key carries the run that recorded the watermark and
    the new one, so a source that goes A -> B -> A -> B is re-run every time.
    """
    stored_runs = stored_runs or {}
    decisions = []
    for month in months:
        if month.key in in_progress:
            continue
        if month.key not in loaded:
            decisions.append(
                MonthDecision(
                    month,
                    f"missed: {month.label} has no successful load into Gradient",
                    f"missed:{month.key}:{today.isoformat()}",
                )
            )
            continue
        stored = stored_fingerprints.get(month.month)
        current = current_fingerprints.get(month.month)
        if stored and current and stored != current:
            decisions.append(
                MonthDecision(
                    month,
                    f"late: {month.label}'s source data changed after it was loaded "
                    f"(source watermark {stored[:12]} -> {current[:12]})",
                    f"late:{month.key}:{stored_runs.get(month.month, stored[:16])}:{current[:16]}",
                )
            )
    return decisions
