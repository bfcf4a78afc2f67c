"""Rehearse with the sandbox, then run for real: one state file per target and per manifest.

End to end through the CLI on real loopback HTTP. A second sandbox stands in for the real API
(RUNWARE_API_URL / --api-url), so the rehearsal's embedded sandbox and the "real" endpoint are
two servers with two ledgers, and every test can tell whose task, whose video, whose bill.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from avatarbatch.cli.commands import app
from avatarbatch.engine.place import target_of
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.store import JobStatus, StateStore

KEY = "sk-rehearsal-Zq9vW4t8"
STAND_IN = SandboxConfig(latency=0, fixed_latency=0, render="stub")
REHEARSAL = ("--sandbox", "--sandbox-render", "stub", "--sandbox-latency", "0")
HANG_GUARD = 60  #: seconds: a child process or a wait that takes longer is hanging
JOBS = ("a", "b", "c")
THREE_JOBS = (
    "version: 1\ndefaults: {portrait: media/face.png}\njobs:\n"
    "  - {id: a, audio: media/en.wav}\n"
    "  - {id: b, audio: media/es.wav}\n"
    "  - {id: c, audio: media/en.wav}\n"
)
runner = CliRunner()


@pytest.fixture
def api() -> Iterator[RunningSandbox]:
    """The stand-in for Runware's API: a sandbox of its own, reached by URL and key."""
    with running_sandbox(STAND_IN) as server:
        yield server


@pytest.fixture
def project(tmp_path: Path, media: Path) -> Path:
    """A project folder (manifest m.yaml beside its media/), outside the working directory."""
    folder = tmp_path / "proj"
    folder.mkdir()
    shutil.copytree(media, folder / "media")
    (folder / "m.yaml").write_text(THREE_JOBS)
    return folder


# --- the command line -------------------------------------------------------------------------


def cli(args: list[str], api: RunningSandbox | None = None) -> Result:
    env = {"RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": api.api_url} if api else {}
    return runner.invoke(app, args, env=env)


def real(manifest: Path | str, api: RunningSandbox, *extra: str) -> Result:
    return cli(["run", str(manifest), "--rps", "100", "--json", *extra], api)


def rehearse(manifest: Path | str, *extra: str) -> Result:
    return cli(["run", str(manifest), "--json", *REHEARSAL, *extra])


