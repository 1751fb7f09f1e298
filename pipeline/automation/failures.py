"""Run failures, recorded for the operator and optionally raised as Gradient alerts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from pipeline.gradient.ids import account_id_problem
from pipeline.gradient.ledger import FAILED
from pipeline.outputs import one_line
from pipeline.store.schema import ledger_entries, partner_sync_state, run_failures, utcnow

MAX_ALERTS_PER_PARTNER = 5


@dataclass(frozen=True)
class AffectedPartner:
    partner_id: str
    month: str | None
    accounts: list[str]


def affected_partners(engine: sa.Engine, run_id: str) -> list[AffectedPartner]:
    """Partners with failed ledger entries, or put in error, by this run."""
    found: dict[str, AffectedPartner] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger_entries.c.partner_id, ledger_entries.c.month, ledger_entries.c.account_id)
            .where(ledger_entries.c.run_id == run_id, ledger_entries.c.outcome == FAILED)
            .distinct()
            .order_by(ledger_entries.c.partner_id, ledger_entries.c.account_id)
        ).all()
        errored = (
            conn.execute(
                sa.select(partner_sync_state.c.partner_id).where(
                    partner_sync_state.c.run_id == run_id, partner_sync_state.c.status == "error"
                )
            )
            .scalars()
            .all()
        )
    for partner_id, month, account_id in rows:
        entry = found.setdefault(partner_id, AffectedPartner(partner_id, month.strftime("%Y-%m"), []))
        entry.accounts.append(account_id)
    for partner_id in errored:
        found.setdefault(partner_id, AffectedPartner(partner_id, None, []))
    return sorted(found.values(), key=lambda p: p.partner_id)


def record_failure(
    engine: sa.Engine,
    run_id: str,
    job_name: str,
    partition_key: str | None,
    partners: list[str],
    message: str,
    alerts_raised: int,
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(run_failures).where(run_failures.c.run_id == run_id))
        conn.execute(
            run_failures.insert(),
            [
                {
                    "run_id": run_id,
                    "job_name": job_name,
                    "partition_key": partition_key,
                    "partners": ",".join(partners),
                    "message": message[:4000],
                    "alerts_raised": alerts_raised,
                    "recorded_at": utcnow(),
                }
            ],
        )


def recorded_failures(engine: sa.Engine, since: datetime | None = None) -> list[dict]:
    query = sa.select(run_failures).order_by(run_failures.c.recorded_at)
    if since is not None:
        query = query.where(run_failures.c.recorded_at >= since)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


ALERT_TITLE_CHARS = 100
ALERT_DESCRIPTION_CHARS = 1000


def alert_text(partner: AffectedPartner, run_id: str) -> tuple[str, str]:
    """A Gradient alert's title and description: plain text, one line each, bounded."""
    month = f"the {partner.month} " if partner.month else "the latest "
    return (
        one_line("Usage sync to Gradient failed", ALERT_TITLE_CHARS),
        one_line(
            f"The vendor could not deliver {month}usage counts for this account to Gradient "
            f"(run {run_id[:8]}). The vendor's pipeline retries; the counts shown may be out of "
            "date until it succeeds.",
            ALERT_DESCRIPTION_CHARS,
        ),
    )


def alert_accounts(partner: AffectedPartner, limit: int) -> tuple[list[str], dict[str, str]]:
    """The first ``limit`` of the partner's failed accounts a Gradient alert may go to, and
    the skipped ones with the reason (an id Gradient's id limits refuse gets no alert either)."""
    allowed: list[str] = []
    skipped: dict[str, str] = {}
    for account_id in partner.accounts:
        problem = account_id_problem(account_id)
        if problem:
            skipped[account_id] = problem
        elif len(allowed) < limit:
            allowed.append(account_id)
    return allowed, skipped
