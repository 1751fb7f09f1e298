"""The whole month end to end: the six assets under Dagster's real executor, the product and
state databases on disk (one test on PostgreSQL), and Gradient as the real HTTP emulator.

Rules under test: ``/work/shared/design.md`` ("The target: Gradient").
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from assets import gradient_load as gl
from assets import month_end as me
from pipeline.gradient import ledger
from pipeline.source import product_schema as ps
from pipeline.demo.run import register_demo_partners
from pipeline.demo.data import DemoSpec, demo_partner_key, load_demo_data
from pipeline.gradient.client import partner_token
from gradient_emulator import API_PREFIX, EmulatorAdmin, EmulatorServer
from pipeline.resources import GradientResource
from pipeline.gradient.partner_keys import encrypt_partner_key
from pipeline.resources import BillingRules, PartnerSources, ProductDatabase, StateDatabase, engine_for
from pipeline.store.months import load_billable_counts

pytestmark = pytest.mark.slow

VENDOR_KEY = "vk-e2e-3f9c1a7d55b2"
OCT_KEY = "2026-10-01"
OCT = date(2026, 10, 1)
SEP = date(2026, 9, 1)
NY = ZoneInfo("America/New_York")
# Four partners, three connected (p-001..p-003); p-004 is counted but never pushed.
SPEC = DemoSpec(
    partners=4,
    connected_partners=3,
    companies_per_partner=(3, 5),
    users_per_company=(2, 8),
    end_month=date(2026, 11, 1),
    history_months=4,
)
CONNECTED = ["p-001", "p-002", "p-003"]
ASSETS = [
    me.utilization_extract,
    me.validated_utilization,
    me.billable_counts,
    gl.gradient_services,
    gl.gradient_accounts,
    gl.gradient_unit_counts,
]
COUNT_PATH_SUFFIX = "/count"


def org(partner_id: str) -> str:
    return f"org-{partner_id}"


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


class World:
    """One product DB seeded with demo data, one state DB, the emulator, and a way to run."""

    def __init__(self, product_url: str, state_url: str, emulator: EmulatorServer, admin: EmulatorAdmin):
        self.product_url = product_url
        self.state_url = state_url
        self.emulator = emulator
        self.admin = admin
        self.fernet_key = Fernet.generate_key().decode()
        self.product = engine_for(product_url)
        load_demo_data(self.product, SPEC, encryption_keys=self.fernet_key)
        self.gradient_kwargs: dict = {}
        self.partner_sources: PartnerSources | None = None
        self.vendor_key: str | dg.EnvVar = VENDOR_KEY

    # ------------------------------------------------------------------ setup
    def register(self, *, partial: bool = False) -> None:
        """Register the connected partners' keys; ``partial``: the demo's mapping, where the
        last connected partner (p-003) has only half its companies mapped."""
        if partial:
            assert register_demo_partners(self.admin, self.product) == CONNECTED
            return
        for pid in CONNECTED:
            self.admin.register_partner(
                demo_partner_key(pid), name=f"Partner {pid}", organization_id=org(pid), auto_map_all=True
            )

    @property
    def state(self) -> sa.Engine:
        return StateDatabase(url=self.state_url).engine()

    def resources(self) -> dict:
        gradient = dict(
            base_url=self.emulator.base_url,
            vendor_api_key=self.vendor_key,
            backoff_initial_seconds=0.01,
            backoff_max_seconds=0.05,
            max_requests_per_second=60,
        )
        gradient.update(self.gradient_kwargs)
        return {
            "product_db": ProductDatabase(url=self.product_url),
            "state_db": StateDatabase(url=self.state_url),
            # the demo's bad rows are a few percent of a small month: let them through
            "billing_rules": BillingRules(quarantine_threshold=0.5),
            "partner_sources": self.partner_sources or PartnerSources(encryption_keys=self.fernet_key),
            "gradient": GradientResource(**gradient),
        }

    def run(self, partition: str = OCT_KEY, **config) -> dg.ExecuteInProcessResult:
        run_config = None
        if config:
            run_config = {
                "ops": {
                    "gradient_accounts": {"config": config},
                    "gradient_unit_counts": {"config": config},
                }
            }
        return dg.materialize(
            ASSETS,
            partition_key=partition,
            resources=self.resources(),
            run_config=run_config,
            raise_on_error=False,
        )

    # ------------------------------------------------------------------ reading back
    def service_ids(self) -> dict[str, str]:
        return ledger.service_ids(self.state)

    def sku_of(self) -> dict[str, str]:
        return {sid: sku for sku, sid in self.service_ids().items()}

    def billable(self, month: date) -> dict[tuple[str, str, str], int]:
        frame = load_billable_counts(self.state, month)
        return {
            (r.partner_id, r.company_id, r.sku): int(r.billable_users) for r in frame.itertuples(index=False)
        }

    def emulator_counts(self) -> dict[tuple[str, str, str], int]:
        """What Gradient shows now, keyed like ``billable``: (partner, account, sku)."""
        sku_of = self.sku_of()
        out = {}
        for row in self.admin.counts():
            pid = row["organization_id"].removeprefix("org-")
            out[(pid, row["account_id"], sku_of[row["service_id"]])] = row["unit_count"]
        return out

    def mapped_accounts(self) -> set[tuple[str, str]]:
        snap = self.admin.state()["partners"]
        return {
            (o.removeprefix("org-"), account) for o, p in snap.items() for account in p["account_mappings"]
        }

    def requests(self) -> list[dict]:
        return self.admin.requests()

    def count_calls(self, requests: list[dict] | None = None) -> list[dict]:
        return [
            r
            for r in (requests if requests is not None else self.requests())
            if r["method"] == "POST" and r["path"].endswith(COUNT_PATH_SUFFIX)
        ]

    def entries(self, month: date, run_id: str | None = None) -> list[dict]:
        rows = ledger.entries_for(self.state, month)
        return [r for r in rows if run_id is None or r["run_id"] == run_id]

    # ------------------------------------------------------------------ product edits
    def set_connection_key(self, partner_id: str, encrypted: str) -> None:
        with self.product.begin() as conn:
            conn.execute(
                sa.update(ps.gradient_connections)
                .where(ps.gradient_connections.c.partner_id == partner_id)
                .values(encrypted_api_key=encrypted)
            )

    def rename_company(self, company_id: str, name: str) -> None:
        with self.product.begin() as conn:
            conn.execute(sa.update(ps.companies).where(ps.companies.c.company_id == company_id).values(name=name))

    def end_pair_before(self, company_id: str, sku: str, cut: datetime) -> None:
        """No user of (company, sku) active at or after ``cut``: spans that would still be
        running are ended at ``cut``; spans starting at or after it are removed."""
        dialect = self.product.dialect.name
        t = ps.service_enrollments
        with self.product.begin() as conn:
            rows = conn.execute(
                sa.select(t.c.enrollment_id, t.c.started_at, t.c.ended_at).where(
                    t.c.company_id == company_id, t.c.sku == sku
                )
            ).all()
            for enrollment_id, started, ended in rows:
                start, end = _parse(started), _parse(ended)
                if start is not None and start >= cut:
                    conn.execute(sa.delete(t).where(t.c.enrollment_id == enrollment_id))
                elif end is None or end > cut:
                    conn.execute(
                        sa.update(t)
                        .where(t.c.enrollment_id == enrollment_id)
                        .values(ended_at=ps.to_db_timestamp(cut, dialect))
                    )


def _parse(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@pytest.fixture
def world(tmp_path, emulator, admin) -> World:
    return World(
        f"sqlite:///{tmp_path / 'product.db'}", f"sqlite:///{tmp_path / 'state.db'}", emulator, admin
    )


# =========================================================================== helpers


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's description and error message."""
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


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.step_materialization_data.materialization
            if mat.asset_key.path[-1] == asset:
                return {k: v.value for k, v in mat.metadata.items()}
    return {}


