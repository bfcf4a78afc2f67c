"""What every report is made from: the state file and the manifest, reduced to plain rows.

All outputs (CSV, JSON, Markdown, the HTML gallery, failures.yaml) are views of one
`ReportData`, so their totals cannot disagree with each other or with the state file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any

from avatarbatch import catalog
from avatarbatch.manifest.document import Job
from avatarbatch.state.store import JobMoney, JobOverview, StateStore

MISMATCH_RATIO = 0.10  #: an actual cost this far from its estimate is pointed out
DELIVERED = "delivered to "  #: how a video the API put at the task's uploadEndpoint is listed
REMOVED = "removed"  #: the status shown for a job id the manifest no longer has, but paid for
#: decimals of every money figure shown to people: per-second prices ($0.044 x 12.345 s) need 5
MONEY_PLACES = 5


def money(value: Decimal | float | None, *, unknown: str = "?") -> str:
    """A cost as printed everywhere (plan, status, run summary, progress, reports): `$1,234.56789`.

    `unknown` stands in for a cost nobody knows (remote audio of unmeasured length).
    """
    if value is None:
        return unknown
    return f"${Decimal(str(value)):,.{MONEY_PLACES}f}"


@dataclass(frozen=True)
class JobReport:
    id: str
    vars: dict[str, str]
    model: str  #: full model id
    model_alias: str  #: standard or pro
    status: str
    audio_seconds: float | None
    results: int
    estimated_cost: float | None
    #: everything the provider billed for this job id through this state file, earlier
    #: attempts included (a changed spec, a retry), so that the column sums to the ledger
    actual_cost: float | None
    attempts: int
    task_uuid: str | None
    outputs: list[str]  #: paths relative to the output folder, e.g. videos/host-en.mp4
    sha256: list[str]
    error: str | None
    cost_mismatch: bool  #: actual and estimate differ by more than MISMATCH_RATIO
    earlier_cost: float = 0.0  #: the part of actual_cost billed for attempts before this one
    cost_source: str | None = None  #: "api"; "estimate" where the API gave no usable figure

    def as_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies, 5 s for 100,000 jobs.
        return {name: getattr(self, name) for name in _JOB_REPORT_FIELDS}


_JOB_REPORT_FIELDS = tuple(f.name for f in fields(JobReport))


@dataclass
class Totals:
    jobs: int = 0
    audio_seconds: float = 0.0
    estimated_cost: float = 0.0
    actual_cost: float = 0.0
    earlier_cost: float = 0.0

    def add(self, job: JobReport) -> None:
        self.jobs += job.status != REMOVED
        self.audio_seconds += job.audio_seconds or 0.0
        self.estimated_cost += job.estimated_cost or 0.0
        self.actual_cost += job.actual_cost or 0.0
        self.earlier_cost += job.earlier_cost

    def rounded(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "audio_seconds": round(self.audio_seconds, 3),
            "estimated_cost": round(self.estimated_cost, 5),
            "actual_cost": round(self.actual_cost, 5),
            "earlier_cost": round(self.earlier_cost, 5),
        }


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
    extra: dict[str, Any] = field(default_factory=dict)
    #: job ids paid for through this state file that the manifest no longer has
    removed: list[JobReport] = field(default_factory=list)

    def tally(self) -> None:
        """Fill counts and totals (overall, by model, by var) from `jobs`."""
        for row in self.removed:
            self.totals.add(row)
            self.by_model.setdefault(row.model_alias, Totals()).add(row)
        for row in self.jobs:
            self.counts[row.status] = self.counts.get(row.status, 0) + 1
            self.totals.add(row)
            self.by_model.setdefault(row.model_alias, Totals()).add(row)
            for name in self.var_names:
                if name in row.vars:
                    by_value = self.by_var.setdefault(name, {})
                    by_value.setdefault(row.vars[name], Totals()).add(row)

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
    call per path component) took 6 s for the 100,000 files of a large batch; paths that do
    not start with the folder as given or as resolved still get the careful treatment.
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
    model = catalog.model_by_id(job.model)
    if record is None:
        return JobReport(
            job.id,
            job.vars,
            job.model,
            model.alias,
            "new",
            None,
            0,
            None,
            None,
            0,
            None,
            [],
            [],
            None,
            False,
        )
    files = record.outputs
    outputs = [relative(o["path"]) if "path" in o else DELIVERED + o["delivered"] for o in files]
    estimate = record.estimated_cost
    # A job the ledger never saw (a state written by hand, or by tests) keeps its own figure.
    actual = record.actual_cost if money is None else money.billed
    earlier = 0.0 if money is None else money.earlier
    current = record.actual_cost
    mismatch = bool(
        estimate and current is not None and abs(current - estimate) > MISMATCH_RATIO * estimate
    )
    return JobReport(
        id=job.id,
        vars=job.vars,
        model=job.model,
        model_alias=model.alias,
        status=record.status.value,
        audio_seconds=record.audio_seconds,
        results=record.results,
        estimated_cost=estimate,
        actual_cost=actual,
        earlier_cost=earlier,
        cost_source=_cost_source(money, current),
        attempts=record.attempts,
        task_uuid=record.task_uuid,
        outputs=outputs,
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
        audio_seconds=None,
        results=0,
        estimated_cost=None,
        actual_cost=money.billed,
        earlier_cost=money.billed,
        cost_source="estimate" if money.estimated_only else "api",
        attempts=0,
        task_uuid=None,
        outputs=[],
        sha256=[],
        error=None,
        cost_mismatch=False,
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
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
