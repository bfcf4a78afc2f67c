"""The HTTP client for the Runware REST protocol: upload, submit, poll in batches, download.

The same code talks to api.runware.ai and to the sandbox; only the base URL and key differ.
Only this module (with `classify.py`) sees httpx and raw answers: every failure leaves it as
an `ApiError` subclass that says what to do next, and transient ones are retried here with
tenacity (exponential backoff with jitter, Retry-After honoured, bounded attempts). The API key
travels in the Authorization header of API calls only: never to a download URL, a log line,
an exception or a repr; and since a server may echo it back, every key is registered with
`redact.py` when its settings are built, so that errors and log lines quoting it hide it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from avatarbatch import __version__
from avatarbatch.errors import ApiError, ConflictError, RejectedError, TransientError, UsageError
from avatarbatch.redact import register_secret
from avatarbatch.runware import classify

log = logging.getLogger("avatarbatch.runware")

DEFAULT_API_URL = "https://api.runware.ai/v1"
USER_AGENT = f"avatarbatch/{__version__}"
DOWNLOAD_CHUNK = 64 * 1024
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # an API answer larger than this is not a real answer
# Statuses whose errors belong to single tasks of a batch, not to the request as a whole.
TASK_LEVEL_STATUSES = frozenset({400, 404, 409, 422})
WEB_SCHEMES = ("http", "https")
#: Redirects of an API POST that keep its method and body (RFC 9110 15.4.8-9); 301, 302 and
#: 303 let clients turn a POST into a GET, which is never what the API wants.
BODY_KEEPING_REDIRECTS = frozenset({307, 308})
METHOD_CHANGING_REDIRECTS = frozenset({301, 302, 303})
MAX_API_REDIRECTS = 5
#: The code of our own refusal to follow a redirect of the API endpoint.
REDIRECT_REFUSED = "redirectRefused"
#: getResponse POSTs of one poll() in flight at once, once polls go one task per POST: the
#: rate limiter still paces them, this only keeps them from taking the whole HTTP pool.
POLL_PARALLEL = 4
SUCCESS_STATUSES = frozenset({"success", "completed"})
FAILURE_STATUSES = frozenset({"error", "failed"})


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot travel in an HTTP header (as the API key does), or None if it can.

    Says where, never what: the value is a secret.
    """
    for position, char in enumerate(value, 1):
        if not char.isascii():
            return f"holds a non-ASCII character at position {position}; an API key is plain ASCII"
        if not char.isprintable():
            return (
                f"holds a line break or control character at position {position}; "
                "an API key is one line of plain text"
            )
    return None


class ClientSettings(BaseModel):
    """How to reach the API and how hard to try. Built once by the CLI and passed down."""

    model_config = ConfigDict(frozen=True)

    api_url: str = DEFAULT_API_URL
    api_key: SecretStr
    #: videoInference tasks per POST when submitting many at once
    batch_size: int = Field(50, ge=1, le=500)
    #: getResponse tasks per POST when polling many at once; 1 polls one task per POST, as
    #: the official SDK does. The docs never show batched polls: an API refusing them makes
    #: the client fall back to 1 for the rest of its life (see RunwareClient.poll)
    poll_batch_size: int = Field(50, ge=1, le=500)
    max_attempts: int = Field(6, ge=1)
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_download_bytes: int = 4 * 1024**3
    download_timeout: float = 600.0  #: whole-download deadline: a trickling server cannot hang us
    #: whole-exchange deadline of one API request (httpx's timeouts are per read, so a server
    #: sending a byte a minute would otherwise hold a submit or an upload for ever)
    request_timeout: float = 300.0

    @field_validator("api_key")
    @classmethod
    def _sendable_key(cls, value: SecretStr) -> SecretStr:
        # A UsageError, not a ValueError: pydantic lets it through unwrapped, so a key that
        # cannot be sent stops the command with exit 2 (httpx would crash on a non-ASCII one
        # and retry a newline as a network error). settings.py checks first, naming the
        # variable; this catches keys given to the library directly.
        key = value.get_secret_value().strip()
        problem = header_value_problem(key)
        if problem is not None:
            raise UsageError(f"the API key {problem}")
        return SecretStr(key)

    def model_post_init(self, context: Any, /) -> None:
        # Every key passes here (the CLI's, the library's, the sandbox's generated one): from
        # now on, any text from the API that echoes it is scrubbed (see redact.py).
        register_secret(self.api_key.get_secret_value())

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # A copy with a new key skips validation and model_post_init: register that key too.
        copy = super().model_copy(update=update, deep=deep)
        key = copy.api_key
        register_secret(key.get_secret_value() if isinstance(key, SecretStr) else str(key))
        return copy


