"""Child process of the benchmark: one Dagster run of a job's asset group for one partition.

    python -m bench.dagster_run --job monthly_billing --group month_end --partition 2026-10-01 --out run.json

The job is the code location's own (``build_defs()``, resources from the environment), run
through ``execute_job`` on the instance in ``DAGSTER_HOME`` with the executor the job defines,
as a launched run would. Writes the run's seconds, per-step times read from the event log
(STEP_START .. STEP_SUCCESS / STEP_FAILURE), the numeric materialization metadata and the
peak RSS of this process and of its children (step subprocesses, if the executor makes any).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import dagster as dg
from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

from bench.memory import own_peak_rss_mb
from pipeline.definitions import build_defs

QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def monthly_billing() -> dg.JobDefinition:
    """The month-end + load job as the code location defines it (reconstructable target)."""
    return build_defs().resolve_job_def("monthly_billing")


def gradient_load() -> dg.JobDefinition:
    """The load-only job as the code location defines it (reconstructable target)."""
    return build_defs().resolve_job_def("gradient_load")


JOBS = {"monthly_billing": monthly_billing, "gradient_load": gradient_load}


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MB) of this process (``VmHWM``: since its own start, see
    ``bench.memory``) and of the largest child it waited for (``ru_maxrss``, which on Linux
    includes this process's memory when the child was spawned: step subprocesses, if the
    executor makes any)."""
    own = own_peak_rss_mb()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"process": own, "children": round(children, 1), "peak": round(max(own, children), 1)}


def step_times(instance: DagsterInstance, run_id: str) -> dict[str, dict]:
    """Per step: seconds from its first STEP_START to its last STEP_SUCCESS/FAILURE, and status."""
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    steps: dict[str, dict] = {}
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        entry = record.event_log_entry
        step = steps.setdefault(entry.step_key, {"start": None, "end": None, "status": None})
        if entry.dagster_event.event_type == DagsterEventType.STEP_START:
            step["start"] = entry.timestamp if step["start"] is None else step["start"]
        else:
            step["end"] = entry.timestamp
            step["status"] = "success" if entry.dagster_event.event_type == DagsterEventType.STEP_SUCCESS else "failure"
    return {
        key: {
            "seconds": round(s["end"] - s["start"], 3) if s["start"] and s["end"] else None,
            "status": s["status"],
        }
        for key, s in steps.items()
    }


def run_seconds(instance: DagsterInstance, run_id: str) -> float | None:
    """RUN_START to RUN_SUCCESS/FAILURE as Dagster recorded them."""
    kinds = {DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE}
    stamps = {
        r.event_log_entry.dagster_event.event_type: r.event_log_entry.timestamp
        for r in instance.get_records_for_run(run_id, of_type=kinds).records
    }
    end = stamps.get(DagsterEventType.RUN_SUCCESS) or stamps.get(DagsterEventType.RUN_FAILURE)
    start = stamps.get(DagsterEventType.RUN_START)
    return round(end - start, 3) if start and end else None


def materialization_metadata(instance: DagsterInstance, run_id: str) -> dict[str, dict]:
    """Numeric metadata of each asset materialized (and of failed steps' Failure metadata)."""
    found: dict[str, dict] = {}
    kinds = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.STEP_FAILURE}
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        event = record.event_log_entry.dagster_event
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            key = event.asset_key.to_user_string()
            metadata = event.step_materialization_data.materialization.metadata
        else:
            key = record.event_log_entry.step_key
            error = event.step_failure_data
            metadata = dict(error.user_failure_data.metadata) if error and error.user_failure_data else {}
            found.setdefault(key, {})["error"] = error.error.message.strip()[:500] if error and error.error else None
        found.setdefault(key, {}).update(
            {
                name: value.value
                for name, value in metadata.items()
                if isinstance(value.value, (int, float)) and not isinstance(value.value, bool)
            }
        )
    return found


def run(job_name: str, group: str, partition: str) -> dict:
    defs = build_defs()
    asset_keys = sorted(
        dg.AssetSelection.groups(group).resolve(defs.resolve_asset_graph()), key=lambda k: k.to_user_string()
    )
    with DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = execute_job(
            reconstructable(JOBS[job_name]),
            instance,
            run_config=QUIET_RUN_CONFIG,
            tags={"dagster/partition": partition, "gbs/trigger": "bench"},
            asset_selection=asset_keys,
        )
        seconds = time.perf_counter() - started
        run_id = result.run_id
        return {
            "job": job_name,
            "group": group,
            "assets": [k.to_user_string() for k in asset_keys],
            "partition": partition,
            "run_id": run_id,
            "success": result.success,
            "seconds": round(seconds, 3),
            "dagster_run_seconds": run_seconds(instance, run_id),
            "steps": step_times(instance, run_id),
            "metadata": materialization_metadata(instance, run_id),
            "rss_mb": peak_rss_mb(),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One Dagster run of an asset group, measured.")
    parser.add_argument("--job", choices=sorted(JOBS), required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--partition", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(run(args.job, args.group, args.partition), default=str))


if __name__ == "__main__":
    main()
