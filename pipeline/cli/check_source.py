"""``check-source``: the configured queries run against their contracts, writing nothing.

For a vendor wiring in its own schema: each query (utilization, services, connections,
companies) is run read-only on the product database; the month's rows go through the same
validation a run uses (``pipeline.validation.month.validate_month``), into a throwaway state
database in a temporary directory, so the quarantine a run would make is shown and the real
state database is never touched.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import click

RUN_ID = "check-source"


def _check(name: str, setting: str, load: Callable[[], object]) -> str | None:
    """Run one contract query; print its verdict; the problem, if any."""
    import sqlalchemy as sa

    from pipeline.settings import ConfigurationError

    try:
        found = load()
    except ConfigurationError as exc:
        click.echo(f"  {name:<12} BROKEN ({setting}): {exc}")
        return str(exc)
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        click.echo(f"  {name:<12} BROKEN ({setting}): the database refused the query: {first}")
        return first
    click.echo(f"  {name:<12} ok: {len(found)} rows")
    return None


@click.command("check-source")
@click.option("--month", required=True, help="Billing month to validate (YYYY-MM).")
@click.option("--sample", default=20, show_default=True, help="Quarantined rows to show.")
def check_source(month: str, sample: int) -> None:
    """Run the configured product queries against their contracts and show the quarantine a
    run of the month would make. Reads the product database; writes nothing anywhere."""
    import sqlalchemy as sa

    from pipeline import settings
    from pipeline.cli.common import partition_month
    from pipeline.cli.runs import product_database
    from pipeline.settings import ConfigurationError
    from pipeline.source.partners import load_companies, load_connections, load_services
    from pipeline.store.months import load_quarantine
    from pipeline.store.schema import ensure_state_schema
    from pipeline.validation.month import validate_month

    billing_month = partition_month(month)
    product = product_database()
    threshold = settings.quarantine_threshold()
    click.echo(f"product database {settings.redact_url(settings.product_db_url())}, month {billing_month.label}")
    problems: list[str] = []
    with product.connect() as conn:
        for name, setting, load in (
            ("services", "SERVICES_SQL", lambda: load_services(conn, product.services_sql)),
            (
                "connections",
                "CONNECTIONS_SQL",
                lambda: load_connections(conn, settings.load_settings().connections_sql),
            ),
            ("companies", "COMPANIES_SQL", lambda: load_companies(conn, settings.load_settings().companies_sql)),
        ):
            problem = _check(name, setting, load)
            if problem:
                problems.append(problem)
        try:
            query = product.utilization_query()
            known_skus = product.known_skus(conn)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        with tempfile.TemporaryDirectory(prefix="gbs-check-source-") as scratch:
            state = sa.create_engine(f"sqlite:///{scratch}/throwaway-state.db")
            try:
                ensure_state_schema(state)
                try:
                    outcome = validate_month(conn, state, query, billing_month, known_skus, RUN_ID)
                except sa.exc.DBAPIError as exc:
                    first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                    raise click.ClickException(
                        f"the utilization query ({query.path}) failed on the product database: {first}"
                    ) from None
                quarantined = load_quarantine(state, billing_month.month, limit=sample)
            finally:
                state.dispose()
    validation = outcome.validation
    if outcome.contract_violations:
        click.echo(f"  utilization  BROKEN (UTILIZATION_SQL {query.path}): the contract is not met:")
        for violation in outcome.contract_violations:
            click.echo(f"    {violation}")
        raise click.ClickException("the utilization query breaks the contract; a run would block the month")
    share = validation.quarantined_share
    within = share <= threshold
    click.echo(
        f"  utilization  ok: {validation.rows_in} rows, {validation.rows_valid} valid, "
        f"{validation.rows_quarantined} would be quarantined ({share:.2%}; threshold {threshold:.2%}: "
        f"{'the month would go on' if within else 'the month would be BLOCKED'})"
    )
    for code, n in validation.reason_counts.items():
        click.echo(f"    {code}: {n}")
    if len(quarantined):
        click.echo(f"  first {len(quarantined)} rows a run would quarantine:")
        for row in quarantined.itertuples(index=False):
            click.echo(
                f"    #{row.row_number} {row.reasons}: partner={row.partner_id} company={row.company_id} "
                f"sku={row.sku} user={row.user_id} from={row.active_from} to={row.active_to}"
            )
    click.echo("nothing was written (the state database was not opened)")
    if problems or not within:
        raise click.ClickException(
            "; ".join(problems) if problems else f"quarantine above the {threshold:.2%} threshold"
        )
