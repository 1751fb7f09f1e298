"""ASGI middleware in front of the vendor API: request log, rate limit and injected faults.

It plays the part of Gradient's edge: every vendor-API request is logged (token fingerprint
only), counted against the vendor-wide rate limit, and may be delayed, failed, timed out or
dropped according to the fault settings — before the API itself sees it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .catalog import API_PREFIX, TOKEN_HEADER
from .errors import error_body
from .faults import FaultAction
from .state import EmulatorState

RATE_LIMIT_MESSAGE = "ThrottlerException: Too Many Requests"
# What a proxy or load balancer in front of Gradient answers during maintenance.
MAINTENANCE_PAGE = (
    b"<!DOCTYPE html><html><head><title>Down for maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1><p>Gradient is undergoing scheduled maintenance.</p></body></html>"
)


def _is_vendor_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive callable that hands the already-read body to the app, then defers to ``receive``."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


async def _drop_connection(receive: Receive, send: Send) -> None:
    """Close the TCP connection without any response, so the client sees a transport error.

    uvicorn's ``receive`` is a bound method of its request cycle, which holds the transport;
    closing it makes uvicorn mark the cycle disconnected (no 500 is sent). Fallback for other
    servers: promise a body and never send it, which makes the server close the connection.
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        for _ in range(5):
            await asyncio.sleep(0)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1024")]})


async def _send_raw(send: Send, status: int, content_type: bytes | None, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _swallow(message: Message) -> None:
    """A ``send`` that loses the response (the request was handled)."""
    return None


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        continue


class VendorGateway:
    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_vendor_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        scope = self._without_trailing_slash(scope)
        started = time.perf_counter()
        body = await _read_body(receive)
        token = Headers(scope=scope).get(TOKEN_HEADER)
        record = self.state.requests.start(
            method=scope["method"],
            path=scope["path"],
            query=dict(QueryParams(scope.get("query_string", b""))),
            token=token,
            organization_id=self.state.resolve_organization(token),
            body=body,
        )
        outcome: dict[str, Any] = {"status": None, "fault": None}

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, _replaying(body, receive), capturing_send, outcome)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.state.requests.finish(
                record, status=outcome["status"], fault=outcome["fault"], duration_ms=elapsed_ms
            )

    @staticmethod
    def _without_trailing_slash(scope: Scope) -> Scope:
        """Express-style non-strict routing: ``/organization/`` is ``/organization``."""
        path: str = scope["path"]
        if len(path) > len(API_PREFIX) and path.endswith("/"):
            return {**scope, "path": path.rstrip("/")}
        return scope

    async def _handle(
        self, scope: Scope, raw_receive: Receive, receive: Receive, send: Send, outcome: dict[str, Any]
    ) -> None:
        """``raw_receive`` is the server's own callable (needed to drop the connection)."""
        if not self.state.rate_limiter.allow():
            outcome["fault"] = "rate_limited"
            await self._respond(scope, receive, send, 429, RATE_LIMIT_MESSAGE)
            return
        action = self.state.faults.decide(scope["method"], scope["path"])
        if action is not None and action.latency_s > 0:
            await asyncio.sleep(action.latency_s)
        if action is None or action.kind is None:
            await self.app(scope, receive, send)
            return
        outcome["fault"] = action.kind
        await self._inject(action, scope, raw_receive, receive, send)

    async def _inject(
        self, action: FaultAction, scope: Scope, raw_receive: Receive, receive: Receive, send: Send
    ) -> None:
        if action.kind == "drop":
            await _drop_connection(raw_receive, send)
        elif action.kind == "lost_response":
            await self.app(scope, receive, _swallow)
            await _drop_connection(raw_receive, send)
        elif action.kind == "timeout":
            await self._time_out(action, scope, receive, send)
        elif action.kind == "maintenance_page":
            await _send_raw(send, 200, b"text/html; charset=utf-8", MAINTENANCE_PAGE)
        elif action.kind == "empty_answer":
            await _send_raw(send, 201, None, b"")
        elif action.kind == "trickle":
            await self._trickle(action, scope, receive, send)
        else:
            await self._respond(scope, receive, send, action.status, action.message)

    async def _time_out(self, action: FaultAction, scope: Scope, receive: Receive, send: Send) -> None:
        """Hold the request, unprocessed, until the client gives up (nothing is sent then),
        ``timeout_s`` passes or held requests are released (faults changed, server stopping);
        in the last two cases answer 504."""
        generation = self.state.faults.generation
        deadline = time.monotonic() + action.timeout_s
        disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            while not disconnect.done() and self.state.faults.generation == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.wait({disconnect}, timeout=min(remaining, 0.05))
            client_gone = disconnect.done()
        finally:
            disconnect.cancel()
        if not client_gone:
            await self._respond(scope, receive, send, 504, "Gateway Timeout")

    async def _trickle(self, action: FaultAction, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle the request, then send its answer's body one byte every ``trickle_interval_s``
        (headers at once) until the client disconnects; the rest goes at once when held requests
        are released (faults changed, server stopping)."""
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        await self.app(scope, receive, capture)
        start = next(m for m in captured if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
        await send(start)
        generation = self.state.faults.generation
        disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            for index in range(len(body)):
                if self.state.faults.generation != generation:
                    await send({"type": "http.response.body", "body": body[index:], "more_body": False})
                    return
                last = index == len(body) - 1
                await send({"type": "http.response.body", "body": body[index : index + 1], "more_body": not last})
                if last:
                    return
                next_byte_at = time.monotonic() + action.trickle_interval_s
                while not disconnect.done() and self.state.faults.generation == generation:
                    remaining = next_byte_at - time.monotonic()
                    if remaining <= 0:
                        break
                    await asyncio.wait({disconnect}, timeout=min(remaining, 0.05))
                if disconnect.done():
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            disconnect.cancel()

    @staticmethod
    async def _respond(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        await JSONResponse(error_body(status, message), status_code=status)(scope, receive, send)
