"""A job's history (`status MANIFEST --job ID`): the events log told as a story, in order, with
the task UUIDs, costs and files of the ledger; an unknown id gets a suggestion; an older state
file, whose events hold no ledger or files detail, still tells its story."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from avatarbatch.cli.status_view import history_lines, job_history
from avatarbatch.errors import UsageError
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.store import JobSpec, JobStatus, StateStore, m001_initial

QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)
FAILING = QUICK.model_copy(update={"faults": FaultSpec.parse("task_error=1")})
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TWO_JOBS = (
    "version: 1\njobs:\n"
    "  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    "  - {id: b, portrait: media/face.png, audio: media/es.wav}\n"
)
runner = CliRunner()


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(QUICK) as server:
        yield server


@pytest.fixture
def manifest(tmp_path: Path, media: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(TWO_JOBS)
    return path


def run(manifest: Path, out: Path, api_url: str, *flags: str) -> dict[str, Any]:
    env = {"RUNWARE_API_KEY": "test-key", "RUNWARE_API_URL": api_url}
    args = ["run", str(manifest), "--out", str(out), "--json", *flags]
    result = runner.invoke(app, args, env=env)
    assert "Traceback" not in result.output, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def history(manifest: Path, out: Path, job_id: str) -> dict[str, Any]:
    return job_history(manifest, state=None, out=out, sandbox=False, job_id=job_id)


def whats(story: dict[str, Any]) -> list[str]:
    return [step["what"] for step in story["events"]]


def test_a_done_job_reads_submitted_accepted_billed_downloaded_done(
    sandbox: RunningSandbox, manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run(manifest, out, sandbox.api_url)["done"] == 2
    story = history(manifest, out, "a")
    with StateStore.open(out / "state.sqlite") as store:
        (task,) = store.tasks("a")
    video = out / "videos" / "a.mp4"
    uuid, cost = task["task_uuid"], task["billed_cost"]
    assert (story["job"], story["status"], story["attempts"]) == ("a", "done", 1)
    assert whats(story) == [
        "registered",
        "uploading",
        "inputs uploaded",
        f"task {uuid} submitted (attempt 1)",
        "accepted",
        f"result: success, 1 video, ${cost:.5f} billed",
        f"downloaded videos/a.mp4 ({video.stat().st_size:,} bytes)",
        "done",
    ]
    steps = {step["what"].split(" ")[0].rstrip(":"): step for step in story["events"]}
    assert steps["result"]["task_uuid"] == uuid
    assert (steps["result"]["billed_cost"], steps["result"]["cost_source"]) == (cost, "api")
    assert steps["task"]["estimated_cost"] == task["estimated_cost"]
    assert steps["downloaded"]["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert all(ISO_UTC.match(step["at"]) for step in story["events"])
    assert [step["at"] for step in story["events"]] == sorted(s["at"] for s in story["events"])
    json.dumps(story)  # JSON-ready as it is
    lines = history_lines(story)
    assert lines[0] == "job a: done, 1 attempt"
    assert lines[1:] == [f"  {step['at']}  {step['what']}" for step in story["events"]]


def test_a_changed_spec_reads_as_a_reset_then_a_new_attempt(
    sandbox: RunningSandbox, manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run(manifest, out, sandbox.api_url)
    manifest.write_text(TWO_JOBS.replace("audio: media/en.wav}", "audio: media/es.wav}"))
    assert run(manifest, out, sandbox.api_url)["submitted"] == 1
    story = whats(history(manifest, out, "a"))
    reset = story.index("reset to pending (spec changed)")
    assert story[:reset][-1] == "done"
    assert story[reset + 1 :][-1] == "done"
    assert any(what.endswith("submitted (attempt 1)") for what in story[reset:])


def test_a_failed_job_names_its_error_and_every_attempt(media: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    )
    out = tmp_path / "out"
    with running_sandbox(FAILING) as failing:
        assert run(manifest, out, failing.api_url)["failed"] == 1
    story = history(manifest, out, "a")
    with StateStore.open(out / "state.sqlite") as store:
        record = store.get("a")
        ledger = [task["task_uuid"] for task in store.tasks("a")]
    assert record is not None and record.status is JobStatus.FAILED
    assert (story["status"], story["attempts"]) == ("failed", record.attempts)
    assert whats(story)[-1] == f"failed: {record.error_code}: {record.error_message}"
    assert story["events"][-1]["error_code"] == record.error_code
    submitted = [s["task_uuid"] for s in story["events"] if "submitted (attempt" in s["what"]]
    assert submitted == ledger and len(ledger) == record.attempts
    ended = [f"task {uuid} ended without a result: nothing billed" for uuid in ledger]
    assert [what for what in whats(story) if "ended" in what] == ended

    with running_sandbox(QUICK) as healthy:
        assert run(manifest, out, healthy.api_url, "--retry-failed")["done"] == 1
    again = whats(history(manifest, out, "a"))
    assert again[len(whats(story))] == "reset to pending (--retry-failed)"
    assert again[-1] == "done"


def test_an_unknown_job_id_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with StateStore.open(state) as store:
        store.ensure_jobs(JobSpec(job_id, "h", "m", 1, 3.0, 0.1) for job_id in ("host-en", "x"))
    with pytest.raises(UsageError, match=r"no job 'host-eN' in .*did you mean 'host-en'\?"):
        job_history(None, state=state, out=None, sandbox=False, job_id="host-eN")
    with pytest.raises(UsageError, match=r"no job 'zzzzz' in .*it holds 2 jobs: host-en, x"):
        job_history(None, state=state, out=None, sandbox=False, job_id="zzzzz")
    with pytest.raises(UsageError, match="nothing has run yet"):
        job_history(None, state=tmp_path / "none.sqlite", out=None, sandbox=False, job_id="x")
    with pytest.raises(UsageError, match="give a MANIFEST or --state FILE"):
        job_history(None, state=None, out=None, sandbox=False, job_id="x")
    assert (
        job_history(None, state=state, out=None, sandbox=False, job_id="x")["events"][0]["what"]
        == "registered"
    )


def test_a_state_file_from_before_the_detailed_log_still_tells_the_story(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    db = Database(conn)
    m001_initial(db)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 0)")
    db.execute(
        "INSERT INTO jobs (id, spec_hash, status, attempts, task_uuid, model, number_results, "
        "actual_cost, created_at, updated_at) VALUES ('a', 'h2', 'done', 1, 't2', 'm', 1, 0.2, 0, 0)"
    )
    output = {"path": "videos/a.mp4", "bytes": 123456, "sha256": "ab" * 32}
    events = [
        ("created", {"spec_hash": "h1"}),
        ("transition", {"from": "pending", "to": "uploading"}),
        ("transition", {"from": "uploading", "to": "submitting", "task_uuid": "t1", "attempts": 1}),
        ("transition", {"from": "submitting", "to": "processing"}),
        ("transition", {"from": "processing", "to": "failed", "error_code": "nsfw",
                        "error_message": "refused by the provider"}),
        ("changed", {"spec_hash": "h2", "old_spec_hash": "h1", "old_status": "failed"}),
        ("transition", {"from": "uploading", "to": "submitting", "task_uuid": "t2", "attempts": 1}),
        ("transition", {"from": "submitting", "to": "processing"}),
        ("transition", {"from": "processing", "to": "downloading", "actual_cost": 0.2,
                        "results": [{"video_uuid": "v", "cost": 0.2}]}),
        ("transition", {"from": "downloading", "to": "done", "outputs": [output]}),
        ("task", {"task_uuid": "t0", "status": "unbilled"}),
    ]  # fmt: skip
    for at, (kind, detail) in enumerate(events):
        db.execute(
            "INSERT INTO events (at, job_id, kind, detail) VALUES (?, 'a', ?, ?)",
            [1_700_000_000 + at, kind, json.dumps(detail)],
        )
    conn.commit()
    conn.close()
    story = job_history(None, state=path, out=None, sandbox=False, job_id="a")
    assert whats(story) == [
        "registered",
        "uploading",
        "task t1 submitted (attempt 1)",
        "accepted",
        "failed: nsfw: refused by the provider",
        "reset to pending (spec changed)",
        "task t2 submitted (attempt 1)",
        "accepted",
        "result: success, 1 video, $0.20000 billed",
        "downloaded videos/a.mp4 (123,456 bytes)",
        "done",
        "task t0 ended without a result: nothing billed",
    ]
    assert story["events"][0]["at"] == "2023-11-14T22:13:20Z"
    assert story["events"][8]["billed_cost"] == 0.2
