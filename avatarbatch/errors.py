"""The exception tree of avatarbatch: one root, grouped by what the caller must do.

    AvatarBatchError        anything the person running the batch should read
    ├── ManifestError       the manifest (or a file it names) is unusable: fix it, exit 2;
    │                       carries every problem found, located by file, line, job, field
    └── UsageError          the command line or the environment is wrong: exit 2

The CLI prints these messages and maps them to exit codes; any other exception is a bug and
is allowed to surface as one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avatarbatch.diagnostics import Problem


class AvatarBatchError(Exception):
    """Root of every error avatarbatch raises on purpose; its text is meant for users."""

    exit_code = 1


class ManifestError(AvatarBatchError):
    """The manifest cannot be used; `problems` lists every located reason."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.is_error]
        first = errors[0].format() if errors else "invalid manifest"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class UsageError(AvatarBatchError):
    """A wrong option, argument or environment setting."""

    exit_code = 2
