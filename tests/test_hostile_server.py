"""A whole run against a server that lies: every answer classified, no hang, nothing outside OUT.

The server is the real sandbox wrapped by `hostile.HostileApi`, which replaces chosen answers.
Each case runs `run_batch` on a one-job manifest and checks what a person would see: the run
ends in bounded time with a summary (never an exception), exit 1, the job failed with a
readable reason or left unfinished for the next run (which then completes, paying once), no
`.part` file anywhere, and no file written outside the output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile import TEN_GB, Exchange, Lie, Serving, serving
from pydantic import SecretStr
from starlette.responses import JSONResponse, Response, StreamingResponse
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from avatarbatch.config import PollTiming, RunSettings
from avatarbatch.engine.session import run_batch
from avatarbatch.engine.summary import RunSummary
from avatarbatch.runware.client import (
    MAX_RESPONSE_BYTES,
    ClientSettings,
    RunwareClient,
    make_http_client,
)
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.render import render_stub
from avatarbatch.state.store import JobRecord, JobStatus, StateStore

QUICK_POLL = PollTiming(initial=0.05, min_interval=0.05, max_interval=0.3)
QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)
JOB_TIMEOUT = 0.6  #: how long a job waits for a task that never finishes
HANG_GUARD = 60.0  #: a run that takes this long is hanging: fail the test, do not stall CI
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
MANIFEST = "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    # A real video of the manifest's audio length: every download is checked to be one.
    folder = tmp_path_factory.mktemp("video")
    asyncio.run(render_stub(3.0, "MP4", folder / "a.mp4", cache_dir=folder))
    with serving(QUICK) as running:
        running.api.video = (folder / "a.mp4").read_bytes()
        yield running


@pytest.fixture
def server(shared_server: Serving) -> Serving:
    """The module's server, honest again and with fresh counters (starting it costs 0.3 s)."""
    api = shared_server.api
    api.honest()
    api.sent.clear()
    api.hits.clear()
    return shared_server


def submissions(server: Serving) -> int:
    return int(server.api.engine.ledger()["submissions"])


