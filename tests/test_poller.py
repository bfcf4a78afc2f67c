"""The poller on a fake clock: tasks are found soon after they end, in few POSTs.

Renders end at set times of a fake clock that moves only while the poller sleeps, so the
tests measure what the poller decides, never how busy the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

from avatarbatch.config import PollTiming
from avatarbatch.engine.poller import Poller
from avatarbatch.runware.client import TaskState, VideoResult


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakeApi:
    """Renders take `latency` seconds per audio second plus `fixed`, on the fake clock."""

    def __init__(self, time: FakeTime, *, latency: float = 0.0, fixed: float = 0.0) -> None:
        self.time = time
        self.latency = latency
        self.fixed = fixed
        self.ends: dict[str, float] = {}
        self.posts = 0
        self._numbers = itertools.count()

    def submit(self, audio_seconds: float) -> str:
        uuid = f"task-{next(self._numbers)}"
        self.ends[uuid] = self.time.now + self.fixed + self.latency * audio_seconds
        return uuid

    async def poll(self, task_uuids: Iterable[str]) -> dict[str, TaskState]:
        self.posts += 1
        states = {}
        for uuid in task_uuids:
            state = TaskState(uuid, answered=True, processing=1)
            if self.time.now >= self.ends[uuid]:
                video = VideoResult(taskUUID=uuid, videoUUID=f"v-{uuid}", videoURL="https://cdn/v")
                state = TaskState(uuid, results=[video], answered=True)
            states[uuid] = state
        return states


def watched(
    api: FakeApi, poller: Poller, audio_seconds: float
) -> tuple[float, asyncio.Future[TaskState]]:
    """Submit a task and watch it; returns when it was submitted and its future."""
    started = api.time.now
    return started, poller.watch(api.submit(audio_seconds), 1, audio_seconds)


async def test_waves_of_tasks_are_found_soon_after_they_end() -> None:
    render = 0.4
    time = FakeTime()
    api = FakeApi(time, fixed=render)
    poller = Poller(api, PollTiming(initial=0.1, blind_min=0.1), time.clock, time.sleep)
    waits: list[list[float]] = []
    posts: list[int] = []
    for _ in range(4):
        before = api.posts
        wave = [watched(api, poller, 5.5) for _ in range(4)]
        found = []
        for started, future in wave:
            await future
            found.append(time.now - started)
        waits.append(found)
        posts.append(api.posts - before)
    await poller.aclose()
    # Once a render has been seen, the next are checked just before their expected end and
    # then every 50 ms: each is found within 0.1 s of it, and a wave shares a few POSTs.
    assert all(render <= wait < render + 0.1 for wave in waits[1:] for wait in wave), waits
    assert max(posts[1:]) <= 3, posts
    assert poller.polls == api.posts


async def test_a_task_waiting_blind_follows_what_another_one_taught() -> None:
    # Renders take 0.1 s per audio second here. Both tasks start blind (nothing learnt), with
    # re-checks 2 s apart; the short one is found on the first check, and from what it taught
    # the long one is checked near its end instead of 2 s later.
    time = FakeTime()
    api = FakeApi(time, latency=0.1)
    poller = Poller(api, PollTiming(initial=0.5, blind_min=2.0), time.clock, time.sleep)
    _, short_done = watched(api, poller, 3.0)
    long_started, long_done = watched(api, poller, 9.0)
    await short_done
    await long_done
    waited = time.now - long_started
    await poller.aclose()
    assert 0.9 <= waited < 2.0, waited  # the render takes 0.9 s; blind, it would be 2.5 s
    assert api.posts == 2  # the blind check of both, then the long one near its end


class SteppedTime(FakeTime):
    """A fake clock the test moves by hand; a sleeper waits until it has moved far enough."""

    STEP = 0.05  #: seconds the clock moves at a time
    TURNS = 5  #: event-loop turns after each move, for the poller to act on it

    async def sleep(self, seconds: float) -> None:
        deadline = self.now + seconds
        while self.now < deadline:
            await asyncio.sleep(0)

    async def idle(self) -> None:
        for _ in range(self.TURNS):
            await asyncio.sleep(0)

    async def until(self, future: asyncio.Future[TaskState], limit: float = 120.0) -> None:
        end = self.now + limit
        while not future.done() and self.now < end:
            self.now += self.STEP
            await self.idle()
        assert future.done(), f"not resolved within {limit} s of the fake clock"


async def test_a_task_watched_during_a_long_wait_is_checked_at_its_own_time() -> None:
    # The poller sleeps until the slow task is due; a task due much sooner, watched meanwhile,
    # must be checked at its own time, not after the slow one.
    time = SteppedTime()
    api = FakeApi(time, latency=1.0)
    poller = Poller(api, PollTiming(initial=0.2, blind_min=0.2), time.clock, time.sleep)
    _, first = watched(api, poller, 2.0)
    await time.until(first)  # learnt: about 1 s of render per audio second
    _, slow = watched(api, poller, 60.0)
    await time.idle()  # the poller goes to sleep until the slow task is due
    quick_started, quick = watched(api, poller, 2.0)
    await time.until(quick)
    assert time.now - quick_started < 3.0
    assert not slow.done()
    await poller.aclose()
