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
  (launched by the daemon or the UI) are left to Dagster's run monitoring.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click
from filelock import FileLock, Timeout

TAG_HOST = "gbs/host"
TAG_PID = "gbs/pid"
# the process's start time (Linux clock ticks since boot): a pid reused by another process
# does not keep a dead run alive
TAG_PID_START = "gbs/pid_start"

# The same storage as the repository's dagster.yaml (var/dagster), so `dagster dev` shows these runs.
EMBEDDED_INSTANCE_YAML = """run_retries:
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
    for run in instance.get_runs(filters=RunsFilter(statuses=in_progress, tags={TAG_HOST: host})):
        pid = run.tags.get(TAG_PID, "")
        if not pid.isdigit() or _process_alive(int(pid), run.tags.get(TAG_PID_START)):
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
