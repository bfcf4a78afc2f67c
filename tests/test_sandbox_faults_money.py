"""The sandbox's download, money and key-leak faults, played in-process (and `cut` on the wire).

Fault draws depend only on (seed, kind, key, attempt), and the keys come from the client's
task UUIDs, so the fixed UUIDs below meet the same faults on every run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from submitting import submit_one

from avatarbatch import catalog
from avatarbatch.engine.verify import VideoCheckError, verify_video
from avatarbatch.sandbox.app import create_app
from avatarbatch.sandbox.engine import Engine
from avatarbatch.sandbox.faults import FAULT_DESCRIPTIONS, FAULT_KINDS, FaultSpec, FaultSpecError
from avatarbatch.sandbox.server import running_sandbox
from conftest import FAST, MakeClient, image_bytes, uploads, wav_bytes

KEY = "sk-live-Zq9vEchoMe"
SECONDS = 3.0
TRUE_PRICE = float(catalog.STANDARD.cost(SECONDS))
NEW_KINDS = (
    "html_video",
    "short_body",
    "cut",
    "nan_cost",
    "negative_cost",
    "inf_cost",
    "echo_key",
)
DOWNLOAD_KINDS = ("html_video", "short_body", "cut")
PORTRAIT_URI = "data:image/png;base64," + base64.b64encode(image_bytes()).decode()
VOICE_URI = "data:audio/wav;base64," + base64.b64encode(wav_bytes(SECONDS)).decode()


@dataclass
class Sandbox:
    http: httpx.AsyncClient
    engine: Engine
    inputs: dict[str, str]  #: the uploaded portrait's and voice's UUIDs


OpenSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def open_sandbox() -> AsyncIterator[OpenSandbox]:
    """Factory: an in-process sandbox with these faults, reached through httpx's ASGI transport."""
    opened: list[Sandbox] = []

    async def make(faults: str = "", seed: int = 0) -> Sandbox:
        config = FAST.model_copy(
            update={"api_key": KEY, "faults": FaultSpec.parse(faults), "seed": seed}
        )
        app = create_app(config)
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test"
        )
        http.headers["Authorization"] = f"Bearer {KEY}"
        opened.append(Sandbox(http, app.state.engine, {}))
        opened[-1].inputs = await upload_inputs(http)
        return opened[-1]

    yield make
    for sandbox in opened:
        await sandbox.http.aclose()
        await sandbox.engine.aclose()


def fixed_uuid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"faults-money/{name}"))


async def upload_inputs(http: httpx.AsyncClient) -> dict[str, str]:
    """Upload the portrait and the voice (a task's audio must be a UUID or a URL)."""
    image = {"taskType": "imageUpload", "taskUUID": fixed_uuid("image"), "image": PORTRAIT_URI}
    audio = {
        "taskType": "mediaStorage",
        "taskUUID": fixed_uuid("audio"),
        "operation": "upload",
        "media": VOICE_URI,
    }
    items = (await post(http, image, audio)).json()["data"]
    return {"image": items[0]["imageUUID"], "audio": items[1]["mediaUUID"]}


def video_task(task_uuid: str, inputs: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "videoInference",
        "taskUUID": task_uuid,
        "model": catalog.STANDARD.id,
        "inputs": inputs,
        "deliveryMethod": "async",
        "includeCost": True,
        **fields,
    }


async def post(http: httpx.AsyncClient, *tasks: dict[str, Any]) -> httpx.Response:
    return await http.post("/v1", json=list(tasks))


async def submit(http: httpx.AsyncClient, task: dict[str, Any], attempts: int = 20) -> list[int]:
    """POST the task until it is accepted, as a retrying client would; the statuses seen."""
    statuses: list[int] = []
    for _ in range(attempts):
        statuses.append((await post(http, task)).status_code)
        if statuses[-1] == 200:
            return statuses
    raise AssertionError(f"never accepted: {statuses}")


