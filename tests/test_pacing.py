"""The Gradient pacer (pipeline/gradient/pacing.py) on a virtual clock: no timing assertion here
depends on the machine's speed.

``VirtualLoop`` is a real asyncio event loop whose ``time()`` is a simulated clock. When the loop
would block waiting for its next timer, the clock jumps to that timer plus a random wake-up
latency; every loop iteration also costs a little random CPU time. So ``asyncio.sleep`` returns
late by a random amount, as on a busy machine, and the pacer runs its real code path.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import selectors

import pytest

from pipeline.gradient.pacing import Pacer


class VirtualClock:
    def __init__(self, rng: random.Random, wake_up_latency: float, iteration_cost: float) -> None:
        self.now = 1000.0
        self.rng = rng
        self.wake_up_latency = wake_up_latency
        self.iteration_cost = iteration_cost


class VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None):  # type: ignore[override]
        events = super().select(0)
        clock = self.clock
        clock.now += clock.rng.uniform(0, clock.iteration_cost)
        if not events and timeout is not None and timeout > 0:
            clock.now += timeout + clock.rng.uniform(0, clock.wake_up_latency)
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(VirtualSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.now


def run_virtual(coro_factory, *, seed: int, wake_up_latency: float = 0.002, iteration_cost: float = 0.0002):
    clock = VirtualClock(random.Random(seed), wake_up_latency, iteration_cost)
    loop = VirtualLoop(clock)
    try:
        return loop.run_until_complete(coro_factory())
    finally:
        loop.close()


def most_in_any_window(stamps: list[float], width: float = 1.0) -> int:
    """The most stamps in any half-open window [t, t + width)."""
    ordered = sorted(stamps)
    return max(bisect.bisect_left(ordered, t + width) - i for i, t in enumerate(ordered))


async def drive(
    pacer: Pacer, calls: int, *, workers: int, rng: random.Random, jitter: float, latency: tuple[float, float]
) -> tuple[list[float], list[float]]:
    """``workers`` tasks send ``calls`` requests in all; each request is released by the pacer,
    reaches the server ``d_min + U(0, jitter)`` later and is answered after ``latency``."""
    loop = asyncio.get_running_loop()
    released: list[float] = []
    arrivals: list[float] = []
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await pacer.acquire()
            now = loop.time()
            released.append(now)
            arrivals.append(now + 0.0005 + rng.uniform(0, jitter))
            await asyncio.sleep(rng.uniform(*latency))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return released, arrivals


def achieved_rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (max(stamps) - min(stamps))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("rate", [100, 1000])
def test_no_second_exceeds_the_limit_and_the_cadence_holds(seed: int, rate: int) -> None:
    """10,000 acquisitions, random wake-up latency (0-2 ms per sleep) and random arrival jitter
    at the server (0-20 ms, under the 25 ms guard): never more than ``rate`` arrivals in any
    1-second window, and >= 97 % of the rate sustained."""
    rng = random.Random(seed * 7919)
    pacer = Pacer(rate)
    released, arrivals = run_virtual(
        lambda: drive(pacer, 10_000, workers=32, rng=rng, jitter=0.020, latency=(0.018, 0.030)), seed=seed
    )
    assert len(released) == 10_000
    assert most_in_any_window(arrivals) <= rate
    assert most_in_any_window(released, pacer.window) <= pacer.limit
    assert achieved_rate(arrivals) >= 0.97 * rate, achieved_rate(arrivals)


def test_late_wake_ups_do_not_slow_the_cadence() -> None:
    """Wake-ups up to 8 ms late at 100/s (a capacity-one leaky bucket loses all of it: ~93 %)
    still give >= 97 % of the rate: the next slot counts from the reserved one."""
    rng = random.Random(5)
    pacer = Pacer(100)
    released, _ = run_virtual(
        lambda: drive(pacer, 3_000, workers=32, rng=rng, jitter=0.0, latency=(0.02, 0.02)),
        seed=5, wake_up_latency=0.008,
    )
    assert achieved_rate(released) >= 0.97 * 100
    assert most_in_any_window(released, pacer.window) <= 100


def test_a_slow_caller_gets_a_bounded_catch_up_burst() -> None:
    """After an idle second, at most burst / interval + 1 requests go at once."""

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        pacer = Pacer(100, burst_seconds=0.05)
        stamps = []
        for _ in range(10):
            await pacer.acquire()
            stamps.append(loop.time())
        await asyncio.sleep(1.0)
        start = loop.time()
        for _ in range(20):
            await pacer.acquire()
            stamps.append(loop.time() - start)
        return stamps[10:]

    after_idle = run_virtual(scenario, seed=9, wake_up_latency=0.0, iteration_cost=0.0)
    immediate = [t for t in after_idle if t < 1e-9]
    assert len(immediate) == math.floor(0.05 / Pacer(100).interval) + 1


def test_a_steady_caller_never_bursts() -> None:
    """With no lateness and no burst tolerance, releases are exactly one interval apart."""

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        pacer = Pacer(50, burst_seconds=0.0)
        stamps = []
        for _ in range(200):
            await pacer.acquire()
            stamps.append(loop.time())
        return stamps

    stamps = run_virtual(scenario, seed=3, wake_up_latency=0.0, iteration_cost=0.0)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    interval = Pacer(50).interval
    assert min(gaps) == pytest.approx(interval, abs=1e-9)
    assert max(gaps) == pytest.approx(interval, abs=1e-9)
    assert most_in_any_window(stamps) <= 50


def test_rates_below_one_per_second() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        pacer = Pacer(0.5)
        stamps = []
        for _ in range(5):
            await pacer.acquire()
            stamps.append(loop.time())
        return stamps

    stamps = run_virtual(scenario, seed=4)
    assert all(b - a >= 2.0 for a, b in zip(stamps, stamps[1:]))


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan])
def test_rate_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError):
        Pacer(bad)