class RequestGate(Protocol):
    """What every API request passes through (the rate limiter of `limits.py`)."""

    async def acquire(self) -> None: ...

    def throttled(self, retry_after: float | None) -> None: ...


class Upload(BaseModel):
    uuid: str
    url: str | None = None


class VideoResult(BaseModel):
    """One finished video of a task."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    task_uuid: str = Field(alias="taskUUID")
    video_uuid: str = Field(alias="videoUUID")
    #: None when the API gave no URL of its own: the task had an uploadEndpoint, and the
    #: video went there (an answer the docs leave open, RUNWARE_PROTOCOL.md section 7)
    video_url: str | None = Field(None, alias="videoURL")
    seed: int | None = None
    nsfw: bool | None = Field(None, alias="NSFWContent")
    cost: float | None = None

    @field_validator("video_url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if not value:  # "" says "no URL" as plainly as a missing key or a null does
            return None
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("videoURL is not an http(s) URL")
        return value

    @field_validator("cost", mode="before")
    @classmethod
    def _plausible_cost(cls, value: Any, info: ValidationInfo) -> float | None:
        # An odd cost must not fail a job that was paid for and rendered: it becomes unknown,
        # and the runner counts its own estimate instead.
        if value is None:
            return None
        number = _number(value)
        if number is not None and math.isfinite(number) and number >= 0:
            return number
        log.warning(
            "task %s: Runware reported a cost of %s, which is not a price; "
            "counting the estimate instead",
            info.data.get("task_uuid", "(unknown)"),
            _clip(repr(value)),
        )
        return None


@dataclass
class TaskState:
    """Everything one poll learnt about a task: cumulative results, failures, items pending."""

    task_uuid: str
    results: list[VideoResult] = field(default_factory=list)
    errors: list[ApiError] = field(default_factory=list)
    processing: int = 0
    #: whether the answer named this task at all, in an item or an error
    answered: bool = False

    def finished(self, expected_results: int) -> bool:
        return len(self.results) + len(self.errors) >= expected_results

    @property
    def not_found(self) -> bool:
        """The API said it does not know the task (a not-found error, and no result)."""
        return any(classify.is_not_found(e) for e in self.errors) and not self.results

    @property
    def unknown(self) -> bool:
        """The API showed no sign of knowing the task: a not-found, or nothing said of it.

        An answer that leaves a task out (an empty `data`) is no proof that it exists: an API
        may not see a task for a moment after accepting it, and may say so either way.
        """
        return self.not_found or not self.answered


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    sha256: str


def make_http_client(connections: int, *, timeout: float = 60.0) -> httpx.AsyncClient:
    """An HTTP pool of at most `connections`, with explicit timeouts and keep-alive.

    Keep pools small: httpcore checks every open connection of a pool on every request, which
    with 68 connections took half the client's CPU in bench scenario B.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0, pool=timeout),
        limits=httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=30
        ),
        http2=False,
    )


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
        self._http = http
        self._downloads = downloads or http
        self._settings = settings
        self._gate = gate
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
        task = {"taskType": "imageUpload", "taskUUID": task_uuid, "image": _data_uri(data, mime)}
        item = await self._uploaded(task)
        return self._upload(item, "imageUUID", "imageURL")

    async def upload_media(self, data: bytes, mime: str, task_uuid: str) -> Upload:
        """Store any media at Runware (mediaStorage upload); returns its mediaUUID and URL.

        `task_uuid` is the first try's; a conflictTaskUUID answer retries once under a new one.
        """
        task = {
            "taskType": "mediaStorage",
            "taskUUID": task_uuid,
            "operation": "upload",
            "media": _data_uri(data, mime),
        }
        item = await self._uploaded(task)
        return self._upload(item, "mediaUUID", "mediaURL")

    async def submit(self, task: dict[str, Any]) -> None:
        """Submit one videoInference task (async delivery) under its caller-chosen taskUUID.

        Returns once the API acknowledged it. ConflictError means the UUID is already known,
        for instance because an earlier attempt landed but its answer was lost: poll it.
        """
        refused = (await self.submit_many([task]))[task["taskUUID"]]
        if refused is not None:
            raise refused

    async def submit_many(self, tasks: Sequence[dict[str, Any]]) -> dict[str, ApiError | None]:
        """Submit several tasks, `batch_size` per POST: each task's error, or None if accepted.

        Never raises an ApiError: each task gets its own outcome. The API handles every task
        of a POST on its own, so one task's refusal (a conflict, an invalid field) is that
        task's alone. A failure of a POST as a whole (transient after retries, auth, credit)
        is the outcome of each task in it, and of those not sent after it: a TransientError
        leaves them uncertain, and the caller asks getResponse before submitting them again.
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
        try:
            async for attempt in self._retrying():
                with attempt:
                    return await self._download_once(url, target)
        except BaseException:  # also cancellation: no partial file may outlive the call
            target.unlink(missing_ok=True)
            raise
        raise AssertionError("unreachable: tenacity reraises the last error")

    # --- requests -----------------------------------------------------------------------------

    async def _single(self, task: dict[str, Any]) -> dict[str, Any]:
        """POST one task and return its data item, or raise the error tied to it."""
        items, refusals, _ = await self._submitted([task])
        task_uuid = task["taskUUID"]
        if task_uuid in refusals:
            raise refusals[task_uuid]
        if task_uuid not in items:
            raise _no_item(task)
        return items[task_uuid]

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
            elif not _is_success(status):
                unnamed.append(task)
            else:  # it may or may not have landed: the caller asks getResponse later
                outcomes[task_uuid] = _no_item(task)
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
        answer = await self._post(list(tasks))
        refusals: dict[str, ApiError] = {}
        for error in answer.errors:
            if error.task_uuid is None:
                raise error  # an error for the request as a whole
            refusals.setdefault(error.task_uuid, error)
        items: dict[str, dict[str, Any]] = {}
        for item in answer.data:
            items.setdefault(str(item.get("taskUUID")), item)
        return items, refusals, answer.status

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
            answer = await self._post(tasks)
            for error in answer.errors:
                if error.task_uuid not in states:
                    raise error  # an error for the request as a whole
        except (RejectedError, ConflictError) as exc:
            if len(uuids) == 1 or not _refuses_request(exc):
                raise
            self._poll_singly_from_now_on(len(uuids), exc)
            return await self._poll_batches([[uuid] for uuid in uuids])
        seen_videos: set[str] = set()
        for item in answer.data:
            state = states.get(str(item.get("taskUUID")))
            if state is not None:
                state.answered = True
                _add_item(state, item, seen_videos)
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

    async def _post(self, tasks: list[dict[str, Any]]) -> _Answer:
        async for attempt in self._retrying():
            with attempt:
                return await self._post_once(tasks)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _post_once(self, tasks: list[dict[str, Any]]) -> _Answer:
        # Outside the deadline: a rate limiter's pause (a Retry-After) is no slow answer. The
        # hops of a redirect belong to this one exchange and take no turn of their own.
        if self._gate is not None:
            await self._gate.acquire()
        headers = {
            "Authorization": f"Bearer {self._settings.api_key.get_secret_value()}",
            "User-Agent": USER_AGENT,
        }
        kinds = ",".join(sorted({t["taskType"] for t in tasks}))
        try:
            # Streamed, capped and under one deadline: a hostile or broken server answering
            # with 10 GB, or a byte a minute, must cost neither memory nor an endless wait.
            async with asyncio.timeout(self._settings.request_timeout):
                async with self._posted(tasks, headers) as response:
                    content = await _read_capped(response, MAX_RESPONSE_BYTES)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransientError(
                f"Runware did not answer in time ({kinds})", code="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"cannot reach Runware at {_host(self._settings.api_url)} ({kinds}): "
                f"{_transport_cause(exc)}",
                code="connection",
            ) from exc
        status = response.status_code
        retry_after = classify.parse_retry_after(response.headers.get("retry-after"))
        if status == 429 and self._gate is not None:
            self._gate.throttled(retry_after)
        if content is None and _is_success(status):
            raise TransientError(
                f"Runware's answer ({kinds}) is larger than {MAX_RESPONSE_BYTES:,} bytes; "
                "it was not read",
                code="unrecognizedResponse",
            )
        body = None if content is None else _json_body(content)
        data, errors = _envelope(body, status, retry_after)
        log.debug("POST %s -> %s (%d tasks)", kinds, status, len(tasks))
        if _is_success(status):
            return _Answer(data, errors, status)
        ours = {t["taskUUID"] for t in tasks}
        if status in TASK_LEVEL_STATUSES and errors and all(e.task_uuid in ours for e in errors):
            # per-task rejections (a conflict, an unknown UUID): the caller decides
            return _Answer(data, errors, status)
        if errors:
            raise errors[0]
        detail = "the answer was not JSON" if body is None else "the answer held no error detail"
        raise classify.from_status(status, detail, retry_after)

    @contextlib.asynccontextmanager
    async def _posted(
        self, tasks: list[dict[str, Any]], headers: dict[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """The streamed answer to POSTing `tasks`, after the redirects this client follows.

        A 307/308 keeps method and body, so the POST may go on, but only to https or to a
        loopback address: the key travels with it (the endpoint that redirects already had
        it; a move of the API to another host must not look like a wrong key), so never in
        clear over a network. 301/302/303 would make a client send a GET, which the API
        never answers usefully: refused, saying where the endpoint points now.
        """
        url = httpx.URL(self._settings.api_url)
        for _ in range(MAX_API_REDIRECTS + 1):
            request = self._http.build_request("POST", url, json=tasks, headers=headers)
            response = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                target = _api_redirect(response)
                if target is None:
                    yield response
                    return
                log.debug(
                    "POST redirected with HTTP %s to %s", response.status_code, _place(target)
                )
                url = target
            finally:
                await response.aclose()
        raise RejectedError(
            f"Runware's endpoint redirected more than {MAX_API_REDIRECTS} times "
            f"(last to {_place(url)}); set RUNWARE_API_URL to where it leads",
            code=REDIRECT_REFUSED,
        )

    async def _download_once(self, url: str, target: Path) -> Download:
        limit = self._settings.max_download_bytes
        digest = hashlib.sha256()
        size = 0
        try:
            async with asyncio.timeout(self._settings.download_timeout):
                async with self._followed(url) as response:
                    _check_download_status(response)
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > limit:
                        raise RejectedError(
                            f"download of {url} is {int(declared):,} bytes, over the limit"
                        )
                    # Written in place, not through aiofiles: a cancellation (Ctrl-C, another
                    # job's crash) that landed while aiofiles was opening the file in its
                    # thread left the file open for ever. A 64 KiB write to the page cache
                    # takes microseconds. 64 KiB, not 1 MiB: peak RSS stays flat with video
                    # size (bench D, 20 x 200 MB: 69 MB against 94 MB).
                    with target.open("wb") as out:
                        async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                            size += len(chunk)
                            if size > limit:
                                raise RejectedError(f"download of {url} exceeded {limit:,} bytes")
                            digest.update(chunk)
                            out.write(chunk)
        except TimeoutError as exc:
            raise TransientError(f"download of {url} took too long", code="timeout") from exc
        except httpx.TooManyRedirects as exc:
            raise RejectedError(f"download of {url} redirects in a loop") from exc
        except httpx.TimeoutException as exc:
            raise TransientError(f"download of {url} timed out", code="timeout") from exc
        except httpx.UnsupportedProtocol as exc:  # the transport refused the address: as final
            raise RejectedError(
                f"download of {url} leads to an address that cannot be fetched"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"download of {url} broke off: {type(exc).__name__}", code="connection"
            ) from exc
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise TransientError(f"download of {url} was truncated ({size:,} of {declared} bytes)")
        if size == 0:
            raise TransientError(f"download of {url} was empty")
        return Download(target, size, digest.hexdigest())

    @contextlib.asynccontextmanager
    async def _followed(self, url: str) -> AsyncIterator[httpx.Response]:
        """The streamed answer for `url` after its redirects, which are followed by hand.

        httpx follows a redirect to any scheme and then fails with UnsupportedProtocol, a
        TransportError that reads as a network hiccup: the paid job would be retried, then
        left downloading for ever. Here each hop is checked first: a non-http(s) one (file:,
        ftp:) is a RejectedError, and nothing is ever asked of such an address. An address
        httpx cannot even parse (`data:...` as a Location) raised InvalidURL, no httpx error
        at all, which surfaced as a crash: it is a RejectedError too.
        """
        client = self._downloads
        try:
            request = client.build_request("GET", url, headers={"User-Agent": USER_AGENT})
        except httpx.InvalidURL as exc:
            raise RejectedError(f"download of {url} is not a valid address") from exc
        for hop in range(client.max_redirects + 1):
            if request.url.scheme not in WEB_SCHEMES:
                how = "redirected to a non-http(s) address" if hop else "is not an http(s) address"
                raise RejectedError(f"download of {url} {how}")
            try:
                # Even without following, send() works out the next request of a redirect.
                response = await client.send(request, stream=True, follow_redirects=False)
            except httpx.InvalidURL as exc:
                raise RejectedError(f"download of {url} redirected to an invalid address") from exc
            try:
                if response.next_request is None:
                    yield response
                    return
                request = response.next_request
            finally:
                await response.aclose()
        raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=request)

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self._settings.max_attempts),
            wait=WaitRetryAfter(self._settings.backoff_initial, self._settings.backoff_max),
            reraise=True,
            before_sleep=_log_retry,
        )

    def _upload(self, item: dict[str, Any], uuid_key: str, url_key: str) -> Upload:
        try:
            return Upload(uuid=item[uuid_key], url=item.get(url_key))
        except (KeyError, ValidationError):
            raise TransientError(
                f"Runware: the upload answer held no {uuid_key}", code="unrecognizedResponse"
            ) from None


@dataclass(frozen=True)
class _Answer:
    """One API answer: its items, its errors, and the HTTP status it came with."""

    data: list[dict[str, Any]]
    errors: list[ApiError]
    status: int


class WaitRetryAfter(wait_base):
    """Exponential backoff with full jitter, but never shorter than the server's Retry-After."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum

    def __call__(self, retry_state: Any) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** (retry_state.attempt_number - 1))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, ApiError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self.maximum))
        return delay


