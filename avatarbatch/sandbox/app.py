"""The sandbox's HTTP face: Runware's `POST /v1` protocol plus a few `/sandbox/...` extras.

`POST /v1` follows RUNWARE_PROTOCOL.md §11: a JSON array of tasks in, each handled on its own,
`data[]` and `errors[]` out (an empty one left out, since the official SDK raises whenever
`errors` is present), always with a JSON content type. Injected faults play out here, at the
HTTP level, where a real network would make them happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from avatarbatch.sandbox import validation
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.engine import VIDEO_ROUTE, Engine
from avatarbatch.sandbox.store import MEDIA_ROUTE, InputError, decode_inline, fetch
from avatarbatch.sandbox.validation import TaskError

Items = list[dict[str, Any]]
# What a CDN or proxy answers in place of a video it cannot serve, with status 200 all the same.
HTML_ERROR_PAGE = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
STREAM_CHUNK = 1024 * 1024
VIDEO_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"}


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


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """A sandbox app; serve it with uvicorn or call it through httpx.ASGITransport."""
    config = config or SandboxConfig()
    engine = Engine(config)
    api = _Api(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.ensure_started()
        yield
        await engine.aclose()

    routes = [
        Route(config.path, api.handle, methods=["POST"]),
        Route(config.path, _method_not_allowed, methods=["GET", "PUT", "PATCH", "DELETE"]),
        Route("/sandbox/ledger", lambda _: JSONResponse(engine.ledger())),
        Route("/sandbox/stats", lambda _: JSONResponse(engine.stats())),
        Route("/sandbox/requests", lambda _: JSONResponse({"post_times": engine.post_times})),
        Route("/sandbox/videos", lambda _: JSONResponse(engine.videos())),
        Route(MEDIA_ROUTE + "{name}", api.media),
        Route(VIDEO_ROUTE + "{name}", api.video),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    return app


async def _method_not_allowed(_: Request) -> Response:
    return _errors(
        [_error_item(TaskError("methodNotAllowed", "Only POST is supported.", None), {})], 405
    )


class _Api:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config

    async def handle(self, request: Request) -> Response:
        engine = self.engine
        engine.ensure_started()
        engine.requests["http_posts"] += 1
        engine.post_times.append(time.time())
        try:
            body = await request.body()
        except ClientDisconnect:  # the client went away (killed) mid-request: nothing to answer
            return Response(status_code=499)
        if len(body) > self.config.max_body_bytes:
            return _errors(
                [_error_item(TaskError("payloadTooLarge", "The request is too large."), {})], 413
            )
        try:
            tasks = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _errors(
                [_error_item(TaskError("invalidJSON", "The body is not valid JSON."), {})], 400
            )
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            error = TaskError(
                "invalidRequestBody", "The body must be a JSON array of task objects."
            )
            return _errors([_error_item(error, {})], 400)
        for task_type in {str(t.get("taskType")) for t in tasks}:
            engine.posts_with[task_type] += 1
        tasks, key = self._caller_key(request, tasks)
        if not self._authorized(key):
            error = TaskError("invalidApiKey", "Invalid API key.", "apiKey", 401)
            return _errors([_error_item(error, {"taskType": "authentication"})], 401)
        request.state.api_key = key  # for the tasks it submits, which `echo_key` may leak
        return await self._with_faults(request, tasks)

    def _caller_key(self, request: Request, tasks: Items) -> tuple[Items, str]:
        """The tasks without an authentication task, and the key from it or the header."""
        key = ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            key = header[7:].strip()
        if tasks and tasks[0].get("taskType") == "authentication":
            key = str(tasks[0].get("apiKey") or "")
            tasks = tasks[1:]
        return tasks, key

    def _authorized(self, key: str) -> bool:
        expected = self.config.api_key
        return bool(key) and (expected is None or hmac.compare_digest(key, expected))

    async def _with_faults(self, request: Request, tasks: Items) -> Response:
        faults = self.engine.faults
        key = "|".join(str(t.get("taskUUID")) + str(t.get("taskType")) for t in tasks[:3])
        if faults.hits("http429", key):
            error = TaskError(
                "rateLimitExceeded", "Too many requests; retry later (injected).", None, 429
            )
            headers = {"Retry-After": str(self.config.retry_after)}
            return _errors([_error_item(error, {})], 429, headers)
        if faults.hits("http500", key):
            return _server_error(faults.choice("http500", key, 3))
        submits = any(t.get("taskType") == "videoInference" for t in tasks)
        if submits and faults.hits("echo_key", key):
            return _key_echo_error(_api_key(request))
        if faults.hits("slow", key):
            await asyncio.sleep(self.config.slow_seconds)
        if faults.hits("reset", key):
            if faults.choice("reset", key, 2) == 0:
                return DroppedResponse(b'{"data": [')  # before anything was done
            answer = await self._process(request, tasks)  # the ambiguous case: done, answer lost
            return DroppedResponse(bytes(answer.body))
        return await self._process(request, tasks)

    async def _process(self, request: Request, tasks: Items) -> JSONResponse:
        refusal = self._whole_refusal(tasks)
        if refusal is not None:
            return _errors([_error_item(refusal, {})], refusal.status)
        data: Items = []
        errors: Items = []
        rejected: list[TaskError] = []
        accepted = False
        for task in tasks:
            task_data, task_errors, refusal = await self._one(request, task)
            data.extend(task_data)
            errors.extend(task_errors)
            if refusal is not None:
                rejected.append(refusal)
                errors.append(_error_item(refusal, task))
            elif task.get("taskType") == "videoInference" and task_data:
                accepted = True
        status = self.config.ack_status if accepted else 200
        if rejected and not data and len(rejected) == len(errors):
            status = rejected[0].status  # nothing succeeded: the request as a whole failed
        body: dict[str, Items] = {}
        if data:
            body["data"] = data
        if errors:
            body["errors"] = errors
        if not body:
            body["data"] = []
        return LenientJSONResponse(body, status_code=status)

    def _whole_refusal(self, tasks: Items) -> TaskError | None:
        """Why the whole POST is refused before any task in it is handled, if it is."""
        polls = sum(1 for t in tasks if t.get("taskType") == "getResponse")
        if polls > 1 and not self.config.batched_polls:
            # The docs never show two getResponse tasks in one call (§3.2); a strict API may
            # refuse them, and then for the request, naming none of the tasks.
            message = "Send one getResponse task per request; polls cannot be batched."
            return TaskError("unsupportedBatch", message)
        if self.config.batch_refusal == "whole":
            return self._first_invalid_submission(tasks)
        return None

    async def _one(
        self, request: Request, task: dict[str, Any]
    ) -> tuple[Items, Items, TaskError | None]:
        """(data items, failed-generation items, refusal) for one task of the array."""
        task_type = task.get("taskType")
        if task_type in ("videoInference", "getResponse", "imageUpload", "mediaStorage"):
            self.engine.requests[str(task_type)] += 1
        refusal = validation.check_uuid(task)
        if refusal is not None:
            return [], [], refusal
        uuid = str(task["taskUUID"])
        if task_type == "getResponse":
            return self._poll(request, uuid)
        if task_type == "videoInference":
            return self._submit(request, task)
        if task_type in ("imageUpload", "mediaStorage"):
            return await self._upload(request, task)
        return (
            [],
            [],
            TaskError("invalidTaskType", f"Task type {task_type!r} is not supported.", "taskType"),
        )

    def _poll(self, request: Request, uuid: str) -> tuple[Items, Items, TaskError | None]:
        engine = self.engine
        registering = engine.registering(uuid)
        if registering and engine.lag_answers_empty(uuid):
            return [], [], None  # not known yet, said by answering nothing for it
        if uuid not in engine.tasks or registering:
            return (
                [],
                [],
                TaskError(
                    "taskFailedOrNotFound", f"No task with UUID {uuid} was found.", "taskUUID"
                ),
            )
        # A persistent sandbox may have restarted on another port since the task was sent:
        # its results are where the client reaches it now.
        base = _base_url(request) if self.config.persist else None
        data, failed = engine.poll(uuid, base)
        return data, failed, None

    def _submit(
        self, request: Request, task: dict[str, Any]
    ) -> tuple[Items, Items, TaskError | None]:
        uuid = task["taskUUID"]
        if uuid in self.engine.tasks:
            self.engine.count_conflict()
            return (
                [],
                [],
                TaskError(
                    "conflictTaskUUID", f"A task with UUID {uuid} already exists.", "taskUUID"
                ),
            )
        balance = self.config.balance
        if balance is not None and self.engine.ledger()["total_cost"] >= balance:
            message = "Insufficient credits to run this task; add funds to your account."
            return [], [], TaskError("insufficientCredits", message, None, 402)
        refusal = self._invalid_submission(task)
        if refusal is not None:
            return [], [], refusal
        self.engine.accept(task, _base_url(request), _api_key(request))
        return [{"taskType": "videoInference", "taskUUID": uuid}], [], None

    def _first_invalid_submission(self, tasks: Items) -> TaskError | None:
        for task in tasks:
            if task.get("taskType") == "videoInference":
                refusal = self._invalid_submission(task)
                if refusal is not None:
                    return refusal
        return None

    def _invalid_submission(self, task: dict[str, Any]) -> TaskError | None:
        """Why a videoInference task is refused at submit time, if it is."""
        return validation.check_video(task) or self._check_input_uuids(task["inputs"])

    def _check_input_uuids(self, inputs: dict[str, Any]) -> TaskError | None:
        for name in ("image", "audio"):
            value = inputs[name]
            if validation.media_form(value) == "uuid" and self.engine.media.get(value) is None:
                code = "invalidImage" if name == "image" else "invalidAudio"
                return TaskError(code, f"No uploaded media has UUID {value}.", f"inputs.{name}")
        return None

    async def _upload(
        self, request: Request, task: dict[str, Any]
    ) -> tuple[Items, Items, TaskError | None]:
        is_image = task.get("taskType") == "imageUpload"
        field_name = "image" if is_image else "media"
        refusal = validation.check_upload(task, field_name) or self._upload_conflict(task)
        if refusal is not None:
            return [], [], refusal
        value = task[field_name]
        try:
            if validation.media_form(value) == "url":
                data, mime = await fetch(value, allow_remote=self.config.allow_remote)
            else:
                data, mime = decode_inline(value)
        except InputError as exc:
            return [], [], TaskError(exc.code, str(exc), field_name)
        item = await self.engine.store_upload(data, mime, task["taskUUID"])
        url = f"{_base_url(request)}{MEDIA_ROUTE}{item.filename}"
        answer: dict[str, Any] = {"taskType": task["taskType"], "taskUUID": task["taskUUID"]}
        if is_image:
            answer.update(imageUUID=item.uuid, imageURL=url)
        else:
            answer.update(operation="upload", mediaUUID=item.uuid, mediaURL=url)
        return [answer], [], None

    def _upload_conflict(self, task: dict[str, Any]) -> TaskError | None:
        """A reused taskUUID, when uploads must be unique like every other task (strict)."""
        uuid = task["taskUUID"]
        if not self.config.upload_conflicts:
            return None
        if uuid not in self.engine.upload_uuids and uuid not in self.engine.tasks:
            return None
        return TaskError("conflictTaskUUID", f"A task with UUID {uuid} already exists.", "taskUUID")

    async def media(self, request: Request) -> Response:
        item = self.engine.media.get(request.path_params["name"].split(".", 1)[0])
        if item is None:
            return _errors(
                [_error_item(TaskError("notFound", "No such media.", None, 404), {})], 404
            )
        if item.content is None and item.path is not None:  # restored: served from its file
            return FileResponse(item.path, media_type=item.mime)
        return Response(item.data, media_type=item.mime)

    async def video(self, request: Request) -> Response:
        self.engine.requests["downloads"] += 1
        name = request.path_params["name"]
        found = self.engine.video(name)
        if found is None or found[0].path is None:
            return _errors(
                [
                    _error_item(
                        TaskError("notFound", "No such video, or it expired.", None, 404), {}
                    )
                ],
                404,
            )
        result, task = found
        assert result.path is not None
        media_type = VIDEO_TYPES[result.path.suffix[1:]]
        faulty = self._faulty_video(Engine.result_key(task, result), result.path, media_type)
        return faulty or FileResponse(result.path, media_type=media_type)

    def _faulty_video(self, key: str, path: Path, media_type: str) -> Response | None:
        """A broken answer for this download, if a download fault hits it.

        Drawn per video and per attempt, so a retried download of the same video can succeed.
        """
        faults = self.engine.faults
        if faults.hits("truncate", key):
            return DroppedResponse(path.read_bytes(), media_type)
        if faults.hits("html_video", key):
            return Response(HTML_ERROR_PAGE, media_type="text/html")
        if faults.hits("short_body", key):
            # A Content-Length that matches the cut: no length check can notice.
            third = path.stat().st_size // 3
            headers = {"content-length": str(third)}
            return StreamingResponse(_prefix(path, third), headers=headers, media_type=media_type)
        if faults.hits("cut", key):
            # No Content-Length: the body is close-delimited (chunked over HTTP/1.1) and ends
            # cleanly, so only the file itself can tell it is short.
            return StreamingResponse(_prefix(path, path.stat().st_size // 2), media_type=media_type)
        return None


async def _prefix(path: Path, length: int) -> AsyncIterator[bytes]:
    """The first `length` bytes of a file, read in a thread chunk by chunk (videos are big)."""
    with path.open("rb") as handle:
        while length > 0:
            chunk = await asyncio.to_thread(handle.read, min(STREAM_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def _api_key(request: Request) -> str:
    return str(getattr(request.state, "api_key", ""))


def _key_echo_error(key: str) -> Response:
    """A 500 whose text repeats the caller's key, as careless upstream error pages do."""
    message = (
        f"Invalid request for key {key} (injected). Request headers: Authorization: Bearer {key}"
    )
    error = TaskError("internalServerError", message, None, 500)
    return _errors([_error_item(error, {})], 500)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _error_item(error: TaskError, task: dict[str, Any]) -> dict[str, Any]:
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


def _errors(items: Items, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": items}, status_code=status, headers=headers)


def _server_error(variant: int) -> Response:
    if variant == 0:
        error = TaskError("internalServerError", "Internal server error (injected).", None, 500)
        return _errors([_error_item(error, {})], 500)
    if variant == 1:
        error = TaskError("serviceUnavailable", "Service unavailable (injected).", None, 503)
        return _errors([_error_item(error, {})], 503)
    # A proxy in front of the API answering with its own HTML page, as real ones do.
    page = "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
    return Response(page, status_code=502, media_type="text/html")
