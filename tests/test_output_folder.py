"""The output folder as avatarbatch owns it, end to end through the CLI against the sandbox.

Someone else's files are never overwritten, one job's paid video is never written over by
another's, a renamed output is moved rather than paid again, a damaged or broken video is
fetched again from its paid URL (never saved as finished, never paid twice), a moved folder
keeps working, leftovers of killed runs are tidied, and unreadable state rows or report
files are clean errors.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner, Result

from avatarbatch.cli.commands import app
from avatarbatch.engine.verify import verify_video
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.store import JobStatus, StateStore

QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)
HANG_GUARD = 60  #: seconds: a child process or a wait that takes longer is hanging
runner = CliRunner()

# Paths in a manifest are relative to it: manifests live in tmp_path, next to media/.
ONE_JOB = "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
THREE_JOBS = (
    "version: 1\ndefaults: {portrait: media/face.png}\njobs:\n"
    "  - {id: a, audio: media/en.wav}\n"
    "  - {id: b, audio: media/es.wav}\n"
    "  - {id: c, audio: media/en.wav}\n"
)
USER_FILES = {
    "index.html": b"<html>my own gallery</html>\n",
    "report.md": b"# my notes\n",
    "report.json": b'{"mine": true}\n',
    "cost_report.csv": b"id,cost\nmine,1\n",
    "failures.yaml": b"- my: list\n",
    "videos/a.mp4": b"\x00\x00\x00\x18ftypmp42 my holiday video",
}


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(QUICK) as server:
        yield server


def cli(args: list[str], sandbox: RunningSandbox | None = None) -> Result:
    env = {"RUNWARE_API_KEY": "test-key", "RUNWARE_API_URL": sandbox.api_url} if sandbox else {}
    return runner.invoke(app, args, env=env)


def run(manifest: Path, out: Path | None, sandbox: RunningSandbox, *extra: str) -> Result:
    where = ["--out", str(out)] if out is not None else []
    return cli(["run", str(manifest), *where, "--rps", "100", "--json", *extra], sandbox)


def summary(result: Result) -> dict[str, object]:
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def succeeded(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, result.output
    return summary(result)


def clean_failure(result: Result, code: int) -> str:
    """The CLI's output, once it is known to be a message and an exit code, not a traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return " ".join(result.output.split())  # rich may wrap a long path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def submissions(sandbox: RunningSandbox) -> int:
    return int(sandbox.ledger()["submissions"])


def downloads(sandbox: RunningSandbox) -> int:
    return int(sandbox.stats()["requests"]["downloads"])


def stored_outputs(state: Path) -> dict[str, list[dict[str, object]]]:
    with StateStore.open(state) as store:
        return {job_id: record.outputs for job_id, record in store.jobs().items()}


def statuses(state: Path) -> dict[str, JobStatus]:
    with StateStore.open(state) as store:
        return {job_id: record.status for job_id, record in store.jobs().items()}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Temporary files (`.NAME.part`, `.NAME.XXXXXXXX.part`) anywhere under the folder."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*.part"))


# --- 1. someone else's files -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["--out", "output.dir"])
def test_a_folder_holding_the_users_own_files_is_refused_and_left_untouched(
    sandbox: RunningSandbox, media: Path, tmp_path: Path, how: str
) -> None:
    folder = tmp_path / "mine"
    for name, content in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    if how == "--out":
        manifest = tmp_path / "m.yaml"
        manifest.write_text(ONE_JOB)
        result = run(manifest, folder, sandbox)
    else:  # the manifest sits in the folder it names as its output folder
        manifest = folder / "m.yaml"
        manifest.write_text(
            "version: 1\noutput: {dir: .}\n"
            "jobs:\n  - {id: a, portrait: ../media/face.png, audio: ../media/en.wav}\n"
        )
        result = run(manifest, None, sandbox)
    before = {**USER_FILES, **({"m.yaml": manifest.read_bytes()} if how != "--out" else {})}

    message = clean_failure(result, 2)
    assert "did not write" in message
    named = [name for name in before if name in message]
    assert len(named) >= 3, message
    assert snapshot(folder) == before  # every file byte for byte, and nothing added
    assert sorted(p.name for p in folder.iterdir()) == sorted({n.split("/")[0] for n in before})
    assert submissions(sandbox) == 0 and sandbox.stats()["requests"]["http_posts"] == 0


