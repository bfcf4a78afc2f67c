"""What every part of one run shares: the state file, the client, the settings, the gates.

The runner builds one `RunContext`; the stages, uploads, downloads and stray settlement all
work through it, so each of them is a module of its own without reaching into the runner.
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from avatarbatch.config import RunSettings
from avatarbatch.engine.budget import Budget, result_estimate
from avatarbatch.engine.outcome import Checkpoint, Hooks, Outcome
from avatarbatch.engine.poller import Poller
from avatarbatch.engine.submit_queue import SubmitQueue
from avatarbatch.errors import ApiError
from avatarbatch.manifest.document import Job
from avatarbatch.plan import PlannedJob
from avatarbatch.runware.client import RunwareClient
from avatarbatch.state.store import JobRecord, JobStatus, OwnedFile, StateStore, TaskEntry
from avatarbatch.state.writer import StateWriter

log = logging.getLogger("avatarbatch.run")


def new_uuid() -> str:
    """A fresh UUID for a task (tests replace `uuidlib` here to replay faults drawn per UUID)."""
    return str(uuidlib.uuid4())


@dataclass(frozen=True)
class JobWork:
    """One job as the runner drives it, with what the plan worked out for it, once."""

    job: Job
    audio_seconds: float | None  #: None when the audio is remote and unmeasured
    per_result: Decimal  #: the estimate of one result: the worst case for unmeasured audio

    @classmethod
    def of(cls, planned: PlannedJob) -> JobWork:
        seconds = planned.audio_seconds
        return cls(planned.job, seconds, result_estimate(planned.job.catalog_model, seconds))

    @property
    def reservation(self) -> Decimal:
        """What a submission of this job holds against --max-cost until its cost is known."""
        return self.per_result * self.job.number_results


class RunContext:
    """The shared parts of one run; created inside the event loop that runs it."""

    def __init__(
        self,
        state: StateStore,
        client: RunwareClient,
        out: Path,
        settings: RunSettings,
        hooks: Hooks | None,
        run_id: int | None,
    ) -> None:
        self.state = state  #: for reads; every write of the run goes through `writes`
        self.writes = StateWriter(state)
        self.client = client
        self.out = out
        self.settings = settings
        self.hooks = hooks or Hooks()
        self.run_id = run_id
        self.outcome = Outcome()
        # --max-cost caps what this invocation submits; tasks adopted from an interrupted run
        # were committed by that run and are not charged to this one.
        self.budget = Budget(settings.max_cost)
        self.poller = Poller(client, settings.poll)
        self.submissions = SubmitQueue(client)
        self.in_flight = asyncio.Semaphore(settings.concurrency)
        self.downloading = asyncio.Semaphore(settings.downloads)
        self.stopping = asyncio.Event()
        self.drivers: list[asyncio.Task[None]] = []

    def stop(self, reason: str) -> None:
        """Stop starting new work; jobs already at the provider are polled by the next run."""
        if not self.stopping.is_set():
            log.warning("stopping: %s", reason)
            self.stopping.set()
            for driver in self.drivers:
                driver.cancel()

    def may_start(self) -> bool:
        """Whether a job may start something new: not once stopping, nor once over budget."""
        if self.stopping.is_set():
            return False
        if self.budget.exhausted:
            self.outcome.budget_stopped = True
            return False
        return True

    async def checkpoint(self, point: Checkpoint, job_id: str) -> None:
        await self.hooks.checkpoint(point, job_id)

    def record(self, job_id: str) -> JobRecord:
        record = self.state.get(job_id)
        assert record is not None, job_id
        return record

    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        tasks: list[TaskEntry] | None = None,
        files: list[OwnedFile] | None = None,
        **fields: object,
    ) -> JobRecord:
        """Move a job; returns once the move is durable (see state/writer.py)."""
        return await self.writes.transition(
            job_id, to, tasks=tasks or (), files=files or (), **fields
        )

    async def settle(self, job_id: str, entry: TaskEntry) -> None:
        """Book a task's outcome in the ledger; returns once it is durable."""
        await self.writes.settle_task(job_id, entry)

    async def fail(self, job_id: str, error: ApiError, *tasks: TaskEntry) -> None:
        await self.transition(
            job_id,
            JobStatus.FAILED,
            tasks=list(tasks),
            error_code=error.code or error.category,
            error_message=str(error),
        )
        log.error("job %s: failed: %s", job_id, error)

    async def aclose(self) -> None:
        await self.submissions.aclose()
        await self.poller.aclose()
        await self.writes.aclose()  # last: what the others settled while closing is written
