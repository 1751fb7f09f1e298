"""The CLI's Dagster instance: concurrent first creation on a fresh data directory, and runs
whose process was killed marked failed at the next start."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef
from dagster._core.utils import make_new_run_id

from pipeline.cli import instance as cli_instance_module
from dagster._core.storage.tags import TagType, get_tag_type

from pipeline.automation.jobs import load_run_config, submission_tags
from pipeline.cli.instance import TAG_HOST, TAG_PID, cli_instance, daemon_backed, process_tags, sweep_orphaned_runs

REPO = Path(__file__).resolve().parents[1]


def _first_use(home: str, barrier) -> None:
    barrier.wait()
    with cli_instance(Path(home)) as instance:
        instance.get_runs()


def test_concurrent_first_creation_on_a_fresh_directory_succeeds(tmp_path):
    """Without the lock, four at once fail with 'table ... already exists' nearly every time."""
    home = tmp_path / "dagster"
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(4)
    processes = [spawn.Process(target=_first_use, args=(str(home), barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    with cli_instance(home) as instance:
        assert instance.get_runs() == []
        assert instance.run_monitoring_enabled


def test_repository_dagster_yaml_is_a_valid_instance_config(tmp_path):
    """run_monitoring and the rest of dagster.yaml are accepted by this dagster release."""
    config = (REPO / "dagster.yaml").read_text()
    assert "base_dir: var/dagster" in config
    (tmp_path / "dagster.yaml").write_text(config.replace("base_dir: var/dagster", f"base_dir: {tmp_path}"))
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds > 0


RUN_UNTIL_KILLED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dagster import job, op
    from pipeline.cli.instance import cli_instance, process_tags

    home, marker = Path(sys.argv[1]), Path(sys.argv[2])

    @op
    def push_counts():
        marker.write_text("started")
        time.sleep(3600)

    @job
    def monthly_billing():
        push_counts()

    with cli_instance(home) as instance:
        monthly_billing.execute_in_process(instance=instance, tags=process_tags())
    """
)


