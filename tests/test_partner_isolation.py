"""Partner isolation as a hypothesis property (issue 8).

Over random partners (2-5), companies per partner (0-6, ids and names drawn from a small shared
pool so the same company id / name shows up under several partners), services, billable counts
(0 included) and connection states (connected / disconnected / connected with a key Gradient
rejects), the real load code (service sync, each partner's account sync and count push, as the
load assets run them; ``tests/push_harness.py`` does the same) pushes to the real emulator over
HTTP with a fresh SQLite state DB. Then:

* every count the emulator holds under a partner's organization is that partner's own stored
  count for the (company, service), and a fully delivered partner's org holds all of them;
* every request the emulator logged carries the token of the partner the pipeline addressed it
  to: a count call sent under partner P's token carries one of P's own (company, service, value);
  no request ever carries a disconnected partner's token;
* disconnected partners get no count call and no count in their org;
* a partner whose key Gradient rejects ends in error (ledger status and report), with no count
  in its org, and every other connected partner is still fully delivered;
* the ledger's delivered entries are exactly what the emulator holds, partner by partner.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import date, datetime, timezone

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.gradient import ledger
from pipeline.gradient.client import GradientClient, Secret, partner_token
from pipeline.gradient.load import (
    ERROR,
    PartnerTarget,
    push_partner_month,
    sync_partner_accounts,
    sync_vendor_services,
)
from pipeline.resources import StateDatabase
from pipeline.source.partners import PartnerConnection, ServiceDefinition
from tests.push_harness import SKUS, org, partner_key

VENDOR_KEY = "vk-isolation-4f7a21"
MONTH = date(2026, 10, 1)
SERVICES = [ServiceDefinition(sku, n, n, c, s) for sku, (n, c, s) in SKUS.items()]
CONNECTED, DISCONNECTED, REJECTED = "connected", "disconnected", "rejected"
COMPANY_IDS = [f"c-{i}" for i in range(8)]
COMPANY_NAMES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"]
PARTNER_POOL = [f"p-{i:03d}" for i in range(1, 9)]
COUNT_PATH_END = "/count"


def stale_key(partner_id: str) -> str:
    """The key the pipeline holds for a 'rejected' partner: not the one Gradient knows."""
    return f"stale-{partner_key(partner_id)}"


def token_sha(partner_api_key: str) -> str:
    return hashlib.sha256(partner_token(VENDOR_KEY, partner_api_key).encode()).hexdigest()


@st.composite
def partner_worlds(draw):
    ids = draw(st.lists(st.sampled_from(PARTNER_POOL), min_size=2, max_size=5, unique=True))
    states = [draw(st.sampled_from([CONNECTED, DISCONNECTED, REJECTED])) for _ in ids]
    # at least one partner Gradient accepts: the vendor-level service sync needs one
    states[draw(st.integers(0, len(ids) - 1))] = CONNECTED
    partners = []
    for pid, state in zip(ids, states):
        companies = draw(st.lists(st.sampled_from(COMPANY_IDS), min_size=0, max_size=6, unique=True))
        rows = []
        for company_id in companies:
            name = draw(st.sampled_from(COMPANY_NAMES))
            skus = draw(st.lists(st.sampled_from(sorted(SKUS)), min_size=1, max_size=len(SKUS), unique=True))
            for sku in skus:
                rows.append((company_id, f"{name} {company_id}", sku, draw(st.integers(0, 60))))
        partners.append((pid, state, rows))
    order = draw(st.permutations(range(len(partners))))  # target order decides who syncs services
    return [partners[i] for i in order]


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY, rate_limit_per_second=5000) as server:
        yield server


@pytest.fixture
def admin(emulator):
    with EmulatorAdmin(emulator.base_url) as client:
        yield client
        client.reset()


async def run_load(base_url: str, state, world, counts: pd.DataFrame) -> dict[str, object]:
    connected_at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    connections = {
        pid: PartnerConnection(pid, "disconnected" if st_ == DISCONNECTED else "connected", connected_at,
                               None, connected_at)
        for pid, st_, _ in world
    }
    keys = {pid: stale_key(pid) if st_ == REJECTED else partner_key(pid) for pid, st_, _ in world}
    # what the load assets do: only connected partners are targets
    targets = [PartnerTarget(c, Secret(keys[pid])) for pid, c in connections.items() if c.is_connected]
    client = GradientClient(
        base_url, VENDOR_KEY, max_requests_per_second=1000, timeout_seconds=5.0, max_attempts=3,
        backoff_initial_seconds=0.01, backoff_max_seconds=0.05, max_concurrency=8,
    )
    async with client:
        await sync_vendor_services(client, targets, SERVICES, state, "run-1", lock_wait_seconds=30)
        service_ids = ledger.service_ids(state)
        conflicts = ledger.service_conflicts(state)

        async def one(target: PartnerTarget):
            mine = counts[counts.partner_id == target.partner_id]
            companies = list(dict.fromkeys(zip(mine.company_id, mine.company_name)))
            accounts = await sync_partner_accounts(client, target, companies, state, "run-1", lock_wait_seconds=30)
            pushed = await push_partner_month(
                client, target, MONTH, mine, service_ids, state, "run-1",
                accounts_error=accounts.error, service_conflicts=conflicts, lock_wait_seconds=30,
            )
            return accounts, pushed

        reports = await asyncio.gather(*(one(t) for t in targets))
    return {pushed.partner_id: (accounts, pushed) for accounts, pushed in reports}


def check_isolation(admin: EmulatorAdmin, state, world, counts: pd.DataFrame, reports) -> None:
    states = {pid: s for pid, s, _ in world}
    stored = {
        pid: {(c, sku): n for c, _, sku, n in rows}
        for pid, _, rows in world
    }
    service_ids = ledger.service_ids(state)
    sku_of = {sid: sku for sku, sid in service_ids.items()}

    # what the emulator holds, per partner (organization)
    held: dict[str, dict[tuple[str, str], int]] = {pid: {} for pid in states}
    org_to_pid = {org(pid): pid for pid in states}
    for row in admin.counts():
        pid = org_to_pid[row["organization_id"]]
        held[pid][(row["account_id"], sku_of[row["service_id"]])] = row["unit_count"]

    # the ledger's delivered entries (latest per pair)
    delivered: dict[str, dict[tuple[str, str], int]] = {pid: {} for pid in states}
    for e in sorted(ledger.entries_for(state, MONTH), key=lambda e: e["entry_id"]):
        if e["outcome"] == ledger.DELIVERED:
            delivered[e["partner_id"]][(e["account_id"], e["sku"])] = e["value"]

    for pid, st_ in states.items():
        mine = stored[pid]
        for pair, value in held[pid].items():
            assert pair in mine and mine[pair] == value, (
                f"{pid}'s org holds {pair}={value}, its own stored count is {mine.get(pair)!r}"
            )
        assert delivered[pid] == held[pid], f"{pid}: ledger delivered {delivered[pid]} != emulator {held[pid]}"
        if st_ == CONNECTED:
            assert held[pid] == mine, f"{pid} not fully delivered: {held[pid]} != {mine}"
            accounts, pushed = reports[pid]
            assert accounts.error is None and pushed.error is None, f"{pid}: {accounts.error or pushed.error}"
        else:
            assert held[pid] == {}, f"{st_} partner {pid} has counts: {held[pid]}"
        if st_ == REJECTED:
            accounts, pushed = reports[pid]
            assert ERROR in (accounts.status, pushed.status) and pushed.error, f"{pid}: {reports[pid]}"
            partner_state = ledger.partner_state(state, pid)
            assert partner_state is not None and partner_state.status == ERROR
        if st_ == DISCONNECTED:
            assert pid not in reports

    # the request log: whose token each request carried
    pipeline_tokens = {
        token_sha(stale_key(pid) if s == REJECTED else partner_key(pid)): pid
        for pid, s in states.items() if s != DISCONNECTED
    }
    disconnected_tokens = {token_sha(partner_key(pid)) for pid, s in states.items() if s == DISCONNECTED}
    for request in admin.requests():
        sha = request["token_sha256"]
        assert sha not in disconnected_tokens, f"request with a disconnected partner's token: {request}"
        assert sha in pipeline_tokens, f"request with an unknown token: {request}"
        pid = pipeline_tokens[sha]
        if request["organization_id"] is not None:
            assert request["organization_id"] == org(pid), f"{pid}'s token resolved to another org: {request}"
        if request["method"] == "POST" and request["path"].endswith(COUNT_PATH_END):
            sid = request["path"].split("/")[-2]
            body = request["body"]
            pair = (body["accountId"], sku_of.get(sid))
            assert states[pid] != DISCONNECTED
            assert pair in stored[pid] and stored[pid][pair] == body["unitCount"], (
                f"count call under {pid}'s token carries {pair}={body['unitCount']}, "
                f"{pid}'s own count is {stored[pid].get(pair)!r}"
            )
            if states[pid] == REJECTED:
                assert request["status"] == 401


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=partner_worlds())
def test_partner_isolation(admin, emulator, tmp_path, world):
    admin.reset()
    for pid, _, _ in world:
        admin.register_partner(partner_key(pid), name=pid, organization_id=org(pid), auto_map_all=True)
    admin.clear_requests()
    rows = [
        {"partner_id": pid, "company_id": c, "company_name": name, "sku": sku, "billable_users": n}
        for pid, _, partner_rows in world
        for c, name, sku, n in partner_rows
    ]
    counts = pd.DataFrame(rows, columns=["partner_id", "company_id", "company_name", "sku", "billable_users"])
    state = StateDatabase(url=f"sqlite:///{tmp_path / f'state-{uuid.uuid4().hex[:8]}.db'}").engine()
    try:
        reports = asyncio.run(run_load(emulator.base_url, state, world, counts))
        check_isolation(admin, state, world, counts, reports)
    finally:
        state.dispose()
