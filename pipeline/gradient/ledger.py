"""The ledger: what was sent to Gradient for each partner, month, account and service.

Append-only entries with the outcome Gradient gave (delivered, unmapped, failed) or why
nothing was sent (superseded), and ``dropped`` when Gradient no longer has the account a value
was delivered to. "Delivered" is written only after Gradient acknowledged the value with its
documented answer. A partner's delivered state counts from ``delivered_since`` (moved forward
when the partner disconnects or Gradient's side changed: see ``pipeline.gradient.identity``).
Count calls sent but not answered yet are kept apart (``unanswered_count_calls``): after a
crash they are values Gradient may hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import pandas as pd
import sqlalchemy as sa

from pipeline.gradient.identity import GradientSide
from pipeline.store.schema import (
    account_sync_failures,
    gradient_refusals,
    gradient_service_conflicts,
    gradient_services,
    gradient_side_changes,
    ledger_entries,
    month_computations,
    partner_sync_state,
    unanswered_count_calls,
    utcnow,
)

DELIVERED = "delivered"
UNMAPPED = "unmapped"
FAILED = "failed"
SUPERSEDED = "superseded"
OUTCOMES = (DELIVERED, UNMAPPED, FAILED, SUPERSEDED)
# Not an answer to a count call: Gradient no longer has the account the value was delivered to
# (deleted in Gradient); the pair is no longer delivered and the next push sends it again.
DROPPED = "dropped"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LedgerEntry:
    partner_id: str
    month: date
    account_id: str
    sku: str
    service_id: str | None
    value: int
    outcome: str
    http_status: int | None
    detail: str | None
    run_id: str
    # the billing time zone the month was counted in (set by ``record``'s caller)
    billing_timezone: str | None = None


def answers_call(entry: LedgerEntry) -> bool:
    """Whether the entry says what Gradient holds for its pair after the call: it took the
    value (delivered), has no mapping (unmapped), or refused the call (4xx). A transport error,
    a 5xx or an answer that is not Gradient's leaves the call's effect unknown."""
    if entry.outcome in (DELIVERED, UNMAPPED):
        return True
    status = entry.http_status
    return entry.outcome == FAILED and status is not None and 400 <= status < 500 and status != 429


def record(engine: sa.Engine, entries: Iterable[LedgerEntry], *, billing_timezone: str | None = None) -> int:
    """Append the entries (with ``billing_timezone`` where they have none); the unanswered
    calls they answer are removed in the same transaction."""
    now = utcnow()
    entries = list(entries)
    rows = [
        {**e.__dict__, "billing_timezone": e.billing_timezone or billing_timezone, "recorded_at": now} for e in entries
    ]
    answered: dict[str, list[tuple[str, str]]] = {}
    for e in entries:
        if answers_call(e):
            answered.setdefault(e.partner_id, []).append((e.account_id, e.sku))
    if rows:
        with engine.begin() as conn:
            conn.execute(ledger_entries.insert(), rows)
            for partner_id, pairs in answered.items():
                _forget_unanswered(conn, partner_id, pairs)
    return len(rows)


def _forget_unanswered(conn: sa.Connection, partner_id: str, pairs: Sequence[tuple[str, str]]) -> None:
    table = unanswered_count_calls
    for i in range(0, len(pairs), 400):
        conn.execute(
            sa.delete(table).where(
                table.c.partner_id == partner_id,
                sa.tuple_(table.c.account_id, table.c.sku).in_(pairs[i : i + 400]),
            )
        )


def record_unanswered(
    engine: sa.Engine, partner_id: str, month: date, calls: Sequence[tuple[str, str, int]], run_id: str
) -> None:
    """Before a batch of count calls goes out: (account, sku, value) of each call."""
    if not calls:
        return
    now = utcnow()
    with engine.begin() as conn:
        _forget_unanswered(conn, partner_id, [(a, s) for a, s, _ in calls])
        conn.execute(
            unanswered_count_calls.insert(),
            [
                {
                    "partner_id": partner_id,
                    "account_id": a,
                    "sku": s,
                    "month": month,
                    "value": v,
                    "run_id": run_id,
                    "sent_at": now,
                }
                for a, s, v in calls
            ],
        )


def unanswered_pairs(engine: sa.Engine, partner_id: str) -> dict[tuple[str, str], int]:
    """(account, sku) -> value of the partner's count calls whose answer was never recorded."""
    table = unanswered_count_calls
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.account_id, table.c.sku, table.c.value).where(table.c.partner_id == partner_id)
        ).all()
    return {(r.account_id, r.sku): r.value for r in rows}


