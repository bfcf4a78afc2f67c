"""The HTTP client for the Runware REST protocol: upload, submit, poll in batches, download.

The same code talks to api.runware.ai and to the sandbox; only the base URL and key differ.
Only this module (with `apierrors.py`) sees httpx and raw answers: every failure leaves it as
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
import json
import logging
import math
import random
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

from avatarbatch import __version__, apierrors
from avatarbatch.errors import ApiError, ConflictError, RejectedError, TransientError, UsageError
from avatarbatch.redact import register_secret

log = logging.getLogger("avatarbatch.runware")

DEFAULT_API_URL = "https://api.runware.ai/v1"
USER_AGENT = f"avatarbatch/{__version__}"
DOWNLOAD_CHUNK = 64 * 1024
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # an API answer larger than this is not a real answer
# Statuses whose errors belong to single tasks of a batch, not to the request as a whole.
TASK_LEVEL_STATUSES = frozenset({400, 404, 409, 422})
WEB_SCHEMES = ("http", "https")


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
    #: tasks per POST when polling (getResponse) or submitting (videoInference) many at once
    batch_size: int = Field(50, ge=1, le=500)
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
    video_url: str = Field(alias="videoURL")
    seed: int | None = None
    nsfw: bool | None = Field(None, alias="NSFWContent")
    cost: float | None = None

    @field_validator("video_url")
    @classmethod
    def _http_only(cls, value: str) -> str:
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

    def finished(self, expected_results: int) -> bool:
        return len(self.results) + len(self.errors) >= expected_results

    @property
    def not_found(self) -> bool:
        return any(apierrors.is_not_found(e) for e in self.errors) and not self.results


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

    def __repr__(self) -> str:
        return f"RunwareClient(api_url={self._settings.api_url!r})"

    # --- operations -------------------------------------------------------------------------

    async def upload_image(self, data: bytes, mime: str, task_uuid: str) -> Upload:
        """Store an image at Runware (imageUpload); returns its imageUUID and URL."""
        task = {"taskType": "imageUpload", "taskUUID": task_uuid, "image": _data_uri(data, mime)}
        item = await self._single(task)
        return self._upload(item, "imageUUID", "imageURL")

    async def upload_media(self, data: bytes, mime: str, task_uuid: str) -> Upload:
        """Store any media at Runware (mediaStorage upload); returns its mediaUUID and URL."""
        task = {
            "taskType": "mediaStorage",
            "taskUUID": task_uuid,
            "operation": "upload",
            "media": _data_uri(data, mime),
        }
        item = await self._single(task)
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
        """The state of many tasks, asked in batches of `batch_size` getResponse tasks per POST."""
        uuids = list(dict.fromkeys(task_uuids))
        states: dict[str, TaskState] = {}
        size = self._settings.batch_size
        for start in range(0, len(uuids), size):
            states.update(await self._poll_batch(uuids[start : start + size]))
        return states

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
        items, refusals = await self._submitted([task])
        uuid = task["taskUUID"]
        if uuid in refusals:
            raise refusals[uuid]
        if uuid not in items:
            raise _no_item(task)
        return items[uuid]

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
            items, refusals = await self._submitted(tasks)
        except (RejectedError, ConflictError) as exc:
            if len(tasks) == 1:
                return {tasks[0]["taskUUID"]: exc}
            # Refused as a whole without naming a task: one bad task must not fail the others,
            # so each goes again on its own (a refused request created nothing to pay for).
            return await self._submit_in_chunks(tasks, 1)
        outcomes: dict[str, ApiError | None] = {}
        for task in tasks:
            uuid = task["taskUUID"]
            if uuid in refusals:
                outcomes[uuid] = refusals[uuid]
            elif uuid in items:
                outcomes[uuid] = None
            else:  # it may or may not have landed: the caller asks getResponse later
                outcomes[uuid] = _no_item(task)
        return outcomes

    async def _submitted(
        self, tasks: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, ApiError]]:
        """The answer's items and the refusals, each by task UUID (the first one of each)."""
        data, errors = await self._post(list(tasks))
        refusals: dict[str, ApiError] = {}
        for error in errors:
            if error.task_uuid is None:
                raise error  # an error for the request as a whole
            refusals.setdefault(error.task_uuid, error)
        items: dict[str, dict[str, Any]] = {}
        for item in data:
            items.setdefault(str(item.get("taskUUID")), item)
        return items, refusals

    async def _poll_batch(self, uuids: Sequence[str]) -> dict[str, TaskState]:
        tasks = [{"taskType": "getResponse", "taskUUID": uuid} for uuid in uuids]
        data, errors = await self._post(tasks)
        states = {uuid: TaskState(uuid) for uuid in uuids}
        seen_videos: set[str] = set()
        for item in data:
            state = states.get(str(item.get("taskUUID")))
            if state is not None:
                _add_item(state, item, seen_videos)
        for error in errors:
            if error.task_uuid in states:
                states[error.task_uuid].errors.append(error)
            else:
                raise error  # an error for the request as a whole
        return states

    async def _post(
        self, tasks: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[ApiError]]:
        async for attempt in self._retrying():
            with attempt:
                return await self._post_once(tasks)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _post_once(
        self, tasks: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[ApiError]]:
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
                async with self._http.stream(
                    "POST", self._settings.api_url, json=tasks, headers=headers
                ) as response:
                    content = await _read_capped(response, MAX_RESPONSE_BYTES)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransientError(
                f"Runware did not answer in time ({kinds})", code="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"connection to Runware failed ({kinds}): {type(exc).__name__}", code="connection"
            ) from exc
        retry_after = apierrors.parse_retry_after(response.headers.get("retry-after"))
        if response.status_code == 429 and self._gate is not None:
            self._gate.throttled(retry_after)
        if content is None and response.status_code == 200:
            raise TransientError(
                f"Runware's answer ({kinds}) is larger than {MAX_RESPONSE_BYTES:,} bytes; "
                "it was not read",
                code="unrecognizedResponse",
            )
        body = None if content is None else _json_body(content)
        data, errors = _envelope(body, response.status_code, retry_after)
        log.debug("POST %s -> %s (%d tasks)", kinds, response.status_code, len(tasks))
        status = response.status_code
        if status == 200:
            return data, errors
        ours = {t["taskUUID"] for t in tasks}
        if status in TASK_LEVEL_STATUSES and errors and all(e.task_uuid in ours for e in errors):
            return (
                data,
                errors,
            )  # per-task rejections (a conflict, an unknown UUID): the caller decides
        if errors:
            raise errors[0]
        detail = "the answer was not JSON" if body is None else "the answer held no error detail"
        raise apierrors.from_status(status, detail, retry_after)

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
    retry_after = apierrors.parse_retry_after(response.headers.get("retry-after"))
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
    if body is None:
        if status == 200:
            raise TransientError(
                "Runware answered with something that is not JSON", code="unrecognizedResponse"
            )
        return [], []
    if isinstance(body, list):
        body = {"errors": body} if status != 200 else {"data": body}
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
        apierrors.from_error_object(
            e, status=None if status == 200 else status, retry_after=retry_after
        )
        for e in raw_errors
        if isinstance(e, dict)
    ]
    return [item for item in data if isinstance(item, dict)], errors


def _add_item(state: TaskState, item: dict[str, Any], seen_videos: set[str]) -> None:
    """Fold one getResponse item into the task's state (answers are cumulative)."""
    status = str(item.get("status", "")).lower()
    if status == "error" or isinstance(item.get("error"), dict):
        state.errors.append(apierrors.from_error_object(item))
        return
    if status == "success" or (not status and item.get("videoURL")):
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
