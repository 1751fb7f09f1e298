"""Client-side pacing for Gradient's rate limit: a cadence that keeps up, and a hard cap.

Gradient allows ``rate`` requests per second per vendor and answers 429 beyond it; its limit
behaves like a sliding-window log (at most ``rate`` accepted requests in any 1 s window,
the emulator's ``SlidingWindowRateLimiter``). ``Pacer`` combines three rules:

1. **Cadence (GCRA / theoretical arrival time).** Slots are ``interval`` apart; a caller
   reserves the next slot when it asks (in the order callers ask) and sleeps until it. The
   next slot is computed from the *reserved* slot, not from when the sleeper actually woke
   up, so wake-up latency (event-loop scheduling, CPU contention; typically 0.1-2 ms per
   sleep) is not added to every interval: the cadence does not drift below the rate. A
   slot is never older than ``now - burst_seconds``: after the caller was slow or idle, at
   most ``burst_seconds / interval + 1`` requests go at once to catch up, no more.
2. **Cap (sliding-window log of stamps).** Each request leaves one stamp in a log: its
   release time, moved later once its answer shows it arrived late (3.). A request is
   released only when fewer than ``limit`` stamps lie in the last
   ``window = span + guard_seconds``. Stamps are never earlier than their releases, so on the
   client's clock *any* interval of length ``window`` still holds at most ``limit``
   releases, whatever the cadence did.
3. **Corrections from answers.** The client reports each answer: ``answered(release, at)``,
   ``at`` = when its response headers were read. The pacer keeps ``min_round_trip`` (``m``),
   the smallest ``at - release`` seen, and moves that request's stamp to
   ``max(release, at - m)``: answered late, it also arrived late. Corrections only move
   stamps later, which can reorder them, so the log is a list kept sorted (``insort``; the
   release being replaced is found by bisection), pruned from the front: O(log n) search plus
   a memmove of at most ~``limit`` floats per request (8 KB at 1000/s), no scan.

   ``m`` is the minimum over everything seen, not over a recent horizon. A too-large ``m``
   is the unsafe direction (late arrivals under-corrected): an overall minimum can only be too
   large before the first answer on a faster path and falls at that answer, while a
   horizon's minimum rises during a long stall (every answer in the horizon late), exactly
   when it must not. A too-small ``m`` is safe: stamps move later by ``true minimum - m``,
   which costs that over ``window`` of throughput. So answers that skip the server's work
   (429s) are reported with ``sample=False``; a path that becomes slower for good leaves
   ``m`` small: safe, and the cost above.

Parameters: ``limit = floor(rate)`` and ``span = 1 s`` when ``rate >= 1`` (``limit = 1``,
``span = 1 / rate`` below 1/s); ``interval = window / limit``, i.e. the cadence runs exactly
at the cap's sustainable rate ``limit / window`` and the cap only bites on jitter.

The bound, worked out:

* Cap with corrections. Let request ``j`` be released at ``r_j`` (client clock), counted by
  Gradient's limiter at ``a_j`` and answered (headers read by the client) at ``h_j``. Let
  ``d_min = min(a - r)`` and ``s_min = min(h - a)`` over the requests Gradient counts (the
  emulator does not count those it answers 429; the clocks' offset cancels in the sum), and
  ``eps = m - d_min - s_min >= 0``: the fastest round trip seen need not have had both the
  fastest way there and the fastest way back (the client's event-loop lag in reading the
  answer is part of it). A reported request's stamp is
  ``c_j >= h_j - m >= a_j + s_min - m = a_j - d_min - eps``, and ``a_i >= r_i + d_min``
  for all. Suppose a Gradient window ``[t, t + 1)`` held ``limit + 1`` arrivals, and let
  ``i`` be the last of them released. When ``i`` was released, fewer than ``limit`` stamps
  were in ``(r_i - window, r_i]``, so some other one, ``j``, had a stamp
  ``<= r_i - window <= a_i - d_min - window < t - d_min - guard``. Had ``j``'s answer been
  reported by then, its stamp was ``>= a_j - d_min - eps >= t - d_min - eps``: impossible
  if ``eps <= guard``. Otherwise its stamp was its release ``r_j <= r_i - window`` and its
  answer came after ``r_i``: a round trip longer than ``window``. Hence **at most ``limit``
  requests in any 1 s window at Gradient, zero 429s caused by us, provided (a) ``eps <=
  guard`` and (b) every request Gradient counts is answered within ``window`` (1.025 s) of
  its release**, whatever the jitter or stall between release and arrival: the guard no
  longer has to cover the arrival jitter, a late arrival is covered by its late answer.
  Where (b) fails (a stall longer than ~1 s, a request counted but whose answer was lost
  or timed out: it keeps its release stamp), the bound without corrections below applies
  to that request.
* Cap without corrections (nothing reported, e.g. a caller that never calls ``answered``).
  Let ``a_i = r_i + d_i`` with ``d_i`` in ``[d_min, d_min + J]`` (J = the jitter of
  everything between the release and Gradient's check: building/writing the request, the
  network, the server's accept/parse). A Gradient window ``[t, t + 1)`` holds the arrivals
  of releases in ``[t - d_min - J, t + 1 - d_min)``, an interval of length ``1 + J``. If
  ``J <= guard_seconds`` that interval fits in one ``window``: at most ``limit``. A stall of
  the server longer than the guard breaks this (the requests released during it arrive
  together, compressed); that is what the corrections are for.
* Cadence alone (no cap) would give at most ``floor((1 + burst + D) / interval) + 1`` in
  any 1 s window, where D is the largest wake-up latency (slots are at least ``interval``
  apart except for a catch-up of at most ``burst`` seconds' worth, each release is 0..D
  after its slot): above ``limit`` as soon as ``burst + D > guard``; that is why the cap is
  there. With both, a 1 s window holds ``min(limit, that)``.
* Throughput: as long as every waiter wakes up less than ``burst_seconds`` after its slot,
  the slots stay on the schedule and the cadence's rate is ``limit / window`` =
  ``rate / (1 + guard)`` (97.6 % of 100/s with the default 25 ms guard). A release the cap
  delays (its predecessor ``limit`` back woke up late, then it woke early) is late by at
  most two wake-up latencies and does not move later slots. Corrections cost what they
  move. Stamps later by ``delta_j = h_j - r_j - m`` (the round trip's excess over the
  minimum) keep the window fuller: about ``limit / (window + mean(delta))`` sustained (on the
  emulator, on a loaded 2-core machine, ``mean(delta)`` was 6-10 ms at 100/s, mostly the
  client's event-loop lag in reading answers: -0.6 to -0.9 %). After a stall of ``S`` seconds, the ~``rate * S`` requests it held
  are stamped at its end and leave the window together one ``window`` later; the cap holds
  the releases due in the last ``S`` before that, and their callers then go together (they
  did arrive together at Gradient: the echo of the stall, one ``window`` later). Slots are
  honoured late as long as callers (``max_concurrency``) suffice; when the held callers use
  them all, slots older than ``burst_seconds`` are lost. On the virtual clock
  (tests/test_pacing.py: stalls of 100-300 ms every ~2 s, i.e. ~9 % of the time stalled, far
  more than the emulator's) 95.1-96.1 % of the rate at 100/s and 1000/s over 3 seeds, no
  1 s window of arrivals over the limit; the same runs without corrections keep 97.6 % but
  put 126-128 (of 100) and 1255-1280 (of 1000) arrivals in some second.

Measured on the emulator (``python -m bench.load_probe --limit 100 --calls 50000``: 20 ms
latency, its sliding-window limiter, its garbage collector left on so that its full
collections stall it; a 2-core machine shared with a PostgreSQL benchmark, so rates are
noisy). Before the corrections: 50,099 count calls at limit 100, 96.6 % of the limit, 99
429s, in clusters ~1 s after the emulator's stalls (86-272 ms); with its collector paused
(``gradient-billing-sync bench --scale large``) 97.2 % and 8 429s over 50,017 calls. With
them: 50,000 count calls at limit 100 in 517 s, **0 429s**, never more than 100 accepted in
any 1 s window, 96.7 % of the limit, through 5 stalls of 90-250 ms (mean stamp shift 4.2 ms,
0.9 cap wake-ups per call); an earlier 50,000-call run, before the cap's wake-ups counted the
callers already waiting (7.6 wake-ups per call then): 0 429s, 95.3 %, through stalls of
175-676 ms; three 20,000-call runs: 0 429s each, 96.2-96.5 % and 95.6 %; the same 20,000
calls with ``--no-corrections``: 64 429s (e.g. a cluster ~1 s after a 96 ms stall), 96.8 %.
The minimum round trip settles at 19.9-20.3 ms (the emulator's 20 ms sleep). At limit 1000,
20,000 calls (``--limit 1000 --calls 20000``), with corrections: 397, 445, 674 and 695/s in
four runs, 0 429s, stamps moved 14-26 ms on average (mostly the client's event-loop lag in
reading answers), the cap waited 0 times in the last run: the sustainable
``limit / (window + mean shift)`` ~950/s stays far above what the machine delivered; without
corrections 339 and 564/s: the machine's load, not the pacer, sets that rate. An
``answered`` call costs ~1 us with 1000 stamps in the log.

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
    before each request, and ``pacer.answered(release, at)`` when its answer comes. Time is
    the running event loop's ``loop.time()`` (monotonic). Not thread-safe: use it from one
    event loop."""

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
        # Figures: answers reported, how many moved a stamp, by how much in all; waits on the cap.
        self.answers = 0
        self.corrections = 0
        self.corrected_seconds = 0.0
        self.cap_waits = 0
        self._cap_sleepers = 0

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
            # The (over + 1) oldest stamps must leave the window, and one more for each caller
            # already waiting here (each of them takes one slot first): wait for the newest.
            # Without counting those, every waiter woke at each expiry and all but one slept
            # again (7.6 wake-ups per request at 100/s on the emulator). The check above is
            # what decides; this only picks the wake-up.
            self.cap_waits += 1
            expiry = stamps[min(over + self._cap_sleepers, len(stamps) - 1)] + self.window
            self._cap_sleepers += 1
            try:
                await asyncio.sleep(expiry - now)
            finally:
                self._cap_sleepers -= 1
            now = loop.time()
        insort(stamps, now)  # at the end: corrected stamps are <= their answer <= now
        return now

    def answered(self, released: float, at: float, *, sample: bool = True) -> None:
        """The request released at ``released`` (``acquire``'s return value) was answered at
        ``at`` (loop time, when its response headers were read). Its stamp moves to
        ``max(released, at - min_round_trip)``: answered late, it arrived late. With
        ``sample`` (default) its round trip also updates ``min_round_trip``; pass
        ``sample=False`` for answers that skip the server's normal path (429s are answered
        before the work and its latency). Call it at most once per release; a request never
        answered (refused, timed out) is simply not reported and keeps its release stamp."""
        self.answers += 1
        round_trip = at - released
        if sample and 0 <= round_trip < self.min_round_trip:
            self.min_round_trip = round_trip
        stamp = at - self.min_round_trip
        if not stamp > released:
            return
        self.corrections += 1
        self.corrected_seconds += stamp - released
        stamps = self._stamps
        cutoff = self._cutoff
        if released > cutoff:
            i = bisect_left(stamps, released)
            if i < len(stamps) and stamps[i] == released:  # else: reported twice, or not ours
                del stamps[i]
        if stamp > cutoff:
            insort(stamps, stamp)