@dataclass(frozen=True)
class PartnerState:
    partner_id: str
    status: str
    last_error: str | None
    onboarded_connection_at: datetime | None
    delivered_since: datetime
    organization_id: str | None = None
    integration_id: str | None = None
    key_fingerprint: str | None = None
    gradient_status: str | None = None


def partner_state(engine: sa.Engine, partner_id: str) -> PartnerState | None:
    with engine.connect() as conn:
        row = (
            conn.execute(sa.select(partner_sync_state).where(partner_sync_state.c.partner_id == partner_id))
            .mappings()
            .first()
        )
    if row is None:
        return None
    return PartnerState(
        partner_id=row["partner_id"],
        status=row["status"],
        last_error=row["last_error"],
        onboarded_connection_at=_aware(row["onboarded_connection_at"]),
        delivered_since=_aware(row["delivered_since"]),
        organization_id=row["organization_id"],
        integration_id=row["integration_id"],
        key_fingerprint=row["key_fingerprint"],
        gradient_status=row["gradient_status"],
    )


def all_partner_states(engine: sa.Engine) -> dict[str, PartnerState]:
    with engine.connect() as conn:
        ids = conn.execute(sa.select(partner_sync_state.c.partner_id)).scalars().all()
    return {pid: partner_state(engine, pid) for pid in ids}


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def set_partner_status(
    engine: sa.Engine,
    partner_id: str,
    status: str,
    *,
    run_id: str,
    last_error: str | None = None,
    onboarded_connection_at: datetime | None = None,
    reset_delivered: bool = False,
    gradient_side: GradientSide | None = None,
) -> None:
    """Upsert the partner's sync state; ``reset_delivered`` forgets everything delivered so far
    (and every unanswered call: Gradient holds none of it any more); ``gradient_side`` records
    which Gradient organization, integration and key the state belongs to."""
    now = utcnow()
    current = partner_state(engine, partner_id)
    values: dict[str, object] = {
        "status": status,
        "last_error": last_error,
        "run_id": run_id,
        "updated_at": now,
        "onboarded_connection_at": onboarded_connection_at
        if onboarded_connection_at is not None
        else (current.onboarded_connection_at if current else None),
        "delivered_since": now if reset_delivered or current is None else current.delivered_since,
    }
    if current is None and not reset_delivered:
        values["delivered_since"] = EPOCH
    if gradient_side is not None:
        values.update(_side_values(gradient_side))
    with engine.begin() as conn:
        if reset_delivered:
            conn.execute(sa.delete(unanswered_count_calls).where(unanswered_count_calls.c.partner_id == partner_id))
        if current is None:
            conn.execute(partner_sync_state.insert(), [{"partner_id": partner_id, **values}])
        else:
            conn.execute(
                partner_sync_state.update().where(partner_sync_state.c.partner_id == partner_id).values(**values)
            )


def _side_values(side: GradientSide) -> dict[str, object]:
    return {
        "organization_id": side.organization_id,
        "integration_id": side.integration_id,
        "key_fingerprint": side.key_fingerprint,
        "gradient_status": side.status,
    }


def record_gradient_side(engine: sa.Engine, partner_id: str, side: GradientSide) -> None:
    """What Gradient reported at this push (same organization: the delivered state holds)."""
    with engine.begin() as conn:
        conn.execute(
            partner_sync_state.update()
            .where(partner_sync_state.c.partner_id == partner_id)
            .values(**_side_values(side))
        )


def set_gradient_status(engine: sa.Engine, partner_id: str, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            partner_sync_state.update()
            .where(partner_sync_state.c.partner_id == partner_id)
            .values(gradient_status=status)
        )


@dataclass(frozen=True)
class Delivered:
    month: date
    value: int
    # where the value went; compared by plan_push, not part of a delivery's identity
    service_id: str | None = field(default=None, compare=False)


