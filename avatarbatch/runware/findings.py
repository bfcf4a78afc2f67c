"""What `avatarbatch check` learnt: the result, saved between commands, and shown to people.

The result is saved (`save`) so that later commands read it (`load_fresh`) instead of asking
the API again. It holds the API URL (scrubbed, see `redact.py`) and the findings, never a key.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
import time
import uuid as _uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from avatarbatch.errors import AvatarBatchError, RejectedError
from avatarbatch.redact import scrub
from avatarbatch.runware import classify

CHECK_FILE = "check.json"
#: A saved check dated this far in the future is not trusted: the clock moved, or the file
#: was made elsewhere. A little slack allows for clocks adjusted by NTP.
FUTURE_SLACK = 300.0
#: A saved check older than this is asked again.
MAX_AGE = 24 * 3600.0

UnknownTaskWord = str  # "error", "empty", "error-without-uuid", "item", "http-<code>"


class CheckResult(BaseModel):
    """What one check learnt. Saved as JSON; holds no secret."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    api_url: str
    auth: Literal["ok", "refused"]
    #: True: several getResponse tasks in one POST are answered task by task; False: such a
    #: POST is refused as a whole; None: not asked (key refused) or the answers could not
    #: tell the two apart.
    batched_polls: bool | None = None
    #: How a getResponse for an unknown UUID is answered: "error" (an error naming the task),
    #: "empty" (no item and no error), "error-without-uuid", "item" (an item with some
    #: status), or "http-<code>" (an HTTP error with no error detail). None: not asked.
    unknown_task: UnknownTaskWord | None = None
    #: the error code of that answer (such as taskFailedOrNotFound), or the item's status
    unknown_task_detail: str | None = None
    round_trip_ms: float | None = None  #: median over the requests that got an answer
    checked_at: float  #: unix time

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- the saved check -----------------------------------------------------------------------


def stored_url(api_url: str) -> str:
    # The URL is scrubbed like any text that could hold a key (someone may paste one into a
    # query string); comparisons in load_fresh scrub the same way, so they still match.
    return scrub(api_url.strip())


def default_folder(environ: Mapping[str, str] | None = None) -> Path:
    """Where `check` saves when given no state folder: $XDG_CACHE_HOME/avatarbatch, else
    ~/.cache/avatarbatch. `environ`: os.environ unless given (the CLI may pass its own).
    """
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative path there is invalid and to be ignored.
    if cache and Path(cache).is_absolute():
        return Path(cache) / "avatarbatch"
    try:
        return Path.home() / ".cache" / "avatarbatch"
    except RuntimeError:  # no HOME and no passwd entry (a bare container): no cache then
        return Path(tempfile.gettempdir()) / f"avatarbatch-cache-{os.getuid()}"


def save(result: CheckResult, folder: Path) -> Path:
    """Write `folder/check.json` (mode 0600, replaced whole) and return its path.

    Written to a temporary file and renamed over the old one: a reader never sees half a
    file, and an interrupted save leaves the previous check in place.
    """
    path = folder / CHECK_FILE
    text = json.dumps(result.as_json(), indent=2, sort_keys=True) + "\n"
    # A name of its own (O_EXCL): two checks saving at once never write into one file.
    temporary = folder / f".{CHECK_FILE}.{_uuid.uuid4().hex}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600: a umask can only take bits away, so be exact
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        temporary.replace(path)
    except OSError as exc:
        raise AvatarBatchError(f"cannot save the check to {path}: {exc.strerror or exc}") from exc
    return path


def load_fresh(
    folder: Path, api_url: str, *, max_age: float = MAX_AGE, now: float | None = None
) -> CheckResult | None:
    """The check saved in `folder` for `api_url`, if it is at most `max_age` seconds old.

    None when there is none, it cannot be read, it is stale or dated in the future, it is
    about another API, or it records a refused key: a refusal is always asked again, since
    the only thing to do after one is to fix the key.
    """
    try:
        text = (folder / CHECK_FILE).read_text(encoding="utf-8")
        result = CheckResult.model_validate_json(text)
    except (OSError, UnicodeDecodeError, ValidationError):
        return None
    if result.api_url != stored_url(api_url) or result.auth != "ok":
        return None
    age = (time.time() if now is None else now) - result.checked_at
    if age > max_age or age < -FUTURE_SLACK:
        return None
    return result


# --- showing it ----------------------------------------------------------------------------


def summary_lines(result: CheckResult) -> list[str]:
    """The check as lines for people, one finding each."""
    lines = [f"API: {result.api_url}"]
    if result.auth == "refused":
        lines.append("key: refused (check RUNWARE_API_KEY); nothing else was asked")
    else:
        lines.append("key: accepted")
        lines.append(f"several getResponse tasks in one request: {_batched_text(result)}")
        lines.append(f"an unknown task is answered with: {_unknown_text(result)}")
    if result.round_trip_ms is not None:
        lines.append(f"round trip: {result.round_trip_ms:.0f} ms")
    moment = datetime.datetime.fromtimestamp(result.checked_at, datetime.UTC)
    lines.append(f"checked at: {moment:%Y-%m-%d %H:%M:%S} UTC")
    return lines


def _batched_text(result: CheckResult) -> str:
    if result.batched_polls is True:
        return "accepted (the run batches its polls)"
    if result.batched_polls is False:
        return "refused (the run will poll one task per request)"
    return "could not tell (the answers did not say)"


def _unknown_text(result: CheckResult) -> str:
    word, detail = result.unknown_task, result.unknown_task_detail
    code = f" ({detail})" if detail else ""
    if word == "error":
        # What the runner makes of it matters: a not-found error tells it that a submit whose
        # answer was lost never landed, so it may submit again without paying twice.
        known = bool(detail) and classify.is_not_found(RejectedError("", code=detail))
        meaning = "which the run reads" if known else "which the run does not read"
        return f"an error naming the task{code}, {meaning} as 'not found'"
    if word == "error-without-uuid":
        return f"an error that names no task{code}"
    if word == "empty":
        return "an empty answer (no item, no error)"
    if word == "item":
        return f"an item with status {detail or '(none)'}"
    if word is not None and word.startswith("http-"):
        return f"HTTP {word.removeprefix('http-')} with no error detail{code}"
    return "not asked"


def refused_batches(environ: Mapping[str, str], api_url: str) -> bool:
    """Whether a fresh check of this API, saved where `check` saves, found batched polls
    refused: `run` then polls one task per request from its very first poll."""
    found = load_fresh(default_folder(environ), api_url)
    return found is not None and found.batched_polls is False
