"""Async client for Gradient MSP's "Synthesize" vendor API.

One ``GradientClient`` per process/run owns a few small pooled ``httpx.AsyncClient``s, one rate
limiter and one concurrency semaphore shared by every call, whatever the partner. Each
partner's calls go through a ``PartnerSession`` that binds that partner's token, so a
partner's counts can only ever carry its own token.

Rate limiting: ``pipeline.gradient.pacing.Pacer`` -- a steady cadence (GCRA: the next slot
counts from the reserved one, so wake-up latency is not lost on every request; a bounded
catch-up burst of 50 ms) under a hard cap (a sliding-window log of the actual releases: at most
``floor(rate)`` in any ``1 s + 25 ms`` window, the 25 ms guard absorbing the jitter between our
release and Gradient's check). The bound is worked out in that module. With the client's own
transport, a request is paced at the moment httpcore writes it (its ``trace`` hook, with no
await between the release and the socket write), so the client adds no jitter of its own; an
injected transport (tests) is paced before sending. Each answer is reported to the pacer
(``Pacer.answered``: release time, and when the response headers were read, from the same
hook), which moves that request's stamp in its window later when the answer came late: a
stall of the server makes the requests held during it arrive together, and the window then
counts them where they arrived. The earlier limiters
measured: ``AsyncLimiter(rate, 1)`` let 199 requests through in one second at 100/s (a full
bucket plus its drain); ``AsyncLimiter(1, 1 / rate)`` held the limit but lost every wake-up
latency (77 % of 100/s); a plain 1.0 s client-side window drew a few 429s from arrival jitter.
The limit holds per client, i.e. per process: concurrent runs each get their own budget.

Retries: tenacity, on 429, 5xx and ``httpx.TransportError`` (except the deterministic
``UnsupportedProtocol`` / ``LocalProtocolError``), with full-jitter exponential backoff
(``wait_random_exponential``) and a numeric ``Retry-After`` as the minimum wait. Every
attempt goes through the limiter again. The first attempt is sent without tenacity; its
machinery is built only after a retryable failure. Other statuses are never retried. A 2xx
whose body is not Gradient's documented JSON (a proxy's maintenance page, an empty or truncated
body) is retried like a 5xx: it is not Gradient's answer. POSTs are
retried too: unit counts overwrite (idempotent); a retried bulk account creation whose
first attempt landed may answer 409 (duplicate ids), which the caller resolves by reading
the accounts again. ``POST /service`` is the exception: it is sent once, and the caller
re-reads the services by name before any new attempt (a retry could create a duplicate).

Deadline and size: each attempt must receive its whole answer within ``answer_deadline_seconds``
of being sent (httpx's timeout applies per read: a server trickling one byte every few seconds
never trips it), else it fails like a transport error (retried). Bodies are read streaming and
at most ``max_count_answer_bytes`` (count calls) / ``max_answer_bytes`` (the rest, e.g. GET
accounts) are kept: a longer 2xx answer is refused, never held in memory whole.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import sys
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

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
from pipeline.gradient.pacing import Pacer

logger = logging.getLogger(__name__)


def _remember_missing_sniffio() -> None:
    """httpcore runs ``import sniffio`` on every lock/event it makes (several per request);
    when sniffio is not installed (httpx 0.28 / anyio 4 no longer need it) each failed import
    searches all of sys.path again. py-spy measured that at ~22 % of the push's CPU in the event
    loop. A ``None`` entry in sys.modules makes that import fail at once, exactly as before
    (httpcore then assumes asyncio, as it does without sniffio)."""
    try:
        import sniffio  # noqa: F401
    except ImportError:
        sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


_remember_missing_sniffio()

DEFAULT_BASE_URL = "https://app.usegradient.com"
API_PREFIX = "/api/vendor-api"
TOKEN_HEADER = "GRADIENT-TOKEN"
INTEGRATION_STATUSES = frozenset({"active", "inactive", "pending", "disabled", "error"})
# A Retry-After larger than this is treated as this: one answer must not stall a run for long.
RETRY_AFTER_CAP_SECONDS = 120.0
# Connections per httpx pool (see GradientClient.__init__).
POOL_CONNECTIONS = 2
# A count call's answer is ~60 bytes; a body near this size is not Gradient's answer.
MAX_COUNT_ANSWER_BYTES = 1 << 20
# Every other answer; GET /organization/accounts of 100,000 accounts is ~10 MB.
MAX_ANSWER_BYTES = 64 << 20
_MAX_DETAIL_CHARS = 500
# How much of an answer that is not Gradient's is kept (in the ledger, logs, errors).
_EXCERPT_CHARS = 200
_MASK = "********"
_NOT_RETRIED_TRANSPORT_ERRORS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
# httpcore's trace events right before a request's first byte is written.
_SEND_HEADERS_EVENTS = frozenset({"http11.send_request_headers.started", "http2.send_request_headers.started"})
# ... and right after a response's status line and headers were read (the pacer's answer time).
_ANSWER_EVENTS = frozenset({"http11.receive_response_headers.complete", "http2.receive_response_headers.complete"})

CountOutcome = Literal["delivered", "unmapped", "failed"]
# What a call's 2xx body must be: any JSON (or empty), or a count call's documented
# ``{"status", "message"}`` object.
AnswerShape = Literal["json", "count"]


class Secret:
    """Holds a key or token; its str/repr never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    __str__ = __repr__


