"""The engine against a loopback sandbox: resumable, rate-limited, exactly-once runs."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from avatarbatch import catalog
from avatarbatch.config import PollTiming, RunSettings
from avatarbatch.engine import context
from avatarbatch.engine.outcome import Checkpoint, Hooks, Progress
from avatarbatch.engine.runner import Runner
from avatarbatch.engine.session import run_batch
from avatarbatch.engine.summary import RunSummary
from avatarbatch.errors import (
    AuthError,
    AvatarBatchError,
    ConflictError,
    CreditError,
    ExitCode,
    RejectedError,
    TransientError,
)
from avatarbatch.runware.client import ClientSettings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.lock import StateLocked, state_lock
from avatarbatch.state.store import JobStatus, StateStore

QUICK_POLL = PollTiming(initial=0.05, min_interval=0.05, max_interval=0.3)
QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(QUICK) as server:
        yield server


def options(sandbox: RunningSandbox, tmp_path: Path, **overrides: Any) -> RunSettings:
    client = ClientSettings(
        api_url=sandbox.api_url,
        api_key=SecretStr("test-key"),
        backoff_initial=0.01,
        backoff_max=0.05,
        max_attempts=overrides.pop("max_attempts", 6),
    )
    values: dict[str, Any] = {
        "client": client,
        "out": tmp_path / "out",
        "concurrency": 4,
        "rps": 200,
        "poll": QUICK_POLL,
        **overrides,
    }
    return RunSettings(**values)


def run(manifest: Path, settings: RunSettings, hooks: Hooks | None = None) -> RunSummary:
    return asyncio.run(run_batch(manifest, settings, hooks=hooks))


def billed_once_per_job(sandbox: RunningSandbox, jobs: int) -> None:
    ledger = sandbox.ledger()
    successes = [t for t in ledger["tasks"] if t["results"] > 0]
    assert len(successes) == jobs, ledger
    assert ledger["submissions"] == jobs, ledger


def test_demo_run_completes_and_a_rerun_makes_no_request(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    first = run(demo_copy / "demo.yaml", options(sandbox, tmp_path))
    assert (first.exit_code, first.done, first.submitted) == (0, 7, 7)
    videos = sorted(p.name for p in (tmp_path / "out" / "videos").iterdir())
    assert videos == sorted(f"host-{x}.mp4" for x in ("en", "es", "de", "fr", "it", "pt", "en-pro"))
    assert first.cost_actual == pytest.approx(sandbox.ledger()["total_cost"])
    before = sandbox.stats()["requests"]
    second = run(demo_copy / "demo.yaml", options(sandbox, tmp_path))
    assert (second.exit_code, second.submitted, second.skipped) == (0, 0, 7)
    assert sandbox.stats()["requests"] == before  # not one request
    billed_once_per_job(sandbox, 7)


def test_a_shared_portrait_is_uploaded_once_and_submissions_share_posts(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    run(demo_copy / "demo.yaml", options(sandbox, tmp_path))
    requests = sandbox.stats()["requests"]
    assert requests["imageUpload"] == 1  # one presenter for seven jobs
    assert requests["mediaStorage"] == 6  # six distinct voices
    # Jobs whose slots free up together share a submit POST (3 POSTs in every trial run).
    assert sandbox.stats()["posts_with"]["videoInference"] < 7


CHECKPOINTS = [
    "upload:before",
    "upload:after",
    "submit:before",
    "submit:sent",
    "submit:after",
    "poll:done",
    "download:before",
    "download:renamed",
    "download:after",
]


def test_every_write_ahead_point_is_crashed_at() -> None:
    assert [point.value for point in Checkpoint] == CHECKPOINTS


class SimulatedCrash(BaseException):
    """Not an Exception: nothing in the engine may catch it, like a SIGKILL."""


class CrashAt(Hooks):
    def __init__(self, point: str, after: int = 1) -> None:
        self.point = point
        self.remaining = after

    async def checkpoint(self, point: str, job_id: str) -> None:
        if point == self.point:
            self.remaining -= 1
            if self.remaining == 0:
                raise SimulatedCrash(f"{point} of {job_id}")


@pytest.mark.parametrize("point", CHECKPOINTS)
def test_a_crash_at_any_write_ahead_point_loses_nothing_and_pays_once(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path, point: str
) -> None:
    manifest = demo_copy / "demo.yaml"
    with pytest.raises(SimulatedCrash):
        run(manifest, options(sandbox, tmp_path), hooks=CrashAt(point, after=3))
    resumed = run(manifest, options(sandbox, tmp_path))
    assert (resumed.exit_code, resumed.done) == (0, 7), resumed
    billed_once_per_job(sandbox, 7)
    for job in StateStore.open(tmp_path / "out" / "state.sqlite").jobs().values():
        assert job.status is JobStatus.DONE and job.attempts == 1
        assert all((tmp_path / "out" / o["path"]).exists() for o in job.outputs)
    assert not list((tmp_path / "out" / "videos").glob(".*.part"))


def test_progress_shows_the_run_as_it_goes(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    runners: list[Runner] = []
    seen: list[Progress] = []

    class Watch(Hooks):
        async def checkpoint(self, point: Checkpoint, job_id: str) -> None:
            if point is Checkpoint.DOWNLOAD_AFTER:
                seen.append(runners[0].progress())

    manifest = demo_copy / "demo.yaml"
    summary = asyncio.run(
        run_batch(manifest, options(sandbox, tmp_path), hooks=Watch(), on_runner=runners.append)
    )
    assert summary.exit_code == 0
    # Moves that fall due together share a commit (state/writer.py), so two jobs may reach
    # `done` in one step; the count never goes back, and each job sees its own move at least.
    done = [p.counts["done"] for p in seen]
    assert done == sorted(done) and done[-1] == 7
    assert all(count >= jobs_seen for jobs_seen, count in enumerate(done, start=1))
    assert {p.jobs for p in seen} == {7}
    assert seen[-1].spent == pytest.approx(summary.cost_this_run)
    assert seen[-1].estimated_total == pytest.approx(summary.cost_estimated)


def test_concurrency_never_exceeds_the_limit(demo_copy: Path, tmp_path: Path) -> None:
    slow = QUICK.model_copy(update={"fixed_latency": 0.3, "workers": 16})
    with running_sandbox(slow) as sandbox:
        summary = run(demo_copy / "demo.yaml", options(sandbox, tmp_path, concurrency=2))
        assert summary.exit_code == 0
        assert sandbox.stats()["peak_in_flight"] == 2


def test_requests_stay_within_rps(sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path) -> None:
    summary = run(demo_copy / "demo.yaml", options(sandbox, tmp_path, rps=8))
    assert summary.exit_code == 0
    stamps = sandbox.post_times()
    # Timestamps are taken when the sandbox (a thread of this process, so sharing the GIL)
    # handles a request, up to ~0.25 s after it was sent. A client that never sends more
    # than 8 in any second never has more than 8 handled in any 0.75 s, whatever that delay.
    assert max(sum(1 for t in stamps if s <= t < s + 0.75) for s in stamps) <= 8
    assert stamps[-1] - stamps[0] >= (len(stamps) - 8) / 8


def test_a_429_storm_slows_the_run_down_but_it_completes(
    demo_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Faults are drawn per task UUID; fixed UUIDs make the storm the same on every run, where
    # random ones left 3 jobs' ~12 requests all unhit about once in 15 runs.
    numbers = itertools.count()
    fixed = SimpleNamespace(uuid4=lambda: uuid.uuid5(uuid.NAMESPACE_URL, f"storm-{next(numbers)}"))
    monkeypatch.setattr(context, "uuidlib", fixed)
    stormy = QUICK.model_copy(update={"faults": FaultSpec.parse("http429=0.3"), "seed": 2})
    with running_sandbox(stormy) as sandbox:
        summary = run(demo_copy / "demo.yaml", options(sandbox, tmp_path, max_attempts=20, rps=20))
        assert summary.exit_code == 0, summary
        assert sandbox.stats()["faults"]["http429"] > 0
        billed_once_per_job(sandbox, 7)


def test_auth_failure_stops_the_run_with_exit_4_and_fails_no_job(
    demo_copy: Path, tmp_path: Path
) -> None:
    with running_sandbox(QUICK.model_copy(update={"api_key": "the-right-key"})) as sandbox:
        summary = run(demo_copy / "demo.yaml", options(sandbox, tmp_path))
    assert summary.exit_code == 4 and "invalidApiKey" in summary.message
    assert summary.failed == 0 and summary.pending == 7


def test_only_errors_no_job_could_escape_stop_the_run() -> None:
    stopping = {
        kind
        for kind in (AuthError, CreditError, TransientError, RejectedError, ConflictError)
        if kind("x").stops_run
    }
    assert stopping == {AuthError, CreditError}
    assert {AuthError.exit_code, CreditError.exit_code} == {ExitCode.AUTH}


def test_budget_stops_submitting_with_exit_3(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    summary = run(
        demo_copy / "demo.yaml", options(sandbox, tmp_path, max_cost=Decimal("0.80"), concurrency=1)
    )
    assert summary.exit_code == 3
    assert summary.done == 3 and summary.pending == 4  # 0.2414 + 0.2644 + 0.2598 fit under $0.80
    assert "4 jobs remain" in summary.message
    assert sandbox.ledger()["total_cost"] <= 0.80
    more = run(demo_copy / "demo.yaml", options(sandbox, tmp_path, max_cost=Decimal("5")))
    assert (more.exit_code, more.done) == (0, 7)
    billed_once_per_job(sandbox, 7)


def test_failed_generations_are_retried_then_reported(demo_copy: Path, tmp_path: Path) -> None:
    failing = QUICK.model_copy(update={"faults": FaultSpec.parse("task_error=1")})
    with running_sandbox(failing) as sandbox:
        summary = run(demo_copy / "example.csv", options(sandbox, tmp_path))
        ledger = sandbox.ledger()
    assert summary.exit_code == 1 and summary.failed == 3
    assert (
        ledger["submissions"] == 9 and ledger["total_cost"] == 0
    )  # 3 attempts per job, none billed
    store = StateStore.open(tmp_path / "out" / "state.sqlite")
    for job in store.jobs().values():
        assert job.attempts == 3 and job.error_code in ("timeoutProvider", "providerError")
        assert "Runware" in (job.error_message or "")


def test_retry_failed_runs_only_the_failed_jobs(demo_copy: Path, tmp_path: Path) -> None:
    failing = QUICK.model_copy(update={"faults": FaultSpec.parse("task_error=1")})
    with running_sandbox(failing) as sandbox:
        assert run(demo_copy / "example.csv", options(sandbox, tmp_path)).failed == 3
    with running_sandbox(QUICK) as sandbox:
        assert run(demo_copy / "example.csv", options(sandbox, tmp_path)).submitted == 0
        retried = run(demo_copy / "example.csv", options(sandbox, tmp_path, retry_failed=True))
        assert (retried.exit_code, retried.done, retried.submitted) == (0, 3, 3)


def test_a_changed_job_is_redone_and_only_that_one(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    manifest = demo_copy / "demo.yaml"
    run(manifest, options(sandbox, tmp_path))
    old = (tmp_path / "out" / "videos" / "host-en-pro.mp4").stat().st_mtime_ns
    text = manifest.read_text().replace("subtle head movement", "a warmer smile")
    manifest.write_text(text)
    summary = run(manifest, options(sandbox, tmp_path))
    assert (summary.exit_code, summary.submitted, summary.skipped) == (0, 1, 6)
    assert (tmp_path / "out" / "videos" / "host-en-pro.mp4").stat().st_mtime_ns != old


def test_two_runs_cannot_share_a_state_file(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    state = tmp_path / "out" / "state.sqlite"
    state.parent.mkdir(parents=True)
    with state_lock(state), pytest.raises(StateLocked, match="another avatarbatch run is using"):
        run(demo_copy / "demo.yaml", options(sandbox, tmp_path))


def test_library_entry_point_runs_on_its_own_sandbox(demo_copy: Path, tmp_path: Path) -> None:
    from avatarbatch import run_manifest

    summary = run_manifest(demo_copy / "example.csv", sandbox=QUICK, out=tmp_path / "lib")
    assert summary.exit_code == 0 and summary.done == 3
    assert (tmp_path / "lib" / "videos" / "intro-de.webm").exists()
    with pytest.raises(AvatarBatchError, match="api_key"):
        run_manifest(demo_copy / "example.csv")


def test_costs_in_the_state_match_the_ledger(
    sandbox: RunningSandbox, demo_copy: Path, tmp_path: Path
) -> None:
    summary = run(demo_copy / "demo.yaml", options(sandbox, tmp_path))
    ledger = sandbox.ledger()
    assert summary.cost_actual == pytest.approx(ledger["total_cost"])
    expected = sum(
        float(catalog.STANDARD.cost(s)) for s in (5.486, 6.008, 5.904, 5.251, 6.243, 6.374)
    )
    assert summary.cost_actual == pytest.approx(expected + float(catalog.PRO.cost(5.486)))


def test_a_download_that_keeps_breaking_is_left_for_the_next_run_not_paid_again(
    demo_copy: Path, tmp_path: Path
) -> None:
    cutting = QUICK.model_copy(update={"faults": FaultSpec.parse("truncate=1")})
    with running_sandbox(cutting) as sandbox:
        first = run(demo_copy / "example.csv", options(sandbox, tmp_path, max_attempts=2))
        assert (first.exit_code, first.done, first.failed, first.pending) == (1, 0, 0, 3)
        states = {
            j.status for j in StateStore.open(tmp_path / "out" / "state.sqlite").jobs().values()
        }
        assert states == {JobStatus.DOWNLOADING}
        assert not list((tmp_path / "out" / "videos").glob("*.mp4"))
        sandbox.app.state.engine.faults.spec.rates["truncate"] = 0.0  # the network heals
        second = run(demo_copy / "example.csv", options(sandbox, tmp_path))
        assert (second.exit_code, second.done, second.submitted) == (0, 3, 0)
        billed_once_per_job(sandbox, 3)
