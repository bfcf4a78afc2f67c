"""The request-rate limiter every API request passes through, adaptive to 429 answers.

Runware publishes no fixed rate limit: overload shows as 429 with Retry-After. So the limiter
starts at the user's `--rps`, halves the rate and pauses for Retry-After on each 429, and
creeps back up (x1.25 every few quiet seconds) to `--rps` once the API stops complaining.
A sliding window log, not a leaky bucket: "at most rps requests in any one-second window" is
exactly what users expect `--rps` to mean, and it lets a wave of submissions go out together
instead of trickling out one every 1/rps seconds (aiolimiter's bucket either forbids bursts or
lets up to twice the rate through in a second, so it is not used).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("avatarbatch.limits")

RECOVER_AFTER = 5.0  #: quiet seconds before the rate is raised again
RECOVER_FACTOR = 1.25
RECENT = 2.0  #: seconds of history that decide whether 429s are common
OVERLOAD_SHARE = 0.2  #: this share of recent requests refused means the API is overloaded
MIN_RPS = 0.2  #: the rate never halves below this (or the target, if lower)
#: Requests answered together come back 429 together: the rate halves at most once per this.
HALVING_INTERVAL = 1.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class SlidingWindow:
    """At most `count` acquisitions in any `period` seconds."""

    def __init__(self, rps: float, clock: Clock, sleep: Sleep = asyncio.sleep) -> None:
        # Below one request per second, the window widens instead: 0.5 rps = 1 per 2 s.
        self.count = max(1, int(rps))
        self.period = self.count / rps
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                while self._sent and self._sent[0] <= now - self.period:
                    self._sent.popleft()
                if len(self._sent) < self.count:
                    self._sent.append(now)
                    return
                await self._sleep(self._sent[0] + self.period - now)


class RateLimiter:
    """A shared gate for API requests (implements transport.RequestGate).

    `clock` and `sleep` are the time it lives in: monotonic seconds and asyncio's sleep, or a
    test's fake ones.
    """

    def __init__(
        self,
        rps: float,
        *,
        min_rps: float = MIN_RPS,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rps <= 0:
            raise ValueError("rps must be positive")
        self.target_rps = rps
        self.min_rps = min(min_rps, rps)
        self.current_rps = rps
        self._clock = clock
        self._sleep = sleep
        self._bucket = SlidingWindow(rps, clock, sleep)
        self._paused_until = 0.0
        self._last_throttle = float("-inf")
        self._last_halving = float("-inf")
        self.throttles = 0
        self._requests: deque[float] = deque()  #: recent request times
        self._refusals: deque[float] = deque()  #: recent 429 times

    async def acquire(self) -> None:
        """Wait for a request slot: after any Retry-After pause, then within the rate."""
        self._maybe_recover()
        while (wait := self._paused_until - self._clock()) > 0:
            await self._sleep(wait)
        await self._bucket.acquire()
        self._requests.append(self._clock())

    def throttled(self, retry_after: float | None) -> None:
        """The API answered 429. If 429s have become common, pause and slow everyone down.

        A stray 429 only delays its own request (the client's retry waits its Retry-After);
        reacting to every one would let a few random refusals starve a healthy batch. Once at
        least OVERLOAD_SHARE of recent requests were refused, the API is overloaded: all
        requests pause for Retry-After and the rate halves (at most once per
        HALVING_INTERVAL, since requests sent together come back 429 together).
        """
        now = self._clock()
        self.throttles += 1
        self._last_throttle = now
        self._refusals.append(now)
        while self._refusals and self._refusals[0] < now - RECENT:
            self._refusals.popleft()
        while self._requests and self._requests[0] < now - RECENT:
            self._requests.popleft()
        refused = len(self._refusals)
        if refused < 2 or refused < OVERLOAD_SHARE * len(self._requests):
            return
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        if now - self._last_halving < HALVING_INTERVAL:
            return
        self._last_halving = now
        slower = max(self.min_rps, self.current_rps / 2)
        if slower < self.current_rps:
            self._set_rate(slower)
            log.info("API overloaded (429s): now %.2f requests/s", slower)

    def _maybe_recover(self) -> None:
        if self.current_rps >= self.target_rps:
            return
        if self._clock() - self._last_throttle >= RECOVER_AFTER:
            self._set_rate(min(self.target_rps, self.current_rps * RECOVER_FACTOR))
            self._last_throttle = self._clock()  # one step per quiet period

    def _set_rate(self, rps: float) -> None:
        self.current_rps = rps
        self._bucket = SlidingWindow(rps, self._clock, self._sleep)
