"""What a run shows while it works: rich progress on a terminal, plain log lines otherwise.

Job events are ordinary log records (one line per event, each naming the job), so a cron log
gets timestamped lines and a terminal gets the same lines printed above a live bar. Only the
CLI calls `configure_logging`; library users keep their own logging setup.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from avatarbatch.money import money
from avatarbatch.redact import RedactingFilter
from avatarbatch.report.data import FINISHED
from avatarbatch.state.store import JobStatus

#: The statuses between pending and finished, counted on the bar while jobs are in them.
BUSY = (JobStatus.UPLOADING, JobStatus.SUBMITTING, JobStatus.PROCESSING, JobStatus.DOWNLOADING)
#: How a status reads to people. An `uploading` job keeps that status from its upload until a
#: render slot (--concurrency) is free, and uploads are once per file content, so most of the
#: jobs counted there are waiting for a slot: state counts cannot tell the two apart.
STAGE_LABELS: dict[str, str] = {JobStatus.UPLOADING: "waiting"}
MIN_FINISHED = 3  #: jobs finished in this run before an ETA is shown (fewer in a tiny run)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  #: every log line's time, on a terminal and in a cron log


def stage_label(status: str) -> str:
    return STAGE_LABELS.get(status, status)


def _utc(when: datetime) -> Text:
    """RichHandler's time column: the same UTC ISO time as the plain log lines."""
    return Text(when.astimezone(UTC).strftime(TIME_FORMAT))


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(TIME_FORMAT, time.gmtime(record.created))


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
            console=console,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format=_utc,
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
    """A live bar of finished jobs with per-stage counts, cost so far and an ETA (TTY only).

    Until the number of jobs is known (a `total` of 0, then `set_total`) the bar pulses and
    counts nothing. The ETA is the time left at the rate jobs have finished in this run, shown
    once `MIN_FINISHED` of them have (jobs done by earlier runs do not count), "ETA —" before.
    """

    def __init__(
        self, total: int, console: Console | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._total: int | None = total or None  #: None until known
        self._start: tuple[float, int] | None = None  #: when counting began, and jobs finished
        self._progress: Progress | None = None
        if console is not None:
            self._progress = Progress(
                TextColumn("[bold]avatarbatch"),
                BarColumn(),  # pulses while the task's total is None
                TextColumn("{task.fields[count]}"),
                TextColumn("{task.fields[stages]}"),
                TextColumn("{task.fields[cost]}"),
                TextColumn("{task.fields[eta]}"),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task(
                "run", total=self._total, count=self._count(0), stages="", cost="", eta=""
            )

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
        self._total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def update(self, counts: Mapping[str, int], cost_actual: float, cost_estimated: float) -> None:
        finished = sum(counts.get(status, 0) for status in FINISHED)
        if self._total is not None and (self._start is None or finished < self._start[1]):
            # finished jobs can go down once: failed ones put back for --retry-failed
            self._start = (self._clock() if self._start is None else self._start[0], finished)
        if self._progress is None:
            return
        busy = " ".join(f"{stage_label(s)}:{counts[s]}" for s in BUSY if counts.get(s))
        failed = counts.get(JobStatus.FAILED)
        failed_text = f" {stage_label(JobStatus.FAILED)}:{failed}" if failed else ""
        self._progress.update(
            self._task,
            completed=finished,
            count=self._count(finished),
            stages=(busy + failed_text).strip(),
            cost=f"{money(cost_actual)} of ~{money(cost_estimated)}",
            eta=self.eta(finished),
        )

    def _count(self, finished: int) -> str:
        return "starting" if self._total is None else f"{finished}/{self._total}"

    def eta(self, finished: int) -> str:
        """The time left, as "ETA 0:12:34", at the rate jobs have finished in this run.

        "ETA —" until `MIN_FINISHED` have; nothing before the total is known or once all are.
        """
        if self._total is None or self._start is None:
            return ""
        remaining = self._total - finished
        if remaining <= 0:
            return ""
        began, before = self._start
        finished_now = finished - before
        if finished_now < max(1, min(MIN_FINISHED, self._total - before - 1)):
            return "ETA —"
        elapsed = self._clock() - began
        left = round(elapsed * remaining / finished_now)
        hours, rest = divmod(left, 3600)
        return f"ETA {hours}:{rest // 60:02d}:{rest % 60:02d}"
