"""Sensors, evaluated against a real Dagster instance and real product / state databases, and
their run requests RUN in process against the real Gradient emulator over HTTP.

Today is 2026-11-21 (``pipeline.automation.sensors._now`` is pinned to it): the latest closed month is
2026-10. Rules under test: ``/work/shared/design.md`` ("Automation").
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import date, datetime, timezone

import dagster as dg
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from pipeline.automation import failures
from pipeline.gradient import ledger
from pipeline.source import product_schema as ps
from pipeline.automation import sensors
from pipeline.definitions import defs as code_location
from pipeline.demo.run import register_demo_partners
from pipeline.demo.data import DemoSpec, connection_rows, demo_partner_key, load_demo_data
from gradient_emulator import API_PREFIX, EmulatorAdmin, EmulatorServer
from pipeline.resources import GradientResource
from pipeline.automation.jobs import TAG_PARTNER, TAG_REASON, TAG_TRIGGER, load_run_config
from pipeline.resources import StateDatabase, default_resources, engine_for
from pipeline.automation.schedules import monthly_billing_schedule
from pipeline.automation.sensors import (
    billing_failure_sensor,
    missed_or_late_months_sensor,
    partner_connected_sensor,
    partner_disconnected_sensor,
    sync_requests_sensor,
)
from pipeline.source.watermark import watermark_digest
from pipeline.store.months import load_billable_counts, load_month_computation, load_month_validation

pytestmark = pytest.mark.slow

VENDOR_KEY = "vk-sensors-9d41c0e7a2"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
OCT = date(2026, 10, 1)
OCT_KEY = "2026-10-01"
ALL = ["p-001", "p-002", "p-003"]
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"


def spec(connected: int = 3) -> DemoSpec:
    return DemoSpec(
        partners=3,
        companies_per_partner=(2, 4),
        users_per_company=(2, 6),
        end_month=date(2026, 11, 1),
        history_months=4,
        connected_partners=connected,
    )


def org(partner_id: str) -> str:
    return f"org-{partner_id}"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# =========================================================================== fixtures


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY) as server:
        yield server


@pytest.fixture
def admin(emulator):
    with EmulatorAdmin(emulator.base_url) as client:
        client.reset()
        yield client
        client.reset()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


class World:
    """Product DB with demo data, state DB, the emulator, a Dagster instance, and the code
    location's jobs bound to resources built by ``default_resources()`` from the environment."""

    def __init__(self, tmp_path, monkeypatch, emulator, admin, instance, connected: int):
        self.admin = admin
        self.emulator = emulator
        self.instance = instance
        self.fernet_key = Fernet.generate_key().decode()
        self.product_url = f"sqlite:///{tmp_path / f'product-{uuid.uuid4().hex[:6]}.db'}"
        self.state_url = f"sqlite:///{tmp_path / f'state-{uuid.uuid4().hex[:6]}.db'}"
        for name, value in {
            "PRODUCT_DB_URL": self.product_url,
            "STATE_DB_URL": self.state_url,
            "GRADIENT_BASE_URL": emulator.base_url,
            "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
            "GRADIENT_KEY_ENCRYPTION_KEYS": self.fernet_key,
            "GBS_DATA_DIR": str(tmp_path / "data"),
            # the demo's bad rows are a few percent of a tiny month: let them through
            "QUARANTINE_THRESHOLD": "0.5",
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("GRADIENT_FAILURE_ALERTS", "MONTH_WATCH_LOOKBACK_MONTHS", "BILLING_TIMEZONE",
                     "CONNECTIONS_SQL", "COMPANIES_SQL", "SYNC_REQUESTS_SQL", "UTILIZATION_SQL",
                     "SERVICES_SQL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(sensors, "_now", lambda: NOW)

        self.product = engine_for(self.product_url)
        load_demo_data(self.product, spec(connected), encryption_keys=self.fernet_key)

        self.resources = default_resources()
        self.resources["gradient"] = GradientResource(
            base_url=emulator.base_url,
            vendor_api_key=dg.EnvVar("GRADIENT_VENDOR_API_KEY"),
            backoff_initial_seconds=0.01,
            backoff_max_seconds=0.05,
            max_requests_per_second=80,
        )
        self.defs = dg.Definitions(
            assets=code_location.assets,
            asset_checks=code_location.asset_checks,
            jobs=code_location.jobs,
            schedules=code_location.schedules,
            sensors=code_location.sensors,
            resources=self.resources,
        )

    # ------------------------------------------------------------------ Dagster
    @property
    def state(self) -> sa.Engine:
        return StateDatabase(url=self.state_url).engine()

    def evaluate(self, sensor: dg.SensorDefinition, cursor: str | None = None) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance, resources=self.resources, cursor=cursor, sensor_name=sensor.name
        )
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        return result

    def run(self, request: dg.RunRequest, sensor=None):
        """Launch a run request the way the daemon does: its job (the request's, else the
        sensor's / schedule's), partition, config and tags, plus the run-key / sensor tags
        Dagster deduplicates on."""
        job_name = request.job_name or (sensor.job_name if sensor is not None else None)
        assert job_name, "request without a job"
        tags = dict(request.tags)
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        if isinstance(sensor, dg.SensorDefinition):
            tags[SENSOR_NAME_TAG] = sensor.name
        return self.defs.resolve_job_def(job_name).execute_in_process(
            partition_key=request.partition_key,
            run_config=request.run_config or None,
            instance=self.instance,
            tags=tags,
            raise_on_error=False,
        )

    def run_schedule_tick(self):
        """The schedule's tick of 2026-11-01 08:00 New York, run: October for every partner."""
        context = dg.build_schedule_context(
            scheduled_execution_time=datetime(2026, 11, 1, 13, 0, tzinfo=timezone.utc)
        )
        request = monthly_billing_schedule(context)
        result = self.run(request, monthly_billing_schedule)
        assert result.success, failure_text(result)
        return result

    def would_dedupe(self, sensor: dg.SensorDefinition, run_key: str) -> bool:
        """What the sensor daemon checks before launching: a run of this sensor with this key."""
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}))
        return any(r.tags.get(SENSOR_NAME_TAG) == sensor.name for r in runs)

    def register(self) -> None:
        """Register the connected partners' keys in Gradient. p-001 and p-003 map everything;
        p-002 has only its first company in its PSA, so its other accounts stay unmapped."""
        connected = register_demo_partners(self.admin, self.product)
        first_company = self.product_company_names("p-002")[0]
        self.admin.register_partner(
            demo_partner_key("p-002"), organization_id=org("p-002"), auto_map_all=False
        )
        self.admin.set_psa_companies(org("p-002"), [first_company])
        with self.product.connect() as conn:
            self.admin.set_psa_products(org("p-002"), list(conn.execute(sa.select(ps.services.c.name)).scalars()))
        assert connected[:2] == ["p-001", "p-002"]

    def product_company_names(self, partner_id: str) -> list[str]:
        c = ps.companies.c
        with self.product.connect() as conn:
            return list(
                conn.execute(
                    sa.select(c.name).where(c.partner_id == partner_id, c.deleted_at.is_(None)).order_by(c.company_id)
                ).scalars()
            )

    # ------------------------------------------------------------------ product edits
    def connection(self, partner_id: str) -> dict:
        with self.product.connect() as conn:
            return dict(
                conn.execute(
                    sa.select(ps.gradient_connections).where(ps.gradient_connections.c.partner_id == partner_id)
                ).mappings().one()
            )

    def add_connection(self, partner_id: str, at: datetime) -> None:
        with self.product.begin() as conn:
            conn.execute(
                ps.gradient_connections.insert(), connection_rows([partner_id], self.fernet_key, at, "sqlite")
            )

    def disconnect(self, partner_id: str, at: datetime) -> None:
        self._update_connection(partner_id, state="disconnected", disconnected_at=at, updated_at=at)

    def reconnect(self, partner_id: str, at: datetime) -> None:
        self._update_connection(partner_id, state="connected", connected_at=at, disconnected_at=None, updated_at=at)

    def _update_connection(self, partner_id: str, **values) -> None:
        values = {k: ps.to_db_timestamp(v, "sqlite") for k, v in values.items()}
        with self.product.begin() as conn:
            updated = conn.execute(
                sa.update(ps.gradient_connections)
                .where(ps.gradient_connections.c.partner_id == partner_id)
                .values(**values)
            ).rowcount
        assert updated == 1

    def click(self, partner_id: str, kind: str, at: datetime = NOW) -> int:
        with self.product.begin() as conn:
            return conn.execute(
                ps.gradient_sync_requests.insert().values(
                    partner_id=partner_id, kind=kind, requested_at=ps.to_db_timestamp(at, "sqlite")
                )
            ).inserted_primary_key[0]

    def add_billable_user(self, company_id: str, sku: str, start: datetime) -> int:
        """One more billable user of ``company_id`` in ``sku`` from ``start`` (late data)."""
        with self.product.begin() as conn:
            next_id = conn.execute(sa.select(sa.func.max(ps.service_enrollments.c.enrollment_id))).scalar() + 1
            user_id = f"u-late-{uuid.uuid4().hex[:8]}"
            conn.execute(ps.users.insert().values(user_id=user_id, email=f"{user_id}@example.test", is_billable=True))
            conn.execute(
                ps.service_enrollments.insert().values(
                    enrollment_id=next_id, user_id=user_id, company_id=company_id, sku=sku,
                    started_at=ps.to_db_timestamp(start, "sqlite"), ended_at=None,
                    updated_at=ps.to_db_timestamp(NOW, "sqlite"),
                )
            )
        return next_id

    def remove_enrollment(self, enrollment_id: int) -> None:
        with self.product.begin() as conn:
            conn.execute(sa.delete(ps.service_enrollments).where(ps.service_enrollments.c.enrollment_id == enrollment_id))

    def add_company(self, partner_id: str, company_id: str, name: str) -> None:
        at = ps.to_db_timestamp(NOW, "sqlite")
        with self.product.begin() as conn:
            conn.execute(
                ps.companies.insert().values(
                    company_id=company_id, partner_id=partner_id, name=name, status="active",
                    deleted_at=None, created_at=at, updated_at=at,
                )
            )

    def live_companies(self, partner_id: str) -> set[str]:
        c = ps.companies.c
        with self.product.connect() as conn:
            return set(
                conn.execute(
                    sa.select(c.company_id).where(c.partner_id == partner_id, c.deleted_at.is_(None))
                ).scalars()
            )

    # ------------------------------------------------------------------ reading back
    def billable(self, partner_id: str, month: date = OCT) -> dict[tuple[str, str], int]:
        frame = load_billable_counts(self.state, month)
        return {
            (r.company_id, r.sku): int(r.billable_users)
            for r in frame.itertuples(index=False)
            if r.partner_id == partner_id
        }

    def sku_of(self) -> dict[str, str]:
        return {sid: sku for sku, sid in ledger.service_ids(self.state).items()}

    def gradient_counts(self, partner_id: str) -> dict[tuple[str, str], int]:
        sku_of = self.sku_of()
        return {
            (row["account_id"], sku_of[row["service_id"]]): row["unit_count"]
            for row in self.admin.counts()
            if row["organization_id"] == org(partner_id)
        }

    def gradient_partner(self, partner_id: str) -> dict:
        return self.admin.state()["partners"][org(partner_id)]

    def mapped(self, partner_id: str) -> set[str]:
        return set(self.gradient_partner(partner_id)["account_mappings"])

    def outcomes(self, partner_id: str, month: date = OCT) -> dict[tuple[str, str], str]:
        """The latest ledger outcome per (account, sku)."""
        out = {}
        for e in ledger.entries_for(self.state, month, [partner_id]):
            out[(e["account_id"], e["sku"])] = e["outcome"]
        return out

    def calls(self, organization: str | None = None, path_part: str = "") -> list[dict]:
        return [
            r for r in self.admin.requests()
            if (organization is None or r["organization_id"] == organization) and path_part in r["path"]
        ]

    def partner_calls(self) -> list[dict]:
        """Calls about one partner's own data (not the vendor-level services sync, which may
        use any connected partner's token)."""
        return [
            r for r in self.admin.requests()
            if r["path"].startswith(f"{API_PREFIX}/organization") or "/count" in r["path"]
            or "/alerting" in r["path"]
        ]