def delivered_pairs(engine: sa.Engine, partner_id: str) -> dict[tuple[str, str], Delivered]:
    """What Gradient holds for each (account, sku) of the partner: its latest delivered value,
    unless Gradient dropped the account since."""
    state = partner_state(engine, partner_id)
    since = state.delivered_since if state else EPOCH
    latest = (
        sa.select(sa.func.max(ledger_entries.c.entry_id))
        .where(
            ledger_entries.c.partner_id == partner_id,
            ledger_entries.c.outcome.in_([DELIVERED, DROPPED]),
            ledger_entries.c.recorded_at >= since,
        )
        .group_by(ledger_entries.c.account_id, ledger_entries.c.sku)
    )
    query = sa.select(
        ledger_entries.c.account_id,
        ledger_entries.c.sku,
        ledger_entries.c.month,
        ledger_entries.c.value,
        ledger_entries.c.service_id,
    ).where(ledger_entries.c.entry_id.in_(latest), ledger_entries.c.outcome == DELIVERED)
    with engine.connect() as conn:
        return {
            (r.account_id, r.sku): Delivered(month=r.month, value=r.value, service_id=r.service_id)
            for r in conn.execute(query)
        }


def record_dropped_accounts(
    engine: sa.Engine, partner_id: str, account_ids: Iterable[str], run_id: str, detail: str
) -> int:
    """Gradient no longer has these accounts: their delivered pairs are no longer delivered
    (a ``dropped`` entry each, in the month it was delivered for) and their unanswered calls are
    forgotten. Returns the pairs dropped."""
    accounts = set(account_ids)
    held = {pair: d for pair, d in delivered_pairs(engine, partner_id).items() if pair[0] in accounts}
    entries = [
        LedgerEntry(partner_id, d.month, account, sku, d.service_id, d.value, DROPPED, None, detail, run_id)
        for (account, sku), d in sorted(held.items())
    ]
    record(engine, entries)
    with engine.begin() as conn:
        conn.execute(
            sa.delete(unanswered_count_calls).where(
                unanswered_count_calls.c.partner_id == partner_id,
                unanswered_count_calls.c.account_id.in_(sorted(accounts)),
            )
        )
    return len(entries)


def delivered_timezones(engine: sa.Engine, month: date) -> set[str]:
    """The billing time zones the month's delivered values were counted in (recorded since 0006)."""
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.select(ledger_entries.c.billing_timezone)
                .where(
                    ledger_entries.c.month == month,
                    ledger_entries.c.outcome == DELIVERED,
                    ledger_entries.c.billing_timezone.is_not(None),
                )
                .distinct()
            )
            .scalars()
            .all()
        )
    return set(rows)


def newest_delivered_month(engine: sa.Engine, partner_id: str) -> date | None:
    state = partner_state(engine, partner_id)
    since = state.delivered_since if state else EPOCH
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(ledger_entries.c.month)).where(
                ledger_entries.c.partner_id == partner_id,
                ledger_entries.c.outcome == DELIVERED,
                ledger_entries.c.recorded_at >= since,
            )
        ).scalar_one_or_none()


def month_timezone(engine: sa.Engine, month: date) -> str | None:
    """The billing time zone the month's stored counts were made in, or (counted before it was
    recorded) the one its delivered values were; None when unknown or never delivered."""
    with engine.connect() as conn:
        delivered = conn.execute(
            sa.select(ledger_entries.c.entry_id)
            .where(ledger_entries.c.month == month, ledger_entries.c.outcome == DELIVERED)
            .limit(1)
        ).first()
        if delivered is None:
            return None
        counted = conn.execute(
            sa.select(month_computations.c.billing_timezone).where(month_computations.c.month == month)
        ).scalar_one_or_none()
    if counted is not None:
        return counted
    zones = delivered_timezones(engine, month)
    return zones.pop() if len(zones) == 1 else None


def timezone_change(engine: sa.Engine, month: date, billing_timezone: str) -> str | None:
    """Why counting or pushing ``month`` in ``billing_timezone`` would bill users twice or not
    at all, or None: the month was delivered, counted in another zone."""
    zone = month_timezone(engine, month)
    if zone is None or zone == billing_timezone:
        return None
    return (
        f"{month:%Y-%m} was delivered to Gradient counted in BILLING_TIMEZONE {zone}; it is now "
        f"{billing_timezone}. Counting it again would move users between months (a user billed "
        "in two months, or in none). Set BILLING_TIMEZONE back, or force the change (CLI: "
        "--allow-timezone-change; run tag gbs/allow_timezone_change=true): the month is then "
        "counted in the new zone and what changed is re-sent"
    )


