"""Planning is pure: statuses from stored spec hashes, estimates and totals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from avatarbatch.manifest.preflight import Preflight, preflight
from avatarbatch.plan import DAMAGED, PlanStatus, StoredJob, build_plan, spec_hash
from avatarbatch.statuses import JobStatus

Write = Callable[[str, str | bytes], Path]


@pytest.fixture
def checked(write: Write, media: Path) -> Preflight:
    path = write(
        "m.yaml",
        """
version: 1
defaults: {portrait: media/face.png}
jobs:
  - {id: en-std, audio: media/en.wav, vars: {lang: en}}
  - {id: es-std, audio: media/es.wav, vars: {lang: es}}
  - {id: es-pro, audio: media/es.wav, model: pro, number_results: 2, vars: {lang: es}}
""",
    )
    result = preflight(path)
    assert result.ok
    return result


def test_without_state_every_job_is_new_and_estimated(checked: Preflight) -> None:
    assert checked.manifest is not None
    plan = build_plan(checked.manifest.jobs, checked.media)
    assert [p.status for p in plan.jobs] == [PlanStatus.NEW] * 3
    assert [p.estimated_cost for p in plan.jobs] == [
        Decimal("0.132"),  # 3 s x 0.044
        Decimal("0.176"),  # 4 s x 0.044
        Decimal("0.696"),  # 4 s x 0.087 x 2 results
    ]
    assert plan.totals.estimated_cost == pytest.approx(1.004)
    assert plan.totals.audio_seconds == pytest.approx(11.0)


def test_totals_by_model_and_by_var(checked: Preflight) -> None:
    assert checked.manifest is not None
    totals = build_plan(checked.manifest.jobs, checked.media).totals_dict()
    assert totals["by_model"]["klingai:avatar@2.0-pro"] == {
        "jobs": 1,
        "audio_seconds": 4.0,
        "estimated_cost": 0.696,
        "unknown_cost_jobs": 0,
    }
    assert totals["by_var"]["lang"]["es"]["jobs"] == 2
    assert totals["by_var"]["lang"]["es"]["estimated_cost"] == pytest.approx(0.872)
    assert totals["jobs"] == 3 and totals["estimated_cost"] == pytest.approx(1.004)


def test_statuses_come_from_the_stored_spec_hash(checked: Preflight) -> None:
    assert checked.manifest is not None
    jobs = checked.manifest.jobs
    stored = {
        "en-std": StoredJob(spec_hash(jobs[0], checked.media), JobStatus.DONE),
        "es-std": StoredJob("something-else", JobStatus.DONE),
        "es-pro": StoredJob(spec_hash(jobs[2], checked.media), JobStatus.FAILED),
    }
    plan = build_plan(jobs, checked.media, stored)
    assert [p.status for p in plan.jobs] == [PlanStatus.DONE, PlanStatus.CHANGED, PlanStatus.FAILED]
    assert plan.to_run.jobs == 1 and plan.to_run.estimated_cost == pytest.approx(0.176)


def test_unfinished_job_is_picked_up(checked: Preflight) -> None:
    assert checked.manifest is not None
    job = checked.manifest.jobs[0]
    plan = build_plan(
        [job],
        checked.media,
        {job.id: StoredJob(spec_hash(job, checked.media), JobStatus.PROCESSING)},
    )
    assert plan.jobs[0].status is PlanStatus.UNFINISHED


def test_a_done_job_whose_video_is_damaged_is_fetched_again_at_no_cost(
    checked: Preflight,
) -> None:
    assert checked.manifest is not None
    job = checked.manifest.jobs[0]
    digest = spec_hash(job, checked.media)
    plan = build_plan([job], checked.media, {job.id: StoredJob(digest, DAMAGED)})
    assert plan.jobs[0].status is PlanStatus.REFETCH
    assert plan.to_run.jobs == 0
    changed = build_plan([job], checked.media, {job.id: StoredJob("other", DAMAGED)})
    assert changed.jobs[0].status is PlanStatus.CHANGED


def test_spec_hash_follows_content_not_names(checked: Preflight) -> None:
    assert checked.manifest is not None
    job = checked.manifest.jobs[0]
    digest = spec_hash(job, checked.media)
    assert (
        spec_hash(replace(job, vars={"lang": "xx"}, outputs=("other.mp4",)), checked.media)
        == digest
    )
    assert spec_hash(replace(job, prompt="new prompt"), checked.media) != digest
    audio = checked.media[job.audio.value]
    changed_media = {**checked.media, job.audio.value: replace(audio, sha256="0" * 64)}
    assert spec_hash(job, changed_media) != digest


def test_remote_audio_has_no_estimate(write: Write, media: Path) -> None:
    result = preflight(
        write(
            "m.yaml",
            "version: 1\njobs:\n  - {portrait: media/face.png, audio: 'https://x.org/a.mp3'}\n",
        )
    )
    assert result.manifest is not None
    plan = build_plan(result.manifest.jobs, result.media)
    assert plan.jobs[0].estimated_cost is None
    assert plan.totals.unknown_cost_jobs == 1 and plan.totals.estimated_cost == 0
