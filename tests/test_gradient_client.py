"""Unit tests of the Gradient client and resource, with httpx.MockTransport (no network)."""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import pickle
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import dagster as dg
import httpx
import pytest

from pipeline.gradient.client import (
    CountResult,
    GradientClient,
    PartnerSession,
    Secret,
    partner_token,
)
from pipeline.gradient.errors import (
    GradientAuthError,
    GradientError,
    GradientForbiddenError,
    GradientNotFoundError,
    GradientRateLimitedError,
    GradientRequestError,
    GradientServerError,
    GradientUnavailableError,
    GradientUnexpectedAnswerError,
)
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.resources import GradientResource

BASE_URL = "https://gradient.test"
VENDOR_KEY = "vendorKEY-7f3a9c1e-secret"
PARTNER_KEY = "partnerKEY-b2d4e6f8-secret"
TOKEN = partner_token(VENDOR_KEY, PARTNER_KEY)
SECRETS = (VENDOR_KEY, PARTNER_KEY, TOKEN)
COUNT_PATH = "/api/vendor-api/service/svc-1/count"

Reply = httpx.Response | BaseException


@dataclass
class Seen:
    method: str
    path: str
    params: dict[str, str]
    headers: httpx.Headers
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Script:
    """A MockTransport handler answering from a list (the last reply repeats)."""

    replies: list[Reply | Callable[[httpx.Request], Reply]]
    seen: list[Seen] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(
            Seen(
                request.method,
                request.url.raw_path.decode("ascii").split("?")[0],
                dict(request.url.params),
                request.headers,
                request.read(),
                time.monotonic(),
            )
        )
        reply = self.replies[min(len(self.seen), len(self.replies)) - 1]
        if callable(reply) and not isinstance(reply, BaseException):
            reply = reply(request)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if body is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def created() -> httpx.Response:
    return reply(201, {"status": 201, "message": "Unit count updated"})


def make_client(handler: Any, **overrides: Any) -> GradientClient:
    settings: dict[str, Any] = dict(
        max_attempts=4, backoff_initial_seconds=0.001, backoff_max_seconds=0.01
    )
    settings.update(overrides)
    return GradientClient(BASE_URL, VENDOR_KEY, transport=httpx.MockTransport(handler), **settings)


def run_session(
    handler: Any, action: Callable[[PartnerSession], Awaitable[Any]], **overrides: Any
) -> Any:
    """Run ``action`` on a partner session of a fresh client."""

    async def main() -> Any:
        async with make_client(handler, **overrides) as client:
            return await action(client.partner("acme", PARTNER_KEY))

    return asyncio.run(main())


def count(session: PartnerSession, no_build: bool = False) -> Awaitable[CountResult]:
    return session.set_unit_count("svc-1", "acct-1", 7, no_build=no_build)


# --- token and headers -------------------------------------------------------------------


def test_partner_token_is_padded_standard_base64_without_prefix() -> None:
    assert partner_token("v", "p") == "djpw"
    assert partner_token("ab", "c") == "YWI6Yw=="
    assert partner_token("é", "+/") == "w6k6Ky8="


def test_every_call_carries_the_partner_token_and_accept_json() -> None:
    script = Script([created()])
    run_session(script, count)
    headers = script.seen[0].headers
    assert headers["GRADIENT-TOKEN"] == TOKEN
    assert headers["Accept"] == "application/json"
    assert "authorization" not in headers


def test_two_partners_each_send_only_their_own_token() -> None:
    script = Script([created()])

    async def main() -> None:
        async with make_client(script) as client:
            first, second = client.partner("a", "key-a"), client.partner("b", "key-b")
            await asyncio.gather(count(first), count(second), count(first))

    asyncio.run(main())
    tokens = sorted(seen.headers["GRADIENT-TOKEN"] for seen in script.seen)
    expected = sorted(
        [partner_token(VENDOR_KEY, "key-a")] * 2 + [partner_token(VENDOR_KEY, "key-b")]
    )
    assert tokens == expected


# --- set unit count ------------------------------------------------------------------------


def test_no_build_query_parameter_only_when_true() -> None:
    script = Script([created()])
    run_session(script, lambda s: count(s, no_build=True))
    run_session(script, lambda s: count(s, no_build=False))
    assert script.seen[0].params == {"no_build": "true"}
    assert script.seen[1].params == {}
    assert script.seen[1].path == COUNT_PATH


