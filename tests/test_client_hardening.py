"""The client against what the network may send: echoed keys, unsendable keys, odd redirects,
costs that are not prices.

API exchanges go to the real sandbox in-process (httpx's ASGI transport), through
`hostile.HostileApi` where an answer must be bent; whole runs go over loopback sockets, so the
real transport is in the loop. Download redirects come from a small Starlette app of their own:
a redirecting web server is not the Runware protocol, so there is nothing there to drift from.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile import Exchange, HostileApi, Lie, Serving, serving
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from submitting import submit_one
from typer.testing import CliRunner

from avatarbatch.cli import progress
from avatarbatch.cli.commands import app
from avatarbatch.cli.environment import client_settings, read_dotenv
from avatarbatch.config import PollTiming, RunSettings
from avatarbatch.engine.batch import RunSummary, run_batch
from avatarbatch.errors import AuthError, RejectedError, TransientError, UsageError
from avatarbatch.runware import classify
from avatarbatch.runware.client import ClientSettings, RunwareClient
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.state.store import JobStatus, StateStore
from conftest import FAST, SANDBOX_BASE, TEST_KEY, MakeClient, new_uuid, uploads, video_task
from conftest import wait_finished as wait_for_task

QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8, retry_after=0)
QUICK_POLL = PollTiming(initial=0.05, min_interval=0.05, max_interval=0.3)
HANG_GUARD = 60.0  #: a run or a child that takes this long is hanging: fail, do not stall CI
MANIFEST = "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
VIDEO = b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 16


def new_key() -> str:
    """A key nobody else uses, so that finding it proves a leak of this test's key."""
    return "sk-HARDENING-" + secrets.token_hex(10)


# --- in-process plumbing ------------------------------------------------------------------------


@asynccontextmanager
async def hostile_client(
    config: SandboxConfig = FAST, **settings: Any
) -> AsyncIterator[tuple[RunwareClient, HostileApi]]:
    """A client wired in-process to the sandbox wrapped by HostileApi (lies scripted later)."""
    api = HostileApi(config)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    values: dict[str, Any] = {
        "api_url": SANDBOX_BASE + config.path,
        "api_key": TEST_KEY,
        "backoff_initial": 0.001,
        "backoff_max": 0.005,
        **settings,
    }
    async with httpx.AsyncClient(transport=transport, base_url=SANDBOX_BASE) as http:
        try:
            yield RunwareClient(http, ClientSettings(**values)), api
        finally:
            await api.engine.aclose()