def observation_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata of a push that claimed nothing (superseded, chosen partners)."""
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            seen = event.event_specific_data.asset_observation
            if seen.asset_key.path[-1] == asset:
                return {k: v.value for k, v in seen.metadata.items()}
    return {}


def expected_in_gradient(world: World, month: date) -> dict[tuple[str, str, str], int]:
    """The month's billable counts of connected partners' mapped accounts."""
    mapped = world.mapped_accounts()
    return {
        key: value
        for key, value in world.billable(month).items()
        if key[0] in CONNECTED and (key[0], key[1]) in mapped
    }


def outcomes_by_pair(entries: list[dict]) -> dict[tuple[str, str, str], str]:
    return {(e["partner_id"], e["account_id"], e["sku"]): e["outcome"] for e in entries}


def statuses_set(requests: list[dict], organization_id: str) -> list[str]:
    prefix = f"{API_PREFIX}/organization/status/"
    return [
        r["path"].removeprefix(prefix)
        for r in requests
        if r["method"] == "PATCH" and r["path"].startswith(prefix) and r["organization_id"] == organization_id
        and r["status"] == 200
    ]


def assert_delivered_exactly(world: World, month: date) -> None:
    """Gradient holds exactly the month's billable counts for every mapped pair."""
    expected = expected_in_gradient(world, month)
    assert expected, "the scenario must have something to deliver"
    assert world.emulator_counts() == expected


# =========================================================================== 1. first sync


