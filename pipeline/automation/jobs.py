"""Jobs, and the run config / tags the automation builds for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

from pipeline.partitions import monthly_partitions

MONTH_END = "month_end"
GRADIENT_LOAD = "gradient_load"

TAG_TRIGGER = "gbs/trigger"
TAG_REQUEST = "gbs/request"
TAG_PARTNER = "gbs/partner"
TAG_MONTH = "gbs/month"
TAG_REASON = "gbs/reason"
TAG_OUTCOME = "gbs/outcome"
# per ledger outcome, how many counts a run recorded: gbs/delivered, gbs/unmapped, ...
TAG_COUNTS_PREFIX = "gbs/"
ALL_PARTNERS = "all"
PARTITION_TAG = "dagster/partition"

# What started a run (gbs/trigger): one of five, so the runs list can be filtered by it.
SCHEDULE, SENSOR, BACKFILL, CLI, UI = "schedule", "sensor", "backfill", "cli", "ui"
TRIGGERS = (SCHEDULE, SENSOR, BACKFILL, CLI, UI)
MANUAL = UI  # the jobs' default: a run launched from the UI's launchpad
# What asked for a run (gbs/request), for triggers that ask for different things.
REQUEST_TRIGGER = {
    "connect": SENSOR,
    "disconnect": SENSOR,
    "update_counts": SENSOR,
    "sync_accounts": SENSOR,
    "missed": SENSOR,
    "late": SENSOR,
    "statements": SENSOR,
    "demo": CLI,
    "preview": CLI,
}
LOAD_OPS = ("gradient_services", "gradient_accounts", "gradient_unit_counts")
ACCOUNT_SYNC_OPS = ("gradient_services", "gradient_accounts")


def load_run_config(job_name: str, partner_ids: Sequence[str] = (), force: bool = False, resend: bool = False) -> dict:
    """Run config choosing partners (empty = all connected) for the load assets of a job;
    ``force`` pushes a month older than the newest delivered one; ``resend`` sends every pair
    whatever the ledger says. (A preview is its own job, ``gradient_preview``: it materializes
    nothing.)"""
    load: dict[str, object] = {"partner_ids": list(partner_ids), "force_superseded": force}
    if resend:
        load["resend"] = True
    ops = [op for op in (ACCOUNT_SYNC_OPS if job_name == "account_sync" else LOAD_OPS) if op != "gradient_services"]
    return {"ops": {op: {"config": load} for op in ops}}


def launchpad_config(job_name: str) -> dict:
    """A job's default run config: every load option, so the UI's launchpad shows them."""
    return load_run_config(job_name)


def outcome_tags(outcome: str, totals: Mapping[str, int]) -> dict[str, str]:
    """``gbs/outcome`` and, per ledger outcome, the counts a run recorded (``gbs/delivered=123``;
    zeros left out except delivered), so the runs list says what each run delivered."""
    tags = {TAG_OUTCOME: outcome}
    for name, count in totals.items():
        if count or name == "delivered":
            tags[f"{TAG_COUNTS_PREFIX}{name}"] = str(int(count))
    return tags


def run_tags(
    trigger: str, partner_id: str | None = None, reason: str | None = None, month_key: str | None = None
) -> dict[str, str]:
    """A run's tags: ``trigger`` is one of TRIGGERS or a request of REQUEST_TRIGGER (``connect``
    gives ``gbs/trigger=sensor``, ``gbs/request=connect``)."""
    tags = {TAG_TRIGGER: REQUEST_TRIGGER.get(trigger, trigger), TAG_PARTNER: partner_id or ALL_PARTNERS}
    if trigger in REQUEST_TRIGGER:
        tags[TAG_REQUEST] = trigger
    if month_key:
        tags[TAG_MONTH] = month_key[:7]
    if reason:
        tags[TAG_REASON] = reason[:250]
    return tags


def submission_tags(tags: Mapping[str, str], run_config: Mapping[str, object] | None) -> dict[str, str]:
    """The gbs/* tags a run submitted to the instance lacks, from what Dagster knows at
    submission: its trigger (Dagster's schedule / sensor / backfill tags, else the UI), its
    month (the partition) and the one partner its load config names. Tags the run already
    carries win, except the jobs' UI defaults where Dagster's own tags say otherwise."""
    added: dict[str, str] = {}
    trigger = tags.get(TAG_TRIGGER)
    if trigger in (None, UI):
        if "dagster/backfill" in tags:
            derived = BACKFILL
        elif "dagster/schedule_name" in tags:
            derived = SCHEDULE
        elif "dagster/sensor_name" in tags:
            derived = SENSOR
        else:
            derived = UI
        if derived != trigger:
            added[TAG_TRIGGER] = derived
    partition = tags.get(PARTITION_TAG)
    if partition and TAG_MONTH not in tags:
        added[TAG_MONTH] = partition[:7]
    if tags.get(TAG_PARTNER) in (None, ALL_PARTNERS):
        partners = configured_partners(run_config)
        partner = partners[0] if len(partners) == 1 else ALL_PARTNERS
        if tags.get(TAG_PARTNER) != partner:
            added[TAG_PARTNER] = partner
    return added


def configured_partners(run_config: Mapping[str, object] | None) -> list[str]:
    """The partners a run's load config names (none: every connected partner)."""
    ops = (run_config or {}).get("ops")
    found: set[str] = set()
    if isinstance(ops, Mapping):
        for op in LOAD_OPS:
            config = ops.get(op)
            config = config.get("config") if isinstance(config, Mapping) else None
            partner_ids = config.get("partner_ids") if isinstance(config, Mapping) else None
            if isinstance(partner_ids, (list, tuple)):
                found.update(str(p) for p in partner_ids)
    return sorted(found)


# Runs launched from the UI carry these (gbs/trigger=ui); sensors, the schedule and the CLI
# override them, and the instance's run coordinator (pipeline.automation.coordinator) corrects
# them from what Dagster knows at submission. The default run config pre-fills the launchpad
# with every load option.
monthly_billing_job = dg.define_asset_job(
    name="monthly_billing",
    selection=dg.AssetSelection.groups(MONTH_END, GRADIENT_LOAD),
    partitions_def=monthly_partitions,
    description="Extract, validate and count one billing month, then load it into Gradient.",
    config=launchpad_config("monthly_billing"),
    run_tags=run_tags(MANUAL),
    # One process for all steps: a step's process start costs more than its work, and
    # billable_counts takes the counts validation's pass left in this process.
    executor_def=dg.in_process_executor,
)

gradient_load_job = dg.define_asset_job(
    name="gradient_load",
    selection=dg.AssetSelection.groups(GRADIENT_LOAD),
    partitions_def=monthly_partitions,
    description="Load a month's stored billable counts into Gradient (services, accounts, counts).",
    config=launchpad_config("gradient_load"),
    run_tags=run_tags(MANUAL),
)

account_sync_job = dg.define_asset_job(
    name="account_sync",
    selection=dg.AssetSelection.assets("gradient_services", "gradient_accounts"),
    partitions_def=monthly_partitions,
    description="Keep partners' Gradient accounts in step with their companies.",
    config=launchpad_config("account_sync"),
    run_tags=run_tags(MANUAL),
)
