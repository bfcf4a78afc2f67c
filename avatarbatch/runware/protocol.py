"""What the Runware API answers, read: the envelope of an answer, results, task states.

Runware's answers vary (RUNWARE_PROTOCOL.md): a bare list or an object, `errors` or `error`,
`success` or `completed`. Everything here reads them the way the official SDK does, and turns
what cannot be trusted (a NaN cost, a non-http URL) into "unknown" rather than a crash or a
wrong sum. Errors are classified by `classify.py`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from avatarbatch.errors import ApiError, RejectedError, TransientError
from avatarbatch.runware import classify

log = logging.getLogger("avatarbatch.runware")

SUCCESS_STATUSES = frozenset({"success", "completed"})
FAILURE_STATUSES = frozenset({"error", "failed"})
#: Server-sent values quoted in a log line are clipped to this many characters.
LOG_CLIP = 60


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
            clip(repr(value)),
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
class Answer:
    """One API answer: its items, its errors, and the HTTP status it came with."""

    data: list[dict[str, Any]]
    errors: list[ApiError]
    status: int


def is_success(status: int) -> bool:
    # 201 Created, 202 Accepted and the rest: an acknowledgement read as an error would mark
    # an accepted, billed task as failed, and its job would pay again.
    return 200 <= status < 300


def json_body(content: bytes) -> Any:
    """The decoded answer (None if it is not JSON), where no number is NaN or infinite.

    Python's json reads `NaN`, `Infinity` and `1e999` as floats that poison every sum they
    join (a cost, a budget); they are read as null, that is, as unknown.
    """
    try:
        return json.loads(content, parse_constant=_no_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def envelope(
    body: Any, status: int, retry_after: float | None
) -> tuple[list[dict[str, Any]], list[ApiError]]:
    """`data` items and `errors` of an answer, accepting the shapes SDK1.8 accepts."""
    success = is_success(status)
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


def add_item(state: TaskState, item: dict[str, Any], seen_videos: set[str]) -> None:
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


def upload_of(item: dict[str, Any], uuid_key: str, url_key: str) -> Upload:
    """The stored file an upload answer names; an answer without its UUID may be retried."""
    try:
        return Upload(uuid=item[uuid_key], url=item.get(url_key))
    except (KeyError, ValidationError):
        raise TransientError(
            f"Runware: the upload answer held no {uuid_key}", code="unrecognizedResponse"
        ) from None


def no_item(task: dict[str, Any]) -> TransientError:
    """An answer that neither accepted nor refused the task: it may or may not have landed."""
    return TransientError(
        f"Runware: the answer to {task['taskType']} held no item for its task",
        code="unrecognizedResponse",
        task_uuid=task["taskUUID"],
    )


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def clip(text: str, limit: int = LOG_CLIP) -> str:
    """A server-sent value, short enough for a log line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_constant(name: str) -> None:
    log.warning("Runware's answer held %s, which is not a number; read as unknown", name)


def _finite_float(text: str) -> float | None:
    number = float(text)
    if math.isfinite(number):
        return number
    log.warning("Runware's answer held %s, which is out of range; read as unknown", clip(text))
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
