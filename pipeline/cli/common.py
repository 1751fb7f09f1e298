"""What the CLI's commands share: the instance they run on and how months are read and checked.

Imports only click at module level (``--help`` and ``--version`` load no more; see main.py).
"""

from __future__ import annotations

from datetime import UTC, date
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pipeline.billing.month import BillingMonth


def cli_dagster_instance():
    """DAGSTER_HOME's instance when set, else the embedded one under var/dagster (created
    safely by concurrent first runs; runs killed earlier marked failed: pipeline.cli.instance)."""
    from pipeline import settings
    from pipeline.cli.instance import cli_instance

    if settings.load_settings().dagster_home:
        return cli_instance()
    from pipeline.cli.runs import instance_home

    return cli_instance(instance_home())  # the repository's instance, as `dagster dev` sees it (not GBS_DATA_DIR's)


def parse_month(value: str, option: str = "--month") -> date:
    """A YYYY-MM value as the month's first day (syntax only; see ``partition_month``)."""
    try:
        return date.fromisoformat(value[:7] + "-01")
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a month; use YYYY-MM, e.g. 2026-10", param_hint=option) from None


def partition_month(value: str, option: str = "--month") -> BillingMonth:
    """A month a command can run or read: YYYY-MM and one of the monthly partitions
    (pipeline.partitions, the same range Dagster enforces), else a usage error saying why,
    raised before anything runs or is sent."""
    return check_partition_months([parse_month(value, option)], option)[0]


def check_partition_months(months: list[date], option: str = "--month") -> list[BillingMonth]:
    """Every month checked against the partitions before any is used; all problems in one error."""
    from pipeline import settings
    from pipeline.billing.month import BillingMonth
    from pipeline.partitions import month_outside_partitions

    problems = [p for p in (month_outside_partitions(m) for m in months) if p]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise click.BadParameter(f"{shown}. Nothing was run.", param_hint=option)
    tz = settings.billing_timezone()
    return [BillingMonth(m, tz) for m in months]


def billing_months(months: tuple[str, ...], last_closed: int | None) -> list[BillingMonth]:
    """``--month`` values (each checked) or the ``last_closed`` newest closed months."""
    from datetime import datetime

    from pipeline import settings
    from pipeline.billing.month import last_closed_months

    if months:
        return check_partition_months([parse_month(m) for m in months])
    newest = last_closed_months(datetime.now(UTC), settings.billing_timezone(), last_closed or 1)
    return check_partition_months([m.month for m in newest], "--last-closed")


def month_range(first: str, last: str) -> list[BillingMonth]:
    """``--from``..``--to`` inclusive, every month checked before the first one runs."""
    from pipeline.billing.month import add_months

    start, end = parse_month(first, "--from"), parse_month(last, "--to")
    if end < start:
        raise click.BadParameter(f"--to {last} is before --from {first}", param_hint="--to")
    months = []
    while start <= end:
        months.append(start)
        start = add_months(start, 1)
    return check_partition_months(months, "--from/--to")