def month_outcomes(engine: sa.Engine, month: date, run_id: str | None = None) -> dict[str, dict[str, int]]:
    """Entries per partner and outcome for a month (optionally one run's)."""
    query = (
        sa.select(ledger_entries.c.partner_id, ledger_entries.c.outcome, sa.func.count())
        .where(ledger_entries.c.month == month)
        .group_by(ledger_entries.c.partner_id, ledger_entries.c.outcome)
    )
    if run_id is not None:
        query = query.where(ledger_entries.c.run_id == run_id)
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for partner_id, outcome, n in conn.execute(query):
            out.setdefault(partner_id, {})[outcome] = int(n)
    return out


def record_account_sync_failure(engine: sa.Engine, run_id: str, partner_id: str, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            account_sync_failures.insert(),
            [{"run_id": run_id, "partner_id": partner_id, "error": error, "recorded_at": utcnow()}],
        )


def account_sync_failures_of(engine: sa.Engine, run_id: str) -> dict[str, str]:
    """Partners whose accounts could not be synced in this run, with the reason."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(account_sync_failures.c.partner_id, account_sync_failures.c.error).where(
                account_sync_failures.c.run_id == run_id
            )
        ).all()
    return dict(rows)


def save_service_ids(engine: sa.Engine, service_ids: dict[str, tuple[str, str]]) -> None:
    """Store sku -> (Gradient service id, name)."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.delete(gradient_services).where(gradient_services.c.sku.in_(list(service_ids))))
        if service_ids:
            conn.execute(
                gradient_services.insert(),
                [{"sku": s, "service_id": i, "name": n, "synced_at": now} for s, (i, n) in service_ids.items()],
            )


def save_service_conflicts(engine: sa.Engine, skus: Sequence[str], conflicts: dict[str, tuple[str, list[str]]]) -> None:
    """Replace the conflicts of ``skus``: sku -> (name, the Gradient ids that name maps to)."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.delete(gradient_service_conflicts).where(gradient_service_conflicts.c.sku.in_(list(skus))))
        conn.execute(sa.delete(gradient_services).where(gradient_services.c.sku.in_(list(conflicts))))
        if conflicts:
            conn.execute(
                gradient_service_conflicts.insert(),
                [
                    {"sku": sku, "name": name, "service_ids": ",".join(ids), "detected_at": now}
                    for sku, (name, ids) in conflicts.items()
                ],
            )


def service_conflicts(engine: sa.Engine) -> dict[str, str]:
    """sku -> why its counts are not pushed (its name maps to several Gradient services)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(gradient_service_conflicts)).all()
    return {
        r.sku: (
            f"not sent: Gradient has {len(r.service_ids.split(','))} services named {r.name!r} "
            f"(ids {r.service_ids}); delete the extra ones in Gradient, then re-run"
        )
        for r in rows
    }


def record_refusals(engine: sa.Engine, run_id: str, partner_id: str, refused: dict[str, str]) -> None:
    """Companies refused on the way to Gradient: item -> reason."""
    if not refused:
        return
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.delete(gradient_refusals).where(
                gradient_refusals.c.run_id == run_id, gradient_refusals.c.partner_id == partner_id
            )
        )
        conn.execute(
            gradient_refusals.insert(),
            [
                {"run_id": run_id, "partner_id": partner_id, "item": item, "reason": reason, "recorded_at": now}
                for item, reason in refused.items()
            ],
        )


def record_gradient_changes(engine: sa.Engine, run_id: str, partner_id: str, changes: Sequence[str]) -> None:
    """What this run found changed on Gradient's side for the partner (replaces earlier ones)."""
    table = gradient_side_changes
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.run_id == run_id, table.c.partner_id == partner_id))
        if changes:
            conn.execute(
                table.insert(),
                [
                    {"run_id": run_id, "partner_id": partner_id, "seq": i, "change": c, "recorded_at": now}
                    for i, c in enumerate(changes)
                ],
            )


def gradient_changes_of(engine: sa.Engine, run_id: str) -> dict[str, list[str]]:
    """partner -> what this run found changed on Gradient's side."""
    table = gradient_side_changes
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.run_id == run_id).order_by(table.c.seq)).all()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r.partner_id, []).append(r.change)
    return out