async def finished(http: httpx.AsyncClient, task_uuid: str, timeout: float = 30) -> httpx.Response:
    """The first getResponse answer in which the task is done (success or failed generation)."""
    async with asyncio.timeout(timeout):
        while True:
            answer = await post(http, {"taskType": "getResponse", "taskUUID": task_uuid})
            body = json.loads(answer.text)  # json.loads, unlike answer.json(), reads NaN
            if body.get("errors") or body["data"][0]["status"] != "processing":
                return answer
            await asyncio.sleep(0.01)


async def finished_video(sandbox: Sandbox, name: str = "video") -> tuple[str, bytes]:
    """Submit a task, wait for it; its video URL and the true bytes of that video."""
    task_uuid = fixed_uuid(name)
    await submit(sandbox.http, video_task(task_uuid, sandbox.inputs))
    item = json.loads((await finished(sandbox.http, task_uuid)).text)["data"][0]
    path = sandbox.engine.tasks[task_uuid].results[0].path
    assert path is not None
    return str(item["videoURL"]), path.read_bytes()


def saved(body: bytes, tmp_path: Path, name: str = "download.mp4") -> Path:
    target = tmp_path / name
    target.write_bytes(body)
    return target


def check(path: Path) -> str:
    with pytest.raises(VideoCheckError) as caught:
        verify_video(path, output_format="MP4", expected_seconds=SECONDS)
    return str(caught.value)


# --- the kinds ------------------------------------------------------------------------------------


def test_new_kinds_are_known_described_and_parsed() -> None:
    assert set(NEW_KINDS) <= set(FAULT_KINDS)
    assert tuple(FAULT_DESCRIPTIONS) == FAULT_KINDS
    assert all(FAULT_DESCRIPTIONS[kind] for kind in FAULT_KINDS)
    spec = FaultSpec.parse(",".join(f"{kind}=0.5" for kind in NEW_KINDS))
    assert spec.rates == dict.fromkeys(NEW_KINDS, 0.5)
    with pytest.raises(FaultSpecError, match="echo_key"):
        FaultSpec.parse("echo_keys=1")  # the message lists the kinds


# --- downloads ------------------------------------------------------------------------------------


async def test_html_video_answers_a_small_error_page_with_status_200(
    open_sandbox: OpenSandbox, tmp_path: Path
) -> None:
    sandbox = await open_sandbox("html_video=1")
    url, _ = await finished_video(sandbox)
    answer = await sandbox.http.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.content.startswith(b"<html>") and 40 <= len(answer.content) <= 80
    assert check(saved(answer.content, tmp_path)).startswith("not a video container")


