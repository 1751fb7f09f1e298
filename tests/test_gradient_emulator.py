"""The Gradient emulator over real HTTP (uvicorn in a thread, httpx as the client)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gradient_emulator import API_PREFIX, EmulatorAdmin, EmulatorServer, make_token

VENDOR_KEY = "vendor-key-0123456789"
PARTNER_KEY = "partner-key-alpha-secret"
OTHER_PARTNER_KEY = "partner-key-beta-secret"

SAT = {
    "name": "Security Awareness Training",
    "description": "Phishing simulation and training",
    "category": "security",
    "subcategory": "privacy and security awareness training",
}
EMAIL = {
    "name": "Email Protection",
    "description": "Inbound filtering",
    "category": "security",
    "subcategory": "email security",
}

ApiFactory = Callable[..., httpx.Client]


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(VENDOR_KEY) as running:
        yield running


@pytest.fixture
def admin(server: EmulatorServer) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(server.base_url) as client:
        client.reset()
        server.state.clients_page_size = 50
        yield client


@pytest.fixture
def api(server: EmulatorServer) -> Iterator[ApiFactory]:
    clients: list[httpx.Client] = []

    def make(
        partner_key: str = PARTNER_KEY, *, vendor_key: str = VENDOR_KEY, timeout: float = 5.0
    ) -> httpx.Client:
        client = httpx.Client(
            base_url=server.base_url + API_PREFIX,
            headers={"GRADIENT-TOKEN": make_token(vendor_key, partner_key)},
            timeout=timeout,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def org(admin: EmulatorAdmin) -> str:
    return str(admin.register_partner(PARTNER_KEY, "Alpha MSP")["organization_id"])


def _create_service(client: httpx.Client, spec: dict[str, str]) -> str:
    response = client.post("/service", json=spec)
    assert response.status_code == 200, response.text
    return str(response.json()["skus"][-1]["id"])


def _count(
    client: httpx.Client, service_id: str, account_id: object, unit_count: object, **params: str
) -> httpx.Response:
    return client.post(
        f"/service/{service_id}/count", params=params, json={"accountId": account_id, "unitCount": unit_count}
    )


@pytest.fixture
def mapped(admin: EmulatorAdmin, org: str, api: ApiFactory) -> dict[str, str]:
    """One partner with accounts c1 (mapped, "Acme Corp") and c2 (unmapped), service SAT mapped,
    service EMAIL unmapped — mapped through exact-name auto-mapping."""
    client = api()
    admin.set_psa_companies(org, ["Acme Corp", "Globex"])
    admin.set_psa_products(org, [SAT["name"]])
    sat, email = _create_service(client, SAT), _create_service(client, EMAIL)
    created = client.post(
        "/organization/accounts", json=[{"id": "c1", "name": "Acme Corp"}, {"id": "c2", "name": "acme corp"}]
    )
    assert created.status_code == 201
    return {"org": org, "sat": sat, "email": email}


# -- authentication ------------------------------------------------------------------------------


def test_bad_missing_wrong_and_revoked_tokens_get_401(
    admin: EmulatorAdmin, org: str, server: EmulatorServer
) -> None:
    url = server.base_url + API_PREFIX + "/organization"
    bad_tokens = {
        "missing": {},
        "not base64": {"GRADIENT-TOKEN": "%%%not-base64%%%"},
        "no colon": {"GRADIENT-TOKEN": base64.b64encode(b"justonekey").decode()},
        "basic prefix": {"GRADIENT-TOKEN": "Basic " + make_token(VENDOR_KEY, PARTNER_KEY)},
        "wrong vendor": {"GRADIENT-TOKEN": make_token("other-vendor", PARTNER_KEY)},
        "unknown partner": {"GRADIENT-TOKEN": make_token(VENDOR_KEY, "nobody")},
    }
    for label, headers in bad_tokens.items():
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401, label
        assert response.json()["statusCode"] == 401 and response.json()["message"], label

    good = httpx.get(url, headers={"gradient-token": make_token(VENDOR_KEY, PARTNER_KEY)})
    assert good.status_code == 200

    admin.revoke_partner(org)
    assert httpx.get(url, headers={"GRADIENT-TOKEN": make_token(VENDOR_KEY, PARTNER_KEY)}).status_code == 401
    # vendor-level endpoints need a valid partner token too
    assert httpx.get(server.base_url + API_PREFIX, headers=bad_tokens["unknown partner"]).status_code == 401


def test_key_regeneration_keeps_accounts_and_kills_old_key(
    admin: EmulatorAdmin, org: str, api: ApiFactory
) -> None:
    assert api().post("/organization/accounts", json=[{"id": "c1", "name": "Acme"}]).status_code == 201
    admin.register_partner("regenerated-key", organization_id=org)
    assert api().get("/organization/accounts").status_code == 401
    accounts = api("regenerated-key").get("/organization/accounts")
    assert accounts.status_code == 200 and [a["id"] for a in accounts.json()] == ["c1"]


# -- vendor and services ---------------------------------------------------------------------------


def test_vendor_get_and_patch(org: str, api: ApiFactory) -> None:
    client = api()
    vendor = client.get("")
    assert vendor.status_code == 200 and vendor.json()["status"] == 200
    assert vendor.json()["data"]["skus"] == []
    patched = client.patch("", json={"name": "Phish Co", "vendorSupportPageUrl": "https://example.test/help"})
    assert patched.status_code == 200
    assert patched.json()["data"]["name"] == "Phish Co"
    assert client.get("/organization").json()["vendorName"] == "Phish Co"
    assert client.patch("", json={"unrelated": 1}).status_code == 400


def test_services_create_get_and_validate(org: str, api: ApiFactory) -> None:
    client = api()
    created = client.post("/service", json=SAT)
    assert created.status_code == 200
    vendor = created.json()
    assert "data" not in vendor and len(vendor["skus"]) == 1
    sku = vendor["skus"][0]
    assert sku["_id"] == sku["id"] and sku["name"] == SAT["name"] and sku["subcategory"] == SAT["subcategory"]

    again = client.post("/service", json=SAT)
    assert [s["name"] for s in again.json()["skus"]] == [SAT["name"], SAT["name"]]

    fetched = client.get(f"/service/{sku['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["data"]["id"] == sku["id"] and fetched.json()["status"] == 200
    assert client.get("/service/000000000000000000000000").status_code == 404

    for bad in (
        {**SAT, "category": "Security"},
        {**SAT, "subcategory": "Phishing Simulation"},
        {key: value for key, value in SAT.items() if key != "description"},
        {**SAT, "name": 42},
    ):
        response = client.post("/service", json=bad)
        assert response.status_code == 400 and response.json()["statusCode"] == 400
    assert len(client.get("").json()["data"]["skus"]) == 2


# -- organization, status, clients -----------------------------------------------------------------


def test_organization_and_status(org: str, api: ApiFactory) -> None:
    client = api()
    integration = client.get("/organization").json()
    assert set(integration) == {
        "organizationId",
        "name",
        "vendorId",
        "vendorName",
        "integrationId",
        "status",
        "lastSyncedAt",
    }
    assert integration["organizationId"] == org and integration["name"] == "Alpha MSP"
    assert integration["lastSyncedAt"] is None

    pending = client.patch("/organization/status/pending")
    assert pending.status_code == 200 and pending.json()["data"]["status"] == "pending"
    assert client.patch("/organization/status/Active").status_code == 400
    assert client.patch("/organization/status/connected").status_code == 400

    active = client.patch("/organization/status/active").json()["data"]
    assert active["status"] == "active" and active["lastSyncedAt"]


def test_inactive_deletes_accounts_counts_and_mappings(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    client = api()
    assert _count(client, mapped["sat"], "c1", 3).status_code == 201
    assert client.patch("/organization/status/inactive").status_code == 200
    assert client.get("/organization/accounts").json() == []
    partner = admin.state()["partners"][mapped["org"]]
    assert partner["counts"] == [] and partner["account_mappings"] == []
    assert admin.counts() == []
    assert _count(client, mapped["sat"], "c1", 3).status_code == 404


def test_clients_search_and_keyset_pagination(
    admin: EmulatorAdmin, org: str, api: ApiFactory, server: EmulatorServer
) -> None:
    server.state.clients_page_size = 2
    admin.set_psa_companies(org, ["Acme", "Beta", "Gamma", "Acme West", "Delta"])
    client = api()
    names: list[str] = []
    previous_id = ""
    for _ in range(10):
        page = client.get("/organization/clients", params={"previousId": previous_id}).json()
        names += [c["name"] for c in page["clients"]]
        if not page["meta"]["hasMore"]:
            break
        previous_id = page["clients"][-1]["id"]
    assert names == ["Acme", "Beta", "Gamma", "Acme West", "Delta"]
    found = client.get("/organization/clients", params={"search": "acme"}).json()
    assert [c["name"] for c in found["clients"]] == ["Acme", "Acme West"]
    assert found["meta"]["total"] == 2


# -- accounts ------------------------------------------------------------------------------------


def test_bulk_create_accounts_201_409_400(org: str, api: ApiFactory) -> None:
    client = api()
    created = client.post(
        "/organization/accounts",
        json=[{"id": "c1", "name": "Acme", "description": "first"}, {"id": "c2", "name": "Globex"}],
    )
    assert created.status_code == 201
    assert created.json() == [
        {"id": "c1", "name": "Acme", "description": "first"},
        {"id": "c2", "name": "Globex", "description": None},
    ]

    clash = client.post(
        "/organization/accounts", json=[{"id": "c3", "name": "New"}, {"id": "c1", "name": "Again"}]
    )
    assert clash.status_code == 409
    twice = client.post("/organization/accounts", json=[{"id": "c4", "name": "A"}, {"id": "c4", "name": "B"}])
    assert twice.status_code == 409
    assert [a["id"] for a in client.get("/organization/accounts").json()] == ["c1", "c2"]

    for bad in ({"id": "c5", "name": "x"}, [{"id": 5, "name": "x"}], [{"id": "c5"}], [], ["c5"]):
        assert client.post("/organization/accounts", json=bad).status_code == 400
    assert (
        client.post(
            "/organization/accounts", content=b"{nope", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )


def test_rename_account_and_auto_map_on_rename(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    client = api()
    assert _count(client, mapped["sat"], "c2", 1).status_code == 404
    renamed = client.patch("/organization/accounts/c2", json={"name": "Globex"})
    assert renamed.status_code == 200
    assert renamed.json() == {"id": "c2", "name": "Globex", "description": None}
    assert _count(client, mapped["sat"], "c2", 1).status_code == 201

    assert client.patch("/organization/accounts/unknown", json={"name": "x"}).status_code == 404
    assert client.patch("/organization/accounts/c2", json={"name": 7}).status_code == 400
    assert client.patch("/organization/accounts/c2", json={"id": "c1"}).status_code == 409

    moved = client.patch("/organization/accounts/c2", json={"id": "c2-new", "description": "moved"})
    assert moved.json() == {"id": "c2-new", "name": "Globex", "description": "moved"}
    counts = {c["account_id"]: c["unit_count"] for c in admin.counts()}
    assert counts == {"c2-new": 1}


def test_auto_map_by_exact_name_and_manual_mapping(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    partner = admin.state()["partners"][mapped["org"]]
    assert partner["account_mappings"] == ["c1"]
    assert partner["service_mappings"] == [mapped["sat"]]

    client = api()
    admin.map_account(mapped["org"], "c2")
    admin.map_service(mapped["org"], mapped["email"])
    assert _count(client, mapped["email"], "c2", 2).status_code == 201
    admin.unmap_service(mapped["org"], mapped["email"])
    assert _count(client, mapped["email"], "c2", 2).status_code == 404
    with pytest.raises(httpx.HTTPStatusError):
        admin.map_account(mapped["org"], "does-not-exist")


def test_auto_map_all_partner(admin: EmulatorAdmin, api: ApiFactory) -> None:
    admin.register_partner(PARTNER_KEY, "Demo MSP", auto_map_all=True)
    client = api()
    service_id = _create_service(client, EMAIL)
    client.post("/organization/accounts", json=[{"id": "any", "name": "Whatever Inc"}])
    assert _count(client, service_id, "any", 9).status_code == 201


# -- counts --------------------------------------------------------------------------------------


def test_count_overwrites_keeps_history_and_counts_builds(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    client = api()
    first = _count(client, mapped["sat"], "c1", 10, no_build="true")
    assert first.status_code == 201
    assert first.json()["status"] == 201 and first.json()["message"]
    assert _count(client, mapped["sat"], "c1", 12.5, no_build="true").status_code == 201
    assert _count(client, mapped["sat"], "c1", 0).status_code == 201

    [row] = admin.counts()
    assert (
        row["unit_count"] == 0 and row["service_name"] == SAT["name"] and row["partner_name"] == "Alpha MSP"
    )
    assert [(h["unit_count"], h["no_build"]) for h in row["history"]] == [
        (10, True),
        (12.5, True),
        (0, False),
    ]
    partner = admin.state()["partners"][mapped["org"]]
    assert partner["billing_builds"] == 1
    assert partner["counts"] == [
        {"account_id": "c1", "service_id": mapped["sat"], "unit_count": 0, "updated_at": row["updated_at"]}
    ]


def test_count_404_for_unmapped_account_and_service(mapped: dict[str, str], api: ApiFactory) -> None:
    client = api()
    unmapped_account = _count(client, mapped["sat"], "c2", 1)
    assert unmapped_account.status_code == 404
    assert unmapped_account.json() == {
        "statusCode": 404,
        "message": "No account map found with id: c2",
        "error": "Not Found",
    }
    assert (
        _count(client, mapped["sat"], "never-created", 1).json()["message"]
        == "No account map found with id: never-created"
    )
    unmapped_service = _count(client, mapped["email"], "c1", 1)
    assert unmapped_service.status_code == 404 and mapped["email"] in unmapped_service.json()["message"]
    assert _count(client, "000000000000000000000000", "c1", 1).status_code == 404


def test_count_400_for_bad_bodies(mapped: dict[str, str], api: ApiFactory) -> None:
    client = api()
    for account_id, unit_count in ((1, 5), ("c1", "5"), ("c1", True), ("c1", -1), ("c1", None), (None, 5)):
        response = _count(client, mapped["sat"], account_id, unit_count)
        assert response.status_code == 400, (account_id, unit_count)
        assert response.json()["statusCode"] == 400
    url = f"/service/{mapped['sat']}/count"
    assert (
        client.post(url, content=b"not json", headers={"content-type": "application/json"}).status_code == 400
    )
    assert client.post(url, json=[{"accountId": "c1", "unitCount": 1}]).status_code == 400


def test_partners_are_isolated(admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory) -> None:
    admin.register_partner(OTHER_PARTNER_KEY, "Beta MSP", auto_map_all=True)
    other = api(OTHER_PARTNER_KEY)
    assert other.get("/organization/accounts").json() == []
    assert other.get("/organization").json()["name"] == "Beta MSP"
    assert _count(other, mapped["sat"], "c1", 1).status_code == 404


# -- alerts, unknown routes ------------------------------------------------------------------------


def test_alerts(mapped: dict[str, str], api: ApiFactory) -> None:
    client = api()
    alert = {"title": "Phish clicked", "description": "User clicked", "alertId": "a-1", "priority": 2}
    queued = client.post("/alerting/c1", json=alert)
    assert queued.status_code == 201
    body = queued.json()
    assert set(body) == {"messageId", "alertId", "correlationID"} and body["alertId"] == "a-1"
    assert client.get(f"/alerting/debug/{body['messageId']}").json() == {
        "status": "success",
        "errors": [],
        "messageId": body["messageId"],
    }
    assert client.post("/alerting/c1", json={**alert, "priority": 9}).status_code == 400
    assert client.post("/alerting/c1", json={"title": "x"}).status_code == 400
    assert client.get("/alerting/debug/unknown").status_code == 404


def test_unknown_route_is_json_404(org: str, api: ApiFactory, server: EmulatorServer) -> None:
    client = api()
    for response in (
        client.get("/nope"),
        client.delete("/organization"),
        httpx.get(server.base_url + "/elsewhere"),
    ):
        assert response.status_code == 404 and response.json()["statusCode"] == 404


# -- rate limit and faults ---------------------------------------------------------------------------


def test_rate_limit_429_over_the_vendor_wide_window(admin: EmulatorAdmin, org: str, api: ApiFactory) -> None:
    admin.register_partner(OTHER_PARTNER_KEY, "Beta MSP")
    admin.set_faults(rate_limit_per_second=5)
    clients = [api(), api(OTHER_PARTNER_KEY)]
    responses = [clients[i % 2].get("/organization") for i in range(8)]
    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["statusCode"] == 429 and "retry-after" not in limited.headers
    time.sleep(1.05)
    assert clients[0].get("/organization").status_code == 200
    assert admin.faults()["rate_limit_per_second"] == 5
    assert admin.clear_faults()["rate_limit_per_second"] == 100


def test_error_rate_applies_to_listed_paths_only(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    admin.set_faults(error_rate=1.0, error_status=502, paths=["/service"], seed=1)
    client = api()
    failed = _count(client, mapped["sat"], "c1", 4)
    assert failed.status_code == 502 and failed.json()["statusCode"] == 502
    assert client.get("/organization").status_code == 200
    assert admin.counts() == []
    assert admin.requests()[-2]["fault"] == "error"


def test_seeded_random_faults_are_reproducible(admin: EmulatorAdmin, org: str, api: ApiFactory) -> None:
    client = api()

    def run() -> list[int]:
        admin.set_faults(error_rate=0.5, seed=42)
        return [client.get("/organization").status_code for _ in range(12)]

    first = run()
    assert set(first) == {200, 503}
    assert run() == first


def test_fail_next_is_one_shot_and_not_applied(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    admin.set_faults(
        fail_next=[
            {"path_prefix": "/service", "status": 500},
            {"path_prefix": "/organization", "status": 429},
        ]
    )
    client = api()
    assert client.get("/organization").status_code == 429
    assert client.get("/organization").status_code == 200
    assert _count(client, mapped["sat"], "c1", 4).status_code == 500
    assert admin.counts() == []
    assert _count(client, mapped["sat"], "c1", 4).status_code == 201
    assert admin.faults()["fail_next"] == []


def test_drop_gives_a_transport_error(admin: EmulatorAdmin, org: str, api: ApiFactory) -> None:
    admin.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.TransportError):
        api().get("/organization")
    admin.set_faults(fail_next=[{"path_prefix": "/organization", "action": "drop"}])
    client = api()
    with pytest.raises(httpx.TransportError):
        client.get("/organization")
    assert client.get("/organization").status_code == 200
    assert [r["fault"] for r in admin.requests()] == ["drop", "drop", None]


def test_latency_and_timeout(admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory) -> None:
    client = api()
    admin.set_faults(latency_ms=300)
    started = time.perf_counter()
    assert client.get("/organization").status_code == 200
    assert time.perf_counter() - started >= 0.29

    admin.set_faults(timeout_rate=1.0, timeout_seconds=10)
    with pytest.raises(httpx.TimeoutException):
        api(timeout=0.3).post(f"/service/{mapped['sat']}/count", json={"accountId": "c1", "unitCount": 1})
    assert admin.counts() == []
    admin.set_faults(timeout_rate=1.0, timeout_seconds=0.2)
    assert client.get("/organization").status_code == 504


def test_clearing_faults_releases_held_requests(admin: EmulatorAdmin, org: str, api: ApiFactory) -> None:
    admin.set_faults(timeout_rate=1.0, timeout_seconds=30)
    client = api(timeout=10)
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(client.get, "/organization")
        time.sleep(0.3)
        assert not held.done()
        started = time.perf_counter()
        admin.clear_faults()
        assert held.result(timeout=5).status_code == 504
    assert time.perf_counter() - started < 2


def test_invalid_fault_settings_are_rejected(admin: EmulatorAdmin) -> None:
    for bad in (
        {"error_rate": 2},
        {"typo_rate": 0.1},
        {"error_rate": 0.6, "drop_rate": 0.6},
        {"fail_next": [{"action": "explode"}]},
    ):
        with pytest.raises(httpx.HTTPStatusError) as caught:
            admin.set_faults(bad)
        assert caught.value.response.status_code == 400


# -- admin views never leak keys -----------------------------------------------------------------------


def test_request_log_and_admin_views_never_contain_keys(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory, server: EmulatorServer
) -> None:
    admin.clear_requests()
    client = api()
    _count(client, mapped["sat"], "c1", 3, no_build="true")
    api(vendor_key="wrong-vendor").get("/organization")
    httpx.get(server.base_url + API_PREFIX + "/organization")

    log = admin.requests()
    assert [(r["method"], r["status"]) for r in log] == [("POST", 201), ("GET", 401), ("GET", 401)]
    token = make_token(VENDOR_KEY, PARTNER_KEY)
    assert log[0]["organization_id"] == mapped["org"]
    assert log[0]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert log[0]["query"] == {"no_build": "true"} and log[0]["body"] == {"accountId": "c1", "unitCount": 3}
    assert log[1]["organization_id"] is None and log[2]["token_sha256"] is None

    everything = json.dumps([log, admin.state(), admin.counts(), admin.faults()])
    for secret in (token, PARTNER_KEY, VENDOR_KEY, make_token("wrong-vendor", PARTNER_KEY)):
        assert secret not in everything
    admin.clear_requests()
    assert admin.requests() == []


def test_reset_empties_everything_but_keeps_vendor_key(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    admin.reset()
    snapshot = admin.state()
    assert snapshot["partners"] == {} and snapshot["vendor"]["skus"] == []
    admin.register_partner(PARTNER_KEY, "Alpha MSP")
    assert api().get("/organization").status_code == 200


def test_server_start_stop_for_long_lived_use() -> None:
    server = EmulatorServer(VENDOR_KEY, rate_limit_per_second=7).start()
    try:
        assert httpx.get(server.base_url + "/_admin/health").json() == {"status": "ok"}
        assert EmulatorAdmin(server.base_url).faults()["rate_limit_per_second"] == 7
    finally:
        server.stop()
    assert not server.running
    with pytest.raises(RuntimeError):
        _ = server.base_url


# -- what Gradient can do behind the vendor's back ------------------------------------------------


def test_admin_deletes_one_account_with_its_mapping_and_counts(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    client = api()
    assert _count(client, mapped["sat"], "c1", 3).status_code == 201
    removed = admin.delete_account(mapped["org"], "c1")
    assert removed == {
        "organization_id": mapped["org"],
        "account": {"id": "c1", "name": "Acme Corp", "description": None},
        "counts_deleted": 1,
    }
    assert [a["id"] for a in client.get("/organization/accounts").json()] == ["c2"]
    assert admin.counts() == [] and "c1" not in admin.state()["partners"][mapped["org"]]["account_mappings"]
    assert _count(client, mapped["sat"], "c1", 3).status_code == 404
    with pytest.raises(httpx.HTTPStatusError) as caught:
        admin.delete_account(mapped["org"], "c1")
    assert caught.value.response.status_code == 404


def test_admin_deletes_an_account_with_a_hostile_id(admin: EmulatorAdmin, org: str, api: ApiFactory) -> None:
    client = api()
    hostile = "../x/=cmd?\r\n<!channel>"
    assert client.post("/organization/accounts", json=[{"id": hostile, "name": "n"}]).status_code == 201
    assert admin.delete_account(org, hostile)["account"]["id"] == hostile
    assert client.get("/organization/accounts").json() == []


def test_admin_sets_the_status_and_inactive_drops_accounts_and_counts(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    client = api()
    assert _count(client, mapped["sat"], "c1", 3).status_code == 201
    assert admin.set_integration_status(mapped["org"], "error")["status"] == "error"
    assert client.get("/organization").json()["status"] == "error"
    assert len(admin.counts()) == 1
    view = admin.set_integration_status(mapped["org"], "inactive")
    assert (view["organizationId"], view["status"]) == (mapped["org"], "inactive")
    assert client.get("/organization/accounts").json() == [] and admin.counts() == []
    with pytest.raises(httpx.HTTPStatusError) as caught:
        admin.set_integration_status(mapped["org"], "connected")
    assert caught.value.response.status_code == 400


def test_one_partner_can_hold_keys_of_two_organizations(admin: EmulatorAdmin, api: ApiFactory) -> None:
    """A partner pasting a key of another Gradient organization: each key answers for its own
    organization, integration and status."""
    first = admin.register_partner(PARTNER_KEY, "Alpha MSP", status="active")
    second = admin.register_partner(OTHER_PARTNER_KEY, "Alpha MSP", organization_id="org-alpha-2")
    views = [api(key).get("/organization").json() for key in (PARTNER_KEY, OTHER_PARTNER_KEY)]
    assert [(v["organizationId"], v["integrationId"], v["status"]) for v in views] == [
        (first["organization_id"], first["integration_id"], "active"),
        ("org-alpha-2", second["integration_id"], "inactive"),
    ]
    assert first["integration_id"] != second["integration_id"]


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "body"),
    [
        ("maintenance_page", 200, "text/html; charset=utf-8", "Gradient is undergoing scheduled maintenance"),
        ("empty_answer", 201, None, ""),
    ],
)
def test_count_calls_can_answer_a_proxy_page_or_an_empty_201_storing_nothing(
    admin: EmulatorAdmin,
    mapped: dict[str, str],
    api: ApiFactory,
    kind: str,
    status: int,
    content_type: str | None,
    body: str,
) -> None:
    client = api()
    admin.answer_count_calls(kind)
    answer = _count(client, mapped["sat"], "c1", 3)
    assert (answer.status_code, answer.headers.get("content-type")) == (status, content_type)
    assert body in answer.text and (body or answer.content == b"")
    assert admin.counts() == []
    # Only count calls: creating a service and reading the organization answer as usual.
    assert client.post("/service", json=EMAIL).status_code == 200
    assert client.get("/organization").json()["organizationId"] == mapped["org"]
    assert admin.requests()[-3]["fault"] == kind
    admin.clear_faults()
    assert _count(client, mapped["sat"], "c1", 3).status_code == 201


def test_count_calls_can_trickle_their_answer(admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory) -> None:
    client = api()
    admin.answer_count_calls("trickle", trickle_interval_seconds=0.01)
    received: list[bytes] = []
    with client.stream("POST", f"/service/{mapped['sat']}/count", json={"accountId": "c1", "unitCount": 4}) as answer:
        received.extend(answer.iter_raw())
    assert answer.status_code == 201
    assert json.loads(b"".join(received)) == {"status": 201, "message": "Unit count updated successfully"}
    assert len(received) > 10  # byte by byte, not in one piece
    assert [row["unit_count"] for row in admin.counts()] == [4]
    assert admin.requests()[-1]["fault"] == "trickle"


def test_clearing_faults_releases_a_trickling_answer(
    admin: EmulatorAdmin, mapped: dict[str, str], api: ApiFactory
) -> None:
    client = api(timeout=30.0)
    admin.answer_count_calls("trickle", trickle_interval_seconds=20)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_count, client, mapped["sat"], "c1", 5)
        while not any(r["path"].endswith("/count") for r in admin.requests()):
            time.sleep(0.01)
        admin.clear_faults()
        assert pending.result(timeout=25).json()["status"] == 201


def test_bulk_account_creation_is_linear_and_still_rejects_duplicates(org: str, api: ApiFactory) -> None:
    client = api(timeout=60.0)
    accounts = [{"id": f"c{i}", "name": f"Company {i}"} for i in range(20_000)]
    assert client.post("/organization/accounts", json=[*accounts, accounts[7], accounts[3]]).status_code == 409
    conflict = client.post("/organization/accounts", json=[*accounts, accounts[7]])
    assert conflict.json()["message"] == "Duplicate account ids in request: c7"
    assert client.post("/organization/accounts", json=accounts).status_code == 201
    assert len(client.get("/organization/accounts").json()) == 20_000


def test_new_fault_settings_are_validated(admin: EmulatorAdmin) -> None:
    for bad in (
        {"methods": "POST"},
        {"trickle_rate": 0.6, "maintenance_rate": 0.5},
        {"trickle_interval_seconds": 0},
        {"fail_next": [{"action": "melt"}]},
    ):
        with pytest.raises(httpx.HTTPStatusError) as caught:
            admin.set_faults(bad)
        assert caught.value.response.status_code == 400
    with pytest.raises(ValueError, match="maintenance_page"):
        admin.answer_count_calls("slow")
    admin.set_faults(fail_next=[{"path_prefix": "/service/", "action": "empty_answer"}])
    assert admin.faults()["fail_next"][0]["action"] == "empty_answer"
