"""The sandbox's strict profile: the most conservative reading of what Runware's docs leave open.

Every knob is tested on its own (the others at their defaults), then the profile as a whole.
All in-process through httpx's ASGI transport; webhooks and uploadEndpoint PUTs go to a small
loopback receiver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from receiver import Receiver

from avatarbatch import catalog
from avatarbatch.errors import UsageError
from avatarbatch.sandbox import settings
from avatarbatch.sandbox.app import create_app
from avatarbatch.sandbox.config import STRICT_KNOBS, SandboxConfig
from avatarbatch.sandbox.engine import Engine
from conftest import PORTRAIT, VOICE, new_uuid

KEY = "strict-key"
BASE = "http://sandbox.test"
Api = tuple[httpx.AsyncClient, Engine]
OpenApi = Callable[..., Awaitable[Api]]


def config(**knobs: Any) -> SandboxConfig:
    """A fast sandbox (no render latency, stub videos) with the given knobs."""
    return SandboxConfig(api_key=KEY, latency=0, fixed_latency=0, render="stub", workers=8, **knobs)


@pytest.fixture
async def open_api() -> AsyncIterator[OpenApi]:
    """Factory: an HTTP client on an in-process sandbox with a given config, and its engine."""
    opened: list[Api] = []

    async def make(sandbox_config: SandboxConfig) -> Api:
        app = create_app(sandbox_config)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
        http.headers["Authorization"] = f"Bearer {KEY}"
        opened.append((http, app.state.engine))
        return http, app.state.engine

    yield make
    for http, engine in opened:
        await http.aclose()
        await engine.aclose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


async def post(http: httpx.AsyncClient, *tasks: dict[str, Any]) -> httpx.Response:
    return await http.post("/v1", json=list(tasks))


def poll_task(task_uuid: str) -> dict[str, Any]:
    return {"taskType": "getResponse", "taskUUID": task_uuid}


def image_upload(task_uuid: str | None = None) -> dict[str, Any]:
    return {
        "taskType": "imageUpload",
        "taskUUID": task_uuid or new_uuid(),
        "image": base64.b64encode(PORTRAIT).decode(),
    }


def media_upload(task_uuid: str | None = None) -> dict[str, Any]:
    return {
        "taskType": "mediaStorage",
        "taskUUID": task_uuid or new_uuid(),
        "operation": "upload",
        "media": "data:audio/mpeg;base64," + base64.b64encode(VOICE).decode(),
    }


async def video_task(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    """A videoInference task on freshly uploaded demo media (so it really renders)."""
    image = (await post(http, image_upload())).json()["data"][0]["imageUUID"]
    audio = (await post(http, media_upload())).json()["data"][0]["mediaUUID"]
    return {
        "taskType": "videoInference",
        "taskUUID": new_uuid(),
        "model": catalog.STANDARD.id,
        "inputs": {"image": image, "audio": audio},
        "deliveryMethod": "async",
        "includeCost": True,
        **fields,
    }


async def poll_until(
    http: httpx.AsyncClient,
    task_uuid: str,
    done: Callable[[httpx.Response], bool],
    timeout: float = 30,
) -> httpx.Response:
    """Poll one task until `done` holds for an answer (a deadline, never a fixed sleep)."""
    async with asyncio.timeout(timeout):
        while True:
            answer = await post(http, poll_task(task_uuid))
            if done(answer):
                return answer
            await asyncio.sleep(0.02)


def finished(answer: httpx.Response) -> bool:
    """The answer holds the task's result and nothing is still processing."""
    items = answer.json().get("data", [])
    return bool(items) and all(item["status"] != "processing" for item in items)


async def settled_ledger(http: httpx.AsyncClient, timeout: float = 30) -> dict[str, Any]:
    """The ledger once no task is rendering (the sandbox's own view: no registration lag)."""
    async with asyncio.timeout(timeout):
        while True:
            ledger: dict[str, Any] = (await http.get("/sandbox/ledger")).json()
            if all(task["status"] != "processing" for task in ledger["tasks"]):
                return ledger
            await asyncio.sleep(0.02)


