"""Rate limiting and fault injection for the emulated vendor API."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import BadRequest

# "lost_response": the request IS handled (its effect happens), then the connection is dropped
# before the answer, as when a response is lost on the way back.
# "maintenance_page": a proxy in front of Gradient answers 200 text/html; nothing is handled.
# "empty_answer": 201 with an empty body; nothing is handled (nothing stored).
# "trickle": the request IS handled, then its answer is sent one byte every
# ``trickle_interval_seconds`` (a per-read timeout never fires; only a total deadline does).
FaultKind = Literal["error", "drop", "timeout", "lost_response", "maintenance_page", "empty_answer", "trickle"]
_FAULT_KINDS: tuple[str, ...] = (
    "error", "drop", "timeout", "lost_response", "maintenance_page", "empty_answer", "trickle"
)
# The rate setting of each randomly drawn fault kind, in the order they are drawn.
_RATE_SETTINGS: tuple[tuple[str, FaultKind], ...] = (
    ("drop_rate", "drop"),
    ("timeout_rate", "timeout"),
    ("error_rate", "error"),
    ("lost_response_rate", "lost_response"),
    ("maintenance_rate", "maintenance_page"),
    ("empty_answer_rate", "empty_answer"),
    ("trickle_rate", "trickle"),
)


class SlidingWindowRateLimiter:
    """At most ``limit`` accepted requests in any ``window`` seconds (a sliding-window log).

    Rejected requests are not recorded, so a client that backs off recovers within one window.
    """

    def __init__(self, limit: int, window: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._accepted: deque[float] = deque()
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self._limit = limit
            self._accepted.clear()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            while self._accepted and self._accepted[0] <= now - self._window:
                self._accepted.popleft()
            if len(self._accepted) >= self._limit:
                return False
            self._accepted.append(now)
            return True


@dataclass(frozen=True)
class OneShotFault:
    """A deterministic failure for the next request matching ``path_prefix`` (and ``method``)."""

    path_prefix: str = ""
    status: int = 503
    action: FaultKind = "error"
    method: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class FaultAction:
    """What the middleware must do to one request instead of (or before) handling it."""

    kind: FaultKind | None
    latency_s: float = 0.0
    status: int = 503
    message: str = "Injected fault (Gradient emulator)"
    timeout_s: float = 0.0
    trickle_interval_s: float = 3.0


@dataclass
class FaultConfig:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    drop_rate: float = 0.0
    lost_response_rate: float = 0.0
    maintenance_rate: float = 0.0
    empty_answer_rate: float = 0.0
    trickle_rate: float = 0.0
    trickle_interval_seconds: float = 3.0
    rate_limit_per_second: int | None = None
    paths: list[str] | None = None
    # Only requests of these methods (e.g. ``["POST"]`` with ``paths=["/service/"]``: count calls).
    methods: list[str] | None = None
    seed: int | None = None
    fail_next: list[OneShotFault] = field(default_factory=list)


def _number(raw: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"faults.{key} must be a number in [{low}, {high}]")
    return float(value)


def _status(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise BadRequest(f"faults.{key} must be an HTTP status in 400..599")
    return value


def _parse_one_shot(raw: Any) -> OneShotFault:
    if not isinstance(raw, Mapping):
        raise BadRequest("faults.fail_next items must be objects")
    unknown = set(raw) - {"path_prefix", "status", "action", "method", "message"}
    if unknown:
        raise BadRequest(f"faults.fail_next: unknown keys {sorted(unknown)}")
    prefix = raw.get("path_prefix", "")
    action = raw.get("action", "error")
    method = raw.get("method")
    message = raw.get("message")
    if not isinstance(prefix, str):
        raise BadRequest("faults.fail_next.path_prefix must be a string")
    if action not in _FAULT_KINDS:
        raise BadRequest(f"faults.fail_next.action must be one of {list(_FAULT_KINDS)}")
    if method is not None and not isinstance(method, str):
        raise BadRequest("faults.fail_next.method must be a string")
    if message is not None and not isinstance(message, str):
        raise BadRequest("faults.fail_next.message must be a string")
    return OneShotFault(
        path_prefix=prefix,
        status=_status(raw.get("status", 503), "fail_next.status"),
        action=action,
        method=method.upper() if method else None,
        message=message,
    )


def parse_fault_config(raw: Any) -> FaultConfig:
    """Validate a ``PUT /_admin/faults`` body; unknown keys are rejected to catch typos."""
    if not isinstance(raw, Mapping):
        raise BadRequest("faults body must be a JSON object")
    unknown = set(raw) - {f for f in FaultConfig.__dataclass_fields__}
    if unknown:
        raise BadRequest(f"unknown fault settings: {sorted(unknown)}")
    config = FaultConfig(
        latency_ms=_number(raw, "latency_ms", 0.0, 0.0, 600_000.0),
        error_rate=_number(raw, "error_rate", 0.0, 0.0, 1.0),
        error_status=_status(raw.get("error_status", 503), "error_status"),
        timeout_rate=_number(raw, "timeout_rate", 0.0, 0.0, 1.0),
        timeout_seconds=_number(raw, "timeout_seconds", 30.0, 0.001, 3600.0),
        drop_rate=_number(raw, "drop_rate", 0.0, 0.0, 1.0),
        lost_response_rate=_number(raw, "lost_response_rate", 0.0, 0.0, 1.0),
        maintenance_rate=_number(raw, "maintenance_rate", 0.0, 0.0, 1.0),
        empty_answer_rate=_number(raw, "empty_answer_rate", 0.0, 0.0, 1.0),
        trickle_rate=_number(raw, "trickle_rate", 0.0, 0.0, 1.0),
        trickle_interval_seconds=_number(raw, "trickle_interval_seconds", 3.0, 0.001, 600.0),
    )
    if sum(getattr(config, name) for name, _ in _RATE_SETTINGS) > 1.0:
        names = " + ".join(name for name, _ in _RATE_SETTINGS)
        raise BadRequest(f"{names} must not exceed 1.0")
    limit = raw.get("rate_limit_per_second")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BadRequest("faults.rate_limit_per_second must be a positive integer")
    config.rate_limit_per_second = limit
    paths = raw.get("paths")
    if paths is not None and (not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)):
        raise BadRequest("faults.paths must be a list of path prefixes")
    config.paths = paths
    methods = raw.get("methods")
    if methods is not None and (not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)):
        raise BadRequest("faults.methods must be a list of HTTP methods, e.g. [\"POST\"]")
    config.methods = [m.upper() for m in methods] if methods is not None else None
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("faults.seed must be an integer")
    config.seed = seed
    fail_next = raw.get("fail_next", [])
    if not isinstance(fail_next, list):
        raise BadRequest("faults.fail_next must be a list")
    config.fail_next = [_parse_one_shot(item) for item in fail_next]
    return config


def path_matches(prefix: str, path: str, api_prefix: str) -> bool:
    """Match a prefix against the full path or the path relative to the API mount point."""
    relative = path[len(api_prefix) :] if path.startswith(api_prefix) else path
    return path.startswith(prefix) or relative.startswith(prefix)


class FaultInjector:
    """Holds the fault settings and decides, request by request, which fault (if any) applies."""

    def __init__(self, api_prefix: str) -> None:
        self._api_prefix = api_prefix
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._rng = random.Random()
        self._generation = 0

    def configure(self, config: FaultConfig) -> None:
        """Replace the settings; requests held by a timeout fault are released."""
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)
            self._generation += 1

    @property
    def generation(self) -> int:
        """Changes whenever held requests must be released (new settings, server stopping)."""
        with self._lock:
            return self._generation

    def release_held(self) -> None:
        with self._lock:
            self._generation += 1

    def reset(self) -> None:
        self.configure(FaultConfig())

    @property
    def rate_limit_override(self) -> int | None:
        with self._lock:
            return self._config.rate_limit_per_second

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._config)

    def decide(self, method: str, path: str) -> FaultAction | None:
        with self._lock:
            one_shot = self._pop_one_shot(method, path)
            if one_shot is not None:
                return one_shot
            return self._random_action(method, path)

    def _pop_one_shot(self, method: str, path: str) -> FaultAction | None:
        for index, fault in enumerate(self._config.fail_next):
            if fault.method not in (None, method) or not path_matches(
                fault.path_prefix, path, self._api_prefix
            ):
                continue
            del self._config.fail_next[index]
            return FaultAction(
                kind=fault.action,
                status=fault.status,
                message=fault.message or FaultAction.message,
                timeout_s=self._config.timeout_seconds,
                trickle_interval_s=self._config.trickle_interval_seconds,
            )
        return None

    def _random_action(self, method: str, path: str) -> FaultAction | None:
        config = self._config
        if config.paths is not None and not any(
            path_matches(p, path, self._api_prefix) for p in config.paths
        ):
            return None
        if config.methods is not None and method not in config.methods:
            return None
        latency = config.latency_ms / 1000.0
        draw = self._rng.random()
        kind: FaultKind | None = None
        bound = 0.0
        for name, candidate in _RATE_SETTINGS:
            bound += getattr(config, name)
            if draw < bound:
                kind = candidate
                break
        if kind is None and latency == 0:
            return None
        return FaultAction(
            kind=kind,
            latency_s=latency,
            status=config.error_status,
            timeout_s=config.timeout_seconds,
            trickle_interval_s=config.trickle_interval_seconds,
        )
