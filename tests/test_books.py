"""Every cent accounted for: the task ledger against the sandbox's own billing ledger.

Each test reproduces a way money billed by the API used to vanish from the reports (or a cap
used to be overrun), through the CLI as a user runs it, and checks the books to the cent.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from avatarbatch.config import PollTiming, RunSettings
from avatarbatch.engine.session import run_batch
from avatarbatch.runware.client import ClientSettings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.store import JobStatus, StateStore, TaskStatus

QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)
KEY = "books-key-0123456789"
HANG_GUARD = 60.0
QUICK_POLL = PollTiming(initial=0.05, min_interval=0.05, max_interval=0.3)
runner = CliRunner()


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(QUICK) as server:
        yield server


def manifest_text(prompt: str, rows: list[tuple[str, str]], extra: str = "") -> str:
    jobs = "".join(f"  - {{id: {job_id}, audio: media/{audio}}}\n" for job_id, audio in rows)
    return (
        "version: 1\n"
        f"defaults: {{portrait: media/face.png, prompt: {prompt!r}{extra}}}\n"
        f"jobs:\n{jobs}"
    )


FOUR = [("a", "en.wav"), ("b", "es.wav"), ("c", "en.wav"), ("d", "es.wav")]


def cli(args: list[str], sandbox: RunningSandbox, key: str = KEY) -> dict[str, object]:
    env = {"RUNWARE_API_KEY": key, "RUNWARE_API_URL": sandbox.api_url}
    result = runner.invoke(app, [*args, "--rps", "200", "--json"], env=env)
    assert "Traceback" not in result.output, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def csv_total(out: Path) -> float:
    with (out / "cost_report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    (total,) = [row for row in rows if row["id"] == "TOTAL"]
    return float(total["actual_cost"])


def csv_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "cost_report.csv").open() as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def status(out: Path) -> dict[str, object]:
    result = runner.invoke(app, ["status", "--state", str(out / "state.sqlite"), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_superseded_and_removed_attempts_stay_in_every_report(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    out = tmp_path / "out"
    for round_number in range(4):  # a new default prompt before each run: every job re-renders
        manifest.write_text(manifest_text(f"take {round_number}", FOUR))
        summary = cli(["run", str(manifest), "--out", str(out)], sandbox)
        assert summary["exit_code"] == 0, summary
    billed = sandbox.ledger()["total_cost"]
    assert sandbox.ledger()["submissions"] == 16
    assert summary["cost_actual"] == pytest.approx(billed, abs=0.005)
    assert csv_total(out) == pytest.approx(billed, abs=0.005)
    assert status(out)["spend"] == pytest.approx(billed, abs=0.005)
    rows = csv_rows(out)
    # Each job's row holds all four attempts; three of them are earlier ones.
    assert float(rows["a"]["earlier_cost"]) == pytest.approx(3 * float(rows["a"]["estimated_cost"]))
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["actual_cost"] == pytest.approx(billed, abs=0.005)

    manifest.write_text(manifest_text("take 3", FOUR[:2]))  # c and d leave the manifest
    summary = cli(["run", str(manifest), "--out", str(out)], sandbox)
    assert summary["submitted"] == 0
    rows = csv_rows(out)
    assert rows["c"]["status"] == rows["d"]["status"] == "removed"
    assert csv_total(out) == pytest.approx(billed, abs=0.005)
    assert summary["cost_actual"] == pytest.approx(billed, abs=0.005)
    assert "earlier attempts" in (out / "report.md").read_text()


def test_retry_failed_after_a_paid_but_lost_result_keeps_the_first_payment(
    media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifest_text("hello", FOUR[:2]))
    out = tmp_path / "out"
    # Results that expire at once: paid for, then lost before the download.
    with running_sandbox(QUICK.model_copy(update={"default_ttl": 0})) as expiring:
        first = cli(["run", str(manifest), "--out", str(out)], expiring)
        first_bill = expiring.ledger()["total_cost"]
    assert first["failed"] == 2 and first_bill > 0
    assert "retry-failed" in (out / "report.md").read_text()
    with running_sandbox(QUICK) as honest:
        second = cli(["run", str(manifest), "--out", str(out), "--retry-failed"], honest)
        second_bill = honest.ledger()["total_cost"]
    assert second["exit_code"] == 0, second
    assert second["cost_this_run"] == pytest.approx(second_bill, abs=0.005)
    assert csv_total(out) == pytest.approx(first_bill + second_bill, abs=0.005)
    assert second["cost_actual"] == pytest.approx(first_bill + second_bill, abs=0.005)


@pytest.mark.parametrize("kind", ["nan_cost", "inf_cost", "negative_cost"])
def test_an_unusable_cost_is_stored_as_unknown_and_the_estimate_counted(
    media: Path, tmp_path: Path, kind: str
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifest_text("hello", FOUR[:2]))
    out = tmp_path / "out"
    lying = QUICK.model_copy(update={"faults": FaultSpec.parse(f"{kind}=1")})
    with running_sandbox(lying) as sandbox:
        summary = cli(["run", str(manifest), "--out", str(out)], sandbox)
        billed = sandbox.ledger()["total_cost"]
    assert summary["exit_code"] == 0, summary
    # Every later command still reads the state file: no NaN reached a JSON column.
    assert status(out)["spend"] == pytest.approx(billed, abs=0.005)
    rerun = runner.invoke(app, ["report", "--state", str(out / "state.sqlite")])
    assert rerun.exit_code == 0, rerun.output
    rows = csv_rows(out)
    assert {rows["a"]["cost_source"], rows["b"]["cost_source"]} == {"estimate"}
    assert csv_total(out) == pytest.approx(billed, abs=0.005)
    assert "estimate is counted" in (out / "report.md").read_text()
    for text in sqlite3.connect(out / "state.sqlite").execute("SELECT results FROM jobs"):
        assert "NaN" not in text[0] and "Infinity" not in text[0]


def test_an_api_error_echoing_the_key_reaches_no_file_and_no_line(
    media: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifest_text("hello", FOUR[:2]))
    out = tmp_path / "out"
    # Every generation fails; most submissions and failures echo the key back. Through the
    # library with quick retries: the CLI's backoff made this take half a minute.
    echoing = QUICK.model_copy(update={"faults": FaultSpec.parse("task_error=1,echo_key=0.7")})
    with running_sandbox(echoing) as sandbox:
        settings = ClientSettings(
            api_url=sandbox.api_url,
            api_key=SecretStr(KEY),
            backoff_initial=0.01,
            backoff_max=0.05,
            max_attempts=8,
        )
        options = RunSettings(client=settings, out=out, rps=200, poll=QUICK_POLL)
        with caplog.at_level(logging.DEBUG):
            summary = asyncio.run(run_batch(manifest, options))
        echoed = sandbox.stats()["faults"].get("echo_key", 0)
    assert summary.exit_code == 1, summary
    assert echoed >= 1  # the key really came back (at least 6 draws at 0.7)
    assert KEY not in caplog.text and KEY not in summary.report
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"state.sqlite", "report.json", "cost_report.csv"}
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    with StateStore.open(out / "state.sqlite") as store:
        messages = [j.error_message or "" for j in store.jobs().values()]
    echoes = [m for m in messages if "Invalid request for key" in m]
    assert all("[redacted]" in m for m in echoes), echoes


def test_a_symlink_to_the_state_file_finds_the_same_lock(tmp_path: Path) -> None:
    from avatarbatch.state.lock import StateLocked, state_lock

    real = tmp_path / "state.sqlite"
    StateStore.open(real).close()
    alias = tmp_path / "alias.sqlite"
    alias.symlink_to(real)
    with (
        state_lock(real),
        pytest.raises(StateLocked, match="another avatarbatch run"),
        state_lock(alias),
    ):
        pass


def test_a_run_through_a_symlinked_state_is_refused_while_the_real_one_runs(
    media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifest_text("hello", FOUR[:1]))
    out = tmp_path / "out"
    slow = QUICK.model_copy(update={"fixed_latency": 30.0})
    with running_sandbox(slow) as sandbox:
        env = {**os.environ, "RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": sandbox.api_url}
        first = subprocess.Popen(
            [sys.executable, "-m", "avatarbatch", "run", str(manifest), "--out", str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: sandbox.ledger()["submissions"] == 1)
            alias = tmp_path / "alias.sqlite"
            alias.symlink_to(out / "state.sqlite")
            args = ["run", str(manifest), "--out", str(out), "--state", str(alias)]
            second = runner.invoke(app, args, env=env)
            assert second.exit_code == 2, second.output
            assert "another avatarbatch run" in second.output and str(first.pid) in second.output
            assert sandbox.ledger()["submissions"] == 1
        finally:
            first.kill()
            first.wait(timeout=HANG_GUARD)


def wait_for(condition: object, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_resumed_run_keeps_max_cost_per_invocation_and_concurrency_first_for_adopted(
    media: Path, tmp_path: Path
) -> None:
    rows = [(f"j{i:02d}", "en.wav" if i % 2 else "es.wav") for i in range(12)]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifest_text("hello", rows))
    out = tmp_path / "out"
    slow = QUICK.model_copy(update={"fixed_latency": 1.0, "workers": 16})
    with running_sandbox(slow) as sandbox:
        env = {**os.environ, "RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": sandbox.api_url}
        args = ["run", str(manifest), "--out", str(out), "--concurrency", "4", "--rps", "200"]
        killed = subprocess.Popen(
            [sys.executable, "-m", "avatarbatch", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: processing(out) == 4)
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=HANG_GUARD)
        manifest.write_text(manifest_text("hello", list(reversed(rows))))  # new rows first now
        cap = 1.0
        env_cli = {"RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": sandbox.api_url}
        result = runner.invoke(
            app,
            [*args, "--max-cost", str(cap), "--json"],
            env=env_cli,
        )
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        stats = sandbox.stats()
        ledger = sandbox.ledger()
    assert summary["exit_code"] == 3, summary  # the budget stopped it
    assert stats["peak_in_flight"] <= 4, stats
    assert summary["cost_this_run"] <= cap
    with StateStore.open(out / "state.sqlite") as store:
        runs = store.runs()
        this_run = [t for t in store.tasks() if t["run_id"] == runs[-1]["id"]]
        first_run = [t for t in store.tasks() if t["run_id"] != runs[-1]["id"]]
    assert sum(t["estimated_cost"] for t in this_run) <= cap
    assert len(first_run) == 4  # the adopted tasks were polled, not submitted again
    assert ledger["submissions"] == 4 + len(this_run)
    assert summary["cost_actual"] == pytest.approx(ledger["total_cost"], abs=0.005)


def processing(out: Path) -> int:
    path = out / "state.sqlite"
    if not path.exists():
        return 0
    try:
        with StateStore.open(path) as store:
            return store.counts()[JobStatus.PROCESSING.value]
    except Exception:  # mid-migration by the other process: ask again
        return 0


def test_a_state_file_from_before_the_ledger_recovers_superseded_costs_from_events(
    tmp_path: Path,
) -> None:
    from avatarbatch.state.store import MIGRATIONS
    from avatarbatch.state.store import m001_initial as first

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    from sqlite_utils import Database

    db = Database(conn)
    first(db)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 0)")
    db.execute(
        "INSERT INTO jobs (id, spec_hash, status, task_uuid, model, number_results, actual_cost, "
        "created_at, updated_at) VALUES ('a', 'h2', 'done', 't2', 'm', 1, 0.2, 0, 0)"
    )
    events = [
        ("created", {"spec_hash": "h1"}),
        ("transition", {"from": "uploading", "to": "submitting", "task_uuid": "t1", "attempts": 1}),
        ("transition", {"from": "submitting", "to": "processing"}),
        ("transition", {"from": "processing", "to": "downloading", "actual_cost": 0.3}),
        ("changed", {"spec_hash": "h2", "task_uuid": "t1", "actual_cost": 0.3}),
        ("transition", {"from": "uploading", "to": "submitting", "task_uuid": "t2", "attempts": 1}),
        ("transition", {"from": "processing", "to": "downloading", "actual_cost": 0.2}),
    ]
    for kind, detail in events:
        db.execute(
            "INSERT INTO events (at, job_id, kind, detail) VALUES (0, 'a', ?, ?)",
            [kind, json.dumps(detail)],
        )
    conn.commit()
    conn.close()
    assert len(MIGRATIONS) >= 2
    with StateStore.open(path) as store:
        assert store.spend() == pytest.approx(0.5)
        money = store.money_by_job()["a"]
        assert (money.billed, money.earlier) == (pytest.approx(0.5), pytest.approx(0.3))
        statuses = {t["task_uuid"]: t["status"] for t in store.tasks()}
    assert statuses == {"t1": TaskStatus.BILLED.value, "t2": TaskStatus.BILLED.value}
