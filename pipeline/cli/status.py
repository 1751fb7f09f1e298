"""``status``: per partner, what the product says, what Gradient holds, what needs a person."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import click
import pandas as pd
import sqlalchemy as sa

from pipeline.gradient import ledger
from pipeline.settings import load_settings
from pipeline.store.schema import billable_counts, ledger_entries


@dataclass(frozen=True)
class PartnerStatus:
    partner_id: str
    connection: str
    gradient_status: str
    newest_delivered: date | None
    unmapped: pd.DataFrame  # account_id, sku, month of the newest entry
    last_error: str | None


def open_lines(state: sa.Engine, partner_id: str, outcome: str) -> pd.DataFrame:
    """(account, sku) pairs whose newest ledger entry (since the partner's delivered state
    began) has ``outcome``, e.g. still unmapped in Gradient."""
    current = ledger.partner_state(state, partner_id)
    since = current.delivered_since if current else ledger.EPOCH
    newest = (
        sa.select(sa.func.max(ledger_entries.c.entry_id))
        .where(ledger_entries.c.partner_id == partner_id, ledger_entries.c.recorded_at >= since)
        .group_by(ledger_entries.c.account_id, ledger_entries.c.sku)
    )
    query = (
        sa.select(ledger_entries.c.account_id, ledger_entries.c.sku, ledger_entries.c.month)
        .where(ledger_entries.c.entry_id.in_(newest), ledger_entries.c.outcome == outcome)
        .order_by(ledger_entries.c.account_id, ledger_entries.c.sku)
    )
    names = (
        sa.select(billable_counts.c.company_id, billable_counts.c.company_name)
        .where(billable_counts.c.partner_id == partner_id)
        .order_by(billable_counts.c.month)
    )
    with state.connect() as conn:
        rows = conn.execute(query).all()
        company_names = dict(conn.execute(names).all())  # the newest month's name wins
    frame = pd.DataFrame.from_records(rows, columns=["account_id", "sku", "month"])
    frame["account_name"] = frame["account_id"].map(lambda a: company_names.get(a, ""))
    return frame


def partner_statuses(product: sa.Connection, state: sa.Engine, connections_sql: str | None) -> list[PartnerStatus]:
    from pipeline.source.partners import load_connections

    connections = {c.partner_id: c for c in load_connections(product, connections_sql)}
    states = ledger.all_partner_states(state)
    out = []
    for partner_id in sorted(set(connections) | set(states)):
        connection, synced = connections.get(partner_id), states.get(partner_id)
        out.append(
            PartnerStatus(
                partner_id=partner_id,
                connection=connection.state if connection else "unknown to the product",
                gradient_status=synced.status if synced else "never synced",
                newest_delivered=ledger.newest_delivered_month(state, partner_id),
                unmapped=open_lines(state, partner_id, ledger.UNMAPPED),
                last_error=synced.last_error if synced else None,
            )
        )
    return out


@click.command("status")
@click.option("--partner", "partner_id", default=None,
              help="Show only this partner, with its unmapped accounts and services one per line.")
def status(partner_id: str | None) -> None:
    """Per partner: connection state in the product, status in Gradient, newest month
    delivered, unmapped accounts (waiting for the partner to map them in Gradient), last error."""
    from pipeline.cli.runs import product_database, state_engine

    state = state_engine()
    with product_database().connect() as conn:
        rows = partner_statuses(conn, state, load_settings().connections_sql)
    if partner_id is not None:
        rows = [r for r in rows if r.partner_id == partner_id]
        if not rows:
            raise click.ClickException(f"unknown partner {partner_id!r}: not in the product's connections "
                                       "(CONNECTIONS_SQL) nor in the ledger")
    if not rows:
        click.echo("no partner is connected to Gradient yet")
        return
    click.echo(f"{'partner':<12} {'connection':<14} {'gradient':<12} {'delivered up to':<16} "
               f"{'unmapped accounts':<18} last error")
    for r in rows:
        accounts = r.unmapped["account_id"].nunique() if len(r.unmapped) else 0
        newest = r.newest_delivered.strftime("%Y-%m") if r.newest_delivered else "nothing yet"
        error = (r.last_error or "-").splitlines()[0][:200]
        click.echo(f"{r.partner_id:<12} {r.connection:<14} {r.gradient_status:<12} {newest:<16} {accounts:<18} {error}")
    if partner_id is not None and len(rows[0].unmapped):
        click.echo("\nunmapped in Gradient (the partner maps them; the next run sends them):")
        for line in rows[0].unmapped.itertuples(index=False):
            name = f" ({line.account_name})" if line.account_name else ""
            click.echo(f"  account {line.account_id}{name}  service {line.sku}  (last sent for {line.month:%Y-%m})")