@pytest.fixture
def make_world(tmp_path, monkeypatch, emulator, admin, instance):
    def make(connected: int = 3, register: bool = True) -> World:
        world = World(tmp_path, monkeypatch, emulator, admin, instance, connected)
        if register:
            world.register()
        return world

    return make


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    parts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data.user_failure_data is not None:
                parts.append(str(data.user_failure_data.description))
            if data.error is not None:
                parts.append(data.error.message)
    return "\n".join(parts)


def failed_steps(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}


def only(requests: list[dg.RunRequest]) -> dg.RunRequest:
    assert len(requests) == 1, [r.run_key for r in requests]
    return requests[0]


def partner_filter(request: dg.RunRequest) -> set[tuple[str, tuple[str, ...]]]:
    """(op, partner_ids) for every op the run config configures."""
    return {(op, tuple(cfg["config"]["partner_ids"])) for op, cfg in request.run_config["ops"].items()}


# =========================================================================== connect (decisions)


def test_connect_new_connection_asks_once_for_the_latest_closed_month(make_world):
    world = make_world(connected=2, register=False)
    first = world.evaluate(partner_connected_sensor)
    # the two partners connected before the sensor ever ran: one request each
    assert sorted(r.tags[TAG_PARTNER] for r in first.run_requests) == ["p-001", "p-002"]
    assert json.loads(first.cursor).keys() == {"p-001", "p-002"}

    connected_at = utc(2026, 11, 20, 15, 30)
    world.add_connection("p-003", connected_at)
    result = world.evaluate(partner_connected_sensor, first.cursor)
    request = only(result.run_requests)
    assert request.partition_key == OCT_KEY
    # no counts stored yet for 2026-10: the whole monthly job (count, then load)
    assert request.job_name == "monthly_billing"
    assert request.run_config == load_run_config("monthly_billing", ["p-003"])
    assert partner_filter(request) == {("gradient_accounts", ("p-003",)), ("gradient_unit_counts", ("p-003",))}
    assert request.run_key == f"connected:p-003:{connected_at.isoformat()}"
    assert (request.tags[TAG_TRIGGER], request.tags["gbs/request"]) == ("sensor", "connect")
    assert request.tags[TAG_PARTNER] == "p-003"
    assert connected_at.isoformat() in request.tags[TAG_REASON]

    # the returned cursor: nothing new, nothing asked again
    again = world.evaluate(partner_connected_sensor, result.cursor)
    assert again.run_requests == []
    assert json.loads(again.cursor) == json.loads(result.cursor)

    # reconnection: a new connected_at -> a new request with a new run key
    reconnected_at = utc(2026, 11, 21, 9, 5)
    world.reconnect("p-003", reconnected_at)
    later = world.evaluate(partner_connected_sensor, again.cursor)
    re_request = only(later.run_requests)
    assert re_request.run_key == f"connected:p-003:{reconnected_at.isoformat()}"
    assert re_request.run_key != request.run_key
    assert re_request.tags[TAG_PARTNER] == "p-003"
    assert world.evaluate(partner_connected_sensor, later.cursor).run_requests == []


