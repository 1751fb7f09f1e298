"""The monthly schedule, for the month that just closed: by default the 1st at 08:00
America/New_York. Its clock is a setting (BILLING_SCHEDULE_DAY, BILLING_SCHEDULE_TIME,
BILLING_SCHEDULE_TIMEZONE, the zone defaulting to BILLING_TIMEZONE), read when the code
location loads; the month it bills is the last one closed in BILLING_TIMEZONE at the tick."""

from __future__ import annotations

import dagster as dg

from pipeline.automation.jobs import monthly_billing_job, run_tags
from pipeline.billing.month import last_closed_month
from pipeline.settings import Settings, billing_timezone, load_settings


def build_monthly_billing_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """The schedule on ``settings``' clock; each tick bills the month last closed in
    BILLING_TIMEZONE."""

    @dg.schedule(
        name="monthly_billing_schedule",
        cron_schedule=settings.schedule_cron,
        execution_timezone=settings.schedule_timezone,
        job=monthly_billing_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Bill the month that just closed, on day {settings.billing_schedule_day} at "
        f"{settings.billing_schedule_time} {settings.schedule_timezone} "
        "(BILLING_SCHEDULE_DAY, BILLING_SCHEDULE_TIME, BILLING_SCHEDULE_TIMEZONE).",
    )
    def monthly_billing_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        month = last_closed_month(context.scheduled_execution_time, billing_timezone())
        return dg.RunRequest(
            run_key=f"scheduled:{month.key}",
            partition_key=month.key,
            tags=run_tags("schedule", reason=f"monthly billing of {month.label}"),
        )

    return monthly_billing_schedule


monthly_billing_schedule = build_monthly_billing_schedule(load_settings())
