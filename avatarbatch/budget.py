"""The spending cap of `--max-cost`: submit a job only while everything stays within it.

Committed cost = what finished jobs actually cost (across every run of this state file) +
the estimates of jobs in flight. A job is submitted only if committed + its own estimate stays
within the cap. A job whose audio length is unknown (remote audio) reserves the worst case,
300 seconds per result, since its real cost cannot be known in advance.
"""

from __future__ import annotations

from decimal import Decimal

from avatarbatch import catalog


class Budget:
    def __init__(self, cap: Decimal | None, spent: Decimal = Decimal(0)) -> None:
        self.cap = cap
        self.spent = spent
        self._reserved: dict[str, Decimal] = {}
        self.exhausted = False  #: a reservation was refused: no more submissions this run

    @staticmethod
    def estimate(model: catalog.AvatarModel, seconds: float | None, results: int) -> Decimal:
        return model.cost(catalog.AUDIO_MAX_SECONDS if seconds is None else seconds, results)

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
        """The job's cost is known (0 for a failure): it replaces the reservation."""
        self._reserved.pop(job_id, None)
        self.spent += actual

    def release(self, job_id: str) -> None:
        """The job will not be paid for in this run (abandoned before or while submitting)."""
        self._reserved.pop(job_id, None)