def _is_success(status: int) -> bool:
    # 201 Created, 202 Accepted and the rest: an acknowledgement read as an error would mark
    # an accepted, billed task as failed, and its job would pay again.
    return 200 <= status < 300


def _refuses_request(error: ApiError) -> bool:
    """Whether an error that names none of our tasks refuses the request as it was built
    (a 4xx, or an error inside an answer), rather than the endpoint (a redirect)."""
    if error.code == REDIRECT_REFUSED:
        return False
    return error.status is None or 400 <= error.status < 500


def _api_redirect(response: httpx.Response) -> httpx.URL | None:
    """Where a redirect of an API POST leads, if it is one to follow; None if no redirect.

    Raises RejectedError for a redirect that must not be followed. Messages name the target
    by scheme, host and path only: its query could carry someone's credentials.
    """
    status = response.status_code
    location = response.headers.get("location")
    if status not in BODY_KEEPING_REDIRECTS | METHOD_CHANGING_REDIRECTS or not location:
        return None
    try:
        target = response.request.url.join(location)
    except httpx.InvalidURL:
        raise RejectedError(
            f"Runware's endpoint redirected (HTTP {status}) to an invalid address",
            status=status,
            code=REDIRECT_REFUSED,
        ) from None
    if status in METHOD_CHANGING_REDIRECTS:
        raise RejectedError(
            f"Runware's endpoint answered HTTP {status}, a redirect to {_place(target)} that "
            "would turn the POST into a GET; set RUNWARE_API_URL to that address",
            status=status,
            code=REDIRECT_REFUSED,
        )
    if _is_loopback(target.host) or (
        target.scheme == "https" and _same_site(target.host, response.request.url.host)
    ):
        return target
    raise RejectedError(
        f"Runware's endpoint redirected (HTTP {status}) to {_place(target)}, which is neither "
        "https on the endpoint's own domain nor a loopback address; not followed, since the "
        "API key would go along",
        status=status,
        code=REDIRECT_REFUSED,
    )