def test_connect_lost_cursor_does_not_onboard_an_onboarded_partner_again(make_world):
    world = make_world(connected=3, register=False)
    connected_at = world.connection("p-001")["connected_at"]
    at = datetime.fromisoformat(connected_at)
    # p-001 onboarded for this very connection; p-002 onboarded for an OLDER connection
    ledger.set_partner_status(world.state, "p-001", "active", run_id="r1", onboarded_connection_at=at)
    ledger.set_partner_status(world.state, "p-002", "active", run_id="r1", onboarded_connection_at=utc(2020, 1, 1))
    # p-003 was onboarded, then disconnected (inactive): connected again means onboarding again
    ledger.set_partner_status(world.state, "p-003", "inactive", run_id="r1", onboarded_connection_at=at)

    result = world.evaluate(partner_connected_sensor, cursor=None)
    assert sorted(r.tags[TAG_PARTNER] for r in result.run_requests) == ["p-002", "p-003"]


def test_connect_ignores_disconnected_partners(make_world):
    world = make_world(connected=3, register=False)
    world.disconnect("p-002", utc(2026, 11, 20))
    result = world.evaluate(partner_connected_sensor)
    assert sorted(r.tags[TAG_PARTNER] for r in result.run_requests) == ["p-001", "p-003"]


# =========================================================================== disconnect (decisions)


def test_disconnect_asks_only_for_onboarded_partners(make_world):
    world = make_world(connected=3, register=False)
    ledger.set_partner_status(world.state, "p-001", "active", run_id="r1", onboarded_connection_at=utc(2025, 1, 1))
    # p-002 was never onboarded (no ledger state); p-003 is still connected
    at = utc(2026, 11, 20, 10, 0)
    world.disconnect("p-001", at)
    world.disconnect("p-002", at)

    result = world.evaluate(partner_disconnected_sensor)
    request = only(result.run_requests)
    assert partner_disconnected_sensor.job_name == "partner_disconnect"
    assert request.job_name in (None, "partner_disconnect")
    assert request.run_config == {"ops": {"disconnect_gradient_partner": {"config": {"partner_id": "p-001"}}}}
    assert request.run_key == f"disconnected:p-001:{at.isoformat()}"
    assert (request.tags[TAG_TRIGGER], request.tags["gbs/request"]) == ("sensor", "disconnect")
    assert request.tags[TAG_PARTNER] == "p-001"
    assert request.partition_key is None

    assert world.evaluate(partner_disconnected_sensor, result.cursor).run_requests == []
    # lost cursor after the disconnection was handled (ledger: inactive): nothing again
    ledger.set_partner_status(world.state, "p-001", "inactive", run_id="r2", reset_delivered=True)
    assert world.evaluate(partner_disconnected_sensor, None).run_requests == []


