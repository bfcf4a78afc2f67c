"""What a run shows while it works: rich progress on a terminal, plain log lines otherwise.

Job events are ordinary log records (one line per event, each naming the job), so a cron log
gets timestamped lines and a terminal gets the same lines printed above a live bar. Only the
CLI calls `configure_logging`; library users keep their own logging setup.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from avatarbatch.redact import RedactingFilter

STAGES = ("pending", "uploading", "submitting", "processing", "downloading", "done", "failed")


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def configure_logging(
    *, tty: bool, verbose: bool = False, stream: TextIO | None = None
) -> Console | None:
    """Route avatarbatch's log lines to stderr; returns the rich console on a TTY.

    Every line is scrubbed of API keys and bearer tokens first (a server's message may echo
    one), whichever module logged it.
    """
    logger = logging.getLogger("avatarbatch")
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    stream = stream or sys.stderr
    if tty:
        console = Console(file=stream, soft_wrap=True)
        handler: logging.Handler = RichHandler(
            console=console, show_path=False, markup=False, rich_tracebacks=False
        )
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        return console
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    return None


class RunProgress:
    """A live bar of finished jobs with per-stage counts, cost so far and an ETA (TTY only)."""

    def __init__(self, total: int, console: Console | None) -> None:
        self._progress: Progress | None = None
        if console is not None:
            self._progress = Progress(
                TextColumn("[bold]avatarbatch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stages]}"),
                TextColumn("{task.fields[cost]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task("run", total=total, stages="", cost="")

    def __enter__(self) -> RunProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def set_total(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def update(self, counts: Mapping[str, int], cost_actual: float, cost_estimated: float) -> None:
        if self._progress is None:
            return
        busy = " ".join(f"{s}:{counts[s]}" for s in STAGES[1:5] if counts.get(s))
        failed = f" failed:{counts['failed']}" if counts.get("failed") else ""
        self._progress.update(
            self._task,
            completed=counts.get("done", 0) + counts.get("failed", 0),
            stages=(busy + failed).strip(),
            cost=f"${cost_actual:,.4f} of ~${cost_estimated:,.4f}",
        )