def _same_site(host: str, origin: str) -> bool:
    """The same host, or one under the same domain (api.runware.ai -> eu.api.runware.ai):
    the key goes along with a redirect, so never to someone else's server."""
    domain = ".".join(origin.lower().rstrip(".").split(".")[-2:])
    host = host.lower().rstrip(".")
    return host == domain or host.endswith("." + domain)


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _place(url: httpx.URL) -> str:
    """`scheme://host:port/path` of a URL: no user info, query or fragment."""
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return _clip(f"{url.scheme}://{host}{port}{url.path}", 120)


def _no_item(task: dict[str, Any]) -> TransientError:
    """An answer that neither accepted nor refused the task: it may or may not have landed."""
    return TransientError(
        f"Runware: the answer to {task['taskType']} held no item for its task",
        code="unrecognizedResponse",
        task_uuid=task["taskUUID"],
    )


def _log_retry(retry_state: Any) -> None:
    error = retry_state.outcome.exception() if retry_state.outcome else None
    log.info("retrying after attempt %d: %s", retry_state.attempt_number, error)


def _check_download_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 300:
        return
    retry_after = classify.parse_retry_after(response.headers.get("retry-after"))
    if status in (404, 410):
        raise RejectedError(
            f"download failed: HTTP {status} (the result expired or is gone)", status=status
        )
    if status in (408, 429) or status >= 500:
        raise TransientError(
            f"download failed: HTTP {status}", status=status, retry_after=retry_after
        )
    raise RejectedError(f"download failed: HTTP {status}", status=status)