def raw_json(answer: Any, literal: str) -> Response:
    """`answer` as JSON with every "@@" string replaced by `literal`, which may be NaN."""
    text = json.dumps(answer).replace('"@@"', literal)
    return Response(text.encode(), 200, media_type="application/json")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging rewires the avatarbatch logger: put it back for the other tests."""
    logger = logging.getLogger("avatarbatch")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


# --- 1. a key the server echoes back is redacted -------------------------------------------------


async def test_a_sandbox_message_quoting_the_key_is_redacted(sandbox: MakeClient) -> None:
    # The sandbox quotes an unknown task type in its refusal: sent the key as the task type,
    # its real answer carries the key back.
    client, _ = await sandbox()
    with pytest.raises(RejectedError) as caught:
        await submit_one(client, {"taskType": TEST_KEY, "taskUUID": new_uuid()})
    error = caught.value
    assert error.code == "invalidTaskType"
    assert "Task type '[redacted]' is not supported" in str(error)
    twin = error.for_task(new_uuid())
    for text in (str(error), repr(error), str(twin), repr(twin)):
        assert TEST_KEY not in text


async def test_an_auth_refusal_echoing_key_and_header_is_redacted() -> None:
    key = new_key()

    def echo(exchange: Exchange) -> Response:
        error = {
            "code": "invalidApiKey",
            "message": f"Invalid API key {key}; request had Authorization: Bearer {key}",
            "parameter": key,
        }
        return JSONResponse({"errors": [error]}, 401)

    async with hostile_client(api_key=key) as (client, api):
        api.lie("imageUpload", echo)
        with pytest.raises(AuthError) as caught:
            await client.upload_image(b"x", "image/png", new_uuid())
    text = str(caught.value) + repr(caught.value) + str(caught.value.parameter)
    assert key not in text and "Invalid API key [redacted]" in text
    assert "Authorization: [redacted]" in text


async def test_retries_log_no_key_the_server_echoed(restored_logging: None) -> None:
    key = new_key()
    stream = io.StringIO()
    progress.configure_logging(tty=False, verbose=True, stream=stream)
    body = {"errors": [{"code": "serviceUnavailable", "message": f"busy (key {key})"}]}
    async with hostile_client(api_key=key, max_attempts=3) as (client, api):
        api.lie("imageUpload", lambda exchange: JSONResponse(body, 503))
        with pytest.raises(TransientError) as caught:
            await client.upload_image(b"x", "image/png", new_uuid())
    assert "busy (key [redacted])" in str(caught.value)
    written = stream.getvalue()
    assert written.count("retrying after attempt") == 2, written
    assert key not in written


# --- 2. a key that cannot travel in a header is a usage error ------------------------------------


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("sk-abcdéfgh123456", "non-ASCII character at position 8"),
        ("sk-abcdefgh\u2028123", "non-ASCII character at position 12"),
        ("sk-abcdefgh\n123456", "line break or control character at position 12"),
        ("sk-abcdefgh\r\n123456", "line break or control character at position 12"),
        ("sk-abc\tdefgh123456", "line break or control character at position 7"),
        ("sk-abcdefgh\x00123456", "line break or control character"),
        ("sk-abcdefgh\x7f123456", "line break or control character"),
    ],
)
def test_settings_refuse_a_key_that_cannot_be_sent(key: str, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        client_settings({"RUNWARE_API_KEY": key})
    message = str(caught.value)
    assert message.startswith("RUNWARE_API_KEY holds a ") and words in message, message
    assert caught.value.exit_code == 2
    assert "abcd" not in message and "123" not in message  # no piece of the key is echoed


def test_a_key_from_dotenv_is_checked_the_same_way(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('RUNWARE_API_KEY="sk-abc\\ndefgh"\n')  # dotenv expands the \n
    with pytest.raises(UsageError, match="line break"):
        client_settings({}, read_dotenv(env_file))


def test_surrounding_whitespace_is_stripped_before_the_check() -> None:
    settings = client_settings({"RUNWARE_API_KEY": "  sk-abcdefgh123456\r\n"})
    assert settings.api_key.get_secret_value() == "sk-abcdefgh123456"


def test_client_settings_built_directly_refuse_such_a_key_too() -> None:
    with pytest.raises(UsageError, match=r"^the API key holds a non-ASCII character") as caught:
        ClientSettings(api_key=SecretStr("sk-ключ-12345678"))
    assert "ключ" not in str(caught.value)
    assert ClientSettings(api_key=" sk-abcdefgh \n").api_key.get_secret_value() == "sk-abcdefgh"


@pytest.mark.parametrize("key", ["sk-abcdéfgh123456", "sk-abcdefgh\n123456"])
def test_the_cli_refuses_such_a_key_with_exit_2_before_any_request(
    demo_copy: Path, key: str
) -> None:
    # The URL points at a closed port: had a request been tried, the run would have gone on
    # to retry it, not stop with exit 2 at once.
    env = {"RUNWARE_API_KEY": key, "RUNWARE_API_URL": "http://127.0.0.1:9/v1"}
    result = CliRunner().invoke(app, ["run", str(demo_copy / "demo.yaml")], env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "avatarbatch: RUNWARE_API_KEY holds a " in result.output
    assert "abcd" not in result.output and "Traceback" not in result.output


def test_the_cli_in_a_child_process_prints_no_traceback(demo_copy: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARE_")}
    env = {**base, "RUNWARE_API_KEY": "sk-abcdéfgh123456", "RUNWARE_API_URL": "http://127.0.0.1:9"}
    done = subprocess.run(
        [sys.executable, "-m", "avatarbatch", "run", str(demo_copy / "demo.yaml")],
        env=env,
        capture_output=True,
        timeout=HANG_GUARD,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "non-ASCII character at position 8" in stderr
    assert "Traceback" not in stderr and "abcd" not in stderr


# --- 3. downloads follow http(s) redirects only ---------------------------------------------------


class RedirectingServer:
    """A web server whose answers redirect; it counts the requests of each path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.app = Starlette(
            routes=[
                Route("/to/{scheme}", self._to),
                Route("/hop/{n:int}", self._hop),
                Route("/loop", self._loop),
                Route("/video.mp4", self._video),
            ]
        )

    def _count(self, request: Request) -> None:
        self.hits[request.url.path] = self.hits.get(request.url.path, 0) + 1

    async def _to(self, request: Request) -> Response:
        self._count(request)
        target = {
            "file": "file:///etc/passwd",
            "ftp": "ftp://cdn.test/video.mp4",
            "gopher": "gopher://cdn.test/1",
            "data": "data:video/mp4;base64,AAAA",  # so odd that httpx cannot parse it
            "mailto": "mailto:cdn@example.com",
        }[request.path_params["scheme"]]
        return RedirectResponse(target, status_code=302)

    async def _hop(self, request: Request) -> Response:
        """/hop/2 -> /hop/1 (absolute) -> /hop/0 (relative) -> /video.mp4."""
        self._count(request)
        n = request.path_params["n"]
        if n == 0:
            return RedirectResponse("/video.mp4", status_code=307)
        target = f"/hop/{n - 1}" if n % 2 else f"http://cdn.test/hop/{n - 1}"
        return RedirectResponse(target, status_code=301)

    async def _loop(self, request: Request) -> Response:
        self._count(request)
        return RedirectResponse("/loop", status_code=302)

    async def _video(self, request: Request) -> Response:
        self._count(request)
        return Response(VIDEO, media_type="video/mp4")


