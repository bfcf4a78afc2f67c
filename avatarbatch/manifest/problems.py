"""Located problems: what is wrong, where (file, line, job, field), and how serious.

Validation never stops at the first problem: every check appends to a `Problems` list so the
user fixes a whole manifest in one pass. A problem renders as `FILE:LINE: job ID: field: message`,
which editors and CI logs turn into links.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Severity(StrEnum):
    ERROR = "error"  #: the manifest cannot run as written
    WARNING = "warning"  #: it can run, but probably not as the user meant


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a value was written: a file and a 1-based line (0 when the file itself is meant)."""

    file: Path
    line: int = 0

    def format(self) -> str:
        where = display_path(self.file)
        return f"{where}:{self.line}" if self.line else where


@dataclass(frozen=True, slots=True)
class Problem:
    severity: Severity
    origin: Origin
    message: str
    job: str | None = None  #: the job id, or "row N" while the id is not known yet
    field: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def format(self) -> str:
        parts = [self.origin.format()]
        if self.severity is Severity.WARNING:
            parts.append("warning")
        if self.job:
            parts.append(self.job if self.job.startswith("row ") else f"job {self.job}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value,
            "file": display_path(self.origin.file),
            "line": self.origin.line or None,
            "job": self.job,
            "field": self.field,
            "message": self.message,
        }


@dataclass
class Problems:
    """An ordered collection of problems, with shorthands for adding them."""

    items: list[Problem] = field(default_factory=list)

    def error(
        self, origin: Origin, message: str, *, job: str | None = None, field: str | None = None
    ) -> None:
        self.items.append(Problem(Severity.ERROR, origin, message, job, field))

    def warning(
        self, origin: Origin, message: str, *, job: str | None = None, field: str | None = None
    ) -> None:
        self.items.append(Problem(Severity.WARNING, origin, message, job, field))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if not p.is_error]

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


def display_path(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`count` with its noun agreeing: "1 job", "2 jobs", "0 jobs" (`many` for odd plurals)."""
    return f"{count:,} {noun if count == 1 else many or noun + 's'}"


def shorten(value: object, limit: int = 60) -> str:
    """A value quoted for a message, cut so a pasted base64 blob cannot flood the terminal."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