# --- the configuration ----------------------------------------------------------------------------


def test_strict_profile_sets_every_knob_and_explicit_values_win() -> None:
    default, strict = SandboxConfig(), SandboxConfig(profile="strict")
    assert {name: getattr(default, name) for name in STRICT_KNOBS} == {
        "batched_polls": True,
        "ack_status": 200,
        "registration_lag": 0.0,
        "success_status": "success",
        "url_with_upload_endpoint": True,
        "upload_conflicts": False,
    }
    assert {name: getattr(strict, name) for name in STRICT_KNOBS} == STRICT_KNOBS
    mixed = SandboxConfig(profile="strict", batched_polls=True, registration_lag=0.3)
    assert mixed.batched_polls is True and mixed.registration_lag == 0.3
    assert mixed.ack_status == 202  # the knobs not given still follow the profile
    alone = SandboxConfig(ack_status=202)
    assert alone.profile == "default" and alone.batched_polls is True


def test_settings_build_takes_the_profile() -> None:
    assert settings.build().profile == "default"
    strict = settings.build(profile="strict", registration_lag=None, seed=3)
    assert strict.registration_lag == 2.0 and strict.seed == 3  # None leaves it to the profile
    assert settings.build(profile="strict", registration_lag=0.5).registration_lag == 0.5
    with pytest.raises(UsageError, match=r"--profile: 'lenient' is not one of default, strict"):
        settings.build(profile="lenient")
    with pytest.raises(UsageError, match="--ack-status"):
        settings.build(ack_status=500)


# --- each knob on its own -------------------------------------------------------------------------


async def test_unbatched_polls_refuse_two_get_responses_as_a_whole(open_api: OpenApi) -> None:
    http, _ = await open_api(config(batched_polls=False))
    first, second = await video_task(http), await video_task(http)
    assert (await post(http, first, second)).status_code == 200  # submissions still batch
    answer = await post(http, poll_task(first["taskUUID"]), poll_task(second["taskUUID"]))
    assert answer.status_code == 400
    (error,) = answer.json()["errors"]
    assert "data" not in answer.json()
    assert error["code"] == "unsupportedBatch" and "one getResponse" in error["message"]
    assert "taskUUID" not in error and "taskType" not in error
    alone = await post(http, poll_task(first["taskUUID"]))
    assert alone.status_code == 200 and alone.json()["data"][0]["taskUUID"] == first["taskUUID"]


async def test_batched_polls_by_default(open_api: OpenApi) -> None:
    http, _ = await open_api(config())
    first, second = await video_task(http), await video_task(http)
    await post(http, first, second)
    answer = await post(http, poll_task(first["taskUUID"]), poll_task(second["taskUUID"]))
    assert answer.status_code == 200
    assert {item["taskUUID"] for item in answer.json()["data"]} == {
        first["taskUUID"],
        second["taskUUID"],
    }


async def test_acknowledgements_get_the_ack_status_and_other_answers_200(
    open_api: OpenApi,
) -> None:
    http, _ = await open_api(config(ack_status=202))
    task = await video_task(http)  # the uploads in there are answered with 200
    ack = await post(http, task)
    assert ack.status_code == 202
    assert ack.json() == {"data": [{"taskType": "videoInference", "taskUUID": task["taskUUID"]}]}
    assert (await post(http, poll_task(task["taskUUID"]))).status_code == 200
    assert (await post(http, image_upload())).status_code == 200
    invalid = await post(http, {**task, "taskUUID": new_uuid(), "numberResults": 9})
    assert invalid.status_code == 400
    assert (await post(http, task)).status_code == 400  # a conflict acknowledges nothing


# Fixed task UUIDs: with seed 0 they meet both shapes of a not-yet-registered task.
LAG_UUIDS = [str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"lag-{i}")) for i in range(6)]


