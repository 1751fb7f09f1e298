"""Asset jobs."""

from __future__ import annotations

import dagster as dg

from pipeline.partitions import monthly_partitions

monthly_billing_job = dg.define_asset_job(
    name="monthly_billing",
    selection=dg.AssetSelection.groups("month_end", "gradient_load"),
    partitions_def=monthly_partitions,
    description="Extract, validate and count one billing month, then load it into Gradient.",
)
