"""The monthly schedule: the 1st at 08:00 America/New_York, for the month that just closed."""

from __future__ import annotations

import dagster as dg

from pipeline.automation.jobs import monthly_billing_job, run_tags
from pipeline.automation.triggers import SCHEDULE_TIMEZONE
from pipeline.billing.month import last_closed_month
from pipeline.settings import billing_timezone


@dg.schedule(
    cron_schedule="0 8 1 * *",
    execution_timezone=SCHEDULE_TIMEZONE,
    job=monthly_billing_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Bill the month that just closed, on the 1st at 08:00 America/New_York.",
)
def monthly_billing_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    month = last_closed_month(context.scheduled_execution_time, billing_timezone())
    return dg.RunRequest(
        run_key=f"scheduled:{month.key}",
        partition_key=month.key,
        tags=run_tags("schedule", reason=f"monthly billing of {month.label}"),
    )
