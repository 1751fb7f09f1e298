"""The ``gradient-billing-sync`` command line."""

from __future__ import annotations

import os
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import click

from pipeline import settings
from pipeline.billing_month import BillingMonth, last_closed_months


# The same storage as the repository's dagster.yaml (var/dagster), so `dagster dev` shows these runs.
EMBEDDED_INSTANCE_YAML = """run_retries:
  enabled: true
  max_retries: 1
telemetry:
  enabled: false
"""
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _instance():
    """DAGSTER_HOME's instance when set, else the embedded one under var/dagster."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    home = settings.data_dir() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(EMBEDDED_INSTANCE_YAML)
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _parse_month(value: str) -> date:
    try:
        return date.fromisoformat(value[:7] + "-01")
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a month; use YYYY-MM, e.g. 2026-10") from None


def _months(months: tuple[str, ...], last_closed: int | None) -> list[BillingMonth]:
    tz = settings.billing_timezone()
    if months:
        return [BillingMonth(_parse_month(m), tz) for m in months]
    return last_closed_months(datetime.now(timezone.utc), tz, last_closed or 1)


@click.group()
def main() -> None:
    """Monthly MSP billing: product utilization -> billable users -> Gradient MSP."""


@main.command("seed-demo")
@click.option("--seed", default=7, show_default=True, help="Random seed: same seed, same rows.")
@click.option("--partners", default=4, show_default=True)
@click.option("--companies", "companies", default="6-12", show_default=True, help="Companies per partner, MIN-MAX.")
@click.option("--users", "users", default="5-40", show_default=True, help="Users per company, MIN-MAX.")
@click.option("--end-month", default=None, help="Newest month with data (YYYY-MM); default this month.")
@click.option("--history-months", default=6, show_default=True)
@click.option("--no-bad-rows", is_flag=True, help="Leave out the documented bad rows.")
def seed_demo(seed, partners, companies, users, end_month, history_months, no_bad_rows) -> None:
    """(Re)create the reference schema in PRODUCT_DB_URL and fill it with demo data."""
    summary = _seed(seed, partners, companies, users, end_month, history_months, not no_bad_rows)
    click.echo(
        f"demo data in {settings.redact_url(settings.product_db_url())}: {summary.partners} partners, "
        f"{summary.companies} companies, {summary.users} users, {summary.enrollments} enrollments "
        f"({summary.bad_rows} bad rows for validation to catch)"
    )


def _range(value: str) -> tuple[int, int]:
    low, _, high = value.partition("-")
    return int(low), int(high or low)


def _seed(seed, partners, companies, users, end_month, history_months, bad_rows):
    from pipeline.demo_data import DemoSpec, load_demo_data
    from pipeline.resources import engine_for

    spec = DemoSpec(
        seed=seed,
        partners=partners,
        companies_per_partner=_range(companies),
        users_per_company=_range(users),
        end_month=_parse_month(end_month) if end_month else date.today().replace(day=1),
        history_months=history_months,
        include_bad_rows=bad_rows,
    )
    return load_demo_data(engine_for(settings.product_db_url()), spec)


def _materialize(months: list[BillingMonth]) -> list[tuple[BillingMonth, bool]]:
    from pipeline.definitions import defs

    job = defs.resolve_job_def("monthly_billing")
    results = []
    with _instance() as instance:
        for month in months:
            result = job.execute_in_process(
                partition_key=month.key,
                instance=instance,
                raise_on_error=False,
                run_config=QUIET_RUN_CONFIG,
            )
            results.append((month, result.success))
    return results


def _print_summaries(results: list[tuple[BillingMonth, bool]]) -> None:
    from pipeline.reporting import month_summary
    from pipeline.resources import StateDatabase

    state = StateDatabase(url=settings.state_db_url()).engine()
    for month, success in results:
        click.echo(month_summary(state, month.month))
        if not success:
            click.echo(f"  run for {month.label} did not succeed; see `dagster dev` for its logs")


@main.command("run")
@click.option("--month", "months", multiple=True, help="Month to run (YYYY-MM); repeatable.")
@click.option("--last-closed", type=int, default=None, help="Run the N newest closed months.")
def run(months, last_closed) -> None:
    """Materialize billing months on the configured instance and print a summary."""
    results = _materialize(_months(months, last_closed))
    _print_summaries(results)
    sys.exit(0 if all(ok for _, ok in results) else 1)


@main.command("demo")
@click.option("--months", "count", default=3, show_default=True, help="Closed months to run.")
def demo(count) -> None:
    """Seed demo data (if the product DB is empty) and run the newest closed months end to end."""
    from pipeline.resources import engine_for
    import sqlalchemy as sa

    engine = engine_for(settings.product_db_url())
    if not sa.inspect(engine).has_table("service_enrollments"):
        summary = _seed(7, 4, "6-12", "5-40", None, 6, True)
        click.echo(
            f"seeded demo data: {summary.partners} partners, {summary.companies} companies, "
            f"{summary.users} users, {summary.enrollments} enrollments ({summary.bad_rows} bad rows)"
        )
    results = _materialize(_months((), count))
    _print_summaries(results)
    sys.exit(0 if all(ok for _, ok in results) else 1)


if __name__ == "__main__":
    main()
