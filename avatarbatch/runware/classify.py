"""Classifying what the Runware API answers into the error tree of `errors.py`.

Runware's codes are not a stable contract ("codes and formats still vary between models and
providers"), so classification goes by HTTP status first, then by the code's shape, following
the categories of the official SDK (RUNWARE_PROTOCOL.md §5). Anything unknown is a rejection:
retrying what we do not understand would only spend money and time.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from typing import Any

from avatarbatch.errors import (
    ApiError,
    AuthError,
    ConflictError,
    CreditError,
    RejectedError,
    TransientError,
)
from avatarbatch.redact import scrub

CONFLICT_CODES = frozenset({"conflictTaskUUID"})
AUTH_CODES = frozenset(
    {
        "unauthorized", "forbidden", "permissionDenied", "insufficientPermissions",
        "authenticationFailed", "authFailed", "authTimeout", "invalidAuthentication",
        "invalidCredentials", "missingAuthentication", "tokenExpired", "tokenInvalid",
        "tokenMissing", "tokenRevoked", "accountSuspended", "accountDisabled",
        "organizationSuspended", "organizationDisabled", "workspaceSuspended",
        "workspaceDisabled",
    }
)  # fmt: skip
CREDIT_CODES = frozenset({"quotaExceeded", "paymentRequired", "environmentPaused"})
TRANSIENT_CODES = frozenset(
    {
        "internalServerError", "serviceUnavailable", "serverUnavailable", "standardError",
        "unknownError", "undefinedError", "defaultError", "unrecognizedResponse",
        "errorRetrievingAccountManagement", "inferenceError", "processingFailed", "taskFailed",
        "downloadFailed", "uploadFailed", "noAvailableServer", "modelUnavailable",
        "modelNotReady", "mediaStorageFileCouldNotBeMoved", "rateLimitExceeded",
    }
)  # fmt: skip
NOT_FOUND_CODES = frozenset({"taskFailedOrNotFound", "taskCancelled", "unknownModel"})
#: A submission refused for one of these names an input the API no longer has (or never had).
STALE_INPUT_PARAMETERS = frozenset({"inputs.image", "inputs.audio"})
# Codes that say an input's UUID is unknown: `invalidImageUUID`, `unknownMediaUUID`,
# `imageNotFound`, `mediaUUIDExpired`, `audioDoesNotExist`... Bare `invalidImage` is not
# among them: it is as often an unreadable picture, which uploading again would not mend.
_STALE_CODE = re.compile(
    r"(?:invalid|unknown)(?:input)?(?:image|audio|media)(?:uuid|id)"
    r"|(?:input)?(?:image|audio|media)(?:uuid|id)?(?:notfound|expired|doesnotexist|deleted|gone)",
    re.IGNORECASE,
)
_MEDIA = r"(?:image|audio|media|upload(?:ed)?\s+file)"
_GONE = (
    r"(?:was\s+|were\s+|could\s+not\s+be\s+|cannot\s+be\s+|can't\s+be\s+)?not\s+found"
    r"|(?:has\s+|have\s+)?expired|does\s+not\s+exist|doesn't\s+exist|no\s+longer\s+exists?"
    r"|(?:was|has\s+been)\s+deleted"
)
# The server's words, both orders: "image 5e7d... not found", "no such media 9a8b...".
# Within one clause only, and "unknown" only before a UUID: "unknown media type" is a
# format the API cannot read, not an upload it forgot.
_STALE_MESSAGE = re.compile(
    rf"\b{_MEDIA}\b[^.;:!?]{{0,80}}?\b(?:{_GONE})\b"
    rf"|\b(?:no\s+such|could\s+not\s+find|cannot\s+find|can't\s+find|expired)"
    rf"\s+(?:input\s+)?{_MEDIA}\b"
    rf"|\bunknown\s+(?:input\s+)?{_MEDIA}\s+(?:uuid|id)\b",
    re.IGNORECASE,
)
#: A longer Retry-After is read as this: the rate limiter pauses every request for it, so one
#: header (broken or hostile) asking for a day must not park a whole run for a day.
MAX_RETRY_AFTER = 600.0


def error_class(code: str | None, status: int | None = None) -> type[ApiError]:
    """The error class for an HTTP status and/or a Runware error code."""
    if status in (401, 403):
        return AuthError
    if status == 402:
        return CreditError
    if status in (408, 429) or (status is not None and status >= 500):
        return TransientError
    if status == 409:  # HTTP's own word for "that exists already": a duplicate, never billed
        return ConflictError
    return _class_for_code(code or "")


def _class_for_code(code: str) -> type[ApiError]:
    # The documented code, and any other spelling of it: mistaking a duplicate for a refusal
    # would fail a job whose task exists (and may be billed).
    if code in CONFLICT_CODES or "conflict" in code.lower() or "duplicate" in code.lower():
        return ConflictError
    if code in CREDIT_CODES or any(word in code for word in ("Credits", "Quota", "Balance")):
        return CreditError
    if code in AUTH_CODES or "ApiKey" in code:
        return AuthError
    if (
        code in TRANSIENT_CODES
        or "RateLimit" in code
        or "Timeout" in code
        or code.startswith("timeout")
    ):
        return TransientError
    if code.startswith("provider") and not code.startswith("providerContent"):
        return TransientError
    return RejectedError


def is_not_found(error: ApiError) -> bool:
    """Whether the API does not know the task (so a submit never landed)."""
    code = error.code or ""
    return code in NOT_FOUND_CODES or code.endswith("NotFound")


def is_stale_input(error: ApiError) -> bool:
    """Whether a refused submission names an input (image, audio) the API does not have.

    Runware forgets uploads unused for 30 days; such a refusal is mended by uploading the
    inputs again and resubmitting. Recognised by the field at fault (`inputs.image`,
    `inputs.audio`), or by a code or message saying an image/audio/media UUID is not found,
    expired or does not exist. A not-found of a task (getResponse) is not one, nor is an
    input refused for what it holds (`invalidImage` alone: a bad picture stays bad).
    """
    if error.parameter in STALE_INPUT_PARAMETERS:
        return True
    code = error.code or ""
    if code in NOT_FOUND_CODES:
        return False
    if _STALE_CODE.fullmatch(code):
        return True
    return bool(_STALE_MESSAGE.search(error.message))


def from_error_object(
    item: dict[str, Any], *, status: int | None = None, retry_after: float | None = None
) -> ApiError:
    """An ApiError from one entry of `errors[]` (or a nested `error` object)."""
    nested = item.get("error")
    source = nested if isinstance(nested, dict) else item
    code = _text(source.get("code")) or _text(item.get("code"))
    # The server's own words are scrubbed before they are pieced together, so that a key it
    # echoed is hidden even where the message's framing would keep a pattern from matching.
    message = scrub(_text(source.get("message")) or _text(item.get("message")))
    parameter = source.get("parameter")
    if isinstance(parameter, list):  # the SDK accepts a list of fields; the first one matters
        parameter = parameter[0] if parameter else None
    field = scrub(_text(parameter)) if parameter else None
    cls = error_class(code, status)  # by the code as sent: scrubbing it could only blur it
    where = f" ({field})" if field else ""
    return cls(
        f"Runware: {scrub(code) or 'error'}{where}: {message or 'no message given'}",
        status=status,
        code=code,
        parameter=field,
        task_uuid=_text(item.get("taskUUID")) or None,
        retry_after=retry_after,
    )


def from_status(status: int, detail: str, retry_after: float | None = None) -> ApiError:
    """An ApiError for an answer whose body says nothing usable."""
    cls = error_class(None, status)
    hint = {
        401: "the API key was refused; check RUNWARE_API_KEY",
        402: "the account balance is too low",
        403: "the API key lacks permission for this request",
        429: "the API is over capacity; slowing down",
    }.get(status, detail)
    return cls(f"Runware answered HTTP {status}: {hint}", status=status, retry_after=retry_after)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" and "inf" parse as floats too, and would stall or break the waits
        return _bounded(seconds) if math.isfinite(seconds) else None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _bounded(moment.timestamp() - (time.time() if now is None else now))


def _bounded(seconds: float) -> float:
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))