# =========================================================================== sync requests (decisions)


def test_sync_requests_one_run_per_partner_and_kind_and_the_cursor_advances(make_world):
    world = make_world(connected=3)
    world.disconnect("p-003", utc(2026, 11, 20))
    ids = [
        world.click("p-001", "update_counts"),
        world.click("p-002", "sync_accounts"),
        world.click("p-001", "update_counts"),  # the same button twice: one run serves both
        world.click("p-003", "update_counts"),  # disconnected partner: ignored
        world.click("p-001", "no_such_button"),  # unknown kind: ignored
    ]
    assert ids == [1, 2, 3, 4, 5]

    # before the month was counted, every click needs the whole monthly job
    before = world.evaluate(sync_requests_sensor)
    assert [r.run_key for r in before.run_requests] == ["sync-request:2", "sync-request:3"]
    assert {r.job_name for r in before.run_requests} == {"monthly_billing"}
    assert json.loads(before.cursor) == {"after": 5, "waiting": []}

    # count October for real (the schedule's run), then the same clicks map to the load jobs
    world.run_schedule_tick()
    result = world.evaluate(sync_requests_sensor)
    requests = {r.run_key: r for r in result.run_requests}
    assert list(requests) == ["sync-request:2", "sync-request:3"]
    two, one = requests.values()
    assert (one.job_name, two.job_name) == ("gradient_load", "account_sync")
    assert {r.partition_key for r in requests.values()} == {OCT_KEY}
    assert partner_filter(one) == {("gradient_accounts", ("p-001",)), ("gradient_unit_counts", ("p-001",))}
    assert partner_filter(two) == {("gradient_accounts", ("p-002",))}
    assert (one.tags["gbs/request"], two.tags["gbs/request"]) == ("update_counts", "sync_accounts")
    assert one.tags[TAG_TRIGGER] == two.tags[TAG_TRIGGER] == "sensor"
    assert one.tags[sensors.TAG_SYNC_REQUESTS] == "1..3 (2)"
    assert one.tags[TAG_REASON].startswith("2 requests 1..3")

    # nothing new: nothing asked; a new click: just that one
    assert world.evaluate(sync_requests_sensor, result.cursor).run_requests == []
    six = world.click("p-002", "update_counts")
    later = world.evaluate(sync_requests_sensor, result.cursor)
    assert [r.run_key for r in later.run_requests] == [f"sync-request:{six}"]
    assert json.loads(later.cursor)["after"] == six


def test_an_old_cursor_of_a_request_id_is_read_on(make_world):
    world = make_world(connected=3, register=False)
    world.click("p-001", "update_counts")
    second = world.click("p-001", "update_counts")
    result = world.evaluate(sync_requests_sensor, "1")
    assert [r.run_key for r in result.run_requests] == [f"sync-request:{second}"]


def add_run(world: World, partner_id: str, kind: str, status: dg.DagsterRunStatus, run_id: str | None = None) -> str:
    run_id = run_id or str(uuid.uuid4())
    world.instance.add_run(
        dg.DagsterRun(job_name="gradient_load", run_id=run_id, status=status,
                      tags={TAG_TRIGGER: kind, TAG_PARTNER: partner_id, "dagster/partition": OCT_KEY})
    )
    return run_id


def set_status(world: World, run_id: str, status: dg.DagsterRunStatus) -> None:
    """The run as the instance would record it a moment later (same id and tags)."""
    run = world.instance.get_run_by_id(run_id)
    world.instance.delete_run(run_id)
    add_run(world, run.tags[TAG_PARTNER], run.tags[TAG_TRIGGER], status, run_id)


def test_a_flood_of_update_counts_is_one_run_and_a_later_press_gets_its_own(make_world):
    world = make_world(connected=3)
    world.run_schedule_tick()
    with world.product.begin() as conn:
        conn.execute(ps.gradient_sync_requests.insert(), [
            {"partner_id": "p-001", "kind": "update_counts", "requested_at": NOW} for _ in range(4096)
        ])
    first = world.evaluate(sync_requests_sensor)
    request = only(first.run_requests)
    assert (request.job_name, request.run_key) == ("gradient_load", "sync-request:4096")
    assert request.tags[sensors.TAG_SYNC_REQUESTS] == "1..4096 (4096)"
    assert json.loads(first.cursor) == {"after": 4096, "waiting": []}
    run = world.run(request, sync_requests_sensor)
    assert run.success, failure_text(run)
    assert world.evaluate(sync_requests_sensor, first.cursor).run_requests == []

    # pressed again after that run finished: a run of its own, not deduplicated by Dagster
    again = world.click("p-001", "update_counts")
    second = only(world.evaluate(sync_requests_sensor, first.cursor).run_requests)
    assert second.run_key == f"sync-request:{again}"
    assert not world.would_dedupe(sync_requests_sensor, second.run_key)


