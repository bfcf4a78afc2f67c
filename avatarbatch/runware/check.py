"""`avatarbatch check`: what the API does where its documentation is silent, learnt for free.

RUNWARE_PROTOCOL.md leaves two things the runner depends on UNCONFIRMED (§3.2, §12): whether
several getResponse tasks may share one POST, and how a task UUID the API does not know is
answered. A user with a real key can find out here without spending anything: the check sends
an authentication task and getResponse tasks for random UUIDs, which create nothing and
render nothing. What it learnt is saved and read back by `findings.py`.

The requests are made with plain httpx rather than through `RunwareClient`, on purpose: the
client interprets answers (an error naming no task is raised, a 400 of per-task errors becomes
task state, 5xx are retried away), and the raw status and shape of the answer are exactly what
the check is about. It sends the same headers, and keeps the key out of everything it writes:
messages quote no bodies or headers, the server's words are scrubbed (`redact.py`), and the
saved file holds the URL and the findings only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import time
import uuid as _uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from avatarbatch.errors import AuthError, AvatarBatchError, CreditError, TransientError, UsageError
from avatarbatch.redact import scrub
from avatarbatch.runware import classify
from avatarbatch.runware.connection import USER_AGENT, ClientSettings
from avatarbatch.runware.findings import (
    CheckResult,
    UnknownTaskWord,
    default_folder,
    load_fresh,
    refused_batches,
    save,
    stored_url,
    summary_lines,
)
from avatarbatch.runware.transport import WaitRetryAfter, make_http_client, read_capped

# What the check learnt lives in findings.py; the CLI reaches all of it through this module.
__all__ = [
    "CheckError",
    "CheckResult",
    "default_folder",
    "load_fresh",
    "refused_batches",
    "run_check",
    "save",
    "summary_lines",
]

log = logging.getLogger("avatarbatch.check")

#: Deadline of one request of the check. The run's own default (`request_timeout`, 5 min) is
#: sized for uploads; these requests carry a few hundred bytes each way.
CHECK_TIMEOUT = 30.0
#: At most this many attempts per request: a check that waits minutes on a sick API tells
#: the user less than one that says "try again later" quickly.
MAX_ATTEMPTS = 3
#: Answers to these requests are tiny; anything larger is not read (a broken or hostile
#: server must not cost memory).
MAX_ANSWER_BYTES = 1024 * 1024
#: Server-sent words kept in the result (an error code, an item status) are clipped to this.
MAX_DETAIL = 60


async def run_check(
    settings: ClientSettings, *, http: httpx.AsyncClient | None = None
) -> CheckResult:
    """Ask the API at `settings.api_url` with `settings.api_key`; nothing asked costs money.

    A refused key is a result (`auth="refused"`), not an exception. Every failure is an
    AvatarBatchError whose message is meant for the user: TransientError when the API cannot
    be reached or keeps failing (exit 1), CheckError when what answers is not the Runware API
    (exit 1), CreditError on HTTP 402 (exit 4), UsageError for an API URL that cannot be used
    or redirects (exit 2). `http`: a pool to use (tests pass one wired to a sandbox); by
    default one of its own, closed on return.
    """
    if http is None:
        async with make_http_client(2, timeout=CHECK_TIMEOUT) as own:
            return await _Checker(own, settings).run()
    return await _Checker(http, settings).run()


@dataclass(frozen=True)
class _Answer:
    """One HTTP answer, read just enough to classify it."""

    status: int
    data: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    json: bool  #: the body was JSON of a Runware shape (an object, or a bare list)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def speaks_runware(self) -> bool:
        """Whether this reads as Runware's answer at all: a JSON envelope of some kind.

        A wrong URL (a web page, a proxy's 404) answers without one; it says nothing of the
        key, and must not pass for an accepted one.
        """
        return self.json and (self.ok or bool(self.errors) or bool(self.data))

    def names(self, uuids: Sequence[str]) -> bool:
        """Whether any item or error of the answer is tied to one of `uuids`."""
        wanted = set(uuids)
        return any(entry.get("taskUUID") in wanted for entry in (*self.data, *self.errors))

    def codes(self) -> list[str]:
        return [_error_code(e) for e in self.errors]

    def refuses_key(self) -> bool:
        """Whether the answer says the key is wrong or may not do this (401, 403, a key code)."""
        if self.status in (401, 403):
            return True
        return any(classify.error_class(code) is AuthError for code in self.codes())


class CheckError(AvatarBatchError):
    """The API's answers do not let the check conclude (most likely a wrong API URL)."""


class _Checker:
    def __init__(self, http: httpx.AsyncClient, settings: ClientSettings) -> None:
        self._http = http
        self._settings = settings
        self._seconds: list[float] = []  # duration of each request that got an answer

    async def run(self) -> CheckResult:
        # (1) The key. The authentication task is free and made for this; an API that does not
        # take it over REST (answering neither yes nor a key refusal) is asked a getResponse
        # instead, whose answer probe (3) needs anyway.
        single_uuid = str(_uuid.uuid4())
        single: _Answer | None = None
        auth = await self._post(
            [{"taskType": "authentication", "apiKey": self._key()}], "authentication check"
        )
        if auth.refuses_key():
            return self._result(auth="refused")
        if not (auth.ok and auth.json and not auth.errors):
            single = await self._poll_unknown([single_uuid])
            if single.refuses_key():
                return self._result(auth="refused")
            if not single.speaks_runware():
                shown = stored_url(self._settings.api_url)
                raise CheckError(
                    f"{shown} answered neither the authentication check nor a getResponse "
                    f"like the Runware API (HTTP {auth.status}, then HTTP {single.status}); "
                    "is the API URL right?"
                )
        # (2) Two unknown tasks in one POST, then (3) one alone. Random uuid4s: no one's task,
        # so nothing is read or billed whatever the API does with them.
        pair = [str(_uuid.uuid4()), str(_uuid.uuid4())]
        batched = await self._poll_unknown(pair)
        if single is None:
            single = await self._poll_unknown([single_uuid])
        if batched.refuses_key() or single.refuses_key():
            # The key opened the door but may not poll (a 403, say): as good as refused, for
            # a run polls all the time.
            return self._result(auth="refused")
        word, detail = _unknown_task(single, single_uuid)
        return self._result(
            auth="ok",
            batched_polls=_batched_verdict(batched, pair, single, single_uuid),
            unknown_task=word,
            unknown_task_detail=detail,
        )

    def _result(self, **fields: Any) -> CheckResult:
        rtt = round(statistics.median(self._seconds) * 1000, 1) if self._seconds else None
        return CheckResult(
            api_url=stored_url(self._settings.api_url),
            round_trip_ms=rtt,
            checked_at=time.time(),
            **fields,
        )

    def _key(self) -> str:
        return self._settings.api_key.get_secret_value()

    async def _poll_unknown(self, uuids: list[str]) -> _Answer:
        what = "getResponse check" if len(uuids) == 1 else f"{len(uuids)}-task getResponse check"
        return await self._post([{"taskType": "getResponse", "taskUUID": u} for u in uuids], what)

    async def _post(self, tasks: list[dict[str, Any]], what: str) -> _Answer:
        """POST `tasks`; an answer of any status, after retrying what a retry may cure."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(min(self._settings.max_attempts, MAX_ATTEMPTS)),
            wait=WaitRetryAfter(self._settings.backoff_initial, self._settings.backoff_max),
            reraise=True,
            before_sleep=_log_retry,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post_once(tasks, what)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _post_once(self, tasks: list[dict[str, Any]], what: str) -> _Answer:
        url = self._settings.api_url
        shown = stored_url(url)  # for messages: hides a key someone put into the URL
        headers = {"Authorization": f"Bearer {self._key()}", "User-Agent": USER_AGENT}
        timeout = min(self._settings.request_timeout, CHECK_TIMEOUT)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with self._http.stream("POST", url, json=tasks, headers=headers) as response:
                    content = await read_capped(response, MAX_ANSWER_BYTES)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransientError(
                f"the {what} got no answer from {shown} within {timeout:g} s; try again later",
                code="timeout",
            ) from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            # Not a network hiccup, and retrying cannot help: say so at once.
            raise UsageError(f"the API URL {shown!r} cannot be used: {exc}") from None
        except httpx.RequestError as exc:  # connection, protocol, decoding troubles
            # The exception's class and text (errno, "Connection refused"), never the request.
            reason = str(exc) or type(exc).__name__
            raise TransientError(
                f"the {what} could not reach {shown}: {reason}", code="connection"
            ) from exc
        self._seconds.append(time.perf_counter() - started)
        status = response.status_code
        log.debug("check: %s -> HTTP %d", what, status)
        if 300 <= status < 400:
            # httpx does not follow a POST's redirects, and neither does the runner: the URL
            # given is not the API's, and the answer is where it is.
            where = scrub(response.headers.get("location", "")) or "elsewhere"
            raise UsageError(
                f"{shown} redirects (HTTP {status}) to {where}; give the API's own address"
            )
        retry_after = classify.parse_retry_after(response.headers.get("retry-after"))
        if status in (408, 429) or status >= 500:
            # Retried above; if it lasts, the findings would describe an outage, not the API,
            # and must not be saved for a day: fail instead.
            raise TransientError(
                f"Runware answered HTTP {status} to the {what}; try again later",
                status=status,
                retry_after=retry_after,
            )
        answer = _parse(content, status)
        if status == 402 or any(
            classify.error_class(code) is CreditError for code in answer.codes()
        ):
            raise CreditError(
                f"Runware refused the {what} because the account cannot pay (HTTP {status}); "
                "add funds, then check again",
                status=status,
            )
        return answer


def _log_retry(retry_state: Any) -> None:
    error = retry_state.outcome.exception() if retry_state.outcome else None
    log.info("check: retrying after attempt %d: %s", retry_state.attempt_number, error)


def _parse(content: bytes | None, status: int) -> _Answer:
    """`data` and `errors` of an answer in any shape SDK1.8 accepts (§5); odd shapes: none."""
    body: Any = None
    if content:
        with contextlib.suppress(ValueError):  # JSONDecodeError and UnicodeDecodeError
            body = json.loads(content)
    if isinstance(body, list):  # a bare list: items on success, errors otherwise (as SDK1.8)
        body = {"data": body} if status == 200 else {"errors": body}
    if not isinstance(body, dict):
        return _Answer(status, [], [], json=False)
    data = body.get("data")
    errors = body.get("errors", body.get("error"))
    if isinstance(errors, dict):
        errors = [errors]
    return _Answer(
        status,
        [d for d in data if isinstance(d, dict)] if isinstance(data, list) else [],
        [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
        json=True,
    )


def _error_code(error: dict[str, Any]) -> str:
    nested = error.get("error")
    source = nested if isinstance(nested, dict) else error
    code = source.get("code", error.get("code"))
    return code if isinstance(code, str) else ""


def _detail(text: str) -> str | None:
    """A server-sent word as it may be stored and shown: scrubbed, clipped, or None if empty."""
    text = scrub(text.strip())
    if not text:
        return None
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _unknown_task(answer: _Answer, uuid: str) -> tuple[UnknownTaskWord, str | None]:
    """How the answer to one getResponse for an unknown `uuid` reads, and its code or status."""
    for error in answer.errors:
        if error.get("taskUUID") == uuid:
            return "error", _detail(_error_code(error))
    for item in answer.data:
        if item.get("taskUUID") != uuid:
            continue
        status = str(item.get("status") or "")
        if status.lower() in ("error", "failed") or isinstance(item.get("error"), dict):
            # A failed-generation item (shape (b) of §3.3, or a "failed" status, which the
            # runner reads the same way): to the runner it is an error, so it is one here.
            return "error", _detail(_error_code(item) or status)
        return "item", _detail(status) or "(no status)"
    if answer.errors:
        return "error-without-uuid", _detail(", ".join(dict.fromkeys(answer.codes())))
    if not answer.json:
        return f"http-{answer.status}", "not JSON"
    if answer.ok:
        return "empty", None
    return f"http-{answer.status}", None


def _batched_verdict(
    batched: _Answer, uuids: Sequence[str], single: _Answer, single_uuid: str
) -> bool | None:
    """Whether a POST of several getResponse tasks was answered task by task."""
    if batched.names(uuids):
        return True  # per-task items or errors: each task was read on its own
    if batched.ok and not batched.json:
        return None  # neither accepted (the runner could not read it) nor refused
    if batched.ok and not batched.errors:
        return True  # accepted, with nothing to say about unknown tasks
    # An error naming no task, even with a 2xx, is how the runner sees a refused request:
    # it raises such an error for the whole batch (RunwareClient._poll_batch).
    # Refused without naming a task. That reads as a refusal of the batch, unless one task
    # alone is answered the very same way: then the API just never names tasks in errors,
    # and these two answers cannot tell a refused batch from two unknown tasks.
    same = (
        not single.names([single_uuid])
        and single.status == batched.status
        and set(single.codes()) == set(batched.codes())
    )
    return None if same else False
