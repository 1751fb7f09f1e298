"""Partner statements even when a month's push failed.

In a run whose ``gradient_unit_counts`` step fails, Dagster skips ``partner_statements``
(downstream of it). This sensor asks for a run of the ``statements`` job for that month right
after, so every month that was counted gets its statements — showing the failed lines as failed.
"""

from __future__ import annotations

import dagster as dg

from pipeline.automation.jobs import gradient_load_job, monthly_billing_job, run_tags
from pipeline.automation.sensors import default_sensor_status
from pipeline.partitions import monthly_partitions

PUSH_STEP = "gradient_unit_counts"

statements_job = dg.define_asset_job(
    name="statements",
    selection=dg.AssetSelection.assets("partner_statements"),
    partitions_def=monthly_partitions,
    description="Write (and e-mail, when configured) a month's partner statements from the stored "
    "counts and the ledger.",
)


@dg.run_failure_sensor(
    name="statements_after_failed_push_sensor",
    monitored_jobs=[monthly_billing_job, gradient_load_job],
    request_job=statements_job,
    default_status=default_sensor_status(),
    description="When a month's push to Gradient failed (so its run skipped partner_statements), "
    "runs the statements job for that month: the partners get their statement anyway.",
)
def statements_after_failed_push_sensor(context: dg.RunFailureSensorContext):
    run = context.dagster_run
    partition = run.tags.get("dagster/partition")
    failed_steps = {event.step_key for event in context.get_step_failure_events()}
    if not partition or PUSH_STEP not in failed_steps:
        return dg.SkipReason(f"run {run.run_id} did not fail in {PUSH_STEP}: no new ledger entries to state")
    return dg.RunRequest(
        run_key=f"statements-after-{run.run_id}",
        partition_key=partition,
        tags=run_tags("statements", reason=f"the push of run {run.run_id} failed"),
    )
