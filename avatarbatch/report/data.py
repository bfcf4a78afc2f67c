"""What every report is made from: the state file and the manifest, reduced to plain rows.

All outputs (CSV, JSON, Markdown, the HTML gallery, failures.yaml) are views of one
`ReportData`, so their totals cannot disagree with each other or with the state file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, Protocol

from avatarbatch import catalog
from avatarbatch.manifest.document import Job
from avatarbatch.money import money as money  # re-exported: its old home
from avatarbatch.plan import PlanStatus, Totals
from avatarbatch.state.store import JobMoney, JobOverview, JobStatus, StateStore

MISMATCH_RATIO = 0.10  #: an actual cost this far from its estimate is pointed out
DELIVERED = "delivered to "  #: how a video the API put at the task's uploadEndpoint is listed
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  #: `generated_at`, in UTC
#: Statuses a job ends in; any other is work still to do.
FINISHED = (JobStatus.DONE, JobStatus.FAILED)


class ReportStatus(StrEnum):
    """A report row's status: its job's JobStatus, or one that only reports show."""

    PENDING = JobStatus.PENDING.value
    UPLOADING = JobStatus.UPLOADING.value
    SUBMITTING = JobStatus.SUBMITTING.value
    PROCESSING = JobStatus.PROCESSING.value
    DOWNLOADING = JobStatus.DOWNLOADING.value
    DONE = JobStatus.DONE.value
    FAILED = JobStatus.FAILED.value
    NEW = PlanStatus.NEW.value  #: a job the state file has no record of yet
    REMOVED = "removed"  #: a job id the manifest no longer has, but paid for


#: A row's status, by its job's status in the state file (a JobStatus missing from
#: ReportStatus fails right here, on import).
REPORTED = {status: ReportStatus(status.value) for status in JobStatus}
REMOVED = ReportStatus.REMOVED
NOT_STARTED = ReportStatus.NEW


@dataclass(frozen=True)
class JobReport:
    """One row of every report, made by `job_report` (a manifest job) or `removed_report`."""

    id: str
    vars: dict[str, str]
    model: str  #: full model id
    model_alias: str  #: standard or pro
    status: ReportStatus
    audio_seconds: float | None = None
    results: int = 0
    estimated_cost: float | None = None
    #: everything the provider billed for this job id through this state file, earlier
    #: attempts included (a changed spec, a retry), so that the column sums to the ledger
    actual_cost: float | None = None
    attempts: int = 0
    task_uuid: str | None = None
    outputs: list[str] = field(default_factory=list)  #: relative to the output folder
    sha256: list[str] = field(default_factory=list)
    error: str | None = None
    cost_mismatch: bool = False  #: actual and estimate differ by more than MISMATCH_RATIO
    earlier_cost: float = 0.0  #: the part of actual_cost billed for attempts before this one
    cost_source: str | None = None  #: "api"; "estimate" where the API gave no usable figure

    def as_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies every list, slow on a big batch.
        return {name: getattr(self, name) for name in _JOB_REPORT_FIELDS}

    def add_to(self, totals: Totals) -> None:
        """Count this row in `totals`; a removed row's cost counts, but it is no job."""
        totals.add(
            jobs=int(self.status != REMOVED),
            audio_seconds=self.audio_seconds,
            estimated_cost=self.estimated_cost,
            actual_cost=self.actual_cost,
            earlier_cost=self.earlier_cost,
        )


_JOB_REPORT_FIELDS = tuple(f.name for f in fields(JobReport))


class Tallied(Protocol):
    """A job as `tally_by_status` counts it: a JobOverview, a JobRecord or a JobReport."""

    @property
    def status(self) -> str: ...
    @property
    def audio_seconds(self) -> float | None: ...
    @property
    def estimated_cost(self) -> float | None: ...
    @property
    def actual_cost(self) -> float | None: ...


