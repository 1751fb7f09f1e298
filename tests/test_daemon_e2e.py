"""The production topology end to end: ``dagster-webserver`` and ``dagster-daemon`` as real
subprocesses on a Postgres-backed Dagster instance (derived from ``deploy/dagster.yaml``: run
queue with tag limits, pools), the code location loaded from ``pipeline.definitions``, a
SQLite product DB seeded with demo data, a SQLite state DB, and Gradient as the real HTTP
emulator in this process. Everything is driven through the webserver's GraphQL API
(``pipeline.automation.dagster_api`` over dagster-graphql's client), as an operator or the CLI would:

1. a three-month asset backfill of the monthly job, run by the daemon's backfill loop and
   run queue: every partition succeeds; Gradient ends on October's numbers (the newest month)
   whatever order the runs took; the ledger has all three months;
2. ``partner_connected_sensor`` turned on, then a partner presses Connect in the product: the
   daemon's sensor launches a ``gbs/trigger=sensor``, ``gbs/request=connect`` run for that
   partner only, which creates its accounts and pushes its latest closed month;
3. a CLI ``run`` while Gradient is down: submitted to the daemon's queue, retried by the
   daemon, every attempt recorded by the failure sensor, as a run launched from the UI.

Rules under test: the design notes' "Automation", "Instances" and "The target: Gradient".

Every wait follows progress, not a fixed clock: it goes on while the deployment advances (a
location loads, a daemon heartbeats, a run starts or finishes a step) and fails only after
``STALL_TIMEOUT`` without any change, or after its generous overall cap, with the processes' logs.
A loaded 2-core machine makes the test slower, not red.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from pipeline.gradient import ledger
from pipeline.source import product_schema as ps
from pipeline.billing.month import last_closed_month
from dagster_graphql import DagsterGraphQLClient

from pipeline.automation import dagster_api
from pipeline.automation.dagster_api import DagsterGraphQLError
from pipeline.demo.run import register_demo_partners
from pipeline.demo.data import DemoSpec, connection_rows, demo_partner_key, load_demo_data
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.source.partners import load_companies
from pipeline.store.schema import ensure_state_schema
from pipeline.store.months import load_billable_counts

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(3600)]

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LOCATION = "gradient_billing_sync"
VENDOR_KEY = "vk-daemon-e2e-5c1d9e"

# Four demo partners, the first three connected (p-003 with only half its companies mapped in
# its PSA, as register_demo_partners does); p-004 connects during the test.
SPEC = DemoSpec(
    partners=4,
    connected_partners=3,
    companies_per_partner=(2, 4),
    users_per_company=(2, 6),
    end_month=date(2026, 11, 1),
    history_months=5,
)
CONNECTED = ["p-001", "p-002", "p-003"]
NEW_PARTNER = "p-004"
AUG, SEP, OCT = date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1)
MONTHS = [AUG, SEP, OCT]
MONTH_KEYS = [m.isoformat() for m in MONTHS]
MONTHLY_ASSETS = {
    "utilization_extract",
    "validated_utilization",
    "billable_counts",
    "gradient_services",
    "gradient_accounts",
    "gradient_unit_counts",
    "gradient_ledger",
    "partner_statements",
}

# A wait fails when nothing it watches changed for STALL_TIMEOUT (seconds), or at its cap.
# Quiet, the backfill takes ~170 s and the sensor run ~60 s; the caps allow a machine 5-10x slower.
STALL_TIMEOUT = 600
STARTUP_CAP = 900  # webserver + code location, daemon heartbeats
BACKFILL_CAP = 2400  # backfill loop every 30 s, three queued runs one at a time, completion tick
SENSOR_CAP = 900  # sensor minimum interval 30 s, then one run

_WORKSPACE = """
query Workspace {
  workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } }
  } } }
}"""

_DAEMONS = """
query Daemons { instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
"""


def org(partner_id: str) -> str:
    return f"org-{partner_id}"


def dagster_command(name: str) -> str:
    """``dagster-webserver`` / ``dagster-daemon`` of the interpreter running the tests."""
    local = VENV_BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed next to {sys.executable}; pip install -e '.[dev]'", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def psycopg2_url(url: str) -> str:
    """A Postgres URL naming the installed driver: SQLAlchemy 2.1 maps a bare ``postgresql://``
    to psycopg 3, which is not a dependency (psycopg2-binary is)."""
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def production_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())


def instance_config(poll_seconds: int = 1) -> dict:
    """deploy/dagster.yaml, kept Postgres-backed with its queue, tag limits, pools and retries;
    only the polling is made faster for a test."""
    config = production_config()
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    # Dagster's run queue, tagging each run as it is submitted
    assert config["run_coordinator"]["class"] == "BillingRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"] == "gbs/partner"
    queue = config["run_coordinator"].setdefault("config", {})
    queue["dequeue_interval_seconds"] = poll_seconds
    config["run_monitoring"]["poll_interval_seconds"] = 5
    config["telemetry"] = {"enabled": False}
    return config


# =========================================================================== the deployment


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 80) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the process group this test started (the process and its code server /
        run workers), then SIGKILL whatever is left after ``grace`` seconds."""
        pgid = self.popen.pid  # started with start_new_session=True: its own group
        if self.alive():
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


class WebhookReceiver:
    """A Slack-compatible webhook on localhost: keeps every JSON body posted to it."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        posts: list[dict] = []
        self.posts = posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Deployment:
    tmp: Path
    dagster_home: Path
    product: sa.Engine
    state: sa.Engine
    fernet_key: str
    emulator: EmulatorServer
    admin: EmulatorAdmin
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    dagster: DagsterGraphQLClient | None = None
    webhook: WebhookReceiver | None = None

    def start(self, name: str, args: list[str]) -> Process:
        log = self.tmp / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            args,
            cwd=self.dagster_home,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        handle.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        parts = []
        for p in self.processes:
            state = "running" if p.alive() else f"exited {p.popen.returncode}"
            parts.append(f"----- {p.name} ({state}), last lines of {p.log}:\n{p.tail()}")
        return "\n".join(parts)

    def diagnose(self, what: str) -> str:
        return f"{what}\n{self.logs()}"

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                pytest.fail(self.diagnose(f"{process.name} exited {process.popen.returncode}"), pytrace=False)

    def wait(self, what: str, fetch, done, progress, *, cap: float, poll_interval: float = 2.0):
        """Poll ``fetch`` (the processes must stay alive) until ``done``; fail with the logs
        after STALL_TIMEOUT without a change in ``progress`` or after ``cap`` seconds."""

        def checked():
            self.check_alive()
            return fetch()

        try:
            return dagster_api.wait_on_progress(
                checked, done, progress, lambda state: f"{what}: {state}",
                stall_timeout=STALL_TIMEOUT, timeout=cap, poll_interval=poll_interval,
            )
        except dagster_api.DagsterWaitTimeout as exc:
            pytest.fail(self.diagnose(str(exc)), pytrace=False)

    def wait_until_ready(self) -> None:
        """The webserver answers, the code location is loaded, every required daemon heartbeats."""
        assert self.dagster is not None
        client = self.dagster

        def locations() -> dict[str, str] | str:
            try:
                data = dagster_api.execute(client, _WORKSPACE)["workspaceOrError"]
            except DagsterGraphQLError as exc:
                return exc.message  # not answering yet
            for entry in data.get("locationEntries") or ():
                loaded = entry.get("locationOrLoadError") or {}
                if loaded.get("__typename") == "PythonError":  # waiting will not help
                    pytest.fail(self.diagnose(f"{entry['name']} failed to load: {loaded['message']}"), pytrace=False)
            return {e["name"]: e["loadStatus"] for e in data.get("locationEntries") or ()}

        self.wait("code location", locations, lambda s: isinstance(s, dict) and s.get(LOCATION) == "LOADED",
                  str, cap=STARTUP_CAP, poll_interval=0.5)

        def unhealthy() -> tuple[str, ...]:
            statuses = dagster_api.execute(client, _DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
            return tuple(sorted(d["daemonType"] for d in statuses if d["required"] and not d["healthy"]))

        self.wait("daemons not healthy", unhealthy, lambda s: not s, lambda s: s, cap=STARTUP_CAP, poll_interval=1.0)

    # ------------------------------------------------------------------ reading back
    def service_skus(self) -> dict[str, str]:
        return {sid: sku for sku, sid in ledger.service_ids(self.state).items()}

    def emulator_counts(self) -> dict[tuple[str, str, str], int]:
        """What Gradient shows now: (partner, account, sku) -> units."""
        skus = self.service_skus()
        return {
            (row["organization_id"].removeprefix("org-"), row["account_id"], skus[row["service_id"]]): int(
                row["unit_count"]
            )
            for row in self.admin.counts()
        }

    def mapped_pairs(self) -> set[tuple[str, str, str]]:
        """(partner, account, sku) whose account and service the partner mapped in its PSA."""
        sku_of = self.service_skus()
        pairs = set()
        for organization, partner in self.admin.state()["partners"].items():
            skus = {sku_of[s] for s in partner["service_mappings"] if s in sku_of}
            for account in partner["account_mappings"]:
                pairs |= {(organization.removeprefix("org-"), account, sku) for sku in skus}
        return pairs

    def billable(self, month: date) -> dict[tuple[str, str, str], int]:
        frame = load_billable_counts(self.state, month)
        return {
            (r.partner_id, r.company_id, r.sku): int(r.billable_users) for r in frame.itertuples(index=False)
        }

    def entries(self, month: date) -> list[dict]:
        return ledger.entries_for(self.state, month)

    def delivered(self, month: date, partner_ids: set[str] | None = None) -> dict[tuple[str, str, str], int]:
        """The newest delivered value per (partner, account, sku) for the month."""
        out: dict[tuple[str, str, str], int] = {}
        for e in self.entries(month):  # ordered by entry id
            if e["outcome"] == ledger.DELIVERED and (partner_ids is None or e["partner_id"] in partner_ids):
                out[(e["partner_id"], e["account_id"], e["sku"])] = int(e["value"])
        return out


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str) -> Iterator[Deployment]:
    # ---- the product DB (SQLite, demo data) and the state DB (SQLite)
    fernet_key = Fernet.generate_key().decode()
    product_url = f"sqlite:///{tmp_path / 'product.db'}"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    product = sa.create_engine(product_url)
    load_demo_data(product, SPEC, encryption_keys=fernet_key)
    state = sa.create_engine(state_url, connect_args={"timeout": 60})
    ensure_state_schema(state)

    # ---- the Dagster instance: deploy/dagster.yaml on this test's Postgres database
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(), sort_keys=False))
    (dagster_home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "pipeline.definitions",
                            "location_name": LOCATION,
                            "working_directory": str(REPO_ROOT),
                        }
                    }
                ]
            }
        )
    )

    emulator = EmulatorServer(VENDOR_KEY).start()
    admin = EmulatorAdmin(emulator.base_url)
    webhook = WebhookReceiver()

    # the pipeline's settings come from this test only, never from the caller's environment
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAGSTER_", "GRADIENT_", "GBS_", "PYTEST_", "MONTH_WATCH_", "STATEMENTS_"))
        and not k.endswith("_SQL")
        and k not in {"PRODUCT_DB_URL", "STATE_DB_URL", "QUARANTINE_THRESHOLD", "BILLING_TIMEZONE"}
    }
    env.update(
        {
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_POSTGRES_URL": psycopg2_url(postgres_url),
            "PRODUCT_DB_URL": product_url,
            "STATE_DB_URL": state_url,
            "GRADIENT_BASE_URL": emulator.base_url,
            "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
            "GRADIENT_KEY_ENCRYPTION_KEYS": fernet_key,
            # every sensor starts stopped: only the one the test turns on runs. The schedule
            # (default running) only ticks on the 1st at 08:00 New York, so it never fires here.
            "GBS_SENSORS_DEFAULT_STATUS": "stopped",
            "GBS_DATA_DIR": str(tmp_path / "data"),
            # the demo's bad rows are a large share of a month this small: let them through
            "QUARANTINE_THRESHOLD": "0.5",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            # failure alerts to a local webhook (its sensor starts stopped, like every sensor)
            "ALERT_WEBHOOK_URL": webhook.url,
        }
    )
    world = Deployment(tmp_path, dagster_home, product, state, fernet_key, emulator, admin, env, webhook=webhook)
    try:
        assert register_demo_partners(admin, product) == CONNECTED
        port = free_port()
        web = world.start(
            "webserver",
            [dagster_command("dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        )
        daemon = world.start("daemon", [dagster_command("dagster-daemon"), "run", "-w", "workspace.yaml"])
        world.dagster = dagster_api.connect(f"http://127.0.0.1:{port}")
        world.wait_until_ready()
        assert web.alive() and daemon.alive(), world.diagnose("dagster-webserver or dagster-daemon exited")
        yield world
    finally:
        for process in reversed(world.processes):
            process.stop()
        admin.close()
        emulator.stop()
        webhook.stop()
        product.dispose()
        state.dispose()


# =========================================================================== the tests


def test_production_instance_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/dagster.yaml, unchanged, is a valid Dagster instance config."""
    from dagster._core.instance.ref import InstanceRef

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://user@127.0.0.1:5432/dagster")
    (tmp_path / "dagster.yaml").write_text((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    InstanceRef.from_dir(str(tmp_path))  # validates the config; connects to nothing


def test_env_example_urls_have_an_installed_driver() -> None:
    """Every database URL in deploy/env.example can be opened with the project's dependencies."""
    urls = {}
    for line in (REPO_ROOT / "deploy" / "env.example").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip().endswith("_URL") and value.strip().startswith("postgres"):
            urls[name.strip()] = value.strip()
    assert "DAGSTER_POSTGRES_URL" in urls
    for name, url in sorted(urls.items()):
        sa.create_engine(url).dispose()  # loads the DBAPI driver; connects to nothing



def test_backfill_and_connect_sensor_through_the_daemon(deployment: Deployment) -> None:
    world = deployment
    dagster = world.dagster
    assert dagster is not None
    started = time.monotonic()
    try:
        _backfill_three_months(world, dagster)
        backfill_done = time.monotonic()
        _partner_connects(world, dagster)
    except BaseException:
        print(world.logs())
        raise
    print(
        f"\ndaemon e2e: backfill {backfill_done - started:.0f}s, "
        f"connect sensor {time.monotonic() - backfill_done:.0f}s"
    )


def _backfill_three_months(world: Deployment, dagster: DagsterGraphQLClient) -> None:
    # The Gradient emulator knows nothing yet.
    assert world.admin.counts() == []

    assert set(dagster_api.asset_keys(dagster, "monthly_billing")) == MONTHLY_ASSETS
    # mistakes come back as errors that say what is wrong, and launch nothing
    with pytest.raises(DagsterGraphQLError, match="no_such_sensor") as not_found:
        dagster_api.start_sensor(dagster, "no_such_sensor")
    assert not_found.value.typename == "SensorNotFoundError"
    with pytest.raises(DagsterGraphQLError) as bad_month:
        dagster_api.launch_asset_backfill(dagster, ["2023-12-01"], job_name="monthly_billing")  # before 2024-01
    assert bad_month.value.typename is not None, bad_month.value
    backfill_id = dagster_api.launch_asset_backfill(
        dagster,
        MONTH_KEYS,
        job_name="monthly_billing",
        # whole-month runs carry gbs/partner=all (deploy/dagster.yaml's per-partner limit)
        tags={"gbs/trigger": "backfill", "gbs/partner": "all"},
        title="daemon e2e: 2026-08..2026-10",
    )
    status = world.wait(
        "backfill",
        lambda: dagster_api.backfill_status(dagster, backfill_id),
        lambda s: s["status"] in dagster_api.FINISHED_BACKFILL_STATUSES
        and all(r["status"] in dagster_api.FINISHED_RUN_STATUSES for r in s["runs"]),
        dagster_api.backfill_progress,
        cap=BACKFILL_CAP,
    )

    # ---- Dagster: every partition's run succeeded, every asset materialized for every month
    runs_text = ", ".join(f"{r['tags'].get('dagster/partition')}:{r['status']}" for r in status["runs"])
    # a month every partner already holds a newer month of is recorded, not materialized in
    # gradient_unit_counts: Dagster's backfill then reports that partition as not completed
    superseded = {m for m in MONTHS if {e["outcome"] for e in world.entries(m)} == {ledger.SUPERSEDED}}
    expected_status = "COMPLETED_FAILED" if superseded else "COMPLETED_SUCCESS"
    assert status["status"] == expected_status, f"backfill ended {status['status']} ({status['error']}); runs: {runs_text}"
    assert status["partitions"] == {key: "SUCCESS" for key in MONTH_KEYS}, runs_text
    assert status["runs"] and all(r["status"] == "SUCCESS" for r in status["runs"]), runs_text
    assert {r["tags"].get("dagster/partition") for r in status["runs"]} == set(MONTH_KEYS)
    for run in status["runs"]:
        assert run["tags"].get("gbs/partner") == "all" and run["tags"].get("dagster/backfill") == backfill_id
    # deploy/dagster.yaml's gbs/partner limit: whole-month runs ("all") one at a time
    spans = sorted((r["startTime"] or 0, r["endTime"] or 0) for r in status["runs"])
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    assert set(status["assets"]) == MONTHLY_ASSETS
    for asset, counts in status["assets"].items():
        if asset == "gradient_unit_counts":
            assert counts["materialized"] == 3 - len(superseded), (asset, counts, superseded)
        else:
            assert counts["materialized"] == 3 and counts["failed"] == 0, (asset, counts)

    # ---- the ledger: all three months recorded for every connected partner, nothing failed
    for month in MONTHS:
        entries = world.entries(month)
        assert {e["partner_id"] for e in entries} == set(CONNECTED), month
        outcomes = {e["outcome"] for e in entries}
        assert ledger.FAILED not in outcomes, (month, [e for e in entries if e["outcome"] == ledger.FAILED])
        allowed = {ledger.DELIVERED, ledger.UNMAPPED}
        if month != OCT:  # older months: delivered or superseded, depending on the run order
            allowed.add(ledger.SUPERSEDED)
        assert outcomes <= allowed, (month, outcomes)
        # what was recorded for the month is what was counted for it
        recorded = {(e["partner_id"], e["account_id"], e["sku"]): e["value"] for e in entries if e["value"]}
        counted = {k: v for k, v in world.billable(month).items() if k[0] in CONNECTED and v}
        assert recorded == counted, month

    # ---- Gradient ends on October's values: the newest month wins whatever the run order
    october = world.delivered(OCT)
    assert october, "nothing of October was delivered"
    oct_counts = {k: v for k, v in world.billable(OCT).items() if k[0] in CONNECTED}
    for pair, value in october.items():
        if value:
            assert oct_counts.get(pair) == value, pair
    # each of October's counts is delivered when the partner mapped its account and service in
    # its PSA (p-001, p-002: everything; p-003: half its companies), else recorded unmapped
    mapped = world.mapped_pairs()
    outcome = {(e["partner_id"], e["account_id"], e["sku"]): e["outcome"] for e in world.entries(OCT)}
    expected = {
        pair: ledger.DELIVERED if pair in mapped else ledger.UNMAPPED for pair, value in oct_counts.items() if value
    }
    assert {pair: outcome.get(pair) for pair in expected} == expected
    for pid in ("p-001", "p-002"):
        assert {k for k, v in oct_counts.items() if k[0] == pid and v} <= set(october), pid

    shown = world.emulator_counts()
    mismatched = {pair: (shown.get(pair), value) for pair, value in october.items() if shown.get(pair) != value}
    assert not mismatched, f"Gradient (shown, ledger) differs from October's delivered values: {mismatched}"
    # anything Gradient holds beyond October's entries is a pair zeroed by an earlier month
    stale = {pair: units for pair, units in shown.items() if pair not in october and units != 0}
    assert not stale, f"Gradient still shows non-October values: {stale}"
    assert {pair[0] for pair in shown} == set(CONNECTED)

    # every connected partner was onboarded and is active
    for pid in CONNECTED:
        state = ledger.partner_state(world.state, pid)
        assert state is not None and state.status == "active", (pid, state)


def _partner_connects(world: Deployment, dagster: DagsterGraphQLClient) -> None:
    sensor_name = "partner_connected_sensor"
    assert dagster_api.sensor(dagster, sensor_name)["status"] == "STOPPED"  # GBS_SENSORS_DEFAULT_STATUS=stopped
    turned_on_at = time.time()
    assert dagster_api.start_sensor(dagster, sensor_name)["status"] == "RUNNING"

    # The first evaluation sees p-001..p-003, onboarded by the backfill: nothing to launch.
    def finished_ticks() -> list[dagster_api.SensorTick]:
        ticks = dagster_api.sensor(dagster, sensor_name)["ticks"]
        return [t for t in ticks if t["status"] != "STARTED" and t["timestamp"] > turned_on_at - 1]

    ticks = world.wait("first sensor tick", finished_ticks, bool, lambda t: len(t), cap=SENSOR_CAP)
    first = min(ticks, key=lambda t: t["timestamp"])
    assert first["error"] is None, first["error"]
    assert first["runIds"] == [], f"the sensor re-onboarded partners the backfill onboarded: {first}"

    # The partner registers its key in Gradient, then presses Connect in the product.
    world.admin.register_partner(
        demo_partner_key(NEW_PARTNER), name="Tailspin Networks", organization_id=org(NEW_PARTNER), auto_map_all=True
    )
    connected_at = datetime.now(timezone.utc)
    with world.product.begin() as conn:
        conn.execute(
            ps.gradient_connections.insert(),
            connection_rows([NEW_PARTNER], world.fernet_key, connected_at, world.product.dialect.name),
        )

    connect_tags = {"gbs/trigger": "sensor", "gbs/request": "connect", "gbs/partner": NEW_PARTNER}
    found = world.wait(
        "the sensor's connect run",
        lambda: dagster_api.runs(dagster, connect_tags, limit=1),
        lambda found: bool(found) and found[0]["status"] in dagster_api.FINISHED_RUN_STATUSES,
        lambda found: tuple((r["runId"], r["status"], r["stepsSucceeded"]) for r in found),
        cap=SENSOR_CAP,
    )
    run = found[0]
    latest = last_closed_month(datetime.now(timezone.utc), "America/New_York")
    assert run["status"] == "SUCCESS", world.diagnose(f"connect run {run['runId']} ended {run['status']}")
    assert run["tags"].get("dagster/partition") == latest.key
    if latest.month == OCT:  # October's counts exist: only the load job runs
        assert run["jobName"] == "gradient_load"
    # one run, for the new partner only
    connect_runs = dagster_api.runs(dagster, {"gbs/request": "connect"})
    assert [r["runId"] for r in connect_runs] == [run["runId"]], connect_runs

    # ---- Gradient: the new partner's accounts and its latest closed month's counts
    snapshot = world.admin.state()["partners"][org(NEW_PARTNER)]
    with world.product.connect() as conn:
        companies = load_companies(conn)
    expected_accounts = set(companies.loc[companies.partner_id == NEW_PARTNER, "company_id"])
    counted = {k: v for k, v in world.billable(latest.month).items() if k[0] == NEW_PARTNER}
    expected_accounts |= {account for _, account, _ in counted}
    assert {a["id"] for a in snapshot["accounts"]} == expected_accounts
    assert snapshot["status"] == "active"

    shown = {k: v for k, v in world.emulator_counts().items() if k[0] == NEW_PARTNER}
    assert counted and shown == {k: v for k, v in counted.items() if v}
    delivered = {
        (e["partner_id"], e["account_id"], e["sku"]): e["value"]
        for e in world.entries(latest.month)
        if e["partner_id"] == NEW_PARTNER
    }
    assert delivered == shown
    assert {
        e["run_id"] for e in world.entries(latest.month) if e["partner_id"] == NEW_PARTNER
    } == {run["runId"]}
    state = ledger.partner_state(world.state, NEW_PARTNER)
    assert state is not None and state.status == "active" and state.onboarded_connection_at is not None

    # the other partners' numbers were left alone
    others = {k: v for k, v in world.emulator_counts().items() if k[0] != NEW_PARTNER}
    october = world.delivered(OCT, set(CONNECTED))
    assert {k: v for k, v in others.items() if k in october} == october

    assert dagster_api.stop_sensor(dagster, sensor_name) == "STOPPED"
    assert dagster_api.sensor(dagster, sensor_name)["status"] == "STOPPED"


# =========================================================================== CLI runs on the daemon

CLI_CAP = 2400  # a CLI run and the daemon's two retries, each queued, started, failed


def test_a_cli_run_that_fails_in_the_push_is_retried_and_recorded_like_a_ui_run(deployment: Deployment) -> None:
    """Gradient is down. `gradient-billing-sync run` on the daemon-backed instance submits its
    run to the queue (it executes nothing itself), follows it and the daemon's retries
    (deploy/dagster.yaml: max_retries 2) to the end, and reports the last; the failure sensor
    records every attempt in run_failures and the webhook alert posts each one, as for a run
    launched from the UI. A run launched from the UI for one partner, failing in the same step,
    is tagged at submission."""
    world = deployment
    dagster = world.dagster
    assert dagster is not None
    try:
        _cli_run_through_the_daemon(world, dagster)
    except BaseException:
        print(world.logs())
        raise


def _cli_run_through_the_daemon(world: Deployment, dagster: DagsterGraphQLClient) -> None:
    from pipeline.automation.failures import recorded_failures

    # each failure sensor's first tick sets its cursor: failures after it are recorded / posted
    for sensor_name in ("billing_failure_sensor", "failure_webhook_alert_sensor"):
        turned_on_at = time.time()
        assert dagster_api.start_sensor(dagster, sensor_name)["status"] == "RUNNING"
        world.wait(
            f"{sensor_name}'s first tick",
            lambda: [t for t in dagster_api.sensor(dagster, sensor_name)["ticks"]
                     if t["status"] != "STARTED" and t["timestamp"] > turned_on_at - 1],
            bool, len, cap=SENSOR_CAP,
        )

    world.emulator.stop()  # Gradient is down for the daemon's runs and the CLI alike

    # ---- a run launched from the UI (the launchpad's GraphQL call) for one partner: tagged as
    # it is submitted, although it fails in its first step
    ui_run_id = dagster.submit_job_execution(
        "gradient_load",
        repository_location_name=LOCATION,
        run_config=_load_config_for("p-002"),
        tags={"dagster/partition": OCT.isoformat(), "dagster/max_retries": "0"},
    )

    cli = subprocess.run(
        [dagster_command("gradient-billing-sync"), "run", "--month", "2026-10"],
        cwd=world.tmp, env=world.env, capture_output=True, text=True, timeout=CLI_CAP,
    )
    output = cli.stdout + cli.stderr
    assert cli.returncode == 1, output
    assert "2026-10: FAILED (run " in output, output
    assert "retried by dagster-daemon after run " in output, output
    assert "\x1b[" not in output  # not a terminal: no progress bar, no escape codes

    # ---- the CLI's run and the daemon's two retries of it, all through the instance
    cli_runs = dagster_api.runs(dagster, {"gbs/trigger": "cli"})
    assert len(cli_runs) == 3, [(r["runId"], r["status"]) for r in cli_runs]
    first, *retries = sorted(cli_runs, key=lambda r: r["startTime"] or 0)
    assert all(r["status"] == "FAILURE" for r in cli_runs), cli_runs
    assert first["tags"].get("dagster/will_retry") == "true"
    assert first["tags"].get("dagster/auto_retry_run_id") == retries[0]["runId"]
    assert [r["tags"].get("dagster/parent_run_id") for r in retries] == [first["runId"], retries[0]["runId"]]
    final = retries[-1]["runId"]
    assert f"2026-10: FAILED (run {final})" in output
    assert f"retried by dagster-daemon after run {first['runId']}, run {retries[0]['runId']} failed" in output
    for run in cli_runs:
        tags = run["tags"]
        assert (tags.get("gbs/month"), tags.get("gbs/partner"), tags.get("dagster/partition")) == (
            "2026-10", "all", OCT.isoformat()
        ), tags
        # no host/pid noise: a submitted run is the daemon's to watch
        assert not any(key.startswith(("gbs/host", "gbs/pid")) for key in tags), tags
    cause = "gradient_services: "
    assert cause in output, output

    # ---- the UI's run: tagged at submission with its trigger, month and partner
    [ui_run] = dagster_api.runs(dagster, {"gbs/trigger": "ui"})
    assert ui_run["runId"] == ui_run_id
    assert ui_run["status"] == "FAILURE"
    assert (ui_run["tags"].get("gbs/month"), ui_run["tags"].get("gbs/partner")) == ("2026-10", "p-002")

    # ---- the failure sensor recorded every failed attempt, the CLI's as the UI's
    expected = {r["runId"] for r in cli_runs} | {ui_run_id}
    recorded = world.wait(
        "the failure sensor's records",
        lambda: {f["run_id"]: f for f in recorded_failures(world.state)},
        lambda found: expected <= set(found),
        lambda found: tuple(sorted(found)),
        cap=SENSOR_CAP,
    )
    for run_id in expected:
        assert recorded[run_id]["partition_key"] == OCT.isoformat()
        assert "gradient_services" in recorded[run_id]["message"], recorded[run_id]
    assert recorded[ui_run_id]["partners"] == "p-002"

    # ---- and alerted: one webhook post per failed attempt, naming its run
    assert world.webhook is not None
    posted = world.wait(
        "the webhook alerts",
        lambda: [post.get("text", "") for post in list(world.webhook.posts)],
        lambda texts: all(any(f"(run {run_id})" in t for t in texts) for run_id in expected),
        len,
        cap=SENSOR_CAP,
    )
    for run_id in expected:
        [text] = [t for t in posted if f"(run {run_id})" in t]
        assert "FAILED" in text and "gradient_services" in text, text


def _load_config_for(partner_id: str) -> dict:
    from pipeline.automation.jobs import load_run_config

    return load_run_config("gradient_load", [partner_id])