def test_presses_while_a_run_is_queued_are_served_by_it_and_while_running_wait_for_it(make_world):
    world = make_world(connected=3, register=False)
    # a run not started yet (QUEUED behaves alike; the instance wants a code location origin for it)
    queued = add_run(world, "p-001", "update_counts", dg.DagsterRunStatus.NOT_STARTED)
    for _ in range(3):
        world.click("p-001", "update_counts")
    sync = world.click("p-001", "sync_accounts")  # another kind: its own run
    served = world.evaluate(sync_requests_sensor)
    assert [r.run_key for r in served.run_requests] == [f"sync-request:{sync}"]
    assert json.loads(served.cursor) == {"after": sync, "waiting": []}

    # the queued run starts: it may have read the product already, so later presses wait
    set_status(world, queued, dg.DagsterRunStatus.STARTED)
    late = [world.click("p-001", "update_counts") for _ in range(2)]
    waiting = world.evaluate(sync_requests_sensor, served.cursor)
    assert waiting.run_requests == []
    assert json.loads(waiting.cursor)["waiting"] == [["p-001", "update_counts", late[0], late[1], 2]]
    assert world.evaluate(sync_requests_sensor, waiting.cursor).run_requests == []

    # once it has finished, one run serves them
    set_status(world, queued, dg.DagsterRunStatus.SUCCESS)
    after = world.evaluate(sync_requests_sensor, waiting.cursor)
    assert [r.run_key for r in after.run_requests] == [f"sync-request:{late[1]}"]
    assert json.loads(after.cursor) == {"after": late[1], "waiting": []}


# =========================================================================== missed months (decisions)


def test_missed_months_are_requested_within_the_lookback(make_world, monkeypatch):
    world = make_world(connected=3, register=False)
    result = world.evaluate(missed_or_late_months_sensor)
    assert [r.partition_key for r in result.run_requests] == ["2026-08-01", "2026-09-01", OCT_KEY]
    for request in result.run_requests:
        assert request.run_key == f"missed:{request.partition_key}:2026-11-21"
        assert (request.tags[TAG_TRIGGER], request.tags["gbs/request"]) == ("sensor", "missed")
        assert request.tags[TAG_REASON].startswith("missed:")
        assert request.tags[TAG_PARTNER] == "all"
        assert request.job_name in (None, "monthly_billing")
        assert not request.run_config  # every partner

    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "5")
    wider = world.evaluate(missed_or_late_months_sensor)
    assert [r.partition_key for r in wider.run_requests] == [
        "2026-06-01", "2026-07-01", "2026-08-01", "2026-09-01", OCT_KEY,
    ]
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "1")
    assert [r.partition_key for r in world.evaluate(missed_or_late_months_sensor).run_requests] == [OCT_KEY]

    # asked at most once a day: same day, same keys (Dagster dedupes); next day, new keys
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "3")
    assert [r.run_key for r in world.evaluate(missed_or_late_months_sensor).run_requests] == [
        r.run_key for r in result.run_requests
    ]
    monkeypatch.setattr(sensors, "_now", lambda: datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc))
    next_day = world.evaluate(missed_or_late_months_sensor)
    assert [r.run_key for r in next_day.run_requests] == [
        f"missed:{m}:2026-11-22" for m in ("2026-08-01", "2026-09-01", OCT_KEY)
    ]


def test_missed_months_never_before_the_first_billing_month(make_world, monkeypatch):
    world = make_world(connected=3, register=False)
    monkeypatch.setattr(sensors, "FIRST_BILLING_MONTH", "2024-01-01")
    monkeypatch.setattr(sensors, "_now", lambda: datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc))
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "6")
    result = world.evaluate(missed_or_late_months_sensor)
    assert [r.partition_key for r in result.run_requests] == ["2024-01-01", "2024-02-01"]


def test_missed_month_waits_for_the_scheduled_run_and_its_grace_hour(make_world, monkeypatch):
    world = make_world(connected=3, register=False)
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "1")
    # the schedule runs October at 2026-11-01 08:00 EST = 13:00 UTC; one hour of grace
    monkeypatch.setattr(sensors, "_now", lambda: datetime(2026, 11, 1, 13, 30, tzinfo=timezone.utc))
    assert world.evaluate(missed_or_late_months_sensor).run_requests == []
    monkeypatch.setattr(sensors, "_now", lambda: datetime(2026, 11, 1, 14, 1, tzinfo=timezone.utc))
    assert [r.partition_key for r in world.evaluate(missed_or_late_months_sensor).run_requests] == [OCT_KEY]


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
def test_missed_month_with_a_run_in_progress_is_skipped(make_world, status):
    world = make_world(connected=3, register=False)
    world.instance.add_run(
        dg.DagsterRun(
            job_name="monthly_billing",
            run_id=str(uuid.uuid4()),
            status=status,
            tags={"dagster/partition": "2026-09-01"},
        )
    )
    # a finished (failed) run of a month does not count as in progress
    world.instance.add_run(
        dg.DagsterRun(
            job_name="monthly_billing",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.FAILURE,
            tags={"dagster/partition": "2026-08-01"},
        )
    )
    result = world.evaluate(missed_or_late_months_sensor)
    assert [r.partition_key for r in result.run_requests] == ["2026-08-01", OCT_KEY]


# =========================================================================== running: connect


def test_connect_runs_onboard_partners_and_push_october(make_world):
    world = make_world(connected=3)
    result = world.evaluate(partner_connected_sensor)
    requests = sorted(result.run_requests, key=lambda r: r.tags[TAG_PARTNER])
    assert [r.tags[TAG_PARTNER] for r in requests] == ALL
    assert {r.job_name for r in requests} == {"monthly_billing"}
    for request in requests:
        run = world.run(request, partner_connected_sensor)
        assert run.success, failure_text(run)
        assert world.instance.get_run_by_id(run.run_id).tags[RUN_KEY_TAG] == request.run_key

    snapshot = world.admin.state()["partners"]
    for pid in ALL:
        billable = world.billable(pid)
        assert billable, pid
        gradient = snapshot[org(pid)]
        assert gradient["status"] == "active"
        accounts = {a["id"] for a in gradient["accounts"]}
        assert accounts == world.live_companies(pid) | {cid for cid, _ in billable}
        mapped = world.mapped(pid)
        expected = {pair: n for pair, n in billable.items() if pair[0] in mapped}
        assert world.gradient_counts(pid) == expected
        state = ledger.partner_state(world.state, pid)
        assert state.status == "active"
        assert state.onboarded_connection_at == datetime.fromisoformat(world.connection(pid)["connected_at"])
    # fully mapped partners got every billable count of October
    for pid in ("p-001", "p-003"):
        assert world.gradient_counts(pid) == world.billable(pid)
    # p-002's unmapped pairs are in the ledger as such
    unmapped = {pair for pair, outcome in world.outcomes("p-002").items() if outcome == ledger.UNMAPPED}
    assert unmapped and {a for a, _ in unmapped}.isdisjoint(world.mapped("p-002"))
    assert set(world.gradient_counts("p-002")) | unmapped == set(world.billable("p-002"))

    # the cursor, or a lost one: the onboarded partners are not onboarded again
    assert world.evaluate(partner_connected_sensor, result.cursor).run_requests == []
    assert world.evaluate(partner_connected_sensor, None).run_requests == []