def test_an_empty_folder_and_a_folder_avatarbatch_made_are_both_fine(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    out = tmp_path / "empty"
    out.mkdir()
    assert succeeded(run(manifest, out, sandbox))["done"] == 1
    again = run(manifest, out, sandbox)
    assert "did not write" not in again.output
    assert (succeeded(again)["done"], summary(again)["submitted"]) == (1, 0)
    assert submissions(sandbox) == 1


# --- 2. output names that change or collide ---------------------------------------------------

NAMED = (
    "version: 1\ndefaults: {{portrait: media/face.png}}\n"
    'output: {{filename: "{{lang}}.{{ext}}"}}\njobs:\n{rows}'
)
ROW_A = "  - {{id: a, audio: media/en.wav, vars: {{lang: {lang}}}}}\n"
ROW_B = "  - {id: b, audio: media/es.wav, vars: {lang: en}}\n"  # 4 s: other bytes than a's 3 s


def named_manifest(path: Path, *rows: str) -> Path:
    path.write_text(NAMED.format(rows="".join(rows)))
    return path


def test_a_renamed_output_is_moved_not_paid_again_and_its_old_name_can_be_reused(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    out = tmp_path / "out"
    videos = out / "videos"
    named_manifest(manifest, ROW_A.format(lang="en"))
    succeeded(run(manifest, out, sandbox))
    original = sha256(videos / "en.mp4")

    named_manifest(manifest, ROW_A.format(lang="english"), ROW_B)
    second = succeeded(run(manifest, out, sandbox))
    assert (second["done"], second["submitted"]) == (2, 1)
    assert sha256(videos / "english.mp4") == original  # a's paid video, moved
    assert sha256(videos / "en.mp4") != original  # b's own, new video
    assert sorted(p.name for p in videos.iterdir()) == ["en.mp4", "english.mp4"]
    assert submissions(sandbox) == 2  # a was not paid again
    outputs = stored_outputs(out / "state.sqlite")
    assert [o["path"] for o in outputs["a"]] == ["videos/english.mp4"]
    assert [o["path"] for o in outputs["b"]] == ["videos/en.mp4"]
    assert outputs["a"][0]["sha256"] == original


def test_a_name_that_holds_another_jobs_paid_video_is_a_located_error(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    out = tmp_path / "out"
    named_manifest(manifest, ROW_A.format(lang="en"))
    succeeded(run(manifest, out, sandbox))
    before = (out / "videos" / "en.mp4").read_bytes()

    named_manifest(manifest, ROW_B)  # a left the manifest; b now names a's file
    message = clean_failure(run(manifest, out, sandbox), 2)
    assert "videos/en.mp4" in message and "'a'" in message
    line = manifest.read_text().splitlines().index(ROW_B.rstrip("\n")) + 1
    assert f"m.yaml:{line}:" in message  # the row of job b
    assert "job b" in message and "filename" in message
    assert (out / "videos" / "en.mp4").read_bytes() == before
    assert submissions(sandbox) == 1


# --- 3. videos deleted or changed after the run ------------------------------------------------


def test_deleted_truncated_or_edited_videos_are_fetched_again_for_free(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(THREE_JOBS)
    out = tmp_path / "out"
    state = out / "state.sqlite"
    videos = out / "videos"
    succeeded(run(manifest, out, sandbox))
    recorded = {job: outputs[0]["sha256"] for job, outputs in stored_outputs(state).items()}
    assert all(sha256(videos / f"{job}.mp4") == digest for job, digest in recorded.items())
    untouched = (videos / "c.mp4").stat().st_mtime_ns
    paid, fetched = submissions(sandbox), downloads(sandbox)

    (videos / "a.mp4").unlink()
    with (videos / "b.mp4").open("r+b") as handle:
        handle.truncate(100)
    status = cli(["status", "--state", str(state), "--json"])
    assert status.exit_code == 0, status.output
    damaged = json.loads(status.stdout)["damaged_videos"]
    assert set(damaged) == {"a", "b"}
    assert "missing" in damaged["a"] and "100 bytes" in damaged["b"]
    planned = cli(["plan", str(manifest), "--out", str(out), "--json"])
    statuses = {job["id"]: job["status"] for job in json.loads(planned.stdout)["jobs"]}
    assert statuses == {"a": "refetch", "b": "refetch", "c": "done"}
    assert json.loads(planned.stdout)["totals"]["to_run"]["jobs"] == 0  # nothing to pay for
    text = cli(["plan", str(manifest), "--out", str(out)])
    assert "2 done jobs whose video is missing or changed" in text.stdout

    assert succeeded(run(manifest, out, sandbox))["done"] == 3
    for job in ("a", "b"):
        assert sha256(videos / f"{job}.mp4") == recorded[job]
        verify_video(videos / f"{job}.mp4", output_format="MP4", expected_seconds=None)
    assert (videos / "c.mp4").stat().st_mtime_ns == untouched
    assert submissions(sandbox) == paid == 3  # nothing rendered or paid again
    assert downloads(sandbox) == fetched + 2  # just the two damaged ones

    # The same size, other bytes: only the hash can tell.
    data = bytearray((videos / "c.mp4").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (videos / "c.mp4").write_bytes(bytes(data))
    os.utime(videos / "c.mp4", ns=(untouched + 10**9, untouched + 10**9))
    status = cli(["status", "--state", str(state), "--json"])
    assert set(json.loads(status.stdout)["damaged_videos"]) == {"c"}
    succeeded(run(manifest, out, sandbox))
    assert sha256(videos / "c.mp4") == recorded["c"]
    assert submissions(sandbox) == 3


# --- 4. broken downloads ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["html_video", "short_body", "cut"])
def test_a_broken_download_is_never_saved_as_a_finished_video(
    media: Path, tmp_path: Path, kind: str
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    out = tmp_path / "out"
    faulty = QUICK.model_copy(update={"faults": FaultSpec.parse(f"{kind}=1")})
    with running_sandbox(faulty) as sandbox:
        first = run(manifest, out, sandbox)
        assert first.exit_code == 1, first.output
        assert "Traceback" not in first.output
        assert (summary(first)["done"], summary(first)["pending"]) == (0, 1)
        assert sandbox.stats()["faults"].get(kind, 0) >= 1
        assert list((out / "videos").iterdir()) == []  # no video, and no partial one
        assert statuses(out / "state.sqlite") == {"a": JobStatus.DOWNLOADING}
        assert stored_outputs(out / "state.sqlite") == {"a": []}
        assert submissions(sandbox) == 1

        sandbox.app.state.engine.faults.spec.rates[kind] = 0.0  # the CDN heals
        second = succeeded(run(manifest, out, sandbox))
        assert (second["done"], second["submitted"]) == (1, 0)
        assert submissions(sandbox) == 1  # billed once, downloaded at last
    video = out / "videos" / "a.mp4"
    verify_video(video, output_format="MP4", expected_seconds=3.0)
    assert stored_outputs(out / "state.sqlite")["a"][0]["sha256"] == sha256(video)


# --- 5. a moved folder ---------------------------------------------------------------------------


def test_a_moved_output_folder_keeps_its_reports_and_videos(
    sandbox: RunningSandbox, media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(THREE_JOBS)
    succeeded(run(manifest, tmp_path / "out", sandbox))
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "out", moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    report = cli(["report", "--state", "../moved/state.sqlite"])
    assert report.exit_code == 0, report.output
    status = cli(["status", "--state", "../moved/state.sqlite", "--json"])
    assert json.loads(status.stdout)["damaged_videos"] == {}
    root = moved.resolve()

    def inside(reference: str) -> Path:
        path = Path(reference) if Path(reference).is_absolute() else moved / reference
        assert path.resolve().is_relative_to(root), reference
        assert path.is_file(), reference
        return path

    with (moved / "cost_report.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if not row["id"].startswith("TOTAL")]
    paths = [inside(p) for row in rows for p in row["outputs"].split(";") if p]
    assert len(paths) == 3
    sources = re.findall(r'<video[^>]* src="([^"#]*)', (moved / "index.html").read_text())
    assert len(sources) == 3
    assert {inside(unquote(s)).resolve() for s in sources} == {p.resolve() for p in paths}

    paid, fetched = submissions(sandbox), downloads(sandbox)
    again = succeeded(run(manifest, moved, sandbox))
    assert (again["done"], again["submitted"]) == (3, 0)
    assert (submissions(sandbox), downloads(sandbox)) == (paid, fetched)


# --- 6. leftovers, the embedded sandbox, unwritable reports, a second Ctrl-C ---------------------


def test_stale_partial_files_are_removed_by_the_next_run(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    out = tmp_path / "out"
    succeeded(run(manifest, out, sandbox))
    (out / "videos" / ".x.mp4.1234abcd.part").write_bytes(b"half a video")
    (out / ".report.md.part").write_text("half a report")
    assert succeeded(run(manifest, out, sandbox))["submitted"] == 0
    assert leftovers(out) == []


def test_the_embedded_sandbox_keeps_its_store_with_the_rehearsal_and_nothing_elsewhere(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where a sandbox would spill
    before = set(Path(tempfile.gettempdir()).glob("avatarbatch-sandbox-*"))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--json", "--sandbox"]
    args += ["--sandbox-latency", "0", "--sandbox-render", "stub"]
    result = runner.invoke(app, args)
    assert succeeded(result)["done"] == 1
    assert (out / ".sandbox").is_dir()  # its tasks, for the next rehearsal to resume
    assert set(Path(tempfile.gettempdir()).glob("avatarbatch-sandbox-*")) == before
    assert list(private_tmp.iterdir()) == []
    verify_video(out / "videos" / "a.mp4", output_format="MP4", expected_seconds=3.0)


def test_reports_that_cannot_be_written_fail_the_run_and_leave_no_partial_file(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    out = tmp_path / "out"
    succeeded(run(manifest, out, sandbox))
    (out / "report.md").unlink()
    (out / "report.md").mkdir()  # our own report's name, now unwritable

    result = run(manifest, out, sandbox)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "could not write the reports" in str(summary(result)["message"])
    assert summary(result)["done"] == 1
    assert leftovers(out) == []
    assert submissions(sandbox) == 1


def test_a_second_sigint_exits_130_at_once(media: Path, tmp_path: Path) -> None:
    """The first SIGINT starts a graceful stop; the second, during it, leaves at once."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "avatarbatch", "run", str(manifest), "--out", str(out)]
    command += ["--sandbox", "--sandbox-latency", "5", "--sandbox-render", "stub"]
    with (tmp_path / "stdout.txt").open("w") as stdout:
        process = subprocess.Popen(
            command, cwd=tmp_path, stdout=stdout, stderr=subprocess.PIPE, text=True
        )
    lines: list[str] = []
    stopping = threading.Event()

    def read_stderr() -> None:
        for line in process.stderr or []:
            lines.append(line)
            if "stopping:" in line:
                stopping.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        wait_for_status(out / "state.sqlite", JobStatus.PROCESSING)  # rendering for 15 s
        process.send_signal(signal.SIGINT)
        # Two signals sent at once may reach the process as one: wait for the first.
        assert stopping.wait(HANG_GUARD), "".join(lines)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=HANG_GUARD)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=HANG_GUARD)
        reader.join(timeout=HANG_GUARD)
        if process.stderr is not None:
            process.stderr.close()
    stderr = "".join(lines)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert statuses(out / "state.sqlite") == {"a": JobStatus.PROCESSING}  # for the next run


def wait_for_status(state: Path, wanted: JobStatus, timeout: float = HANG_GUARD) -> None:
    """Poll the state file until some job has the status (state polling with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.exists():
            try:
                with StateStore.open(state) as store:
                    if store.counts().get(wanted.value, 0) > 0:
                        return
            except Exception:  # the file may be mid-creation
                pass
        time.sleep(0.05)
    raise AssertionError(f"no job reached {wanted.value} in time")


# --- 7. a flipped byte in a state row -------------------------------------------------------------


def test_a_job_row_that_is_not_utf8_is_a_clean_error_naming_the_job(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    out = tmp_path / "out"
    succeeded(run(manifest, out, sandbox))
    state = out / "state.sqlite"
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE jobs SET results = CAST(X'7B22ff' AS TEXT) WHERE id = 'a'")
    conn.close()

    for command in (
        ["status", "--state", str(state)],
        ["status", "--state", str(state), "--json"],
        ["report", "--state", str(state)],
        ["run", str(manifest), "--out", str(out)],
    ):
        message = clean_failure(cli(command, sandbox), 2)
        assert "job 'a'" in message, (command, message)
        assert str(state) in message
    assert submissions(sandbox) == 1


# --- found while writing these (each was a product bug) -----------------------------------------


def test_two_jobs_that_swap_output_names_keep_their_videos_and_their_folder(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    out = tmp_path / "out"
    videos = out / "videos"
    row_b = "  - {{id: b, audio: media/es.wav, vars: {{lang: {lang}}}}}\n"
    named_manifest(manifest, ROW_A.format(lang="en"), row_b.format(lang="es"))
    succeeded(run(manifest, out, sandbox))
    a, b = sha256(videos / "en.mp4"), sha256(videos / "es.mp4")

    named_manifest(manifest, ROW_A.format(lang="es"), row_b.format(lang="en"))
    assert succeeded(run(manifest, out, sandbox))["submitted"] == 0
    assert (sha256(videos / "es.mp4"), sha256(videos / "en.mp4")) == (a, b)  # swapped on disk
    with StateStore.open(out / "state.sqlite") as store:
        owners = {path: job for path, job in store.owner_map().items() if job}
    assert owners == {"videos/es.mp4": "a", "videos/en.mp4": "b"}
    third = run(manifest, out, sandbox)  # was: exit 2, "holds files ... (videos/es.mp4)"
    assert (succeeded(third)["submitted"], submissions(sandbox)) == (0, 2)


def test_stale_partial_files_in_nested_video_folders_are_removed_too(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\noutput: {filename: '{lang}/{id}.{ext}'}\n"
        "jobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav, vars: {lang: en}}\n"
    )
    out = tmp_path / "out"
    succeeded(run(manifest, out, sandbox))
    assert (out / "videos" / "en" / "a.mp4").is_file()
    (out / "videos" / "en" / ".a.mp4.1234abcd.part").write_bytes(b"half a video")
    assert succeeded(run(manifest, out, sandbox))["submitted"] == 0
    assert leftovers(out) == []


def test_a_state_file_kept_elsewhere_does_not_make_another_folders_files_its_own(
    sandbox: RunningSandbox, media: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB)
    state = tmp_path / "shared" / "state.sqlite"
    succeeded(run(manifest, tmp_path / "first", sandbox, "--state", str(state)))
    folder = tmp_path / "mine"
    for name, content in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)

    result = run(manifest, folder, sandbox, "--state", str(state))
    assert snapshot(folder) == USER_FILES  # was: index.html, report.* and a.mp4 overwritten
    assert "did not write" in clean_failure(result, 2)
