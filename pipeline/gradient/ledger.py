"""The ledger: what was sent to Gradient for each partner, month, account and service.

Append-only entries with the outcome Gradient gave (delivered, unmapped, failed) or why
nothing was sent (superseded). "Delivered" is written only after Gradient acknowledged the
value. A partner's delivered state counts from ``delivered_since`` (moved forward when the
partner disconnects: Gradient drops its accounts, so everything must be sent again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pandas as pd
import sqlalchemy as sa

from pipeline.store.schema import (
    account_sync_failures,
    gradient_refusals,
    gradient_service_conflicts,
    gradient_services,
    ledger_entries,
    partner_sync_state,
    utcnow,
)

DELIVERED = "delivered"
UNMAPPED = "unmapped"
FAILED = "failed"
SUPERSEDED = "superseded"
OUTCOMES = (DELIVERED, UNMAPPED, FAILED, SUPERSEDED)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


def record(engine: sa.Engine, entries: Iterable[LedgerEntry]) -> int:
    now = utcnow()
    rows = [{**e.__dict__, "recorded_at": now} for e in entries]
    if rows:
        with engine.begin() as conn:
            conn.execute(ledger_entries.insert(), rows)
    return len(rows)


@dataclass(frozen=True)
class PartnerState:
    partner_id: str
    status: str
    last_error: str | None
    onboarded_connection_at: datetime | None
    delivered_since: datetime


def partner_state(engine: sa.Engine, partner_id: str) -> PartnerState | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(partner_sync_state).where(partner_sync_state.c.partner_id == partner_id)
        ).mappings().first()
    if row is None:
        return None
    return PartnerState(
        partner_id=row["partner_id"],
        status=row["status"],
        last_error=row["last_error"],
        onboarded_connection_at=_aware(row["onboarded_connection_at"]),
        delivered_since=_aware(row["delivered_since"]),
    )


def all_partner_states(engine: sa.Engine) -> dict[str, PartnerState]:
    with engine.connect() as conn:
        ids = conn.execute(sa.select(partner_sync_state.c.partner_id)).scalars().all()
    return {pid: partner_state(engine, pid) for pid in ids}


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def set_partner_status(
    engine: sa.Engine,
    partner_id: str,
    status: str,
    *,
    run_id: str,
    last_error: str | None = None,
    onboarded_connection_at: datetime | None = None,
    reset_delivered: bool = False,
) -> None:
    """Upsert the partner's sync state; ``reset_delivered`` forgets everything delivered so far."""
    now = utcnow()
    current = partner_state(engine, partner_id)
    values = {
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
    with engine.begin() as conn:
        if current is None:
            conn.execute(partner_sync_state.insert(), [{"partner_id": partner_id, **values}])
        else:
            conn.execute(
                partner_sync_state.update()
                .where(partner_sync_state.c.partner_id == partner_id)
                .values(**values)
            )


@dataclass(frozen=True)
class Delivered:
    month: date
    value: int
    # where the value went; compared by plan_push, not part of a delivery's identity
    service_id: str | None = field(default=None, compare=False)


def delivered_pairs(engine: sa.Engine, partner_id: str) -> dict[tuple[str, str], Delivered]:
    """What Gradient holds for each (account, sku) of the partner: its latest delivered value."""
    state = partner_state(engine, partner_id)
    since = state.delivered_since if state else EPOCH
    latest = (
        sa.select(sa.func.max(ledger_entries.c.entry_id))
        .where(
            ledger_entries.c.partner_id == partner_id,
            ledger_entries.c.outcome == DELIVERED,
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
    ).where(ledger_entries.c.entry_id.in_(latest))
    with engine.connect() as conn:
        return {
            (r.account_id, r.sku): Delivered(month=r.month, value=r.value, service_id=r.service_id)
            for r in conn.execute(query)
        }


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
    "partner", "account", "sku", "value", "outcome", "http_status", "detail", "recorded_at", "run_id",
]
TOTALS_COLUMNS = ["partner", "outcome", "pairs", "units"]


def month_ledger(engine: sa.Engine, month: date, partner_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The month's ledger as it stands: per partner, account and service the newest entry —
    the value sent (or held back), Gradient's outcome and HTTP status, and when."""
    rows = entries_for(engine, month, partner_ids)
    frame = pd.DataFrame(
        [
            {
                "partner": r["partner_id"], "account": r["account_id"], "sku": r["sku"],
                "value": r["value"], "outcome": r["outcome"], "http_status": r["http_status"],
                "detail": r["detail"] or "", "recorded_at": _aware(r["recorded_at"]), "run_id": r["run_id"],
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
                "partner": r["partner_id"], "account": r["account_id"], "sku": r["sku"], "value": r["value"],
                "outcome": r["outcome"], "http_status": r["http_status"], "detail": r["detail"] or "",
            }
            for r in rows
        ],
        columns=RUN_PAIR_COLUMNS,
    )
