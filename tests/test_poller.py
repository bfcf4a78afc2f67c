"""The poller on a fake clock: tasks are found soon after they end, in few POSTs.

Renders end at set times of a fake clock that moves only while the poller sleeps, so the
tests measure what the poller decides, never how busy the machine is. Render times are
learnt per model, from each task's own audio length.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable

import pytest

from avatarbatch.catalog import PRO, STANDARD
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
        self.post_times: list[float] = []
        self._numbers = itertools.count()

    def submit(self, audio_seconds: float, render: float | None = None) -> str:
        uuid = f"task-{next(self._numbers)}"
        if render is None:
            render = self.fixed + self.latency * audio_seconds
        self.ends[uuid] = self.time.now + render
        return uuid

    async def poll(self, task_uuids: Iterable[str]) -> dict[str, TaskState]:
        self.posts += 1
        self.post_times.append(self.time.now)
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
    # Once a render has been seen, the next are checked near their expected end: each is found
    # within 0.1 s of it. The second wave probes from half the expected time up (one wave
    # taught it, which may have been a slow one); from then on a wave shares a POST or two.
    assert all(render <= wait < render + 0.1 for wave in waits[1:] for wait in wave), waits
    assert max(posts[2:]) <= 3, posts
    assert poller.polls == api.posts


async def test_a_task_waiting_blind_follows_what_another_one_taught() -> None:
    # Renders take 0.1 s per audio second here. Both tasks start blind (nothing learnt), with
    # re-checks 2 s apart; the short one is found on the first check, and from what it taught
    # the long one is checked near its end instead of 2 s later (probing up to it: one task
    # is not enough to be sure of).
    time = FakeTime()
    api = FakeApi(time, latency=0.1)
    poller = Poller(api, PollTiming(initial=0.5, blind_min=2.0), time.clock, time.sleep)
    _, short_done = watched(api, poller, 3.0)
    long_started, long_done = watched(api, poller, 9.0)
    await short_done
    await long_done
    waited = time.now - long_started
    await poller.aclose()
    assert 0.9 <= waited < 1.1, waited  # the render takes 0.9 s; blind, it would be 2.5 s
    assert api.posts <= 6


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


# --- learning render times ---------------------------------------------------------------------


async def run_waves(
    poller: Poller,
    api: FakeApi,
    waves: list[list[tuple[float, float]]],
    model: str | None = None,
) -> list[list[float]]:
    """Run waves of (audio seconds, render seconds) tasks; how long after its end each was found."""
    late: list[list[float]] = []
    for wave in waves:
        started = api.time.now
        found: list[float] = []
        futures = []
        for audio, render in wave:
            future = poller.watch(api.submit(audio, render), 1, audio, model=model)
            end = started + render
            future.add_done_callback(
                lambda _, end=end, found=found: found.append(api.time.now - end)
            )
            futures.append(future)
        await asyncio.gather(*futures)
        late.append(found)
    return late


def quick_poller(api: FakeApi, time: FakeTime) -> Poller:
    """A poller that shares POSTs only between tasks due within 2% of each other, so these
    tests see what it learns rather than how it trades a little delay for fewer POSTs."""
    timing = PollTiming(initial=0.2, blind_min=0.1, window=0.02)
    return Poller(api, timing, time.clock, time.sleep)


AUDIO = (5.4, 5.6, 5.9, 6.0, 6.2, 6.5)


async def test_tasks_of_different_lengths_are_due_at_their_own_times() -> None:
    # Render time proportional to the audio (2 s per audio second, the bench's scenario B):
    # once learnt, a 6.5 s clip is expected to take 13 s and a 5.4 s one 10.8 s, and each is
    # found soon after its own end, not after the slowest one's.
    time = FakeTime()
    api = FakeApi(time)
    poller = quick_poller(api, time)
    wave = [(audio, 2 * audio) for audio in AUDIO * 2]
    late = await run_waves(poller, api, [wave] * 5)
    assert poller.predict(5.4) == pytest.approx(10.8, rel=0.02)
    assert poller.predict(6.5) == pytest.approx(13.0, rel=0.02)
    assert poller.model().rate == pytest.approx(2.0, rel=0.1)
    assert all(0 <= wait < 0.4 for wave in late[2:] for wait in wave), late
    short, long = (poller.watch(api.submit(a), 1, a) for a in (2.0, 20.0))
    dues = sorted(w.due - time.now for w in poller._watches.values())
    assert dues[1] > 5 * dues[0]  # 40 s and 4 s, less a little
    short.cancel()
    long.cancel()
    await poller.aclose()


async def test_a_constant_provider_is_predicted_as_constant() -> None:
    # Every task takes 3 s whatever its audio length (a queue-bound provider, scenario A):
    # the learner finds no rate, and a long clip is not expected to take longer.
    time = FakeTime()
    api = FakeApi(time)
    poller = quick_poller(api, time)
    wave = [(audio, 3.0) for audio in (2.0, 4.0, 8.0, 16.0, 30.0, 5.0, 12.0, 3.0)]
    late = await run_waves(poller, api, [wave] * 4)
    await poller.aclose()
    assert poller.model().rate == pytest.approx(0.0, abs=0.01)
    for audio in (2.0, 30.0, 120.0):
        assert poller.predict(audio) == pytest.approx(3.0, rel=0.02)
    assert all(0 <= wait < 0.15 for wave in late[2:] for wait in wave), late


async def test_one_audio_length_falls_back_to_the_fixed_part() -> None:
    # All clips 6 s long: the rate cannot be told from the fixed part, so none is fitted.
    time = FakeTime()
    api = FakeApi(time)
    poller = quick_poller(api, time)
    await run_waves(poller, api, [[(6.0, 12.0)] * 4] * 3)
    await poller.aclose()
    assert poller.model().rate == 0.0
    assert poller.predict(6.0) == pytest.approx(12.0, rel=0.02)


async def test_a_slow_first_wave_does_not_keep_estimates_high() -> None:
    # The first wave takes twice as long (a cold provider); within two waves after it the
    # estimate is back within a few percent, and it does not drift wave after wave.
    time = FakeTime()
    api = FakeApi(time)
    poller = quick_poller(api, time)
    normal = [(audio, 2 * audio) for audio in AUDIO]
    slow = [(audio, 2 * render) for audio, render in normal]
    late = await run_waves(poller, api, [slow, normal, normal])
    assert poller.predict(6.0) == pytest.approx(12.0, rel=0.04)
    # the third wave is found within a few percent of its renders
    assert all(0 <= wait < 0.05 * 12 for wait in late[2]), late
    estimates = []
    for _ in range(6):
        await run_waves(poller, api, [normal])
        estimates.append(poller.predict(6.0))
    await poller.aclose()
    assert all(e == pytest.approx(12.0, rel=0.02) for e in estimates), estimates


async def test_a_slow_wave_mid_run_barely_moves_the_estimate() -> None:
    time = FakeTime()
    api = FakeApi(time)
    poller = quick_poller(api, time)
    normal = [(audio, 2 * audio) for audio in AUDIO * 2]
    slow = [(audio, 4 * audio) for audio in AUDIO * 2]
    await run_waves(poller, api, [normal] * 4)
    await run_waves(poller, api, [slow])
    assert poller.predict(6.0) == pytest.approx(12.0, rel=0.05)
    late = await run_waves(poller, api, [normal])
    await poller.aclose()
    assert all(0 <= wait < 0.05 * 13 for wait in late[0]), late


async def test_the_first_check_is_timed_from_the_catalog_prior() -> None:
    # Nothing learnt yet: the first check comes at a fraction of the model's prior (a guess,
    # so early), never later than `initial` seconds.
    timing = PollTiming()
    for model, audio in ((STANDARD, 5.0), (PRO, 5.0), (STANDARD, 100.0)):
        time = FakeTime()
        api = FakeApi(time, fixed=1000.0)
        poller = Poller(api, timing, time.clock, time.sleep)
        future = poller.watch(api.submit(audio), 1, audio, model=model.id)
        while not api.posts:
            await asyncio.sleep(0)
        expected = min(timing.initial, model.render_prior(audio) * timing.blind_first)
        assert api.post_times[0] == pytest.approx(expected)
        future.cancel()
        await poller.aclose()


async def test_blind_checks_grow_from_an_early_start() -> None:
    # A render far shorter than the prior is still seen soon: the blind checks start early
    # and grow with the wait.
    time = FakeTime()
    api = FakeApi(time, fixed=0.3)
    poller = Poller(api, PollTiming(initial=0.1), time.clock, time.sleep)
    _, done = watched(api, poller, 5.0)
    await done
    await poller.aclose()
    assert time.now < 0.5


async def test_models_are_learnt_apart() -> None:
    # Pro renders take three times as long as standard ones; each model learns its own.
    time = FakeTime()
    api = FakeApi(time)
    poller = quick_poller(api, time)
    speeds: dict[str, Callable[[float], float]] = {
        STANDARD.id: lambda audio: 2 * audio,
        PRO.id: lambda audio: 6 * audio,
    }
    for _ in range(4):
        futures = [
            poller.watch(api.submit(audio, speed(audio)), 1, audio, model=model)
            for model, speed in speeds.items()
            for audio in AUDIO
        ]
        for future in futures:
            await future
    await poller.aclose()
    assert poller.predict(6.0, STANDARD.id) == pytest.approx(12.0, rel=0.03)
    assert poller.predict(6.0, PRO.id) == pytest.approx(36.0, rel=0.03)
    # a model not in the catalog, or none named, has a bucket of its own on the default prior
    for other in ("someone:else@1", None):
        assert poller.model(other).prior == STANDARD
        assert poller.model(other) is not poller.model(STANDARD.id)
        assert not poller.model(other).learnt


async def test_a_model_with_nothing_learnt_borrows_from_another() -> None:
    # The first pro task after standard ones were learnt is timed from them, scaled by how
    # the catalog's priors of the two compare, instead of blind.
    time = FakeTime()
    api = FakeApi(time)
    poller = quick_poller(api, time)
    await run_waves(poller, api, [[(audio, 2 * audio) for audio in AUDIO]] * 2, STANDARD.id)
    ratio = PRO.render_prior(6.0) / STANDARD.render_prior(6.0)
    borrowed = poller.predict(6.0, PRO.id)
    assert borrowed == pytest.approx(12.0 * ratio, rel=0.03)
    await poller.aclose()
