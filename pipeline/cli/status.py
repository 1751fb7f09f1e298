"""``status``: per partner, what the product says, what Gradient holds, what needs a person."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import click

from pipeline.cli.tables import cell, echo_table

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy as sa


@dataclass(frozen=True)
class PartnerStatus:
    partner_id: str
    connection: str
    gradient_status: str
    newest_delivered: date | None
    unmapped: pd.DataFrame  # account_id, sku, month of the newest entry
    last_error: str | None
    key_problem: str | None = None  # the stored API key does not decrypt with the configured keys


def open_lines(state: sa.Engine, partner_id: str, outcome: str) -> pd.DataFrame:
    """(account, sku) pairs whose newest ledger entry (since the partner's delivered state
    began) has ``outcome``, e.g. still unmapped in Gradient."""
    import pandas as pd
    import sqlalchemy as sa

    from pipeline.gradient import ledger
    from pipeline.store.schema import billable_counts, ledger_entries

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


def partner_statuses(
    product: sa.Connection, state: sa.Engine, connections_sql: str | None, encryption_keys: str | None = None
) -> list[PartnerStatus]:
    """Every partner the product or the ledger knows; with ``encryption_keys``, whether each
    connected partner's stored key decrypts (as a run would need it to)."""
    from pipeline.gradient import ledger
    from pipeline.gradient.partner_keys import key_diagnosis
    from pipeline.source.partners import load_connections

    connections = {c.partner_id: c for c in load_connections(product, connections_sql)}
    key_problems = {}
    if encryption_keys is not None:
        stored = [(c.partner_id, c.encrypted_api_key) for c in connections.values() if c.is_connected]
        key_problems = {k.partner_id: k.problem for k in key_diagnosis(stored, encryption_keys) if k.problem}
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
                key_problem=key_problems.get(partner_id),
            )
        )
    return out


@click.command("status")
@click.option(
    "--partner",
    "partner_id",
    default=None,
    help="Show only this partner, with its unmapped accounts and services one per line.",
)
def status(partner_id: str | None) -> None:
    """Per partner: connection state in the product, status in Gradient, newest month
    delivered, unmapped accounts (waiting for the partner to map them in Gradient), last error."""
    from pipeline import settings
    from pipeline.cli.runs import product_database, state_engine
    from pipeline.gradient.partner_keys import PartnerKeyError

    state = state_engine()
    config = settings.load_settings()
    with product_database().connect() as conn:
        try:
            rows = partner_statuses(conn, state, config.connections_sql, config.encryption_keys)
        except PartnerKeyError as exc:  # the keys themselves do not parse
            raise click.ClickException(f"{exc} `gradient-billing-sync check-config` shows every setting.") from None
    if partner_id is not None:
        rows = [r for r in rows if r.partner_id == partner_id]
        if not rows:
            raise click.ClickException(
                f"unknown partner {cell(partner_id)!r}: not in the product's connections "
                "(CONNECTIONS_SQL) nor in the ledger"
            )
    if not rows:
        click.echo("no partner is connected to Gradient yet")
        return
    table = []
    for r in rows:
        accounts = r.unmapped["account_id"].nunique() if len(r.unmapped) else 0
        newest = r.newest_delivered.strftime("%Y-%m") if r.newest_delivered else "nothing yet"
        error = (
            (
                f"stored API key cannot be decrypted ({r.key_problem.split(':')[0]}); "
                "`gradient-billing-sync check-config` says what fixes it"
            )
            if r.key_problem
            else (r.last_error or "-")
        )
        table.append((r.partner_id, r.connection, r.gradient_status, newest, accounts, error.splitlines()[0][:400]))
    echo_table(("partner", "connection", "gradient", "delivered up to", "unmapped accounts", "last error"), table)
    if partner_id is not None and len(rows[0].unmapped):
        click.echo("\nunmapped in Gradient (the partner maps them; the next run sends them):")
        echo_table(
            ("account", "name", "service", "last sent for"),
            [
                (line.account_id, line.account_name or "", line.sku, f"{line.month:%Y-%m}")
                for line in rows[0].unmapped.itertuples(index=False)
            ],
            indent=2,
        )