def test_first_sync_creates_accounts_and_delivers_billable_counts(world):
    world.register(partial=True)
    result = world.run()
    assert result.success, failure_text(result)

    requests = world.requests()
    billable = world.billable(OCT)
    companies_by_partner = defaultdict(set)
    with world.product.connect() as conn:
        for pid, cid in conn.execute(
            sa.select(ps.companies.c.partner_id, ps.companies.c.company_id).where(ps.companies.c.deleted_at.is_(None))
        ):
            companies_by_partner[pid].add(cid)

    # accounts: one bulk POST per connected partner, holding every live company (+ billed ones)
    creates = [r for r in requests if r["method"] == "POST" and r["path"] == f"{API_PREFIX}/organization/accounts"]
    assert Counter(r["organization_id"] for r in creates) == {org(p): 1 for p in CONNECTED}
    snapshot = world.admin.state()["partners"]
    for pid in CONNECTED:
        (create,) = [r for r in creates if r["organization_id"] == org(pid)]
        assert isinstance(create["body"], list) and create["status"] == 201
        sent_ids = {a["id"] for a in create["body"]}
        billed = {cid for (p, cid, _) in billable if p == pid}
        assert sent_ids == companies_by_partner[pid] | billed
        assert {a["id"] for a in snapshot[org(pid)]["accounts"]} == sent_ids
    # the partner that is not connected: counted, never pushed
    assert any(k[0] == "p-004" for k in billable)
    assert org("p-004") not in snapshot
    assert not [r for r in requests if r["organization_id"] is None]

    # counts: exactly the billable counts of mapped pairs, nothing for unmapped ones
    expected = expected_in_gradient(world, OCT)
    assert world.emulator_counts() == expected
    unmapped_pairs = {k for k in billable if k[0] in CONNECTED} - set(expected)
    assert unmapped_pairs, "the demo mapping leaves some of p-003's accounts unmapped"
    assert {k[0] for k in unmapped_pairs} == {"p-003"}

    # ledger: delivered for what Gradient took, unmapped for 404s; nothing for p-004
    outcomes = outcomes_by_pair(world.entries(OCT))
    assert outcomes == {
        **{k: ledger.DELIVERED for k in expected},
        **{k: ledger.UNMAPPED for k in unmapped_pairs},
    }
    by_partner = ledger.month_outcomes(world.state, OCT, run_id=result.run_id)
    assert set(by_partner) == set(CONNECTED)
    assert by_partner["p-003"][ledger.UNMAPPED] == len(unmapped_pairs)
    for entry in world.entries(OCT):
        assert entry["run_id"] == result.run_id
        assert entry["http_status"] == (201 if entry["outcome"] == ledger.DELIVERED else 404)
        assert entry["service_id"] == world.service_ids()[entry["sku"]]

    # one call per (account, service); only the rebuild trigger may repeat a pair
    count_calls = world.count_calls(requests)
    for pid in CONNECTED:
        own = [r for r in count_calls if r["organization_id"] == org(pid)]
        pairs = Counter((r["body"]["accountId"], r["path"].split("/")[-2]) for r in own)
        assert set(pairs) == {
            (cid, world.service_ids()[sku]) for (p, cid, sku) in billable if p == pid
        }
        # no_build=true on all but the last call; the last one is accepted, so Gradient
        # rebuilds the partner's billing exactly once
        with_build = [r for r in own if r["query"].get("no_build") != "true"]
        assert own[-1] in with_build and own[-1]["status"] == 201
        if own[-1]["status"] == 201 and len(with_build) == 1:
            assert max(pairs.values()) == 1
        else:
            # the partner's last pair was unmapped (404): one accepted value was re-sent
            # without no_build so that Gradient rebuilds
            assert [r["status"] for r in with_build] == [404, 201]
            assert sum(pairs.values()) == len(pairs) + 1
        assert snapshot[org(pid)]["billing_builds"] == 1, pid

    # integration status: pending, then active; the same in the state DB
    for pid in CONNECTED:
        assert statuses_set(requests, org(pid)) == ["pending", "active"]
        assert snapshot[org(pid)]["status"] == "active"
        assert ledger.partner_state(world.state, pid).status == "active"
    assert ledger.partner_state(world.state, "p-004") is None

    meta = materialization_metadata(result, "gradient_unit_counts")
    assert meta["delivered"] == len(expected)
    assert meta["unmapped"] == len(unmapped_pairs)
    assert meta["failed"] == 0


# =========================================================================== 2. unmapped


def test_unmapped_pairs_are_recorded_then_delivered_once_mapped(world):
    world.register(partial=True)
    first = world.run()
    assert first.success, failure_text(first)
    unmapped = [e for e in world.entries(OCT) if e["outcome"] == ledger.UNMAPPED]
    assert unmapped and {e["partner_id"] for e in unmapped} == {"p-003"}
    # 404 is not retried within the run: each unmapped pair was called exactly once
    unmapped_calls = [r for r in world.count_calls() if r["status"] == 404]
    assert len(unmapped_calls) == len(unmapped)

    for account in sorted({e["account_id"] for e in unmapped}):
        world.admin.map_account(org("p-003"), account)
    world.admin.clear_requests()

    second = world.run()
    assert second.success, failure_text(second)
    calls = world.count_calls()
    sent = {(r["organization_id"], r["body"]["accountId"], r["path"].split("/")[-2]) for r in calls}
    service_ids = world.service_ids()
    assert sent == {(org(e["partner_id"]), e["account_id"], service_ids[e["sku"]]) for e in unmapped}
    assert len(calls) == len(unmapped)
    assert all(r["status"] == 201 for r in calls)

    rerun = outcomes_by_pair(world.entries(OCT, second.run_id))
    assert rerun == {(e["partner_id"], e["account_id"], e["sku"]): ledger.DELIVERED for e in unmapped}
    assert_delivered_exactly(world, OCT)
    assert world.emulator_counts() == {k: v for k, v in world.billable(OCT).items() if k[0] in CONNECTED}


# =========================================================================== 3. idempotent re-run