def test_count_body_keeps_ints_as_ints_and_sends_zero() -> None:
    script = Script([created()])

    async def action(session: PartnerSession) -> None:
        await session.set_unit_count("svc-1", 42, 7, no_build=False)  # type: ignore[arg-type]
        await session.set_unit_count("svc-1", "a", 2.5, no_build=False)
        await session.set_unit_count("svc-1", "a", Decimal("12"), no_build=False)
        await session.set_unit_count("svc-1", "a", 0, no_build=False)

    run_session(script, action)
    assert script.seen[0].body == b'{"accountId":"42","unitCount":7}'
    assert [seen.json()["unitCount"] for seen in script.seen[1:]] == [2.5, 12, 0]
    assert isinstance(script.seen[2].json()["unitCount"], int)


def test_invalid_unit_counts_are_refused_before_sending() -> None:
    script = Script([created()])
    for bad in (-1, float("nan"), Decimal("Infinity"), True):
        with pytest.raises((ValueError, TypeError)):
            run_session(script, lambda s, v=bad: s.set_unit_count("svc", "a", v, no_build=False))
    assert script.seen == []


def test_count_201_is_delivered() -> None:
    result = run_session(Script([created()]), count)
    assert result == CountResult(201, "delivered", "Unit count updated")


def test_count_404_is_unmapped_and_not_retried() -> None:
    script = Script([reply(404, {"statusCode": 404, "message": "No account map found with id: x"})])
    result = run_session(script, count)
    assert result.outcome == "unmapped"
    assert result.status_code == 404
    assert result.message == "No account map found with id: x"
    assert len(script.seen) == 1


# --- errors that are not retried ------------------------------------------------------------


def test_401_raises_auth_error_and_is_not_retried() -> None:
    script = Script([reply(401, {"statusCode": 401, "message": "Unauthorized"})])
    with pytest.raises(GradientAuthError) as caught:
        run_session(script, count)
    assert len(script.seen) == 1
    error = caught.value
    assert error.status_code == 401
    assert (error.method, error.path, error.partner_id) == ("POST", COUNT_PATH, "acme")
    assert "ask the partner to paste a fresh key in the product" in str(error)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, GradientRequestError), (403, GradientForbiddenError), (409, GradientRequestError)],
)
def test_other_4xx_are_not_retried(status: int, error_type: type[GradientError]) -> None:
    script = Script([reply(status, {"statusCode": status, "message": "Bad thing: id is a number"})])
    with pytest.raises(error_type) as caught:
        run_session(script, count)
    assert len(script.seen) == 1
    assert caught.value.status_code == status
    assert "Bad thing: id is a number" in str(caught.value)


def test_404_outside_counts_raises_not_found() -> None:
    script = Script([reply(404, {"statusCode": 404, "message": "Service not found"})])
    with pytest.raises(GradientNotFoundError) as caught:
        run_session(script, lambda s: s.get_service("nope"))
    assert len(script.seen) == 1
    assert caught.value.path == "/api/vendor-api/service/nope"


def test_non_json_success_body_points_at_the_base_url() -> None:
    script = Script([httpx.Response(200, text="<html>login</html>")])
    with pytest.raises(GradientError, match="GRADIENT_BASE_URL"):
        run_session(script, lambda s: s.get_organization())


# --- retries -------------------------------------------------------------------------------


def test_429_then_201_is_retried_and_delivered() -> None:
    script = Script([reply(429), created()])

    async def action(session: PartnerSession) -> tuple[CountResult, dict[str, Any]]:
        result = await count(session)
        return result, session._client.stats

    result, stats = run_session(script, action)
    assert result.outcome == "delivered"
    assert len(script.seen) == 2
    assert stats == {
        "requests_sent": 2,
        "retries": 1,
        "transport_errors": 0,
        "by_status": {"201": 1, "429": 1},
    }


def test_503_twice_then_201() -> None:
    script = Script([reply(503), reply(503), created()])
    assert run_session(script, count).outcome == "delivered"
    assert len(script.seen) == 3


