"""The adaptive rate limiter: within the rate, slower after 429, back to speed when quiet.

The limiter lives in the time it is given: these tests give it a fake clock that moves only
when the limiter sleeps on it, so they assert the schedule exactly and wait for nothing. One
test keeps the real clock and sleep, to prove they are what a limiter uses by default.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from avatarbatch.runware.limits import RECOVER_AFTER, RateLimiter


class FakeTime:
    """A monotonic clock that moves only when someone sleeps on it."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would


def limiter_in(fake: FakeTime, rps: float, **options: float) -> RateLimiter:
    return RateLimiter(rps, clock=fake.clock, sleep=fake.sleep, **options)


async def timestamps(limiter: RateLimiter, fake: FakeTime, count: int) -> list[float]:
    stamps = []
    for _ in range(count):
        await limiter.acquire()
        stamps.append(fake.now)
    return stamps


def most_in_any_window(stamps: list[float], window: float = 1.0) -> int:
    return max(sum(1 for t in stamps if start <= t < start + window) for start in stamps)


async def test_requests_stay_within_the_rate() -> None:
    fake = FakeTime()
    stamps = await timestamps(limiter_in(fake, 20), fake, 45)
    assert most_in_any_window(stamps) == 20
    assert stamps[-1] - stamps[0] == pytest.approx(2.0)  # 45 requests need three windows


async def test_a_burst_up_to_the_rate_goes_out_at_once() -> None:
    fake = FakeTime()
    stamps = await timestamps(limiter_in(fake, 16), fake, 16)
    assert stamps == [stamps[0]] * 16
    assert fake.slept == []
    await limiter_in(fake, 16).acquire()  # a limiter of its own: no wait either
    assert fake.slept == []


async def test_fractional_rates_work() -> None:
    fake = FakeTime()
    stamps = await timestamps(limiter_in(fake, 0.5), fake, 3)
    assert [b - a for a, b in itertools.pairwise(stamps)] == pytest.approx([2.0, 2.0])


async def test_common_429s_halve_the_rate_and_pause_for_retry_after() -> None:
    fake = FakeTime()
    limiter = limiter_in(fake, 8)
    limiter.throttled(0.3)
    assert limiter.current_rps == 8  # one refusal with nothing else sent: not yet overload
    limiter.throttled(0.3)
    limiter.throttled(0.3)
    limiter.throttled(0.3)
    limiter.throttled(0.3)
    assert limiter.current_rps == 4  # one burst of refusals halves the rate once
    started = fake.now
    await limiter.acquire()
    assert fake.now - started == pytest.approx(0.3)
    assert limiter.throttles == 5


async def test_a_stray_429_among_many_requests_does_not_slow_everyone() -> None:
    fake = FakeTime()
    limiter = limiter_in(fake, 100)
    for _ in range(40):
        await limiter.acquire()
    limiter.throttled(1.0)
    limiter.throttled(1.0)
    assert limiter.current_rps == 100
    await limiter.acquire()
    assert fake.slept == []  # no global pause


async def test_rate_never_drops_below_the_floor() -> None:
    fake = FakeTime(0.0)
    limiter = limiter_in(fake, 1, min_rps=0.25)
    for _ in range(10):
        for _ in range(5):
            limiter.throttled(None)
        fake.now += 1.0
    assert limiter.current_rps == 0.25


async def test_rate_recovers_after_a_quiet_period() -> None:
    fake = FakeTime()
    limiter = limiter_in(fake, 10)
    for _ in range(5):
        limiter.throttled(None)
    assert limiter.current_rps == 5
    fake.now += RECOVER_AFTER
    await limiter.acquire()
    assert limiter.current_rps == 6.25
    for _ in range(5):
        fake.now += RECOVER_AFTER
        await limiter.acquire()
    assert limiter.current_rps == 10


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


async def test_concurrent_callers_share_one_rate() -> None:
    fake = FakeTime()
    limiter = limiter_in(fake, 30)
    results = await asyncio.gather(*(timestamps(limiter, fake, 4) for _ in range(10)))
    stamps = sorted(t for group in results for t in group)
    assert most_in_any_window(stamps) == 30
    assert stamps[-1] - stamps[0] == pytest.approx(1.0)  # 40 requests need two windows


async def test_by_default_the_limiter_waits_in_real_time() -> None:
    limiter = RateLimiter(8)
    for _ in range(5):
        limiter.throttled(0.05)
    started = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - started >= 0.045
