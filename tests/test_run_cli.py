"""`run` and `status` as users and cron jobs call them: exit codes, JSON, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import running_sandbox
from avatarbatch.state.store import StateStore

runner = CliRunner()
SUMMARY_KEYS = {
    "jobs",
    "done",
    "failed",
    "pending",
    "submitted",
    "skipped",
    "cost_actual",
    "cost_estimated",
    "exit_code",
}


def test_run_without_a_key_or_sandbox_explains_both_and_exits_2(demo_copy: Path) -> None:
    result = runner.invoke(app, ["run", str(demo_copy / "demo.yaml")])
    assert result.exit_code == 2
    assert "RUNWARE_API_KEY" in result.output and "--sandbox" in result.output


def test_run_json_prints_the_summary_last(demo_copy: Path, tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig(latency=0, fixed_latency=0.05, render="stub")) as sandbox:
        env = {"RUNWARE_API_KEY": "k", "RUNWARE_API_URL": sandbox.api_url}
        result = runner.invoke(
            app,
            ["run", str(demo_copy / "example.csv"), "--out", str(tmp_path / "o"), "--json"],
            env=env,
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= SUMMARY_KEYS
    assert (summary["done"], summary["submitted"], summary["exit_code"]) == (3, 3, 0)


def test_status_and_plan_read_the_state_file(demo_copy: Path, tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig(latency=0, fixed_latency=0.05, render="stub")) as sandbox:
        env = {"RUNWARE_API_KEY": "k", "RUNWARE_API_URL": sandbox.api_url}
        manifest = str(demo_copy / "example.csv")
        assert (
            runner.invoke(app, ["run", manifest, "--out", str(tmp_path / "o")], env=env).exit_code
            == 0
        )
    status = runner.invoke(
        app, ["status", "--state", str(tmp_path / "o" / "state.sqlite"), "--json"]
    )
    report = json.loads(status.stdout)
    assert report["by_status"]["done"] == 3 and report["failures"] == [] and report["spend"] > 0
    text = runner.invoke(app, ["status", "--state", str(tmp_path / "o" / "state.sqlite")])
    assert "3 jobs (done 3)" in text.stdout
    plan = runner.invoke(
        app, ["plan", manifest, "--state", str(tmp_path / "o" / "state.sqlite"), "--json"]
    )
    assert {job["status"] for job in json.loads(plan.stdout)["jobs"]} == {"done"}


def test_status_without_a_state_file_is_a_usage_error(demo_copy: Path) -> None:
    result = runner.invoke(app, ["status", str(demo_copy / "demo.yaml")])
    assert result.exit_code == 2 and "nothing has run yet" in result.output


def interrupted_then_resumed(
    demo_copy: Path, tmp_path: Path, interrupt: Callable[[subprocess.Popen[str]], None]
) -> None:
    """Start a real `run`, interrupt it once a job is at the provider, then run it again.

    Four of the seven jobs in flight at once: the interrupt finds tasks at the provider and
    jobs not submitted yet, and the resumed run needs two rounds of renders, not four.
    """
    out = tmp_path / "o"
    slow = SandboxConfig(latency=0, fixed_latency=1.0, render="stub", workers=4)
    with running_sandbox(slow) as sandbox:
        env = {**os.environ, "RUNWARE_API_KEY": "k", "RUNWARE_API_URL": sandbox.api_url}
        command = [
            sys.executable,
            "-m",
            "avatarbatch",
            "run",
            str(demo_copy / "demo.yaml"),
            "--out",
            str(out),
            "--concurrency",
            "4",
        ]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for_processing(out / "state.sqlite", timeout=60)
        interrupt(process)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        ledger = sandbox.ledger()
    assert ledger["submissions"] == 7 and all(t["results"] == 1 for t in ledger["tasks"])


@pytest.mark.slow
def test_sigint_stops_with_130_and_the_next_run_finishes(demo_copy: Path, tmp_path: Path) -> None:
    """A real process, a real signal: the graceful stop, then a resume that pays once per job."""

    def sigint(process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "interrupted" in stdout and "Traceback" not in stderr

    interrupted_then_resumed(demo_copy, tmp_path, sigint)


@pytest.mark.slow
def test_sigkill_mid_run_loses_nothing(demo_copy: Path, tmp_path: Path) -> None:
    def sigkill(process: subprocess.Popen[str]) -> None:
        process.kill()
        process.communicate(timeout=30)

    interrupted_then_resumed(demo_copy, tmp_path, sigkill)


def wait_for_processing(state: Path, timeout: float) -> None:
    """Poll the state file until some job is at the provider (state polling with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.exists():
            try:
                with StateStore.open(state) as store:
                    if store.counts()["processing"] > 0:
                        return
            except Exception:  # the file may be mid-creation
                pass
        time.sleep(0.05)
    raise AssertionError("no job reached processing in time")