async def _read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """The body, or None (unread past the limit) when it is, or claims to be, over `limit`."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json_body(content: bytes) -> Any:
    """The decoded answer (None if it is not JSON), where no number is NaN or infinite.

    Python's json reads `NaN`, `Infinity` and `1e999` as floats that poison every sum they
    join (a cost, a budget); they are read as null, that is, as unknown.
    """
    try:
        return json.loads(content, parse_constant=_no_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _no_constant(name: str) -> None:
    log.warning("Runware's answer held %s, which is not a number; read as unknown", name)


def _finite_float(text: str) -> float | None:
    number = float(text)
    if math.isfinite(number):
        return number
    log.warning("Runware's answer held %s, which is out of range; read as unknown", _clip(text))
    return None


def _number(value: Any) -> float | None:
    """A JSON number (or a numeric string) as a float; None for anything else, bools too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _clip(text: str, limit: int = 60) -> str:
    """A server-sent value, short enough for a log line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _envelope(
    body: Any, status: int, retry_after: float | None
) -> tuple[list[dict[str, Any]], list[ApiError]]:
    """`data` items and `errors` of an answer, accepting the shapes SDK1.8 accepts."""
    success = _is_success(status)
    if body is None:
        if success:  # an empty 204 too: for a submission, it may have landed
            raise TransientError(
                "Runware answered with something that is not JSON", code="unrecognizedResponse"
            )
        return [], []
    if isinstance(body, list):
        body = {"data": body} if success else {"errors": body}
    if not isinstance(body, dict):
        raise TransientError(
            "Runware's answer has an unexpected shape", code="unrecognizedResponse"
        )
    data = body.get("data", [])
    raw_errors = body.get("errors", body.get("error", []))
    if isinstance(raw_errors, dict):
        raw_errors = [raw_errors]
    if not isinstance(data, list) or not isinstance(raw_errors, list):
        raise TransientError(
            "Runware's answer has an unexpected shape", code="unrecognizedResponse"
        )
    errors = [
        classify.from_error_object(e, status=None if success else status, retry_after=retry_after)
        for e in raw_errors
        if isinstance(e, dict)
    ]
    return [item for item in data if isinstance(item, dict)], errors


def _add_item(state: TaskState, item: dict[str, Any], seen_videos: set[str]) -> None:
    """Fold one getResponse item into the task's state (answers are cumulative).

    The docs name the statuses `success`/`error`; other APIs say `completed`/`failed`. An
    item carrying a video URL is a result whatever its status says: the video exists and
    was paid for, and reading it as still running or failed would lose it or pay again.
    """
    raw_status = item.get("status")
    status = raw_status.lower() if isinstance(raw_status, str) else ""
    has_url = item.get("videoURL") not in (None, "")
    if not has_url and (status in FAILURE_STATUSES or isinstance(item.get("error"), dict)):
        state.errors.append(classify.from_error_object(item))
        return
    if has_url or status in SUCCESS_STATUSES:
        try:
            result = VideoResult.model_validate(item)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            state.errors.append(
                RejectedError(
                    f"Runware returned an unusable result: {reason}",
                    code="invalidResult",
                    task_uuid=state.task_uuid,
                )
            )
            return
        if result.video_uuid not in seen_videos:
            seen_videos.add(result.video_uuid)
            state.results.append(result)
        return
    state.processing += 1  # processing, pending, queued, or a status we do not know yet


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _host(url: str) -> str:
    """host:port of a URL, never its user, password, path or query."""
    parts = httpx.URL(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.host if parts.port in (None, default) else f"{parts.host}:{parts.port}"


def _transport_cause(exc: httpx.TransportError) -> str:
    """What the network said (`[Errno 111] Connection refused`), else the failure's kind."""
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the OSError that names the reason
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            return os.strerror(cause.errno) if cause.errno else str(cause.strerror)
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
