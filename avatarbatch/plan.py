"""Planning: what each job needs and what it will cost. Pure functions, no I/O.

A job's identity is its id plus a `spec_hash` over everything that shapes the paid request
(model, prompt, every parameter, and the content hash of each local input). Comparing that
hash with the state file's tells new, changed, done and failed jobs apart; vars and output
file names are left out, because renaming a file should never pay for a video again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from json import encoder as json_encoder
from operator import attrgetter
from typing import Any

from pydantic import BaseModel

from avatarbatch.jsonlines import json_with_item_lines
from avatarbatch.manifest.document import Job
from avatarbatch.manifest.fields import JobFields
from avatarbatch.manifest.media import MediaInfo, MediaRef
from avatarbatch.money import MONEY_PLACES as MONEY_PLACES  # re-exported: its old home
from avatarbatch.statuses import JobStatus


class PlanStatus(StrEnum):
    NEW = "new"  #: not in the state file: will be run
    CHANGED = "changed"  #: in the state file with another spec hash: will be run again
    DONE = "done"  #: finished with this very spec: skipped
    FAILED = "failed"  #: failed with this spec: skipped unless retried
    UNFINISHED = "unfinished"  #: started by an earlier run: the next run picks it up
    #: done, but its video is missing or changed on disk: the next run fetches it again from
    #: its result URL, which costs nothing (so it is not in `to_run`)
    REFETCH = "refetch"


class StoredMark(StrEnum):
    """A StoredJob status that is no state status: what the output folder says of a job."""

    DAMAGED = "damaged"  #: done in the state file, its video not as downloaded


RUNS = frozenset({PlanStatus.NEW, PlanStatus.CHANGED, PlanStatus.UNFINISHED})
DAMAGED = StoredMark.DAMAGED
#: Stored statuses a plan takes as they are; any other stored status is unfinished work.
SETTLED = {JobStatus.DONE: PlanStatus.DONE, JobStatus.FAILED: PlanStatus.FAILED}
#: The JobFields spec_hash covers: all but names (id, vars) and the media text, which it
#: covers by identity instead
HASHED = tuple(f for f in JobFields.model_fields if f not in {"id", "vars", "portrait", "audio"})
SECONDS_PLACES = 3  #: decimals of audio seconds written: Runware bills whole milliseconds


@dataclass(frozen=True, slots=True)
class StoredJob:
    """What the state file knows about a job, as far as planning needs it."""

    spec_hash: str
    status: JobStatus | StoredMark  #: its status in the state file, or DAMAGED


@dataclass(frozen=True, slots=True)
class PlannedJob:
    job: Job
    status: PlanStatus
    spec_hash: str
    audio_seconds: float | None  #: None when the audio is remote and unmeasured
    estimated_cost: Decimal | None


@dataclass
class Totals:
    """Jobs, audio and money summed over a group of jobs: a plan's or a report's, overall, per
    model, per var value or per status.

    Sums are floats: each job's own estimate is exact (a Decimal in `PlannedJob`), and every
    total is shown or written rounded to MONEY_PLACES, where float sums of such figures agree
    with exact ones; a Decimal per figure would slow the reports of a big batch.
    """

    jobs: int = 0
    audio_seconds: float = 0.0
    estimated_cost: float = 0.0
    actual_cost: float = 0.0  #: what the provider billed (reports only)
    earlier_cost: float = 0.0  #: the part of actual_cost billed for superseded attempts
    unknown_cost_jobs: int = 0  #: jobs without an estimate (audio of unknown length)

    def add(
        self,
        *,
        audio_seconds: float | None,
        estimated_cost: Decimal | float | None,
        actual_cost: float | None = None,
        earlier_cost: float = 0.0,
        jobs: int = 1,
    ) -> None:
        """Count one job (`jobs=0` for a row whose cost counts but which is no job)."""
        self.jobs += jobs
        if estimated_cost is None:
            self.unknown_cost_jobs += 1
        else:
            self.estimated_cost += float(estimated_cost)
        self.audio_seconds += audio_seconds or 0.0
        self.actual_cost += actual_cost or 0.0
        self.earlier_cost += earlier_cost

    def merge(self, other: Totals) -> None:
        """Add another group's sums to this one's."""
        self.jobs += other.jobs
        self.audio_seconds += other.audio_seconds
        self.estimated_cost += other.estimated_cost
        self.actual_cost += other.actual_cost
        self.earlier_cost += other.earlier_cost
        self.unknown_cost_jobs += other.unknown_cost_jobs

    def estimate_dict(self) -> dict[str, Any]:
        """A plan's JSON shape: what the jobs will cost."""
        return {
            "jobs": self.jobs,
            "audio_seconds": round(self.audio_seconds, SECONDS_PLACES),
            "estimated_cost": round(self.estimated_cost, MONEY_PLACES),
            "unknown_cost_jobs": self.unknown_cost_jobs,
        }

    def rounded(self) -> dict[str, Any]:
        """A report's JSON shape: what the jobs were estimated to cost and did cost."""
        return {
            "jobs": self.jobs,
            "audio_seconds": round(self.audio_seconds, SECONDS_PLACES),
            "estimated_cost": round(self.estimated_cost, MONEY_PLACES),
            "actual_cost": round(self.actual_cost, MONEY_PLACES),
            "earlier_cost": round(self.earlier_cost, MONEY_PLACES),
        }


