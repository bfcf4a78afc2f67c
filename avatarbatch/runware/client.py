"""The HTTP client for the Runware REST protocol: upload, submit, poll in batches, download.

The same code talks to api.runware.ai and to the sandbox; only the base URL and key differ.
Only this package sees httpx and raw answers: every failure leaves it as an `ApiError`
subclass that says what to do next. The parts: `settings.py` (how to reach the API),
`transport.py` (posting, retries, capped answers), `redirects.py` (which hops to follow),
`protocol.py` (reading answers), `download.py` (streaming a video to a file). This module
batches tasks into POSTs and splits the answers back into one outcome per task.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from avatarbatch.errors import ApiError, ConflictError, RejectedError
from avatarbatch.runware.connection import (
    DEFAULT_API_URL,
    USER_AGENT,
    ClientSettings,
    header_value_problem,
)
from avatarbatch.runware.download import Download, download
from avatarbatch.runware.protocol import (
    TaskState,
    Upload,
    VideoResult,
    add_item,
    data_uri,
    is_success,
    no_item,
    upload_of,
)
from avatarbatch.runware.redirects import MAX_API_REDIRECTS, REDIRECT_REFUSED, refuses_request
from avatarbatch.runware.transport import (
    MAX_RESPONSE_BYTES,
    ApiTransport,
    RequestGate,
    WaitRetryAfter,
    make_http_client,
)

# The names other layers import from here, wherever they are defined.
__all__ = [
    "DEFAULT_API_URL",
    "MAX_API_REDIRECTS",
    "MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "ClientSettings",
    "Download",
    "RequestGate",
    "RunwareClient",
    "TaskState",
    "Upload",
    "VideoResult",
    "WaitRetryAfter",
    "header_value_problem",
    "make_http_client",
]

log = logging.getLogger("avatarbatch.runware")

#: getResponse POSTs of one poll() in flight at once, once polls go one task per POST: the
#: rate limiter still paces them, this only keeps them from taking the whole HTTP pool.
POLL_PARALLEL = 4


class RunwareClient:
    """Runware operations over an injected `httpx.AsyncClient` (pool, timeouts, transport)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: ClientSettings,
        gate: RequestGate | None = None,
        *,
        downloads: httpx.AsyncClient | None = None,
    ) -> None:
        """`downloads`: a pool of its own for videos, so long downloads never hold up a poll."""
        self._api = ApiTransport(http, settings, gate)
        self._downloads = downloads or http
        self._settings = settings
        self._single_polls = settings.poll_batch_size == 1

    def __repr__(self) -> str:
        return f"RunwareClient(api_url={self._settings.api_url!r})"

    @property
    def single_task_polls(self) -> bool:
        """Whether polls go one getResponse task per POST: asked for (`poll_batch_size=1`),
        or learnt when the API refused a batched poll."""
        return self._single_polls

    # --- operations -------------------------------------------------------------------------

    async def upload_image(self, data: bytes, mime: str, task_uuid: str) -> Upload:
        """Store an image at Runware (imageUpload); returns its imageUUID and URL.

        `task_uuid` is the first try's; a conflictTaskUUID answer retries once under a new one.
        """
        task = {"taskType": "imageUpload", "taskUUID": task_uuid, "image": data_uri(data, mime)}
        return upload_of(await self._uploaded(task), "imageUUID", "imageURL")

    async def upload_media(self, data: bytes, mime: str, task_uuid: str) -> Upload:
        """Store any media at Runware (mediaStorage upload); returns its mediaUUID and URL.

        `task_uuid` is the first try's; a conflictTaskUUID answer retries once under a new one.
        """
        task = {
            "taskType": "mediaStorage",
            "taskUUID": task_uuid,
            "operation": "upload",
            "media": data_uri(data, mime),
        }
        return upload_of(await self._uploaded(task), "mediaUUID", "mediaURL")

    async def submit_many(self, tasks: Sequence[dict[str, Any]]) -> dict[str, ApiError | None]:
        """Submit several tasks, `batch_size` per POST: each task's error, or None if accepted.

        Never raises an ApiError: each task gets its own outcome. The API handles every task
        of a POST on its own, so one task's refusal (a conflict, an invalid field) is that
        task's alone. A ConflictError means the UUID is already known, for instance because an
        earlier attempt landed but its answer was lost: poll it. A failure of a POST as a
        whole (transient after retries, auth, credit) is the outcome of each task in it, and
        of those not sent after it: a TransientError leaves them uncertain, and the caller
        asks getResponse before submitting them again.
        """
        return await self._submit_in_chunks(tasks, self._settings.batch_size)

    async def poll(self, task_uuids: Iterable[str]) -> dict[str, TaskState]:
        """The state of many tasks, `poll_batch_size` getResponse tasks per POST.

        Nothing documents several getResponse tasks in one POST. The first time the API
        refuses such a POST as a whole, this client polls one task per POST from then on
        (`single_task_polls`), and asks the refused batch again that way.
        """
        uuids = list(dict.fromkeys(task_uuids))
        size = 1 if self._single_polls else self._settings.poll_batch_size
        return await self._poll_batches([uuids[i : i + size] for i in range(0, len(uuids), size)])

    async def download(self, url: str, target: Path) -> Download:
        """Stream `url` to `target` (a temporary name chosen by the caller), checking length.

        The target is removed on any failure, so a partial file never survives.
        """
        return await download(self._downloads, self._settings, url, target)

    # --- uploads ------------------------------------------------------------------------------

    async def _uploaded(self, task: dict[str, Any]) -> dict[str, Any]:
        """The answer item of an upload task, sent again under a new UUID after a conflict.

        An upload whose answer was lost and which was retried meets its own first attempt:
        the API may answer conflictTaskUUID, and unlike a submission there is nothing to
        poll. Uploading again under a fresh UUID costs a little bandwidth and no money.
        """
        try:
            return await self._single(task)
        except ConflictError as exc:
            fresh = str(uuid.uuid4())
            log.info(
                "%s %s: %s; uploading again as %s", task["taskType"], task["taskUUID"], exc, fresh
            )
            return await self._single({**task, "taskUUID": fresh})

    async def _single(self, task: dict[str, Any]) -> dict[str, Any]:
        """POST one task and return its data item, or raise the error tied to it."""
        items, refusals, _ = await self._submitted([task])
        task_uuid = task["taskUUID"]
        if task_uuid in refusals:
            raise refusals[task_uuid]
        if task_uuid not in items:
            raise no_item(task)
        return items[task_uuid]

    # --- submissions --------------------------------------------------------------------------

    async def _submit_in_chunks(
        self, tasks: Sequence[dict[str, Any]], size: int
    ) -> dict[str, ApiError | None]:
        outcomes: dict[str, ApiError | None] = {}
        for start in range(0, len(tasks), size):
            try:
                outcomes.update(await self._submit_batch(tasks[start : start + size]))
            except ApiError as exc:
                for task in tasks[start:]:
                    outcomes[task["taskUUID"]] = exc.for_task(task["taskUUID"])
                break
        return outcomes

    async def _submit_batch(self, tasks: Sequence[dict[str, Any]]) -> dict[str, ApiError | None]:
        try:
            items, refusals, status = await self._submitted(tasks)
        except (RejectedError, ConflictError) as exc:
            if len(tasks) == 1:
                return {tasks[0]["taskUUID"]: exc}
            if exc.code == REDIRECT_REFUSED:  # the endpoint's fault: alone, each meets it again
                return {t["taskUUID"]: exc.for_task(t["taskUUID"]) for t in tasks}
            # Refused as a whole without naming a task: one bad task must not fail the others,
            # so each goes again on its own (a refused request created nothing to pay for).
            return await self._submit_in_chunks(tasks, 1)
        outcomes: dict[str, ApiError | None] = {}
        unnamed: list[dict[str, Any]] = []
        for task in tasks:
            task_uuid = task["taskUUID"]
            if task_uuid in refusals:
                outcomes[task_uuid] = refusals[task_uuid]
            elif task_uuid in items:
                outcomes[task_uuid] = None
            elif not is_success(status):
                unnamed.append(task)
            else:  # it may or may not have landed: the caller asks getResponse later
                outcomes[task_uuid] = no_item(task)
        if unnamed:
            # A refusal (4xx) naming only some tasks: the API may have stopped at the first
            # bad one, or handled the rest and said nothing of them. Sent again under the same
            # UUIDs, each gets an answer of its own; one that had landed draws
            # conflictTaskUUID, which the caller reads as accepted, so nothing is paid twice.
            # Each round names at least one task more, so this ends.
            outcomes.update(await self._submit_in_chunks(unnamed, self._settings.batch_size))
        return {t["taskUUID"]: outcomes[t["taskUUID"]] for t in tasks}

    async def _submitted(
        self, tasks: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, ApiError], int]:
        """The answer's items and refusals, each by task UUID (the first one of each), and
        the answer's HTTP status."""
        answer = await self._api.post(list(tasks))
        refusals: dict[str, ApiError] = {}
        for error in answer.errors:
            if error.task_uuid is None:
                raise error  # an error for the request as a whole
            refusals.setdefault(error.task_uuid, error)
        items: dict[str, dict[str, Any]] = {}
        for item in answer.data:
            items.setdefault(str(item.get("taskUUID")), item)
        return items, refusals, answer.status

    # --- polls --------------------------------------------------------------------------------

    async def _poll_batches(self, batches: Sequence[Sequence[str]]) -> dict[str, TaskState]:
        """Every batch polled, a few POSTs at a time; the first failure cancels the rest."""
        if len(batches) == 1:
            return await self._poll_batch(batches[0])
        slots = asyncio.Semaphore(POLL_PARALLEL)

        async def one(batch: Sequence[str]) -> dict[str, TaskState]:
            async with slots:
                return await self._poll_batch(batch)

        runs = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            answers = await asyncio.gather(*runs)
        except BaseException:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            raise
        return {uuid: state for answer in answers for uuid, state in answer.items()}

    async def _poll_batch(self, uuids: Sequence[str]) -> dict[str, TaskState]:
        tasks = [{"taskType": "getResponse", "taskUUID": uuid} for uuid in uuids]
        states = {uuid: TaskState(uuid) for uuid in uuids}
        try:
            answer = await self._api.post(tasks)
            for error in answer.errors:
                if error.task_uuid not in states:
                    raise error  # an error for the request as a whole
        except (RejectedError, ConflictError) as exc:
            if len(uuids) == 1 or not refuses_request(exc):
                raise
            self._poll_singly_from_now_on(len(uuids), exc)
            return await self._poll_batches([[uuid] for uuid in uuids])
        seen_videos: set[str] = set()
        for item in answer.data:
            state = states.get(str(item.get("taskUUID")))
            if state is not None:
                state.answered = True
                add_item(state, item, seen_videos)
        for error in answer.errors:
            state = states[str(error.task_uuid)]
            state.answered = True
            state.errors.append(error)
        return states

    def _poll_singly_from_now_on(self, batch: int, refusal: ApiError) -> None:
        # Concurrent polls may each meet a refusal: the flag makes it one warning per client.
        if self._single_polls:
            return
        self._single_polls = True
        log.warning(
            "Runware refused %d getResponse tasks in one request (%s); "
            "polling one task per request from now on",
            batch,
            refusal,
        )