def test_rerun_with_nothing_changed_sends_no_count(world):
    world.register()
    first = world.run()
    assert first.success, failure_text(first)
    before = world.emulator_counts()
    builds_before = {o: p["billing_builds"] for o, p in world.admin.state()["partners"].items()}
    world.admin.clear_requests()

    second = world.run()
    assert second.success, failure_text(second)
    requests = world.requests()
    assert world.count_calls(requests) == []
    assert not [r for r in requests if r["method"] in ("POST", "PATCH") and "/organization" in r["path"]]
    assert world.emulator_counts() == before
    assert {o: p["billing_builds"] for o, p in world.admin.state()["partners"].items()} == builds_before
    assert world.entries(OCT, second.run_id) == []
    meta = materialization_metadata(second, "gradient_unit_counts")
    assert meta["skipped"] == len(before) and meta["delivered"] == 0
    # services are created once, by name: the re-run found them
    assert not [r for r in requests if r["method"] == "POST" and r["path"] == f"{API_PREFIX}/service"]
    skus = world.admin.state()["vendor"]["skus"]
    assert sorted(s["name"] for s in skus) == sorted(set(s["name"] for s in skus)) and len(skus) == 4
    assert set(world.service_ids().values()) == {s["id"] for s in skus}


# =========================================================================== 4. drop to zero


def test_pair_that_dropped_to_zero_is_sent_as_zero(world):
    world.register()
    # pick a pair with users in September; nobody uses it from October on
    sep_counts = world_billable_preview(world, "2026-09-01")
    pid, company, sku = next(k for k, v in sorted(sep_counts.items()) if v > 0 and k[0] == "p-001")
    world.end_pair_before(company, sku, datetime(2026, 10, 1, tzinfo=NY))

    september = world.run("2026-09-01")
    assert september.success, failure_text(september)
    assert world.billable(SEP) == sep_counts  # the edit did not change September
    assert world.emulator_counts()[(pid, company, sku)] == sep_counts[(pid, company, sku)] > 0

    october = world.run(OCT_KEY)
    assert october.success, failure_text(october)
    oct_counts = world.billable(OCT)
    assert oct_counts.get((pid, company, sku), 0) == 0
    shown = world.emulator_counts()
    assert shown[(pid, company, sku)] == 0
    # every other pair shows October's value; pairs gone since September show 0
    for key, value in shown.items():
        assert value == oct_counts.get(key, 0), key
    assert {k for k in oct_counts if k[0] in CONNECTED} <= set(shown)
    zero_entries = [
        e for e in world.entries(OCT, october.run_id) if (e["account_id"], e["sku"]) == (company, sku)
    ]
    assert [(e["value"], e["outcome"]) for e in zero_entries] == [(0, ledger.DELIVERED)]

    # and a further re-run of October does not send the zero again
    world.admin.clear_requests()
    again = world.run(OCT_KEY)
    assert again.success and world.count_calls() == []


def world_billable_preview(world: World, partition: str) -> dict[tuple[str, str, str], int]:
    """The month's billable counts, computed by the month-end assets alone (no Gradient)."""
    result = dg.materialize(
        ASSETS[:3], partition_key=partition, resources=world.resources(), raise_on_error=False
    )
    assert result.success, failure_text(result)
    return world.billable(date.fromisoformat(partition))


# =========================================================================== 5. bad partner key


@pytest.mark.parametrize("how", ["regenerated", "revoked"])
def test_bad_partner_key_fails_that_partner_only(world, how):
    world.register()
    if how == "regenerated":
        # the partner generated a new key in Gradient; the product still holds the old one
        world.admin.register_partner("a-brand-new-key-for-p-001", organization_id=org("p-001"))
    else:
        world.admin.revoke_partner(org("p-001"))

    result = world.run()
    assert not result.success
    assert failed_steps(result) == {"gradient_unit_counts"}
    text = failure_text(result)
    assert "p-001" in text and "p-002" not in text and "p-003" not in text
    assert "401" in text and "fresh key" in text

    # the others were delivered; p-001 got nothing
    shown = world.emulator_counts()
    assert {k[0] for k in shown} == {"p-002", "p-003"}
    expected = {k: v for k, v in world.billable(OCT).items() if k[0] in ("p-002", "p-003")}
    assert shown == expected
    outcomes = ledger.month_outcomes(world.state, OCT)
    assert set(outcomes["p-001"]) <= {ledger.FAILED}
    assert outcomes["p-002"] == {ledger.DELIVERED: len([k for k in expected if k[0] == "p-002"])}

    p1 = ledger.partner_state(world.state, "p-001")
    assert p1.status == "error"
    assert "401" in (p1.last_error or "")
    assert ledger.partner_state(world.state, "p-002").status == "active"
    # nothing claims p-001 was delivered
    assert ledger.delivered_pairs(world.state, "p-001") == {}

    # the partner's key works again (re-registered in Gradient): a re-run completes the month
    world.admin.register_partner(demo_partner_key("p-001"), organization_id=org("p-001"))
    world.admin.clear_requests()
    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    assert world.emulator_counts() == {k: v for k, v in world.billable(OCT).items() if k[0] in CONNECTED}
    assert {r["organization_id"] for r in world.count_calls()} == {org("p-001")}
    assert ledger.partner_state(world.state, "p-001").status == "active"


