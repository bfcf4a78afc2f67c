"""One poller for every task in flight: batched getResponse calls timed by expected render time.

Each task is first checked a little before it is expected to be done, then again shortly after,
so most tasks cost one or two checks. The expectation is learnt from finished tasks with two
competing models, render time proportional to the audio length and render time constant per
task; whichever has predicted better so far is used (a provider whose queue dominates looks
constant, one whose rendering dominates looks proportional). Tasks due within a short window
share one POST, however many there are (the client splits them into one task per POST if the
API refuses batches: the docs do not say it takes them). So polling costs a fraction of one
request per job instead of one request per job per second.

A task the API accepted and then answers as unknown is not given up at once: the docs say
nothing of a registration lag or of results aging out, so it is asked about again for
`not_found_grace` seconds before the runner hears of it (see stages.Stages.poll).

Time comes from an injected clock and sleep, so tests can run the poller on a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from avatarbatch.config import PollTiming
from avatarbatch.errors import ApiError, TransientError
from avatarbatch.runware.client import TaskState

log = logging.getLogger("avatarbatch.poller")

#: what the render time is predicted from when the audio length is unknown (remote audio): a
#: typical clip, so the first checks are neither wasted nor minutes late
UNKNOWN_AUDIO_SECONDS = 10.0
#: tasks due within this many seconds of now join this POST: the loop wakes up a hair early
#: or late, and a task due a moment later would otherwise cost a POST of its own
DUE_SLACK = 0.01
#: the shortest render time learnt from: a task found on its very first check taught only an
#: upper bound, which may be about zero, and a zero would make every later prediction zero
MIN_RENDER_SECONDS = 0.01


class PollsTasks(Protocol):
    """What the poller needs of the API client."""

    async def poll(self, task_uuids: Iterable[str]) -> dict[str, TaskState]: ...


class RenderTimeEstimate:
    """Learns how long a task takes from the audio seconds, with two competing models."""

    def __init__(self, smoothing: float) -> None:
        self.alpha = smoothing
        self.per_second: float | None = None  #: render seconds per audio second
        self.constant: float | None = None  #: render seconds per task
        self._error = {"per_second": 0.0, "constant": 0.0}

    def predict(self, audio_seconds: float) -> float | None:
        if self.per_second is None or self.constant is None:
            return None
        if self._error["per_second"] <= self._error["constant"]:
            return self.per_second * audio_seconds
        return self.constant

    def learn(self, duration: float, audio_seconds: float) -> None:
        alpha = self.alpha
        if self.per_second is not None and self.constant is not None:
            for name, guess in (
                ("per_second", self.per_second * audio_seconds),
                ("constant", self.constant),
            ):
                self._error[name] = (1 - alpha) * self._error[name] + alpha * abs(guess - duration)
        rate = duration / audio_seconds
        self.per_second = (
            rate if self.per_second is None else (1 - alpha) * self.per_second + alpha * rate
        )
        self.constant = (
            duration if self.constant is None else (1 - alpha) * self.constant + alpha * duration
        )


@dataclass
class _Watch:
    future: asyncio.Future[TaskState]
    expected: int
    seconds: float  #: audio seconds, what the render time is predicted from
    started: float
    due: float = 0.0
    interval: float = 0.0  #: 0 while nothing has been learnt: blind re-checks
    window: float = 0.0
    last_miss: float | None = None
    doubt_since: float | None = None  #: when the API first answered as if it did not know it


class Poller:
    def __init__(
        self,
        client: PollsTasks,
        timing: PollTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._timing = timing or PollTiming()
        self._clock = clock
        self._sleep = sleep
        self._watches: dict[str, _Watch] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.estimate = RenderTimeEstimate(self._timing.smoothing)
        self.polls = 0

    def watch(
        self, task_uuid: str, expected_results: int, audio_seconds: float | None
    ) -> asyncio.Future[TaskState]:
        """A future resolved with the task's final state; starts the polling loop if needed."""
        now = self._clock()
        future: asyncio.Future[TaskState] = asyncio.get_running_loop().create_future()
        watch = _Watch(future, expected_results, audio_seconds or UNKNOWN_AUDIO_SECONDS, now)
        if not self._plan(watch, now):  # nothing learnt yet: check every task in flight together
            watch.due = now + self._timing.initial
            watch.window = self._timing.blind_min
        self._watches[task_uuid] = watch
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="avatarbatch-poller")
        return future

    def forget(self, task_uuid: str) -> None:
        watch = self._watches.pop(task_uuid, None)
        if watch is not None and not watch.future.done():
            watch.future.cancel()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for uuid in list(self._watches):
            self.forget(uuid)

    async def _loop(self) -> None:
        while True:
            if not self._watches:
                self._changed.clear()
                await self._changed.wait()
                continue
            wait = self._next_poll() - self._clock()
            if wait > 0:
                await self._pause(wait)
                continue
            await self._poll_due()

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if a task is watched meanwhile (it may be due sooner)."""
        self._changed.clear()
        woken = asyncio.ensure_future(self._changed.wait())
        slept = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((woken, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()

    def _next_poll(self) -> float:
        """When to poll: once every task due within a window of the earliest one is due.

        Waiting for the whole cluster costs the earliest task at most one window of delay and
        saves a POST per task that would otherwise come due a moment later.
        """
        earliest = min(self._watches.values(), key=lambda w: w.due)
        horizon = earliest.due + earliest.window
        return max(w.due for w in self._watches.values() if w.due <= horizon)

    async def _poll_due(self) -> None:
        now = self._clock()
        due = [uuid for uuid, w in self._watches.items() if w.due <= now + DUE_SLACK]
        self.polls += 1
        try:
            states = await self._client.poll(due)
        except TransientError as exc:
            log.warning("polling failed, trying again shortly: %s", exc)
            for uuid in due:
                if uuid in self._watches:
                    self._reschedule(self._watches[uuid], self._clock())
            return
        except Exception as exc:  # auth/credit and the like end every wait with that error
            for uuid in due:
                watch = self._watches.pop(uuid, None)
                if watch is not None and not watch.future.done():
                    watch.future.set_exception(
                        exc.for_task(uuid) if isinstance(exc, ApiError) else exc
                    )
            return
        self._settle(due, states, now)

    def _settle(self, due: list[str], states: dict[str, TaskState], now: float) -> None:
        """Resolve the watches whose task is finished (or given up on), reschedule the rest."""
        missed = []
        for uuid in due:  # the finished first, so the misses are rescheduled by what they taught
            watch = self._watches.get(uuid)
            if watch is None:
                continue
            state = states.get(uuid)
            if state is not None and self._in_doubt(watch, state, now):
                missed.append(watch)
            # Unknown past the grace period ends the wait too: an unanswered task, or one
            # not-found error for several results, would never count as "finished".
            elif state is not None and (state.unknown or state.finished(watch.expected)):
                del self._watches[uuid]
                if not state.unknown:  # a task given up on teaches nothing about render time
                    self._learn(watch, now)
                if not watch.future.done():
                    watch.future.set_result(state)
            else:
                missed.append(watch)
        for watch in missed:
            watch.last_miss = now
            self._reschedule(watch, now)

    def _in_doubt(self, watch: _Watch, state: TaskState, now: float) -> bool:
        """Whether to keep asking about a task the API says it does not know."""
        if not state.unknown:
            watch.doubt_since = None
            return False
        if watch.doubt_since is None:
            watch.doubt_since = now
        return now - watch.doubt_since < self._timing.not_found_grace

    def _plan(self, watch: _Watch, now: float) -> bool:
        """Time the checks of `watch` by the expected render time, if one has been learnt."""
        timing = self._timing
        predicted = self.estimate.predict(watch.seconds)
        if predicted is None:
            return False
        watch.interval = max(timing.min_interval, predicted * timing.step)
        watch.window = max(timing.min_interval, predicted * timing.window)
        watch.due = max(now, watch.started + predicted * timing.early)
        return True

    def _reschedule(self, watch: _Watch, now: float) -> None:
        timing = self._timing
        if not watch.interval:
            if self._plan(watch, now + timing.min_interval):
                return  # something finished meanwhile: from now on, checks follow the estimate
            # No expectation yet: look again after a fixed share of the time waited so far,
            # so a 3 s render is seen within ~0.5 s and a 3 min one within ~30 s.
            watch.due = now + max(timing.blind_min, (now - watch.started) * timing.blind_step)
            return
        watch.due = now + watch.interval
        watch.interval = min(timing.max_interval, watch.interval * timing.growth)

    def _learn(self, watch: _Watch, found_at: float) -> None:
        # Finished between the last check that found it running and this one. Found on its
        # first check, only an upper bound is known: it pulls the estimate down a little,
        # since the first check comes early; the next misses then bound it from below.
        finished_by = found_at - watch.started
        if watch.last_miss is None:
            duration = finished_by
        else:
            duration = (watch.last_miss - watch.started + finished_by) / 2
        self.estimate.learn(max(duration, MIN_RENDER_SECONDS), watch.seconds)
