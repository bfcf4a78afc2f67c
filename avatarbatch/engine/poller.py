"""One poller for every task in flight: batched getResponse calls timed by expected render time.

Each task is first checked a little before it is expected to be done, then again shortly after,
so most tasks cost one or two checks. The expectation is the task's own: render time = fixed +
rate x audio seconds, learnt per model from that model's finished tasks (`render_time.py`:
medians of a window of the newest tasks, so a slow wave does not poison the next). Before a
model has a finished task, checks are blind: they start at a fraction of the catalog's prior
for the model (a guess) and grow with the wait. While the newest tasks of a model were found
only loosely bounded (found on their first check, which says only "done by now"), the estimate
may be too high: the first checks then come earlier (`PollTiming.probe_from`), so the next
tasks bound their render time from both sides and the estimate converges instead of drifting
a little each wave.

Once sure, a task is checked first just after its expected end (found there at once when the
estimate is right; such a find teaches nothing and is not learnt from), and every fourth, a
scout, just before it, so the estimate stays bound from below. Tasks due within a short window
share one POST, however many there are (the client splits them into one task per POST if the
API refuses batches: the docs do not say it takes them), and tasks due soon ride along in a
POST sent anyway. So polling costs a fraction of one request per job instead of one request per
job per second.

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

from avatarbatch.catalog import DEFAULT_MODEL, model_by_id
from avatarbatch.config import PollTiming
from avatarbatch.engine.render_time import MIN_RENDER_SECONDS, RenderModel, Seen
from avatarbatch.errors import ApiError, TransientError
from avatarbatch.runware.client import TaskState
from avatarbatch.runware.connection import DEFAULT_BATCH_SIZE

log = logging.getLogger("avatarbatch.poller")

#: what the render time is predicted from when the audio length is unknown (remote audio): a
#: typical clip, so the first checks are neither wasted nor minutes late
UNKNOWN_AUDIO_SECONDS = 10.0
#: tasks due within this many seconds of now join this POST: the loop wakes up a hair early
#: or late, and a task due a moment later would otherwise cost a POST of its own
DUE_SLACK = 0.01
#: tasks per POST that riders may fill up to: the client's default poll batch, so riding along
#: never costs a POST of its own
RIDE_ROOM = DEFAULT_BATCH_SIZE


class PollsTasks(Protocol):
    """What the poller needs of the API client."""

    async def poll(self, task_uuids: Iterable[str]) -> dict[str, TaskState]: ...


@dataclass
class _Watch:
    future: asyncio.Future[TaskState]
    expected: int
    seconds: float  #: audio seconds, what the render time is predicted from
    model: RenderModel
    started: float
    due: float = 0.0
    interval: float = 0.0  #: 0 until the checks step after the expected end
    window: float = 0.0
    expected_s: float = 0.0  #: the render time it is expected to take (0: nothing learnt)
    last_miss: float | None = None
    blind: bool = False  #: timed by no estimate yet
    scout: bool = False  #: checked just before its expected end, not just after
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
        self.models: dict[str | None, RenderModel] = {}
        self.polls = 0

    def model(self, model: str | None = None) -> RenderModel:
        """What has been learnt of `model`'s render times: one learner per model id (None, or
        an id not in the catalog, gets one of its own on the default model's prior)."""
        found = self.models.get(model)
        if found is None:
            try:
                prior = DEFAULT_MODEL if model is None else model_by_id(model)
            except KeyError:
                prior = DEFAULT_MODEL
            found = self.models[model] = RenderModel(prior, self._timing)
        return found

    def predict(self, audio_seconds: float, model: str | None = None) -> float | None:
        """Expected render seconds of a task, or None while no task has finished."""
        return self._predict(self.model(model), audio_seconds)

    def _predict(self, model: RenderModel, audio_seconds: float) -> float | None:
        """What `model` has learnt; before it has learnt anything, what another model has,
        scaled by how the catalog's priors of the two compare (an unsure guess)."""
        own = model.predict(audio_seconds)
        if own is not None:
            return own
        for other in self.models.values():
            guess = other.predict(audio_seconds)
            if guess is not None:
                ratio = model.prior.render_prior(audio_seconds) / other.prior.render_prior(
                    audio_seconds
                )
                return guess * ratio
        return None

    def watch(
        self,
        task_uuid: str,
        expected_results: int,
        audio_seconds: float | None,
        model: str | None = None,
    ) -> asyncio.Future[TaskState]:
        """A future resolved with the task's final state; starts the polling loop if needed.

        `model` is the task's model id: render times are learnt per model.
        """
        now = self._clock()
        future: asyncio.Future[TaskState] = asyncio.get_running_loop().create_future()
        seconds = audio_seconds or UNKNOWN_AUDIO_SECONDS
        learner = self.model(model)
        learner.watched += 1
        scout = learner.watched % max(1, self._timing.scout_every) == 0
        watch = _Watch(future, expected_results, seconds, learner, now, scout=scout)
        if not self._plan(watch, now):  # nothing learnt yet: a first check early on the prior
            timing = self._timing
            first = min(
                timing.initial, watch.model.prior.render_prior(seconds) * timing.blind_first
            )
            watch.due = now + first
            watch.window = timing.blind_min
            watch.blind = True
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
        riders = self._riders(due, now)
        self.polls += 1
        try:
            states = await self._client.poll(due + riders)
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
        self._settle_riders(riders, states, now)

    def _riders(self, due: list[str], now: float) -> list[str]:
        """Tasks not yet due that ride along in this POST for free: those due soon anyway
        (within `ride` of their expected time), while the POST has room in one batch."""
        if getattr(self._client, "single_task_polls", False):
            return []  # every task is a POST of its own: nothing rides for free
        ride = self._timing.ride
        soon = sorted(
            (w.due, uuid)
            for uuid, w in self._watches.items()
            if w.due > now + DUE_SLACK and w.due <= now + max(w.window, ride * w.expected_s)
        )
        return [uuid for _, uuid in soon[: max(0, RIDE_ROOM - len(due))]]

    def _settle_riders(self, riders: list[str], states: dict[str, TaskState], now: float) -> None:
        """A rider found finished is done; one still running keeps its own schedule."""
        finished = []
        for uuid in riders:
            watch, state = self._watches.get(uuid), states.get(uuid)
            if watch is None or state is None or state.unknown:
                continue
            if state.finished(watch.expected):
                finished.append(uuid)
            else:
                watch.last_miss = now
        if finished:
            self._settle(finished, states, now)

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
        for watch in self._watches.values():  # what was just learnt times the blind ones
            if watch.blind and self._plan(watch, now):
                watch.blind = False

    def _in_doubt(self, watch: _Watch, state: TaskState, now: float) -> bool:
        """Whether to keep asking about a task the API says it does not know."""
        if not state.unknown:
            watch.doubt_since = None
            return False
        if watch.doubt_since is None:
            watch.doubt_since = now
        return now - watch.doubt_since < self._timing.not_found_grace

    def _plan(self, watch: _Watch, now: float) -> bool:
        """Time the next check of `watch` by its expected render time, if one has been learnt.

        The first checks come at fractions of the expected time (more of them while the
        estimate is unsure); past the last, every `step` of it, growing.
        """
        timing = self._timing
        predicted = self._predict(watch.model, watch.seconds)
        if predicted is None:
            return False
        watch.window = max(timing.min_interval, predicted * timing.window)
        watch.expected_s = predicted
        # Sure: one check just after the expected end, or, for a scout, just before it (so
        # the estimate keeps being bounded from below). Unsure: a ladder of earlier checks.
        top = timing.early if watch.scout or not watch.model.sure else timing.late
        fraction = top if watch.model.sure else min(timing.probe_from, top)
        while True:
            due = watch.started + predicted * fraction
            if due > now + DUE_SLACK:
                watch.due = due
                return True
            if fraction >= top:
                break
            fraction = min(top, fraction * max(timing.probe_ratio, 1.01))
        if not watch.interval:
            watch.interval = max(timing.min_interval, predicted * timing.step)
        watch.due = now + watch.interval
        watch.interval = min(timing.max_interval, watch.interval * timing.growth)
        return True

    def _reschedule(self, watch: _Watch, now: float) -> None:
        timing = self._timing
        if self._plan(watch, now):
            watch.blind = False
            return
        # No expectation yet: look again after a fixed share of the time waited so far,
        # so a 3 s render is seen within ~0.5 s and a 3 min one within ~30 s.
        watch.due = now + max(timing.blind_min, (now - watch.started) * timing.blind_step)

    def _learn(self, watch: _Watch, found_at: float) -> None:
        # Finished between the last check that found it running and this one; found on its
        # first check, only an upper bound is known, which says something only if it is below
        # the expected time.
        low = None if watch.last_miss is None else watch.last_miss - watch.started
        if low is None and watch.expected_s and found_at - watch.started >= watch.expected_s:
            return  # found on a first check after its expected end: the estimate was not low
        taken = max(found_at - watch.started, MIN_RENDER_SECONDS)
        watch.model.learn(Seen(watch.seconds, low, taken, watch.started), watch.expected_s)
