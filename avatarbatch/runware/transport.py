"""Posting tasks to the API: the HTTP pool, retries, deadlines and capped reading of answers.

Transient failures are retried here with tenacity (exponential backoff with full jitter,
Retry-After honoured, bounded attempts). The API key travels in the Authorization header of
API calls only: never to a download URL, a log line, an exception or a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from avatarbatch.errors import ApiError, TransientError
from avatarbatch.runware import classify
from avatarbatch.runware.connection import USER_AGENT, ClientSettings
from avatarbatch.runware.protocol import Answer, envelope, is_success, json_body
from avatarbatch.runware.redirects import (
    MAX_API_REDIRECTS,
    api_redirect,
    place,
    too_many_api_redirects,
)

log = logging.getLogger("avatarbatch.runware")

MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # an API answer larger than this is not a real answer
# Statuses whose errors belong to single tasks of a batch, not to the request as a whole.
TASK_LEVEL_STATUSES = frozenset({400, 404, 409, 422})
HTTP_TIMEOUT = 60.0  #: default read/write/pool timeout of a pool, per operation
CONNECT_TIMEOUT = 10.0
KEEPALIVE_EXPIRY = 30.0  #: seconds an idle connection is kept for the next request


class RequestGate(Protocol):
    """What every API request passes through (the rate limiter of `limits.py`)."""

    async def acquire(self) -> None: ...

    def throttled(self, retry_after: float | None) -> None: ...


def make_http_client(connections: int, *, timeout: float = HTTP_TIMEOUT) -> httpx.AsyncClient:
    """An HTTP pool of at most `connections`, with explicit timeouts and keep-alive.

    Keep pools small: httpcore checks every open connection of a pool on every request, so
    a large pool costs CPU on each request (bench/README.md, "Client CPU and pool size").
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT, pool=timeout),
        limits=httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        ),
        http2=False,
    )


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


def retrying(settings: ClientSettings) -> AsyncRetrying:
    """Retries of whatever raises TransientError, as the settings say."""
    return AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(settings.max_attempts),
        wait=WaitRetryAfter(settings.backoff_initial, settings.backoff_max),
        reraise=True,
        before_sleep=_log_retry,
    )


class ApiTransport:
    """POSTs of task lists to the API endpoint, each an `Answer` or an `ApiError`."""

    def __init__(
        self, http: httpx.AsyncClient, settings: ClientSettings, gate: RequestGate | None
    ) -> None:
        self._http = http
        self._settings = settings
        self._gate = gate

    async def post(self, tasks: list[dict[str, Any]]) -> Answer:
        """The answer to POSTing `tasks`, after retrying what a retry may cure.

        Per-task errors come back in the answer; an error for the request as a whole (or
        one that names none of `tasks`) is raised.
        """
        async for attempt in retrying(self._settings):
            with attempt:
                return await self._post_once(tasks)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _post_once(self, tasks: list[dict[str, Any]]) -> Answer:
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
                    content = await read_capped(response, MAX_RESPONSE_BYTES)
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
        if content is None and is_success(status):
            raise TransientError(
                f"Runware's answer ({kinds}) is larger than {MAX_RESPONSE_BYTES:,} bytes; "
                "it was not read",
                code="unrecognizedResponse",
            )
        body = None if content is None else json_body(content)
        data, errors = envelope(body, status, retry_after)
        log.debug("POST %s -> %s (%d tasks)", kinds, status, len(tasks))
        if is_success(status):
            return Answer(data, errors, status)
        ours = {t["taskUUID"] for t in tasks}
        if status in TASK_LEVEL_STATUSES and errors and all(e.task_uuid in ours for e in errors):
            # per-task rejections (a conflict, an unknown UUID): the caller decides
            return Answer(data, errors, status)
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
                target = api_redirect(response)
                if target is None:
                    yield response
                    return
                log.debug("POST redirected with HTTP %s to %s", response.status_code, place(target))
                url = target
            finally:
                await response.aclose()
        raise too_many_api_redirects(url)


async def read_capped(response: httpx.Response, limit: int) -> bytes | None:
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


def _log_retry(retry_state: Any) -> None:
    error = retry_state.outcome.exception() if retry_state.outcome else None
    log.info("retrying after attempt %d: %s", retry_state.attempt_number, error)


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
