"""The monthly partitions every billing asset shares: key = the month's first day."""

from __future__ import annotations

import dagster as dg

from pipeline.settings import billing_timezone

FIRST_BILLING_MONTH = "2024-01-01"

monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=FIRST_BILLING_MONTH,
    timezone=billing_timezone(),
    end_offset=0,
)