@pytest.fixture
async def cdn() -> AsyncIterator[tuple[RunwareClient, RedirectingServer]]:
    server = RedirectingServer()
    transport = httpx.ASGITransport(app=server.app)
    settings = ClientSettings(
        api_url=SANDBOX_BASE + "/v1", api_key=TEST_KEY, backoff_initial=0.001, backoff_max=0.005
    )
    async with (
        httpx.AsyncClient() as api,
        httpx.AsyncClient(transport=transport) as videos,
    ):
        yield RunwareClient(api, settings, downloads=videos), server


@pytest.mark.parametrize(
    ("scheme", "reason"),
    [
        ("file", "a non-http(s) address"),
        ("ftp", "a non-http(s) address"),
        ("gopher", "a non-http(s) address"),
        ("data", "an invalid address"),
        ("mailto", "an invalid address"),
    ],
)
async def test_a_redirect_away_from_http_is_rejected_at_once(
    cdn: tuple[RunwareClient, RedirectingServer], tmp_path: Path, scheme: str, reason: str
) -> None:
    client, server = cdn
    with pytest.raises(RejectedError, match=re.escape(f"redirected to {reason}")):
        await client.download(f"http://cdn.test/to/{scheme}", tmp_path / "v.part")
    assert server.hits == {f"/to/{scheme}": 1}  # rejected, so never retried
    assert not (tmp_path / "v.part").exists()


async def test_http_redirects_are_still_followed(
    cdn: tuple[RunwareClient, RedirectingServer], tmp_path: Path
) -> None:
    client, server = cdn
    download = await client.download("http://cdn.test/hop/2", tmp_path / "v.part")
    assert download.path.read_bytes() == VIDEO and download.size == len(VIDEO)
    assert server.hits == {"/hop/2": 1, "/hop/1": 1, "/hop/0": 1, "/video.mp4": 1}


async def test_a_redirect_loop_is_still_rejected_after_the_usual_cap(
    cdn: tuple[RunwareClient, RedirectingServer], tmp_path: Path
) -> None:
    client, server = cdn
    with pytest.raises(RejectedError, match="redirects in a loop"):
        await client.download("http://cdn.test/loop", tmp_path / "v.part")
    assert server.hits == {"/loop": 21}  # httpx's own cap: 20 redirects followed


async def test_a_non_http_address_is_never_asked(
    cdn: tuple[RunwareClient, RedirectingServer], tmp_path: Path
) -> None:
    client, server = cdn
    for url, reason in [
        ("file:///etc/passwd", "is not an http(s) address"),
        ("ftp://cdn.test/video.mp4", "is not an http(s) address"),
        ("http://[::1/video.mp4", "is not a valid address"),
    ]:
        with pytest.raises(RejectedError, match=re.escape(reason)):
            await client.download(url, tmp_path / "v.part")
    assert server.hits == {}


# --- 4. a cost that is not a price is unknown, not an error --------------------------------------


def with_cost(literal: str) -> Lie:
    """Let the poll through, with every finished result's cost replaced by a JSON literal."""

    def lie(exchange: Exchange) -> Response:
        answer = exchange.answer
        for item in answer.get("data", []):
            if item.get("videoURL"):
                item["cost"] = "@@"
        return raw_json(answer, literal)

    return lie


@pytest.fixture
def client_warnings() -> Iterator[list[str]]:
    """The client's warnings, heard on its own logger whatever another test did to logging."""
    heard: list[str] = []

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    logger = logging.getLogger("avatarbatch.runware")
    listener = Listener(logging.WARNING)
    logger.addHandler(listener)
    yield heard
    logger.removeHandler(listener)


@pytest.mark.parametrize(
    "literal",
    ["NaN", "Infinity", "-Infinity", "1e999", "-1", "-0.0001", '"abc"', "true", '{"usd": 1}'],
)
async def test_a_cost_that_is_not_a_price_is_stored_as_unknown(
    client_warnings: list[str], literal: str
) -> None:
    async with hostile_client() as (client, api):
        image, audio = await uploads(client)
        task = video_task(image, audio)
        await submit_one(client, task)
        api.lie("getResponse", with_cost(literal))
        state = await wait_for_task(client, task["taskUUID"])
    (result,) = state.results
    assert result.cost is None and not state.errors
    heard = "\n".join(client_warnings)
    if literal in ("NaN", "Infinity", "-Infinity", "1e999"):  # gone already in the JSON reading
        assert "read as unknown" in heard, heard
    else:
        assert f"task {task['taskUUID']}: Runware reported a cost of" in heard, heard


