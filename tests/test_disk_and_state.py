"""Disks and files that fail: an unwritable output folder, a full disk mid-download, a state
file that is locked or damaged. Each gets a clear message and an exit code, never a
traceback; no partial video under its final name; the state file stays usable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile import Exchange, Serving, serving
from pydantic import SecretStr
from starlette.responses import JSONResponse, Response
from typer.testing import CliRunner, Result

from avatarbatch.cli.commands import app
from avatarbatch.config import PollTiming, RunSettings
from avatarbatch.engine.batch import run_batch
from avatarbatch.errors import UsageError
from avatarbatch.manifest.preflight import preflight
from avatarbatch.runware.client import ClientSettings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.render import pad_video, render_stub
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state import store as state_module
from avatarbatch.state.store import JobStatus, StateStore
from conftest import as_unprivileged

QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)
QUICK_POLL = PollTiming(initial=0.05, min_interval=0.05, max_interval=0.3)
NOWHERE = "http://127.0.0.1:9/v1"  #: an API no request may reach
HANG_GUARD = 60  #: seconds: a run or a child process that takes longer is hanging
TWO_JOBS = (
    "version: 1\njobs:\n"
    "  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    # Both 3 s long: the big-video test serves one real 3 s video for every result.
    "  - {id: b, portrait: media/face.png, audio: media/en.wav}\n"
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


def cli_run(args: list[str], api_url: str) -> Result:
    env = {"RUNWARE_API_KEY": "test-key", "RUNWARE_API_URL": api_url}
    return runner.invoke(app, ["run", *args, "--json"], env=env)


def clean_failure(result: Result, code: int) -> str:
    """The CLI's output, once it is known to be a message and an exit code, not a traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return " ".join(result.output.split())  # rich may wrap a long path


def summary(result: Result) -> dict[str, object]:
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def quick_options(api_url: str, out: Path) -> RunSettings:
    settings = ClientSettings(
        api_url=api_url, api_key=SecretStr("test-key"), backoff_initial=0.01, backoff_max=0.05
    )
    return RunSettings(client=settings, out=out, rps=200, poll=QUICK_POLL)


def complete_run(manifest: Path, api_url: str, out: Path) -> None:
    done = asyncio.run(asyncio.wait_for(run_batch(manifest, quick_options(api_url, out)), 60))
    assert (done.exit_code, done.done) == (0, 2), done


# --- an output folder that cannot be written -----------------------------------------------------


def test_an_output_folder_under_a_file_is_a_usage_error_before_anything_is_sent(
    sandbox: RunningSandbox, manifest: Path, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "out"
    state = tmp_path / "elsewhere" / "state.sqlite"  # so the state lock cannot fail first
    args = [str(manifest), "--out", str(out), "--state", str(state)]
    message = clean_failure(cli_run(args, sandbox.api_url), 2)
    assert f"cannot write into the output folder {out / 'videos'}: Not a directory" in message
    assert sandbox.stats()["requests"]["http_posts"] == 0  # nothing uploaded, nothing paid
    with pytest.raises(UsageError, match="Not a directory"):  # the library gets the same
        asyncio.run(run_batch(manifest, quick_options(sandbox.api_url, out)))


def test_a_read_only_output_folder_is_a_clear_message_and_exit_2(readable_batch: Path) -> None:
    root = readable_batch
    manifest = root / "m.yaml"
    out = root / "out"
    out.mkdir()
    if os.geteuid() == 0:
        os.chown(out, 65534, 65534)  # the runner's own folder: only the mode stops it
    out.chmod(0o500)
    # The child cannot read the interpreter's lazily imported modules: load them first,
    # by running the same failure once as root.
    assert preflight(manifest).ok
    (root / "afile").write_text("not a folder")
    clean_failure(cli_run([str(manifest), "--out", str(root / "afile" / "out")], NOWHERE), 2)

    def attempt() -> str:
        os.chdir(root)
        result = cli_run([str(manifest), "--out", str(out)], NOWHERE)
        return f"{result.exit_code}|{result.output}"

    code, _, output = as_unprivileged(attempt).partition("|")
    assert code == "2", output
    assert "Traceback" not in output
    text = " ".join(output.split())
    assert f"cannot write into the output folder {out / 'videos'}: Permission denied" in text
    assert not (out / "videos").exists() and not (out / "state.sqlite").exists()


# --- a full disk during a download ---------------------------------------------------------------

# Runs the CLI with a file-size limit: a write past it fails with EFBIG ("File too large"),
# exactly where a full disk fails with ENOSPC, and the state file stays far below it.
LIMITED_CLI = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not death by signal
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.executable, [sys.executable, "-m", "avatarbatch", "run", *sys.argv[2:]])
"""
LIMIT = 3 * 1024 * 1024
VIDEO_BYTES = 8 * 1024 * 1024


def big_videos(exchange: Exchange) -> Response:
    answer = exchange.answer
    for item in answer.get("data", []):
        if item.get("videoURL"):
            item["videoURL"] = f"{exchange.base_url}/hostile/big"
    return JSONResponse(answer, exchange.status)


@pytest.fixture
def big_video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    # A real video padded to VIDEO_BYTES: every download is checked to be a video.
    folder = tmp_path_factory.mktemp("big")
    asyncio.run(render_stub(3.0, "MP4", folder / "a.mp4", cache_dir=folder))
    pad_video(folder / "a.mp4", VIDEO_BYTES)
    with serving(QUICK) as server:
        server.api.big_bytes = VIDEO_BYTES
        server.api.big_video = (folder / "a.mp4").read_bytes()
        server.api.lie("getResponse", big_videos)
        yield server


def test_a_full_disk_during_a_download_stops_cleanly_and_the_next_run_completes(
    big_video_server: Serving, manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARE_")}
    env |= {"RUNWARE_API_KEY": "test-key", "RUNWARE_API_URL": big_video_server.api_url}
    args = [str(LIMIT), str(manifest), "--out", str(out), "--json", "--rps", "100"]
    limited = subprocess.run(
        [sys.executable, "-c", LIMITED_CLI, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert "Traceback" not in limited.stderr, limited.stderr
    assert limited.returncode == 1, limited.stderr
    result = json.loads(limited.stdout.strip().splitlines()[-1])
    assert result["done"] == 0 and result["pending"] == 2, result
    assert "stopped: cannot write" in result["message"] and "File too large" in result["message"]
    assert "the next run downloads it again" in limited.stderr
    videos = out / "videos"
    assert not list(videos.iterdir()), "a partial video was left behind"
    with StateStore.open(out / "state.sqlite") as store:
        statuses = {r.id: r.status for r in store.jobs().values()}
    assert JobStatus.DOWNLOADING in statuses.values() and JobStatus.DONE not in statuses.values()

    paid = big_video_server.api.engine.ledger()["submissions"]
    again = cli_run([str(manifest), "--out", str(out)], big_video_server.api_url)
    assert again.exit_code == 0, again.output
    assert summary(again)["done"] == 2
    assert big_video_server.api.engine.ledger()["submissions"] == paid == 2  # nothing paid twice
    expected = hashlib.sha256(big_video_server.api.big_video or b"").hexdigest()
    for name in ("a.mp4", "b.mp4"):
        assert hashlib.sha256((videos / name).read_bytes()).hexdigest() == expected
    assert sorted(p.name for p in videos.iterdir()) == ["a.mp4", "b.mp4"]


# --- a state file that is locked ----------------------------------------------------------------

FLOCK_HOLDER = """
import sys
from pathlib import Path
from avatarbatch.state.lock import state_lock
with state_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""
SQLITE_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder() -> Iterator[Callable[[str, Path], subprocess.Popen[str]]]:
    """Start another process that holds a lock on a state file until its stdin closes."""
    children: list[subprocess.Popen[str]] = []

    def start(script: str, path: Path) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        return child

    yield start
    for child in children:
        if child.returncode is None:
            child.communicate(timeout=HANG_GUARD)