def lag_shape(answer: httpx.Response, task_uuid: str) -> str:
    """How a poll answered a task it could not see yet: "missing" or "empty"."""
    body = answer.json()
    if answer.status_code == 200 and body == {"data": []}:
        return "empty"
    assert answer.status_code == 400, body
    (error,) = body["errors"]
    assert error["code"] == "taskFailedOrNotFound" and error["taskUUID"] == task_uuid
    return "missing"


async def test_registration_lag_hides_new_tasks_then_shows_them(open_api: OpenApi) -> None:
    lag = 0.5
    http, engine = await open_api(config(registration_lag=lag))
    template = await video_task(http)
    tasks = [{**template, "taskUUID": task_uuid} for task_uuid in LAG_UUIDS]
    assert (await post(http, *tasks)).status_code == 200
    shapes = {}
    for task_uuid in LAG_UUIDS:
        shape = lag_shape(await post(http, poll_task(task_uuid)), task_uuid)
        again = lag_shape(await post(http, poll_task(task_uuid)), task_uuid)
        assert shape == again  # fixed per task, not drawn per poll
        shapes[task_uuid] = shape
    elapsed = time.monotonic() - min(engine.tasks[u].accepted_at for u in LAG_UUIDS)
    assert elapsed < lag, "the polls above came too late to be inside the lag"
    assert set(shapes.values()) == {"missing", "empty"}
    for task_uuid in LAG_UUIDS:
        answer = await poll_until(http, task_uuid, lambda a: a.status_code == 200 and finished(a))
        assert time.monotonic() - engine.tasks[task_uuid].accepted_at >= lag
        (item,) = answer.json()["data"]
        assert item["taskUUID"] == task_uuid and item["status"] == "success"


async def test_resubmission_during_the_lag_conflicts_and_bills_once(open_api: OpenApi) -> None:
    http, _ = await open_api(config(registration_lag=60))  # the lag outlasts the whole test
    task = await video_task(http)
    assert (await post(http, task)).status_code == 200
    hidden = await post(http, poll_task(task["taskUUID"]))
    assert lag_shape(hidden, task["taskUUID"]) in ("missing", "empty")
    again = await post(http, task)
    assert again.status_code == 400
    (error,) = again.json()["errors"]
    assert error["code"] == "conflictTaskUUID" and error["taskUUID"] == task["taskUUID"]
    ledger = await settled_ledger(http)
    assert ledger["submissions"] == 1 and ledger["conflicts"] == 1
    (booked,) = ledger["tasks"]
    assert booked["results"] == 1 and booked["cost"] > 0
    assert ledger["total_cost"] == booked["cost"]


async def test_success_status_names_finished_items_in_polls_and_webhooks(
    open_api: OpenApi, receiver: Receiver
) -> None:
    http, engine = await open_api(config(success_status="completed"))
    task = await video_task(http, numberResults=2, webhookURL=receiver.url + "/hook")
    await post(http, task)
    answer = await poll_until(http, task["taskUUID"], finished)
    assert [item["status"] for item in answer.json()["data"]] == ["completed", "completed"]
    await engine.notifier.drain()
    hooks = [json.loads(body) for _, body in receiver.received("POST")]
    assert [hook["status"] for hook in hooks] == ["completed", "completed"]


@pytest.mark.parametrize("with_url", [True, False])
async def test_upload_endpoint_results_without_video_url(
    open_api: OpenApi, receiver: Receiver, with_url: bool
) -> None:
    http, engine = await open_api(config(url_with_upload_endpoint=with_url))
    task = await video_task(
        http, uploadEndpoint=receiver.url + "/bucket/v.mp4", webhookURL=receiver.url + "/hook"
    )
    await post(http, task)
    (item,) = (await poll_until(http, task["taskUUID"], finished)).json()["data"]
    assert item["status"] == "success" and item["videoUUID"] and item["cost"] > 0
    assert ("videoURL" in item) is with_url
    await engine.notifier.drain()
    ((path, video),) = receiver.received("PUT")
    assert path == "/bucket/v.mp4" and len(video) > 1000
    ((_, hook),) = receiver.received("POST")
    assert ("videoURL" in json.loads(hook)) is with_url
    # A task without an uploadEndpoint keeps its URL either way.
    plain = await video_task(http)
    await post(http, plain)
    (item,) = (await poll_until(http, plain["taskUUID"], finished)).json()["data"]
    assert "videoURL" in item


