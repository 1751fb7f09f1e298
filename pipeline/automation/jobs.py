"""Jobs, and the run config / tags the automation builds for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

from pipeline.partitions import monthly_partitions

MONTH_END = "month_end"
GRADIENT_LOAD = "gradient_load"

TAG_TRIGGER = "gbs/trigger"
TAG_PARTNER = "gbs/partner"
TAG_REASON = "gbs/reason"
TAG_OUTCOME = "gbs/outcome"
# per ledger outcome, how many counts a run recorded: gbs/delivered, gbs/unmapped, ...
TAG_COUNTS_PREFIX = "gbs/"
ALL_PARTNERS = "all"
MANUAL = "manual"
LOAD_OPS = ("gradient_services", "gradient_accounts", "gradient_unit_counts")
ACCOUNT_SYNC_OPS = ("gradient_services", "gradient_accounts")


def load_run_config(job_name: str, partner_ids: Sequence[str] = (), force: bool = False) -> dict:
    """Run config choosing partners (empty = all connected) for the load assets of a job;
    ``force`` pushes a month older than the newest delivered one. (A preview is its own job,
    ``gradient_preview``: it materializes nothing.)"""
    load = {"partner_ids": list(partner_ids), "force_superseded": force}
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


def run_tags(trigger: str, partner_id: str | None = None, reason: str | None = None) -> dict[str, str]:
    tags = {TAG_TRIGGER: trigger, TAG_PARTNER: partner_id or ALL_PARTNERS}
    if reason:
        tags[TAG_REASON] = reason[:250]
    return tags


# Runs launched from the UI carry these; sensors, the schedule and the CLI override them. The
# default run config pre-fills the launchpad with every load option.
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