def test_disconnect_run_resets_partner_and_reconnect_sends_everything_again(make_world):
    world = make_world(connected=3)
    world.run_schedule_tick()
    before = world.gradient_counts("p-001")
    assert before == world.billable("p-001") and before
    p003_before = world.gradient_counts("p-003")

    # --- Disconnect
    world.disconnect("p-001", utc(2026, 11, 20, 10, 0))
    disconnect = world.evaluate(partner_disconnected_sensor)
    request = only(disconnect.run_requests)
    assert request.tags[TAG_PARTNER] == "p-001"
    run = world.run(request, partner_disconnected_sensor)
    assert run.success, failure_text(run)
    assert run.dagster_run.job_name == "partner_disconnect"

    gradient = world.gradient_partner("p-001")
    assert gradient["status"] == "inactive"
    assert gradient["accounts"] == [] and gradient["counts"] == []
    assert ledger.delivered_pairs(world.state, "p-001") == {}
    assert ledger.newest_delivered_month(world.state, "p-001") is None
    assert ledger.partner_state(world.state, "p-001").status == "inactive"
    # the others are untouched
    assert world.gradient_counts("p-003") == p003_before
    assert world.gradient_partner("p-003")["status"] == "active"
    # handled: with the cursor or without it, nothing is asked again
    assert world.evaluate(partner_disconnected_sensor, disconnect.cursor).run_requests == []
    assert world.evaluate(partner_disconnected_sensor, None).run_requests == []
    # a disconnected partner is left out of the next loads
    world.admin.clear_requests()
    again = world.run(dg.RunRequest(partition_key=OCT_KEY), monthly_billing_schedule)
    assert again.success, failure_text(again)
    assert org("p-001") not in {r["organization_id"] for r in world.partner_calls()}
    assert world.gradient_partner("p-001")["accounts"] == []

    # --- Reconnect (new connected_at); counts for October exist now -> the load job only
    world.admin.clear_requests()
    reconnected_at = utc(2026, 11, 21, 8, 0)
    world.reconnect("p-001", reconnected_at)
    connect = world.evaluate(partner_connected_sensor, None)
    request = only(connect.run_requests)
    assert request.tags[TAG_PARTNER] == "p-001"
    assert request.job_name == "gradient_load"
    assert request.run_key == f"connected:p-001:{reconnected_at.isoformat()}"
    run = world.run(request, partner_connected_sensor)
    assert run.success, failure_text(run)

    gradient = world.gradient_partner("p-001")
    assert gradient["status"] == "active"
    assert {a["id"] for a in gradient["accounts"]} == world.live_companies("p-001") | {c for c, _ in before}
    assert world.gradient_counts("p-001") == world.billable("p-001") == before
    delivered = ledger.delivered_pairs(world.state, "p-001")
    assert {pair: d.value for pair, d in delivered.items()} == before
    # only p-001 was talked to; every count was sent again
    assert {r["organization_id"] for r in world.partner_calls()} == {org("p-001")}
    sent = {(r["body"]["accountId"], world.sku_of()[r["path"].split("/")[-2]]) for r in world.calls(org("p-001"), "/count")}
    assert sent == set(before)
    state = ledger.partner_state(world.state, "p-001")
    assert (state.status, state.onboarded_connection_at) == ("active", reconnected_at)
    assert world.evaluate(partner_connected_sensor, connect.cursor).run_requests == []
    assert world.evaluate(partner_connected_sensor, None).run_requests == []


# =========================================================================== running: buttons


def test_update_counts_after_mapping_delivers_the_pair_and_sync_accounts_creates_accounts(make_world):
    world = make_world(connected=3)
    world.run_schedule_tick()
    unmapped = sorted(pair for pair, o in world.outcomes("p-002").items() if o == ledger.UNMAPPED)
    assert unmapped, "p-002 has only one company mapped: some of its counts are unmapped"
    account = unmapped[0][0]
    world.admin.map_account(org("p-002"), account)
    world.admin.clear_requests()

    rid = world.click("p-002", "update_counts")
    result = world.evaluate(sync_requests_sensor)
    request = only(result.run_requests)
    assert (request.job_name, request.run_key) == ("gradient_load", f"sync-request:{rid}")
    run = world.run(request, sync_requests_sensor)
    assert run.success, failure_text(run)

    billable = world.billable("p-002")
    delivered = ledger.delivered_pairs(world.state, "p-002")
    now_mapped = {pair for pair in unmapped if pair[0] == account}
    for pair in now_mapped:
        assert delivered[pair].value == billable[pair]
        assert world.gradient_counts("p-002")[pair] == billable[pair]
        assert world.outcomes("p-002")[pair] == ledger.DELIVERED
    still = set(unmapped) - now_mapped
    assert all(world.outcomes("p-002")[pair] == ledger.UNMAPPED for pair in still)
    # only p-002 was talked to; what was delivered before was not sent again
    assert {r["organization_id"] for r in world.partner_calls()} == {org("p-002")}
    sent = {r["body"]["accountId"] for r in world.calls(org("p-002"), "/count")}
    assert account in sent
    assert not sent & {a for (a, _), d in delivered.items() if (a, _) not in now_mapped}

    # "Sync Company Accounts": a company added to p-001 becomes a Gradient account; no counts sent
    world.add_company("p-001", "c-001-9001", "Brand New Dental")
    world.admin.clear_requests()
    rid = world.click("p-001", "sync_accounts")
    request = only(world.evaluate(sync_requests_sensor, result.cursor).run_requests)
    assert (request.job_name, request.run_key) == ("account_sync", f"sync-request:{rid}")
    run = world.run(request, sync_requests_sensor)
    assert run.success, failure_text(run)
    accounts = {a["id"]: a["name"] for a in world.gradient_partner("p-001")["accounts"]}
    assert accounts["c-001-9001"] == "Brand New Dental"
    assert world.calls(path_part="/count") == []
    assert {r["organization_id"] for r in world.partner_calls()} == {org("p-001")}