@dataclass
class StatusTally:
    """Jobs grouped by status: how many, and their audio and costs (see `tally_by_status`)."""

    groups: dict[str, Totals] = field(default_factory=dict)  #: by status, first seen first

    def count(self, status: str) -> int:
        group = self.groups.get(status)
        return 0 if group is None else group.jobs

    def counts(self, every: Iterable[str] = ()) -> dict[str, int]:
        """Jobs by status: `every` status first, in its order, zeros included; then the rest."""
        counts = dict.fromkeys(every, 0)
        counts.update((status, group.jobs) for status, group in self.groups.items())
        return counts

    def totals(self, statuses: Iterable[str] | None = None) -> Totals:
        """The groups of `statuses` (all when None) summed into one."""
        wanted = self.groups.keys() if statuses is None else statuses
        merged = Totals()
        for status in wanted:
            if status in self.groups:
                merged.merge(self.groups[status])
        return merged


def tally_by_status(rows: Iterable[Tallied]) -> StatusTally:
    """The one count of jobs by status, with their estimated and actual cost: for the reports,
    `status` and the run summary alike. `rows` are usually `StateStore.overview().values()`.

    `actual_cost` is each job's current attempt as its record holds it; what the provider
    billed in all, earlier attempts included, is the ledger's (`StateStore.spend`).
    """
    tally = StatusTally()
    groups = tally.groups
    for row in rows:
        group = groups.get(row.status)
        if group is None:
            group = groups[row.status] = Totals()
        group.add(
            audio_seconds=row.audio_seconds,
            estimated_cost=row.estimated_cost,
            actual_cost=row.actual_cost,
        )
    return tally


def tally_of(store: StateStore, ids: Iterable[str]) -> StatusTally:
    """`tally_by_status` of these jobs, summed by SQL: no job is read one by one."""
    tally = StatusTally()
    for status, (jobs, audio, estimated, actual, unknown) in store.status_totals(ids).items():
        tally.groups[status] = Totals(
            jobs=jobs,
            audio_seconds=audio,
            estimated_cost=estimated,
            actual_cost=actual,
            unknown_cost_jobs=unknown,
        )
    return tally


@dataclass
class ReportData:
    manifest: str
    manifest_sha256: str
    output_dir: Path
    generated_at: str
    jobs: list[JobReport]
    counts: dict[str, int]
    totals: Totals
    by_model: dict[str, Totals]  #: by model alias
    by_var: dict[str, dict[str, Totals]]
    var_names: list[str]
    run: dict[str, Any] | None = None  #: the last run: started, ended, arguments, outcome
    runs: int = 0
    #: job ids paid for through this state file that the manifest no longer has
    removed: list[JobReport] = field(default_factory=list)

    def tally(self) -> None:
        """Fill counts and totals (overall, by model, by var) from `jobs` and `removed`."""
        self.counts.update(tally_by_status(self.jobs).counts())
        for row in self.removed:
            row.add_to(self.totals)
            row.add_to(self.by_model.setdefault(row.model_alias, Totals()))
        for row in self.jobs:
            row.add_to(self.totals)
            row.add_to(self.by_model.setdefault(row.model_alias, Totals()))
            for name in self.var_names:
                if name in row.vars:
                    by_value = self.by_var.setdefault(name, {})
                    row.add_to(by_value.setdefault(row.vars[name], Totals()))

    def failed(self) -> list[JobReport]:
        return [job for job in self.jobs if job.status == ReportStatus.FAILED]

    def head(self) -> dict[str, Any]:
        """Everything but the jobs, which report.json writes one per line."""
        return {
            "manifest": self.manifest,
            "manifest_sha256": self.manifest_sha256,
            "output_dir": str(self.output_dir),
            "generated_at": self.generated_at,
            "run": self.run,
            "runs": self.runs,
            "counts": self.counts,
            "totals": self.totals.rounded(),
            "by_model": {k: v.rounded() for k, v in self.by_model.items()},
            "by_var": {k: {v: t.rounded() for v, t in vs.items()} for k, vs in self.by_var.items()},
            "removed": [job.as_dict() for job in self.removed],
        }