# =========================================================================== 6. injected faults


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"error_rate": 0.3, "error_status": 503, "seed": 11}, id="random-503"),
        pytest.param({"error_rate": 0.3, "error_status": 429, "seed": 12}, id="random-429"),
        pytest.param({"error_rate": 0.2, "error_status": 500, "drop_rate": 0.1, "seed": 13}, id="random-500-and-drops"),
        pytest.param(
            {
                "timeout_seconds": 5.0,
                "fail_next": [
                    {"path_prefix": "/organization/accounts", "method": "POST", "action": "timeout"},
                    {"path_prefix": "/organization/accounts", "method": "POST", "action": "drop"},
                    {"path_prefix": "/organization/status", "action": "error", "status": 502},
                    {"path_prefix": "/service/", "method": "POST", "action": "timeout"},
                    {"path_prefix": "/service/", "method": "POST", "action": "drop"},
                    {"path_prefix": "/service/", "method": "POST", "action": "error", "status": 429},
                    {"path_prefix": "/service/", "method": "POST", "action": "error", "status": 503},
                    {"path_prefix": "/service/", "method": "POST", "action": "drop"},
                    {"path_prefix": "/organization", "method": "GET", "action": "error", "status": 504},
                    {"path_prefix": "", "method": "GET", "action": "drop"},
                ],
            },
            id="one-shot-timeouts-drops-429-5xx",
        ),
    ],
)
def test_faults_are_retried_and_counts_end_exact(world, faults):
    world.register()
    # generous attempts so a 30 % error rate cannot exhaust one call; short timeouts
    world.gradient_kwargs = {"max_attempts": 12, "timeout_seconds": 0.5}
    world.admin.set_faults(**faults)
    result = world.run()
    assert result.success, failure_text(result)
    world.admin.clear_faults()

    requests = world.requests()
    injected = [r for r in requests if r["fault"] in ("error", "drop", "timeout")]
    assert injected, "the faults must actually have hit the run"
    meta = materialization_metadata(result, "gradient_unit_counts")
    if any(r["path"].endswith("/count") for r in injected):
        assert meta["retries"] > 0
    assert_delivered_exactly(world, OCT)
    assert world.emulator_counts() == {k: v for k, v in world.billable(OCT).items() if k[0] in CONNECTED}
    outcomes = ledger.month_outcomes(world.state, OCT)
    assert all(set(o) == {ledger.DELIVERED} for o in outcomes.values())
    # every pair is recorded delivered exactly once, whatever the retries
    pairs = Counter((e["partner_id"], e["account_id"], e["sku"]) for e in world.entries(OCT))
    assert set(pairs.values()) == {1}
    # each partner's accounts were created once (no duplicates after timeouts / drops)
    for pid in CONNECTED:
        accounts = world.admin.state()["partners"][org(pid)]["accounts"]
        assert len(accounts) == len({a["id"] for a in accounts})


def test_status_that_cannot_be_set_active_fails_the_run_and_a_rerun_finishes(world):
    world.register()
    world.gradient_kwargs = {"max_attempts": 2}
    world.admin.set_faults(
        fail_next=[{"path_prefix": "/organization/status/active", "method": "PATCH", "status": 503}] * 2
    )
    result = world.run(partner_ids=["p-003"])
    assert not result.success
    text = failure_text(result)
    assert "p-003" in text and "503" in text
    # the counts themselves were delivered and are recorded so
    assert outcomes_by_pair(world.entries(OCT)) == {
        k: ledger.DELIVERED for k in world.billable(OCT) if k[0] == "p-003"
    }
    assert ledger.partner_state(world.state, "p-003").status == "pending"
    assert world.admin.state()["partners"][org("p-003")]["status"] == "pending"

    world.admin.clear_requests()
    rerun = world.run(partner_ids=["p-003"])
    assert rerun.success, failure_text(rerun)
    assert world.count_calls() == []
    assert statuses_set(world.requests(), org("p-003")) == ["active"]
    assert ledger.partner_state(world.state, "p-003").status == "active"


# =========================================================================== 7. superseded


def test_older_month_after_newer_is_superseded_unless_forced(world):
    world.register()
    october = world.run(OCT_KEY)
    assert october.success, failure_text(october)
    after_october = world.emulator_counts()
    assert after_october == expected_in_gradient(world, OCT)
    world.admin.clear_requests()

    september = world.run("2026-09-01")
    assert september.success, failure_text(september)
    assert world.count_calls() == []
    assert world.emulator_counts() == after_october
    sep_entries = world.entries(SEP, september.run_id)
    sep_counts = {k: v for k, v in world.billable(SEP).items() if k[0] in CONNECTED}
    assert {(e["partner_id"], e["account_id"], e["sku"]): (e["value"], e["outcome"]) for e in sep_entries} == {
        k: (v, ledger.SUPERSEDED) for k, v in sep_counts.items()
    }
    assert all("2026-10" in e["detail"] for e in sep_entries)
    # Gradient does not hold September: the month is observed, not materialized
    assert materialization_metadata(september, "gradient_unit_counts") == {}
    meta = observation_metadata(september, "gradient_unit_counts")
    assert meta["superseded"] == len(sep_counts) and meta["delivered"] == 0 and meta["claimed"] is False
    assert materialization_metadata(september, "gradient_ledger")["superseded"] == len(sep_counts)
    # the newest delivered month is still October
    assert all(ledger.newest_delivered_month(world.state, p) == OCT for p in CONNECTED)

    forced = world.run("2026-09-01", force_superseded=True)
    assert forced.success, failure_text(forced)
    assert world.count_calls()
    shown = world.emulator_counts()
    # Gradient now holds September: its counts, and 0 for pairs only October had
    assert shown == {**{k: 0 for k in after_october}, **sep_counts}
    forced_outcomes = Counter(e["outcome"] for e in world.entries(SEP, forced.run_id))
    assert set(forced_outcomes) == {ledger.DELIVERED}
    assert materialization_metadata(forced, "gradient_unit_counts")["outcome"] == "delivered"

    # October is still the newest month: a normal re-run of it puts October back
    restored = world.run(OCT_KEY)
    assert restored.success, failure_text(restored)
    assert world.emulator_counts() == {**{k: 0 for k in sep_counts}, **after_october}


