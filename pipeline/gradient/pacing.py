"""Client-side pacing for Gradient's rate limit: a cadence that keeps up, and a hard cap.

Gradient allows ``rate`` requests per second per vendor and answers 429 beyond it; its limit
behaves like a sliding-window log (at most ``rate`` accepted requests in any 1 s window,
the emulator's ``SlidingWindowRateLimiter``). ``Pacer.acquire()`` combines two rules:

1. **Cadence (GCRA / theoretical arrival time).** Slots are ``interval`` apart; a caller
   reserves the next slot when it asks (in the order callers ask) and sleeps until it. The next slot is computed from the *reserved*
   slot, not from when the sleeper actually woke up, so wake-up latency (event-loop
   scheduling, CPU contention; typically 0.1-2 ms per sleep) is not added to every
   interval: the cadence does not drift below the rate. A slot is never older than
   ``now - burst_seconds``: after the caller was slow or idle, at most
   ``burst_seconds / interval + 1`` requests go at once to catch up, no more.
2. **Cap (sliding-window log of actual sends).** The times at which the last ``limit``
   requests were released are kept; a request is released only when the ``limit``-th
   previous one is at least ``window = span + guard_seconds`` old. So, on the client's
   clock, *any* interval of length ``window`` holds at most ``limit`` releases, whatever the
   cadence did.

Parameters: ``limit = floor(rate)`` and ``span = 1 s`` when ``rate >= 1`` (``limit = 1``,
``span = 1 / rate`` below 1/s); ``interval = window / limit``, i.e. the cadence runs exactly
at the cap's sustainable rate ``limit / window`` and the cap only bites on jitter.

The bound, worked out:

* Cap alone. Let release ``i`` happen at ``r_i`` (client clock) and reach Gradient's
  limiter at ``a_i = r_i + d_i`` with ``d_i`` in ``[d_min, d_min + J]`` (J = the jitter of
  everything between the release and Gradient's check: building/writing the request, the
  network, the server's accept/parse). A Gradient window ``[t, t + 1)`` holds the arrivals
  of releases in ``[t - d_min - J, t + 1 - d_min)``, an interval of length ``1 + J``. If
  ``J <= guard_seconds`` that interval fits in one ``window``, hence
  **at most ``limit`` requests in any 1 s window at Gradient**, i.e. zero 429s caused by us.
* Cadence alone (no cap) would give at most ``floor((1 + burst + D) / interval) + 1`` in
  any 1 s window, where D is the largest wake-up latency (slots are at least ``interval``
  apart except for a catch-up of at most ``burst`` seconds' worth, each release is 0..D
  after its slot): above ``limit`` as soon as ``burst + D > guard``; that is why the cap is
  there. With both, a 1 s window holds ``min(limit, that)``.
* Throughput: as long as every waiter wakes up less than ``burst_seconds`` after its slot,
  the slots stay on the schedule and the sustained rate is ``limit / window`` =
  ``rate / (1 + guard)`` (97.6 % of 100/s with the default 25 ms guard). A release the cap
  delays (its predecessor ``limit`` back woke up late, then it woke early) is late by at
  most two wake-up latencies and does not move later slots.

Measured on the emulator (``python -m bench.load_probe``; 20 ms latency, same 2-core machine):
50,099 count calls at limit 100 in 518 s, 96.6 % of the limit, never more than 100 accepted in
any 1 s window, 99 429s (0.2 %); 20,005 calls at limit 1000: 860/s. Arrival minus release is
~0.7 ms at the median and < 25 ms at p99; the 429s come in clusters about 1 s after a stall of
the emulator's own process (its full garbage collections, 86-272 ms as its request log grows):
the requests held during the stall reach its limiter together and fill its window for the next
second. No guard compatible with 95 % of the limit absorbs a 100+ ms stall; correcting the
window's stamps from late answers (a release answered late arrived late) would; not built yet.
With the emulator's collector paused (``gradient-billing-sync bench --scale large``): 50,017
count calls at limit 100 in 519.5 s, 97.2 % of the limit, 8 429s (retried).

The pacer is per-process: one per ``GradientClient``; concurrent runs each get their own
budget (see ``pipeline.gradient.client``).
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left, bisect_right, insort

DEFAULT_GUARD_SECONDS = 0.025
DEFAULT_BURST_SECONDS = 0.05


class Pacer:
    """At most ``rate`` requests/s, released on a steady cadence; ``await pacer.acquire()``
    before each request, and ``pacer.answered(release, at)`` when its answer comes. Time is the
    running event loop's ``loop.time()`` (monotonic). Not thread-safe: use it from one event loop."""

    def __init__(
        self,
        rate: float,
        *,
        guard_seconds: float = DEFAULT_GUARD_SECONDS,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if guard_seconds < 0 or burst_seconds < 0:
            raise ValueError("guard_seconds and burst_seconds must be >= 0")
        self.rate = float(rate)
        self.limit = int(math.floor(rate)) if rate >= 1 else 1
        span = 1.0 if rate >= 1 else 1.0 / rate
        self.window = span + guard_seconds
        self.interval = self.window / self.limit
        self.burst_seconds = burst_seconds
        self._next_slot = -math.inf
        # The window log: one stamp per request (its release, or its corrected stamp once
        # answered), sorted, only stamps later than ``_cutoff`` (the last pruning's
        # ``now - window``): every request whose stamp is later than ``_cutoff`` has it here.
        self._stamps: list[float] = []
        self._cutoff = -math.inf
        self.min_round_trip = math.inf
        self.corrections = 0

    def __repr__(self) -> str:
        return f"Pacer(limit={self.limit}, window={self.window:.3f}s, interval={self.interval * 1e3:.2f}ms)"

    async def acquire(self) -> float:
        """Reserve the next slot and sleep until it, then wait for the cap; record the release
        and return its time (pass it to ``answered``).

        No lock: each caller reserves its own slot at once and sleeps on its own timer, so
        several releases can fall in one event-loop iteration (a lock handed from waiter to
        waiter costs one loop iteration per request, which capped a busy loop at ~250/s).
        A caller whose slot has come returns without yielding.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(self._next_slot, now - self.burst_seconds)
        self._next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
            now = loop.time()
        stamps = self._stamps
        while True:
            cutoff = now - self.window
            if stamps and stamps[0] <= cutoff:
                del stamps[: bisect_right(stamps, cutoff)]
                self._cutoff = cutoff
            over = len(stamps) - self.limit
            if over < 0:
                break
            # The (over + 1) oldest stamps must leave the window: wait for the newest of them.
            await asyncio.sleep(stamps[over] + self.window - now)
            now = loop.time()
        stamps.append(now)  # no stamp is later than now: corrected ones are <= their answer
        return now

    def answered(self, released: float, at: float, *, sample: bool = True) -> None:
        """The request released at ``released`` (``acquire``'s return value) was answered at
        ``at`` (loop time, when its response headers were read). Its stamp moves to
        ``max(released, at - min_round_trip)``: answered late, it arrived late. With
        ``sample`` (default) its round trip also updates ``min_round_trip``; pass
        ``sample=False`` for answers that skip the server's normal path (429s are answered
        before the work and its latency). Call it at most once per release; a request never
        answered (refused, timed out) is simply not reported and keeps its release stamp."""
        round_trip = at - released
        if sample and 0 <= round_trip < self.min_round_trip:
            self.min_round_trip = round_trip
        stamp = at - self.min_round_trip
        if not stamp > released:
            return
        self.corrections += 1
        stamps = self._stamps
        cutoff = self._cutoff
        if released > cutoff:
            del stamps[bisect_left(stamps, released)]
        if stamp > cutoff:
            insort(stamps, stamp)