@pytest.mark.parametrize(("literal", "cost"), [("0", 0.0), ("0.25", 0.25), ('"0.5"', 0.5)])
async def test_a_real_price_is_kept(literal: str, cost: float) -> None:
    async with hostile_client() as (client, api):
        image, audio = await uploads(client)
        task = video_task(image, audio)
        await submit_one(client, task)
        api.lie("getResponse", with_cost(literal))
        state = await wait_for_task(client, task["taskUUID"])
    assert state.results[0].cost == cost


async def test_no_number_of_an_answer_is_nan_or_infinite() -> None:
    async with hostile_client() as (client, api):
        image, audio = await uploads(client)
        task = video_task(image, audio)
        await submit_one(client, task)

        def odd_seed(exchange: Exchange) -> Response:
            answer = exchange.answer
            for item in answer.get("data", []):
                if item.get("videoURL"):
                    item["seed"] = "@@"
            return raw_json(answer, "NaN")

        api.lie("getResponse", odd_seed)
        state = await wait_for_task(client, task["taskUUID"])
    (result,) = state.results
    assert result.seed is None and result.cost is not None


@pytest.mark.parametrize("header", ["nan", "inf", "-inf", "Infinity"])
def test_a_retry_after_that_is_not_a_number_is_ignored(header: str) -> None:
    assert classify.parse_retry_after(header) is None


def test_a_retry_after_of_days_is_capped() -> None:
    assert classify.parse_retry_after("864000") == classify.MAX_RETRY_AFTER
    assert classify.parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == 600.0
    assert classify.parse_retry_after("2.5") == 2.5


# --- whole runs over loopback sockets: what the state file keeps -----------------------------------


@pytest.fixture(scope="module")
def shared_server() -> Iterator[Serving]:
    with serving(QUICK) as running:
        running.api.video = VIDEO
        # A route of this test's own, ahead of HostileApi's catch-all: a CDN that sends the
        # download to the local file system.
        redirect = Route("/cdn/to-file", lambda _: RedirectResponse("file:///etc/passwd", 302))
        running.api.router.routes.insert(0, redirect)
        yield running


@pytest.fixture
def server(shared_server: Serving) -> Serving:
    shared_server.api.honest()
    return shared_server


@pytest.fixture
def manifest(tmp_path: Path, media: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    return path


def run(manifest: Path, server: Serving, tmp_path: Path, key: str) -> RunSummary:
    settings = ClientSettings(
        api_url=server.api_url,
        api_key=SecretStr(key),
        backoff_initial=0.01,
        backoff_max=0.05,
        max_attempts=2,
        download_timeout=5,
        request_timeout=5,
    )
    options = RunSettings(
        client=settings, out=tmp_path / "out", rps=200, poll=QUICK_POLL, job_timeout=30
    )
    return asyncio.run(asyncio.wait_for(run_batch(manifest, options), HANG_GUARD))


def job_record(tmp_path: Path) -> Any:
    with StateStore.open(tmp_path / "out" / "state.sqlite") as store:
        record = store.get("a")
    assert record is not None
    return record


def test_a_download_redirected_to_a_file_fails_the_job_instead_of_hanging(
    server: Serving, manifest: Path, tmp_path: Path
) -> None:
    def to_file(exchange: Exchange) -> Response:
        answer = exchange.answer
        for item in answer.get("data", []):
            if item.get("videoURL"):
                item["videoURL"] = exchange.base_url + "/cdn/to-file"
        return JSONResponse(answer, exchange.status)

    server.api.lie("getResponse", to_file)
    summary = run(manifest, server, tmp_path, new_key())
    assert (summary.exit_code, summary.failed, summary.pending) == (1, 1, 0), summary
    record = job_record(tmp_path)
    assert record.status is JobStatus.FAILED
    assert "redirected to a non-http(s) address" in (record.error_message or "")


def test_a_task_error_echoing_the_key_reaches_no_file(
    server: Serving, manifest: Path, tmp_path: Path
) -> None:
    key = new_key()

    def echo(exchange: Exchange) -> Response:
        items = [
            {
                "taskType": "videoInference",
                "taskUUID": task["taskUUID"],
                "status": "error",
                "error": {
                    "code": "providerContentModeration",
                    "message": f"refused for {key} (Authorization: Bearer {key})",
                },
            }
            for task in exchange.tasks
        ]
        return JSONResponse({"data": items})

    server.api.lie("getResponse", echo)
    summary = run(manifest, server, tmp_path, key)
    assert (summary.exit_code, summary.failed) == (1, 1), summary
    assert "refused for [redacted]" in (job_record(tmp_path).error_message or "")
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "state.sqlite" for p in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), f"the key is in {path}"