def test_partner_ids_config_limits_the_run(world):
    world.register()
    result = world.run(partner_ids=["p-002"])
    assert result.success, failure_text(result)
    assert {k[0] for k in world.emulator_counts()} == {"p-002"}
    assert {r["organization_id"] for r in world.count_calls()} == {org("p-002")}
    assert set(ledger.month_outcomes(world.state, OCT)) == {"p-002"}
    # one partner's push does not claim the month for the others: observed, not materialized
    assert materialization_metadata(result, "gradient_unit_counts") == {}
    seen = observation_metadata(result, "gradient_unit_counts")
    assert seen["claimed"] is False and seen["scope"] == "p-002" and seen["delivered"] > 0


# =========================================================================== 8. isolation


def test_each_partner_counts_travel_only_with_its_own_token(world):
    world.register(partial=True)
    first_month = world.run("2026-09-01")
    assert first_month.success, failure_text(first_month)
    result = world.run(OCT_KEY)
    assert result.success, failure_text(result)

    token_sha = {
        hashlib.sha256(partner_token(VENDOR_KEY, demo_partner_key(pid)).encode("utf-8")).hexdigest(): org(pid)
        for pid in CONNECTED
    }
    requests = world.requests()
    assert requests
    orgs_by_token: dict[str, set[str]] = defaultdict(set)
    for r in requests:
        assert r["token_sha256"] is not None, r["path"]
        orgs_by_token[r["token_sha256"]].add(r["organization_id"])
    # every fingerprint seen is one of the partners' own tokens, and maps to that partner only
    assert set(orgs_by_token) == set(token_sha)
    for sha, orgs in orgs_by_token.items():
        assert orgs == {token_sha[sha]}

    accounts_of = {
        o: {a["id"] for a in p["accounts"]} for o, p in world.admin.state()["partners"].items()
    }
    with world.product.connect() as conn:
        partner_of_company = dict(conn.execute(sa.select(ps.companies.c.company_id, ps.companies.c.partner_id)).all())
    for r in world.count_calls(requests) + [
        r for r in requests if "/organization/accounts" in r["path"] and r["method"] in ("POST", "PATCH")
    ]:
        owner = token_sha[r["token_sha256"]]
        if r["path"].endswith("/count"):
            account_ids = [r["body"]["accountId"]]
        elif r["method"] == "POST":
            account_ids = [a["id"] for a in r["body"]]
        else:
            account_ids = [r["path"].rsplit("/", 1)[-1]]
        for account_id in account_ids:
            assert org(partner_of_company[account_id]) == owner, (r["path"], account_id)
            assert account_id in accounts_of[owner]
    # and the ledger agrees: every entry's account belongs to the entry's partner
    for month in (SEP, OCT):
        for e in world.entries(month):
            assert partner_of_company[e["account_id"]] == e["partner_id"]


# =========================================================================== 9. rename