@dataclass
class Plan:
    jobs: list[PlannedJob]
    totals: Totals = field(default_factory=Totals)
    to_run: Totals = field(default_factory=Totals)  #: only the jobs a run would submit
    by_model: dict[str, Totals] = field(default_factory=dict)
    by_var: dict[str, dict[str, Totals]] = field(default_factory=dict)

    def json_text(self, **fields: Any) -> Iterator[str]:
        """`avatarbatch plan --json` (and `fields`, e.g. the exit code), one job per line."""
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
            **self.totals.estimate_dict(),
            "to_run": self.to_run.estimate_dict(),
            "by_model": {name: t.estimate_dict() for name, t in self.by_model.items()},
            "by_var": {
                var: {value: t.estimate_dict() for value, t in values.items()}
                for var, values in self.by_var.items()
            },
        }


def spec_hash(job: Job, media: Mapping[str, MediaInfo]) -> str:
    """Hash of the fully resolved request; local inputs count by content, remote ones by URL."""

    def input_identity(ref: MediaRef) -> str:
        info = media.get(ref.value)
        return f"sha256:{info.sha256}" if info else f"{ref.kind.value}:{ref.value}"

    # Its keys and values must stay stable: a changed hash would pay for every done video again.
    # The text is json.dumps(spec, sort_keys=True, separators=(",", ":")): keys are put in
    # sorted order here, and nested data sorted by _as_data, so one encoder made once does it.
    spec = dict(zip(_KEYS, _SPEC_VALUES(job), strict=True))
    spec["portrait"] = input_identity(job.portrait)  # in place: the keys keep their order
    spec["audio"] = input_identity(job.audio)
    return hashlib.sha256(_encode(spec).encode()).hexdigest()


def _as_data(value: object) -> Any:
    """A nested model (Safety) in the spec, as the JSON data it dumps to, keys sorted."""
    if isinstance(value, BaseModel):
        return dict(sorted(value.model_dump().items()))
    raise TypeError(f"{type(value).__name__} has no JSON form")


_KEYS = tuple(sorted((*HASHED, "portrait", "audio")))  #: a spec's keys, in the hashed order
_SPEC_VALUES = attrgetter(*_KEYS)
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_as_data)
# The C encoder json.dumps makes on each call, made once (a spec cannot contain itself, so it
# needs no check for cycles): a quarter of the time of hashing a big plan.
_MAKE_C_ENCODER: Any = getattr(json_encoder, "c_make_encoder", None)
_C_ENCODE: Any = _MAKE_C_ENCODER and _MAKE_C_ENCODER(
    None, _as_data, json_encoder.encode_basestring_ascii, None, ":", ",", False, False, True
)