def partner_token(vendor_api_key: str, partner_api_key: str) -> str:
    """The ``GRADIENT-TOKEN`` value: standard base64 (padded) of UTF-8 ``"vendor:partner"``."""
    raw = f"{vendor_api_key}:{partner_api_key}".encode()
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class CountResult:
    """Outcome of one set-unit-count call: delivered = a 2xx with Gradient's documented JSON
    answer; unmapped = 404 (unmapped by the partner); failed = an answer that was not Gradient's
    (``message`` says what was received; retryable, a re-run sends it again)."""

    status_code: int
    outcome: CountOutcome
    message: str | None = None


@dataclass(frozen=True)
class _Call:
    """One logical API call (retried as a whole); holds secrets only as ``Secret``."""

    method: str
    path: str
    token: Secret
    secrets: tuple[Secret, ...]
    partner_id: str
    params: dict[str, str] | None = None
    body: Any = None
    answer: AnswerShape = "json"

    @property
    def where(self) -> str:
        return f"{self.method} {self.path}"

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            value = secret.get_secret_value()
            if value:
                text = text.replace(value, _MASK)
        return text


class AnswerDeadlineExceeded(httpx.TimeoutException):
    """An attempt's answer did not arrive whole within the client's total deadline."""


class _UnusableAnswer(Exception):
    """Internal: a 2xx that is not Gradient's answer (``received`` describes it, redacted).
    Retried like a 5xx unless ``retryable`` is false (a body over the size cap)."""

    def __init__(self, status_code: int, received: str, *, retryable: bool = True) -> None:
        super().__init__(f"HTTP {status_code}, not Gradient's answer")
        self.status_code = status_code
        self.received = received
        self.retryable = retryable


class _RetryableStatus(Exception):
    """Internal: a 429/5xx answer, raised so tenacity retries it."""

    def __init__(self, status_code: int, retry_after: float | None, detail: str | None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after
        self.detail = detail


@dataclass
class _Stats:
    requests_sent: int = 0
    retries: int = 0
    transport_errors: int = 0
    by_status: Counter[int] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests_sent": self.requests_sent,
            "retries": self.retries,
            "transport_errors": self.transport_errors,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
        }


class _BackoffWait:
    """Full-jitter exponential backoff, never shorter than a numeric ``Retry-After``."""

    def __init__(self, initial_seconds: float, max_seconds: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial_seconds, max=max_seconds)

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = float(self._jitter(retry_state))
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            error = outcome.exception()
            if isinstance(error, _RetryableStatus) and error.retry_after is not None:
                delay = max(delay, error.retry_after)
        return delay