def test_transport_errors_are_retried() -> None:
    script = Script(
        [
            lambda request: httpx.ConnectError("connection refused", request=request),
            lambda request: httpx.ReadTimeout("timed out", request=request),
            lambda request: httpx.RemoteProtocolError("peer closed", request=request),
            created(),
        ]
    )
    assert run_session(script, count).outcome == "delivered"
    assert len(script.seen) == 4


@pytest.mark.parametrize(
    ("failure", "error_type", "status"),
    [
        (reply(429), GradientRateLimitedError, 429),
        (reply(500, {"statusCode": 500, "message": "boom"}), GradientServerError, 500),
        (lambda r: httpx.ConnectError("refused", request=r), GradientUnavailableError, None),
        (lambda r: httpx.ReadTimeout("timed out", request=r), GradientUnavailableError, None),
    ],
)
def test_exhausted_attempts_raise_the_right_error(
    failure: Any, error_type: type[GradientError], status: int | None
) -> None:
    script = Script([failure])
    with pytest.raises(error_type) as caught:
        run_session(script, count, max_attempts=3)
    assert len(script.seen) == 3
    error = caught.value
    assert error.status_code == status
    assert (error.method, error.path) == ("POST", COUNT_PATH)
    assert "3 attempt(s)" in str(error)
    assert error.__cause__ is None and error.__context__ is None


def test_unavailable_error_names_base_url_and_fix() -> None:
    script = Script([lambda r: httpx.ConnectError("refused", request=r)])
    with pytest.raises(GradientUnavailableError) as caught:
        run_session(script, count, max_attempts=2)
    message = str(caught.value)
    assert message.startswith(f"Gradient is unreachable at {BASE_URL}: ConnectError: refused")
    assert "check GRADIENT_BASE_URL / network; a re-run completes what was left" in message


def test_retry_after_is_the_minimum_wait() -> None:
    script = Script([reply(429, headers={"Retry-After": "1"}), created()])
    run_session(script, count, backoff_max_seconds=0.01)
    assert script.seen[1].at - script.seen[0].at >= 0.99


def test_retry_after_is_read_in_both_forms() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from pipeline.gradient.client import RETRY_AFTER_CAP_SECONDS, _retry_after_seconds

    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)

    def after(value: str) -> float | None:
        return _retry_after_seconds(httpx.Response(429, headers={"Retry-After": value}), now)

    assert after("7") == 7.0
    assert after(format_datetime(now + timedelta(seconds=42), usegmt=True)) == 42.0
    assert after(format_datetime(now - timedelta(seconds=5), usegmt=True)) == 0.0  # already past
    assert after(format_datetime(now + timedelta(hours=3), usegmt=True)) == RETRY_AFTER_CAP_SECONDS
    assert after("soon") is None and after("-3") is None


# --- accounts, clients, vendor, services, alerts -----------------------------------------


def test_create_accounts_is_one_bulk_request_and_none_when_empty() -> None:
    accounts = [{"id": f"c{i}", "name": f"Company {i}"} for i in range(250)]
    script = Script([reply(201, accounts)])

    async def action(session: PartnerSession) -> tuple[list[Any], list[Any]]:
        return await session.create_accounts([]), await session.create_accounts(accounts)

    empty, created_accounts = run_session(script, action)
    assert empty == []
    assert created_accounts == accounts
    assert len(script.seen) == 1
    assert script.seen[0].method == "POST"
    assert script.seen[0].path == "/api/vendor-api/organization/accounts"
    assert script.seen[0].json() == accounts


def test_get_and_update_accounts() -> None:
    script = Script(
        [reply(200, [{"id": "a/1", "name": "A"}]), reply(200, {"id": "a/1", "name": "B"})]
    )

    async def action(session: PartnerSession) -> tuple[Any, Any]:
        return await session.get_accounts(), await session.update_account("a/1", name="B")

    listed, updated = run_session(script, action)
    assert listed == [{"id": "a/1", "name": "A"}]
    assert updated == {"id": "a/1", "name": "B"}
    assert script.seen[1].method == "PATCH"
    assert script.seen[1].path == "/api/vendor-api/organization/accounts/a%2F1"
    assert script.seen[1].json() == {"name": "B"}


