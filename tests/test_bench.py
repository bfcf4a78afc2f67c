"""The benchmark's contenders, fixtures and arithmetic, at toy size, so `make bench` cannot
rot unseen.

The SDK and raw-loop contenders must finish every job against the sandbox (otherwise their
figures would compare avatarbatch with something broken), and the bulk-written "all done"
state file must be one avatarbatch accepts as finished, making no request. The ideals and
floors are checked by hand on small schedules, and the targets must be able to fail.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from avatarbatch.config import RunSettings
from avatarbatch.engine.session import run_batch
from avatarbatch.runware.client import ClientSettings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import running_sandbox
from conftest import REPO, SDK_LEAKS_IGNORED, TEST_KEY

sys.path.insert(0, str(REPO / "bench"))
from contenders import Row, read_rows, run_raw, run_sdk
from done_state import mark_all_done
from make_manifest import write_manifest
from measure import spread, spreads
from run_bench import Schedule, manifest_renders, post_floor, rotations, targets

Contender = Callable[[list[Row], str, Path, int], Coroutine[Any, Any, dict[str, int]]]
QUICK = SandboxConfig(latency=0, fixed_latency=0.1, render="stub", workers=4)


@SDK_LEAKS_IGNORED
@pytest.mark.usefixtures("official_sdk_leaks")
@pytest.mark.parametrize("contender", [run_sdk, run_raw], ids=["sdk", "raw"])
def test_the_other_contenders_finish_every_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contender: Contender
) -> None:
    pytest.importorskip("runware")
    monkeypatch.setenv("RUNWARE_API_KEY", TEST_KEY)
    manifest = write_manifest(5, tmp_path / "input")
    videos = tmp_path / "videos"
    videos.mkdir()
    with running_sandbox(QUICK) as sandbox:
        counts = asyncio.run(contender(read_rows(manifest), sandbox.api_url, videos, 2))
        stats = sandbox.stats()
    assert counts == {"done": 5, "failed": 0}
    assert sorted(p.name for p in videos.iterdir()) == [f"job-{i:06d}.mp4" for i in range(5)]
    # One portrait and at most five voices, each uploaded once however many rows use it.
    assert stats["requests"]["mediaStorage"] == 1 + 5
    assert stats["requests"]["videoInference"] == 5


def test_the_fabricated_done_state_is_a_finished_batch(tmp_path: Path) -> None:
    manifest = write_manifest(50, tmp_path / "input")
    out = tmp_path / "out"
    mark_all_done(manifest, out)
    with running_sandbox(QUICK) as sandbox:
        client = ClientSettings(api_url=sandbox.api_url, api_key=SecretStr(TEST_KEY))
        summary = asyncio.run(run_batch(manifest, RunSettings(client=client, out=out)))
        posts = sandbox.stats()["requests"]["http_posts"]
    assert (summary.done, summary.submitted, summary.exit_code, posts) == (50, 0, 0, 0)
    assert '"status": "done"' in (out / "report.json").read_text()


def test_the_raw_loop_told_the_render_times_polls_just_before_each_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNWARE_API_KEY", TEST_KEY)
    manifest = write_manifest(4, tmp_path / "input")
    _, by_audio, _ = manifest_renders(manifest, fixed=0.5, per_audio_s=0)
    videos = tmp_path / "videos"
    videos.mkdir()
    config = SandboxConfig(latency=0, fixed_latency=0.5, render="stub", workers=4)
    with running_sandbox(config) as sandbox:
        counts = asyncio.run(run_raw(read_rows(manifest), sandbox.api_url, videos, 4, by_audio))
        stats = sandbox.stats()
    assert counts == {"done": 4, "failed": 0}
    # First check at 98 % (too early), then 2 % later, 50 ms at least: two or three polls.
    assert 2 * 4 <= stats["requests"]["getResponse"] <= 3 * 4


def test_the_sandbox_reports_its_first_post_and_its_cpu() -> None:
    with running_sandbox(QUICK) as sandbox:
        before = sandbox.stats()
        sent = time.time()
        httpx.post(sandbox.api_url, json=[], headers={"Authorization": f"Bearer {TEST_KEY}"})
        after = sandbox.stats()
    assert before["first_post_at"] is None
    assert sent - 1 < after["first_post_at"] < time.time()
    assert after["process_cpu_s"] >= before["process_cpu_s"] > 0


def test_each_round_runs_every_contender_once_in_a_rotated_order() -> None:
    order = list(rotations(["a", "b", "c"], 3))
    assert order == [
        (0, "a"), (0, "b"), (0, "c"),
        (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"),
    ]  # fmt: skip


def test_uniform_renders_give_ceil_waves_for_the_ideal_and_the_floor() -> None:
    schedule = Schedule.fifo([3.0] * 200, 16)
    assert schedule.makespan == 39.0
    assert post_floor(schedule, uploads=7) == {
        "uploads": 7,
        "submits": 13,
        "polls": 13,
        "posts": 33,
        "posts_per_job": 0.165,
        "window": 0.02,
    }


def test_uneven_renders_follow_the_fifo_schedule_by_hand() -> None:
    # Two slots. Job 0 (2 s) on slot 1 for 0-2; job 1 (1 s) on slot 2 for 0-1; job 2 (1 s)
    # on slot 2 for 1-2; job 3 (3 s) on the first free slot, at 2, until 5.
    schedule = Schedule.fifo([2.0, 1.0, 1.0, 3.0], 2)
    assert schedule.starts == [0.0, 0.0, 1.0, 2.0]
    assert schedule.makespan == 5.0
    # Finishes at 1, 2 (jobs 0 and 2 together) and 5: three polls; submits for the first
    # two jobs, then after the finishes at 1 and at 2.
    assert schedule.waves() == [[1], [0, 2], [3]]
    floor = post_floor(schedule, uploads=2)
    assert (floor["submits"], floor["polls"], floor["posts"]) == (3, 3, 8)
    # Finishes within the window of each other make one wave.
    assert len(Schedule.fifo([1.0, 1.01, 1.03], 3).waves(window=0.02)) == 2


def test_medians_and_ranges() -> None:
    assert spread([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "runs": [3.0, 1.0, 2.0],
    }
    merged = spreads([{"x": 1.0, "n": {"y": 4}}, {"x": 3.0, "n": {"y": 2}}])
    assert merged["x"]["median"] == 2.0 and merged["n"]["y"]["min"] == 2.0


def test_targets_can_fail() -> None:
    def latency(posts: float, wall: float) -> dict[str, object]:
        runs = [{"posts_per_job": posts, "wall_over_ideal": wall, "startup_s": 0.2}]
        return spreads(runs)

    results = {
        "A": {
            "floor": {"posts_per_job": 0.165},
            "contenders": {"cli": latency(0.34, 1.04), "library": latency(0.2, 1.2)},
        }
    }
    met = {t["target"]: t["met"] for t in targets(results)}
    assert met["A cli: wall / ideal <= 1.05"] == "yes"
    assert met["A cli: POSTs per job <= 0.35"] == "yes"
    assert met["A cli: POSTs per job <= 2 x floor (0.165)"] == "no"
    assert met["A library: wall / ideal <= 1.05"] == "no"
    assert met["A cli: process start to first POST <= 0.3 s"] == "yes"
