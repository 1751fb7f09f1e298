"""The automation folder's contribution to the code location: jobs, schedule, sensors."""

import dagster as dg

from pipeline.automation.alerts import alert_sensors
from pipeline.automation.jobs import account_sync_job, gradient_load_job, monthly_billing_job
from pipeline.automation.schedules import monthly_billing_schedule
from pipeline.automation.sensors import (
    billing_failure_sensor,
    missed_or_late_months_sensor,
    partner_connected_sensor,
    partner_disconnected_sensor,
    sync_requests_sensor,
)
from pipeline.automation.statements import statements_after_failed_push_sensor, statements_job


def definitions() -> dg.Definitions:
    return dg.Definitions(
        jobs=[monthly_billing_job, gradient_load_job, account_sync_job, statements_job],
        schedules=[monthly_billing_schedule],
        sensors=[
            partner_connected_sensor,
            partner_disconnected_sensor,
            sync_requests_sensor,
            missed_or_late_months_sensor,
            billing_failure_sensor,
            statements_after_failed_push_sensor,
            # e-mail / webhook alerts, only when ALERT_* settings are there
            *alert_sensors(),
        ],
    )