def refusals_of(engine: sa.Engine, run_id: str) -> dict[str, dict[str, str]]:
    """partner -> {item: reason} refused in this run."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(gradient_refusals).where(gradient_refusals.c.run_id == run_id)).all()
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        out.setdefault(r.partner_id, {})[r.item] = r.reason
    return out


def service_ids(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {r.sku: r.service_id for r in conn.execute(sa.select(gradient_services))}


def entries_for(engine: sa.Engine, month: date, partner_ids: Sequence[str] | None = None) -> list[dict]:
    query = sa.select(ledger_entries).where(ledger_entries.c.month == month).order_by(ledger_entries.c.entry_id)
    if partner_ids is not None:
        query = query.where(ledger_entries.c.partner_id.in_(list(partner_ids)))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


LEDGER_COLUMNS = [
    "partner",
    "account",
    "sku",
    "value",
    "outcome",
    "http_status",
    "detail",
    "recorded_at",
    "run_id",
]
TOTALS_COLUMNS = ["partner", "outcome", "pairs", "units"]


def month_ledger(engine: sa.Engine, month: date, partner_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The month's ledger as it stands: per partner, account and service the newest entry —
    the value sent (or held back), Gradient's outcome and HTTP status, and when."""
    rows = entries_for(engine, month, partner_ids)
    frame = pd.DataFrame(
        [
            {
                "partner": r["partner_id"],
                "account": r["account_id"],
                "sku": r["sku"],
                "value": r["value"],
                "outcome": r["outcome"],
                "http_status": r["http_status"],
                "detail": r["detail"] or "",
                "recorded_at": _aware(r["recorded_at"]),
                "run_id": r["run_id"],
            }
            for r in rows
        ],
        columns=LEDGER_COLUMNS,
    )
    newest = frame.drop_duplicates(["partner", "account", "sku"], keep="last")
    return newest.sort_values(["partner", "account", "sku"]).reset_index(drop=True)


def ledger_totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Pairs and units per partner and outcome of a ``month_ledger`` frame."""
    if frame.empty:
        return pd.DataFrame(columns=TOTALS_COLUMNS)
    totals = frame.groupby(["partner", "outcome"], as_index=False).agg(
        pairs=("account", "size"), units=("value", "sum")
    )
    return totals[TOTALS_COLUMNS].sort_values(["partner", "outcome"]).reset_index(drop=True)


PARTIAL = "partial"
DELIVERED_WITH_UNMAPPED = "delivered_with_unmapped"
RUN_PAIR_COLUMNS = ["partner", "account", "sku", "value", "outcome", "http_status", "detail"]


def partner_status(outcomes: dict[str, int], error: str | None = None) -> str:
    """One partner's outcome in a run: delivered (nothing left to send counts too),
    delivered_with_unmapped (Gradient answered every count, but 404 for some: those units are
    not billed until the partner maps them), superseded (an ``outcomes`` key, even at 0: the
    month had no counts for the partner), failed, or partial (some sent, some failed)."""
    sent = outcomes.get(DELIVERED, 0) + outcomes.get(UNMAPPED, 0)
    if error is not None or outcomes.get(FAILED, 0):
        return PARTIAL if sent else FAILED
    if SUPERSEDED in outcomes and not sent:
        return SUPERSEDED
    if outcomes.get(UNMAPPED, 0):
        return DELIVERED_WITH_UNMAPPED
    return DELIVERED


def month_outcome(statuses: Iterable[str]) -> str:
    """The month's outcome from its partners' statuses: all delivered (or no partner) →
    delivered; all delivered, some with unmapped pairs → delivered_with_unmapped; all
    superseded → superseded; all failed → failed; anything else mixed → partial."""
    distinct = set(statuses)
    if not distinct or distinct == {DELIVERED}:
        return DELIVERED
    if distinct <= {DELIVERED, DELIVERED_WITH_UNMAPPED}:
        return DELIVERED_WITH_UNMAPPED
    if len(distinct) == 1 and distinct <= {SUPERSEDED, FAILED}:
        return distinct.pop()
    return PARTIAL


def run_pairs(engine: sa.Engine, month: date, run_id: str) -> pd.DataFrame:
    """What one run recorded for the month, one row per ledger entry."""
    query = (
        sa.select(ledger_entries)
        .where(ledger_entries.c.month == month, ledger_entries.c.run_id == run_id)
        .order_by(ledger_entries.c.entry_id)
    )
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    return pd.DataFrame(
        [
            {
                "partner": r["partner_id"],
                "account": r["account_id"],
                "sku": r["sku"],
                "value": r["value"],
                "outcome": r["outcome"],
                "http_status": r["http_status"],
                "detail": r["detail"] or "",
            }
            for r in rows
        ],
        columns=RUN_PAIR_COLUMNS,
    )