class RelativeTo:
    """Output paths as written in reports: relative to the output folder when inside it.

    A prefix test on normalised absolute strings, because a `resolve()` per file (a system
    call per path component) is slow for the files of a big batch; paths that do not start
    with the folder as given or as resolved still get the careful treatment.
    """

    def __init__(self, base: Path) -> None:
        self._base = base
        self._cwd = str(Path.cwd())
        self._prefixes = tuple(
            dict.fromkeys(
                os.path.join(os.path.normpath(folder), "")  # noqa: PTH118 - strings, for speed
                for folder in (base.absolute(), base.resolve())
            )
        )

    def __call__(self, stored: str) -> str:
        if not os.path.isabs(stored):  # noqa: PTH117 - strings, for speed
            return stored  # relative to the output folder already: how paths are stored now
        absolute = os.path.normpath(os.path.join(self._cwd, stored))  # noqa: PTH118 - as above
        for prefix in self._prefixes:
            if absolute.startswith(prefix):
                inside = absolute[len(prefix) :]
                return inside if os.sep == "/" else PurePath(inside).as_posix()
        try:
            return Path(stored).resolve().relative_to(self._base.resolve()).as_posix()
        except ValueError:
            return Path(stored).as_posix()


def job_report(
    job: Job, record: JobOverview | None, money: JobMoney | None, relative: RelativeTo
) -> JobReport:
    """The row of a manifest job, as the state file knows it (`record`) and the ledger
    (`money`: only for jobs whose money is more than their record's own figure)."""
    model = catalog.model_by_id(job.model)
    if record is None:
        return JobReport(
            id=job.id, vars=job.vars, model=job.model, model_alias=model.alias, status=NOT_STARTED
        )
    files = record.outputs
    estimate = record.estimated_cost
    # A job the ledger never saw (a state written by hand, or by tests) keeps its own figure.
    current = record.actual_cost
    mismatch = bool(
        estimate and current is not None and abs(current - estimate) > MISMATCH_RATIO * estimate
    )
    return JobReport(
        id=job.id,
        vars=job.vars,
        model=job.model,
        model_alias=model.alias,
        status=REPORTED[record.status],
        audio_seconds=record.audio_seconds,
        results=record.results,
        estimated_cost=estimate,
        actual_cost=current if money is None else money.billed,
        earlier_cost=0.0 if money is None else money.earlier,
        cost_source=_cost_source(money, current),
        attempts=record.attempts,
        task_uuid=record.task_uuid,
        outputs=[relative(o["path"]) if "path" in o else DELIVERED + o["delivered"] for o in files],
        sha256=[o.get("sha256") or "" for o in files],
        error=record.error_message,
        cost_mismatch=mismatch,
    )


def _cost_source(money: JobMoney | None, current: float | None) -> str | None:
    if money is not None and money.estimated_only:
        return "estimate"
    return None if current is None and (money is None or not money.billed) else "api"


def removed_report(job_id: str, money: JobMoney) -> JobReport:
    """A job id the manifest no longer has, kept in the reports for what it cost."""
    model = catalog.model_by_id(money.model) if money.model else catalog.STANDARD
    return JobReport(
        id=job_id,
        vars={},
        model=model.id,
        model_alias=model.alias,
        status=REMOVED,
        actual_cost=money.billed,
        earlier_cost=money.billed,
        cost_source="estimate" if money.estimated_only else "api",
    )


def build_report(
    jobs: list[Job] | tuple[Job, ...],
    store: StateStore,
    *,
    manifest: str,
    manifest_sha256: str,
    output_dir: Path,
    overview: dict[str, JobOverview] | None = None,
) -> ReportData:
    """The report of the manifest's jobs as the state file knows them now."""
    records = store.overview() if overview is None else overview
    # Only the jobs whose money is more than their record's own figure, and removed ones.
    money = store.money_by_job(job.id for job in jobs)
    relative = RelativeTo(output_dir)
    rows = [job_report(job, records.get(job.id), money.get(job.id), relative) for job in jobs]
    names = {job.id for job in jobs}
    removed = [
        removed_report(job_id, spent)
        for job_id, spent in money.items()
        if job_id not in names and spent.billed
    ]
    var_names = sorted({name for job in jobs for name in job.vars})
    data = ReportData(
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        output_dir=output_dir,
        generated_at=time.strftime(TIME_FORMAT, time.gmtime()),
        jobs=rows,
        removed=removed,
        counts={},
        totals=Totals(),
        by_model={},
        by_var={},
        var_names=var_names,
    )
    data.tally()
    runs = store.runs()
    data.runs = len(runs)
    data.run = runs[-1] if runs else None
    return data
