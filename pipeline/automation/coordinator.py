"""The instance's run coordinator: Dagster's run queue, with every run's gbs/* tags set as
it is submitted.

Every run that goes through the instance passes here before it is queued: runs launched from
the UI (launchpad, asset graph), the schedule's, the sensors', backfills', the daemon's
retries and the CLI's. Whatever started it, the run carries ``gbs/trigger`` (schedule |
sensor | backfill | cli | ui), ``gbs/month`` and ``gbs/partner`` (the one partner its config
names, else ``all``) before its first step, so a run that fails at once is still labelled,
and the queue's ``gbs/partner`` limit sees the partner a launchpad run really loads.

Configured in ``deploy/dagster.yaml`` (and the embedded instance) as::

    run_coordinator:
      module: pipeline.automation.coordinator
      class: BillingRunCoordinator
      config: {...}   # QueuedRunCoordinator's own settings
"""

from __future__ import annotations

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun

from pipeline.automation.jobs import submission_tags


class BillingRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator that adds the run's missing gbs/* tags (``submission_tags``)."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        added = submission_tags(run.tags, run.run_config)
        if added:
            self._instance.add_run_tags(run.run_id, added)
            run = self._instance.get_run_by_id(run.run_id) or run.with_tags({**run.tags, **added})
        return super().submit_run(SubmitRunContext(run, context.workspace))
