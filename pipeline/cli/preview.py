"""``gradient-billing-sync preview``: what a run of a month would send, sending nothing."""

from __future__ import annotations

import sys

import click

MONTH_END_ASSETS = ("utilization_extract", "validated_utilization", "billable_counts")
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def compute_month(month_key: str):
    """Materialize the month-end assets of a month (no Gradient call); the run's result."""
    import dagster as dg

    from pipeline.automation.jobs import run_tags
    from pipeline.cli.common import cli_dagster_instance
    from pipeline.cli.instance import process_tags
    from pipeline.definitions import build_defs

    job = build_defs().resolve_job_def("monthly_billing")
    with cli_dagster_instance() as instance:
        result = job.execute_in_process(
            partition_key=month_key,
            instance=instance,
            raise_on_error=False,
            run_config=QUIET_RUN_CONFIG,
            tags={**run_tags("preview", reason=f"preview of {month_key[:7]}"), **process_tags()},
            asset_selection=[dg.AssetKey(name) for name in MONTH_END_ASSETS],
        )
    return result


@click.command("preview")
@click.option("--month", required=True, help="Billing month to preview (YYYY-MM).")
@click.option("--partner", "partner_ids", multiple=True,
              help="Preview only this partner (repeatable); default every connected partner.")
@click.option("--force-superseded", is_flag=True,
              help="Preview a forced push of a month older than the newest delivered one.")
@click.option("--max-counts", default=50, show_default=True, help="Count calls listed per partner.")
def preview(month, partner_ids, force_superseded, max_counts) -> None:
    """Compute the month (extract, validate, count) and show per partner the accounts a run
    would create and rename, the counts it would send and how each differs from what Gradient
    holds per the ledger, what is superseded and what was unmapped. Sends nothing to Gradient."""
    from pipeline.cli.common import partition_month
    from pipeline.gradient.preview import preview_month, render
    from pipeline.resources import default_resources
    from pipeline.source.partners import load_companies, load_connections
    from pipeline.store.months import load_billable_counts

    month = partition_month(month)  # checked before anything runs
    from pipeline.cli.runs import month_run, where_runs_are

    ran = month_run(month.month, compute_month(month.key))
    if not ran.success:
        if click.get_current_context().meta.get("gbs.verbose") and ran.trace:
            click.echo(ran.trace)
        causes = "; ".join(ran.causes)
        raise click.ClickException(
            f"{month.label} could not be computed (run {ran.run_id}): {causes}. Its logs: {where_runs_are()}"
        )
    resources = default_resources(env_vars=False)
    product, sources, state = resources["product_db"], resources["partner_sources"], resources["state_db"]
    with product.connect() as conn:
        connections = load_connections(conn, sources.connections_sql)
        companies = load_companies(conn, sources.companies_sql)
    connected = {c.partner_id for c in connections if c.is_connected}
    unknown = sorted(set(partner_ids) - connected)
    if unknown:
        raise click.ClickException(
            f"no connected partner {', '.join(unknown)}; connected: {', '.join(sorted(connected)) or 'none'}"
        )
    engine = state.engine()
    previews = preview_month(
        engine,
        month.month,
        load_billable_counts(engine, month.month),
        companies,
        list(partner_ids) or sorted(connected),
        force=force_superseded,
    )
    click.echo("\n".join(render(previews, month.month, max_counts)))
    sys.exit(0)
