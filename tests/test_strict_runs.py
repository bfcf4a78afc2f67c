"""Whole runs against the strict sandbox profile: the narrowest reading of Runware's docs.

One getResponse per POST (a batch is refused with an error naming no task), 202
acknowledgements, a registration lag during which an accepted task answers "not found" or
nothing at all, `completed` results, no videoURL when an uploadEndpoint is set, and upload
UUIDs never reused. Every promise of a default-profile run must hold here too: each job done
and paid once, crashes resumed, the budget kept, every cent in the report.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile import Exchange, serving
from receiver import Receiver
from starlette.responses import JSONResponse, Response
from test_run import CHECKPOINTS, CrashAt, SimulatedCrash, billed_once_per_job, options, run

from avatarbatch.config import PollTiming
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.store import JobStatus, StateStore

# The strict profile, with a lag short enough for tests (the profile's own is 2 s).
STRICT = SandboxConfig(
    profile="strict",
    registration_lag=0.3,
    latency=0,
    fixed_latency=0.05,
    render="stub",
    workers=8,
    retry_after=0,
)
QUICK_DOUBT = PollTiming(initial=0.05, min_interval=0.05, max_interval=0.3, not_found_grace=0.5)


@pytest.fixture
def strict() -> Iterator[RunningSandbox]:
    with running_sandbox(STRICT) as server:
        yield server


def report_total(out: Path) -> float:
    with (out / "cost_report.csv").open(newline="") as handle:
        return float(next(r for r in csv.DictReader(handle) if r["id"] == "TOTAL")["actual_cost"])


def test_the_demo_completes_once_per_job_against_the_strict_profile(
    strict: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    summary = run(demo_copy / "demo.yaml", options(strict, tmp_path))
    assert (summary.exit_code, summary.done, summary.submitted) == (0, 7, 7), summary
    billed_once_per_job(strict, 7)
    assert report_total(tmp_path / "out") == pytest.approx(strict.ledger()["total_cost"], abs=0.005)
    # Polls went one task per POST once the batch was refused.
    assert strict.stats()["posts_with"]["getResponse"] >= 7


@pytest.mark.parametrize("point", ["submit:sent", "poll:done", "download:before"])
def test_a_crash_under_the_strict_profile_loses_nothing_and_pays_once(
    strict: RunningSandbox, demo_copy: Path, tmp_path: Path, point: str
) -> None:
    assert point in CHECKPOINTS
    manifest = demo_copy / "demo.yaml"
    with pytest.raises(SimulatedCrash):
        run(manifest, options(strict, tmp_path), hooks=CrashAt(point, after=3))
    resumed = run(manifest, options(strict, tmp_path))
    assert (resumed.exit_code, resumed.done) == (0, 7), resumed
    billed_once_per_job(strict, 7)


def test_the_budget_holds_under_the_strict_profile(
    strict: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    summary = run(demo_copy / "demo.yaml", options(strict, tmp_path, max_cost=0.9))
    assert summary.exit_code == 3, summary
    assert 0 < summary.cost_this_run <= 0.9
    assert strict.ledger()["total_cost"] == pytest.approx(summary.cost_actual, abs=0.005)


def test_a_video_delivered_to_the_upload_endpoint_is_done_without_a_download(
    strict: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    target = Receiver()
    try:
        manifest = tmp_path / "m.yaml"
        manifest.write_text(
            "version: 1\njobs:\n"
            "  - {id: a, portrait: media/face.png, audio: media/en.wav, "
            f"upload_endpoint: '{target.url}/bucket/a.mp4?X-Signature=secret-part'}}\n"
        )
        summary = run(manifest, options(strict, tmp_path))
        assert (summary.exit_code, summary.done) == (0, 1), summary
        ((path, body),) = target.received("PUT")
    finally:
        target.close()
    assert path.startswith("/bucket/a.mp4") and len(body) > 0
    out = tmp_path / "out"
    assert not list((out / "videos").iterdir())  # nothing to download: it went to the bucket
    with (out / "cost_report.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["id"] == "a")
    assert row["outputs"] == f"delivered to {target.url}/bucket/a.mp4"
    assert "secret-part" not in (out / "report.json").read_text()


def unknown_for(uuids: set[str]) -> Any:
    """A lie: getResponse answers as if the API did not know these task UUIDs."""

    def lie(exchange: Exchange) -> Response | None:
        asked = {t["taskUUID"] for t in exchange.tasks} & uuids
        if not asked:
            return None
        data = [i for i in exchange.answer.get("data", []) if i.get("taskUUID") not in asked]
        errors = [
            {"code": "taskFailedOrNotFound", "message": "No such task.", "taskUUID": uuid}
            for uuid in asked
        ]
        return JSONResponse({"data": data, "errors": errors}, status_code=400)

    return lie


@pytest.mark.parametrize("results", [1, 2])  # one not-found error for two results, too
def test_not_found_for_an_accepted_task_is_a_doubt_and_only_a_second_one_fails_it(
    media: Path, tmp_path: Path, results: int
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav, "
        f"number_results: {results}}}\n"
    )
    lost: set[str] = set()
    with serving(STRICT.model_copy(update={"registration_lag": 0.0})) as server:
        server.api.lie("getResponse", unknown_for(lost))

        def remember(exchange: Exchange) -> Response | None:
            lost.update(t["taskUUID"] for t in exchange.tasks)
            return None

        server.api.lie("videoInference", remember)
        summary = run(manifest, options(server, tmp_path, poll=QUICK_DOUBT))
        ledger = server.api.engine.ledger()
    # The same UUID went again (a conflict: it existed), stayed unknown, and only then failed.
    assert (summary.exit_code, summary.failed) == (1, 1), summary
    assert ledger["submissions"] == 1 and ledger["conflicts"] == 1, ledger
    with StateStore.open(tmp_path / "out" / "state.sqlite") as store:
        (job,) = store.jobs().values()
    assert job.status is JobStatus.FAILED and job.error_code == "taskNotFound"


def test_a_task_unknown_for_a_while_is_waited_for_not_failed(media: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    )
    hidden: set[str] = set()
    with serving(STRICT.model_copy(update={"registration_lag": 0.0})) as server:
        polls = {"n": 0}
        lie = unknown_for(hidden)

        def unknown_three_times(exchange: Exchange) -> Response | None:
            hidden.update(t["taskUUID"] for t in exchange.tasks)
            polls["n"] += 1
            return lie(exchange) if polls["n"] <= 3 else None

        server.api.lie("getResponse", unknown_three_times)
        timing = PollTiming(initial=0.05, min_interval=0.05, max_interval=0.3, not_found_grace=5)
        summary = run(manifest, options(server, tmp_path, poll=timing))
        ledger = server.api.engine.ledger()
    assert (summary.exit_code, summary.done) == (0, 1), summary
    assert ledger["submissions"] == 1 and ledger["conflicts"] == 0


def test_a_result_without_a_url_and_no_upload_endpoint_is_never_called_done(
    media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    )

    def no_url(exchange: Exchange) -> Response | None:
        answer = exchange.answer
        for item in answer.get("data", []):
            item.pop("videoURL", None)
        return JSONResponse(answer, exchange.status)

    with serving(STRICT.model_copy(update={"registration_lag": 0.0})) as server:
        server.api.lie("getResponse", no_url)
        summary = run(manifest, options(server, tmp_path))
        ledger = server.api.engine.ledger()
    assert (summary.exit_code, summary.done, summary.failed) == (1, 0, 0), summary
    with StateStore.open(tmp_path / "out" / "state.sqlite") as store:
        (job,) = store.jobs().values()
    assert job.status is JobStatus.DOWNLOADING  # paid: left for the next run, never failed
    assert ledger["submissions"] == 1