# =========================================================================== running: late data


def late_request(world: World) -> dg.RunRequest:
    return only(world.evaluate(missed_or_late_months_sensor).run_requests)


def test_late_data_after_a_load_asks_again_with_the_new_fingerprint(make_world, monkeypatch):
    world = make_world(connected=3)
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "1")

    # the month was missed: the sensor asks for it, and the run loads it
    missed = late_request(world)
    assert (missed.tags[TAG_TRIGGER], missed.tags["gbs/request"]) == ("sensor", "missed")
    run = world.run(missed, missed_or_late_months_sensor)
    assert run.success, failure_text(run)
    assert world.evaluate(missed_or_late_months_sensor).run_requests == []  # loaded, unchanged

    # late data: one more billable user of p-001's first company in October
    company = "c-001-0001"
    sku = "SAT"
    old = world.billable("p-001").get((company, sku), 0)
    world.add_billable_user(company, sku, utc(2026, 10, 10, 12))
    request = late_request(world)
    assert request.partition_key == OCT_KEY
    assert (request.tags[TAG_TRIGGER], request.tags["gbs/request"]) == ("sensor", "late")
    assert request.tags[TAG_REASON].startswith("late:")
    assert request.run_key.startswith(f"late:{OCT_KEY}:")
    assert not request.run_config  # every partner
    recorded_before = load_month_validation(world.state, OCT).source_watermark
    assert recorded_before is not None
    assert not request.run_key.endswith(watermark_digest(recorded_before)[:16])

    # without changes: the same key again (Dagster would not launch it twice)
    assert late_request(world).run_key == request.run_key

    run = world.run(request, missed_or_late_months_sensor)
    assert run.success, failure_text(run)
    # the key carried the watermark the run then recorded, and Gradient has the new count
    recorded = load_month_validation(world.state, OCT).source_watermark
    assert request.run_key.endswith(f":{watermark_digest(recorded)[:16]}")
    assert world.billable("p-001")[(company, sku)] == old + 1
    assert world.gradient_counts("p-001")[(company, sku)] == old + 1
    assert world.evaluate(missed_or_late_months_sensor).run_requests == []


def test_late_data_returning_to_an_earlier_state_is_not_swallowed(make_world, monkeypatch):
    world = make_world(connected=3)
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "1")
    assert world.run(late_request(world), missed_or_late_months_sensor).success  # loaded (state A)

    added = world.add_billable_user("c-001-0001", "SAT", utc(2026, 10, 10, 12))  # state B
    first = late_request(world)
    assert world.run(first, missed_or_late_months_sensor).success
    world.remove_enrollment(added)  # back to A
    back = late_request(world)
    assert world.run(back, missed_or_late_months_sensor).success
    pair = ("c-001-0001", "SAT")
    a_value = world.billable("p-001")[pair]
    assert world.gradient_counts("p-001")[pair] == a_value
    world.add_billable_user("c-001-0001", "SAT", utc(2026, 10, 10, 12))  # B again

    again = late_request(world)
    assert (again.tags[TAG_TRIGGER], again.tags["gbs/request"]) == ("sensor", "late")
    assert again.run_key != back.run_key
    # Gradient holds A's counts while the product says B: the re-run must not be deduplicated
    assert not world.would_dedupe(missed_or_late_months_sensor, again.run_key), (
        f"{again.run_key} was already used by run for the first change; the daemon skips it"
    )


def test_a_partner_filtered_run_does_not_hide_a_missed_month(make_world, monkeypatch):
    world = make_world(connected=2)
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "1")
    # p-001 and p-002 were onboarded in earlier months; October's scheduled run never happened
    for pid in ("p-001", "p-002"):
        at = datetime.fromisoformat(world.connection(pid)["connected_at"])
        ledger.set_partner_status(world.state, pid, "active", run_id="earlier", onboarded_connection_at=at)
    assert [r.partition_key for r in world.evaluate(missed_or_late_months_sensor).run_requests] == [OCT_KEY]

    # a new partner connects; its connect run loads October for it alone
    world.add_connection("p-003", utc(2026, 11, 20, 15, 30))
    world.admin.register_partner(demo_partner_key("p-003"), name="Fabrikam MSP",
                                 organization_id=org("p-003"), auto_map_all=True)
    request = only(world.evaluate(partner_connected_sensor).run_requests)
    assert request.tags[TAG_PARTNER] == "p-003"
    assert world.run(request, partner_connected_sensor).success
    assert world.gradient_counts("p-001") == {}  # p-001 never got October

    missed = world.evaluate(missed_or_late_months_sensor).run_requests
    assert [r.partition_key for r in missed] == [OCT_KEY]


# =========================================================================== run failures


def SECRETS_OF(world: World) -> list[str]:  # noqa: N802
    """Everything that must never appear in a recorded failure or an alert."""
    return [
        VENDOR_KEY,
        world.fernet_key,
        *(demo_partner_key(p) for p in ALL),
        *(world.connection(p)["encrypted_api_key"] for p in ALL),
    ]


def failure_context(world: World, result: dg.ExecuteInProcessResult):
    run = world.instance.get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    event = result.get_run_failure_event()
    assert event is not None
    return dg.build_run_status_sensor_context(
        sensor_name=billing_failure_sensor.name,
        dagster_instance=world.instance,
        dagster_run=run,
        dagster_event=event,
        resources=world.resources,
    ).for_run_failure()


