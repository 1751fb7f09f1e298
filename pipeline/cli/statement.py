"""``statement``: make (again) the month's partner statements, e.g. after a run whose push failed."""

from __future__ import annotations

import sys

import click


@click.command("statement")
@click.option("--month", required=True, help="Billing month (YYYY-MM).")
def statement(month: str) -> None:
    """Materialize partner_statements for the month on the configured instance: a CSV and an
    HTML page per partner from the stored counts and the ledger (e-mailed when configured).
    Needs the month counted; works when its push failed or was superseded."""
    from pipeline.cli.common import partition_month

    first = partition_month(month).month  # checked before anything runs

    import dagster as dg

    from pipeline.automation.jobs import run_tags
    from pipeline.billing.statements import StatementSettings
    from pipeline.cli.common import cli_dagster_instance as _instance
    from pipeline.cli.runs import month_run, where_runs_are
    from pipeline.definitions import build_defs

    job = build_defs().resolve_implicit_global_asset_job_def()
    with _instance() as instance:
        result = job.execute_in_process(
            partition_key=first.isoformat(),
            instance=instance,
            asset_selection=[dg.AssetKey("partner_statements")],
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags=run_tags("cli"),
        )
    ran = month_run(first, result)
    if not ran.success:
        click.echo(f"{ran.label}: statements FAILED (run {ran.run_id})")
        for cause in ran.causes:
            click.echo(f"  cause: {cause}")
        click.echo(f"  its logs: {where_runs_are()}; --verbose prints the full error")
        if click.get_current_context().meta.get("gbs.verbose") and ran.trace:
            click.echo(ran.trace)
        sys.exit(1)
    (materialization,) = result.asset_materializations_for_node("partner_statements")
    meta = materialization.metadata
    directory = StatementSettings.from_env().month_dir(first)
    click.echo(
        f"{ran.label}: {meta['partners'].value} partner statements in {directory} ({meta['emailed'].value} e-mailed)"
    )
    for path in sorted(directory.glob("*.html")):
        click.echo(f"  {path}")