def test_renamed_company_renames_the_account_and_new_company_is_created(world):
    world.register()
    first = world.run()
    assert first.success, failure_text(first)
    world.rename_company("c-002-0001", "Renamed Holdings LLC")
    # and a new company of p-001 with one billable user since 2026-10-05
    dialect = world.product.dialect.name
    started = ps.to_db_timestamp(datetime(2026, 10, 5, 9, tzinfo=NY), dialect)
    with world.product.begin() as conn:
        conn.execute(ps.companies.insert(), [{
            "company_id": "c-001-new", "partner_id": "p-001", "name": "Brand New Co", "status": "active",
            "deleted_at": None, "created_at": started, "updated_at": started,
        }])
        conn.execute(ps.users.insert(), [{"user_id": "u-new-1", "email": "n@example.test", "is_billable": True}])
        conn.execute(ps.service_enrollments.insert(), [{
            "enrollment_id": 900_001, "user_id": "u-new-1", "company_id": "c-001-new", "sku": "SAT",
            "started_at": started, "ended_at": None, "updated_at": started,
        }])
    world.admin.clear_requests()

    second = world.run()
    assert second.success, failure_text(second)
    requests = world.requests()
    patches = [r for r in requests if r["method"] == "PATCH" and "/organization/accounts/" in r["path"]]
    assert [(r["organization_id"], r["path"].rsplit("/", 1)[-1], r["body"], r["status"]) for r in patches] == [
        (org("p-002"), "c-002-0001", {"name": "Renamed Holdings LLC"}, 200)
    ]
    accounts = {a["id"]: a["name"] for a in world.admin.state()["partners"][org("p-002")]["accounts"]}
    assert accounts["c-002-0001"] == "Renamed Holdings LLC"
    # the new company: one bulk create holding only it
    creates = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/organization/accounts")]
    assert [(r["organization_id"], r["body"]) for r in creates] == [
        (org("p-001"), [{"id": "c-001-new", "name": "Brand New Co"}])
    ]
    # counts: only the new pair is sent; a rename re-sends nothing
    calls = world.count_calls(requests)
    assert [(r["organization_id"], r["body"]) for r in calls] == [
        (org("p-001"), {"accountId": "c-001-new", "unitCount": 1})
    ]
    assert calls[0]["query"].get("no_build") is None
    assert world.emulator_counts()[("p-001", "c-001-new", "SAT")] == 1
    meta = materialization_metadata(second, "gradient_accounts")
    assert (meta["accounts_renamed"], meta["accounts_created"]) == (1, 1)


def test_reconnected_partner_gets_accounts_and_counts_again(world):
    world.register()
    first = world.run()
    assert first.success, failure_text(first)
    before = world.emulator_counts()
    # the partner disconnected (Gradient drops its accounts and counts) and connected again
    world.emulator.state.set_status(org("p-001"), "inactive")
    assert not world.admin.state()["partners"][org("p-001")]["accounts"]
    now = ps.to_db_timestamp(datetime.now(timezone.utc), world.product.dialect.name)
    with world.product.begin() as conn:
        conn.execute(
            sa.update(ps.gradient_connections)
            .where(ps.gradient_connections.c.partner_id == "p-001")
            .values(connected_at=now, updated_at=now)
        )
    world.admin.clear_requests()

    second = world.run()
    assert second.success, failure_text(second)
    requests = world.requests()
    assert statuses_set(requests, org("p-001")) == ["pending", "active"]
    creates = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/organization/accounts")]
    assert [r["organization_id"] for r in creates] == [org("p-001")]
    # everything of p-001 sent again (its delivered state was forgotten), nothing of the others
    assert {r["organization_id"] for r in world.count_calls(requests)} == {org("p-001")}
    assert world.emulator_counts() == before
    assert len(world.entries(OCT, second.run_id)) == len([k for k in before if k[0] == "p-001"])


def test_unreachable_gradient_fails_clearly_and_a_rerun_completes(world):
    import socket

    world.register()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    world.gradient_kwargs = {"base_url": f"http://127.0.0.1:{closed_port}", "max_attempts": 2}
    result = world.run()
    assert not result.success
    assert failed_steps(result) == {"gradient_services"}
    text = failure_text(result)
    assert "unreachable" in text and "GRADIENT_BASE_URL" in text
    assert ledger.entries_for(world.state, OCT) == []
    # the month's counts were still computed and kept
    assert world.billable(OCT)

    world.gradient_kwargs = {}
    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    assert_delivered_exactly(world, OCT)


def test_failed_account_sync_is_not_reported_as_unmapped_success(world):
    world.register()
    world.gradient_kwargs = {"max_attempts": 2}
    # both attempts of p-002's bulk account creation answer 503
    world.admin.set_faults(
        fail_next=[{"path_prefix": "/organization/accounts", "method": "POST", "status": 503}] * 2
    )
    result = world.run(partner_ids=["p-002"])
    assert world.admin.state()["partners"][org("p-002")]["accounts"] == []  # the fault did hit
    outcomes = ledger.month_outcomes(world.state, OCT).get("p-002", {})
    assert not result.success, f"run succeeded; ledger says {outcomes}"
    assert "p-002" in failure_text(result)
    assert ledger.UNMAPPED not in outcomes
    assert world.admin.state()["partners"][org("p-002")]["status"] != "active"


def test_counts_follow_a_service_whose_gradient_id_changed(world):
    world.register()
    first = world.run()
    assert first.success, failure_text(first)
    old_sat = world.service_ids()["SAT"]
    with world.product.begin() as conn:
        conn.execute(sa.update(ps.services).where(ps.services.c.sku == "SAT").values(name="Awareness Training Pro"))
    world.admin.clear_requests()

    second = world.run()
    assert second.success, failure_text(second)
    new_sat = world.service_ids()["SAT"]
    assert new_sat != old_sat  # a new Gradient service now stands for SAT
    sat_pairs = {k: v for k, v in world.billable(OCT).items() if k[0] in CONNECTED and k[2] == "SAT"}
    sent = {
        (r["organization_id"], r["body"]["accountId"])
        for r in world.count_calls()
        if r["path"] == f"{API_PREFIX}/service/{new_sat}/count"
    }
    assert sent == {(org(p), c) for (p, c, _) in sat_pairs}


# =========================================================================== 10. undecryptable key


