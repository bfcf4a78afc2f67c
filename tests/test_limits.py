"""The adaptive rate limiter: within the rate, slower after 429, back to speed when quiet."""

from __future__ import annotations

import asyncio
import time

import pytest

from avatarbatch.runware.limits import RECOVER_AFTER, RateLimiter


async def timestamps(limiter: RateLimiter, count: int) -> list[float]:
    stamps = []
    for _ in range(count):
        await limiter.acquire()
        stamps.append(time.monotonic())
    return stamps


def most_in_any_window(stamps: list[float], window: float = 1.0) -> int:
    return max(sum(1 for t in stamps if start <= t < start + window) for start in stamps)


async def test_requests_stay_within_the_rate() -> None:
    stamps = await timestamps(RateLimiter(20), 45)
    assert most_in_any_window(stamps) <= 20
    assert stamps[-1] - stamps[0] >= 2.0  # 45 requests need three windows


async def test_a_burst_up_to_the_rate_goes_out_at_once() -> None:
    stamps = await timestamps(RateLimiter(16), 16)
    assert stamps[-1] - stamps[0] < 0.1


async def test_fractional_rates_work() -> None:
    limiter = RateLimiter(0.5)
    stamps = await timestamps(limiter, 2)
    assert stamps[1] - stamps[0] == pytest.approx(2.0, abs=0.1)


async def test_common_429s_halve_the_rate_and_pause_for_retry_after() -> None:
    limiter = RateLimiter(8)
    limiter.throttled(0.3)
    assert limiter.current_rps == 8  # one refusal with nothing else sent: not yet overload
    limiter.throttled(0.3)
    limiter.throttled(0.3)
    limiter.throttled(0.3)
    limiter.throttled(0.3)
    assert limiter.current_rps == 4  # one burst of refusals halves the rate once
    started = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - started >= 0.29
    assert limiter.throttles == 5


async def test_a_stray_429_among_many_requests_does_not_slow_everyone() -> None:
    limiter = RateLimiter(100)
    for _ in range(40):
        await limiter.acquire()
    limiter.throttled(1.0)
    limiter.throttled(1.0)
    assert limiter.current_rps == 100
    started = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - started < 0.5  # no global pause


async def test_rate_never_drops_below_the_floor() -> None:
    now = [0.0]
    limiter = RateLimiter(1, min_rps=0.25, clock=lambda: now[0])
    for _ in range(10):
        for _ in range(5):
            limiter.throttled(None)
        now[0] += 1.0
    assert limiter.current_rps == 0.25


async def test_rate_recovers_after_a_quiet_period() -> None:
    now = [100.0]
    limiter = RateLimiter(10, clock=lambda: now[0])
    for _ in range(5):
        limiter.throttled(None)
    assert limiter.current_rps == 5
    now[0] += RECOVER_AFTER
    await limiter.acquire()
    assert limiter.current_rps == 6.25
    for _ in range(5):
        now[0] += RECOVER_AFTER
        await limiter.acquire()
    assert limiter.current_rps == 10


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


async def test_concurrent_callers_share_one_rate() -> None:
    limiter = RateLimiter(30)
    results = await asyncio.gather(*(timestamps(limiter, 4) for _ in range(10)))
    stamps = sorted(t for group in results for t in group)
    assert most_in_any_window(stamps) <= 30