def test_failure_with_a_revoked_key_is_recorded_naming_the_partner(make_world, monkeypatch):
    world = make_world(connected=3)
    world.admin.revoke_partner(org("p-002"))
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 1, 13, tzinfo=timezone.utc))
    result = world.run(monthly_billing_schedule(context), monthly_billing_schedule)
    assert not result.success
    assert failed_steps(result) == {"gradient_unit_counts"}
    assert "p-002" in failure_text(result)
    # the others were delivered anyway
    assert world.gradient_counts("p-001") == world.billable("p-001")

    billing_failure_sensor(failure_context(world, result))
    (row,) = failures.recorded_failures(world.state)
    assert row["run_id"] == result.run_id
    assert row["job_name"] == "monthly_billing"
    assert row["partition_key"] == OCT_KEY
    assert row["partners"] == "p-002"
    assert row["alerts_raised"] == 0
    assert "gradient_unit_counts" in row["message"]
    recorded = json.dumps(row, default=str)
    for secret in SECRETS_OF(world):
        assert secret not in recorded
    assert world.calls(path_part="/alerting") == []  # alerts are off by default

    # with alerts on: Gradient refuses the revoked key, nothing is raised, the record stays one row
    monkeypatch.setenv("GRADIENT_FAILURE_ALERTS", "true")
    billing_failure_sensor(failure_context(world, result))
    (row,) = failures.recorded_failures(world.state)
    assert row["alerts_raised"] == 0 and row["partners"] == "p-002"
    attempts = world.calls(path_part="/alerting")
    assert attempts and {r["status"] for r in attempts} == {401}


def test_failure_alerts_are_raised_in_gradient_when_enabled(make_world, monkeypatch):
    world = make_world(connected=3)
    monkeypatch.setenv("GRADIENT_FAILURE_ALERTS", "true")
    # Gradient answers 503 to every count call of the run (after retries: failed)
    world.admin.set_faults(error_rate=1.0, paths=["/service/"])
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 1, 13, tzinfo=timezone.utc))
    result = world.run(monthly_billing_schedule(context), monthly_billing_schedule)
    assert not result.success
    assert failed_steps(result) == {"gradient_unit_counts"}
    world.admin.clear_faults()
    world.admin.clear_requests()

    billing_failure_sensor(failure_context(world, result))
    (row,) = failures.recorded_failures(world.state)
    assert row["partners"] == "p-001,p-002,p-003"

    failed_accounts = defaultdict(set)
    for e in ledger.entries_for(world.state, OCT):
        if e["outcome"] == ledger.FAILED and e["run_id"] == result.run_id:
            failed_accounts[e["partner_id"]].add(e["account_id"])
    posts = [r for r in world.calls(path_part="/alerting/") if r["method"] == "POST"]
    assert posts and all(r["status"] in (200, 201, 202) for r in posts)
    expected = sum(min(len(a), failures.MAX_ALERTS_PER_PARTNER) for a in failed_accounts.values())
    assert row["alerts_raised"] == len(posts) == expected
    for r in posts:
        pid = r["organization_id"].removeprefix("org-")
        account = r["path"].removeprefix(f"{API_PREFIX}/alerting/")
        assert account in failed_accounts[pid]
        body = json.dumps(r["body"])
        assert result.run_id[:8] in body
        for secret in SECRETS_OF(world):
            assert secret not in body
    # the alerts are in Gradient, on the partners' own accounts
    snapshot = world.admin.state()["partners"]
    raised = {(o.removeprefix("org-"), a["accountId"]) for o, p in snapshot.items() for a in p["alerts"]}
    assert raised == {(r["organization_id"].removeprefix("org-"), r["path"].rsplit("/", 1)[1]) for r in posts}
    recorded = json.dumps(row, default=str)
    for secret in SECRETS_OF(world):
        assert secret not in recorded


def test_failed_disconnect_is_recorded_for_the_tagged_partner(make_world):
    """Gradient unreachable while disconnecting: the run fails, the ledger is reset anyway, and
    the failure sensor names the partner from the run's tag (no ledger entry names it)."""
    world = make_world(connected=3)
    at = datetime.fromisoformat(world.connection("p-001")["connected_at"])
    ledger.set_partner_status(world.state, "p-001", "active", run_id="earlier", onboarded_connection_at=at)
    world.disconnect("p-001", utc(2026, 11, 20, 10, 0))
    world.admin.set_faults(error_rate=1.0, paths=["/organization/status"])
    request = only(world.evaluate(partner_disconnected_sensor).run_requests)
    result = world.run(request, partner_disconnected_sensor)
    world.admin.clear_faults()
    assert not result.success
    assert failed_steps(result) == {"disconnect_gradient_partner"}
    assert "p-001" in failure_text(result)
    assert ledger.partner_state(world.state, "p-001").status == "inactive"

    billing_failure_sensor(failure_context(world, result))
    (row,) = failures.recorded_failures(world.state)
    assert (row["job_name"], row["partition_key"], row["partners"]) == ("partner_disconnect", None, "p-001")
    assert row["alerts_raised"] == 0
    recorded = json.dumps(row, default=str)
    for secret in SECRETS_OF(world):
        assert secret not in recorded


def test_the_late_months_tick_reads_the_watermark_never_the_month(make_world, monkeypatch, request):
    """A tick over loaded months runs the watermark query per month, and never the month's
    utilization query (no aggregate in a tick)."""
    world = make_world(connected=3)
    monkeypatch.setenv("MONTH_WATCH_LOOKBACK_MONTHS", "1")
    assert world.run(late_request(world), missed_or_late_months_sensor).success
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    request.addfinalizer(lambda: sa.event.remove(sa.engine.Engine, "before_cursor_execute", record))
    assert world.evaluate(missed_or_late_months_sensor).run_requests == []
    assert sum("newest_enrollment" in s for s in statements) == 1
    assert not any("service_enrollments AS e" in s for s in statements)  # the utilization query
