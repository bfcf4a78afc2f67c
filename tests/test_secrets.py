"""The API key never lands anywhere: not in the state file, the reports, the logs or the output.

A whole batch runs through the real command line in a child process, with a recognisable key,
against loopback sandboxes that inject faults: first every generation fails (retried, then
recorded as failed), then `--retry-failed` finishes the jobs that can finish while a rejected
one fails again; alongside the first run, another in a folder of its own meets a sandbox that
wants another key, which stops it (exit 4). Afterwards every byte written (every file new or
changed under the test folder: state, WAL, reports, gallery, failures.yaml, videos) and
everything printed is searched for the key.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec
from avatarbatch.sandbox.server import running_sandbox

QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)
FLAKY = QUICK.model_copy(update={"faults": FaultSpec.parse("http500=0.1")})
FAILING = QUICK.model_copy(update={"faults": FaultSpec.parse("task_error=1,http500=0.1")})
RUN_TIMEOUT = 60  #: a hanging child fails the test instead of stalling it

pytestmark = pytest.mark.slow

# Two jobs that can succeed, and one whose remote audio the provider refuses: exit 1 for sure.
MANIFEST = """\
version: 1
defaults: {portrait: media/face.png, prompt: a presenter}
jobs:
  - {id: en, audio: media/en.wav}
  - {id: es, audio: media/es.wav}
  - {id: remote, audio: "https://example.invalid/voice.mp3"}
"""


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def written_since(root: Path, before: dict[Path, tuple[int, int]]) -> list[Path]:
    return [p for p, stamp in snapshot(root).items() if before.get(p) != stamp]


def start_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "avatarbatch", "run", *args],
        cwd=cwd,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish_cli(process: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("source", ["environment", "dotenv"])
def test_the_key_is_in_no_file_written_and_no_line_printed(
    tmp_path: Path, media: Path, source: str
) -> None:
    token = secrets.token_hex(12)
    key = f"sk-RECOGNISABLE-{token}"
    manifest = tmp_path / "batch.yaml"
    manifest.write_text(MANIFEST)
    before = snapshot(tmp_path)
    printed: list[bytes] = []

    def start(sandbox_url: str, cwd: Path, out: str, *more: str) -> subprocess.Popen[bytes]:
        env = {"RUNWARE_API_KEY": key, "RUNWARE_API_URL": sandbox_url}
        if source == "dotenv":  # the working folder's .env, and nothing in the environment
            (cwd / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
            env = {}
        args = [str(manifest), "--out", out, "--json", "--rps", "100", *more]
        return start_cli(args, cwd, env)

    def finish(process: subprocess.Popen[bytes]) -> dict[str, object]:
        done = finish_cli(process)
        printed.extend([done.stdout, done.stderr])
        assert b"Traceback" not in done.stderr, done.stderr.decode()
        summary = json.loads(done.stdout.decode().strip().splitlines()[-1])
        assert summary["exit_code"] == done.returncode
        return summary

    # These sandboxes take only this key, so a finished job proves the key was really sent.
    # First every generation fails (each job is tried three times, and 500s are retried)...
    # while, at the same time and in a folder of its own (its own .env), a run meets a key
    # the API refuses: that run stops with exit 4.
    refusing = QUICK.model_copy(update={"api_key": "the-right-key"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with (
        running_sandbox(FAILING.model_copy(update={"api_key": key})) as sandbox,
        running_sandbox(refusing) as refusing_sandbox,
    ):
        runs = [
            start(sandbox.api_url, tmp_path, "out"),
            start(refusing_sandbox.api_url, elsewhere, "out-auth"),
        ]
        try:
            refused, first = finish(runs[1]), finish(runs[0])
        finally:  # a failed assertion leaves no child behind
            for process in runs:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert sandbox.stats()["faults"]["task_error"] >= 2
    assert (first["exit_code"], first["done"]) == (1, 0), first
    assert refused["exit_code"] == 4 and "invalidApiKey" in str(refused["message"]), refused
    # ... then the failed jobs are retried: two succeed, the remote one fails again.
    with running_sandbox(FLAKY.model_copy(update={"api_key": key})) as sandbox:
        second = finish(start(sandbox.api_url, tmp_path, "out", "--retry-failed"))
    assert second["exit_code"] == 1 and second["done"] >= 1, second

    files = [p for p in written_since(tmp_path, before) if p.name != ".env"]
    names = {p.name for p in files}
    assert {"state.sqlite", "report.json", "index.html", "failures.yaml"} <= names, names
    assert any(p.suffix == ".mp4" for p in files), names  # done jobs' files are searched too
    for needle in (key.encode(), token.encode()):
        for path in files:
            assert needle not in path.read_bytes(), f"the key is in {path}"
        for output in printed:
            assert needle not in output, "the key was printed"
    if source == "dotenv":  # the test's own files, left alone
        assert key in (tmp_path / ".env").read_text() and key in (elsewhere / ".env").read_text()
