"""The last stage of a job: its paid results fetched, verified and moved into the output folder.

A result is paid for by the time it is downloaded, so nothing here may make the next run pay
again: a download that breaks or does not verify leaves the job `downloading` (the next run
fetches the same URL again, at no cost), and only a result that is gone for good fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuidlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from avatarbatch.engine.context import JobWork, RunContext
from avatarbatch.engine.outcome import Checkpoint
from avatarbatch.engine.outputs import VIDEOS
from avatarbatch.engine.verify import VideoCheckError, verify_video
from avatarbatch.errors import ConflictError, RejectedError, TransientError
from avatarbatch.report.data import money
from avatarbatch.state.store import JobRecord, JobStatus, OwnedFile

log = logging.getLogger("avatarbatch.run")

#: downloads of one result that may fail the video check before the job is left for the next
#: run (the result is paid for: a bad download is never a reason to pay again)
VERIFY_ATTEMPTS = 3
#: HTTP statuses of a result URL that is gone for good (expired), not merely unreachable
GONE_STATUSES = (404, 410)
#: Seconds between downloads of a result that failed the video check: the first pause, then
#: doubling up to the longest. What spoils a download (a proxy's error page, a body cut short)
#: usually passes within seconds, and longer pauses would only hold a download slot for a
#: result the next run fetches again at no cost anyway.
VERIFY_RETRY_FIRST_WAIT = 0.5
VERIFY_RETRY_MAX_WAIT = 5.0


async def download(ctx: RunContext, work: JobWork, record: JobRecord) -> None:
    """Fetch every result of a `downloading` job; done (or failed, for the results that
    failed) once each is in place. Returns early, leaving the job as it is, when one cannot
    be fetched now; raises only errors that stop the run."""
    job = work.job
    files: list[OwnedFile] = []
    outputs: list[dict[str, object]] = []
    for name, result in zip(job.outputs, record.results, strict=False):
        if result["video_url"] is None and job.upload_endpoint:
            # No URL: the API delivered the video to the task's uploadEndpoint, which is
            # where it lives now. Recorded without the query: a presigned URL's signature
            # is a credential.
            outputs.append({"delivered": without_query(job.upload_endpoint)})
            continue
        if result["video_url"] is None:
            # Paid for, yet nowhere to fetch it from: never "done" without a video, and
            # never failed (--retry-failed would pay again). The next run asks again.
            log.warning(
                "job %s: a result without a videoURL, and no uploadEndpoint was set; "
                "left for the next run",
                job.id,
            )
            return
        relative = f"{VIDEOS}/{name}"
        final = ctx.out / relative
        await ctx.checkpoint(Checkpoint.DOWNLOAD_BEFORE, job.id)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            async with ctx.downloading:
                file = await _fetch(ctx, work, result["video_url"], final, relative)
            files.append(file)
            outputs.append({"path": file.path, "bytes": file.bytes, "sha256": file.sha256})
        except (TransientError, RejectedError, ConflictError) as exc:
            # Any other error (one that stops the run) is the worker's to judge.
            await _refused(ctx, work, exc)
            return
        except VideoCheckError as exc:
            log.warning(
                "job %s: the download of %s is not the video asked for (%s); the next run "
                "downloads it again from the same URL, at no cost",
                job.id,
                relative,
                exc,
            )
            return
        except OSError as exc:
            # Our side failed (a full disk, a quota, a file-size limit, a read-only folder):
            # not the job's fault, and every other download would hit it too. Stop the run
            # and keep the job `downloading`, so the next run fetches the paid result again
            # instead of the error escaping as a traceback and aborting the run.
            reason = f"cannot write {final}: {exc.strerror or exc}"
            ctx.outcome.local_error = reason
            ctx.stop(f"{reason} (the next run downloads it again)")
            return
        await ctx.checkpoint(Checkpoint.DOWNLOAD_RENAMED, job.id)
    final_status = JobStatus.FAILED if record.error_message else JobStatus.DONE
    await ctx.transition(job.id, final_status, files=files, outputs=outputs)
    await _remove_superseded(ctx, job.id, record, {f.path for f in files})
    if record.error_message:  # some results failed: keep what was paid for, report the rest
        log.error("job %s: failed: %s", job.id, record.error_message)
        return
    log.info(
        "job %s: done (%d video%s, %s)",
        job.id,
        len(outputs),
        "s" * (len(outputs) > 1),
        money(record.actual_cost or 0),
    )
    await ctx.checkpoint(Checkpoint.DOWNLOAD_AFTER, job.id)


async def _refused(
    ctx: RunContext, work: JobWork, exc: TransientError | RejectedError | ConflictError
) -> None:
    """A download the API's side refused: left for the next run, or failed if gone for good."""
    if isinstance(exc, TransientError):
        # The result is paid for: failing the job would make --retry-failed pay again. It
        # stays `downloading`; the next run fetches the same URL again.
        log.warning("job %s: %s; the next run downloads it again", work.job.id, exc)
        return
    if exc.status in GONE_STATUSES:
        exc = RejectedError(
            f"{exc}; the video was paid for but its result URL is gone: "
            "--retry-failed renders it again, which is billed again",
            code="resultExpired",
            status=exc.status,
        )
    await ctx.fail(work.job.id, exc)


async def _fetch(ctx: RunContext, work: JobWork, url: str, final: Path, relative: str) -> OwnedFile:
    """Download one result, prove it is the video asked for, then move it into place."""
    partial = final.parent / f".{final.name}.{uuidlib.uuid4().hex[:8]}.part"
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(VideoCheckError),
            stop=stop_after_attempt(VERIFY_ATTEMPTS),
            wait=wait_exponential(multiplier=VERIFY_RETRY_FIRST_WAIT, max=VERIFY_RETRY_MAX_WAIT),
            reraise=True,
        ):
            with attempt:
                fetched = await ctx.client.download(url, partial)
                await asyncio.to_thread(
                    verify_video,
                    partial,
                    output_format=work.job.output_format,
                    expected_seconds=work.audio_seconds,
                )
        partial.replace(final)  # atomic: the old video stays until this moment
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    mtime_ns = final.stat().st_mtime_ns
    return OwnedFile(relative, work.job.id, fetched.size, fetched.sha256, mtime_ns)


async def _remove_superseded(
    ctx: RunContext, job_id: str, record: JobRecord, kept: set[str]
) -> None:
    """Delete this job's earlier videos that the new ones did not replace (another name,
    fewer results), unless another job has written over that name since."""
    candidates = [str(o.get("path", "")) for o in record.outputs]
    candidates = [path for path in candidates if path and path not in kept]
    if not candidates:
        return
    owners = ctx.state.file_owners(candidates)
    gone = []
    for path in candidates:
        if owners.get(path) != job_id:
            continue
        with contextlib.suppress(FileNotFoundError):
            (ctx.out / path).unlink()
        gone.append(path)
    if gone:
        await ctx.writes.disown_files(gone)


def without_query(url: str) -> str:
    """The URL without its query, fragment and user:password: the parts that are secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