async def test_short_body_sends_a_third_under_a_matching_content_length(
    open_sandbox: OpenSandbox, tmp_path: Path
) -> None:
    sandbox = await open_sandbox("short_body=1")
    url, video = await finished_video(sandbox)
    answer = await sandbox.http.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "video/mp4"
    assert int(answer.headers["content-length"]) == len(answer.content) == len(video) // 3
    assert answer.content == video[: len(video) // 3]
    assert check(saved(answer.content, tmp_path)).startswith("truncated: ")


async def test_cut_sends_half_without_a_content_length(
    open_sandbox: OpenSandbox, tmp_path: Path
) -> None:
    sandbox = await open_sandbox("cut=1")
    url, video = await finished_video(sandbox)
    answer = await sandbox.http.get(url)
    assert answer.status_code == 200
    assert "content-length" not in answer.headers
    assert answer.content == video[: len(video) // 2]
    assert check(saved(answer.content, tmp_path)).startswith("truncated: ")


async def test_cut_on_the_wire_is_a_cleanly_ended_chunked_body() -> None:
    config = FAST.model_copy(update={"faults": FaultSpec.parse("cut=1")})
    with running_sandbox(config) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            http.headers["Authorization"] = "Bearer any"
            task_uuid = fixed_uuid("wire")
            await submit(http, video_task(task_uuid, await upload_inputs(http)))
            item = json.loads((await finished(http, task_uuid)).text)["data"][0]
            # No exception: the body ends with the closing chunk, not a reset.
            answer = await http.get(item["videoURL"])
        size = server.videos()[item["videoUUID"]]["bytes"]
    assert answer.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in answer.headers
    assert len(answer.content) == size // 2


@pytest.mark.parametrize("kind", DOWNLOAD_KINDS)
async def test_at_rate_1_every_download_attempt_is_broken(
    open_sandbox: OpenSandbox, kind: str
) -> None:
    sandbox = await open_sandbox(f"{kind}=1")
    url, video = await finished_video(sandbox)
    for _ in range(3):
        assert (await sandbox.http.get(url)).content != video
    assert sandbox.engine.faults.injected[kind] == 3


async def download_outcomes(sandbox: Sandbox, attempts: int) -> list[bool]:
    """Whether each of several downloads of the same video brought the whole file."""
    url, video = await finished_video(sandbox)
    return [(await sandbox.http.get(url)).content == video for _ in range(attempts)]


@pytest.mark.parametrize("kind", DOWNLOAD_KINDS)
async def test_download_faults_are_drawn_per_attempt_and_replay_from_the_seed(
    open_sandbox: OpenSandbox, kind: str
) -> None:
    first = await download_outcomes(await open_sandbox(f"{kind}=0.5", seed=4), 12)
    again = await download_outcomes(await open_sandbox(f"{kind}=0.5", seed=4), 12)
    assert first == again
    assert True in first and False in first  # a retried download gets through


# --- money ----------------------------------------------------------------------------------------


async def ledger(sandbox: Sandbox) -> dict[str, Any]:
    return (await sandbox.http.get("/sandbox/ledger")).json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("kind", "token", "is_reported"),
    [
        ("nan_cost", "NaN", math.isnan),
        ("inf_cost", "Infinity", lambda cost: cost == math.inf),
        ("negative_cost", "-0.5", lambda cost: cost == -0.5),
    ],
)
async def test_a_corrupted_cost_is_reported_while_the_ledger_bills_the_true_price(
    open_sandbox: OpenSandbox, kind: str, token: str, is_reported: Callable[[float], bool]
) -> None:
    sandbox = await open_sandbox(f"{kind}=1")
    task_uuid = fixed_uuid(kind)
    await submit(sandbox.http, video_task(task_uuid, sandbox.inputs))
    answer = await finished(sandbox.http, task_uuid)
    assert f'"cost":{token}' in answer.text  # the raw token, as json.dumps writes it
    item = json.loads(answer.text)["data"][0]
    assert item["status"] == "success" and is_reported(item["cost"])
    billed = await ledger(sandbox)
    assert billed["total_cost"] == pytest.approx(TRUE_PRICE)
    assert billed["tasks"][0]["cost"] == pytest.approx(TRUE_PRICE)
    assert TRUE_PRICE > 0


async def test_each_poll_draws_the_reported_cost_anew(open_sandbox: OpenSandbox) -> None:
    sandbox = await open_sandbox("nan_cost=0.5", seed=2)
    task_uuid = fixed_uuid("polls")
    await submit(sandbox.http, video_task(task_uuid, sandbox.inputs))
    await finished(sandbox.http, task_uuid)
    costs = []
    for _ in range(12):
        answer = await post(sandbox.http, {"taskType": "getResponse", "taskUUID": task_uuid})
        costs.append(json.loads(answer.text)["data"][0]["cost"])
    assert any(math.isnan(cost) for cost in costs)
    assert TRUE_PRICE in costs  # polling again can show the true price
    assert (await ledger(sandbox))["total_cost"] == pytest.approx(TRUE_PRICE)


async def test_without_include_cost_there_is_no_cost_to_corrupt(open_sandbox: OpenSandbox) -> None:
    sandbox = await open_sandbox("nan_cost=1,inf_cost=1,negative_cost=1")
    task_uuid = fixed_uuid("no-cost")
    await submit(sandbox.http, video_task(task_uuid, sandbox.inputs, includeCost=False))
    item = json.loads((await finished(sandbox.http, task_uuid)).text)["data"][0]
    assert item["status"] == "success" and "cost" not in item
    assert not sandbox.engine.faults.injected


# --- the key echoed back --------------------------------------------------------------------------


async def test_echo_key_answers_a_submit_with_a_500_that_repeats_the_key(
    open_sandbox: OpenSandbox,
) -> None:
    sandbox = await open_sandbox("echo_key=1")
    answer = await post(sandbox.http, video_task(fixed_uuid("echo"), sandbox.inputs))
    assert answer.status_code == 500
    message = answer.json()["errors"][0]["message"]
    assert f"Invalid request for key {KEY}" in message
    assert f"Authorization: Bearer {KEY}" in message
    # Only submissions: uploads and polls go through.
    upload = {"taskType": "imageUpload", "taskUUID": fixed_uuid("up"), "image": PORTRAIT_URI}
    assert (await post(sandbox.http, upload)).status_code == 200


async def test_echo_key_repeats_a_key_sent_in_an_authentication_task(
    open_sandbox: OpenSandbox,
) -> None:
    sandbox = await open_sandbox("echo_key=1")
    del sandbox.http.headers["Authorization"]
    auth = {"taskType": "authentication", "apiKey": KEY}
    answer = await post(sandbox.http, auth, video_task(fixed_uuid("echo-auth"), sandbox.inputs))
    assert answer.status_code == 500
    assert f"Bearer {KEY}" in answer.json()["errors"][0]["message"]


async def test_a_client_retries_past_echo_key_and_its_submit_lands(sandbox: MakeClient) -> None:
    config = FAST.model_copy(update={"faults": FaultSpec.parse("echo_key=0.5"), "seed": 1})
    client, engine = await sandbox(config, max_attempts=10)
    image, audio = await uploads(client)
    task = video_task(fixed_uuid("client"), {"image": image, "audio": audio})
    await submit_one(client, task)
    assert engine.faults.injected["echo_key"] >= 1  # at least one attempt was refused first
    assert task["taskUUID"] in engine.tasks


async def failure_messages(sandbox: Sandbox, names: list[str]) -> list[str]:
    messages = []
    for name in names:
        await submit(sandbox.http, video_task(fixed_uuid(name), sandbox.inputs))
    for name in names:
        answer = await finished(sandbox.http, fixed_uuid(name))
        messages.append(answer.json()["errors"][0]["message"])
    return messages


async def test_echo_key_puts_the_key_into_failed_generation_messages(
    open_sandbox: OpenSandbox,
) -> None:
    sandbox = await open_sandbox("task_error=1,echo_key=0.5", seed=3)
    messages = await failure_messages(sandbox, [f"leak-{i}" for i in range(6)])
    assert all("failed to generate this video" in message for message in messages)
    leaking = [message for message in messages if KEY in message]
    assert leaking and len(leaking) < len(messages)
    assert all(f"Authorization: Bearer {KEY}" in message for message in leaking)


async def test_without_echo_key_failed_generations_do_not_hold_the_key(
    open_sandbox: OpenSandbox,
) -> None:
    sandbox = await open_sandbox("task_error=1")
    messages = await failure_messages(sandbox, ["plain"])
    assert KEY not in messages[0]


async def test_the_videos_endpoint_still_describes_the_true_files(
    open_sandbox: OpenSandbox,
) -> None:
    sandbox = await open_sandbox("short_body=1,cut=1,html_video=1")
    url, video = await finished_video(sandbox)
    served = (await sandbox.http.get("/sandbox/videos")).json()
    (entry,) = served.values()
    assert entry["bytes"] == len(video)
    assert entry["sha256"] == hashlib.sha256(video).hexdigest()
    assert url.rsplit("/", 1)[1].split(".")[0] in served