@pytest.mark.parametrize("id_field", ["id", "_id"])
def test_get_clients_follows_previous_id(id_field: str) -> None:
    pages = [[{id_field: f"c{n}"} for n in range(start, stop)] for start, stop in ((0, 3), (3, 6))]
    pages.append([{id_field: "c6"}])
    script = Script([reply(200, {"meta": {}, "clients": page}) for page in pages])
    clients = run_session(script, lambda s: s.get_clients(search="ac"))
    assert [c[id_field] for c in clients] == [f"c{n}" for n in range(7)]
    assert [seen.params for seen in script.seen] == [
        {"search": "ac"},
        {"search": "ac", "previousId": "c2"},
        {"search": "ac", "previousId": "c5"},
    ]


def test_get_clients_stops_on_empty_page() -> None:
    script = Script([reply(200, {"meta": {}, "clients": [{"id": 1}]}), reply(200, {"clients": []})])
    assert run_session(script, lambda s: s.get_clients()) == [{"id": 1}]
    assert [seen.params for seen in script.seen] == [{}, {"previousId": "1"}]


def test_get_clients_stops_when_the_cursor_is_ignored() -> None:
    script = Script([reply(200, {"meta": {}, "clients": [{"id": "a"}, {"id": "b"}]})])
    assert run_session(script, lambda s: s.get_clients()) == [{"id": "a"}, {"id": "b"}]
    assert len(script.seen) == 2


def test_vendor_calls_unwrap_data() -> None:
    vendor = {"name": "Phin", "skus": []}
    script = Script(
        [
            reply(200, {"status": 200, "data": vendor, "message": "ok"}),
            reply(200, {"status": 200, "data": {**vendor, "name": "New"}, "message": "ok"}),
        ]
    )

    async def action(session: PartnerSession) -> tuple[Any, Any]:
        return await session.get_vendor(), await session.update_vendor(
            name="New", vendor_support_page_url="https://x"
        )

    got, updated = run_session(script, action)
    assert got == vendor
    assert updated["name"] == "New"
    assert script.seen[1].json() == {"name": "New", "vendorSupportPageUrl": "https://x"}


def test_create_service_returns_the_newest_sku_with_that_name() -> None:
    skus = [
        {"_id": "1", "id": "1", "name": "SAT", "createdAt": "2024-01-01T00:00:00Z"},
        {"_id": "2", "id": "2", "name": "Other"},
        {"_id": "3", "id": "3", "name": "SAT", "createdAt": "2025-01-01T00:00:00Z"},
    ]
    script = Script([reply(201, {"name": "Phin", "skus": skus})])
    sku = run_session(
        script,
        lambda s: s.create_service(
            "SAT", "Training", "security", "privacy and security awareness training",
            support_article="https://kb",
        ),
    )
    assert sku["id"] == "3"
    assert script.seen[0].json() == {
        "name": "SAT",
        "description": "Training",
        "category": "security",
        "subcategory": "privacy and security awareness training",
        "supportArticle": "https://kb",
    }


def test_organization_and_integration_status() -> None:
    organization = {"organizationId": "o1", "name": "Acme MSP", "status": "pending"}
    script = Script(
        [reply(200, organization), reply(200, {"status": 200, "data": organization, "message": ""})]
    )

    async def action(session: PartnerSession) -> tuple[Any, Any]:
        return await session.get_organization(), await session.set_integration_status("pending")

    got, status = run_session(script, action)
    assert got == organization and status == organization
    assert (script.seen[1].method, script.seen[1].path, script.seen[1].body) == (
        "PATCH",
        "/api/vendor-api/organization/status/pending",
        b"",
    )
    with pytest.raises(ValueError, match="Unknown Gradient integration status"):
        run_session(script, lambda s: s.set_integration_status("Active"))
    assert len(script.seen) == 2


def test_alerts() -> None:
    queued = {"messageId": "m1", "alertId": "al1", "correlationID": "c1"}
    script = Script([reply(201, queued), reply(200, {"status": "success", "errors": []})])

    async def action(session: PartnerSession) -> tuple[Any, Any]:
        sent = await session.create_alert("acct-1", "Title", "Text", "al1", priority=2)
        return sent, await session.get_alert_status("m1")

    sent, status = run_session(script, action)
    assert sent == queued and status["status"] == "success"
    assert script.seen[0].path == "/api/vendor-api/alerting/acct-1"
    assert script.seen[0].json() == {
        "title": "Title", "description": "Text", "alertId": "al1", "priority": 2
    }
    assert script.seen[1].path == "/api/vendor-api/alerting/debug/m1"
    with pytest.raises(ValueError):
        run_session(script, lambda s: s.create_alert("a", "t", "d", "x", priority=5))


