"""What the state file holds, as Python values: job and task statuses, the legal moves between
job statuses, and the records the state layer reads and writes. No SQL here.

`JobStatus` itself lives in `avatarbatch.statuses`, below the plan, which needs it too; it is
importable from here and from `state.store` as ever.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from avatarbatch.errors import AvatarBatchError
from avatarbatch.statuses import JobStatus as JobStatus  # re-exported: its old home


class StateError(AvatarBatchError):
    """The state file cannot be used, or a job was asked to make an illegal move."""

    exit_code = 2


_S = JobStatus
#: The legal moves. Going back to PENDING is always allowed (a changed spec, --retry-failed);
#: a status may repeat itself where a stage can start over (another upload, a new attempt,
#: another poll, another download); SUBMITTING after PROCESSING is a resubmission after a
#: transient failed generation.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _S.PENDING: frozenset({_S.PENDING, _S.UPLOADING, _S.SUBMITTING, _S.FAILED}),
    _S.UPLOADING: frozenset({_S.PENDING, _S.UPLOADING, _S.SUBMITTING, _S.FAILED}),
    # back to UPLOADING: the API refused the submission for an input it no longer has
    _S.SUBMITTING: frozenset({_S.PENDING, _S.UPLOADING, _S.SUBMITTING, _S.PROCESSING, _S.FAILED}),
    # back to UPLOADING: a task the API lost, whose inputs it has forgotten as well
    _S.PROCESSING: frozenset(
        {_S.PENDING, _S.UPLOADING, _S.PROCESSING, _S.DOWNLOADING, _S.SUBMITTING, _S.FAILED}
    ),
    _S.DOWNLOADING: frozenset({_S.PENDING, _S.DOWNLOADING, _S.DONE, _S.FAILED}),
    # back to DOWNLOADING: the video on disk is missing or changed; its paid URL may still live
    _S.DONE: frozenset({_S.PENDING, _S.DOWNLOADING}),
    _S.FAILED: frozenset({_S.PENDING}),
}
STATUS_BY_VALUE = {status.value: status for status in JobStatus}


class TaskStatus(StrEnum):
    """Where one task UUID stands in the ledger: what it may cost, and what it did cost."""

    SUBMITTING = "submitting"  #: written before the POST: it may or may not have landed
    ACCEPTED = "accepted"  #: the API has it; it will be billed if it renders
    BILLED = "billed"  #: results arrived; billed_cost is what they cost
    UNBILLED = "unbilled"  #: it ended without a result (a failed generation): nothing billed
    REFUSED = "refused"  #: the API refused the submission: nothing billed


#: Statuses whose task may still be billed: counted at their estimate until they settle.
OPEN_TASK_STATUSES = (TaskStatus.SUBMITTING.value, TaskStatus.ACCEPTED.value)


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One write to the ledger, made in the same transaction as the job's move."""

    task_uuid: str
    status: TaskStatus
    attempt: int | None = None  #: set when the task is first written
    spec_hash: str | None = None
    run_id: int | None = None
    estimated_cost: float | None = None
    billed_cost: float | None = None
    cost_source: str | None = None  #: "api", or "estimate" when the API gave no usable cost

    def logged(self) -> dict[str, Any]:
        """What the events log keeps of this write: every set field but the spec hash, which
        the job's "created"/"changed" events hold already."""
        entry: dict[str, Any] = {
            "task_uuid": self.task_uuid,
            "status": TaskStatus(self.status).value,
        }
        for name in ("attempt", "run_id", "estimated_cost", "billed_cost", "cost_source"):
            value = getattr(self, name)
            if value is not None:
                entry[name] = value
        return entry


@dataclass(frozen=True, slots=True)
class StrayTask:
    """A ledger task that may still be billed and that no job drives (see `stray_tasks`)."""

    task_uuid: str
    job_id: str
    status: TaskStatus
    estimated_cost: float | None
    number_results: int
    audio_seconds: float | None


@dataclass(frozen=True, slots=True)
class OwnedFile:
    """A file avatarbatch wrote into the output folder (path relative to it, POSIX style)."""

    path: str
    job_id: str | None = None  #: None for report files
    bytes: int | None = None
    sha256: str | None = None
    mtime_ns: int | None = None

    def logged(self) -> dict[str, Any]:
        """What the events log keeps of this write: the path and, once known, its content."""
        entry: dict[str, Any] = {"path": self.path}
        if self.bytes is not None:
            entry["bytes"] = self.bytes
        if self.sha256 is not None:
            entry["sha256"] = self.sha256
        return entry


@dataclass(frozen=True, slots=True)
class RecordedOutput:
    """One video a job's record names, with what `files` knows of it (see recorded_outputs)."""

    job_id: str
    status: str
    index: int  #: which result of the job
    path: str  #: as stored: relative to the output folder (absolute in very old files)
    bytes: int | None
    sha256: str | None
    mtime_ns: int | None  #: when it was last seen as downloaded, if recorded


@dataclass(frozen=True, slots=True)
class JobMoney:
    """What the ledger says one job id cost, over every attempt this state file recorded."""

    billed: float  #: everything billed for this job id
    earlier: float  #: the part billed for attempts other than the current one
    open_estimate: float  #: estimates of tasks that may still be billed
    estimated_only: bool  #: some billed figure is our estimate: the API gave no usable cost
    model: str | None  #: the job's model as the state file last knew it


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of `jobs`, decoded. Its fields are the columns read, in this order."""

    id: str
    spec_hash: str
    status: JobStatus
    attempts: int  #: videoInference submissions (task UUIDs) so far
    task_uuid: str | None  #: the current attempt's task UUID, written before the submit POST
    model: str
    number_results: int
    audio_seconds: float | None
    estimated_cost: float | None
    actual_cost: float | None  #: sum of billed result costs once known
    image_input: str | None  #: what was sent as inputs.image (UUID or URL; None if inline)
    audio_input: str | None
    results: list[dict[str, Any]]  #: {"video_uuid", "video_url", "seed", "nsfw", "cost"}
    outputs: list[dict[str, Any]]  #: downloaded files: {"path", "bytes", "sha256"}
    error_code: str | None
    error_message: str | None
    updated_at: float
    submitted_at: float | None


@dataclass(frozen=True, slots=True)
class JobOverview:
    """What summaries and reports need of a job: no results or events decoded, which for a big
    batch takes a fraction of the time and memory of its full JobRecords."""

    status: JobStatus
    attempts: int
    task_uuid: str | None
    audio_seconds: float | None
    estimated_cost: float | None
    actual_cost: float | None
    results: int  #: how many results are known
    outputs_json: str
    error_message: str | None

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Downloaded files: {"path", "bytes", "sha256"}."""
        return json.loads(self.outputs_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the manifest says about one job: the input of `StateStore.ensure_jobs`."""

    id: str
    spec_hash: str
    model: str
    number_results: int
    audio_seconds: float | None
    estimated_cost: float | None