def _encode(spec: dict[str, Any]) -> str:
    """`_ENCODER.encode(spec)`, through the reused C encoder when there is one."""
    if _C_ENCODE:
        return "".join(_C_ENCODE(spec, 0))
    return _ENCODER.encode(spec)


def plan_status(stored: StoredJob | None, digest: str) -> PlanStatus:
    if stored is None:
        return PlanStatus.NEW
    if stored.spec_hash != digest:
        return PlanStatus.CHANGED
    if stored.status is StoredMark.DAMAGED:
        return PlanStatus.REFETCH
    return SETTLED.get(stored.status, PlanStatus.UNFINISHED)


#: Asks the state file about many jobs at once: given each job's (id, spec hash), the plan
#: status of those that are not DONE (`StateStore.plan_statuses`); the rest are done.
StatusLookup = Callable[[list[tuple[str, str]]], Mapping[str, PlanStatus]]


def plan_job(job: Job, media: Mapping[str, MediaInfo], stored: StoredJob | None) -> PlannedJob:
    digest = spec_hash(job, media)
    return _planned(job, media, digest, plan_status(stored, digest), {})


def _planned(
    job: Job,
    media: Mapping[str, MediaInfo],
    digest: str,
    status: PlanStatus,
    costs: dict[tuple[str, float, int], Decimal],
) -> PlannedJob:
    audio = media.get(job.audio.value)
    seconds = audio.seconds if audio else None
    cost = None
    if seconds is not None:
        # Per (model, seconds, results): a batch reuses a few voice files for many rows.
        key = (job.model, seconds, job.number_results)
        cost = costs.get(key)
        if cost is None:
            cost = costs[key] = job.catalog_model.cost(seconds, job.number_results)
    return PlannedJob(job, status, digest, seconds, cost)


def build_plan(
    jobs: Iterable[Job],
    media: Mapping[str, MediaInfo],
    stored: Mapping[str, StoredJob] | StatusLookup | None = None,
) -> Plan:
    """Each job's status and estimate, with totals overall, per model and per var value.

    `stored`: what the state file knows of each job by id, or a lookup that asks it about
    every job at once (StatusLookup), which a big rerun needs: its jobs are mostly done.
    """
    hashed = [(job, spec_hash(job, media)) for job in jobs]
    if callable(stored):
        found = stored([(job.id, digest) for job, digest in hashed])
        statuses = [found.get(job.id, PlanStatus.DONE) for job, _ in hashed]
    else:
        known = stored or {}
        statuses = [plan_status(known.get(job.id), digest) for job, digest in hashed]
    costs: dict[tuple[str, float, int], Decimal] = {}
    plan = Plan(
        [
            _planned(job, media, digest, status, costs)
            for (job, digest), status in zip(hashed, statuses, strict=True)
        ]
    )
    del hashed, statuses
    # Jobs are summed per bucket of the groups they count in, then each bucket into its groups:
    # a big batch has few such buckets, and a Totals.add per group per job was most of the time.
    buckets: dict[tuple[str, bool, tuple[tuple[str, str], ...]], Totals] = {}
    for planned in plan.jobs:
        job = planned.job
        key = (job.model, planned.status in RUNS, tuple(job.vars.items()))
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = Totals()
        cost = planned.estimated_cost
        bucket.add(audio_seconds=planned.audio_seconds, estimated_cost=cost)
    for (model, runs, var_values), bucket in buckets.items():
        groups = [plan.totals, plan.by_model.setdefault(model, Totals())]
        if runs:
            groups.append(plan.to_run)
        groups += [
            plan.by_var.setdefault(var, {}).setdefault(value, Totals()) for var, value in var_values
        ]
        for group in groups:
            group.merge(bucket)
    return plan
