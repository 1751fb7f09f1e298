"""What the CLI's commands share: the instance they run on and how months are read."""

from __future__ import annotations

from datetime import UTC, date, datetime

import click

from pipeline import settings
from pipeline.billing.month import BillingMonth, last_closed_months


def cli_dagster_instance():
    """DAGSTER_HOME's instance when set, else the embedded one under var/dagster (created
    safely by concurrent first runs; runs killed earlier marked failed: pipeline.cli.instance)."""
    from pipeline.cli.instance import cli_instance

    if settings.load_settings().dagster_home:
        return cli_instance()
    from pipeline.cli.runs import instance_home

    return cli_instance(instance_home())  # the repository's instance, as `dagster dev` sees it (not GBS_DATA_DIR's)


def parse_month(value: str) -> date:
    try:
        return date.fromisoformat(value[:7] + "-01")
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a month; use YYYY-MM, e.g. 2026-10") from None


def billing_months(months: tuple[str, ...], last_closed: int | None) -> list[BillingMonth]:
    tz = settings.billing_timezone()
    if months:
        return [BillingMonth(parse_month(m), tz) for m in months]
    return last_closed_months(datetime.now(UTC), tz, last_closed or 1)
