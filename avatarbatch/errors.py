"""The exception tree of avatarbatch: one root, grouped by what the caller must do.

    AvatarBatchError        anything the person running the batch should read
    ├── ManifestError       the manifest (or a file it names) is unusable: fix it, exit 2;
    │                       carries every problem found, located by file, line, job, field
    ├── UsageError          the command line or the environment is wrong: exit 2
    └── ApiError            the Runware API (or the way to it) said no; carries status, code,
        │                   parameter and task UUID. Subclasses say what to do next:
        ├── TransientError  try again later (network, timeouts, 408, 429, 5xx, provider hiccups)
        ├── RejectedError   this job cannot succeed as sent (validation, safety, not found)
        ├── AuthError       the key is wrong or lacks permission: stop the whole run, exit 4
        ├── CreditError     the account cannot pay: stop the whole run, exit 4
        └── ConflictError   the task UUID is already known: the task exists, poll it

Errors that `stops_run` (auth, credit) end the whole run: every other job would meet them too.
The CLI prints these messages and maps them to exit codes; any other exception is a bug and
is allowed to surface as one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

from avatarbatch.redact import scrub

if TYPE_CHECKING:
    from avatarbatch.manifest.problems import Problem


class ExitCode(IntEnum):
    """How a command ended, for scripts and cron (DESIGN.md)."""

    OK = 0  #: every job done
    FAILED = 1  #: some job failed or is unfinished; or something else went wrong
    USAGE = 2  #: a bad manifest, option or environment: nothing was paid
    BUDGET = 3  #: --max-cost reached: jobs remain
    AUTH = 4  #: the key or the account was refused: the run stopped
    INTERRUPTED = 130  #: a signal stopped the run: the same command resumes it


class AvatarBatchError(Exception):
    """Root of every error avatarbatch raises on purpose; its text is meant for users."""

    exit_code: int = ExitCode.FAILED  #: an ExitCode, or the plain number of one
    #: whether this error ends the whole run (no further job is started), not just one job
    stops_run = False


class ManifestError(AvatarBatchError):
    """The manifest cannot be used; `problems` lists every located reason."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.is_error]
        first = errors[0].format() if errors else "invalid manifest"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class UsageError(AvatarBatchError):
    """A wrong option, argument or environment setting."""

    exit_code = ExitCode.USAGE


class ApiError(AvatarBatchError):
    """A failed API exchange. The message is written for people; never holds the API key.

    Its texts often quote the server, which may echo a key back: they are scrubbed here, so
    whatever builds the error, its message is safe to store, print and log.
    """

    category = "rejected"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        parameter: str | None = None,
        task_uuid: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = scrub(message)
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = None if code is None else scrub(code)
        self.parameter = None if parameter is None else scrub(parameter)
        self.task_uuid = task_uuid
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, code={self.code!r}, "
            f"parameter={self.parameter!r})"
        )

    def for_task(self, task_uuid: str) -> ApiError:
        """The same error, as a new exception tied to one task of a request that failed.

        Each task's caller raises an exception of its own: one object raised in several
        tasks at once would have its traceback and context overwritten by each.
        """
        twin = type(self)(
            self.message,
            status=self.status,
            code=self.code,
            parameter=self.parameter,
            task_uuid=task_uuid,
            retry_after=self.retry_after,
        )
        twin.__cause__ = self.__cause__
        return twin


class TransientError(ApiError):
    category = "transient"


class RejectedError(ApiError):
    category = "rejected"


class AuthError(ApiError):
    category = "auth"
    exit_code = ExitCode.AUTH
    stops_run = True


class CreditError(ApiError):
    category = "credit"
    exit_code = ExitCode.AUTH
    stops_run = True


class ConflictError(ApiError):
    category = "conflict"