# --- rate limit and concurrency -----------------------------------------------------------


def max_requests_in_any_second(stamps: list[float]) -> int:
    """The most timestamps falling in any half-open window [t, t + 1s)."""
    ordered = sorted(stamps)
    return max(bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered))


def test_rate_limit_holds_across_concurrent_calls() -> None:
    script = Script([created()])

    async def action(session: PartnerSession) -> None:
        await asyncio.gather(*(count(session) for _ in range(60)))

    run_session(script, action, max_requests_per_second=20.0)
    assert len(script.seen) == 60
    assert max_requests_in_any_second([seen.at for seen in script.seen]) <= 20


def test_retries_also_go_through_the_rate_limit() -> None:
    script = Script([reply(503), created()])

    async def action(session: PartnerSession) -> None:
        await asyncio.gather(*(count(session) for _ in range(15)))

    run_session(script, action, max_requests_per_second=10.0)
    assert len(script.seen) == 16
    assert max_requests_in_any_second([seen.at for seen in script.seen]) <= 10


def test_over_real_http_each_request_is_paced_when_it_is_written() -> None:
    """With the client's own transport the pacer runs in httpcore's trace hook, right before
    the request is written: a real server's arrival times keep the limit, and the hook was
    used for every request (no fallback to pacing before sending)."""
    arrivals: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrivals.append(time.monotonic())
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                body = b'{"status":201,"message":"Unit count updated"}'
                writer.write(
                    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> bool:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = GradientClient(f"http://127.0.0.1:{port}", VENDOR_KEY, max_requests_per_second=20.0)
            async with client:
                session = client.partner("acme", PARTNER_KEY)
                results = await asyncio.gather(*(count(session) for _ in range(50)))
            assert all(r.outcome == "delivered" for r in results)
            return client._pace_on_send

    assert asyncio.run(main()) is True
    assert len(arrivals) == 50
    assert max_requests_in_any_second(arrivals) <= 20


def test_over_real_http_each_answer_is_reported_to_the_pacer() -> None:
    """The pacer corrects its window from answers: every request answered over real HTTP is
    reported once with its release time and when its headers came (>= the server's 20 ms);
    a 429 (answered before the server's work) is reported without a round-trip sample."""
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                answered += 1
                if answered == 1:
                    status, body = b"429 Too Many Requests", b'{"message":"Too many requests"}'
                else:
                    await asyncio.sleep(0.02)
                    status, body = b"201 Created", b'{"status":201,"message":"Unit count updated"}'
                writer.write(
                    b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (status, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    reports: list[tuple[float, float, bool]] = []

    async def main() -> float:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = GradientClient(
                f"http://127.0.0.1:{port}", VENDOR_KEY, max_requests_per_second=50.0, backoff_initial_seconds=0.0
            )
            pacer = client._limiter
            original = pacer.answered

            def spy(released: float, at: float, *, sample: bool = True) -> None:
                reports.append((released, at, sample))
                original(released, at, sample=sample)

            pacer.answered = spy  # type: ignore[method-assign]
            async with client:
                session = client.partner("acme", PARTNER_KEY)
                results = await asyncio.gather(*(count(session) for _ in range(10)))
            assert all(r.outcome == "delivered" for r in results)
            return pacer.min_round_trip

    min_round_trip = asyncio.run(main())
    assert answered == 11  # one 429, retried
    assert len(reports) == 11
    assert len({released for released, _, _ in reports}) == 11
    assert [sample for _, _, sample in reports].count(False) == 1
    sampled = [at - released for released, at, sample in reports if sample]
    assert min(sampled) >= 0.02
    assert min_round_trip == min(sampled)


def test_a_request_that_never_reached_the_server_keeps_pacing_at_write_time() -> None:
    """Connection refused fails before anything is written, so no send trace event fires: that
    is not a transport without the hook, and the client keeps pacing in the hook."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> bool:
        client = GradientClient(f"http://127.0.0.1:{port}", VENDOR_KEY, max_attempts=1)
        async with client:
            with pytest.raises(GradientUnavailableError):
                await count(client.partner("acme", PARTNER_KEY))
            return client._pace_on_send

    assert asyncio.run(main()) is True


def test_concurrency_is_bounded() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return created()

    async def action(session: PartnerSession) -> None:
        await asyncio.gather(*(count(session) for _ in range(20)))

    run_session(handler, action, max_concurrency=3, max_requests_per_second=1000.0)
    assert peak == 3


# --- secrets --------------------------------------------------------------------------------


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def error_texts(error: BaseException) -> list[str]:
    texts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return texts


async def serve_once(status_line: bytes, body: bytes) -> tuple[asyncio.Server, str]:
    """A local HTTP server answering every request with one canned response."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 " + status_line + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def test_secrets_never_appear_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "pipeline.gradient", "tenacity"):
        caplog.set_level(logging.DEBUG, logger=name)
    echo = {"statusCode": 400, "message": f"bad token {TOKEN} for {PARTNER_KEY}"}
    mocked = [
        Script([reply(401, {"statusCode": 401, "message": "Unauthorized"})]),
        Script([reply(400, echo)]),
        Script([reply(403, echo)]),
        Script([reply(500, echo)]),
        Script([reply(429)]),
        Script([lambda r: httpx.ConnectError(f"refused {r.headers}", request=r)]),
        Script([lambda r: httpx.ReadTimeout("timed out", request=r)]),
    ]
    texts: list[str] = []

    async def real_server_errors() -> None:
        server, url = await serve_once(b"401 Unauthorized", b'{"message":"Unauthorized"}')
        async with server, GradientClient(url, VENDOR_KEY, max_attempts=2) as client:
            session = client.partner("acme", PARTNER_KEY)
            texts.append(repr(session))
            texts.append(repr(client))
            with pytest.raises(GradientAuthError) as caught:
                await session.get_organization()
            texts.extend(error_texts(caught.value))
        closed = GradientClient(
            url, VENDOR_KEY, max_attempts=2, backoff_initial_seconds=0.001,
            backoff_max_seconds=0.01,
        )
        async with closed as client:
            with pytest.raises(GradientUnavailableError) as caught:
                await count(client.partner("acme", PARTNER_KEY))
            texts.extend(error_texts(caught.value))

    for script in mocked:
        with pytest.raises(GradientError) as caught:
            run_session(script, count, max_attempts=2)
        texts.extend(error_texts(caught.value))
        texts.append(repr(pickle.loads(pickle.dumps(caught.value))))
    asyncio.run(real_server_errors())

    assert any("connect_tcp" in record.getMessage() for record in caplog.records)
    assert any("HTTP Request" in record.getMessage() for record in caplog.records)
    assert any("retrying" in record.getMessage() for record in caplog.records)
    for text in [*texts, caplog.text, *(r.getMessage() for r in caplog.records)]:
        assert_no_secret(text)


def test_secret_and_session_reprs_are_masked() -> None:
    assert repr(Secret(PARTNER_KEY)) == str(Secret(PARTNER_KEY)) == "Secret('********')"

    async def main() -> None:
        async with GradientClient(BASE_URL, VENDOR_KEY) as client:
            session = client.partner("acme", PARTNER_KEY)
            assert repr(session) == "PartnerSession(partner_id='acme', token=Secret('********'))"
            assert_no_secret(repr(client))

    asyncio.run(main())


def test_errors_survive_pickling_with_their_attributes() -> None:
    error = GradientAuthError("msg", status_code=401, method="GET", path="/p", partner_id="acme")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is GradientAuthError
    assert (copy.status_code, copy.method, copy.path, copy.partner_id, str(copy)) == (
        401, "GET", "/p", "acme", "msg"
    )


# --- resource ------------------------------------------------------------------------------


def test_resource_reads_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIENT_VENDOR_API_KEY", VENDOR_KEY)
    resource = GradientResource(
        base_url=BASE_URL, vendor_api_key=dg.EnvVar("GRADIENT_VENDOR_API_KEY")
    )
    assert_no_secret(repr(resource))
    script = Script([created()])

    async def main(client: GradientClient) -> None:
        async with client:
            await count(client.partner("acme", PARTNER_KEY))

    with dg.build_resources({"gradient": resource}) as resources:
        assert_no_secret(repr(resources.gradient))
        client = resources.gradient.client(transport=httpx.MockTransport(script))
        asyncio.run(main(client))
    assert script.seen[0].headers["GRADIENT-TOKEN"] == TOKEN


# --- only Gradient's answer counts; deadline and size cap -----------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html><body>Down for maintenance</body></html>", headers={"content-type": "text/html"}),
        httpx.Response(201),
        httpx.Response(201, content=b'{"status":201,"mess', headers={"content-type": "application/json"}),
        reply(201, ["Unit count updated"]),
        reply(201, {"ok": True}),
        reply(200, {"status": 500, "message": "upstream failed"}),
        httpx.Response(200, content=b'{"status":201,"message":"ok"}', headers={"content-type": "text/html"}),
    ],
    ids=["html-page", "empty-201", "truncated-json", "array", "no-status-or-message", "body-says-500", "json-as-html"],
)
def test_a_2xx_that_is_not_gradients_answer_is_failed_after_the_retries(answer: httpx.Response) -> None:
    script = Script([answer])
    result = run_session(script, count, max_attempts=3)
    assert result.outcome == "failed"
    assert result.status_code == answer.status_code
    assert "not its documented JSON" in (result.message or "")
    assert f"received HTTP {answer.status_code}" in (result.message or "")
    assert len(script.seen) == 3


