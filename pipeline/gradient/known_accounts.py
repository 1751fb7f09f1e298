"""The accounts Gradient holds per partner, as the pipeline last synced them.

Written after each successful account sync (the partner's companies are then exactly what
Gradient holds under those ids); read by the preview, which diffs the companies against it
without calling Gradient. Accounts synced before the partner's ``delivered_since`` do not
count: Gradient dropped them when the partner disconnected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from pipeline.gradient import ledger
from pipeline.store.schema import synced_accounts, utcnow


@dataclass(frozen=True)
class AccountChanges:
    created: int
    renamed: int


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def known_accounts(engine: sa.Engine, partner_id: str) -> dict[str, str]:
    """account id -> name Gradient holds for the partner, per the last sync."""
    state = ledger.partner_state(engine, partner_id)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(synced_accounts.c.account_id, synced_accounts.c.account_name, synced_accounts.c.synced_at).where(
                synced_accounts.c.partner_id == partner_id
            )
        ).all()
    since = state.delivered_since if state else None
    return {r.account_id: r.account_name for r in rows if since is None or _utc(r.synced_at) >= since}


def record_synced_accounts(
    engine: sa.Engine, partner_id: str, accounts: Sequence[tuple[str, str]], run_id: str
) -> AccountChanges:
    """Remember that Gradient now holds ``accounts`` (id, name) for the partner."""
    known = known_accounts(engine, partner_id)
    now = utcnow()
    created = renamed = 0
    with engine.begin() as conn:
        stored = set(
            conn.execute(
                sa.select(synced_accounts.c.account_id).where(synced_accounts.c.partner_id == partner_id)
            ).scalars()
        )
        for account_id, name in dict(accounts).items():
            values = {"account_name": name, "run_id": run_id, "synced_at": now}
            if account_id not in known:
                created += 1
                values.update(created_run_id=run_id, renamed_run_id=None)
            elif known[account_id] != name:
                renamed += 1
                values["renamed_run_id"] = run_id
            if account_id in stored:
                conn.execute(
                    synced_accounts.update()
                    .where(synced_accounts.c.partner_id == partner_id, synced_accounts.c.account_id == account_id)
                    .values(**values)
                )
            else:
                conn.execute(
                    synced_accounts.insert(),
                    [{"partner_id": partner_id, "account_id": account_id, "created_run_id": run_id, **values}],
                )
    return AccountChanges(created, renamed)


def account_changes_of(engine: sa.Engine, run_id: str) -> dict[str, AccountChanges]:
    """Per partner: accounts first synced and renamed by this run."""
    query = (
        sa.select(
            synced_accounts.c.partner_id,
            sa.func.sum(sa.case((synced_accounts.c.created_run_id == run_id, 1), else_=0)),
            sa.func.sum(sa.case((synced_accounts.c.renamed_run_id == run_id, 1), else_=0)),
        )
        .where(synced_accounts.c.run_id == run_id)
        .group_by(synced_accounts.c.partner_id)
    )
    with engine.connect() as conn:
        return {pid: AccountChanges(int(c or 0), int(r or 0)) for pid, c, r in conn.execute(query)}
