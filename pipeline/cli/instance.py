"""The Dagster instance the CLI runs on, and what keeps it honest.

* ``DAGSTER_HOME``'s instance when it is set (a deployment sets it up), else the embedded
  one in the folder the CLI names (``var/dagster``), which ``dagster dev`` shows too.
* The embedded instance's creation is serialized by a file lock in its folder: two first
  runs at once on a fresh data directory would otherwise both create Dagster's SQLite
  tables (``table secondary_indexes already exists``).
* Runs the CLI launches carry the launching process's host and pid (``process_tags``). At
  start the CLI marks failed those runs of this host that are still NOT_STARTED, STARTING or
  STARTED while their process is gone (killed, crashed, machine rebooted): without a daemon
  nobody else would, and they would show as in progress forever. Runs without these tags
  (launched by the daemon or the UI) are left to Dagster's run monitoring. The tags are
  Dagster's hidden kind (``.dagster/`` prefix): bookkeeping, not shown in the runs list.
* With a daemon on the instance (its run coordinator queues runs and the queue's daemon
  heartbeat is recent), the CLI runs nothing itself: it submits each run to the instance with
  the code location's origin, as the UI does, so the queue, its tag limits, pools, run retries,
  run monitoring and the run-failure sensors apply, and follows it (and the daemon's retries
  of it) to its end. Without one (the embedded demo), it runs the month in this process.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from filelock import FileLock, Timeout

# Hidden tags (Dagster's HIDDEN_TAG_PREFIX ".dagster/": kept on the run, not shown in the UI)
TAG_HOST = ".dagster/gbs-host"
TAG_PID = ".dagster/gbs-pid"
# the process's start time (Linux clock ticks since boot): a pid reused by another process
# does not keep a dead run alive
TAG_PID_START = ".dagster/gbs-pid-start"
# what runs of earlier releases carry, still swept
LEGACY_PROCESS_TAGS = ("gbs/host", "gbs/pid", "gbs/pid_start")
PROCESS_TAGS = ((TAG_HOST, TAG_PID, TAG_PID_START), LEGACY_PROCESS_TAGS)

# The code location the daemon and the webserver load (workspace.yaml, deploy/workspace.yaml)
LOCATION_NAME = "gradient_billing_sync"
REPOSITORY_NAME = "__repository__"
# A daemon whose queue heartbeat (every 30 s) is older than this is taken as not running.
DAEMON_HEARTBEAT_SECONDS = 90
POLL_SECONDS = 0.5

# The same storage as the repository's dagster.yaml (var/dagster), so `dagster dev` shows these runs.
EMBEDDED_INSTANCE_YAML = """run_coordinator:
  module: pipeline.automation.coordinator
  class: BillingRunCoordinator
run_retries:
  enabled: true
  max_retries: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
telemetry:
  enabled: false
"""
LOCK_FILE = ".gbs-instance.lock"
LOCK_TIMEOUT_SECONDS = 300


def cli_instance(home: Path | None = None):
    """The embedded instance in ``home`` (created on first use, under a file lock), or
    DAGSTER_HOME's when ``home`` is None; runs of this host whose process is gone are
    marked failed before it is returned."""
    from dagster import DagsterInstance

    if home is None:
        instance = DagsterInstance.get()
        _sweep_and_say(instance)
        return instance
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home / LOCK_FILE))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
    except Timeout:
        raise RuntimeError(
            f"waited {LOCK_TIMEOUT_SECONDS} s for another gradient-billing-sync process setting up "
            f"the Dagster instance in {home}; try again when it has finished"
        ) from None
    try:
        instance = _open_embedded(home)
        _sweep_and_say(instance)
    finally:
        lock.release()
    return instance


def _sweep_and_say(instance) -> None:
    for run_id in sweep_orphaned_runs(instance):
        click.echo(f"run {run_id} was left in progress by a process that is gone: marked failed", err=True)


def _open_embedded(home: Path):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    config = home / "dagster.yaml"
    if not config.exists():
        partial = home / f".dagster.yaml.{os.getpid()}"
        partial.write_text(EMBEDDED_INSTANCE_YAML)
        partial.replace(config)
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def process_tags() -> dict[str, str]:
    """Tags naming this process, for runs it executes in process."""
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
    started = _process_start(os.getpid())
    if started is not None:
        tags[TAG_PID_START] = started
    return tags


def sweep_orphaned_runs(instance) -> list[str]:
    """Mark failed this host's CLI runs still in progress whose process is gone; their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    in_progress = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    swept = []
    candidates = [
        (run, tag_pid, tag_start)
        for tag_host, tag_pid, tag_start in PROCESS_TAGS
        for run in instance.get_runs(filters=RunsFilter(statuses=in_progress, tags={tag_host: host}))
    ]
    for run, tag_pid, tag_start in candidates:
        pid = run.tags.get(tag_pid, "")
        if run.run_id in swept or not pid.isdigit() or _process_alive(int(pid), run.tags.get(tag_start)):
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status not in in_progress:
            continue
        instance.report_run_failed(
            current,
            message=(
                f"The process that ran this run (pid {pid} on {host}) is gone, killed or crashed "
                f"while the run was {current.status.value}; marked failed when gradient-billing-sync "
                "next started. Re-run the month: what Gradient acknowledged is in the ledger and "
                "is not sent again."
            ),
        )
        swept.append(run.run_id)
    return swept