def last_json(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def succeeded(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return last_json(result)


def refused(result: Result, state: Path) -> str:
    """A refusal: exit 2, a JSON last line with the reason, naming the state file."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    end = last_json(result)
    assert set(end) == {"exit_code", "error"} and end["exit_code"] == 2, end
    error = str(end["error"])
    assert str(state) in error, error
    return error


def to_run(manifest: Path | str, *extra: str) -> int:
    """How many jobs `plan` says a run would submit."""
    result = cli(["plan", str(manifest), "--json", *extra])
    assert result.exit_code == 0, result.output
    return int(json.loads(result.stdout)["totals"]["to_run"]["jobs"])


# --- what the files say ---------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder` with its hash and mtime, and every folder: 'nothing written'
    is this unchanged.

    A lock file's mtime is left out: taking the lock writes the holder's pid into it (and
    empties it again), which is how any run starts, refused or not.
    """
    return {
        p.relative_to(folder).as_posix(): (
            ("folder", 0)
            if p.is_dir()
            else (sha256(p), 0 if p.name.endswith(".lock") else p.stat().st_mtime_ns)
        )
        for p in sorted(folder.rglob("*"))
    }


def ledger_uuids(state: Path) -> list[str]:
    with StateStore.open(state) as store:
        return [str(row["task_uuid"]) for row in store.tasks()]


def read_only(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)


def rows(database: Path, query: str) -> list[tuple[Any, ...]]:
    connection = read_only(database)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def until(probe: Callable[[], bool], what: str, timeout: float = HANG_GUARD) -> None:
    """Poll `probe` until it holds (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def some_job_processing(state: Path) -> bool:
    if not state.exists():
        return False
    try:
        found = rows(state, "SELECT count(*) FROM jobs WHERE status = 'processing'")
    except sqlite3.Error:  # mid-creation, or not migrated yet
        return False
    return bool(found[0][0])


def interrupted(
    command: list[str], env: dict[str, str], state: Path, how: signal.Signals, logs: Path
) -> int:
    """Start the run, signal it once some job is rendering; its exit code."""
    with (logs / "child.out").open("w") as out, (logs / "child.err").open("w") as err:
        process = subprocess.Popen(command, cwd=logs, env=env, stdout=out, stderr=err)
    try:
        until(lambda: some_job_processing(state) or process.poll() is not None, "a processing job")
        assert process.poll() is None, (logs / "child.err").read_text()
        process.send_signal(how)
        return process.wait(timeout=HANG_GUARD)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=HANG_GUARD)


def default_folder(project: Path, stem: str = "m") -> Path:
    return project / "out" / stem


# --- 1. rehearse, then run for real --------------------------------------------------------------


def test_a_rehearsal_then_a_real_run_submits_every_job_to_the_real_api(
    api: RunningSandbox, project: Path
) -> None:
    manifest = project / "m.yaml"
    folder = default_folder(project)
    rehearsal_folder = folder / "sandbox"

    rehearsal = succeeded(rehearse(manifest))
    assert (rehearsal["done"], rehearsal["submitted"]) == (3, 3)
    assert rehearsal["output_dir"] == str(rehearsal_folder)
    assert rehearsal["state_file"] == str(rehearsal_folder / "state.sqlite")
    assert api.ledger()["submissions"] == 0  # the rehearsal never reached the real API
    # The real folder has no state yet: every job is still to run, none for the rehearsal.
    assert to_run(manifest) == 3
    assert to_run(manifest, "--sandbox") == 0

    first = succeeded(real(manifest, api))
    assert (first["jobs"], first["submitted"], first["tasks_sent"]) == (3, 3, 3)
    assert (first["done"], first["failed"], first["skipped"]) == (3, 0, 0)
    assert first["output_dir"] == str(folder)
    assert first["state_file"] == str(folder / "state.sqlite")

    # Every job has its task at the real API, and the state's ledger is exactly those tasks.
    ledger = api.ledger()
    assert ledger["submissions"] == 3
    assert all(task["results"] == 1 for task in ledger["tasks"])
    real_uuids = ledger_uuids(folder / "state.sqlite")
    assert sorted(real_uuids) == sorted(task["taskUUID"] for task in ledger["tasks"])
    assert not set(real_uuids) & set(ledger_uuids(rehearsal_folder / "state.sqlite"))

    # The real folder's videos are the ones the real API served; the rehearsal's stay apart.
    served = api.videos()
    with StateStore.open(folder / "state.sqlite") as store:
        jobs = store.jobs()
    with StateStore.open(rehearsal_folder / "state.sqlite") as store:
        rehearsed = store.jobs()
    assert sorted(jobs) == sorted(rehearsed) == sorted(JOBS)
    for job_id in JOBS:
        video = jobs[job_id].results[0]["video_uuid"]
        assert served[video]["taskUUID"] == jobs[job_id].task_uuid
        assert sha256(folder / "videos" / f"{job_id}.mp4") == served[video]["sha256"]
        assert rehearsed[job_id].results[0]["video_uuid"] not in served
        assert (rehearsal_folder / "videos" / f"{job_id}.mp4").is_file()
        assert (
            sha256(rehearsal_folder / "videos" / f"{job_id}.mp4")
            == (rehearsed[job_id].outputs[0]["sha256"])
        )
    assert sorted(p.name for p in (folder / "videos").iterdir()) == [f"{j}.mp4" for j in JOBS]

    # status and plan read the right file for each.
    status = cli(["status", str(manifest), "--json"])
    assert json.loads(status.stdout)["target"] == target_of(api.api_url)
    status = cli(["status", str(manifest), "--sandbox", "--json"])
    assert json.loads(status.stdout)["target"] == "sandbox"
    report = cli(["report", str(manifest), "--sandbox"])
    assert report.exit_code == 0, report.output
    assert f"gallery: {rehearsal_folder / 'index.html'}" in " ".join(report.stdout.split())
    assert to_run(manifest) == 0
    again = succeeded(real(manifest, api))
    assert (again["submitted"], again["tasks_sent"], api.ledger()["submissions"]) == (0, 0, 3)


# --- 2. refusals: a rehearsal and a real run never share a state file ---------------------------


def test_a_rehearsal_and_a_real_run_never_share_a_state_file(
    api: RunningSandbox, project: Path
) -> None:
    manifest = project / "m.yaml"
    folder = default_folder(project)
    rehearsal_folder = folder / "sandbox"
    succeeded(rehearse(manifest))
    succeeded(real(manifest, api))
    embedded = rehearsal_folder / ".sandbox" / "sandbox.sqlite"
    rehearsal_tasks = rows(embedded, "SELECT uuid FROM tasks")
    before = fingerprint(project)
    posts = api.stats()["requests"]["http_posts"]

    # A real run pointed at the rehearsal's folder.
    error = refused(
        real(manifest, api, "--out", str(rehearsal_folder)), folder / "sandbox" / "state.sqlite"
    )
    assert "sandbox rehearsal" in error and "leave out --out" in error
    # A rehearsal pointed at the real folder.
    error = refused(rehearse(manifest, "--out", str(folder)), folder / "state.sqlite")
    assert f"real runs against {target_of(api.api_url)}" in error
    assert "leave out --out" in error
    # The same through --state alone.
    refused(
        real(manifest, api, "--state", str(rehearsal_folder / "state.sqlite")),
        rehearsal_folder / "state.sqlite",
    )
    refused(rehearse(manifest, "--state", str(folder / "state.sqlite")), folder / "state.sqlite")

    assert fingerprint(project) == before  # not a byte, not a new file, anywhere
    assert api.stats()["requests"]["http_posts"] == posts
    assert api.ledger()["submissions"] == 3
    assert rows(embedded, "SELECT uuid FROM tasks") == rehearsal_tasks


def test_tasks_open_at_one_api_url_keep_the_state_file_there_until_they_settle(
    project: Path, tmp_path: Path
) -> None:
    manifest = project / "m.yaml"
    state = default_folder(project) / "state.sqlite"
    slow_config = STAND_IN.model_copy(update={"fixed_latency": 1.0})
    with running_sandbox(slow_config) as first, running_sandbox(STAND_IN) as second:
        # A real run interrupted while its tasks render at the first URL.
        env = {**os.environ, "RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": first.api_url}
        command = [sys.executable, "-m", "avatarbatch", "run", str(manifest), "--json"]
        code = interrupted(command, env, state, signal.SIGINT, tmp_path)
        assert code == 130
        uploads = rows(state, "SELECT count(*) FROM uploads")[0][0]
        with StateStore.open(state) as store:  # closed last: it takes the WAL files away
            still_open = store.open_tasks()
        assert still_open >= 1 and uploads >= 1
        billed_at_first = first.ledger()["submissions"]
        before = fingerprint(project)

        error = refused(real(manifest, second, "--api-url", second.api_url), state)
        assert f"still open at {target_of(first.api_url)}" in error
        assert f"--api-url {target_of(first.api_url)}" in error
        assert fingerprint(project) == before
        assert second.stats()["requests"]["http_posts"] == 0
        assert first.ledger()["submissions"] == billed_at_first

        # Finished where they were sent (the same URL, spelt with a trailing slash), the tasks
        # need nothing more from the first URL.
        resumed = succeeded(real(manifest, first, "--api-url", first.api_url + "/"))
        assert (resumed["done"], resumed["failed"]) == (3, 0)
        assert first.ledger()["submissions"] == 3
        with StateStore.open(state) as store:
            assert store.open_tasks() == 0

        switched = succeeded(real(manifest, second, "--api-url", second.api_url))
        assert (switched["submitted"], switched["done"]) == (0, 3)
        assert second.stats()["requests"]["http_posts"] == 0  # nothing to ask it
        assert rows(state, "SELECT count(*) FROM uploads") == [(0,)]  # the first URL's
        status = cli(["status", str(manifest), "--json"])
        assert json.loads(status.stdout)["target"] == target_of(second.api_url)

        # A new job goes to the second URL, with its inputs uploaded there (the first URL's
        # upload UUIDs mean nothing to it).
        (project / "m.yaml").write_text(THREE_JOBS + "  - {id: d, audio: media/es.wav}\n")
        added = succeeded(real(manifest, second, "--api-url", second.api_url))
        assert (added["submitted"], added["done"], added["failed"]) == (1, 4, 0)
        ledger = second.ledger()
        assert ledger["submissions"] == 1 and ledger["tasks"][0]["results"] == 1
        requests = second.stats()["requests"]
        assert (requests["imageUpload"], requests["mediaStorage"]) == (1, 1)
        with StateStore.open(state) as store:
            record = store.get("d")
        assert record is not None and record.task_uuid == ledger["tasks"][0]["taskUUID"]
        assert first.ledger()["submissions"] == 3


def test_a_refused_run_leaves_no_new_folder_behind(api: RunningSandbox, project: Path) -> None:
    manifest = project / "m.yaml"
    rehearsal_state = default_folder(project) / "sandbox" / "state.sqlite"
    succeeded(rehearse(manifest))
    before = fingerprint(project)
    # A real run on the rehearsal's state file, its output folder the default one (new).
    refused(real(manifest, api, "--state", str(rehearsal_state)), rehearsal_state)
    assert api.stats()["requests"]["http_posts"] == 0
    assert fingerprint(project) == before  # fails: out/m/videos/ was made


# --- 3. one manifest per state file --------------------------------------------------------------


def test_two_manifests_of_one_name_do_not_share_a_state_file_unless_told(
    api: RunningSandbox, project: Path
) -> None:
    yaml_manifest = project / "promo.yaml"
    csv_manifest = project / "promo.csv"
    yaml_manifest.write_text(THREE_JOBS)
    with csv_manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "portrait", "audio"])
        writer.writerows(
            [
                ["a", "media/face.png", "media/en.wav"],
                ["b", "media/face.png", "media/es.wav"],
                ["c", "media/face.png", "media/en.wav"],
            ]
        )
    folder = default_folder(project, "promo")
    state = folder / "state.sqlite"
    assert succeeded(real(yaml_manifest, api))["submitted"] == 3
    before = fingerprint(project)

    error = refused(real(csv_manifest, api), state)
    assert str(yaml_manifest) in error
    assert "--state" in error and "--out" in error
    assert fingerprint(project) == before
    assert to_run(yaml_manifest) == 0
    plan = cli(["plan", str(csv_manifest), "--json"])
    assert plan.exit_code == 2 and str(yaml_manifest) in last_json(plan)["error"]
    assert api.ledger()["submissions"] == 3

    # Named explicitly, the state file is taken over; the same rows are the same jobs.
    taken = succeeded(real(csv_manifest, api, "--state", str(state)))
    assert (taken["done"], taken["submitted"]) == (3, 0)
    assert api.ledger()["submissions"] == 3
    # From now on it is the CSV's: the YAML is the other manifest.
    assert str(csv_manifest) in refused(real(yaml_manifest, api), state)


def test_a_project_folder_moved_as_a_whole_keeps_its_state(
    api: RunningSandbox, project: Path, tmp_path: Path
) -> None:
    succeeded(rehearse(project / "m.yaml"))
    assert succeeded(real(project / "m.yaml", api))["submitted"] == 3
    moved = tmp_path / "moved"
    shutil.move(project, moved)

    assert to_run(moved / "m.yaml") == 0
    assert to_run(moved / "m.yaml", "--sandbox") == 0
    again = succeeded(real(moved / "m.yaml", api))
    assert (again["submitted"], again["done"]) == (0, 3)
    assert again["state_file"] == str(moved / "out" / "m" / "state.sqlite")
    assert succeeded(rehearse(moved / "m.yaml"))["submitted"] == 0
    assert api.ledger()["submissions"] == 3


# --- 4. the default folder is beside the manifest, wherever the command runs --------------------


def test_the_default_folder_is_found_from_any_working_directory(
    api: RunningSandbox, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    first = succeeded(real("m.yaml", api))
    assert first["submitted"] == 3
    assert first["state_file"] == str(project / "out" / "m" / "state.sqlite")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert to_run("../proj/m.yaml") == 0
    again = succeeded(real("../proj/m.yaml", api))
    assert (again["submitted"], again["done"]) == (0, 3)
    assert Path(again["state_file"]).resolve() == (project / "out" / "m" / "state.sqlite")
    assert list(elsewhere.iterdir()) == []  # no out/ made where the command ran
    assert api.ledger()["submissions"] == 3


# --- 5. a state file at the old default place -----------------------------------------------------


def test_a_state_file_at_the_old_default_place_is_used_and_said_so(
    api: RunningSandbox, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    manifest = project / "m.yaml"
    old = work / "out" / "m"
    # What a run without --out did before: out/<name>/ in the working directory.
    assert succeeded(real(manifest, api, "--out", "out/m"))["submitted"] == 3

    result = real(manifest, api)
    again = succeeded(result)
    assert (again["submitted"], again["done"]) == (0, 3)
    assert again["state_file"] == str(old / "state.sqlite")
    assert "old default place" in result.stderr
    assert str(Path("out/m/state.sqlite")) in result.stderr
    assert not (project / "out").exists()
    assert to_run(manifest) == 0
    assert api.ledger()["submissions"] == 3

    # A rehearsal is another kind of run: it does not take the old real state.
    result = cli(["plan", str(manifest), "--sandbox", "--json"])
    assert result.exit_code == 0, result.output
    assert "old default place" not in result.output
    assert json.loads(result.stdout)["totals"]["to_run"]["jobs"] == 3


def test_an_old_default_place_of_another_manifest_is_left_alone(
    api: RunningSandbox, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    shutil.copytree(project, other)  # another project whose manifest is m.yaml too
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert succeeded(real(project / "m.yaml", api, "--out", "out/m"))["submitted"] == 3

    result = cli(["plan", str(other / "m.yaml"), "--json"])
    # Fails: "out/m/state.sqlite belongs to another manifest, .../proj/m.yaml", after a
    # warning that it is "using the state file at the old default place".
    assert "belongs to another manifest" not in result.output
    assert to_run(other / "m.yaml") == 3
    ran = succeeded(real(other / "m.yaml", api))
    assert ran["state_file"] == str(other / "out" / "m" / "state.sqlite")


# --- 6. an interrupted rehearsal resumes like a run against the real API -------------------------


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_an_interrupted_rehearsal_resumes_and_bills_each_job_once(
    project: Path, tmp_path: Path, how: signal.Signals
) -> None:
    manifest = project / "m.yaml"
    folder = default_folder(project) / "sandbox"
    state = folder / "state.sqlite"
    # 0.3 s per audio second: renders of 1.2-1.5 s, long enough to be caught mid-render.
    slow = ["--sandbox", "--sandbox-render", "stub", "--sandbox-latency", "0.3"]
    command = [sys.executable, "-m", "avatarbatch", "run", str(manifest), "--json", *slow]
    code = interrupted(command, dict(os.environ), state, how, tmp_path)
    assert code == (130 if how is signal.SIGINT else -signal.SIGKILL)
    if how is signal.SIGINT:
        end = json.loads((tmp_path / "child.out").read_text().strip().splitlines()[-1])
        assert end["exit_code"] == 130

    result = cli(["run", str(manifest), "--json", *slow])
    resumed = succeeded(result)
    assert (resumed["done"], resumed["failed"], resumed["pending"]) == (3, 0, 0)
    with StateStore.open(state) as store:
        jobs = store.jobs()
        ledger = store.tasks()
    assert {job_id: job.status for job_id, job in jobs.items()} == dict.fromkeys(
        JOBS, JobStatus.DONE
    )
    assert {job_id: job.attempts for job_id, job in jobs.items()} == dict.fromkeys(JOBS, 1)
    assert sorted(row["job_id"] for row in ledger) == list(JOBS)  # one task per job
    assert all(row["status"] == "billed" for row in ledger)
    with (folder / "cost_report.csv").open(newline="") as handle:
        report = {row["id"]: row for row in csv.DictReader(handle)}
    assert all(report[job_id]["attempts"] == "1" for job_id in JOBS)

    # The embedded sandbox billed each job once, under the task UUID the state file holds.
    embedded = folder / ".sandbox" / "sandbox.sqlite"
    tasks = rows(embedded, "SELECT uuid FROM tasks")
    results = rows(embedded, "SELECT task_uuid, status FROM results")
    assert sorted(uuid for (uuid,) in tasks) == sorted(row["task_uuid"] for row in ledger)
    assert sorted(results) == sorted((row["task_uuid"], "success") for row in ledger)
    for job_id in JOBS:
        assert (folder / "videos" / f"{job_id}.mp4").is_file()


def test_a_rehearsal_from_before_in_the_real_folder_is_explained(
    api: RunningSandbox, project: Path
) -> None:
    """Rehearsals used to share `out/<name>/` with real runs: such a state is not delivered as
    the real result, and the message says where it should go."""
    manifest = project / "m.yaml"
    folder = default_folder(project)
    succeeded(rehearse(manifest, "--out", str(folder)))
    error = refused(real(manifest, api), folder / "state.sqlite")
    assert "made before rehearsals got a folder of their own" in error
    assert str(folder / "sandbox") in error
    assert api.ledger()["tasks"] == []
