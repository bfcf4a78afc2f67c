"""One poller for every task in flight: batched getResponse calls timed by expected render time.

Each task is first checked a little before it is expected to be done, then again shortly after,
so most tasks cost one or two checks. The expectation is learnt from finished tasks with two
competing models, render time proportional to the audio length and render time constant per
task; whichever has predicted better so far is used (a provider whose queue dominates looks
constant, one whose rendering dominates looks proportional). Tasks due within a short window
share one POST, however many there are. So polling costs a fraction of one request per job
instead of one request per job per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from avatarbatch.errors import TransientError
from avatarbatch.runware import RunwareClient, TaskState

log = logging.getLogger("avatarbatch.poller")


@dataclass(frozen=True)
class PollTiming:
    initial: float = 1.0  #: first check while nothing has been learnt yet
    # Bench scenario A (200 tasks of 3 s, concurrency 16) tried 0.98/0.03/0.05 for
    # early/step/window: wall 42.0-42.2 s against 42.0-42.1 s (ideal 39 s, noise +-0.3 s),
    # but 1.26-1.32 POSTs per job against 1.24-1.25. So these stay.
    early: float = 0.95  #: first check at this fraction of the expected render time
    step: float = 0.05  #: re-check interval as a fraction of the expected render time
    min_interval: float = 0.1
    max_interval: float = 10.0
    growth: float = 1.5  #: each further miss waits this much longer
    window: float = 0.1  #: tasks due within this fraction of their expected time share a POST
    smoothing: float = 0.3  #: weight of the newest observation
    blind_step: float = 0.15  #: re-check after this share of the wait, before anything is learnt


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
    seconds: float
    started: float
    due: float
    interval: float
    window: float
    last_miss: float | None = None


class Poller:
    def __init__(
        self,
        client: RunwareClient,
        timing: PollTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._timing = timing or PollTiming()
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.estimate = RenderTimeEstimate(self._timing.smoothing)
        self.polls = 0

    def watch(
        self, task_uuid: str, expected_results: int, audio_seconds: float | None
    ) -> asyncio.Future[TaskState]:
        """A future resolved with the task's final state; starts the polling loop if needed."""
        timing = self._timing
        now = self._clock()
        seconds = audio_seconds or 10.0
        predicted = self.estimate.predict(seconds)
        if predicted is None:  # nothing learnt yet: check every task in flight together
            first, interval, window = timing.initial, 0.0, timing.initial
        else:
            first = predicted * timing.early
            interval = max(timing.min_interval, predicted * timing.step)
            window = max(timing.min_interval, predicted * timing.window)
        future: asyncio.Future[TaskState] = asyncio.get_running_loop().create_future()
        self._watches[task_uuid] = _Watch(
            future, expected_results, seconds, now, now + first, interval, window
        )
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
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
                continue
            await self._poll_due()

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
        due = [uuid for uuid, w in self._watches.items() if w.due <= now + 0.01]
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
                    watch.future.set_exception(exc)
            return
        for uuid in due:
            watch = self._watches.get(uuid)
            if watch is None:
                continue
            state = states.get(uuid)
            if state is not None and state.finished(watch.expected):
                del self._watches[uuid]
                self._learn(watch, now)
                if not watch.future.done():
                    watch.future.set_result(state)
            else:
                watch.last_miss = now
                self._reschedule(watch, now)

    def _reschedule(self, watch: _Watch, now: float) -> None:
        timing = self._timing
        if not watch.interval:
            # No expectation yet: look again after a fixed share of the time waited so far,
            # so a 3 s render is seen within ~0.5 s and a 3 min one within ~30 s.
            watch.due = now + max(0.5, (now - watch.started) * timing.blind_step)
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
        self.estimate.learn(max(duration, 0.01), watch.seconds)
