"""The code location: one ``Definitions`` object, ``defs``."""

from __future__ import annotations

import dagster as dg

from assets import gradient_load, month_end, partner_lifecycle
from pipeline.jobs import account_sync_job, gradient_load_job, monthly_billing_job
from pipeline.resources import default_resources
from pipeline.schedules import monthly_billing_schedule
from pipeline.sensors import (
    billing_failure_sensor,
    missed_or_late_months_sensor,
    partner_connected_sensor,
    partner_disconnected_sensor,
    sync_requests_sensor,
)

def build_defs() -> dg.Definitions:
    """The code location's definitions, with resources configured from the current environment."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([month_end, gradient_load]),
        asset_checks=dg.load_asset_checks_from_modules([month_end, gradient_load]),
        jobs=[monthly_billing_job, gradient_load_job, account_sync_job, partner_lifecycle.partner_disconnect],
        schedules=[monthly_billing_schedule],
        sensors=[
            partner_connected_sensor,
            partner_disconnected_sensor,
            sync_requests_sensor,
            missed_or_late_months_sensor,
            billing_failure_sensor,
        ],
        resources=default_resources(),
    )


defs = build_defs()
