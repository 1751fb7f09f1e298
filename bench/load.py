"""The load side of the benchmark: a real Gradient emulator over HTTP, what it received.

The emulator runs in the benchmark's process (its own thread), with Gradient's rate limit
and an injected latency; the pipeline's run talks to it from a child process. Every request
is logged by the emulator, so the figures are what Gradient would have seen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime

from gradient_emulator import EmulatorAdmin, EmulatorServer, EmulatorState
from pipeline.demo.data import demo_partner_key

LATENCY_MS = 20
MAX_LOGGED_REQUESTS = 2_000_000


@dataclass(frozen=True)
class LoadFigures:
    """What one load run sent, as the emulator logged it."""

    requests: int
    count_calls: int
    count_seconds: float
    count_rate_per_second: float
    window_rate_per_second: float
    rate_limit: int
    share_of_limit: float
    status_429: int
    by_status: dict[str, int]
    by_kind: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def start_emulator(vendor_api_key: str, rate_limit: int) -> tuple[EmulatorServer, EmulatorAdmin]:
    """An emulator with ``rate_limit`` requests/s and LATENCY_MS on every vendor call."""
    server = EmulatorServer(
        vendor_api_key,
        state=EmulatorState(max_logged_requests=MAX_LOGGED_REQUESTS),
        rate_limit_per_second=rate_limit,
    ).start()
    admin = EmulatorAdmin(server.base_url, timeout=60)
    admin.set_faults(latency_ms=LATENCY_MS)
    return server, admin


def register_partners(admin: EmulatorAdmin, partner_ids: list[str]) -> None:
    """Each partner's key known to Gradient, every account and service mapped in its PSA."""
    for partner_id in partner_ids:
        admin.register_partner(
            demo_partner_key(partner_id), name=partner_id, organization_id=f"org-{partner_id}", auto_map_all=True
        )


def _kind(method: str, path: str) -> str:
    tail = path.split("/api/vendor-api", 1)[-1] or "/"
    if tail.endswith("/count"):
        return "POST count"
    if tail.startswith("/service/"):
        return f"{method} service"
    if tail.startswith("/organization/accounts/"):
        return f"{method} account"
    return f"{method} {tail}"


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def summarize(entries: list[dict], rate_limit: int) -> LoadFigures:
    """Figures of the logged requests. Rates are taken over the span from the first to the last
    count call: count calls alone, and every accepted request in that window (what the limit bounds)."""
    counts = [e for e in entries if _kind(e["method"], e["path"]) == "POST count"]
    seconds = 0.0
    in_window = 0
    if len(counts) > 1:
        first, last = _instant(counts[0]["time"]), _instant(counts[-1]["time"])
        seconds = (last - first).total_seconds()
        in_window = sum(1 for e in entries if e["status"] != 429 and first <= _instant(e["time"]) <= last)
    rate = (len(counts) - 1) / seconds if seconds > 0 else 0.0
    window_rate = (in_window - 1) / seconds if seconds > 0 else 0.0
    statuses = Counter(str(e["status"]) for e in entries)
    return LoadFigures(
        requests=len(entries),
        count_calls=len(counts),
        count_seconds=round(seconds, 3),
        count_rate_per_second=round(rate, 1),
        window_rate_per_second=round(window_rate, 1),
        rate_limit=rate_limit,
        share_of_limit=round(window_rate / rate_limit, 3) if rate_limit else 0.0,
        status_429=statuses.get("429", 0),
        by_status=dict(sorted(statuses.items())),
        by_kind=dict(sorted(Counter(_kind(e["method"], e["path"]) for e in entries).items())),
    )


def gradient_units(admin: EmulatorAdmin) -> tuple[int, float]:
    """(count values Gradient holds, sum of their units)."""
    rows = admin.counts()
    return len(rows), float(sum(float(r["unit_count"]) for r in rows))
