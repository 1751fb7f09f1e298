"""The monthly partitions every billing asset shares: key = the month's first day.

The first partition is ``FIRST_BILLING_MONTH`` (YYYY-MM). A deployment must set it (settings
refuse a ``PRODUCT_DB_URL`` without it), so the partition set is fixed and never slides; only
the embedded demo, whose data is generated relative to today, defaults to 12 months before the
current month. Months before it cannot be run or backfilled.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import dagster as dg

from pipeline.billing.month import add_months
from pipeline.settings import ConfigurationError, billing_timezone, load_settings

DEFAULT_HISTORY_MONTHS = 12


def first_billing_month(now: datetime | None = None) -> date:
    """``FIRST_BILLING_MONTH`` (YYYY-MM), or (embedded demo only) 12 months before the current
    billing month."""
    raw = load_settings().first_billing_month or ""
    if raw:
        try:
            return date.fromisoformat(f"{raw[:7]}-01")
        except ValueError:
            raise ConfigurationError(
                f"FIRST_BILLING_MONTH={raw!r} is not a month; use YYYY-MM, e.g. 2025-01."
            ) from None
    today = (now or datetime.now(ZoneInfo(billing_timezone()))).date()
    return add_months(today.replace(day=1), -DEFAULT_HISTORY_MONTHS)


FIRST_BILLING_MONTH = first_billing_month().isoformat()

monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=FIRST_BILLING_MONTH,
    timezone=billing_timezone(),
    end_offset=0,
)


def month_outside_partitions(month: date, now: datetime | None = None) -> str | None:
    """Why ``month`` (its first day) is not one of ``monthly_partitions`` — so Dagster would
    refuse a run of it — in words an operator acts on; None when it is one.

    The range is the definition's own (its first key and its newest, the last closed month);
    whether FIRST_BILLING_MONTH was set is read at call time, for the wording only.
    """
    keys = monthly_partitions.get_partition_keys(current_time=now)
    label = month.strftime("%Y-%m")
    first = monthly_partitions.start.strftime("%Y-%m")
    if not keys:
        return (
            f"{label} cannot be run: no month since FIRST_BILLING_MONTH {first} is closed yet "
            "(a month is run once it has ended)"
        )
    newest = keys[-1][:7]
    if month.isoformat() in keys:
        return None
    if month.isoformat() < keys[0]:
        origin = "" if load_settings().first_billing_month else " (unset: 12 months before this month)"
        return f"{label} is before FIRST_BILLING_MONTH {first}{origin}; set FIRST_BILLING_MONTH={label} to bill it"
    return f"{label} is not closed yet; the newest closed month is {newest}"
