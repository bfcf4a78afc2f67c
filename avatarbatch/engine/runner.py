"""The engine: drives each job through upload, submit, render and download, resumably.

Every step that creates remote state or costs money is written ahead: the job's status and,
for a submission, its task UUID are committed before the request is sent, and the outcome is
committed after. On start, each unfinished job resumes from what the state file says
(DESIGN.md's reconciliation table): `uploading` uploads again (free, cached by content hash),
`submitting` asks getResponse whether its task UUID exists and resubmits the *same* UUID only
if not, `processing` keeps polling, `downloading` downloads again. So a job is paid for at
most once per attempt, wherever the process died.

Concurrency: a fixed pool of job drivers (no task per row, so 100,000 rows cost no more memory
than 100), an in-flight gate of `concurrency` tasks submitted and not yet finished at the
provider, one shared rate limiter inside the client, one batched poller, and one submit queue that
sends submissions falling due together in one POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from avatarbatch.engine.budget import Budget
from avatarbatch.engine.outputs import VIDEOS
from avatarbatch.engine.payloads import video_task
from avatarbatch.engine.poller import Poller, PollTiming
from avatarbatch.engine.submit_queue import SubmitQueue
from avatarbatch.engine.verify import VideoCheckError, verify_video
from avatarbatch.errors import (
    ApiError,
    AuthError,
    ConflictError,
    CreditError,
    RejectedError,
    TransientError,
)
from avatarbatch.manifest.document import Job
from avatarbatch.manifest.media import MediaInfo, MediaRef
from avatarbatch.runware import classify
from avatarbatch.runware.client import RunwareClient, TaskState, VideoResult
from avatarbatch.state.store import (
    JobRecord,
    JobStatus,
    OwnedFile,
    StateStore,
    StrayTask,
    TaskEntry,
    TaskStatus,
)

log = logging.getLogger("avatarbatch.run")

MIME_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MP3": "audio/mpeg",
    "WAV": "audio/wav",
    "M4A": "audio/mp4",
    "AAC": "audio/aac",
}
FINISHED = (JobStatus.DONE, JobStatus.FAILED)
#: Jobs whose task is already at the provider: they take their render slots before any new job.
ADOPTED = (JobStatus.SUBMITTING, JobStatus.PROCESSING)
#: downloads of one result that may fail the video check before the job is left for the next
#: run (the result is paid for: a bad download is never a reason to pay again)
VERIFY_ATTEMPTS = 3


@dataclass(frozen=True)
class RunOptions:
    concurrency: int = 4  #: tasks submitted and not yet finished at the provider
    max_cost: Decimal | None = None
    retry_failed: bool = False
    generation_attempts: int = 3  #: submissions per job when generations fail transiently
    job_timeout: float = 3600.0  #: longest wait for one task at the provider, seconds
    #: videos downloaded at once: enough to fill a link from a CDN, and few enough that the
    #: HTTP pool stays small (see make_http_client). A job waiting here holds no render slot.
    downloads: int = 8
    poll: PollTiming = field(default_factory=PollTiming)


class Hooks:
    """Test seam: awaited at every write-ahead point, e.g. to simulate a crash right there."""

    async def checkpoint(self, point: str, job_id: str) -> None:
        return None


class Stopped(Exception):
    """Why a job driver stopped early without the job failing (budget, shutdown, auth)."""


@dataclass
class Outcome:
    """What this invocation did, for the summary and the exit code."""

    submitted_jobs: set[str] = field(default_factory=set)  #: jobs with a task accepted
    tasks_sent: int = 0  #: tasks accepted, retries of a job included
    fatal: ApiError | None = None  #: an auth or credit failure that stopped the run
    budget_stopped: bool = False
    interrupted: bool = False
    timed_out: list[str] = field(default_factory=list)
    local_error: str | None = None  #: a local failure (disk full...) that stopped the run
    left_by: str | None = None  #: the API error that left jobs for the next run, if any


class Runner:
    def __init__(
        self,
        jobs: list[Job],
        media: Mapping[str, MediaInfo],
        state: StateStore,
        client: RunwareClient,
        out: Path,
        options: RunOptions,
        hooks: Hooks | None = None,
        run_id: int | None = None,
        *,
        manifest_ids: Iterable[str] | None = None,
    ) -> None:
        self.jobs = {job.id: job for job in jobs}
        #: every job of the manifest, when this run works on a subset: a task of a job outside
        #: the subset is that job's, not a stray to settle
        self.manifest_ids = list(manifest_ids) if manifest_ids is not None else list(self.jobs)
        self.estimated_total = 0.0  #: for progress displays: the plan's estimate of every job
        self.media = media
        self.state = state
        self.client = client
        self.out = out
        self.options = options
        self.hooks = hooks or Hooks()
        self.run_id = run_id
        self.outcome = Outcome()
        # --max-cost caps what this invocation submits; tasks adopted from an interrupted run
        # were committed by that run and are not charged to this one.
        self.budget = Budget(options.max_cost)
        self.poller = Poller(client, options.poll)
        self.submissions = SubmitQueue(client)
        self._in_flight = asyncio.Semaphore(options.concurrency)
        self._downloading = asyncio.Semaphore(options.downloads)
        self._uploads: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._refreshed: set[tuple[str, str]] = set()
        #: task UUIDs sent again because the API did not know them: a second "unknown" is final
        self._resent: set[str] = set()
        self._stopping = asyncio.Event()
        self._drivers: list[asyncio.Task[None]] = []

    # --- the whole run ------------------------------------------------------------------------

    def todo(self) -> list[Job]:
        """Jobs this run works on: unfinished ones, plus failed ones when retrying."""
        records = self.state.jobs()
        selected = []
        for job in self.jobs.values():
            record = records[job.id]
            if record.status is JobStatus.FAILED and self.options.retry_failed:
                self.state.transition(
                    job.id, JobStatus.PENDING, error_code=None, error_message=None
                )
            elif record.status in FINISHED:
                continue
            selected.append(job)
        # Adopted tasks first: they hold render slots at the provider already, so they must
        # take --concurrency slots before any new submission can.
        selected.sort(key=lambda job: records[job.id].status not in ADOPTED)
        return selected

    async def run(self) -> Outcome:
        todo = self.todo()
        strays = self.state.stray_tasks(self.manifest_ids)
        if not todo and not strays:
            return self.outcome
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in todo:
            queue.put_nowait(job)
        workers = min(len(todo), max(4, self.options.concurrency * 2))
        # Strays first: like adopted tasks, they hold render slots at the provider already.
        self._drivers = [asyncio.create_task(self._settle_stray(task)) for task in strays]
        self._drivers += [asyncio.create_task(self._worker(queue)) for _ in range(workers)]
        try:
            await asyncio.gather(*self._drivers)
        except asyncio.CancelledError:
            self.outcome.interrupted = True
            raise
        finally:
            for driver in self._drivers:
                driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._drivers, return_exceptions=True)
            # Shielded uploads may outlive the job that started them: end them before the
            # HTTP client closes under them.
            for upload in self._uploads.values():
                upload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._uploads.values(), return_exceptions=True)
            await self.submissions.aclose()
            await self.poller.aclose()
        return self.outcome

    def stop(self, reason: str) -> None:
        """Stop starting new work; jobs already at the provider are polled by the next run."""
        if not self._stopping.is_set():
            log.warning("stopping: %s", reason)
            self._stopping.set()
            for driver in self._drivers:
                driver.cancel()

    async def _worker(self, queue: asyncio.Queue[Job]) -> None:
        while not queue.empty() and not self._stopping.is_set():
            job = queue.get_nowait()
            try:
                await self._drive(job)
            except Stopped:
                continue
            except (AuthError, CreditError) as exc:
                self.outcome.fatal = exc
                self.stop(f"{exc} (no further jobs are started; rerun when it is fixed)")
                return
            except ApiError as exc:
                # Retries ran out where no stage decides (an upload, a poll the API refused, the
                # check of an earlier submission): the job stays where the state file says and
                # the next run carries on from there. Escaping, it ended every job's driver.
                status = self._record(job.id).status
                self.outcome.left_by = str(exc)
                log.warning("job %s: %s; left %s for the next run", job.id, exc, status)

    # --- one job ------------------------------------------------------------------------------

    async def _drive(self, job: Job) -> None:
        record = self._record(job.id)
        if record.status in (JobStatus.PENDING, JobStatus.UPLOADING):
            record = await self._upload_inputs(job)
        async with self._in_flight:
            if record.status in (JobStatus.PENDING, JobStatus.UPLOADING):
                record = await self._submit(job, record, new_attempt=True)
            elif record.status is JobStatus.SUBMITTING:
                record = await self._reconcile_submission(job, record)
            while record.status is JobStatus.PROCESSING:  # again after a resubmission
                record = await self._await_render(job, record)
        if record.status is JobStatus.DOWNLOADING:
            await self._download(job, record)

    async def _settle_stray(self, task: StrayTask) -> None:
        """Wait for a task no job drives any more (its spec changed or its row was removed
        while it rendered) and book what it cost: the provider bills it all the same.

        One still `submitting` may never have landed: it holds no render slot, and only when
        it stays unknown through the not-found grace period is it booked as never billed (a
        registration lag must not pass for "it never arrived").
        """
        uuid = task.task_uuid
        landed = task.status is not TaskStatus.SUBMITTING
        async with self._in_flight if landed else contextlib.nullcontext():
            waiting = self.poller.watch(uuid, task.number_results, task.audio_seconds)
            try:
                async with asyncio.timeout(self.options.job_timeout):
                    state = await waiting
            except (TimeoutError, ApiError) as exc:
                self.poller.forget(uuid)
                log.warning(
                    "earlier task %s of %s: %s; the next run asks again", uuid, task.job_id, exc
                )
                return
        if state.unknown and not landed:
            gone = TaskEntry(uuid, TaskStatus.REFUSED, billed_cost=0.0)
            self.state.settle_task(task.job_id, gone)
            return
        per_result = Decimal(str(task.estimated_cost or 0.0)) / task.number_results
        cost, source = billed_cost(state.results, per_result)
        status = TaskStatus.BILLED if state.results else TaskStatus.UNBILLED
        entry = TaskEntry(uuid, status, billed_cost=float(cost), cost_source=source)
        self.state.settle_task(task.job_id, entry)
        log.info("earlier task %s of %s ended: $%.5f booked", uuid, task.job_id, cost)

    async def _upload_inputs(self, job: Job, *, refresh: bool = False) -> JobRecord:
        self._check_running()
        self._transition(job, JobStatus.UPLOADING)
        await self.hooks.checkpoint("upload:before", job.id)
        try:
            image = await self._input(job.portrait, "image", refresh=refresh)
            audio = await self._input(job.audio, "media", refresh=refresh)
        except ApiError as exc:
            if isinstance(exc, TransientError | AuthError | CreditError):
                raise  # the worker stops the run, or leaves the job for the next run
            self._fail(job, exc)  # the API refused the input itself: this job cannot succeed
            raise Stopped("upload rejected") from exc
        await self.hooks.checkpoint("upload:after", job.id)
        return self._transition(
            job,
            JobStatus.UPLOADING,
            image_input=image if not job.portrait.is_inline else None,
            audio_input=audio,
        )

    async def _input(self, ref: MediaRef, kind: str, *, refresh: bool = False) -> str:
        """The value to send for an input: remote refs as they are, local files uploaded once.

        `refresh` replaces a cached upload the API refused; concurrent refreshes of one file
        share a single new upload.
        """
        if not ref.is_local:
            return ref.value
        info = self.media[ref.value]
        key = (info.sha256, kind)
        if refresh and key not in self._refreshed:
            self._refreshed.add(key)
            self._uploads.pop(key, None)
        elif key not in self._uploads:
            cached = self.state.upload_for(info.sha256, kind)
            if cached is not None:
                return cached[0]
        if key not in self._uploads:
            self._uploads[key] = asyncio.ensure_future(self._upload(ref, info, kind))
        try:
            return await asyncio.shield(self._uploads[key])
        except ApiError:
            self._uploads.pop(key, None)  # let the next job try again
            raise

    async def _upload(self, ref: MediaRef, info: MediaInfo, kind: str) -> str:
        data = await asyncio.to_thread(Path(ref.value).read_bytes)
        mime = MIME_TYPES.get(info.format, "application/octet-stream")
        upload_call = self.client.upload_image if kind == "image" else self.client.upload_media
        upload = await upload_call(data, mime, str(uuidlib.uuid4()))
        self.state.record_upload(info.sha256, kind, upload.uuid, upload.url)
        log.info("uploaded %s as %s", ref.written, upload.uuid)
        return upload.uuid

    async def _submit(
        self, job: Job, record: JobRecord, *, new_attempt: bool, refreshed: bool = False
    ) -> JobRecord:
        self._check_running()
        estimate = Budget.estimate(job.catalog_model, self._seconds(job), job.number_results)
        if not self.budget.reserve(job.id, estimate):
            self.outcome.budget_stopped = True
            raise Stopped("budget")
        task_uuid = str(uuidlib.uuid4()) if new_attempt else record.task_uuid
        assert task_uuid is not None
        image = record.image_input or job.portrait.value
        audio = record.audio_input or job.audio.value
        if new_attempt:
            record = self._transition(
                job,
                JobStatus.SUBMITTING,
                tasks=[
                    TaskEntry(
                        task_uuid,
                        TaskStatus.SUBMITTING,
                        attempt=record.attempts + 1,
                        spec_hash=record.spec_hash,
                        run_id=self.run_id,
                        estimated_cost=float(estimate),
                    )
                ],
                task_uuid=task_uuid,
                attempts=record.attempts + 1,
                submitted_at=time.time(),
                error_code=None,
                error_message=None,
            )
        else:  # the same task UUID again: if it lands now, this run is the one that sent it
            resent = TaskEntry(task_uuid, TaskStatus.SUBMITTING, run_id=self.run_id)
            self.state.settle_task(job.id, resent)
        await self.hooks.checkpoint("submit:before", job.id)
        try:
            await self.submissions.submit(video_task(job, image, audio, task_uuid))
        except ConflictError:
            log.info("job %s: task %s already accepted earlier; polling it", job.id, task_uuid)
        except TransientError as exc:
            # It may have landed: leave it `submitting`; the next run asks getResponse. It may
            # be billed, too, so its reservation stays: --max-cost holds even then.
            log.warning(
                "job %s: submit did not get through (%s); the next run checks it", job.id, exc
            )
            raise Stopped("submit uncertain") from exc
        except ApiError as exc:
            self.budget.release(job.id)
            # A task the API accepted once (resent because it no longer knew it) may have been
            # billed: its ledger row stays open, to be settled as a stray, and the job is never
            # failed for it, which would make --retry-failed pay again.
            accepted_once = record.status is JobStatus.PROCESSING
            refused = [TaskEntry(task_uuid, TaskStatus.REFUSED, billed_cost=0.0)]
            if accepted_once:
                refused = []
            if isinstance(exc, AuthError | CreditError):
                for entry in refused:
                    self.state.settle_task(job.id, entry)
                raise
            if classify.is_stale_input(exc) and not refreshed:
                # Runware forgets uploads unused for 30 days: upload again, once, and resubmit.
                log.warning("job %s: %s; uploading the inputs again", job.id, exc)
                for entry in refused:
                    self.state.settle_task(job.id, entry)
                record = await self._upload_inputs(job, refresh=True)
                return await self._submit(job, record, new_attempt=True, refreshed=True)
            if accepted_once:
                log.warning(
                    "job %s: task %s, which the API accepted once, was refused when sent again "
                    "(%s); left as it is for the next run, never paid again",
                    job.id,
                    task_uuid,
                    exc,
                )
                raise Stopped("resend refused") from exc
            self._fail(job, exc, *refused)
            raise Stopped("rejected") from exc
        self.outcome.tasks_sent += 1
        self.outcome.submitted_jobs.add(job.id)
        await self.hooks.checkpoint("submit:sent", job.id)
        record = self._transition(
            job, JobStatus.PROCESSING, tasks=[TaskEntry(task_uuid, TaskStatus.ACCEPTED)]
        )
        log.info("job %s: submitted task %s (attempt %d)", job.id, task_uuid, record.attempts)
        await self.hooks.checkpoint("submit:after", job.id)
        return record

    async def _reconcile_submission(self, job: Job, record: JobRecord) -> JobRecord:
        """A submission whose outcome was never recorded: did the API get it?"""
        assert record.task_uuid is not None
        known = (await self.client.poll([record.task_uuid]))[record.task_uuid]
        if known.unknown:  # a not-found error, or an answer that does not mention the task
            log.info("job %s: task %s never arrived; submitting it again", job.id, record.task_uuid)
            return await self._submit(job, record, new_attempt=False)
        accepted = TaskEntry(record.task_uuid, TaskStatus.ACCEPTED)
        return self._transition(job, JobStatus.PROCESSING, tasks=[accepted])

    async def _await_render(self, job: Job, record: JobRecord) -> JobRecord:
        assert record.task_uuid is not None
        waiting = self.poller.watch(record.task_uuid, job.number_results, self._seconds(job))
        try:
            async with asyncio.timeout(self.options.job_timeout):
                state = await waiting
        except TimeoutError:
            self.poller.forget(record.task_uuid)
            self.outcome.timed_out.append(job.id)
            log.warning(
                "job %s: no result after %.0f s; the next run keeps polling",
                job.id,
                self.options.job_timeout,
            )
            raise Stopped("timeout") from None
        await self.hooks.checkpoint("poll:done", job.id)
        if state.unknown and record.task_uuid not in self._resent:
            # Still unknown after the poller's grace period, though the API accepted it: send
            # the very same task again. A copy of a task it has is refused as a conflict,
            # never billed; a task it lost is rendered now, once.
            self._resent.add(record.task_uuid)
            log.warning(
                "job %s: the API does not know task %s, which it accepted; sending it again",
                job.id,
                record.task_uuid,
            )
            return await self._submit(job, record, new_attempt=False)
        return await self._after_render(job, record, state)

    async def _after_render(self, job: Job, record: JobRecord, state: TaskState) -> JobRecord:
        assert record.task_uuid is not None
        cost, source = self._cost(job, state.results)
        if state.results:
            self.budget.settle(job.id, cost)
            billed = TaskEntry(
                record.task_uuid, TaskStatus.BILLED, billed_cost=float(cost), cost_source=source
            )
            return self._transition(
                job,
                JobStatus.DOWNLOADING,
                tasks=[billed],
                # Claimed before a byte lands there: a crash right after a video is moved into
                # place must not leave a file the next run takes for someone else's.
                files=[OwnedFile(f"{VIDEOS}/{name}", job.id) for name in job.outputs],
                actual_cost=float(cost),
                results=[_result_dict(r) for r in state.results],
                error_code=state.errors[0].code if state.errors else None,
                error_message=str(state.errors[0]) if state.errors else None,
            )
        self.budget.settle(job.id, Decimal(0))
        unbilled = TaskEntry(record.task_uuid, TaskStatus.UNBILLED, billed_cost=0.0)
        self.state.settle_task(job.id, unbilled)
        error = _unknown_task(record.task_uuid, state) if state.unknown else state.errors[0]
        retryable = isinstance(error, TransientError) and not state.not_found
        if (
            retryable
            and record.attempts < self.options.generation_attempts
            and not self._stopping.is_set()
        ):
            log.warning("job %s: generation failed (%s); trying again", job.id, error)
            return await self._submit(job, record, new_attempt=True)
        self._fail(job, error)
        raise Stopped("failed")

    async def _download(self, job: Job, record: JobRecord) -> None:
        files: list[OwnedFile] = []
        outputs: list[dict[str, object]] = []
        for name, result in zip(job.outputs, record.results, strict=False):
            if result["video_url"] is None and job.upload_endpoint:
                # No URL: the API delivered the video to the task's uploadEndpoint, which is
                # where it lives now. Recorded without the query: a presigned URL's signature
                # is a credential.
                outputs.append({"delivered": _without_query(job.upload_endpoint)})
                continue
            if result["video_url"] is None:
                # Paid for, yet nowhere to fetch it from: never "done" without a video, and
                # never failed (--retry-failed would pay again). The next run asks again.
                log.warning(
                    "job %s: a result without a videoURL, and no uploadEndpoint was set; "
                    "left for the next run",
                    job.id,
                )
                raise Stopped("result without a URL")
            relative = f"{VIDEOS}/{name}"
            final = self.out / relative
            await self.hooks.checkpoint("download:before", job.id)
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                async with self._downloading:
                    file = await self._fetch(job, result["video_url"], final, relative)
                files.append(file)
                outputs.append({"path": file.path, "bytes": file.bytes, "sha256": file.sha256})
            except ApiError as exc:
                if isinstance(exc, AuthError | CreditError):
                    raise
                if isinstance(exc, TransientError):
                    # The result is paid for: failing the job would make --retry-failed pay
                    # again. It stays `downloading`; the next run fetches the same URL again.
                    log.warning("job %s: %s; the next run downloads it again", job.id, exc)
                    raise Stopped("download interrupted") from exc
                if exc.status in (404, 410):
                    exc = RejectedError(
                        f"{exc}; the video was paid for but its result URL is gone: "
                        "--retry-failed renders it again, which is billed again",
                        code="resultExpired",
                        status=exc.status,
                    )
                self._fail(job, exc)
                raise Stopped("download failed") from exc
            except VideoCheckError as exc:
                log.warning(
                    "job %s: the download of %s is not the video asked for (%s); the next run "
                    "downloads it again from the same URL, at no cost",
                    job.id,
                    relative,
                    exc,
                )
                raise Stopped("download unverified") from exc
            except OSError as exc:
                # Our side failed (a full disk, a quota, a file-size limit, a read-only folder):
                # not the job's fault, and every other download would hit it too. Stop the run
                # and keep the job `downloading`, so the next run fetches the paid result again
                # instead of the error escaping as a traceback and aborting the run.
                reason = f"cannot write {final}: {exc.strerror or exc}"
                self.outcome.local_error = reason
                self.stop(f"{reason} (the next run downloads it again)")
                raise Stopped("local write failed") from exc
            await self.hooks.checkpoint("download:renamed", job.id)
        final_status = JobStatus.FAILED if record.error_message else JobStatus.DONE
        self._transition(job, final_status, files=files, outputs=outputs)
        self._remove_superseded(job, record, {f.path for f in files})
        if record.error_message:  # some results failed: keep what was paid for, report the rest
            log.error("job %s: failed: %s", job.id, record.error_message)
            return
        log.info(
            "job %s: done (%d video%s, $%.5f)",
            job.id,
            len(outputs),
            "s" * (len(outputs) > 1),
            record.actual_cost or 0,
        )
        await self.hooks.checkpoint("download:after", job.id)

    async def _fetch(self, job: Job, url: str, final: Path, relative: str) -> OwnedFile:
        """Download one result, prove it is the video asked for, then move it into place."""
        partial = final.parent / f".{final.name}.{uuidlib.uuid4().hex[:8]}.part"
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(VideoCheckError),
                stop=stop_after_attempt(VERIFY_ATTEMPTS),
                wait=wait_exponential(multiplier=0.5, max=5),
                reraise=True,
            ):
                with attempt:
                    download = await self.client.download(url, partial)
                    await asyncio.to_thread(
                        verify_video,
                        partial,
                        output_format=job.output_format,
                        expected_seconds=self._seconds(job),
                    )
            partial.replace(final)  # atomic: the old video stays until this moment
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return OwnedFile(relative, job.id, download.size, download.sha256, _mtime_ns(final))

    def _remove_superseded(self, job: Job, record: JobRecord, kept: set[str]) -> None:
        """Delete this job's earlier videos that the new ones did not replace (another name,
        fewer results), unless another job has written over that name since."""
        candidates = [str(o.get("path", "")) for o in record.outputs]
        candidates = [path for path in candidates if path and path not in kept]
        if not candidates:
            return
        owners = self.state.file_owners(candidates)
        gone = []
        for path in candidates:
            if owners.get(path) != job.id:
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.out / path).unlink()
            gone.append(path)
        if gone:
            self.state.disown_files(gone)

    # --- helpers --------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopping.is_set():
            raise Stopped("stopping")
        if self.budget.exhausted:
            self.outcome.budget_stopped = True
            raise Stopped("budget")

    def _record(self, job_id: str) -> JobRecord:
        record = self.state.get(job_id)
        assert record is not None, job_id
        return record

    def _transition(
        self,
        job: Job,
        to: JobStatus,
        *,
        tasks: list[TaskEntry] | None = None,
        files: list[OwnedFile] | None = None,
        **fields: object,
    ) -> JobRecord:
        return self.state.transition(job.id, to, tasks=tasks or (), files=files or (), **fields)

    def _fail(self, job: Job, error: ApiError, *tasks: TaskEntry) -> None:
        self._transition(
            job,
            JobStatus.FAILED,
            tasks=list(tasks),
            error_code=error.code or error.category,
            error_message=str(error),
        )
        log.error("job %s: failed: %s", job.id, error)

    def _seconds(self, job: Job) -> float | None:
        info = self.media.get(job.audio.value)
        return info.seconds if info else None

    def _cost(self, job: Job, results: list[VideoResult]) -> tuple[Decimal, str]:
        per_result = Budget.estimate(job.catalog_model, self._seconds(job), 1)
        return billed_cost(results, per_result)


def billed_cost(results: list[VideoResult], per_result: Decimal) -> tuple[Decimal, str]:
    """What results cost, and whence: Runware's own figure ("api"), else, for any result
    without a usable one, our estimate per result ("estimate": the reports mark it)."""
    costs = [per_result if r.cost is None else Decimal(str(r.cost)) for r in results]
    source = "estimate" if any(r.cost is None for r in results) else "api"
    return sum(costs, Decimal(0)), source


def _without_query(url: str) -> str:
    """The URL without its query, fragment and user:password: the parts that are secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _unknown_task(task_uuid: str, state: TaskState) -> ApiError:
    said = f" (it said: {state.errors[0]})" if state.errors else " (it did not mention it)"
    return RejectedError(
        f"Runware no longer knows task {task_uuid}, which it had accepted, and sending it "
        f"again did not bring it back{said}",
        code="taskNotFound",
        task_uuid=task_uuid,
    )


def _result_dict(result: VideoResult) -> dict[str, object]:
    return {
        "video_uuid": result.video_uuid,
        "video_url": result.video_url,
        "seed": result.seed,
        "nsfw": result.nsfw,
        "cost": result.cost,
    }


def _mtime_ns(path: Path) -> int:
    return path.stat().st_mtime_ns