def test_a_killed_run_is_marked_failed_at_the_next_start(tmp_path, capsys):
    home = tmp_path / "dagster"
    marker = tmp_path / "started"
    worker = subprocess.Popen(
        [sys.executable, "-c", RUN_UNTIL_KILLED, str(home), str(marker)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        while not marker.exists():
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stderr.close()

    with cli_instance(home) as instance:
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.FAILURE
        assert run.tags[TAG_PID] == str(worker.pid)
        [failure] = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.RUN_FAILURE
        ).records
        message = failure.event_log_entry.dagster_event.message
        assert f"pid {worker.pid}" in message and "killed or crashed" in message
        assert "was STARTED" in message
    assert f"run {run.run_id} was left in progress by a process that is gone" in capsys.readouterr().err


@pytest.fixture
def instance(tmp_path):
    with cli_instance(tmp_path / "dagster") as instance:
        yield instance


def _in_progress_run(instance, tags: dict[str, str]) -> str:
    run = DagsterRun(job_name="monthly_billing", run_id=make_new_run_id(), status=DagsterRunStatus.STARTED, tags=tags)
    instance.add_run(run)
    return run.run_id


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_sweep_leaves_live_untagged_and_other_hosts_runs_alone(instance):
    mine = process_tags()
    dead = _dead_pid()
    live = _in_progress_run(instance, mine)
    untagged = _in_progress_run(instance, {})
    elsewhere = _in_progress_run(instance, {TAG_HOST: "another-host", TAG_PID: str(dead)})
    orphan = _in_progress_run(instance, {TAG_HOST: mine[TAG_HOST], TAG_PID: str(dead)})

    assert sweep_orphaned_runs(instance) == [orphan]

    statuses = {run_id: instance.get_run_by_id(run_id).status for run_id in (live, untagged, elsewhere, orphan)}
    assert statuses == {
        live: DagsterRunStatus.STARTED,
        untagged: DagsterRunStatus.STARTED,
        elsewhere: DagsterRunStatus.STARTED,
        orphan: DagsterRunStatus.FAILURE,
    }
    assert sweep_orphaned_runs(instance) == []


def test_a_reused_pid_does_not_keep_a_dead_run_in_progress(instance):
    """The pid is alive (this process) but started at another time: a different process."""
    tags = {**process_tags(), cli_instance_module.TAG_PID_START: "1"}
    if os.path.exists("/proc/self/stat") is False:
        pytest.skip("process start times come from Linux /proc")
    run_id = _in_progress_run(instance, tags)

    assert sweep_orphaned_runs(instance) == [run_id]


def test_runs_the_cli_launches_carry_its_host_and_pid(tmp_path, monkeypatch):
    """What the sweep relies on: a `run` of the CLI is tagged with the process that ran it."""
    from click.testing import CliRunner

    from pipeline.cli.main import main
    from pipeline.gradient.partner_keys import generate_encryption_key
    from pipeline.resources import engine_for

    home = tmp_path / "dagster-home"
    home.mkdir()
    for name, value in {
        "GBS_DATA_DIR": str(tmp_path / "var"),
        "PRODUCT_DB_URL": f"sqlite:///{tmp_path / 'product.db'}",
        "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "GRADIENT_VENDOR_API_KEY": "instance-test-vendor-key",
        "GRADIENT_KEY_ENCRYPTION_KEYS": generate_encryption_key(),
        "DAGSTER_HOME": str(home),
    }.items():
        monkeypatch.setenv(name, value)
    engine_for.cache_clear()
    runner = CliRunner()
    seeded = runner.invoke(main, ["seed-demo", "--partners", "1", "--companies", "1-1", "--users", "2-2",
                                  "--end-month", "2026-10", "--history-months", "1"])
    assert seeded.exit_code == 0, seeded.output

    runner.invoke(main, ["run", "--month", "2026-10"])  # its outcome (no Gradient here) is not the point

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        [run] = instance.get_runs()
    assert {k: run.tags.get(k) for k in process_tags()} == process_tags()
    # bookkeeping, hidden from the runs list; what the run is, shown
    assert all(get_tag_type(key) == TagType.HIDDEN for key in process_tags())
    assert not any(key.startswith(("gbs/host", "gbs/pid")) for key in run.tags)
    assert (run.tags["gbs/trigger"], run.tags["gbs/month"], run.tags["gbs/partner"]) == ("cli", "2026-10", "all")
    engine_for.cache_clear()


def test_a_run_of_an_earlier_release_is_still_swept(instance):
    """Runs tagged with the visible gbs/host, gbs/pid of earlier releases."""
    orphan = _in_progress_run(instance, {"gbs/host": process_tags()[TAG_HOST], "gbs/pid": str(_dead_pid())})
    assert sweep_orphaned_runs(instance) == [orphan]


# =========================================================================== through the instance


def test_a_run_is_tagged_with_its_trigger_month_and_partner_as_it_is_submitted(instance):
    """The instance's run coordinator (the CLI's embedded instance and deploy/dagster.yaml):
    a launchpad run for one partner, an asset backfill's, a sensor's, the schedule's."""
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    one_partner = load_run_config("gradient_load", ["p-002"])
    launchpad = {"gbs/trigger": "ui", "gbs/partner": "all", "dagster/partition": "2026-10-01"}
    cases = [
        # the job's UI defaults corrected: the one partner its config names
        (launchpad, one_partner, {"gbs/trigger": "ui", "gbs/partner": "p-002", "gbs/month": "2026-10"}),
        # an asset-graph materialization: no job tags at all
        ({"dagster/partition": "2026-09-01"}, None, {"gbs/trigger": "ui", "gbs/partner": "all", "gbs/month": "2026-09"}),
        ({BACKFILL_ID_TAG: "abc", "dagster/partition": "2026-09-01"}, None,
         {"gbs/trigger": "backfill", "gbs/partner": "all", "gbs/month": "2026-09"}),
        # what the sensors and the CLI set stays
        ({"gbs/trigger": "sensor", "gbs/request": "connect", "gbs/partner": "p-004", "dagster/sensor_name": "x"},
         load_run_config("gradient_load", ["p-004"]), {"gbs/trigger": "sensor", "gbs/partner": "p-004"}),
        ({"gbs/trigger": "ui", "dagster/schedule_name": "monthly_billing_schedule", "gbs/partner": "all"}, None,
         {"gbs/trigger": "schedule", "gbs/partner": "all"}),
    ]
    for tags, run_config, expected in cases:
        assert {**tags, **submission_tags(tags, run_config)}.items() >= expected.items(), (tags, expected)

    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="pipeline.definitions"),
        location_name="gradient_billing_sync",
    )
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "gradient_load")
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

    python_origin = JobPythonOrigin(
        "gradient_load", RepositoryPythonOrigin(sys.executable, ModuleCodePointer("pipeline.definitions", "defs", None))
    )
    run = DagsterRun(job_name="gradient_load", run_id=make_new_run_id(), run_config=one_partner, tags=launchpad,
                     remote_job_origin=origin, job_code_origin=python_origin)
    instance.add_run(run)
    instance.submit_run(run.run_id, workspace=None)
    submitted = instance.get_run_by_id(run.run_id)
    assert submitted.status == DagsterRunStatus.QUEUED
    assert {k: submitted.tags.get(k) for k in ("gbs/trigger", "gbs/partner", "gbs/month")} == {
        "gbs/trigger": "ui", "gbs/partner": "p-002", "gbs/month": "2026-10"
    }


def test_the_cli_goes_through_the_instance_only_while_its_daemon_heartbeats(instance, tmp_path):
    from dagster._daemon.types import DaemonHeartbeat

    assert not daemon_backed(instance)  # no daemon ever ran: the embedded demo runs in process
    now = time.time()
    instance.add_daemon_heartbeat(DaemonHeartbeat(now - 600, "QUEUED_RUN_COORDINATOR", None, None))
    assert not daemon_backed(instance)  # a daemon that stopped ten minutes ago
    instance.add_daemon_heartbeat(DaemonHeartbeat(now, "QUEUED_RUN_COORDINATOR", None, None))
    assert daemon_backed(instance)

    # an instance that runs each run at once (no queue) never waits on a daemon
    home = tmp_path / "immediate"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as immediate:
        immediate.add_daemon_heartbeat(DaemonHeartbeat(now, "QUEUED_RUN_COORDINATOR", None, None))
        assert not daemon_backed(immediate)
