"""What every report is made from: the state file and the manifest, reduced to plain rows.

All outputs (CSV, JSON, Markdown, the HTML gallery, failures.yaml) are views of one
`ReportData`, so their totals cannot disagree with each other or with the state file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any

from avatarbatch import catalog
from avatarbatch.manifest import Job
from avatarbatch.state import JobOverview, StateStore

MISMATCH_RATIO = 0.10  #: an actual cost this far from its estimate is pointed out


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
    actual_cost: float | None
    attempts: int
    task_uuid: str | None
    outputs: list[str]  #: paths relative to the output folder, e.g. videos/host-en.mp4
    sha256: list[str]
    error: str | None
    cost_mismatch: bool  #: actual and estimate differ by more than MISMATCH_RATIO

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

    def add(self, job: JobReport) -> None:
        self.jobs += 1
        self.audio_seconds += job.audio_seconds or 0.0
        self.estimated_cost += job.estimated_cost or 0.0
        self.actual_cost += job.actual_cost or 0.0

    def rounded(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "audio_seconds": round(self.audio_seconds, 3),
            "estimated_cost": round(self.estimated_cost, 5),
            "actual_cost": round(self.actual_cost, 5),
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

    def tally(self) -> None:
        """Fill counts and totals (overall, by model, by var) from `jobs`."""
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
        absolute = os.path.normpath(os.path.join(self._cwd, stored))  # noqa: PTH118 - as above
        for prefix in self._prefixes:
            if absolute.startswith(prefix):
                inside = absolute[len(prefix) :]
                return inside if os.sep == "/" else PurePath(inside).as_posix()
        try:
            return Path(stored).resolve().relative_to(self._base.resolve()).as_posix()
        except ValueError:
            return Path(stored).as_posix()


def job_report(job: Job, record: JobOverview | None, relative: RelativeTo) -> JobReport:
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
    outputs = [relative(o["path"]) for o in files]
    estimate, actual = record.estimated_cost, record.actual_cost
    mismatch = bool(
        estimate and actual is not None and abs(actual - estimate) > MISMATCH_RATIO * estimate
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
        attempts=record.attempts,
        task_uuid=record.task_uuid,
        outputs=outputs,
        sha256=[o["sha256"] for o in files],
        error=record.error_message,
        cost_mismatch=mismatch,
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
    relative = RelativeTo(output_dir)
    rows = [job_report(job, records.get(job.id), relative) for job in jobs]
    var_names = sorted({name for job in jobs for name in job.vars})
    data = ReportData(
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        output_dir=output_dir,
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        jobs=rows,
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