def test_undecryptable_partner_key_fails_that_partner_only(world):
    world.register()
    other_key = Fernet.generate_key().decode()
    world.set_connection_key("p-002", encrypt_partner_key(demo_partner_key("p-002"), other_key))

    result = world.run()
    assert not result.success
    assert failed_steps(result) == {"gradient_unit_counts"}
    text = failure_text(result)
    assert "p-002" in text and "GRADIENT_KEY_ENCRYPTION_KEYS" in text
    assert "p-001" not in text and "p-003" not in text
    assert other_key not in text and world.fernet_key not in text

    assert {k[0] for k in world.emulator_counts()} == {"p-001", "p-003"}
    assert world.emulator_counts() == {
        k: v for k, v in world.billable(OCT).items() if k[0] in ("p-001", "p-003")
    }
    # p-002 never reached Gradient
    assert all(r["organization_id"] != org("p-002") for r in world.requests())
    assert "p-002" not in ledger.month_outcomes(world.state, OCT)

    # rotation: the operator adds the key that encrypted it (newest first); a re-run finishes
    world.partner_sources = PartnerSources(encryption_keys=f"{world.fernet_key},{other_key}")
    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    assert world.emulator_counts() == {k: v for k, v in world.billable(OCT).items() if k[0] in CONNECTED}


# =========================================================================== 11. secrets


def test_no_secret_in_events_logs_or_run_config(world, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    world.register()
    # deployments read secrets from the environment (EnvVar): Dagster only shows the names
    monkeypatch.setenv("GRADIENT_VENDOR_API_KEY", VENDOR_KEY)
    monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", world.fernet_key)
    world.vendor_key = dg.EnvVar("GRADIENT_VENDOR_API_KEY")
    world.partner_sources = PartnerSources(encryption_keys=dg.EnvVar("GRADIENT_KEY_ENCRYPTION_KEYS"))
    world.gradient_kwargs = {"max_attempts": 8}
    # exercise the error paths too: a rejected key, an undecryptable key, retried faults
    world.admin.revoke_partner(org("p-001"))
    stray = Fernet.generate_key().decode()
    world.set_connection_key("p-002", encrypt_partner_key(demo_partner_key("p-002"), stray))
    world.admin.set_faults(
        fail_next=[
            {"path_prefix": "/service/", "method": "POST", "status": 503},
            {"path_prefix": "/service/", "method": "POST", "status": 429},
            {"path_prefix": "/organization/accounts", "method": "GET", "action": "drop"},
        ]
    )

    result = world.run()
    assert not result.success  # p-001 and p-002 fail
    assert world.emulator_counts(), "p-003 was delivered"

    with world.product.connect() as conn:
        encrypted = conn.execute(sa.select(ps.gradient_connections.c.encrypted_api_key)).scalars().all()
    secrets = {
        "vendor key": VENDOR_KEY,
        "encryption key": world.fernet_key,
        "stray encryption key": stray,
        **{f"{pid} key": demo_partner_key(pid) for pid in CONNECTED},
        **{f"{pid} token": partner_token(VENDOR_KEY, demo_partner_key(pid)) for pid in CONNECTED},
        **{f"encrypted #{i}": value for i, value in enumerate(encrypted)},
    }
    events = []
    for event in result.all_events:
        events.append(str(event))
        events.append(repr(event.event_specific_data))
        events.append(event.message or "")
    run = result.dagster_run
    haystacks = {
        "events": "\n".join(events),
        "logs": caplog.text + "\n".join(str(r.__dict__) for r in caplog.records),
        "run config": repr(run.run_config) + repr(run.tags),
        "ledger": repr(ledger.entries_for(world.state, OCT)) + repr(ledger.all_partner_states(world.state)),
    }
    assert "GRADIENT_KEY_ENCRYPTION_KEYS" in haystacks["events"]  # the failure is explained
    assert "retrying" in haystacks["logs"]  # retries were logged
    for where, text in haystacks.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} appears in {where}"
        # partial leaks (a key's first half) too
        for what, secret in secrets.items():
            if len(secret) >= 16:
                assert secret[: len(secret) // 2] not in text, f"part of {what} appears in {where}"


# =========================================================================== PostgreSQL


@pytest.mark.postgres
def test_first_sync_on_postgres(postgres_url, emulator, admin):
    # product and state in the same fresh database: their table names do not overlap
    world = World(postgres_url, postgres_url, emulator, admin)
    world.register(partial=True)
    result = world.run()
    assert result.success, failure_text(result)
    assert_delivered_exactly(world, OCT)
    outcomes = ledger.month_outcomes(world.state, OCT)
    assert set(outcomes) == set(CONNECTED)
    assert ledger.UNMAPPED in outcomes["p-003"]
    assert all(ledger.partner_state(world.state, p).status == "active" for p in CONNECTED)

    # re-run: nothing re-sent but the unmapped pairs (the vendor cannot see mappings)
    world.admin.clear_requests()
    again = world.run()
    assert again.success, failure_text(again)
    unmapped = [e for e in world.entries(OCT, result.run_id) if e["outcome"] == ledger.UNMAPPED]
    assert len(world.count_calls()) == len(unmapped)
    assert {r["status"] for r in world.count_calls()} <= {404}
    assert ledger.newest_delivered_month(world.state, "p-001") == OCT