class GradientClient:
    """Async Gradient client; use as ``async with GradientClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        vendor_api_key: str | Secret,
        max_requests_per_second: float = 100.0,
        timeout_seconds: float = 30.0,
        max_attempts: int = 6,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        max_concurrency: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
        answer_deadline_seconds: float | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_count_answer_bytes: int = MAX_COUNT_ANSWER_BYTES,
    ) -> None:
        """``timeout_seconds`` applies to each connect/read/write; ``answer_deadline_seconds``
        (default: ``timeout_seconds``) to a whole answer, from sending to its last byte."""
        if answer_deadline_seconds is None:
            answer_deadline_seconds = timeout_seconds
        _require_positive(
            max_requests_per_second=max_requests_per_second,
            timeout_seconds=timeout_seconds,
            max_attempts=max_attempts,
            backoff_max_seconds=backoff_max_seconds,
            max_concurrency=max_concurrency,
            answer_deadline_seconds=answer_deadline_seconds,
            max_answer_bytes=max_answer_bytes,
            max_count_answer_bytes=max_count_answer_bytes,
        )
        if backoff_initial_seconds < 0:
            raise ValueError("backoff_initial_seconds must be >= 0")
        key = vendor_api_key if isinstance(vendor_api_key, Secret) else Secret(vendor_api_key)
        if not key.get_secret_value():
            raise ValueError("The Gradient vendor API key is empty: set GRADIENT_VENDOR_API_KEY")
        self.base_url = base_url.rstrip("/")
        self._vendor_key = key
        self._max_requests_per_second = float(max_requests_per_second)
        self._timeout_seconds = timeout_seconds
        self._answer_deadline_seconds = float(answer_deadline_seconds)
        self._max_answer_bytes = int(max_answer_bytes)
        self._max_count_answer_bytes = int(max_count_answer_bytes)
        self._max_attempts = int(max_attempts)
        self._wait = _BackoffWait(backoff_initial_seconds, backoff_max_seconds)
        self._max_concurrency = int(max_concurrency)
        self._transport = transport
        self._limiter = Pacer(self._max_requests_per_second)
        # With our own httpcore transport, each request is paced at the moment it is written
        # (httpcore's trace hook), not before the httpx/httpcore machinery that precedes the
        # write: that machinery yields to the event loop several times, and a busy loop turned
        # those yields into tens of milliseconds of arrival jitter at Gradient. An injected
        # transport (tests: httpx.MockTransport) has no such hook: paced before sending.
        self._pace_on_send = transport is None
        self._semaphore = asyncio.Semaphore(self._max_concurrency)
        self._stats = _Stats()
        # Several small connection pools instead of one of max_concurrency: httpcore checks
        # every pooled connection (has_expired, a getpeername per idle socket) on each request,
        # which py-spy measured at ~25 % of the push's CPU with one pool of 32 and still 11 % with
        # pools of 8 (397 -> 595-712 count calls/s at limit 1000 with pools of 2). Each request
        # goes to the pool with the fewest in flight; the semaphore (max_concurrency) keeps the
        # total within the pools' connections, so a request never queues inside a pool.
        self._pool_count = math.ceil(self._max_concurrency / POOL_CONNECTIONS)
        self._in_flight = [0] * self._pool_count
        self._http: list[httpx.AsyncClient] | None = None

    async def __aenter__(self) -> GradientClient:
        if self._http is not None:
            raise RuntimeError("GradientClient is already open")
        per_pool = math.ceil(self._max_concurrency / self._pool_count)
        self._http = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers={"Accept": "application/json"},
                timeout=httpx.Timeout(self._timeout_seconds),
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                transport=self._transport,
            )
            for _ in range(self._pool_count)
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pools, self._http = self._http, None
        for http in pools or []:
            await http.aclose()

    def __repr__(self) -> str:
        return (
            f"GradientClient(base_url={self.base_url!r}, vendor_api_key={self._vendor_key!r}, "
            f"max_requests_per_second={self._max_requests_per_second!r})"
        )

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for run metadata: requests_sent, retries, transport_errors, by_status."""
        return self._stats.snapshot()

    def partner(self, partner_id: str, partner_api_key: str | Secret) -> PartnerSession:
        """A session whose every call carries this partner's token, and only this one."""
        key = partner_api_key if isinstance(partner_api_key, Secret) else Secret(partner_api_key)
        if not key.get_secret_value():
            raise ValueError(f"Partner {partner_id!r} has an empty Gradient API key")
        return PartnerSession(self, partner_id, key)

    async def _send(self, call: _Call, *, retry: bool = True) -> httpx.Response:
        """Send ``call`` with retries (one attempt if not ``retry``); returns any
        non-retryable response.

        The first attempt is sent directly; tenacity's machinery (an ``AsyncRetrying`` per
        call, ~5 % of the push's CPU) is built only after a retryable failure, and replays
        that failure as its attempt 1, so waits, attempt numbers and logs are the same."""
        failure: GradientError
        retrying: AsyncRetrying | None = None
        try:
            try:
                return await self._attempt(call)
            except (_RetryableStatus, _UnusableAnswer, httpx.TransportError) as error:
                if not (retry and self._max_attempts > 1 and _is_retryable(error)):
                    raise
                first: list[BaseException] = [error]
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self._max_attempts),
                wait=self._wait,
                retry=retry_if_exception(_is_retryable),
                before_sleep=lambda state: self._before_sleep(call, state),
                reraise=True,
            )
            return await retrying(self._attempt_after, call, first)
        except _RetryableStatus as error:
            failure = _exhausted_status_error(call, error, self._attempts(retrying))
        except _UnusableAnswer as error:
            failure = _unusable_answer_error(call, error, self._attempts(retrying))
        except httpx.TransportError as error:
            failure = self._unavailable_error(call, error, self._attempts(retrying))
        except httpx.HTTPError as error:
            detail = _describe(call, error)
            failure = _error(GradientError, call, None, f"Gradient call {call.where} failed: {detail}")
        # Raised outside the except blocks: no __context__ chains to httpx objects (headers).
        raise failure

    async def _attempt_after(self, call: _Call, first: list[BaseException]) -> httpx.Response:
        """tenacity's attempt: the failure of the direct first attempt, then real attempts."""
        if first:
            raise first.pop()
        return await self._attempt(call)

    async def _attempt(self, call: _Call) -> httpx.Response:
        pools = self._require_open()
        async with self._semaphore:
            paced = False
            loop = asyncio.get_running_loop()
            # The pacer's release time of this request, and when its answer's headers came:
            # reported to the pacer, which corrects the request's stamp in its window from them.
            released: float | None = None
            answered_at: float | None = None

            # The whole answer's deadline counts from the release (the pacer's wait is not
            # Gradient's time); before it, httpx's own connect/pool timeouts apply.
            deadline = asyncio.timeout(None)

            async def pace_on_send(event: str, info: dict[str, Any]) -> None:
                # httpcore awaits this right before it writes the request line and headers,
                # with no await between: the pacer's release time is the send time.
                nonlocal paced, released, answered_at
                if event in _SEND_HEADERS_EVENTS and not paced:
                    paced = True
                    released = await self._limiter.acquire()
                    deadline.reschedule(released + self._answer_deadline_seconds)
                elif event in _ANSWER_EVENTS:
                    answered_at = loop.time()

            extensions: dict[str, Any] | None = None
            if self._pace_on_send:
                extensions = {"trace": pace_on_send}
            else:
                paced = True
                released = await self._limiter.acquire()
            self._stats.requests_sent += 1
            pool = min(range(len(pools)), key=self._in_flight.__getitem__)
            http = pools[pool]
            request = http.build_request(
                call.method,
                call.path,
                params=call.params,
                json=call.body,
                headers={TOKEN_HEADER: call.token.get_secret_value()},
                extensions=extensions,
            )
            cap = self._max_count_answer_bytes if call.answer == "count" else self._max_answer_bytes
            self._in_flight[pool] += 1
            try:
                try:
                    async with deadline:
                        if released is not None:
                            deadline.reschedule(released + self._answer_deadline_seconds)
                        response = await http.send(request, stream=True)
                        try:
                            oversized = await _read_capped(response, cap)
                        finally:
                            await response.aclose()
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    raise AnswerDeadlineExceeded(
                        f"no complete answer within {self._answer_deadline_seconds:g} s "
                        "(the total deadline of one attempt)"
                    ) from None
            except httpx.TransportError:
                self._stats.transport_errors += 1
                if released is not None and answered_at is not None:
                    # Headers came, then the body failed: it arrived, but no round-trip sample.
                    self._limiter.answered(released, answered_at, sample=False)
                raise
            finally:
                self._in_flight[pool] -= 1
            if released is not None:
                if answered_at is None:  # paced before sending: answered when the call returned
                    answered_at = loop.time()
                # A 429 is answered before the server's work (and latency): no round-trip sample.
                self._limiter.answered(released, answered_at, sample=response.status_code != 429)
            if not paced and self._pace_on_send:
                # Answered without the send trace event (another httpcore?): pace before
                # sending from now on, so no request can go unpaced again. (A request that
                # failed before it was written, e.g. connection refused, is no such sign.)
                logger.warning("Gradient client: pacing before sending (no send trace event)")
                self._pace_on_send = False
        self._stats.by_status[response.status_code] += 1
        if _is_retryable_status(response.status_code):
            raise _RetryableStatus(response.status_code, _retry_after_seconds(response), _gradient_message(response))
        if response.is_success:
            if oversized:
                raise _UnusableAnswer(response.status_code, _received(call, response, oversized=True), retryable=False)
            problem = _answer_problem(call.answer, response)
            if problem is not None:
                raise _UnusableAnswer(response.status_code, f"{problem}; {_received(call, response)}")
        return response

    def _before_sleep(self, call: _Call, state: RetryCallState) -> None:
        self._stats.retries += 1
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _RetryableStatus):
            reason = f"HTTP {error.status_code}"
        elif isinstance(error, _UnusableAnswer):
            reason = f"HTTP {error.status_code} that is not Gradient's answer ({error.received})"
        else:
            reason = _describe(call, error) if error is not None else "unknown"
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "Gradient %s (partner %s): %s on attempt %d of %d; retrying in %.2f s",
            call.where,
            call.partner_id,
            reason,
            state.attempt_number,
            self._max_attempts,
            delay,
        )

    def _unavailable_error(self, call: _Call, error: httpx.TransportError, attempts: int) -> GradientError:
        if isinstance(error, AnswerDeadlineExceeded):
            return _error(
                GradientUnavailableError,
                call,
                None,
                f"Gradient's answer to {call.where} did not arrive whole within "
                f"{self._answer_deadline_seconds:g} s on any of {attempts} attempt(s) (a stalled "
                "or trickling connection: a proxy, the network or Gradient); check the network "
                "path to GRADIENT_BASE_URL; a re-run completes what was left",
            )
        return _error(
            GradientUnavailableError,
            call,
            None,
            f"Gradient is unreachable at {self.base_url}: {_describe(call, error)} "
            f"({call.where}, {attempts} attempt(s)); check GRADIENT_BASE_URL / network; "
            "a re-run completes what was left",
        )

    def _attempts(self, retrying: AsyncRetrying | None) -> int:
        if retrying is None:
            return 1
        return int(retrying.statistics.get("attempt_number", self._max_attempts))

    def _require_open(self) -> list[httpx.AsyncClient]:
        if self._http is None:
            raise RuntimeError("GradientClient is not open: use `async with GradientClient(...)`")
        return self._http

    async def _json(self, call: _Call, *, retry: bool = True) -> Any:
        """Send ``call``; any non-2xx, or a 2xx that is not JSON, raises; returns the decoded
        JSON body (None if empty)."""
        response = await self._send(call, retry=retry)
        if not response.is_success:
            raise _status_error(call, response)
        return _decode_json(response)