def test_a_failed_answer_says_what_was_received_truncated_and_masked() -> None:
    page = f"<html>{TOKEN} {PARTNER_KEY}\r\n<!channel>" + "x" * 5000 + "</html>"
    script = Script([httpx.Response(200, text=page, headers={"content-type": "text/html; charset=utf-8"})])
    result = run_session(script, count, max_attempts=1)
    message = result.message or ""
    assert result.outcome == "failed"
    assert "text/html; charset=utf-8" in message and f"{len(page)} bytes" in message
    assert "********" in message and "\\r\\n" in message and "\r" not in message
    assert "x" * 150 in message and "x" * 400 not in message
    assert_no_secret(message)


def test_a_maintenance_page_then_gradients_answer_is_delivered() -> None:
    page = httpx.Response(200, text="<html>maintenance</html>", headers={"content-type": "text/html"})
    script = Script([page, created()])
    result = run_session(script, count)
    assert (result.outcome, result.status_code, len(script.seen)) == ("delivered", 201, 2)


def test_json_calls_refuse_a_non_json_2xx_after_the_retries() -> None:
    page = httpx.Response(200, text="<html>login</html>", headers={"content-type": "text/html"})
    script = Script([page])
    with pytest.raises(GradientUnexpectedAnswerError) as caught:
        run_session(script, lambda s: s.get_accounts(), max_attempts=2)
    assert len(script.seen) == 2
    assert caught.value.status_code == 200
    assert "text/html" in str(caught.value) and "GRADIENT_BASE_URL" in str(caught.value)