async def test_reused_upload_task_uuid_is_a_conflict(open_api: OpenApi) -> None:
    http, _ = await open_api(config(upload_conflicts=True))
    task_uuid = new_uuid()
    first = await post(http, image_upload(task_uuid))
    assert first.status_code == 200
    for reused in (image_upload(task_uuid), media_upload(task_uuid)):
        answer = await post(http, reused)
        assert answer.status_code == 400
        (error,) = answer.json()["errors"]
        assert error["code"] == "conflictTaskUUID" and error["taskUUID"] == task_uuid
        assert error["context"] == {"taskType": reused["taskType"], "taskUUID": task_uuid}
    # A videoInference's UUID is taken too; a refused upload takes none.
    video = await video_task(http)
    await post(http, video)
    clash = await post(http, media_upload(video["taskUUID"]))
    assert clash.json()["errors"][0]["code"] == "conflictTaskUUID"
    retried = new_uuid()
    refused = await post(http, {**image_upload(retried), "image": "@@not base64@@"})
    assert refused.status_code == 400
    assert (await post(http, image_upload(retried))).status_code == 200


async def test_reused_upload_task_uuid_is_answered_again_by_default(open_api: OpenApi) -> None:
    http, _ = await open_api(config())
    task_uuid = new_uuid()
    answers = [await post(http, media_upload(task_uuid)) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 200]


# --- the profile as a whole -----------------------------------------------------------------------


async def test_strict_profile_end_to_end(open_api: OpenApi, receiver: Receiver) -> None:
    lag = 0.3
    strict = SandboxConfig(
        profile="strict",
        registration_lag=lag,
        api_key=KEY,
        latency=0,
        fixed_latency=0,
        render="stub",
    )
    http, engine = await open_api(strict)
    upload = image_upload()
    assert (await post(http, upload)).status_code == 200
    reused = await post(http, upload)
    assert reused.status_code == 400
    assert reused.json()["errors"][0]["code"] == "conflictTaskUUID"

    task = await video_task(http, uploadEndpoint=receiver.url + "/bucket/v.mp4")
    other = await video_task(http)
    ack = await post(http, task, other)
    assert ack.status_code == 202 and len(ack.json()["data"]) == 2
    hidden = await post(http, poll_task(task["taskUUID"]))
    assert lag_shape(hidden, task["taskUUID"]) in ("missing", "empty")
    conflict = await post(http, task)
    assert conflict.status_code == 400
    assert conflict.json()["errors"][0]["code"] == "conflictTaskUUID"

    both = await post(http, poll_task(task["taskUUID"]), poll_task(other["taskUUID"]))
    assert both.status_code == 400 and "taskUUID" not in both.json()["errors"][0]

    done = await poll_until(http, task["taskUUID"], lambda a: a.status_code == 200 and finished(a))
    (item,) = done.json()["data"]
    assert item["status"] == "completed" and item["videoUUID"] and item["cost"] > 0
    assert "videoURL" not in item
    (plain,) = (
        await poll_until(http, other["taskUUID"], lambda a: a.status_code == 200 and finished(a))
    ).json()["data"]
    assert plain["status"] == "completed" and "videoURL" in plain
    await engine.notifier.drain()
    assert len(receiver.received("PUT")) == 1

    ledger = (await http.get("/sandbox/ledger")).json()
    assert ledger["submissions"] == 2 and ledger["conflicts"] == 1
    assert ledger["total_cost"] == pytest.approx(item["cost"] + plain["cost"])