class PartnerSession:
    """Every Gradient call, bound to one partner's token.

    The vendor-level calls (vendor, services) also need a token. Which partner's token is
    used there is not documented; any connected partner's token is assumed to work (guess).
    """

    def __init__(self, client: GradientClient, partner_id: str, partner_api_key: Secret) -> None:
        self._client = client
        self.partner_id = partner_id
        self._partner_key = partner_api_key
        self._token = Secret(partner_token(client._vendor_key.get_secret_value(), partner_api_key.get_secret_value()))

    def __repr__(self) -> str:
        return f"PartnerSession(partner_id={self.partner_id!r}, token={self._token!r})"

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        answer: AnswerShape = "json",
    ) -> _Call:
        return _Call(
            method=method,
            path=API_PREFIX + path,
            token=self._token,
            secrets=(self._token, self._partner_key, self._client._vendor_key),
            partner_id=self.partner_id,
            params=params,
            body=body,
            answer=answer,
        )

    async def get_vendor(self) -> dict[str, Any]:
        """The vendor object (``data``), including its ``skus``."""
        call = self._call("GET", "")
        return _as_dict(call, _unwrap_data(await self._client._json(call)))

    async def update_vendor(self, **fields: Any) -> dict[str, Any]:
        """PATCH any of name, description, vendorSupportPageUrl, integrationPortalUrl."""
        call = self._call("PATCH", "", body=_camel_fields(fields))
        return _as_dict(call, _unwrap_data(await self._client._json(call)))

    async def create_service(
        self,
        name: str,
        description: str,
        category: str,
        subcategory: str,
        support_article: str | None = None,
        support_contact: str | None = None,
    ) -> dict[str, Any]:
        """Create a SKU; returns the created SKU (the newest one named ``name`` in ``skus``).

        Sent exactly once, never retried here: a lost response may hide a SKU that was created,
        and a blind retry would create a second one of the same name. The caller re-reads the
        vendor's services by name before trying again (``pipeline.gradient.load.sync_services``).
        """
        body = _without_none(
            {
                "name": name,
                "description": description,
                "category": category,
                "subcategory": subcategory,
                "supportArticle": support_article,
                "supportContact": support_contact,
            }
        )
        call = self._call("POST", "/service", body=body)
        vendor = _as_dict(call, _unwrap_data(await self._client._json(call, retry=False)))
        return _newest_sku_named(call, vendor, name)

    async def get_service(self, service_id: str) -> dict[str, Any]:
        call = self._call("GET", f"/service/{_segment(service_id)}")
        return _as_dict(call, _unwrap_data(await self._client._json(call)))

    async def get_organization(self) -> dict[str, Any]:
        """The partner's integration; the documented way to check a partner's key."""
        call = self._call("GET", "/organization")
        return _as_dict(call, _unwrap_data(await self._client._json(call)))

    async def set_integration_status(self, status: str) -> dict[str, Any]:
        if status not in INTEGRATION_STATUSES:
            raise ValueError(
                f"Unknown Gradient integration status {status!r}; use one of {sorted(INTEGRATION_STATUSES)}"
            )
        call = self._call("PATCH", f"/organization/status/{status}")
        body = _unwrap_data(await self._client._json(call))
        return body if isinstance(body, dict) else {}

    async def get_clients(self, search: str | None = None) -> list[dict[str, Any]]:
        """All of the partner's PSA companies, following the ``previousId`` keyset cursor.

        Stops on an empty page or one smaller than the previous. The items' id field is
        unknown: ``id`` then ``_id`` is used as the cursor (guess).
        """
        clients: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor: str | None = None
        previous_size: int | None = None
        while True:
            page = await self._clients_page(search, cursor)
            if not page:
                break
            next_cursor = _item_id(page[-1])
            if next_cursor is not None and next_cursor in seen:
                logger.warning("Gradient clients: cursor %s repeated; stopping", next_cursor)
                break
            clients.extend(page)
            if previous_size is not None and len(page) < previous_size:
                break
            if next_cursor is None:
                logger.warning("Gradient clients: items carry no id/_id; cannot paginate")
                break
            seen.add(next_cursor)
            cursor, previous_size = next_cursor, len(page)
        return clients

    async def _clients_page(self, search: str | None, cursor: str | None) -> list[dict[str, Any]]:
        params = _without_none({"search": search, "previousId": cursor})
        call = self._call("GET", "/organization/clients", params=params or None)
        body = _unwrap_data(await self._client._json(call))
        if isinstance(body, dict):
            body = body.get("clients", [])
        return _as_list(call, body)

    async def get_accounts(self) -> list[dict[str, Any]]:
        call = self._call("GET", "/organization/accounts")
        body = _unwrap_data(await self._client._json(call))
        if isinstance(body, dict) and "accounts" in body:
            body = body["accounts"]
        return _as_list(call, body)

    async def create_accounts(self, accounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk-create accounts in ONE request; an empty list sends nothing."""
        if not accounts:
            return []
        call = self._call("POST", "/organization/accounts", body=list(accounts))
        body = _unwrap_data(await self._client._json(call))
        return _as_list(call, body if body is not None else [])

    async def update_account(self, account_id: str, **fields: Any) -> dict[str, Any]:
        """PATCH any of id, name, description of the account ``account_id``."""
        call = self._call("PATCH", f"/organization/accounts/{_segment(account_id)}", body=_camel_fields(fields))
        return _as_dict(call, _unwrap_data(await self._client._json(call)))

    async def set_unit_count(
        self,
        service_id: str,
        account_id: str,
        unit_count: int | float | Decimal,
        *,
        no_build: bool,
    ) -> CountResult:
        """Set one (account, service) count; 404 = unmapped and an answer that is not Gradient's
        documented JSON (after the retries) = failed are returned, never raised."""
        call = self._call(
            "POST",
            f"/service/{_segment(service_id)}/count",
            params={"no_build": "true"} if no_build else None,
            body={"accountId": str(account_id), "unitCount": _unit_count(unit_count)},
            answer="count",
        )
        try:
            response = await self._client._send(call)
        except GradientUnexpectedAnswerError as error:
            return CountResult(error.status_code or 0, "failed", error.message)
        if response.is_success:
            return CountResult(response.status_code, "delivered", _redacted_detail(call, response))
        if response.status_code == 404:
            if _answer_problem("json", response) is None and isinstance(_json_or_none(response), dict):
                return CountResult(404, "unmapped", _redacted_detail(call, response))
            # A proxy's "not found" page: not Gradient saying the pair is unmapped.
            return CountResult(
                404,
                "failed",
                f"Gradient's answer to {call.where} was a 404 that is not its documented JSON "
                f"({_received(call, response)}), so it is not taken as unmapped; check "
                "GRADIENT_BASE_URL and any proxy in front of Gradient; a re-run sends it again",
            )
        raise _status_error(call, response)

    async def create_alert(
        self,
        account_id: str,
        title: str,
        description: str,
        alert_id: str,
        priority: int | None = None,
        status: str | None = None,
        due_date_time: str | datetime | None = None,
        service_id: str | None = None,
    ) -> dict[str, Any]:
        """Queue an alert; returns ``{"messageId", "alertId", "correlationID"}``."""
        if priority is not None and priority not in (1, 2, 3, 4):
            raise ValueError(f"Gradient alert priority must be 1-4, got {priority!r}")
        due = due_date_time.isoformat() if isinstance(due_date_time, datetime) else due_date_time
        body = _without_none(
            {
                "title": title,
                "description": description,
                "alertId": alert_id,
                "priority": priority,
                "status": status,
                "dueDateTime": due,
                "serviceId": service_id,
            }
        )
        call = self._call("POST", f"/alerting/{_segment(account_id)}", body=body)
        return _as_dict(call, _unwrap_data(await self._client._json(call)))

    async def get_alert_status(self, message_id: str) -> dict[str, Any]:
        """Delivery status of a queued alert: ``{status: failed|pending|success, errors, ...}``."""
        call = self._call("GET", f"/alerting/debug/{_segment(message_id)}")
        return _as_dict(call, _unwrap_data(await self._client._json(call)))


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _is_retryable_status(status_code: int) -> bool:
    return status_code == 429 or 500 <= status_code <= 599


def _is_retryable(error: BaseException) -> bool:
    if isinstance(error, _RetryableStatus):
        return True
    if isinstance(error, _UnusableAnswer):
        return error.retryable
    return isinstance(error, httpx.TransportError) and not isinstance(error, _NOT_RETRIED_TRANSPORT_ERRORS)


def _retry_after_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """``Retry-After`` in either of its forms (RFC 9110: delay-seconds or an HTTP-date), as
    seconds from ``now``, capped; None when absent or unreadable."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(raw.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT; a zone-less one is read as such
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, RETRY_AFTER_CAP_SECONDS)


