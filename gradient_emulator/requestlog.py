"""Log of the vendor-API requests the emulator received (tokens are only kept as fingerprints)."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from .catalog import iso_now, sha256_hex


@dataclass
class RequestRecord:
    time: str
    method: str
    path: str
    query: dict[str, str]
    organization_id: str | None
    token_sha256: str | None
    body: Any
    status: int | None = None
    fault: str | None = None
    duration_ms: float | None = None


def decode_body(raw: bytes) -> Any:
    """The JSON body when it parses, else the text (bodies are the vendor's data, never a token)."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text[:2000]


class RequestLog:
    """Thread-safe bounded log; the oldest records are dropped past ``max_records``."""

    def __init__(self, max_records: int = 10_000) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        self._lock = threading.Lock()

    def start(
        self,
        *,
        method: str,
        path: str,
        query: dict[str, str],
        token: str | None,
        organization_id: str | None,
        body: bytes,
    ) -> RequestRecord:
        record = RequestRecord(
            time=iso_now(),
            method=method,
            path=path,
            query=query,
            organization_id=organization_id,
            token_sha256=sha256_hex(token) if token is not None else None,
            body=decode_body(body),
        )
        with self._lock:
            self._records.append(record)
        return record

    def finish(
        self, record: RequestRecord, *, status: int | None, fault: str | None, duration_ms: float
    ) -> None:
        with self._lock:
            record.status = status
            record.fault = fault
            record.duration_ms = round(duration_ms, 3)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(record) for record in self._records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