def test_an_answer_over_the_size_cap_is_refused_without_reading_it_whole() -> None:
    """The body is streamed (no content-length): reading stops past the cap, so a huge answer
    never sits in memory; it is refused at once (reading it again would not make it smaller)."""
    produced: list[int] = []

    async def endless() -> Any:
        while True:
            produced.append(64 * 1024)
            yield b" " * (64 * 1024)

    script = Script([lambda r: httpx.Response(200, content=endless(), headers={"content-type": "application/json"})])
    with pytest.raises(GradientUnexpectedAnswerError, match="size cap"):
        run_session(script, lambda s: s.get_accounts(), max_answer_bytes=1024 * 1024)
    assert len(script.seen) == 1
    assert 16 <= len(produced) <= 18

    produced.clear()
    result = run_session(script, count, max_count_answer_bytes=256 * 1024)
    assert (result.outcome, len(produced)) == ("failed", 5)


def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    big = httpx.Response(201, content=b"{" + b" " * 4096 + b"}", headers={"content-type": "application/json"})
    result = run_session(Script([big]), count, max_count_answer_bytes=1024)
    assert result.outcome == "failed" and "size cap" in (result.message or "")


def test_answers_within_the_caps_are_read_whole() -> None:
    accounts = [{"id": f"c{i}", "name": "n" * 100} for i in range(5000)]
    script = Script([reply(200, accounts)])
    assert run_session(script, lambda s: s.get_accounts(), max_answer_bytes=1024 * 1024) == accounts


