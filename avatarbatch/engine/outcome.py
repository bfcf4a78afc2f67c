"""What a run reports as it goes and once it ends, and the test seam at its write-ahead points."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from avatarbatch.errors import ApiError


class Checkpoint(StrEnum):
    """The write-ahead points of a job: each is reached right after a commit or right before a
    request. Tests crash at each of them to prove that a resumed run pays once and loses nothing.
    """

    UPLOAD_BEFORE = "upload:before"  #: UPLOADING committed, inputs not sent yet
    UPLOAD_AFTER = "upload:after"  #: inputs uploaded, their UUIDs not committed yet
    SUBMIT_BEFORE = "submit:before"  #: task UUID committed as SUBMITTING, POST not sent yet
    SUBMIT_SENT = "submit:sent"  #: the API accepted the task, PROCESSING not committed yet
    SUBMIT_AFTER = "submit:after"  #: PROCESSING committed
    POLL_DONE = "poll:done"  #: the task ended at the provider, its results not committed yet
    DOWNLOAD_BEFORE = "download:before"  #: DOWNLOADING committed, nothing fetched yet
    DOWNLOAD_RENAMED = "download:renamed"  #: a video moved into place, DONE not committed yet
    DOWNLOAD_AFTER = "download:after"  #: DONE committed


class Hooks:
    """Test seam: awaited at every write-ahead point, e.g. to simulate a crash right there."""

    async def checkpoint(self, point: Checkpoint, job_id: str) -> None:
        return None


@dataclass
class Outcome:
    """What this invocation did, for the summary and the exit code."""

    submitted_jobs: set[str] = field(default_factory=set)  #: jobs with a task accepted
    tasks_sent: int = 0  #: tasks accepted, retries of a job included
    fatal: ApiError | None = None  #: an error that `stops_run` (auth, credit): it stopped the run
    budget_stopped: bool = False
    interrupted: bool = False
    timed_out: list[str] = field(default_factory=list)
    local_error: str | None = None  #: a local failure (disk full...) that stopped the run
    left_by: str | None = None  #: the API error that left jobs for the next run, if any


@dataclass(frozen=True)
class Progress:
    """A snapshot of a run for progress displays."""

    jobs: int  #: jobs this run was given
    counts: dict[str, int]  #: jobs per status in the state file, every status present
    spent: float  #: billed so far for what this run submitted and saw finish
    estimated_total: float  #: the plan's estimate of every job this run was given
