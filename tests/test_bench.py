"""The benchmark's contenders and fixtures, at toy size, so `make bench` cannot rot unseen.

The SDK and raw-loop contenders must finish every job against the sandbox (otherwise their
figures would compare avatarbatch with something broken), and the bulk-written "all done"
state file must be one avatarbatch accepts as finished, making no request.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

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

Contender = Callable[[list[Row], str, Path, int], Awaitable[dict[str, int]]]
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
