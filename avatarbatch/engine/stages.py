"""One job's way through a run: one stage per step, each returning the next step.

A job's first step follows from its status in the state file (DESIGN.md's reconciliation
table): `pending`/`uploading` upload (free, cached by content hash), `submitting` asks
getResponse whether its task UUID exists and resends the *same* UUID only if not,
`processing` polls, `downloading` downloads. Every step that creates remote state or costs
money is written ahead: the job's status and, for a submission, its task UUID are committed
before the request is sent, and the outcome is committed after. So a job is paid for at most
once per attempt, wherever the process died.

No stage calls another: the runner loops `step = await stages.run(step, drive)` until END.
A stage leaves a job for the next run, or fails it, by returning END. Each catches only the
errors it decides; any other (retries ran out, or an error that stops the run) reaches the
worker untouched, which alone judges it (runner.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from avatarbatch.engine.budget import billed_cost
from avatarbatch.engine.context import JobWork, RunContext, new_uuid
from avatarbatch.engine.downloads import download
from avatarbatch.engine.outcome import Checkpoint
from avatarbatch.engine.outputs import VIDEOS
from avatarbatch.engine.payloads import video_task
from avatarbatch.engine.uploads import Uploads
from avatarbatch.errors import ApiError, ConflictError, RejectedError, TransientError
from avatarbatch.runware import classify
from avatarbatch.runware.client import TaskState
from avatarbatch.state.store import JobRecord, JobStatus, OwnedFile, TaskEntry, TaskStatus

log = logging.getLogger("avatarbatch.run")


class Step(Enum):
    UPLOAD = "upload"  #: inputs to the API (free: once per content, cached)
    REUPLOAD = "reupload"  #: inputs again: the API refused a submission for a forgotten input
    SUBMIT = "submit"  #: a new attempt: a new task UUID, written ahead, then the paid POST
    RESEND = "resend"  #: the same task UUID again: it never arrived, or the API lost it
    CHECK = "check"  #: a submission whose outcome was never recorded: did the API get it?
    POLL = "poll"  #: wait for the render, then book its results and cost
    DOWNLOAD = "download"  #: fetch, verify and place the paid videos
    END = "end"  #: nothing more for this job in this run


#: The first step of a job, by its status in the state file.
FIRST_STEP: dict[JobStatus, Step] = {
    JobStatus.PENDING: Step.UPLOAD,
    JobStatus.UPLOADING: Step.UPLOAD,
    JobStatus.SUBMITTING: Step.CHECK,
    JobStatus.PROCESSING: Step.POLL,
    JobStatus.DOWNLOADING: Step.DOWNLOAD,
    JobStatus.DONE: Step.END,
    JobStatus.FAILED: Step.END,
}
#: Steps during which a job holds one of the --concurrency slots: from its submission until
#: its task has ended at the provider (the first upload and the download hold none).
SLOT_STEPS = frozenset({Step.REUPLOAD, Step.SUBMIT, Step.RESEND, Step.CHECK, Step.POLL})


@dataclass
class Drive:
    """One job on its way through this run."""

    work: JobWork
    record: JobRecord  #: as the state file has it after the latest move
    refreshed: bool = False  #: inputs uploaded again for the next submission: only once


class Stages:
    def __init__(self, ctx: RunContext, uploads: Uploads) -> None:
        self.ctx = ctx
        self.uploads = uploads
        #: task UUIDs sent again because the API did not know them: a second "unknown" is final
        self._resent: set[str] = set()
        self._stages: dict[Step, Callable[[Drive], Awaitable[Step]]] = {
            Step.UPLOAD: self.upload,
            Step.REUPLOAD: self.reupload,
            Step.SUBMIT: self.submit,
            Step.RESEND: self.resend,
            Step.CHECK: self.check,
            Step.POLL: self.poll,
            Step.DOWNLOAD: self.download,
        }

    async def run(self, step: Step, drive: Drive) -> Step:
        return await self._stages[step](drive)

    # --- uploading ----------------------------------------------------------------------------

    async def upload(self, drive: Drive) -> Step:
        return await self._upload(drive, refresh=False)

    async def reupload(self, drive: Drive) -> Step:
        """Runware forgets uploads unused for 30 days: upload again, once, and resubmit."""
        step = await self._upload(drive, refresh=True)
        drive.refreshed = True
        return step

    async def _upload(self, drive: Drive, *, refresh: bool) -> Step:
        ctx, job = self.ctx, drive.work.job
        if not ctx.may_start():
            return Step.END
        drive.record = await ctx.transition(job.id, JobStatus.UPLOADING)
        await ctx.checkpoint(Checkpoint.UPLOAD_BEFORE, job.id)
        try:
            image = await self.uploads.value(job.portrait, "image", refresh=refresh)
            audio = await self.uploads.value(job.audio, "media", refresh=refresh)
        except (RejectedError, ConflictError) as exc:
            # The API refused the input itself: this job cannot succeed. Any other error is
            # the worker's to judge: it leaves the job for the next run, or stops the run.
            await ctx.fail(job.id, exc)
            return Step.END
        await ctx.checkpoint(Checkpoint.UPLOAD_AFTER, job.id)
        drive.record = await ctx.transition(
            job.id,
            JobStatus.UPLOADING,
            image_input=image if not job.portrait.is_inline else None,
            audio_input=audio,
        )
        return Step.SUBMIT

    # --- submitting ---------------------------------------------------------------------------

    async def submit(self, drive: Drive) -> Step:
        return await self._send(drive, new_attempt=True)

    async def resend(self, drive: Drive) -> Step:
        return await self._send(drive, new_attempt=False)

    async def check(self, drive: Drive) -> Step:
        ctx, job, task_uuid = self.ctx, drive.work.job, drive.record.task_uuid
        assert task_uuid is not None
        known = (await ctx.client.poll([task_uuid]))[task_uuid]
        if known.unknown:  # a not-found error, or an answer that does not mention the task
            log.info("job %s: task %s never arrived; submitting it again", job.id, task_uuid)
            return Step.RESEND
        accepted = TaskEntry(task_uuid, TaskStatus.ACCEPTED)
        drive.record = await ctx.transition(job.id, JobStatus.PROCESSING, tasks=[accepted])
        return Step.POLL

    async def _send(self, drive: Drive, *, new_attempt: bool) -> Step:
        ctx, work, job = self.ctx, drive.work, drive.work.job
        refreshed, drive.refreshed = drive.refreshed, False
        if not ctx.may_start():
            return Step.END
        if not ctx.budget.reserve(job.id, work.reservation):
            ctx.outcome.budget_stopped = True
            return Step.END
        record = drive.record
        task_uuid = new_uuid() if new_attempt else record.task_uuid
        assert task_uuid is not None
        image = record.image_input or job.portrait.value
        audio = record.audio_input or job.audio.value
        if new_attempt:
            first = TaskEntry(
                task_uuid,
                TaskStatus.SUBMITTING,
                attempt=record.attempts + 1,
                spec_hash=record.spec_hash,
                run_id=ctx.run_id,
                estimated_cost=float(work.reservation),
            )
            drive.record = await ctx.transition(
                job.id,
                JobStatus.SUBMITTING,
                tasks=[first],
                task_uuid=task_uuid,
                attempts=record.attempts + 1,
                submitted_at=time.time(),
                error_code=None,
                error_message=None,
            )
        else:  # the same task UUID again: if it lands now, this run is the one that sent it
            resent = TaskEntry(task_uuid, TaskStatus.SUBMITTING, run_id=ctx.run_id)
            await ctx.settle(job.id, resent)
        await ctx.checkpoint(Checkpoint.SUBMIT_BEFORE, job.id)
        try:
            await ctx.submissions.submit(video_task(job, image, audio, task_uuid))
        except ConflictError:
            log.info("job %s: task %s already accepted earlier; polling it", job.id, task_uuid)
        except TransientError as exc:
            # It may have landed: leave it `submitting`; the next run asks getResponse. It may
            # be billed, too, so its reservation stays: --max-cost holds even then.
            log.warning(
                "job %s: submit did not get through (%s); the next run checks it", job.id, exc
            )
            return Step.END
        except RejectedError as exc:
            return await self._refused(drive, task_uuid, exc, refreshed=refreshed)
        except ApiError:
            # Not this stage's to decide (the worker stops the run), but the API refused the
            # task: the ledger books it as never billed first.
            for entry in self._refusal(drive, task_uuid):
                await ctx.settle(job.id, entry)
            raise
        ctx.outcome.tasks_sent += 1
        ctx.outcome.submitted_jobs.add(job.id)
        await ctx.checkpoint(Checkpoint.SUBMIT_SENT, job.id)
        accepted = TaskEntry(task_uuid, TaskStatus.ACCEPTED)
        drive.record = await ctx.transition(job.id, JobStatus.PROCESSING, tasks=[accepted])
        log.info("job %s: submitted task %s (attempt %d)", job.id, task_uuid, drive.record.attempts)
        await ctx.checkpoint(Checkpoint.SUBMIT_AFTER, job.id)
        return Step.POLL

    def _refusal(self, drive: Drive, task_uuid: str) -> list[TaskEntry]:
        """A refused submission's reservation released, and the ledger entry booking it as
        never billed: none for a task the API accepted once (resent because it no longer knew
        it), which may have been billed: its ledger row stays open, to be settled as a stray."""
        self.ctx.budget.release(drive.work.job.id)
        if _accepted_once(drive):
            return []
        return [TaskEntry(task_uuid, TaskStatus.REFUSED, billed_cost=0.0)]

    async def _refused(
        self, drive: Drive, task_uuid: str, exc: RejectedError, *, refreshed: bool
    ) -> Step:
        """The API refused a submission: upload again, leave the job, or fail it."""
        ctx, job = self.ctx, drive.work.job
        refused = self._refusal(drive, task_uuid)
        if classify.is_stale_input(exc) and not refreshed:
            for entry in refused:
                await ctx.settle(job.id, entry)
            log.warning("job %s: %s; uploading the inputs again", job.id, exc)
            return Step.REUPLOAD
        if _accepted_once(drive):
            # Never failed for it either, which would make --retry-failed pay again.
            log.warning(
                "job %s: task %s, which the API accepted once, was refused when sent again "
                "(%s); left as it is for the next run, never paid again",
                job.id,
                task_uuid,
                exc,
            )
            return Step.END
        await ctx.fail(job.id, exc, *refused)
        return Step.END

    # --- rendering ----------------------------------------------------------------------------

    async def poll(self, drive: Drive) -> Step:
        ctx, work, task_uuid = self.ctx, drive.work, drive.record.task_uuid
        assert task_uuid is not None
        waiting = ctx.poller.watch(
            task_uuid, work.job.number_results, work.audio_seconds, model=work.job.model
        )
        try:
            async with asyncio.timeout(ctx.settings.job_timeout):
                state = await waiting
        except TimeoutError:
            ctx.poller.forget(task_uuid)
            ctx.outcome.timed_out.append(work.job.id)
            log.warning(
                "job %s: no result after %.0f s; the next run keeps polling",
                work.job.id,
                ctx.settings.job_timeout,
            )
            return Step.END
        await ctx.checkpoint(Checkpoint.POLL_DONE, work.job.id)
        if state.unknown and task_uuid not in self._resent:
            # Still unknown after the poller's grace period, though the API accepted it: send
            # the very same task again. A copy of a task it has is refused as a conflict,
            # never billed; a task it lost is rendered now, once.
            self._resent.add(task_uuid)
            log.warning(
                "job %s: the API does not know task %s, which it accepted; sending it again",
                work.job.id,
                task_uuid,
            )
            return Step.RESEND
        if state.results:
            return await self._billed(drive, task_uuid, state)
        return await self._unbilled(drive, task_uuid, state)

    async def _billed(self, drive: Drive, task_uuid: str, state: TaskState) -> Step:
        ctx, job = self.ctx, drive.work.job
        cost, source = billed_cost(state.results, drive.work.per_result)
        ctx.budget.settle(job.id, cost)
        billed = TaskEntry(
            task_uuid, TaskStatus.BILLED, billed_cost=float(cost), cost_source=source
        )
        drive.record = await ctx.transition(
            job.id,
            JobStatus.DOWNLOADING,
            tasks=[billed],
            # Claimed before a byte lands there: a crash right after a video is moved into
            # place must not leave a file the next run takes for someone else's.
            files=[OwnedFile(f"{VIDEOS}/{name}", job.id) for name in job.outputs],
            actual_cost=float(cost),
            # As stored: every field by its Python name; the task UUID is the job's own.
            results=[r.model_dump(exclude={"task_uuid"}) for r in state.results],
            error_code=state.errors[0].code if state.errors else None,
            error_message=str(state.errors[0]) if state.errors else None,
        )
        return Step.DOWNLOAD

    async def _unbilled(self, drive: Drive, task_uuid: str, state: TaskState) -> Step:
        """The task ended without a result: try a new attempt if that may help, else fail."""
        ctx, job = self.ctx, drive.work.job
        ctx.budget.settle(job.id, Decimal(0))
        unbilled = TaskEntry(task_uuid, TaskStatus.UNBILLED, billed_cost=0.0)
        await ctx.settle(job.id, unbilled)
        error = _unknown_task(task_uuid, state) if state.unknown else state.errors[0]
        retryable = isinstance(error, TransientError) and not state.not_found
        attempts_left = drive.record.attempts < ctx.settings.generation_attempts
        if retryable and attempts_left and not ctx.stopping.is_set():
            log.warning("job %s: generation failed (%s); trying again", job.id, error)
            return Step.SUBMIT
        await ctx.fail(job.id, error)
        return Step.END

    # --- downloading --------------------------------------------------------------------------

    async def download(self, drive: Drive) -> Step:
        await download(self.ctx, drive.work, drive.record)
        return Step.END


def _unknown_task(task_uuid: str, state: TaskState) -> ApiError:
    said = f" (it said: {state.errors[0]})" if state.errors else " (it did not mention it)"
    return RejectedError(
        f"Runware no longer knows task {task_uuid}, which it had accepted, and sending it "
        f"again did not bring it back{said}",
        code="taskNotFound",
        task_uuid=task_uuid,
    )


def _accepted_once(drive: Drive) -> bool:
    """Whether the task being sent is one the API accepted before (and may have billed)."""
    return drive.record.status is JobStatus.PROCESSING
