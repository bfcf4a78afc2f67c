"""The spending cap of `--max-cost`: what one invocation submits never costs more than the cap.

It caps this run, not the state file's lifetime (that is what a nightly cron with
`--max-cost 50` needs): committed cost = what this run's finished submissions were billed +
the estimates of this run's submissions still in flight. A job is submitted only if committed +
its own estimate stays within the cap. Tasks adopted from an interrupted run were committed by
that run and are not charged here (they still take --concurrency slots first, see runner.py).
A job whose audio length is unknown (remote audio) reserves the worst case, the longest audio
the models take per result, since its real cost cannot be known in advance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from avatarbatch import catalog
from avatarbatch.plan import PlannedJob
from avatarbatch.runware.client import VideoResult


def result_estimate(model: catalog.AvatarModel, seconds: float | None) -> Decimal:
    """What one result of a job is expected to cost; the worst case if its length is unknown."""
    return model.cost(catalog.AUDIO_MAX_SECONDS if seconds is None else seconds)


def estimated_total(planned: Iterable[PlannedJob]) -> Decimal:
    """The plan's estimate of these jobs; those of unmeasured (remote) audio count nothing."""
    return sum((p.estimated_cost or Decimal(0) for p in planned), Decimal(0))


def billed_cost(results: Sequence[VideoResult], per_result: Decimal) -> tuple[Decimal, str]:
    """What results cost, and whence: Runware's own figure ("api"), else, for any result
    without a usable one, our estimate per result ("estimate": the reports mark it)."""
    costs = [per_result if r.cost is None else Decimal(str(r.cost)) for r in results]
    source = "estimate" if any(r.cost is None for r in results) else "api"
    return sum(costs, Decimal(0)), source


class Budget:
    def __init__(self, cap: Decimal | None, spent: Decimal = Decimal(0)) -> None:
        self.cap = cap
        self.spent = spent
        self._reserved: dict[str, Decimal] = {}
        self.exhausted = False  #: a reservation was refused: no more submissions this run

    @property
    def committed(self) -> Decimal:
        return self.spent + sum(self._reserved.values(), Decimal(0))

    def reserve(self, job_id: str, amount: Decimal) -> bool:
        """Hold `amount` for a job about to be submitted; False (and no more) once over the cap."""
        if self.exhausted:
            return False
        previous = self._reserved.pop(job_id, Decimal(0))
        if self.cap is not None and self.committed + amount > self.cap:
            if previous:
                self._reserved[job_id] = previous
            self.exhausted = True
            return False
        self._reserved[job_id] = amount
        return True

    def settle(self, job_id: str, actual: Decimal) -> None:
        """The job's cost is known (0 for a failure): it replaces the reservation.

        Only a job this run reserved counts: an adopted task was another run's spending.
        """
        if self._reserved.pop(job_id, None) is not None:
            self.spent += actual

    def release(self, job_id: str) -> None:
        """The job will not be paid for in this run (abandoned before or while submitting)."""
        self._reserved.pop(job_id, None)
