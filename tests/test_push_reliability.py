"""Pushes that cannot double-bill: concurrent runs, lost answers, odd ids, NULL companies.

Real processes (``tests/push_harness.py``) push against the real HTTP emulator, with the state
DB on SQLite and on PostgreSQL. Rules: one push per partner at a time whoever starts it, the
superseded guard decided inside the lock, never two services of one name, every id a safe
path segment (or refused with a reason).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import date, datetime, timezone
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.gradient import ledger, locks
from pipeline.gradient.client import GradientClient, Secret, partner_token
from pipeline.gradient.load import (
    NULL_COMPANY_FIX,
    PartnerTarget,
    push_partner_month,
    sync_partner_accounts,
    sync_vendor_services,
)
from pipeline.resources import StateDatabase
from pipeline.source.partners import PartnerConnection, ServiceDefinition, load_companies
from tests.push_harness import SKUS, Job, month_counts, org, partner_key, worker_command

pytestmark = pytest.mark.slow

VENDOR_KEY = "vk-reliability-8c1d2e"
OCT, SEP = date(2026, 10, 1), date(2026, 9, 1)
PARTNERS = ["p-001", "p-002", "p-003"]
COMPANIES = 8
PAIRS = COMPANIES * len(SKUS)
SERVICES = [ServiceDefinition(sku, n, n, c, s) for sku, (n, c, s) in SKUS.items()]
API = "/api/vendor-api"


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY, rate_limit_per_second=2000) as server:
        yield server


@pytest.fixture
def admin(emulator):
    with EmulatorAdmin(emulator.base_url) as client:
        client.reset()
        for pid in PARTNERS:
            client.register_partner(partner_key(pid), name=pid, organization_id=org(pid), auto_map_all=True)
        yield client
        client.reset()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def start(tmp_path: Path, name: str, job: Job) -> subprocess.Popen:
    path = job.write(tmp_path / f"{name}.json")
    return subprocess.Popen(worker_command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict[str, dict]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {line["partner"]: line for line in lines if "partner" in line}


def job(emulator, state_url: str, month: date, run_id: str, companies: int = COMPANIES, **kw) -> Job:
    return Job(
        state_url=state_url, base_url=emulator.base_url, vendor_key=VENDOR_KEY, partners=PARTNERS,
        month=month.isoformat(), companies=companies, run_id=run_id, **kw,
    )


def emulator_values(admin: EmulatorAdmin, state: sa.Engine) -> dict[tuple[str, str, str], int]:
    sku_of = {sid: sku for sku, sid in ledger.service_ids(state).items()}
    return {
        (r["organization_id"].removeprefix("org-"), r["account_id"], sku_of[r["service_id"]]): r["unit_count"]
        for r in admin.counts()
    }


def expected(month: date) -> dict[tuple[str, str, str], int]:
    frame = month_counts(PARTNERS, month, COMPANIES)
    return {(r.partner_id, r.company_id, r.sku): r.billable_users for r in frame.itertuples(index=False)}


def services_named(admin: EmulatorAdmin) -> dict[str, int]:
    names: dict[str, int] = {}
    for sku in admin.state()["vendor"]["skus"]:
        names[sku["name"]] = names.get(sku["name"], 0) + 1
    return names


def slow_gradient(admin: EmulatorAdmin, latency_ms: int = 40) -> None:
    """Every request takes a while, so two pushes started together overlap."""
    admin.set_faults(latency_ms=latency_ms)


# =========================================================================== one push per partner


def test_two_processes_pushing_the_same_month_never_interleave(tmp_path, emulator, admin, state_url) -> None:
    slow_gradient(admin)
    go = tmp_path / "go"
    a = start(tmp_path, "a", job(emulator, state_url, OCT, "run-a", go_file=str(go), max_concurrency=2))
    b = start(tmp_path, "b", job(emulator, state_url, OCT, "run-b", go_file=str(go), max_concurrency=2))
    time.sleep(3)  # both processes are up and polling for the go file
    go.touch()
    runs = {"run-a": finish(a), "run-b": finish(b)}
    admin.clear_faults()
    state = StateDatabase(url=state_url).engine()

    assert services_named(admin) == {name: 1 for name, _, _ in SKUS.values()}
    assert emulator_values(admin, state) == expected(OCT)
    count_calls = [r for r in admin.requests() if r["method"] == "POST" and r["path"].endswith("/count")]
    assert len(count_calls) == len(PARTNERS) * PAIRS  # each pair sent once, by one run
    for pid in PARTNERS:
        reports = sorted((runs[r][pid] for r in runs), key=lambda rep: -rep["outcomes"].get("delivered", 0))
        pushed, second = reports
        assert pushed["outcomes"] == {"delivered": PAIRS}, pushed
        assert second["outcomes"] == {} and second["skipped"] == PAIRS, second
        assert "waited" in second["summary"], second


@pytest.mark.parametrize("first", [OCT, SEP], ids=["october-first", "september-first"])
def test_an_older_month_never_overwrites_a_newer_one(tmp_path, emulator, admin, state_url, first) -> None:
    slow_gradient(admin, latency_ms=100)
    second = SEP if first == OCT else OCT
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    p1 = start(tmp_path, "first", job(emulator, state_url, first, f"run-{first:%m}", go_file=str(go1), max_concurrency=2))
    p2 = start(tmp_path, "second", job(emulator, state_url, second, f"run-{second:%m}", go_file=str(go2), max_concurrency=2))
    time.sleep(3)  # both processes are up and polling for their go file
    go1.touch()
    state = StateDatabase(url=state_url).engine()
    while not any(e["outcome"] == "delivered" for e in ledger.entries_for(state, first)):
        assert p1.poll() is None, "the first push ended without delivering"
        time.sleep(0.02)
    go2.touch()  # the second starts while the first is still pushing
    runs = {first: finish(p1), second: finish(p2)}
    admin.clear_faults()

    assert emulator_values(admin, state) == expected(OCT)
    sep = ledger.entries_for(state, SEP)
    for pid in PARTNERS:
        if first == OCT:
            assert runs[SEP][pid]["outcomes"] == {"superseded": PAIRS}, runs[SEP][pid]
            assert {e["outcome"] for e in sep if e["partner_id"] == pid} == {"superseded"}
        else:
            assert runs[SEP][pid]["outcomes"] == {"delivered": PAIRS}
            assert runs[OCT][pid]["outcomes"] == {"delivered": PAIRS}
            assert "waited" in runs[OCT][pid]["summary"], runs[OCT][pid]


def test_a_push_that_cannot_get_the_lock_stops_with_a_clear_message(emulator, admin, sqlite_url) -> None:
    state = StateDatabase(url=sqlite_url).engine()

    async def scenario():
        async with locks.holding(state, locks.partner_lock_name("p-001"), "other-run"):
            async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
                return await push_partner_month(
                    client, target("p-001"), OCT, month_counts(["p-001"], OCT, 2), {}, state, "run-x",
                    lock_wait_seconds=0.5,
                )

    report = asyncio.run(scenario())
    assert "other-run" in report.error and "re-run" in report.error
    assert ledger.entries_for(state, OCT) == []
    assert admin.requests() == []


def test_a_dead_holders_lease_is_taken_over_once_expired(sqlite_url) -> None:
    state = StateDatabase(url=sqlite_url).engine()
    from pipeline.store.schema import push_leases

    past = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with state.begin() as conn:
        conn.execute(push_leases.insert(), [{"lock_name": "partner:p-9", "holder": "dead:1", "acquired_at": past, "expires_at": past}])

    async def take():
        async with locks.holding(state, "partner:p-9", "alive", wait_seconds=1) as held:
            with state.connect() as conn:
                return held, conn.execute(sa.select(push_leases.c.holder)).scalar_one()

    held, holder = asyncio.run(take())
    assert holder.startswith("alive:") and not held.lost


# =========================================================================== services


def target(pid: str) -> PartnerTarget:
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return PartnerTarget(PartnerConnection(pid, "connected", at, None, at), Secret(partner_key(pid)))


def test_a_lost_answer_to_post_service_and_to_a_count_call_duplicates_nothing(emulator, admin, sqlite_url) -> None:
    state = StateDatabase(url=sqlite_url).engine()
    counts = month_counts(["p-001"], OCT, COMPANIES)
    admin.set_faults(fail_next=[{"path_prefix": "/service", "method": "POST", "action": "lost_response"}])

    async def scenario():
        async with GradientClient(emulator.base_url, VENDOR_KEY, backoff_initial_seconds=0.01, backoff_max_seconds=0.05) as client:
            synced = await sync_vendor_services(client, [target("p-001")], SERVICES, state, "run-1")
            admin.set_faults(fail_next=[{"path_prefix": "/service/", "method": "POST", "action": "lost_response"}])
            companies = list(zip(counts.company_id, counts.company_name))
            await sync_partner_accounts(client, target("p-001"), companies, state, "run-1")
            report = await push_partner_month(client, target("p-001"), OCT, counts, ledger.service_ids(state), state, "run-1")
            return synced, report

    synced, report = asyncio.run(scenario())
    faults = [r for r in admin.requests() if r["fault"] == "lost_response"]
    assert [r["path"] for r in faults] == [f"{API}/service", faults[1]["path"]] and faults[1]["path"].endswith("/count")
    assert services_named(admin) == {name: 1 for name, _, _ in SKUS.values()}
    # the first creation's answer was lost: found again by name, not created a second time
    assert synced.created == len(SKUS) - 1 and not synced.duplicates
    assert report.outcomes == {"delivered": PAIRS}
    got = {(a, s): v for (p, a, s), v in emulator_values(admin, state).items()}
    assert got == {(r.company_id, r.sku): r.billable_users for r in counts.itertuples()}


def test_duplicate_services_are_reported_and_never_pushed_to(emulator, admin, sqlite_url) -> None:
    state = StateDatabase(url=sqlite_url).engine()
    name, category, sub = SKUS["SAT"]
    token = partner_token(VENDOR_KEY, partner_key("p-001"))
    body = {"name": name, "description": name, "category": category, "subcategory": sub}
    for _ in range(2):
        httpx.post(f"{emulator.base_url}{API}/service", json=body, headers={"GRADIENT-TOKEN": token}).raise_for_status()
    counts = month_counts(["p-001"], OCT, 3)

    async def scenario():
        async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
            synced = await sync_vendor_services(client, [target("p-001")], SERVICES, state, "run-1")
            await sync_partner_accounts(client, target("p-001"), list(zip(counts.company_id, counts.company_name)), state, "run-1")
            report = await push_partner_month(
                client, target("p-001"), OCT, counts, ledger.service_ids(state), state, "run-1",
                service_conflicts=ledger.service_conflicts(state),
            )
            return synced, report

    synced, report = asyncio.run(scenario())
    ids = synced.duplicates[name]
    assert len(ids) == 2 and "SAT" in synced.conflicts and "SAT" not in synced.ids
    assert services_named(admin)[name] == 2  # nothing created on top
    sat = [e for e in ledger.entries_for(state, OCT) if e["sku"] == "SAT"]
    assert sat and {e["outcome"] for e in sat} == {"failed"}
    assert all(ids[0] in e["detail"] and ids[1] in e["detail"] for e in sat)
    assert report.outcomes == {"failed": 3, "delivered": 3}
    assert {r["service_id"] for r in admin.counts()} == {ledger.service_ids(state)["PHISH"]}


# =========================================================================== ids on the wire


@pytest.mark.parametrize("account_id", [".", "..", "a/b", "%2e", "../organization", "a?b#c", "sp ace"])
def test_every_account_id_reaches_its_own_route(emulator, admin, account_id) -> None:
    async def scenario():
        async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
            session = client.partner("p-001", partner_key("p-001"))
            await session.create_accounts([{"id": account_id, "name": "Before"}])
            await session.update_account(account_id, name="After")
            await session.create_alert(account_id, "t", "d", alert_id="a-1")
            return await session.get_accounts()

    accounts = asyncio.run(scenario())
    assert accounts == [{"id": account_id, "name": "After", "description": None}]
    log = admin.requests()
    patch = [r for r in log if r["method"] == "PATCH"]
    assert [r["path"] for r in patch] == [f"{API}/organization/accounts/{account_id}"]
    assert all(r["status"] < 400 for r in log), [(r["method"], r["path"], r["status"]) for r in log]
    assert not any(r["path"] == f"{API}/organization" and r["method"] != "GET" for r in log)


def test_ids_gradient_cannot_take_are_refused_with_a_reason(emulator, admin, sqlite_url) -> None:
    state = StateDatabase(url=sqlite_url).engine()
    companies = [(".", "Dot"), ("..", "Dots"), ("ctl\x01x", "Control"), ("ok-1", "Fine"), ("a/b", "Slash"),
                 ("ok-2", "Bad\nname"), ("x" * 200, "Long")]
    rows = [{"partner_id": "p-001", "company_id": c, "company_name": n, "sku": "SAT", "billable_users": 3}
            for c, n in companies]
    counts = pd.DataFrame(rows)

    async def scenario():
        async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
            await sync_vendor_services(client, [target("p-001")], SERVICES, state, "run-1")
            accounts = await sync_partner_accounts(client, target("p-001"), companies, state, "run-1")
            pushed = await push_partner_month(client, target("p-001"), OCT, counts, ledger.service_ids(state), state, "run-1")
            return accounts, pushed

    accounts, pushed = asyncio.run(scenario())
    refused = {".", "..", "ctl\x01x", "ok-2", "x" * 200}
    assert set(accounts.refused) == refused and set(pushed.refused) == refused
    assert "dot segment" in accounts.refused[".."] and "U+0001" in accounts.refused["ctl\x01x"]
    assert "U+000A" in accounts.refused["ok-2"] and "at most 128" in accounts.refused["x" * 200]
    assert {a["id"] for a in admin.state()["partners"][org("p-001")]["accounts"]} == {"ok-1", "a/b"}
    assert {r["account_id"] for r in admin.counts()} == {"ok-1", "a/b"}
    failed = {e["account_id"]: e["detail"] for e in ledger.entries_for(state, OCT) if e["outcome"] == "failed"}
    assert set(failed) == refused and all(d.startswith("not sent: ") for d in failed.values())
    assert pushed.outcomes == {"failed": 5, "delivered": 2}


def test_a_null_company_from_companies_sql_is_refused_not_sent_as_none(tmp_path, emulator, admin, sqlite_url) -> None:
    product = sa.create_engine(f"sqlite:///{tmp_path / 'product.db'}")
    with product.begin() as conn:
        conn.execute(sa.text("CREATE TABLE c (partner_id TEXT, company_id TEXT, company_name TEXT)"))
        conn.execute(sa.text("INSERT INTO c VALUES ('p-001','c-1','One'), ('p-001',NULL,'Ghost'), "
                             "('p-001','c-3',NULL), ('p-002','c-9','Nine')"))
    sql = tmp_path / "companies.sql"
    sql.write_text("SELECT partner_id, company_id, company_name FROM c")
    with product.connect() as conn:
        frame = load_companies(conn, str(sql))
    assert "None" not in set(frame.company_id.dropna()) | set(frame.company_name.dropna())
    state = StateDatabase(url=sqlite_url).engine()

    async def scenario():
        async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
            return [
                await sync_partner_accounts(
                    client, target(pid),
                    list(zip(frame[frame.partner_id == pid].company_id, frame[frame.partner_id == pid].company_name)),
                    state, "run-1",
                )
                for pid in ("p-001", "p-002")
            ]

    one, two = asyncio.run(scenario())
    assert set(one.refused) == {"NULL", "c-3"}
    assert all("COMPANIES_SQL" in reason and NULL_COMPANY_FIX in reason for reason in one.refused.values())
    assert one.error is None and one.accounts_created == 1 and two.accounts_created == 1 and not two.refused
    snapshot = admin.state()["partners"]
    names = {a["name"] for p in snapshot.values() for a in p["accounts"]}
    ids = {a["id"] for p in snapshot.values() for a in p["accounts"]}
    assert names == {"One", "Nine"} and ids == {"c-1", "c-9"}


# =========================================================================== kill -9


def _acknowledged_count_calls(admin: EmulatorAdmin) -> int:
    return sum(1 for r in admin.requests() if r["path"].endswith("/count") and r["status"] == 201)


@pytest.mark.parametrize(
    "seed,db", [(1, "sqlite"), (2, "sqlite"), (3, "sqlite"), (4, "postgresql")], ids=lambda v: str(v)
)
def test_sigkill_mid_push_is_exact_after_one_rerun_within_the_crash_window(
    tmp_path, emulator, admin, request, seed, db
) -> None:
    import random

    state_url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "postgres_url")
    companies, concurrency, rate = 60, 8, 100
    total = len(PARTNERS) * companies * len(SKUS)
    kill_after = random.Random(seed).randint(20, total - 60)
    admin.set_faults(latency_ms=5)
    kw = dict(companies=companies, max_concurrency=concurrency, max_requests_per_second=rate)
    killed = start(tmp_path, "killed", job(emulator, state_url, OCT, "run-killed", **kw))
    while _acknowledged_count_calls(admin) < kill_after:
        assert killed.poll() is None, killed.communicate()[1][-2000:]
        time.sleep(0.01)
    killed.kill()
    killed.wait()
    time.sleep(0.5)  # requests the dead process left in flight settle
    admin.clear_faults()
    held_before = {(r["organization_id"], r["service_id"], r["account_id"]): r["unit_count"] for r in admin.counts()}
    seen = len(admin.requests())

    rerun = finish(start(tmp_path, "rerun", job(emulator, state_url, OCT, "run-rerun", **kw)))
    state = StateDatabase(url=state_url).engine()
    want = {k: v for k, v in expected_for(companies).items()}
    assert emulator_values(admin, state) == want
    resent = [
        r for r in admin.requests()[seen:]
        if r["path"].endswith("/count")
        and held_before.get((r["organization_id"], r["path"].split("/")[-2], r["body"]["accountId"])) == r["body"]["unitCount"]
    ]
    # the documented crash window (README): unrecorded answers (at most 100 per partner and one
    # second of the client's rate) plus the calls in flight
    window = min(100 * len(PARTNERS), rate * 1) + concurrency
    print(f"seed {seed} ({db}): killed after {kill_after} of {total} acknowledged calls; "
          f"re-run sent {sum(r['outcomes'].get('delivered', 0) for r in rerun.values())}, "
          f"of which {len(resent)} Gradient already held (window {window})")
    assert len(resent) <= window
    delivered = {(e["partner_id"], e["account_id"], e["sku"]): e["value"]
                 for e in ledger.entries_for(state, OCT) if e["outcome"] == "delivered"}
    assert delivered == want


def expected_for(companies: int) -> dict[tuple[str, str, str], int]:
    frame = month_counts(PARTNERS, OCT, companies)
    return {(r.partner_id, r.company_id, r.sku): r.billable_users for r in frame.itertuples(index=False)}


# =========================================================================== services race


def test_two_service_syncs_at_once_create_each_service_once(emulator, admin, state_url) -> None:
    slow_gradient(admin, latency_ms=100)
    state = StateDatabase(url=state_url).engine()

    async def one(run_id: str):
        async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
            return await sync_vendor_services(client, [target("p-001")], SERVICES, state, run_id)

    async def both():
        return await asyncio.gather(one("run-a"), one("run-b"))

    a, b = asyncio.run(both())
    admin.clear_faults()
    assert services_named(admin) == {name: 1 for name, _, _ in SKUS.values()}
    assert sorted([a.created, b.created]) == [0, len(SKUS)] and a.ids == b.ids


# =========================================================================== through Dagster


@pytest.fixture
def world(tmp_path, emulator):
    from tests.test_gradient_load_e2e import VENDOR_KEY as E2E_KEY, World

    with EmulatorServer(E2E_KEY) as server, EmulatorAdmin(server.base_url) as client:
        w = World(f"sqlite:///{tmp_path / 'product.db'}", f"sqlite:///{tmp_path / 'state.db'}", server, client)
        w.register()
        yield w


def test_duplicate_services_fail_the_gradient_services_check_with_their_ids(world) -> None:
    from tests.test_gradient_load_e2e import CONNECTED, VENDOR_KEY as E2E_KEY

    from pipeline.demo.data import demo_partner_key

    first = world.run("2026-09-01")
    assert first.success
    sku_name = next(s["name"] for s in world.admin.state()["vendor"]["skus"])
    original = next(s for s in world.admin.state()["vendor"]["skus"] if s["name"] == sku_name)
    token = partner_token(E2E_KEY, demo_partner_key(CONNECTED[0]))
    body = {k: original[k] for k in ("name", "description", "category", "subcategory")}
    extra = httpx.post(f"{world.emulator.base_url}{API}/service", json=body, headers={"GRADIENT-TOKEN": token})
    extra.raise_for_status()

    result = world.run()
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}["one_service_per_name"]
    ids = sorted(s["id"] for s in world.admin.state()["vendor"]["skus"] if s["name"] == sku_name)
    assert not check.passed and check.severity.value == "ERROR"
    assert all(i in check.description for i in ids)
    assert not result.success  # that service's counts are recorded failed, the rest delivered
    failed = {e["detail"] for e in world.entries(OCT) if e["outcome"] == "failed" and e["run_id"] == result.run_id}
    assert failed and all(ids[0] in d and ids[1] in d for d in failed)
    assert not any(r["path"].endswith(f"/service/{ids[1]}/count") for r in world.admin.requests())


def test_a_null_company_in_companies_sql_fails_the_run_by_name_and_nothing_is_sent_as_none(tmp_path, world) -> None:
    from pipeline.resources import PartnerSources
    from tests.test_gradient_load_e2e import CONNECTED, failure_text

    sql = tmp_path / "companies.sql"
    reference = (Path(__file__).resolve().parents[1] / "pipeline/source/sql/common/companies.sql").read_text()
    body = "\n".join(line for line in reference.splitlines() if not line.startswith("--") and "ORDER BY" not in line)
    sql.write_text(f"{body}\nUNION ALL SELECT '{CONNECTED[0]}', NULL, 'Ghost'\nUNION ALL SELECT '{CONNECTED[1]}', 'c-null-name', NULL")
    world.partner_sources = PartnerSources(encryption_keys=world.fernet_key, companies_sql=str(sql))
    result = world.run()
    text = failure_text(result)
    assert not result.success and "COMPANIES_SQL" in text and "NULL" in text
    accounts = [a for p in world.admin.state()["partners"].values() for a in p["accounts"]]
    assert accounts and not any(a["name"] in ("None", "Ghost") or a["id"] in ("None", "c-null-name") for a in accounts)
    delivered = {e["partner_id"] for e in world.entries(OCT) if e["outcome"] == "delivered"}
    assert delivered == set(CONNECTED)


def test_many_partners_at_once_on_postgresql_do_not_exhaust_connections(tmp_path, emulator, admin, postgres_url) -> None:
    partners = [f"m-{n:03d}" for n in range(40)]
    for pid in partners:
        admin.register_partner(partner_key(pid), name=pid, organization_id=org(pid), auto_map_all=True)
    many = Job(
        state_url=postgres_url, base_url=emulator.base_url, vendor_key=VENDOR_KEY, partners=partners,
        month=OCT.isoformat(), companies=2, run_id="run-many", max_requests_per_second=500,
    )
    reports = finish(start(tmp_path, "many", many))
    assert {pid: r["outcomes"] for pid, r in reports.items()} == {pid: {"delivered": 4} for pid in partners}


def test_a_holder_whose_advisory_lock_connection_dies_knows_it_lost_the_lock(postgres_url, monkeypatch) -> None:
    monkeypatch.setattr(locks, "WATCH_SECONDS", 0.1)
    state = StateDatabase(url=postgres_url).engine()
    key = locks.advisory_key(locks.partner_lock_name("p-7"))
    classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF

    async def scenario():
        async with locks.holding(state, locks.partner_lock_name("p-7"), "run-1") as held:
            with state.connect() as conn:
                pid = conn.execute(
                    sa.text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :c AND objid = :o"),
                    {"c": classid, "o": objid},
                ).scalar_one()
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            for _ in range(200):
                if held.lost:
                    break
                await asyncio.sleep(0.05)
            return held.lost

    assert asyncio.run(scenario())


def test_a_service_name_gradient_cannot_take_is_refused_and_the_others_go_on(emulator, admin, sqlite_url) -> None:
    state = StateDatabase(url=sqlite_url).engine()
    bad = ServiceDefinition("BAD", "Bad\x00name", "d", "security", "email security")
    counts = month_counts(["p-001"], OCT, 2)
    counts.loc[counts.sku == "PHISH", "sku"] = "BAD"

    async def scenario():
        async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
            synced = await sync_vendor_services(client, [target("p-001")], [SERVICES[0], bad], state, "run-1")
            await sync_partner_accounts(client, target("p-001"), list(zip(counts.company_id, counts.company_name)), state, "run-1")
            pushed = await push_partner_month(client, target("p-001"), OCT, counts, ledger.service_ids(state), state, "run-1")
            return synced, pushed

    synced, pushed = asyncio.run(scenario())
    assert "U+0000" in synced.refused["BAD"] and "SERVICES_SQL" in synced.refused["BAD"]
    assert set(services_named(admin)) == {SERVICES[0].name}
    assert pushed.outcomes == {"delivered": 2, "failed": 2}
