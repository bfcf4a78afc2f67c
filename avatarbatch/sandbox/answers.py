"""The shapes of the sandbox's answers: Runware's error items, injected broken answers."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from avatarbatch.sandbox.validation import TaskError

Items = list[dict[str, Any]]


class ConnectionDropped(Exception):
    """Raised after a partial answer, so the server closes the connection mid-message."""


class DroppedResponse(Response):
    """Promises the whole body, sends part of it, then drops the connection."""

    def __init__(self, body: bytes, media_type: str = "application/json") -> None:
        super().__init__(body, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )
        raise ConnectionDropped("connection dropped on purpose (sandbox fault)")


class LenientJSONResponse(JSONResponse):
    """JSON that may hold NaN and Infinity as bare tokens, as Python's json.dumps writes them.

    Starlette refuses them; the money faults need them, the way a sloppy server emits them.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def key_echo_error(key: str) -> Response:
    """A 500 whose text repeats the caller's key, as careless upstream error pages do."""
    message = (
        f"Invalid request for key {key} (injected). Request headers: Authorization: Bearer {key}"
    )
    error = TaskError("internalServerError", message, None, 500)
    return errors([error_item(error, {})], 500)


def error_item(error: TaskError, task: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.parameter:
        item["parameter"] = error.parameter
    for key in ("taskType", "taskUUID"):
        if task.get(key) is not None:
            item[key] = task[key]
    if error.code == "conflictTaskUUID":
        item["context"] = {"taskType": task.get("taskType"), "taskUUID": task.get("taskUUID")}
        if task.get("taskType") == "videoInference":  # uploads are answered at once: no mode
            item["context"]["deliveryMethod"] = task.get("deliveryMethod", "async")
    item["documentation"] = "https://runware.ai/docs/en/getting-started/errors"
    return item


def errors(items: Items, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": items}, status_code=status, headers=headers)


def server_error(variant: int) -> Response:
    if variant == 0:
        error = TaskError("internalServerError", "Internal server error (injected).", None, 500)
        return errors([error_item(error, {})], 500)
    if variant == 1:
        error = TaskError("serviceUnavailable", "Service unavailable (injected).", None, 503)
        return errors([error_item(error, {})], 503)
    # A proxy in front of the API answering with its own HTML page, as real ones do.
    page = "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
    return Response(page, status_code=502, media_type="text/html")