def release(child: subprocess.Popen[str]) -> None:
    """Let the holder go: it closes its lock and exits."""
    child.communicate(timeout=HANG_GUARD)
    assert child.returncode == 0


def test_a_state_file_locked_by_another_run_is_refused_with_exit_2(
    sandbox: RunningSandbox,
    manifest: Path,
    tmp_path: Path,
    holder: Callable[[str, Path], subprocess.Popen[str]],
) -> None:
    out = tmp_path / "out"
    child = holder(FLOCK_HOLDER, out / "state.sqlite")
    message = clean_failure(cli_run([str(manifest), "--out", str(out)], sandbox.api_url), 2)
    state = out / "state.sqlite"
    assert f"another avatarbatch run is using {state} (pid {child.pid})" in message
    assert sandbox.stats()["requests"]["http_posts"] == 0
    release(child)
    complete_run(manifest, sandbox.api_url, out)


def test_a_state_file_another_program_holds_for_writing_is_a_clear_error(
    sandbox: RunningSandbox,
    manifest: Path,
    tmp_path: Path,
    holder: Callable[[str, Path], subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    state = out / "state.sqlite"
    StateStore.open(state).close()  # an existing (empty) state file, in WAL mode
    child = holder(SQLITE_HOLDER, state)
    monkeypatch.setattr(state_module, "BUSY_TIMEOUT", 0.2)  # instead of 10 s of patience
    message = clean_failure(cli_run([str(manifest), "--out", str(out)], sandbox.api_url), 2)
    assert f"cannot write the state file {state}: database is locked" in message
    assert sandbox.stats()["requests"]["http_posts"] == 0
    release(child)
    complete_run(manifest, sandbox.api_url, out)


# --- a state file that is damaged ----------------------------------------------------------------


def damaged_copy(manifest: Path, api_url: str, tmp_path: Path) -> Path:
    """A real state file from a finished run, with the first page of its jobs table garbled."""
    out = tmp_path / "out"
    complete_run(manifest, api_url, out)
    state = out / "state.sqlite"
    with sqlite3.connect(state) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(state.read_bytes())
    start = (root - 1) * page_size
    data[start : start + page_size] = os.urandom(page_size)
    state.write_bytes(bytes(data))
    return state


@pytest.mark.parametrize("damage", ["random bytes", "a garbled page"])
def test_a_damaged_state_file_is_refused_by_name_and_left_exactly_as_it_was(
    sandbox: RunningSandbox, manifest: Path, tmp_path: Path, damage: str
) -> None:
    out = tmp_path / "out"
    if damage == "random bytes":
        state = out / "state.sqlite"
        out.mkdir()
        state.write_bytes(os.urandom(64 * 1024))
    else:
        state = damaged_copy(manifest, sandbox.api_url, tmp_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    original = state.read_bytes()
    posts = sandbox.stats()["requests"]["http_posts"]

    message = clean_failure(cli_run([str(manifest), "--out", str(out)], sandbox.api_url), 2)
    assert str(state) in message
    assert "not a usable avatarbatch state file" in message or "is damaged" in message
    status = clean_failure(runner.invoke(app, ["status", "--state", str(state)]), 2)
    assert str(state) in status
    assert state.read_bytes() == original, "the damaged file was written to"
    assert sandbox.stats()["requests"]["http_posts"] == posts  # nothing sent, nothing paid
