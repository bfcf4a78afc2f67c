"""The engine: drives each job through its stages (stages.py), resumably, many at once.

Concurrency: a fixed pool of job drivers (no task per row, so 100,000 rows cost no more memory
than 100), an in-flight gate of `concurrency` tasks submitted and not yet finished at the
provider, one shared rate limiter inside the client, one batched poller, and one submit queue that
sends submissions falling due together in one POST.

Errors are judged once, here, per job: one that `stops_run` (auth, credit) stops every driver;
any other API error a stage did not decide leaves its job where the state file says, for the
next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path

from avatarbatch.config import RunSettings
from avatarbatch.engine.context import JobWork, RunContext
from avatarbatch.engine.outcome import Hooks, Outcome, Progress
from avatarbatch.engine.stages import FIRST_STEP, SLOT_STEPS, Drive, Stages, Step
from avatarbatch.engine.strays import settle_stray
from avatarbatch.engine.uploads import Uploads
from avatarbatch.errors import ApiError
from avatarbatch.manifest.media import MediaInfo
from avatarbatch.plan import PlannedJob
from avatarbatch.runware.client import RunwareClient
from avatarbatch.state.store import JobStatus, StateStore, StrayTask

log = logging.getLogger("avatarbatch.run")

#: Jobs whose task is already at the provider: they take their render slots before any new job.
ADOPTED = (JobStatus.SUBMITTING, JobStatus.PROCESSING)
#: Job drivers per --concurrency slot, and at least MIN_DRIVERS: while the slots render, the
#: other drivers upload the next jobs' inputs and download finished videos, so a slot that
#: frees up is taken at once.
DRIVERS_PER_SLOT = 2
MIN_DRIVERS = 4


class Runner:
    def __init__(
        self,
        planned: Sequence[PlannedJob],
        media: Mapping[str, MediaInfo],
        state: StateStore,
        client: RunwareClient,
        out: Path,
        settings: RunSettings,
        hooks: Hooks | None = None,
        run_id: int | None = None,
        *,
        estimated_total: Decimal,
        manifest_ids: Iterable[str] | None = None,
    ) -> None:
        """`estimated_total`: the plan's estimate of `planned` (budget.estimated_total)."""
        self.work = {p.job.id: JobWork.of(p) for p in planned}
        #: every job of the manifest, when this run works on a subset: a task of a job outside
        #: the subset is that job's, not a stray to settle
        self.manifest_ids = list(manifest_ids) if manifest_ids is not None else list(self.work)
        self.estimated_total = float(estimated_total)
        self.ctx = RunContext(state, client, out, settings, hooks, run_id)
        self.uploads = Uploads(state, self.ctx.writes, client, media)
        self.stages = Stages(self.ctx, self.uploads)

    @property
    def outcome(self) -> Outcome:
        return self.ctx.outcome

    def progress(self) -> Progress:
        """Where the run stands, for progress displays."""
        counts = self.ctx.state.counts()
        spent = float(self.ctx.budget.spent)
        return Progress(len(self.work), counts, spent, self.estimated_total)

    # --- the whole run ------------------------------------------------------------------------

    def todo(self) -> list[JobWork]:
        """Jobs this run works on: unfinished ones, plus failed ones when retrying."""
        retrying = self.ctx.settings.retry_failed
        # SQL names the unfinished jobs: a rerun with everything done walks none of them.
        left = self.ctx.state.unfinished(failed=retrying)
        selected: list[tuple[JobStatus, JobWork]] = []
        for job_id, work in self.work.items() if left else ():
            status = left.get(job_id)
            if status is None:
                continue
            if status is JobStatus.FAILED:
                # Before the run's writer starts: this connection may write directly.
                self.ctx.state.transition(
                    job_id, JobStatus.PENDING, error_code=None, error_message=None
                )
                status = JobStatus.PENDING
            selected.append((status, work))
        # Adopted tasks first: they hold render slots at the provider already, so they must
        # take --concurrency slots before any new submission can.
        selected.sort(key=lambda chosen: chosen[0] not in ADOPTED)
        return [work for _, work in selected]

    async def run(self) -> Outcome:
        ctx = self.ctx
        todo = self.todo()
        strays = ctx.state.stray_tasks(self.manifest_ids)
        if not todo and not strays:
            return ctx.outcome
        queue: asyncio.Queue[JobWork] = asyncio.Queue()
        for work in todo:
            queue.put_nowait(work)
        drivers = min(len(todo), max(MIN_DRIVERS, ctx.settings.concurrency * DRIVERS_PER_SLOT))
        # Strays first: like adopted tasks, they hold render slots at the provider already.
        ctx.drivers = [asyncio.create_task(self._settle(task)) for task in strays]
        ctx.drivers += [asyncio.create_task(self._worker(queue)) for _ in range(drivers)]
        try:
            await asyncio.gather(*ctx.drivers)
        except asyncio.CancelledError:
            ctx.outcome.interrupted = True
            raise
        finally:
            for driver in ctx.drivers:
                driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*ctx.drivers, return_exceptions=True)
            await self.uploads.aclose()
            await ctx.aclose()
        return ctx.outcome

    def interrupt(self) -> None:
        """A signal asked the run to end: jobs at the provider are picked up by the next run."""
        self.ctx.outcome.interrupted = True
        self.ctx.stop("interrupted; in-flight tasks are picked up by the next run")

    async def _worker(self, queue: asyncio.Queue[JobWork]) -> None:
        ctx = self.ctx
        while not queue.empty() and not ctx.stopping.is_set():
            work = queue.get_nowait()
            try:
                await self._drive(work)
            except ApiError as exc:
                if self._stopped_by(exc):
                    return
                # Retries ran out where no stage decides (an upload, a poll the API refused,
                # the check of an earlier submission): the job stays where the state file
                # says and the next run carries on from there.
                status = ctx.record(work.job.id).status
                ctx.outcome.left_by = str(exc)
                log.warning("job %s: %s; left %s for the next run", work.job.id, exc, status)

    async def _settle(self, task: StrayTask) -> None:
        try:
            await settle_stray(self.ctx, task)
        except ApiError as exc:
            if not self._stopped_by(exc):
                raise

    def _stopped_by(self, exc: ApiError) -> bool:
        """The one place that decides whether an API error ends the whole run."""
        if not exc.stops_run:
            return False
        self.ctx.outcome.fatal = exc
        self.ctx.stop(f"{exc} (no further jobs are started; rerun when it is fixed)")
        return True

    async def _drive(self, work: JobWork) -> None:
        """Run a job's stages one after another, holding a --concurrency slot while it is at
        the provider."""
        drive = Drive(work, self.ctx.record(work.job.id))
        step = FIRST_STEP[drive.record.status]
        slot = self.ctx.in_flight
        holding = False
        try:
            while step is not Step.END:
                if step in SLOT_STEPS and not holding:
                    await slot.acquire()
                    holding = True
                elif step not in SLOT_STEPS and holding:
                    slot.release()
                    holding = False
                step = await self.stages.run(step, drive)
        finally:
            if holding:
                slot.release()