# --- through the real emulator ----------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(VENDOR_KEY) as server:
        yield server


@pytest.fixture
def emulated(emulator: EmulatorServer) -> Iterator[tuple[EmulatorAdmin, str]]:
    """A partner with one service and one account, both mapped; returns (admin, service id)."""
    with EmulatorAdmin(emulator.base_url) as admin:
        admin.reset()
        admin.register_partner(PARTNER_KEY, "Acme MSP", auto_map_all=True)

        async def setup() -> str:
            async with GradientClient(emulator.base_url, VENDOR_KEY) as client:
                session = client.partner("acme", PARTNER_KEY)
                service = await session.create_service("Backup", "Backup seats", "backup", "cloud backup")
                await session.create_accounts([{"id": "acct-1", "name": "Acme Corp"}])
                return str(service["id"])

        yield admin, asyncio.run(setup())


def emulated_count(base_url: str, service_id: str, **settings: Any) -> CountResult:
    async def main() -> CountResult:
        async with GradientClient(
            base_url, VENDOR_KEY, backoff_initial_seconds=0.001, backoff_max_seconds=0.01, **settings
        ) as client:
            return await client.partner("acme", PARTNER_KEY).set_unit_count(
                service_id, "acct-1", 7, no_build=True
            )

    return asyncio.run(main())


def test_emulator_a_good_answer_is_delivered_and_held(
    emulator: EmulatorServer, emulated: tuple[EmulatorAdmin, str]
) -> None:
    admin, service_id = emulated
    result = emulated_count(emulator.base_url, service_id)
    assert (result.outcome, result.status_code) == ("delivered", 201)
    assert [row["unit_count"] for row in admin.counts()] == [7]


@pytest.mark.parametrize(
    ("kind", "status", "received"),
    [("maintenance_page", 200, "text/html"), ("empty_answer", 201, "0 bytes")],
)
def test_emulator_a_proxy_page_or_an_empty_201_is_failed_and_nothing_is_held(
    emulator: EmulatorServer, emulated: tuple[EmulatorAdmin, str], kind: str, status: int, received: str
) -> None:
    admin, service_id = emulated
    admin.answer_count_calls(kind)
    result = emulated_count(emulator.base_url, service_id, max_attempts=3)
    assert (result.outcome, result.status_code) == ("failed", status)
    assert received in (result.message or "")
    assert_no_secret(result.message or "")
    assert admin.counts() == []
    assert [r["fault"] for r in admin.requests() if r["path"].endswith("/count")] == [kind] * 3


def test_emulator_a_trickling_answer_fails_within_the_deadline(
    emulator: EmulatorServer, emulated: tuple[EmulatorAdmin, str]
) -> None:
    """One byte every 0.3 s never trips the per-read timeout (5 s); the 1 s total deadline of
    each attempt does, and every attempt is retried like a transport error."""
    admin, service_id = emulated
    admin.answer_count_calls("trickle", trickle_interval_seconds=0.3)
    with pytest.raises(GradientUnavailableError) as caught:
        emulated_count(
            emulator.base_url, service_id, max_attempts=2, timeout_seconds=5.0, answer_deadline_seconds=1.0
        )
    assert "did not arrive whole within 1 s on any of 2 attempt(s)" in str(caught.value)
    assert caught.value.status_code is None
    assert len([r for r in admin.requests() if r["path"].endswith("/count")]) == 2
    assert [row["unit_count"] for row in admin.counts()] == [7]  # handled; only the answer was slow
    admin.clear_faults()


def test_a_404_that_is_not_gradients_json_is_failed_not_unmapped() -> None:
    """Gradient's 404 ("No account map found") is a JSON object; a proxy's HTML 404 page is
    not Gradient saying the pair is unmapped."""
    page = httpx.Response(404, text="<html>Not Found</html>", headers={"content-type": "text/html"})
    script = Script([page])
    result = run_session(script, count)
    assert (result.outcome, result.status_code, len(script.seen)) == ("failed", 404, 1)
    assert "received HTTP 404, text/html" in (result.message or "")
    assert run_session(Script([httpx.Response(404)]), count).outcome == "failed"
