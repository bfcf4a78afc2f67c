"""One poller for every task in flight: batched getResponse calls timed by expected render time.

Each task is first checked when it is expected to be done: the render time per second of audio
is learnt from the tasks that finished so far (the middle of the interval in which each one
finished, smoothed), so after the first few results most tasks are found done on their first
check. Tasks due within a short window share one POST, however many there are; a task not done
yet is checked again after a growing interval. So polling costs a fraction of one request per
job instead of one request per job per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from avatarbatch.errors import TransientError
from avatarbatch.runware import RunwareClient, TaskState

log = logging.getLogger("avatarbatch.poller")


@dataclass(frozen=True)
class PollTiming:
    initial: float = 1.0  #: first check before any render time has been learnt
    min_interval: float = 0.25  #: re-check interval after a first miss, and the batching window
    max_interval: float = 10.0
    growth: float = 1.5
    smoothing: float = 0.3  #: weight of the newest observation in the learnt render rate


@dataclass
class _Watch:
    future: asyncio.Future[TaskState]
    expected: int
    seconds: float
    started: float
    due: float
    interval: float
    last_miss: float = field(default=0.0)


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
        self.seconds_per_audio_second: float | None = None
        self.polls = 0

    def watch(
        self, task_uuid: str, expected_results: int, audio_seconds: float | None
    ) -> asyncio.Future[TaskState]:
        """A future resolved with the task's final state; starts the polling loop if needed."""
        now = self._clock()
        seconds = audio_seconds or 10.0
        rate = self.seconds_per_audio_second
        first = (
            self._timing.initial if rate is None else max(self._timing.min_interval, rate * seconds)
        )
        future: asyncio.Future[TaskState] = asyncio.get_running_loop().create_future()
        self._watches[task_uuid] = _Watch(
            future, expected_results, seconds, now, now + first, self._timing.min_interval, now
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
            wait = min(w.due for w in self._watches.values()) - self._clock()
            if wait > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
                continue
            await self._poll_due()

    async def _poll_due(self) -> None:
        horizon = self._clock() + self._timing.min_interval
        due = [uuid for uuid, w in self._watches.items() if w.due <= horizon]
        self.polls += 1
        try:
            states = await self._client.poll(due)
        except TransientError as exc:
            log.warning("polling failed, trying again shortly: %s", exc)
            for uuid in due:
                if uuid in self._watches:
                    self._reschedule(self._watches[uuid])
            return
        except Exception as exc:  # auth/credit and the like end every wait with that error
            for uuid in due:
                watch = self._watches.pop(uuid, None)
                if watch is not None and not watch.future.done():
                    watch.future.set_exception(exc)
            return
        now = self._clock()
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
                self._reschedule(watch)

    def _reschedule(self, watch: _Watch) -> None:
        watch.due = self._clock() + watch.interval
        watch.interval = min(self._timing.max_interval, watch.interval * self._timing.growth)

    def _learn(self, watch: _Watch, finished_by: float) -> None:
        # The task finished between the last check that found it running and this one.
        observed = ((watch.last_miss + finished_by) / 2 - watch.started) / watch.seconds
        rate = self.seconds_per_audio_second
        alpha = self._timing.smoothing
        self.seconds_per_audio_second = (
            observed if rate is None else (1 - alpha) * rate + alpha * observed
        )