def _process_alive(pid: int, expected_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if _process_state(pid) == "Z":
        return False  # killed, waiting for its parent to reap it
    started = _process_start(pid)
    return expected_start is None or started is None or started == expected_start


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _process_state(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    return fields[0] if fields else None


def _process_start(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


# =========================================================================== running a month


def daemon_backed(instance) -> bool:
    """Whether a daemon runs this instance's queue: its run coordinator queues runs and the
    queue daemon's heartbeat is recent."""
    from dagster._core.run_coordinator import QueuedRunCoordinator

    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return False
    return _heartbeat_age(instance, "QUEUED_RUN_COORDINATOR") <= DAEMON_HEARTBEAT_SECONDS


def _heartbeat_age(instance, daemon_type: str) -> float:
    beat = instance.get_daemon_heartbeats().get(daemon_type)
    return float("inf") if beat is None else time.time() - beat.timestamp


def in_process_note(instance) -> str | None:
    """What to tell the operator when a deployment's instance (our run coordinator) has no
    daemon: the months run here, without what the daemon brings."""
    from pipeline.automation.coordinator import BillingRunCoordinator

    if not isinstance(instance.run_coordinator, BillingRunCoordinator):
        return None
    return (
        f"no dagster-daemon runs this instance (no queue heartbeat in {DAEMON_HEARTBEAT_SECONDS} s): "
        "the months run in this process, without the run queue, run retries or failure alerts; "
        "start `dagster-daemon run` to have them"
    )


class InProcessRuns:
    """Each month executed in this process (no daemon): the embedded demo's way."""

    QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    VERBOSE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def __init__(self, instance, verbose: bool = False) -> None:
        self.instance, self.verbose = instance, verbose

    def __enter__(self) -> InProcessRuns:
        from pipeline.definitions import build_defs

        self.defs = build_defs()
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, month, job_name: str, load_config: dict, tags: dict[str, str], on_step: Callable[[str], None]):
        """Run the month; ``on_step`` hears each step as it starts. Its ExecuteInProcessResult."""
        import uuid

        from dagster import DagsterEventType

        job = self.defs.resolve_job_def(job_name)
        run_id = str(uuid.uuid4())  # known before it starts: the listener follows its steps

        def heard(entry) -> None:
            event = entry.dagster_event
            if event is not None and event.event_type == DagsterEventType.STEP_START:
                on_step(f"{month.label} {event.step_key}")

        self.instance.add_event_listener(run_id, heard)
        result = job.execute_in_process(
            partition_key=month.key,
            instance=self.instance,
            raise_on_error=False,
            run_config={**(self.VERBOSE if self.verbose else self.QUIET), **load_config},
            tags={**tags, **process_tags()},
            run_id=run_id,
        )
        return result


class InstanceRuns:
    """Each month submitted to the instance, as the UI submits a run, and followed to its end."""

    def __init__(self, instance) -> None:
        self.instance = instance
        self._location: Any = None  # the InProcessCodeLocation, once entered

    def __enter__(self) -> InstanceRuns:
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

        # The definitions loaded here, named as the daemon's workspace names them: the daemon
        # launches, retries and monitors the run with its own copy of that code location.
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, module_name="pipeline.definitions"),
            location_name=deployed_location_name(self.instance),
        )
        self._location = origin.create_location(self.instance)
        return self

    def __exit__(self, *exc) -> None:
        if self._location is not None:
            self._location.cleanup()

    def submit(self, month_key: str, job_name: str, run_config: dict, tags: dict[str, str]) -> str:
        """Create the run (with the code location's origin) and hand it to the run queue."""
        location = self._location
        if location is None:
            raise RuntimeError("submit() outside `with`: the code location is not loaded")
        repository = location.get_repository(REPOSITORY_NAME)
        remote_job = repository.get_full_job(job_name)
        plan = location.get_execution_plan(
            remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
        )
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=run_config,
            status=None,
            tags={**remote_job.tags, **tags, "dagster/partition": month_key},
            root_run_id=None,
            parent_run_id=None,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            job_snapshot=remote_job.job_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            asset_selection=None,
            asset_check_selection=None,
            resolved_op_selection=None,
            op_selection=None,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_graph=repository.asset_graph,
        )
        self.instance.submit_run(run.run_id, workspace=None)
        return run.run_id

    def run(self, month, job_name: str, load_config: dict, tags: dict[str, str], on_step: Callable[[str], None]):
        """Submit the month's run and follow it; the ids of its attempts, the final one last."""
        run_id = self.submit(month.key, job_name, load_config, tags)
        return follow_run(self.instance, run_id, lambda text: on_step(f"{month.label} {text}"))


