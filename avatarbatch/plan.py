"""Planning: what each job needs and what it will cost. Pure functions, no I/O.

A job's identity is its id plus a `spec_hash` over everything that shapes the paid request
(model, prompt, every parameter, and the content hash of each local input). Comparing that
hash with the state file's tells new, changed, done and failed jobs apart; vars and output
file names are left out, because renaming a file should never pay for a video again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from avatarbatch.jsonlines import json_with_item_lines
from avatarbatch.manifest.document import Job
from avatarbatch.manifest.media import MediaInfo, MediaRef


class PlanStatus(StrEnum):
    NEW = "new"  #: not in the state file: will be run
    CHANGED = "changed"  #: in the state file with another spec hash: will be run again
    DONE = "done"  #: finished with this very spec: skipped
    FAILED = "failed"  #: failed with this spec: skipped unless retried
    UNFINISHED = "unfinished"  #: started by an earlier run: the next run picks it up
    #: done, but its video is missing or changed on disk: the next run fetches it again from
    #: its result URL, which costs nothing (so it is not in `to_run`)
    REFETCH = "refetch"


RUNS = frozenset({PlanStatus.NEW, PlanStatus.CHANGED, PlanStatus.UNFINISHED})
DAMAGED = "damaged"  #: a StoredJob status: done in the state file, its video not as downloaded


@dataclass(frozen=True, slots=True)
class StoredJob:
    """What the state file knows about a job, as far as planning needs it."""

    spec_hash: str
    status: str


@dataclass(frozen=True, slots=True)
class PlannedJob:
    job: Job
    status: PlanStatus
    spec_hash: str
    audio_seconds: float | None  #: None when the audio is remote and unmeasured
    estimated_cost: Decimal | None


@dataclass
class Totals:
    jobs: int = 0
    audio_seconds: float = 0.0
    estimated_cost: Decimal = Decimal(0)
    unknown_cost_jobs: int = 0  #: jobs whose audio length is unknown, not in the sums

    def add(self, planned: PlannedJob) -> None:
        self.jobs += 1
        if planned.estimated_cost is None or planned.audio_seconds is None:
            self.unknown_cost_jobs += 1
        else:
            self.audio_seconds += planned.audio_seconds
            self.estimated_cost += planned.estimated_cost

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "audio_seconds": round(self.audio_seconds, 3),
            "estimated_cost": float(self.estimated_cost),
            "unknown_cost_jobs": self.unknown_cost_jobs,
        }


@dataclass
class Plan:
    jobs: list[PlannedJob]
    totals: Totals = field(default_factory=Totals)
    to_run: Totals = field(default_factory=Totals)  #: only the jobs a run would submit
    by_model: dict[str, Totals] = field(default_factory=dict)
    by_var: dict[str, dict[str, Totals]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `avatarbatch plan --json`."""
        return {"jobs": list(self.job_dicts()), "totals": self.totals_dict()}

    def json_text(self, **fields: Any) -> Iterator[str]:
        """`as_dict()` (and `fields`, e.g. the exit code) as JSON text, one job per line."""
        return json_with_item_lines(
            {"jobs": None, "totals": self.totals_dict(), **fields}, "jobs", self.job_dicts()
        )

    def job_dicts(self) -> Iterator[dict[str, Any]]:
        for p in self.jobs:
            yield {
                "id": p.job.id,
                "status": p.status.value,
                "model": p.job.model,
                "audio_seconds": p.audio_seconds,
                "estimated_cost": None if p.estimated_cost is None else float(p.estimated_cost),
                "number_results": p.job.number_results,
                "vars": p.job.vars,
            }

    def totals_dict(self) -> dict[str, Any]:
        return {
            **self.totals.as_dict(),
            "to_run": self.to_run.as_dict(),
            "by_model": {name: t.as_dict() for name, t in self.by_model.items()},
            "by_var": {
                var: {value: t.as_dict() for value, t in values.items()}
                for var, values in self.by_var.items()
            },
        }


def spec_hash(job: Job, media: Mapping[str, MediaInfo]) -> str:
    """Hash of the fully resolved request; local inputs count by content, remote ones by URL."""

    def input_identity(ref: MediaRef) -> str:
        info = media.get(ref.value)
        return f"sha256:{info.sha256}" if info else f"{ref.kind.value}:{ref.value}"

    spec = {
        "model": job.model,
        "prompt": job.prompt,
        "portrait": input_identity(job.portrait),
        "audio": input_identity(job.audio),
        "output_format": job.output_format,
        "output_quality": job.output_quality,
        "number_results": job.number_results,
        "ttl": job.ttl,
        "safety": job.safety.model_dump() if job.safety else None,
        "webhook_url": job.webhook_url,
        "upload_endpoint": job.upload_endpoint,
        "include_cost": job.include_cost,
    }
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def plan_status(stored: StoredJob | None, digest: str) -> PlanStatus:
    if stored is None:
        return PlanStatus.NEW
    if stored.spec_hash != digest:
        return PlanStatus.CHANGED
    if stored.status == DAMAGED:
        return PlanStatus.REFETCH
    if stored.status == "done":
        return PlanStatus.DONE
    if stored.status == "failed":
        return PlanStatus.FAILED
    return PlanStatus.UNFINISHED


def plan_job(job: Job, media: Mapping[str, MediaInfo], stored: StoredJob | None) -> PlannedJob:
    digest = spec_hash(job, media)
    audio = media.get(job.audio.value)
    seconds = audio.seconds if audio else None
    cost = None if seconds is None else job.catalog_model.cost(seconds, job.number_results)
    return PlannedJob(job, plan_status(stored, digest), digest, seconds, cost)


def build_plan(
    jobs: Iterable[Job],
    media: Mapping[str, MediaInfo],
    stored: Mapping[str, StoredJob] | None = None,
) -> Plan:
    """Each job's status and estimate, with totals overall, per model and per var value."""
    stored = stored or {}
    plan = Plan([plan_job(job, media, stored.get(job.id)) for job in jobs])
    for planned in plan.jobs:
        plan.totals.add(planned)
        if planned.status in RUNS:
            plan.to_run.add(planned)
        plan.by_model.setdefault(planned.job.model, Totals()).add(planned)
        for var, value in planned.job.vars.items():
            plan.by_var.setdefault(var, {}).setdefault(value, Totals()).add(planned)
    return plan