def _gradient_message(response: httpx.Response) -> str | None:
    """Gradient's ``message`` (or ``error``) from a JSON body, if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    message = body.get("message") or body.get("error")
    if isinstance(message, list):
        message = "; ".join(str(part) for part in message)
    if not message:
        return None
    return str(message)[:_MAX_DETAIL_CHARS]


def _redacted_detail(call: _Call, response: httpx.Response) -> str | None:
    message = _gradient_message(response)
    return call.redact(message) if message is not None else None


def _describe(call: _Call, error: BaseException) -> str:
    """Exception type and text only (never its request/headers), secrets masked."""
    text = call.redact(str(error))[:_MAX_DETAIL_CHARS]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _status_error(call: _Call, response: httpx.Response) -> GradientError:
    """The error for a final non-2xx response that is not retried."""
    status = response.status_code
    detail = _redacted_detail(call, response) or response.reason_phrase or "no message"
    if status == 401:
        return _error(
            GradientAuthError,
            call,
            status,
            "Gradient rejected the partner's API key (401): the key is wrong, regenerated or "
            "revoked — ask the partner to paste a fresh key in the product "
            f"[partner {call.partner_id!r}, {call.where}; if every partner gets 401, check "
            "GRADIENT_VENDOR_API_KEY]",
        )
    if status == 403:
        return _error(
            GradientForbiddenError,
            call,
            status,
            f"Gradient refused {call.where} with 403 (an API-usage anomaly): {detail} "
            f"[partner {call.partner_id!r}]; not retried — check the request pattern/volume "
            "and contact Gradient support if it persists",
        )
    if status == 404:
        return _error(
            GradientNotFoundError,
            call,
            status,
            f"Gradient found nothing at {call.where} (404): {detail} [partner "
            f"{call.partner_id!r}]; check the id — a disconnected partner's accounts are "
            "deleted by Gradient and must be created again",
        )
    if 300 <= status <= 399:
        return _error(
            GradientError,
            call,
            status,
            f"Gradient answered {call.where} with a redirect ({status}); check "
            "GRADIENT_BASE_URL (scheme and host, e.g. https://app.usegradient.com)",
        )
    if 400 <= status <= 499:
        return _error(
            GradientRequestError,
            call,
            status,
            f"Gradient rejected {call.where} ({status}): {detail} [partner "
            f"{call.partner_id!r}]; fix the request data (ids, enum values, field types) — "
            "retrying will not help",
        )
    return _error(
        GradientError,
        call,
        status,
        f"Gradient answered {call.where} with unexpected status {status}: {detail}",
    )


def _error(cls: type[GradientError], call: _Call, status_code: int | None, message: str) -> GradientError:
    """An error carrying the call's method, path (no query) and partner id; never secrets."""
    return cls(
        message,
        status_code=status_code,
        method=call.method,
        path=call.path,
        partner_id=call.partner_id,
    )