def deployed_location_name(instance) -> str:
    """The code location's name in the daemon's workspace: where the instance keeps our
    failure sensor's state, else the name workspace.yaml and deploy/workspace.yaml give it."""
    from dagster._core.definitions.run_request import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == "billing_failure_sensor":
            return state.origin.repository_origin.code_location_origin.location_name
    return LOCATION_NAME


def follow_run(instance, run_id: str, on_step: Callable[[str], None]) -> list[str]:
    """Wait for the run to finish, telling ``on_step`` where it is; a failed run the daemon
    retries is followed into its retry. Returns the run ids, the final one last. Raises when
    a run waits on a daemon that stopped heartbeating."""
    from dagster import DagsterEventType, DagsterRunStatus
    from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    attempts = [run_id]
    cursor = None
    shown = ""
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise RuntimeError(f"run {run_id} disappeared from the Dagster instance while the CLI followed it")
        records = instance.get_records_for_run(run_id, cursor=cursor, of_type=DagsterEventType.STEP_START)
        cursor = records.cursor
        if records.records:
            shown = records.records[-1].event_log_entry.step_key or shown
        if run.status not in finished:
            waiting = run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED)
            on_step("queued" if waiting else shown or run.status.value.lower())
            if waiting:
                _require_daemon(instance, "QUEUED_RUN_COORDINATOR", f"run {run_id} is queued")
            time.sleep(POLL_SECONDS)
            continue
        if run.status != DagsterRunStatus.FAILURE or not instance.run_retries_enabled:
            return attempts
        will_retry = run.tags.get(WILL_RETRY_TAG)
        retry_id = run.tags.get(AUTO_RETRY_RUN_ID_TAG)
        if will_retry == "false" or (will_retry is None and _retry_decided_long_ago(instance, run_id)):
            return attempts
        if retry_id is None:
            on_step("failed; waiting for dagster-daemon's retry")
            _require_daemon(instance, "EVENT_LOG_CONSUMER", f"run {run_id} failed and waits for its retry")
            time.sleep(POLL_SECONDS)
            continue
        run_id, cursor, shown = retry_id, None, ""
        attempts.append(run_id)


def _retry_decided_long_ago(instance, run_id: str) -> bool:
    """The failure was stored a while ago and still no one decided on a retry (a run of an
    older Dagster, or retries turned off for it): nothing will come."""
    record = instance.get_run_record_by_id(run_id)
    ended = record.end_time if record is not None else None
    return ended is not None and time.time() - ended > DAEMON_HEARTBEAT_SECONDS


def _require_daemon(instance, daemon_type: str, what: str) -> None:
    age = _heartbeat_age(instance, daemon_type)
    if age > DAEMON_HEARTBEAT_SECONDS:
        since = "never" if age == float("inf") else f"{age:.0f} s ago"
        raise RuntimeError(
            f"{what} but dagster-daemon's {daemon_type} last heartbeat was {since}: start "
            "`dagster-daemon run` on this instance (the run goes on then) and follow it in the UI"
        )
