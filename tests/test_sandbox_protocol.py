"""The sandbox speaks Runware's REST protocol: envelopes, auth, validation at every boundary."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from avatarbatch import catalog
from avatarbatch.sandbox.app import create_app
from avatarbatch.sandbox.config import SandboxConfig
from conftest import DEMO, FAST, new_uuid

PORTRAIT = (DEMO / "media/presenter.png").read_bytes()


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(FAST.model_copy(update={"api_key": "k"}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test"
    ) as http:
        http.headers["Authorization"] = "Bearer k"
        yield http
    await app.state.engine.aclose()


async def post(api: httpx.AsyncClient, *tasks: dict[str, Any]) -> httpx.Response:
    return await api.post("/v1", json=list(tasks))


async def uploaded(api: httpx.AsyncClient) -> str:
    answer = await post(
        api,
        {
            "taskType": "imageUpload",
            "taskUUID": new_uuid(),
            "image": base64.b64encode(PORTRAIT).decode(),
        },
    )
    return str(answer.json()["data"][0]["imageUUID"])


def video(**fields: Any) -> dict[str, Any]:
    task = {
        "taskType": "videoInference",
        "taskUUID": new_uuid(),
        "model": catalog.STANDARD.id,
        "inputs": {
            "image": "https://cdn.example.org/a.png",
            "audio": "https://cdn.example.org/a.mp3",
        },
    }
    task.update(fields)
    return {k: v for k, v in task.items() if v is not None}


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"outputQuality": 19}, False),
        ({"outputQuality": 20}, True),
        ({"outputQuality": 99}, True),
        ({"outputQuality": 100}, False),
        ({"outputQuality": "95"}, False),
        ({"outputQuality": True}, False),
        ({"numberResults": 0}, False),
        ({"numberResults": 1}, True),
        ({"numberResults": 4}, True),
        ({"numberResults": 5}, False),
        ({"ttl": 59}, False),
        ({"ttl": 60}, True),
        ({"positivePrompt": ""}, False),
        ({"positivePrompt": "x"}, True),
        ({"positivePrompt": "x" * 2500}, True),
        ({"positivePrompt": "x" * 2501}, False),
        ({"outputFormat": "WEBM"}, True),
        ({"outputFormat": "MOV"}, True),
        ({"outputFormat": "GIF"}, False),
        ({"outputType": "URL"}, True),
        ({"outputType": "base64Data"}, False),
        ({"deliveryMethod": "async"}, True),
        ({"deliveryMethod": "sync"}, False),
        ({"includeCost": True}, True),
        ({"includeCost": "yes"}, False),
        ({"safety": {"checkContent": True, "mode": "full"}}, True),
        ({"safety": {"mode": "strict"}}, False),
        ({"webhookURL": "https://hooks.example.org/x"}, True),
        ({"webhookURL": "not a url"}, False),
        ({"uploadEndpoint": "http://127.0.0.1:9/put"}, True),
        ({"routing": {}}, True),
        ({"model": catalog.PRO.id}, True),
        ({"model": "klingai:avatar@1.0"}, False),
        ({"model": None}, False),
        ({"inputs": {"image": "data:image/png;base64,iVBORw0KGgo=", "audio": new_uuid()}}, False),
        (
            {"inputs": {"image": "https://x.org/a.png", "audio": "data:audio/mpeg;base64,SUQz"}},
            False,
        ),
        ({"inputs": {"image": "https://x.org/a.png"}}, False),
        ({"inputs": {"audio": "https://x.org/a.mp3"}}, False),
        ({"inputs": None}, False),
        ({"seed": 1}, False),
        ({"width": 512}, False),
        ({"negativePrompt": "x"}, False),
        ({"taskUUID": "not-a-uuid"}, False),
    ],
)
async def test_video_inference_validation_boundaries(
    api: httpx.AsyncClient, fields: dict[str, Any], ok: bool
) -> None:
    answer = await post(api, video(**fields))
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    if ok:
        assert answer.status_code == 200 and "errors" not in body
        (ack,) = body["data"]
        assert set(ack) == {"taskType", "taskUUID"}  # an acknowledgement, nothing result-like
    else:
        assert answer.status_code == 400 and "data" not in body
        (error,) = body["errors"]
        assert error["code"].startswith(("invalid", "missing", "unsupported", "unknown"))
        assert error["parameter"]


async def test_each_task_of_an_array_is_handled_on_its_own(api: httpx.AsyncClient) -> None:
    good, bad = video(), video(numberResults=9)
    answer = await post(api, good, bad)
    body = answer.json()
    assert answer.status_code == 200
    assert [item["taskUUID"] for item in body["data"]] == [good["taskUUID"]]
    assert [item["taskUUID"] for item in body["errors"]] == [bad["taskUUID"]]


async def test_authentication_task_replaces_the_header() -> None:
    app = create_app(FAST.model_copy(update={"api_key": "k"}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://s"
    ) as http:
        ok = await http.post("/v1", json=[{"taskType": "authentication", "apiKey": "k"}, video()])
        assert ok.status_code == 200 and len(ok.json()["data"]) == 1
        wrong = await http.post(
            "/v1", json=[{"taskType": "authentication", "apiKey": "nope"}, video()]
        )
        none = await http.post("/v1", json=[video()])
    for answer in (wrong, none):
        assert answer.status_code == 401
        assert answer.json() == {
            "errors": [
                {
                    "code": "invalidApiKey",
                    "message": "Invalid API key.",
                    "parameter": "apiKey",
                    "taskType": "authentication",
                    "documentation": "https://runware.ai/docs/en/getting-started/errors",
                }
            ]
        }
    await app.state.engine.aclose()


async def test_without_a_configured_key_any_non_empty_key_is_accepted() -> None:
    app = create_app(SandboxConfig(render="stub"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://s"
    ) as http:
        assert (
            await http.post("/v1", json=[], headers={"Authorization": "Bearer anything"})
        ).status_code == 200
        assert (
            await http.post("/v1", json=[], headers={"Authorization": "Bearer "})
        ).status_code == 401
    await app.state.engine.aclose()


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "invalidJSON"),
        (b'{"a": 1}', "invalidRequestBody"),
        (b"[1, 2]", "invalidRequestBody"),
    ],
)
async def test_bodies_that_are_not_task_arrays(
    api: httpx.AsyncClient, content: bytes, code: str
) -> None:
    answer = await api.post("/v1", content=content)
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == code


async def test_only_post_is_allowed(api: httpx.AsyncClient) -> None:
    answer = await api.get("/v1")
    assert answer.status_code == 405 and answer.headers["content-type"] == "application/json"


async def test_uploads_return_uuids_and_urls_that_work_as_inputs(api: httpx.AsyncClient) -> None:
    image = await post(
        api,
        {
            "taskType": "imageUpload",
            "taskUUID": new_uuid(),
            "image": "data:image/png;base64," + base64.b64encode(PORTRAIT).decode(),
        },
    )
    media = await post(
        api,
        {
            "taskType": "mediaStorage",
            "taskUUID": new_uuid(),
            "operation": "upload",
            "media": base64.b64encode(b"ID3" + b"\0" * 64).decode(),
        },
    )
    image_item, media_item = image.json()["data"][0], media.json()["data"][0]
    assert set(image_item) == {"taskType", "taskUUID", "imageUUID", "imageURL"}
    assert set(media_item) == {"taskType", "taskUUID", "operation", "mediaUUID", "mediaURL"}
    served = await api.get(image_item["imageURL"])
    assert served.content == PORTRAIT
    by_url = await post(
        api, video(inputs={"image": image_item["imageURL"], "audio": media_item["mediaUUID"]})
    )
    assert by_url.status_code == 200


async def test_unknown_input_uuid_is_refused_at_submit(api: httpx.AsyncClient) -> None:
    answer = await post(api, video(inputs={"image": new_uuid(), "audio": "https://x.org/a.mp3"}))
    assert answer.json()["errors"][0]["code"] == "invalidImage"


async def test_upload_of_a_remote_url_is_refused_without_allow_remote(
    api: httpx.AsyncClient,
) -> None:
    answer = await post(
        api,
        {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": "https://example.org/a.png"},
    )
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "invalidRemoteURL"


async def test_get_response_for_unknown_tasks(api: httpx.AsyncClient) -> None:
    answer = await post(api, {"taskType": "getResponse", "taskUUID": new_uuid()})
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "taskFailedOrNotFound"


async def test_conflict_carries_context(api: httpx.AsyncClient) -> None:
    task = video()
    await post(api, task)
    (error,) = (await post(api, task)).json()["errors"]
    assert error["code"] == "conflictTaskUUID"
    assert error["context"] == {
        "taskType": "videoInference",
        "taskUUID": task["taskUUID"],
        "deliveryMethod": "async",
    }


async def test_ledger_and_stats_shapes(api: httpx.AsyncClient) -> None:
    await post(api, video())
    ledger = (await api.get("/sandbox/ledger")).json()
    assert set(ledger) == {"tasks", "total_cost", "submissions", "conflicts"}
    assert set(ledger["tasks"][0]) == {"taskUUID", "model", "status", "seconds", "results", "cost"}
    stats = (await api.get("/sandbox/stats")).json()
    assert set(stats["requests"]) == {
        "http_posts",
        "videoInference",
        "getResponse",
        "mediaStorage",
        "imageUpload",
        "downloads",
    }
    assert stats["peak_in_flight"] == 1