def _exhausted_status_error(call: _Call, error: _RetryableStatus, attempts: int) -> GradientError:
    status = error.status_code
    detail = call.redact(error.detail) if error.detail else "no message"
    if status == 429:
        return _error(
            GradientRateLimitedError,
            call,
            status,
            f"Gradient kept answering 429 (rate limited) on {call.where} after {attempts} "
            "attempt(s); lower max_requests_per_second (Gradient allows 100/s per vendor, shared "
            "by concurrent runs) or re-run later; a re-run completes what was left",
        )
    return _error(
        GradientServerError,
        call,
        status,
        f"Gradient kept failing with {status} on {call.where} after {attempts} attempt(s): "
        f"{detail}; a Gradient-side problem — re-run later; a re-run completes what was left",
    )


async def _read_capped(response: httpx.Response, cap: int) -> bool:
    """Read the (decoded) body into ``response`` as httpx's ``aread`` does, but keep at most
    ``cap`` bytes: True when the body is longer (the rest is never read)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        response._content = b""
        return True
    chunks: list[bytes] = []
    size = 0
    async with aclosing(response.aiter_bytes()) as body:  # type: ignore[type-var]
        async for chunk in body:
            size += len(chunk)
            if size > cap:
                chunks.append(chunk[: len(chunk) - (size - cap)])
                response._content = b"".join(chunks)
                return True
            chunks.append(chunk)
    response._content = b"".join(chunks)
    return False


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _answer_problem(shape: AnswerShape, response: httpx.Response) -> str | None:
    """Why a 2xx body is not Gradient's answer of this ``shape``, or None when it is.

    Any call: a declared content type must be JSON and a body must parse. A count call's body
    must be Gradient's documented object: it has ``status`` and/or ``message``, and a numeric
    ``status`` (when present) is itself a 2xx."""
    content_type = response.headers.get("content-type")
    if content_type is not None and not _is_json_media_type(content_type):
        return "not JSON (content type)"
    if not response.content:
        return "an empty body" if shape == "count" else None
    try:
        body = response.json()
    except ValueError:
        return "not JSON, or truncated JSON"
    if shape == "json":
        return None
    if not isinstance(body, dict) or not ("status" in body or "message" in body):
        return "not Gradient's {status, message} object"
    status = body.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and not 200 <= status <= 299:
        return f"its body says status {status}"
    return None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _received(call: _Call, response: httpx.Response, *, oversized: bool = False) -> str:
    """What was received, for the ledger, logs and errors: status, content type, size and the
    first characters (secrets masked, control characters escaped)."""
    content = response.content
    content_type = response.headers.get("content-type") or "no content type"
    size = f"over {len(content)} bytes (the size cap; the rest was not read)" if oversized else f"{len(content)} bytes"
    head = call.redact(content[: _EXCERPT_CHARS * 4 + 1024].decode("utf-8", "replace"))
    excerpt = repr(head[:_EXCERPT_CHARS]) + ("..." if len(head) > _EXCERPT_CHARS else "")
    return call.redact(f"received HTTP {response.status_code}, {content_type}, {size}: {excerpt}")


def _unusable_answer_error(call: _Call, error: _UnusableAnswer, attempts: int) -> GradientError:
    return _error(
        GradientUnexpectedAnswerError,
        call,
        error.status_code,
        f"Gradient's answer to {call.where} was not its documented JSON, so it does not count "
        f"({error.received}; {attempts} attempt(s)) [partner {call.partner_id!r}]; a proxy or "
        "maintenance page in front of Gradient, or GRADIENT_BASE_URL not pointing at Gradient's "
        "API (https://app.usegradient.com); a re-run sends it again",
    )


def _decode_json(response: httpx.Response) -> Any:
    """The JSON body, None if empty (``_attempt`` already refused a 2xx that does not parse)."""
    return response.json() if response.content else None


def _shape_error(call: _Call, expected: str, got: Any) -> GradientError:
    return _error(
        GradientError,
        call,
        None,
        f"Gradient answered {call.where} with an unexpected shape: expected {expected}, got "
        f"{type(got).__name__}; the API may have changed — update pipeline/gradient/client.py",
    )


def _as_dict(call: _Call, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _shape_error(call, "an object", value)


def _as_list(call: _Call, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return value
    raise _shape_error(call, "an array", value)


def _unwrap_data(body: Any) -> Any:
    """``body["data"]`` for ``{data, message, status}`` envelopes, else ``body`` unchanged."""
    if isinstance(body, dict) and "data" in body and ("status" in body or "message" in body):
        return body["data"]
    return body


def _newest_sku_named(call: _Call, vendor: dict[str, Any], name: str) -> dict[str, Any]:
    """The SKU named ``name``: latest ``createdAt``, ties (or no dates) broken by list order."""
    skus = vendor.get("skus") or []
    matches = [(i, sku) for i, sku in enumerate(skus) if isinstance(sku, dict) and sku.get("name") == name]
    if not matches:
        raise _error(
            GradientError,
            call,
            None,
            f"Gradient answered {call.where} without a SKU named {name!r} in `skus`; read the "
            "vendor (GET /api/vendor-api) to check whether it was created",
        )
    _, newest = max(matches, key=lambda pair: (str(pair[1].get("createdAt") or ""), pair[0]))
    return newest


def _item_id(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    value = item.get("id")
    if value is None:
        value = item.get("_id")
    return None if value is None else str(value)


def _segment(value: str) -> str:
    """One URL path segment, percent-encoded: '/', '?', '%', spaces, control characters and
    dots too ('.' and '..' would otherwise be collapsed by URL normalization, in httpx or on
    the way, and send e.g. a rename of account '..' to another route)."""
    return quote(str(value), safe="").replace(".", "%2E")


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _camel(name: str) -> str:
    """``vendor_support_page_url`` -> ``vendorSupportPageUrl``; camelCase is kept."""
    return re.sub(r"_([a-z])", lambda match: match.group(1).upper(), name)


def _camel_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if not fields:
        raise ValueError("Nothing to update: pass at least one field")
    return {_camel(key): value for key, value in fields.items()}


def _unit_count(value: int | float | Decimal) -> int | float:
    """A JSON number: ints stay ints, integral Decimals become ints; finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise TypeError(f"unit_count must be a number, got {type(value).__name__}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"unit_count must be finite, got {value!r}")
        value = int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"unit_count must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"unit_count must be >= 0, got {value!r}")
    return value
