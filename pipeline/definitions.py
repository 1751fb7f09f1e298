"""The code location: one ``Definitions`` object, ``defs``."""

from __future__ import annotations

import dagster as dg

from assets import gradient_load, month_end
from pipeline.jobs import monthly_billing_job
from pipeline.resources import default_resources

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([month_end, gradient_load]),
    asset_checks=dg.load_asset_checks_from_modules([month_end, gradient_load]),
    jobs=[monthly_billing_job],
    resources=default_resources(),
)
