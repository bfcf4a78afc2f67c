"""How long a model takes to render a task, learnt from its finished tasks (the poller's guide).

Render time = fixed + rate x audio seconds, per model. The rate is the median of the slopes
between pairs of recent tasks of different lengths (Theil-Sen), so a provider whose rendering
dominates is seen as proportional and one whose queue dominates as constant, with no choice to
make between the two; the fixed part is a low quantile of what is left. Medians of a bounded
window of the newest tasks, not a running average: a slow wave moves the estimate only while it
is most of the window. Fitting costs ~0.4 ms with a full window, so it is done when a
prediction is next asked for, once for every task a poll found finished, not once per task.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import NamedTuple

from avatarbatch.catalog import AvatarModel
from avatarbatch.config import PollTiming

#: the shortest render time predicted: a task found on its very first check taught only an
#: upper bound, which may be about zero, and a zero would make every later prediction zero
MIN_RENDER_SECONDS = 0.01
#: two tasks whose audio lengths differ by less than this share of the mean length say
#: nothing of the rate (their difference in render time is noise)
DISTINCT_AUDIO = 0.02
#: pairs of distinct lengths needed before a rate is fitted; fewer: the fixed part alone
MIN_PAIRS = 3
#: a fitted rate is kept only if it shrinks the spread of what it leaves to this share of the
#: spread of the render times themselves
LINE_GAIN = 0.7
#: a task done by this share of the time it was expected to take was clearly faster; this many
#: in a row and the estimate starts again from them
FASTER = 0.85
FASTER_RUN = 3
#: tightly bound tasks needed before the fit leaves the loosely bound ones out
MIN_TIGHT = 3
#: newest tasks of a model that decide whether its estimate is sure
SURE_COUNT = 8
#: and its tasks must have started at least this share of a render time apart: two waves
SPREAD = 0.5


class Seen(NamedTuple):
    """One finished task: its audio seconds and what its checks bound its render time to."""

    audio: float
    low: float | None  #: still running this long after it started (None: found on 1st check)
    high: float  #: done this long after it started
    started: float  #: when it was watched (tasks started together may all share one delay)

    @property
    def value(self) -> float:
        """The render time taken: the middle of the bounds, or the upper bound alone."""
        return self.high if self.low is None else (self.low + self.high) / 2

    def bound_within(self, share: float, seconds: float) -> bool:
        """Whether its render time is known to within `share` of it, or `seconds` (checks
        come no closer than that)."""
        return self.low is not None and self.high - self.low <= max(share * self.high, seconds)


class RenderModel:
    """Learns one model's render time as fixed + rate x audio seconds from its finished tasks."""

    def __init__(self, prior: AvatarModel, timing: PollTiming) -> None:
        self.prior = prior
        self._timing = timing
        self._seen: deque[Seen] = deque(maxlen=max(2, timing.history))
        self._fixed = 0.0  #: render seconds of every task
        self._rate = 0.0  #: render seconds per audio second
        self._sure = False  #: whether the newest tasks bound their render time tightly
        self._stale = False  #: tasks learnt since the last fit
        self.watched = 0  #: tasks watched, to pick the scouts
        self._faster = 0  #: tasks in a row found clearly faster than expected

    @property
    def learnt(self) -> bool:
        return bool(self._seen)

    @property
    def fixed(self) -> float:
        self._fit()
        return self._fixed

    @property
    def rate(self) -> float:
        self._fit()
        return self._rate

    @property
    def sure(self) -> bool:
        self._fit()
        return self._sure

    def predict(self, audio_seconds: float) -> float | None:
        """Expected render seconds, or None while no task of this model has finished."""
        if not self._seen:
            return None
        return max(MIN_RENDER_SECONDS, self.fixed + self.rate * audio_seconds)

    def learn(self, observed: Seen, expected: float = 0.0) -> None:
        """Learn from a finished task, `expected` to take that long (0: nothing was expected)."""
        # Tasks clearly faster than expected, several in a row: the estimate rests on a slow
        # spell (a cold first wave, say) and too high an estimate makes every task wait, so
        # what came before them is dropped. Slower than expected needs no such rule: the
        # checks step on after the expected end and the estimate follows the median.
        if expected and observed.high < FASTER * expected:
            self._faster += 1
            if self._faster >= FASTER_RUN:
                newest = list(self._seen)[-(FASTER_RUN - 1) :] if FASTER_RUN > 1 else []
                self._seen.clear()
                self._seen.extend(newest)
                self._faster = 0
        else:
            self._faster = 0
        self._seen.append(observed)
        self._stale = True

    def _fit(self) -> None:
        if not self._stale:
            return
        self._stale = False
        timing = self._timing
        seen = list(self._seen)
        tight = [s for s in seen if s.bound_within(timing.sure_width, 2 * timing.min_interval)]
        # Fitted to the tasks whose render time is known closely, once there are a few: a
        # loose bound (a blind wave, a task found on its first check) only stands in for them.
        basis = tight if len(tight) >= MIN_TIGHT else seen
        self._rate = _fit_rate(basis)
        residuals = sorted(s.value - self._rate * s.audio for s in basis)
        self._fixed = _quantile(residuals, timing.quantile)
        # Sure once most of the newest tasks were bound tightly and not all started at one
        # moment: one wave may have met a slow spell of the provider that the next will not.
        newest = seen[-SURE_COUNT:]
        bound = sum(s.bound_within(timing.sure_width, 2 * timing.min_interval) for s in newest)
        span = max(s.started for s in seen) - min(s.started for s in seen)
        self._sure = 2 * bound >= len(newest) and span >= SPREAD * statistics.median(
            s.value for s in seen
        )


def _fit_rate(seen: list[Seen]) -> float:
    """Theil-Sen: the median slope between pairs of distinct audio lengths; 0 if too few."""
    mean_audio = statistics.fmean(s.audio for s in seen)
    least = max(DISTINCT_AUDIO * mean_audio, 1e-6)
    slopes = [
        (b.value - a.value) / (b.audio - a.audio)
        for i, a in enumerate(seen)
        for b in seen[i + 1 :]
        if abs(b.audio - a.audio) >= least
    ]
    if len(slopes) < MIN_PAIRS:
        return 0.0  # all of one length: the rate cannot be told from the fixed part
    rate = max(0.0, statistics.median(slopes))
    # A rate fitted to noise (a provider whose time does not follow the audio) spreads
    # the predictions more than it explains: kept only if it clearly tightens them.
    if _spread([s.value - rate * s.audio for s in seen]) > LINE_GAIN * _spread(
        [s.value for s in seen]
    ):
        return 0.0
    return rate


def _spread(values: list[float]) -> float:
    """Median absolute deviation from the median."""
    middle = statistics.median(values)
    return statistics.median(abs(v - middle) for v in values)


def _quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated."""
    at = q * (len(ordered) - 1)
    below = int(at)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (at - below)