@pytest.fixture
def manifest(tmp_path: Path, media: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    return path


def options(
    server: Serving, tmp_path: Path, job_timeout: float = JOB_TIMEOUT, **client: Any
) -> RunSettings:
    settings = ClientSettings(
        api_url=server.api_url,
        api_key=SecretStr("test-key"),
        backoff_initial=0.01,
        backoff_max=0.05,
        max_attempts=2,
        download_timeout=0.5,
        request_timeout=0.5,
        **client,
    )
    return RunSettings(
        client=settings,
        out=tmp_path / "out",
        rps=200,
        poll=QUICK_POLL,
        job_timeout=job_timeout,
    )


def run(manifest: Path, batch_options: RunSettings) -> tuple[RunSummary, float]:
    """The run and how long it took; a hang fails the test instead of stalling it."""
    started = time.monotonic()
    summary = asyncio.run(asyncio.wait_for(run_batch(manifest, batch_options), HANG_GUARD))
    return summary, time.monotonic() - started


def listing(root: Path, outside_of: Path) -> set[str]:
    """Every path under `root` except those inside `outside_of`."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p != outside_of and outside_of not in p.parents
    }


def job(tmp_path: Path) -> JobRecord:
    with StateStore.open(tmp_path / "out" / "state.sqlite") as store:
        record = store.get("a")
    assert record is not None
    return record


def check_contained(tmp_path: Path, before: set[str]) -> None:
    out = tmp_path / "out"
    assert listing(tmp_path, out) == before, "a file was written outside the output folder"
    assert not list(out.rglob("*.part")), "a partial download was left behind"
    assert not list(out.rglob("escaped*")) and not Path("/escaped.mp4").exists()
    videos = {p.name for p in (out / "videos").rglob("*") if p.is_file()}
    assert videos <= {"a.mp4"}, videos


# --- scripted lies -------------------------------------------------------------------------------


def plain(body: bytes, status: int = 200, media_type: str = "application/json") -> Lie:
    return lambda exchange: Response(body, status, media_type=media_type)


def results(edit: Callable[[dict[str, Any], str], None]) -> Lie:
    """Let the poll through, but rewrite each finished result with `edit(item, base_url)`."""

    def lie(exchange: Exchange) -> Response:
        answer = exchange.answer
        for item in answer.get("data", []):
            if item.get("videoURL"):
                edit(item, exchange.base_url)
        return JSONResponse(answer, exchange.status)

    return lie


def video_url(url: str) -> Lie:
    return results(lambda item, base: item.update(videoURL=url.format(base=base)))


def every_status(status: str) -> Lie:
    """Every task of the poll in a status nobody has heard of, for ever."""

    def lie(exchange: Exchange) -> Response:
        items = [
            {"taskType": "videoInference", "taskUUID": t["taskUUID"], "status": status}
            for t in exchange.tasks
        ]
        return JSONResponse({"data": items})

    return lie


def huge_answer(exchange: Exchange) -> Response:
    stream = exchange.api.zeros("10 GB answer", TEN_GB)
    return StreamingResponse(stream, headers={"content-length": str(TEN_GB)})


def endless_answer(exchange: Exchange) -> Response:
    return StreamingResponse(exchange.api.zeros("answer", None), media_type="application/json")


def trickling_answer(exchange: Exchange) -> Response:
    stream = exchange.api.zeros("answer", 1 << 20, chunk=1, pause=0.05)
    return StreamingResponse(stream, headers={"content-length": str(1 << 20)})


def rejected_upload(exchange: Exchange) -> Response:
    error = {
        "code": "invalidImage",
        "message": "The image could not be processed.",
        "parameter": "image",
        "taskUUID": exchange.tasks[0]["taskUUID"],
    }
    return JSONResponse({"errors": [error]}, 400)


def request_level_rejection(exchange: Exchange) -> Response:
    error = {"code": "unsupportedRequest", "message": "getResponse is gone (we changed the API)."}
    return JSONResponse({"errors": [error]}, 400)


# --- answers that leave the job for the next run -------------------------------------------------

# (task type, lie, status the job is left in): each is transient (or not the job's fault), so
# the run gives up on it in bounded time and the next run carries on from the state file.
UNFINISHED = {
    "poll: not JSON": ("getResponse", plain(b"surprise!", media_type="text/plain"), "processing"),
    "poll: an HTML 502 page": ("getResponse", plain(HTML_502, 502, "text/html"), "processing"),
    "poll: truncated JSON": (
        "getResponse",
        plain(b'{"data": [{"taskType": "videoInference", "taskUU'),
        "processing",
    ),
    "poll: data of the wrong type": ("getResponse", plain(b'{"data": {"x": 1}}'), "processing"),
    "poll: data items of the wrong type": (
        "getResponse",
        plain(b'{"data": [1, "x", null]}'),
        "processing",
    ),
    "poll: an unknown status for ever": ("getResponse", every_status("levitating"), "processing"),
    "poll: a request-level rejection": ("getResponse", request_level_rejection, "processing"),
    "poll: a 10 GB answer": ("getResponse", huge_answer, "processing"),
    "poll: an answer that never ends": ("getResponse", endless_answer, "processing"),
    "poll: an answer that trickles": ("getResponse", trickling_answer, "processing"),
    "submit: not JSON": ("videoInference", plain(b"<ok/>", media_type="text/xml"), "submitting"),
    "submit: a 10 GB answer": ("videoInference", huge_answer, "submitting"),
    "submit: an answer that trickles": ("videoInference", trickling_answer, "submitting"),
    "upload: an HTML 502 page": ("imageUpload", plain(HTML_502, 502, "text/html"), "uploading"),
    "upload: truncated JSON": ("imageUpload", plain(b'{"data": [{"imageUUID'), "uploading"),
}


@pytest.mark.parametrize("case", list(UNFINISHED))
def test_a_garbled_answer_leaves_the_job_for_the_next_run_which_completes_it(
    server: Serving, manifest: Path, tmp_path: Path, case: str
) -> None:
    task_type, lie, left_in = UNFINISHED[case]
    before = listing(tmp_path, tmp_path / "out")
    paid = submissions(server)
    server.api.lie(task_type, lie)
    summary, took = run(manifest, options(server, tmp_path))
    assert server.api.hits[f"lie:{task_type}"] > 0
    assert (summary.exit_code, summary.failed, summary.pending) == (1, 0, 1), summary
    assert "1 unfinished" in summary.message
    assert took < JOB_TIMEOUT + 10, f"bounded by the job timeout, took {took:.1f} s"
    assert job(tmp_path).status == left_in
    check_contained(tmp_path, before)
    assert server.api.sent["10 GB answer"] < 64 * 1024 * 1024  # refused on its Content-Length
    assert server.api.sent["answer"] < 40 * MAX_RESPONSE_BYTES  # a few capped reads at most

    server.api.honest()
    again, _ = run(manifest, options(server, tmp_path, job_timeout=30))  # no hurry now
    assert (again.exit_code, again.done) == (0, 1), again
    assert submissions(server) == paid + 1, "the next run paid twice"
    record = job(tmp_path)
    assert record.status is JobStatus.DONE and record.attempts == 1
    check_contained(tmp_path, before)


# --- answers that fail the job, with a reason ----------------------------------------------------

# (task type, lie, client settings, words of the reason kept in the state file)
FAILED: dict[str, tuple[str, Lie, dict[str, Any], str]] = {
    "videoURL file:///etc/passwd": (
        "getResponse",
        video_url("file:///etc/passwd"),
        {},
        "videoURL is not an http(s) URL",
    ),
    "videoURL ftp://": (
        "getResponse",
        video_url("ftp://127.0.0.1/video.mp4"),
        {},
        "videoURL is not an http(s) URL",
    ),
    "videoURL javascript:": (
        "getResponse",
        video_url("javascript:alert(1)"),
        {},
        "videoURL is not an http(s) URL",
    ),
    "videoURL that is not a string": (
        "getResponse",
        results(lambda item, base: item.update(videoURL={"href": base})),
        {},
        "unusable result",
    ),
    "a video that claims 10 GB": (
        "getResponse",
        video_url("{base}/hostile/huge"),
        {},
        "10,000,000,000 bytes, over the limit",
    ),
    "a video without a length that never ends": (
        "getResponse",
        video_url("{base}/hostile/endless"),
        {"max_download_bytes": 1 << 20},
        "exceeded 1,048,576 bytes",
    ),
    "a video behind a redirect loop": (
        "getResponse",
        video_url("{base}/hostile/loop/1"),
        {},
        "redirects in a loop",
    ),
    "a video that is gone": (
        "getResponse",
        video_url("{base}/sandbox/video/00000000-0000-0000-0000-000000000000.mp4"),
        {},
        "HTTP 404",
    ),
    "upload: the API refuses the image": (
        "imageUpload",
        rejected_upload,
        {},
        "invalidImage (image): The image could not be processed.",
    ),
}


@pytest.mark.parametrize("case", list(FAILED))
def test_a_hostile_answer_fails_the_job_with_a_reason(
    server: Serving, manifest: Path, tmp_path: Path, case: str
) -> None:
    task_type, lie, client, reason = FAILED[case]
    before = listing(tmp_path, tmp_path / "out")
    server.api.lie(task_type, lie)
    summary, took = run(manifest, options(server, tmp_path, **client))
    assert (summary.exit_code, summary.failed, summary.pending) == (1, 1, 0), summary
    assert took < 15, f"took {took:.1f} s"
    record = job(tmp_path)
    assert record.status is JobStatus.FAILED and not record.outputs
    assert reason in (record.error_message or ""), record.error_message
    check_contained(tmp_path, before)
    assert not (tmp_path / "out" / "videos" / "a.mp4").exists()
    assert server.api.sent["huge"] < 64 * 1024 * 1024  # refused on its Content-Length
    assert server.api.sent["endless"] < 64 * 1024 * 1024  # stopped soon after the 1 MB cap
    failures = (tmp_path / "out" / "failures.yaml").read_text()
    assert "id: a" in failures and "root:" not in failures


def test_a_refused_upload_fails_its_job_and_the_others_carry_on(
    server: Serving, tmp_path: Path, media: Path
) -> None:
    manifest = tmp_path / "two.yaml"
    manifest.write_text(
        "version: 1\njobs:\n"
        "  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
        "  - {id: b, portrait: media/face.png, audio: media/es.wav}\n"
    )
    refused: list[str] = []

    def first_audio_refused(exchange: Exchange) -> Response | None:
        if refused:
            return None  # the sandbox's own answer
        refused.append(exchange.tasks[0]["taskUUID"])
        error = {"code": "invalidAudio", "message": "Unreadable audio.", "taskUUID": refused[0]}
        return JSONResponse({"errors": [error]}, 400)

    server.api.lie("mediaStorage", first_audio_refused)
    summary, _ = run(manifest, options(server, tmp_path))
    assert (summary.exit_code, summary.done, summary.failed) == (1, 1, 1), summary
    with StateStore.open(tmp_path / "out" / "state.sqlite") as store:
        failed = [r for r in store.jobs().values() if r.status is JobStatus.FAILED]
    assert "invalidAudio" in (failed[0].error_message or "")


# --- the file name comes from the manifest, never from the URL -----------------------------------

TRICKY_URLS = [
    "{base}/x/..%2F..%2F..%2F..%2Fescaped.mp4",
    "{base}/x/%2e%2e/%2e%2e/%2e%2e/escaped.mp4",
    "{base}/x/../../../../../escaped.mp4",
    "{base}//etc/passwd",
    "{base}/x/escaped.mp4?name=../../escaped.mp4#../../escaped.mp4",
]


@pytest.mark.parametrize("url", TRICKY_URLS)
def test_a_video_url_with_path_tricks_lands_under_its_manifest_name(
    server: Serving, manifest: Path, tmp_path: Path, url: str
) -> None:
    before = listing(tmp_path, tmp_path / "out")
    server.api.lie("getResponse", video_url(url))
    summary, _ = run(manifest, options(server, tmp_path))
    assert (summary.exit_code, summary.done) == (0, 1), summary
    video = tmp_path / "out" / "videos" / "a.mp4"
    assert video.read_bytes() == server.api.video  # what the tricky URL served, and only there
    record = job(tmp_path)
    assert record.outputs[0]["path"] == "videos/a.mp4"  # relative to the output folder
    assert record.outputs[0]["sha256"] == hashlib.sha256(server.api.video).hexdigest()
    assert server.api.hits["file"] == 1
    check_contained(tmp_path, before)


# --- the command line sees the same, without a traceback -----------------------------------------


def test_the_cli_reports_a_hostile_result_with_exit_1_and_no_traceback(
    server: Serving, manifest: Path, tmp_path: Path
) -> None:
    server.api.lie("getResponse", video_url("file:///etc/passwd"))
    env = {"RUNWARE_API_KEY": "test-key", "RUNWARE_API_URL": server.api_url}
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(manifest), "--out", str(out), "--json"], env=env)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["failed"], summary["exit_code"]) == (1, 1)
    assert "videoURL is not an http(s) URL" in result.output  # the log line names the reason


async def test_a_stuck_download_holds_up_no_api_call(server: Serving, tmp_path: Path) -> None:
    # One connection for API calls, one for videos: if downloads shared the API pool, the poll
    # below would wait behind a download that trickles a byte every 50 ms.
    settings = ClientSettings(api_url=server.api_url, api_key=SecretStr("test-key"))
    async with make_http_client(1) as api, make_http_client(1) as videos:
        client = RunwareClient(api, settings, downloads=videos)
        trickle = server.base_url + "/hostile/trickle"
        stuck = asyncio.create_task(client.download(trickle, tmp_path / "video.part"))
        async with asyncio.timeout(HANG_GUARD):
            while not server.api.hits["trickle"]:
                await asyncio.sleep(0.01)
        unknown = "0b6b4a38-5f0e-4c1a-9a39-6a8d3c1f2e7d"
        async with asyncio.timeout(5):
            states = await client.poll([unknown])
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck
    assert states[unknown].not_found and stuck.cancelled()
