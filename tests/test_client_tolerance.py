"""The client where Runware's docs are silent: every plausible answer is coped with.

Each open point of RUNWARE_PROTOCOL.md (the ACK's status, redirects, batched polls, the words
for done and failed, a result without a URL, a task not yet visible, a conflicting upload, a
batch refused in part, an expired input) is played by the sandbox's strict profile where it
can be, and by `hostile.HostileApi` rewriting the sandbox's answers where it cannot. Both run
in-process through httpx's ASGI transport; nothing of httpx is mocked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from hostile import Exchange, HostileApi
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from submitting import submit_one

from avatarbatch.errors import (
    ApiError,
    AuthError,
    ConflictError,
    RejectedError,
    TransientError,
)
from avatarbatch.runware import classify
from avatarbatch.runware.client import (
    MAX_API_REDIRECTS,
    ClientSettings,
    RunwareClient,
    TaskState,
    VideoResult,
)
from avatarbatch.sandbox.app import create_app
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.engine import Engine
from conftest import (
    FAST,
    PORTRAIT,
    SANDBOX_BASE,
    TEST_KEY,
    VOICE,
    MakeClient,
    new_uuid,
    uploads,
    video_task,
    wait_finished,
)

#: Every strict knob on, but no registration lag unless a test is about it: the others would
#: otherwise have to wait it out.
STRICT = SandboxConfig(
    profile="strict", latency=0, fixed_latency=0, render="stub", workers=8, registration_lag=0
)
LOOPBACK = "http://127.0.0.1"
RUNWARE_LOG = "avatarbatch.runware"
FALLBACK_WORDS = "polling one task per request from now on"


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


async def poll_until(
    client: RunwareClient, uuids: list[str], done: Callable[[TaskState], bool]
) -> dict[str, TaskState]:
    """Poll all of `uuids` together until each state satisfies `done` (with a deadline)."""
    async with asyncio.timeout(30):
        while True:
            states = await client.poll(uuids)
            if all(done(states[u]) for u in uuids):
                return states
            await asyncio.sleep(0.02)


# --- 1. any 2xx is an answer ---------------------------------------------------------------------


async def test_a_202_acknowledgement_is_an_acceptance_and_completed_is_done() -> None:
    statuses: list[int] = []

    def record(exchange: Exchange) -> None:
        statuses.append(exchange.status)  # and let the sandbox's own answer through

    async with hostile_client(STRICT) as (client, api):
        api.lie("videoInference", record)
        image, audio = await uploads(client)
        tasks = [video_task(image, audio) for _ in range(3)]
        outcomes = await client.submit_many(tasks)
        assert list(outcomes.values()) == [None, None, None]
        assert statuses == [202]
        uuids = [t["taskUUID"] for t in tasks]
        states = await poll_until(client, uuids, lambda s: s.finished(1))
        ledger = api.engine.ledger()
    for uuid in uuids:
        (result,) = states[uuid].results  # status "completed", read as success
        assert result.video_url is not None and result.cost is not None
    assert (ledger["submissions"], ledger["conflicts"]) == (3, 0)


@pytest.mark.parametrize("status", [201, 202, 203])
async def test_an_upload_answered_with_another_2xx_is_read(status: int) -> None:
    async with hostile_client() as (client, api):
        api.lie("imageUpload", lambda exchange: JSONResponse(exchange.answer, status))
        upload = await client.upload_image(PORTRAIT, "image/png", new_uuid())
        assert api.engine.media.get(upload.uuid) is not None


@pytest.mark.parametrize("answer", [Response(status_code=204), Response(b"", 202)])
async def test_an_empty_2xx_to_a_submission_may_have_landed(answer: Response) -> None:
    async with hostile_client(max_attempts=1) as (client, api):
        image, audio = await uploads(client)
        task = video_task(image, audio)
        api.lie("videoInference", lambda exchange: answer)
        outcome = (await client.submit_many([task]))[task["taskUUID"]]
        assert isinstance(outcome, TransientError)
        assert outcome.task_uuid == task["taskUUID"]  # the caller asks getResponse later
        api.honest()
        with pytest.raises(ConflictError):  # it had landed: sent again, it is not paid twice
            await submit_one(client, task)
        assert api.engine.ledger()["submissions"] == 1


# --- 2. redirects of the API endpoint ------------------------------------------------------------


class RedirectingFront:
    """The sandbox behind a front whose chosen paths answer a POST with a redirect."""

    def __init__(self, redirects: dict[str, tuple[int, str]]) -> None:
        self.app = create_app(FAST)
        self.engine: Engine = self.app.state.engine
        self.redirects = redirects
        self.seen: list[tuple[str, str, str, bool]] = []  #: method, host, path, had a key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode()
            self.seen.append((scope["method"], host, scope["path"], b"authorization" in headers))
            if scope["path"] in self.redirects:
                status, location = self.redirects[scope["path"]]
                await Response(status_code=status, headers={"location": location})(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


Front = Callable[..., Awaitable[tuple[RunwareClient, RedirectingFront]]]


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    """Factory: a client whose api_url is `url`, through a RedirectingFront."""
    opened: list[tuple[httpx.AsyncClient, RedirectingFront]] = []

    async def make(
        redirects: dict[str, tuple[int, str]], url: str = LOOPBACK + "/old", **settings: Any
    ) -> tuple[RunwareClient, RedirectingFront]:
        server = RedirectingFront(redirects)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=server))
        opened.append((http, server))
        values = {"api_url": url, "api_key": TEST_KEY, "backoff_initial": 0.001, **settings}
        return RunwareClient(http, ClientSettings(**values)), server

    yield make
    for http, server in opened:
        await http.aclose()
        await server.engine.aclose()


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize(
    "location",
    [
        "/v1",  # relative: the same loopback host
        "http://localhost/v1",
        "http://[::1]/v1",
        "http://127.8.9.10:8080/v1",
    ],
)
async def test_a_body_keeping_redirect_to_https_or_loopback_is_followed(
    front: Front, status: int, location: str
) -> None:
    client, server = await front({"/old": (status, location)})
    upload = await client.upload_image(PORTRAIT, "image/png", new_uuid())
    assert server.engine.media.get(upload.uuid) is not None  # the body arrived, as a POST
    (first, second) = server.seen
    assert first[0] == second[0] == "POST" and second[2] == "/v1"
    assert first[3] and second[3]  # the key went along: the endpoint had it already


@pytest.mark.parametrize("location", ["https://eu.api.old.test/v1", "https://old.test/v1"])
async def test_a_redirect_to_https_on_the_endpoints_own_domain_is_followed(
    front: Front, location: str
) -> None:
    client, server = await front({"/old": (307, location)}, url="https://api.old.test/old")
    upload = await client.upload_image(PORTRAIT, "image/png", new_uuid())
    assert server.engine.media.get(upload.uuid) is not None
    assert [path for _, _, path, _ in server.seen] == ["/old", "/v1"]


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_a_redirect_that_would_turn_the_post_into_a_get_is_refused(
    front: Front, status: int
) -> None:
    client, server = await front({"/old": (status, "https://api.moved.test/v1?token=abc")})
    with pytest.raises(RejectedError) as caught:
        await client.upload_image(PORTRAIT, "image/png", new_uuid())
    message = str(caught.value)
    assert f"HTTP {status}" in message and "would turn the POST into a GET" in message
    assert "https://api.moved.test/v1" in message and "token" not in message
    assert [path for _, _, path, _ in server.seen] == ["/old"]  # nothing asked of the target


@pytest.mark.parametrize(
    ("location", "named"),
    [
        ("http://api.moved.test/v1", "http://api.moved.test/v1"),  # in clear, off this machine
        ("http://10.0.0.7/v1", "http://10.0.0.7/v1"),
        ("ftp://api.moved.test/v1", "ftp://api.moved.test/v1"),
        ("file:///etc/passwd", "file:///etc/passwd"),
        # https, but someone else's server: the key would go along
        ("https://api.moved.test/v1", "https://api.moved.test/v1"),
    ],
)
async def test_a_redirect_elsewhere_is_refused_naming_the_target_not_the_key(
    front: Front, location: str, named: str
) -> None:
    client, server = await front({"/old": (307, location)})
    with pytest.raises(RejectedError) as caught:
        await client.upload_image(PORTRAIT, "image/png", new_uuid())
    text = str(caught.value) + repr(caught.value)
    assert named in text and "nor a loopback address" in text
    assert TEST_KEY not in text
    assert len(server.seen) == 1  # refused before anything was sent there
    assert server.engine.requests["http_posts"] == 0


async def test_redirect_hops_are_capped(front: Front) -> None:
    client, server = await front({"/old": (307, "/older"), "/older": (308, "/old")})
    with pytest.raises(RejectedError, match=f"more than {MAX_API_REDIRECTS} times"):
        await client.upload_image(PORTRAIT, "image/png", new_uuid())
    assert len(server.seen) == MAX_API_REDIRECTS + 1


async def test_a_refused_redirect_of_a_batch_costs_one_post_not_one_per_task(
    front: Front,
) -> None:
    # Split task by task, each would only meet the same redirect again.
    client, server = await front({"/old": (302, "https://api.moved.test/v1")})
    tasks = [video_task(new_uuid(), new_uuid()) for _ in range(3)]
    outcomes = await client.submit_many(tasks)
    for task in tasks:
        outcome = outcomes[task["taskUUID"]]
        assert isinstance(outcome, RejectedError) and outcome.task_uuid == task["taskUUID"]
    assert len(server.seen) == 1


@pytest.mark.parametrize(
    ("redirects", "words"),
    [
        ({"/old": (303, "https://api.moved.test/v1")}, "HTTP 303"),
        ({"/old": (307, "http://api.moved.test/v1")}, "nor a loopback address"),
        ({"/old": (307, "/older"), "/older": (307, "/old")}, "redirected more than"),
    ],
)
async def test_a_redirected_poll_batch_is_refused_without_falling_back(
    front: Front, redirects: dict[str, tuple[int, str]], words: str
) -> None:
    client, server = await front(redirects)
    with pytest.raises(RejectedError, match=words):
        await client.poll([new_uuid(), new_uuid()])
    assert not client.single_task_polls  # a redirect says nothing about batching
    assert server.engine.requests["http_posts"] == 0


# --- 3. batched getResponse, with a fallback learnt per client -----------------------------------


async def test_a_refused_batched_poll_falls_back_to_one_task_per_post(
    sandbox: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client, engine = await sandbox(STRICT)
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(3)]
    assert list((await client.submit_many(tasks)).values()) == [None] * 3
    uuids = [t["taskUUID"] for t in tasks]
    unknown = new_uuid()
    assert not client.single_task_polls
    with caplog.at_level(logging.WARNING, logger=RUNWARE_LOG):
        before = engine.posts_with["getResponse"]
        states = await client.poll([*uuids, unknown])
        # the refused batch, then each of its four tasks on its own
        assert engine.posts_with["getResponse"] - before == 1 + 4
        assert client.single_task_polls
        assert all(states[u].answered and not states[u].unknown for u in uuids)
        assert states[unknown].not_found  # a task's own not-found is still its own
        for _ in range(2):  # the rest of the run: one task per POST, no refusal
            before = engine.posts_with["getResponse"]
            await client.poll([*uuids, unknown])
            assert engine.posts_with["getResponse"] - before == 4
        states = await poll_until(client, uuids, lambda s: s.finished(1))
    assert all(len(states[u].results) == 1 for u in uuids)
    warnings = [r for r in caplog.records if FALLBACK_WORDS in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unsupportedBatch" in warnings[0].getMessage()


class HeldUntil(Response):
    """An answer sent only once `gate` is set: lets a test hold answers until all arrive."""

    def __init__(self, answer: Response, gate: asyncio.Event) -> None:
        super().__init__()
        self.answer = answer
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.wait_for(self.gate.wait(), 30)
        await self.answer(scope, receive, send)


async def test_concurrent_refused_batches_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    # Both batches are refused before either refusal is read: both find batching refused,
    # and the client still says so once.
    both_refused = asyncio.Event()
    refusals: list[int] = []

    def hold_refusals(exchange: Exchange) -> Response | None:
        if len(exchange.tasks) == 1:
            return None
        refusals.append(exchange.status)
        if len(refusals) == 2:
            both_refused.set()
        return HeldUntil(JSONResponse(exchange.answer, exchange.status), both_refused)

    async with hostile_client(STRICT) as (client, api):
        api.lie("getResponse", hold_refusals)
        with caplog.at_level(logging.WARNING, logger=RUNWARE_LOG):
            first, second = await asyncio.gather(
                client.poll([new_uuid(), new_uuid()]), client.poll([new_uuid(), new_uuid()])
            )
        assert api.engine.posts_with["getResponse"] == 2 + 4
    assert refusals == [400, 400]
    assert all(s.not_found for s in [*first.values(), *second.values()])
    assert sum(FALLBACK_WORDS in r.getMessage() for r in caplog.records) == 1


async def test_poll_batch_size_one_polls_singly_from_the_start(
    sandbox: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client, engine = await sandbox(STRICT, poll_batch_size=1)
    assert client.single_task_polls
    with caplog.at_level(logging.WARNING, logger=RUNWARE_LOG):
        states = await client.poll([new_uuid() for _ in range(5)])
    assert len(states) == 5 and engine.posts_with["getResponse"] == 5
    assert not any(FALLBACK_WORDS in r.getMessage() for r in caplog.records)


async def test_poll_batch_size_is_apart_from_the_submit_batch_size(sandbox: MakeClient) -> None:
    client, engine = await sandbox(FAST, batch_size=2, poll_batch_size=7)
    await client.poll([new_uuid() for _ in range(20)])
    assert engine.posts_with["getResponse"] == 3


def request_level_rejection(exchange: Exchange) -> Response:
    error = {"code": "unsupportedRequest", "message": "getResponse is gone (we changed the API)."}
    return JSONResponse({"errors": [error]}, 400)


async def test_a_refused_single_task_poll_is_still_raised() -> None:
    async with hostile_client() as (client, api):
        api.lie("getResponse", request_level_rejection)
        with pytest.raises(RejectedError, match="unsupportedRequest"):
            await client.poll([new_uuid()])
        assert not client.single_task_polls
        # Batched, it falls back; alone, each is refused again, and that is raised.
        with pytest.raises(RejectedError, match="unsupportedRequest"):
            await client.poll([new_uuid(), new_uuid()])
        assert client.single_task_polls
        assert api.hits["lie:getResponse"] >= 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (JSONResponse({"errors": [{"code": "invalidApiKey", "message": "no"}]}, 401), AuthError),
        (Response("busy", 503), TransientError),
    ],
)
async def test_other_failures_of_a_batched_poll_do_not_switch_it(
    answer: Response, error: type[ApiError]
) -> None:
    async with hostile_client(max_attempts=1) as (client, api):
        api.lie("getResponse", lambda exchange: answer)
        with pytest.raises(error):
            await client.poll([new_uuid(), new_uuid()])
        assert not client.single_task_polls
        assert api.hits["lie:getResponse"] == 1


async def test_an_error_in_a_200_naming_none_of_our_tasks_also_means_no_batching() -> None:
    def stray_error(exchange: Exchange) -> Response | None:
        if len(exchange.tasks) == 1:
            return None
        answer = {"errors": [{"code": "tooManyTasks", "taskUUID": new_uuid(), "message": "1"}]}
        return JSONResponse(answer)

    async with hostile_client() as (client, api):
        api.lie("getResponse", stray_error)
        uuids = [new_uuid(), new_uuid()]
        states = await client.poll(uuids)
    assert client.single_task_polls and all(states[u].not_found for u in uuids)


# --- 4. the shapes of a task's state -------------------------------------------------------------

VIDEO_UUID = "a4f1e2d3-6b7c-4d8e-9f01-23456789abcd"
URL = "https://vm.example/video/a4f1e2d3.mp4"

# item fields (taskUUID added) -> (results, their video_url, errors, processing)
SHAPES: dict[str, tuple[dict[str, Any], int, str | None, int, int]] = {
    "success": ({"status": "success", "videoUUID": VIDEO_UUID, "videoURL": URL}, 1, URL, 0, 0),
    "completed": ({"status": "completed", "videoUUID": VIDEO_UUID, "videoURL": URL}, 1, URL, 0, 0),
    "COMPLETED": ({"status": "COMPLETED", "videoUUID": VIDEO_UUID, "videoURL": URL}, 1, URL, 0, 0),
    "a videoURL without a status": ({"videoUUID": VIDEO_UUID, "videoURL": URL}, 1, URL, 0, 0),
    "a videoURL while processing": (
        {"status": "processing", "videoUUID": VIDEO_UUID, "videoURL": URL},
        1,
        URL,
        0,
        0,
    ),
    "a videoURL under an unknown status": (
        {"status": "rendered", "videoUUID": VIDEO_UUID, "videoURL": URL},
        1,
        URL,
        0,
        0,
    ),
    "completed without a videoURL": (
        {"status": "completed", "videoUUID": VIDEO_UUID},
        1,
        None,
        0,
        0,
    ),
    "success with a null videoURL": (
        {"status": "success", "videoUUID": VIDEO_UUID, "videoURL": None},
        1,
        None,
        0,
        0,
    ),
    "success with an empty videoURL": (
        {"status": "Success", "videoUUID": VIDEO_UUID, "videoURL": ""},
        1,
        None,
        0,
        0,
    ),
    "failed": ({"status": "failed", "code": "timeoutProvider", "message": "slow"}, 0, None, 1, 0),
    "FAILED, nested": (
        {"status": "FAILED", "error": {"code": "timeoutProvider", "message": "slow"}},
        0,
        None,
        1,
        0,
    ),
    "completed with neither videoUUID nor videoURL": ({"status": "completed"}, 0, None, 1, 0),
    "an unknown status": ({"status": "levitating"}, 0, None, 0, 1),
    "a videoUUID alone, no status": ({"videoUUID": VIDEO_UUID}, 0, None, 0, 1),
    "a status that is not a string": ({"status": 7}, 0, None, 0, 1),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_task_state_shapes(shape: str) -> None:
    fields, results, url, errors, processing = SHAPES[shape]

    def answer(exchange: Exchange) -> Response:
        uuid = exchange.tasks[0]["taskUUID"]
        item = {"taskType": "videoInference", "taskUUID": uuid, **fields}
        return JSONResponse({"data": [item]})

    async with hostile_client() as (client, api):
        api.lie("getResponse", answer)
        task = new_uuid()
        state = (await client.poll([task]))[task]
    assert (len(state.results), len(state.errors), state.processing) == (
        results,
        errors,
        processing,
    ), state
    assert state.answered and not state.unknown and not state.not_found
    if results:
        assert state.results[0].video_url == url and state.finished(1)
    if errors and "timeoutProvider" in str(fields):
        assert isinstance(state.errors[0], TransientError)
        assert state.errors[0].code == "timeoutProvider"


def test_a_video_url_present_is_still_http_only() -> None:
    item = {"taskUUID": new_uuid(), "videoUUID": VIDEO_UUID}
    assert VideoResult.model_validate(item).video_url is None
    with pytest.raises(ValueError, match="not an http"):
        VideoResult.model_validate({**item, "videoURL": "file:///etc/passwd"})


async def test_a_result_delivered_to_an_upload_endpoint_has_no_url(sandbox: MakeClient) -> None:
    client, _ = await sandbox(STRICT)
    image, audio = await uploads(client)
    # Not loopback: the sandbox refuses to PUT there, which this test does not need.
    task = video_task(image, audio, uploadEndpoint="https://bucket.example/out.mp4?sig=x")
    await submit_one(client, task)
    (result,) = (await wait_finished(client, task["taskUUID"])).results
    assert result.video_url is None and result.video_uuid


# --- answered / unknown --------------------------------------------------------------------------


async def test_an_empty_data_is_no_answer_about_the_task() -> None:
    async with hostile_client() as (client, api):
        api.lie("getResponse", lambda exchange: JSONResponse({"data": []}))
        task = new_uuid()
        state = (await client.poll([task]))[task]
    assert not state.answered and state.unknown and not state.not_found
    assert not state.finished(1)


async def test_answered_and_unknown_over_a_task_s_life(sandbox: MakeClient) -> None:
    client, _ = await sandbox(FAST.model_copy(update={"fixed_latency": 0.2}))
    image, audio = await uploads(client)
    task = video_task(image, audio)
    await submit_one(client, task)
    stranger = new_uuid()
    states = await client.poll([task["taskUUID"], stranger])
    running = states[task["taskUUID"]]
    assert running.answered and not running.unknown and running.processing == 1
    assert states[stranger].answered and states[stranger].not_found and states[stranger].unknown


async def test_every_task_still_registering_is_unknown(sandbox: MakeClient) -> None:
    # The lag answers some tasks with not-found and some with nothing: both read as unknown,
    # neither as a result, a task running, or a failure of its generation.
    lagging = SandboxConfig(
        profile="strict", latency=0, fixed_latency=0, render="stub", registration_lag=120
    )
    client, engine = await sandbox(lagging)
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(8)]
    assert list((await client.submit_many(tasks)).values()) == [None] * 8
    states = await client.poll([t["taskUUID"] for t in tasks])
    for uuid, state in states.items():
        assert state.unknown and not state.results and not state.processing
        if engine.lag_answers_empty(uuid):
            assert not state.answered and not state.errors
        else:
            assert state.answered and state.not_found


# --- 5. an upload that conflicts is sent again under a fresh UUID --------------------------------


@pytest.mark.parametrize("kind", ["image", "media"])
async def test_a_conflicting_upload_is_retried_under_a_fresh_uuid(
    sandbox: MakeClient, kind: str
) -> None:
    client, engine = await sandbox(STRICT)
    first_uuid = new_uuid()
    if kind == "image":
        first = await client.upload_image(PORTRAIT, "image/png", first_uuid)
        again = await client.upload_image(PORTRAIT, "image/png", first_uuid)
    else:
        first = await client.upload_media(VOICE, "audio/mpeg", first_uuid)
        again = await client.upload_media(VOICE, "audio/mpeg", first_uuid)
    task_type = "imageUpload" if kind == "image" else "mediaStorage"
    assert engine.requests[task_type] == 3  # first, the conflict, the fresh one
    assert len(engine.upload_uuids) == 2 and first_uuid in engine.upload_uuids
    assert engine.media.get(first.uuid) is not None and engine.media.get(again.uuid) is not None


async def test_an_upload_whose_answer_was_lost_ends_in_an_upload() -> None:
    # The realistic path: the first answer is lost (503 after the upload was stored), the
    # retry under the same UUID conflicts, and a fresh UUID gets it through.
    answers = iter([Response("busy", 503)])
    async with hostile_client(STRICT, max_attempts=2) as (client, api):
        api.lie("imageUpload", lambda exchange: next(answers, None))
        upload = await client.upload_image(PORTRAIT, "image/png", new_uuid())
        assert api.engine.media.get(upload.uuid) is not None
        assert api.engine.requests["imageUpload"] == 3
        assert len(api.engine.upload_uuids) == 2


async def test_a_second_conflict_is_raised() -> None:
    def conflict(exchange: Exchange) -> Response:
        uuid = exchange.tasks[0]["taskUUID"]
        error = {"code": "conflictTaskUUID", "message": "exists", "taskUUID": uuid}
        return JSONResponse({"errors": [error]}, 400)

    async with hostile_client() as (client, api):
        api.lie("mediaStorage", conflict)
        with pytest.raises(ConflictError):
            await client.upload_media(VOICE, "audio/mpeg", new_uuid())
        assert api.hits["lie:mediaStorage"] == 2  # retried once, not for ever


# --- 6. a batch refused in part: the unnamed tasks go again, same UUIDs --------------------------


def only_the_named(
    named: list[str], sent: list[list[str]]
) -> Callable[[Exchange], Response | None]:
    """The first POST is answered 400 with only the error of the task(s) in `named` (the
    sandbox's verdict on the others dropped); later POSTs get the sandbox's own answer."""

    def lie(exchange: Exchange) -> Response | None:
        sent.append([t["taskUUID"] for t in exchange.tasks])
        if len(sent) > 1:
            return None
        error = {"code": "invalidOutputQuality", "parameter": "outputQuality", "message": "no"}
        return JSONResponse({"errors": [{**error, "taskUUID": uuid} for uuid in named]}, 400)

    return lie


@pytest.mark.parametrize("refusal", ["per_task", "whole"])
async def test_tasks_a_400_leaves_unnamed_are_sent_again_and_billed_once(refusal: str) -> None:
    # "per_task": the sandbox accepted the good tasks, but the 400 says nothing of them; sent
    # again they conflict, which means accepted. "whole": the sandbox took none of them;
    # sent again, they are accepted now. Either way each is billed once.
    config = FAST.model_copy(update={"batch_refusal": refusal})
    async with hostile_client(config) as (client, api):
        image, audio = await uploads(client)
        good, bad, other = (
            video_task(image, audio),
            video_task(image, audio, outputQuality=19),
            video_task(image, audio),
        )
        sent: list[list[str]] = []
        api.lie("videoInference", only_the_named([bad["taskUUID"]], sent))
        outcomes = await client.submit_many([good, bad, other])
        ledger = api.engine.ledger()
    assert list(outcomes) == [good["taskUUID"], bad["taskUUID"], other["taskUUID"]]
    refused = outcomes[bad["taskUUID"]]
    assert isinstance(refused, RejectedError) and refused.parameter == "outputQuality"
    assert sent == [
        [good["taskUUID"], bad["taskUUID"], other["taskUUID"]],
        [good["taskUUID"], other["taskUUID"]],
    ]
    for task in (good, other):
        outcome = outcomes[task["taskUUID"]]
        if refusal == "per_task":
            assert isinstance(outcome, ConflictError), outcome  # landed the first time
        else:
            assert outcome is None
    assert ledger["submissions"] == 2


async def test_a_200_missing_a_task_still_leaves_it_uncertain() -> None:
    # An acceptance that leaves a task out is not a refusal: nothing says it was not taken.
    def drop_last(exchange: Exchange) -> Response:
        answer = exchange.answer
        answer["data"] = answer["data"][:-1]
        return JSONResponse(answer, exchange.status)

    async with hostile_client() as (client, api):
        image, audio = await uploads(client)
        tasks = [video_task(image, audio) for _ in range(2)]
        api.lie("videoInference", drop_last)
        outcomes = await client.submit_many(tasks)
        assert api.hits["lie:videoInference"] == 1
    assert outcomes[tasks[0]["taskUUID"]] is None
    lost = outcomes[tasks[1]["taskUUID"]]
    assert isinstance(lost, TransientError) and lost.task_uuid == tasks[1]["taskUUID"]


# --- 7. stale inputs -----------------------------------------------------------------------------

STALE = [
    {"code": "invalidImage", "parameter": "inputs.image", "message": "No uploaded media."},
    {"code": "invalidAudio", "parameter": "inputs.audio", "message": "No uploaded media."},
    {"code": "invalidImageUUID", "message": "The image UUID is invalid."},
    {"code": "invalidMediaUUID"},
    {"code": "imageNotFound"},
    {"code": "mediaNotFound"},
    {"code": "audioNotFound"},
    {"code": "mediaExpired"},
    {"code": "imageUUIDNotFound"},
    {"code": "invalidRequest", "message": "Image 5e7d1c9a-0b3f-4e62-8a14-c2d9f0e6b7a3 not found"},
    {"code": "validationError", "message": "The audio with UUID 9a8b7c6d does not exist"},
    {"code": "badInput", "message": "The uploaded media has expired; upload it again"},
    {"code": "badInput", "message": "No such media 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"},
    {"code": "badInput", "message": "Unknown image UUID 5e7d1c9a"},
]
NOT_STALE = [
    {"code": "taskFailedOrNotFound", "message": "No task with UUID 5e7d was found."},
    {"code": "taskFailedOrNotFound", "message": "Image task not found", "parameter": "taskUUID"},
    {"code": "unknownModel", "message": "Model not found."},
    {"code": "invalidImage", "parameter": "image", "message": "The image could not be processed."},
    {"code": "invalidImage", "message": "The image is too small."},
    {"code": "invalidOutputQuality", "parameter": "outputQuality", "message": "Out of range."},
    {"code": "invalidAudio", "message": "Unknown media type audio/ogg."},
    {"code": "notFound", "message": "No such video, or it expired."},
    {"code": "missingImage", "message": "inputs.image is required"},
    {"code": "timeoutProvider", "message": "The provider took too long to fetch the image."},
]


@pytest.mark.parametrize("error", STALE, ids=lambda e: e.get("message") or e["code"])
def test_stale_inputs_are_recognised(error: dict[str, Any]) -> None:
    assert classify.is_stale_input(classify.from_error_object(error, status=400))


@pytest.mark.parametrize("error", NOT_STALE, ids=lambda e: e.get("message") or e["code"])
def test_other_errors_are_not_stale_inputs(error: dict[str, Any]) -> None:
    assert not classify.is_stale_input(classify.from_error_object(error, status=400))


async def test_a_submission_naming_a_forgotten_upload_is_a_stale_input(
    sandbox: MakeClient,
) -> None:
    client, _ = await sandbox()
    image, _audio = await uploads(client)
    with pytest.raises(RejectedError) as caught:
        await submit_one(client, video_task(image, new_uuid()))
    assert classify.is_stale_input(caught.value)
    stranger = new_uuid()
    state = (await client.poll([stranger]))[stranger]
    assert state.not_found and not classify.is_stale_input(state.errors[0])


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (None, 409),
        ("conflictTaskUUID", 400),
        ("duplicateTaskUUID", 400),
        ("taskUUIDConflict", None),
    ],
)
def test_every_spelling_of_a_duplicate_is_a_conflict(code: str | None, status: int | None) -> None:
    from avatarbatch.errors import ConflictError
    from avatarbatch.runware.classify import error_class

    assert error_class(code, status) is ConflictError


def test_a_delivered_video_is_named_without_its_secrets() -> None:
    from avatarbatch.engine.downloads import without_query

    url = "https://user:pw@bucket.example:9000/out/a.mp4?X-Amz-Signature=abc#frag"
    assert without_query(url) == "https://bucket.example:9000/out/a.mp4"
