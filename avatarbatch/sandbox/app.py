"""The sandbox's HTTP face: Runware's `POST /v1` protocol plus a few `/sandbox/...` extras.

`POST /v1` follows RUNWARE_PROTOCOL.md §11: a JSON array of tasks in, each handled on its own,
`data[]` and `errors[]` out (an empty one left out, since the official SDK raises whenever
`errors` is present), always with a JSON content type. Injected faults play out here, at the
HTTP level, where a real network would make them happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatarbatch.sandbox import answers, downloads, validation
from avatarbatch.sandbox.answers import ConnectionDropped, Items
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.engine import Engine
from avatarbatch.sandbox.items import VIDEO_ROUTE
from avatarbatch.sandbox.store import MEDIA_ROUTE, InputError, decode_inline, fetch
from avatarbatch.sandbox.validation import TaskError

__all__ = ["ConnectionDropped", "create_app"]


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
        Route(MEDIA_ROUTE + "{name}", functools.partial(downloads.media, engine)),
        Route(VIDEO_ROUTE + "{name}", functools.partial(downloads.video, engine)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    return app


async def _method_not_allowed(_: Request) -> Response:
    return answers.errors(
        [answers.error_item(TaskError("methodNotAllowed", "Only POST is supported.", None), {})],
        405,
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
            return answers.errors(
                [answers.error_item(TaskError("payloadTooLarge", "The request is too large."), {})],
                413,
            )
        try:
            tasks = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return answers.errors(
                [answers.error_item(TaskError("invalidJSON", "The body is not valid JSON."), {})],
                400,
            )
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            error = TaskError(
                "invalidRequestBody", "The body must be a JSON array of task objects."
            )
            return answers.errors([answers.error_item(error, {})], 400)
        for task_type in {str(t.get("taskType")) for t in tasks}:
            engine.posts_with[task_type] += 1
        tasks, key = self._caller_key(request, tasks)
        if not self._authorized(key):
            error = TaskError("invalidApiKey", "Invalid API key.", "apiKey", 401)
            return answers.errors([answers.error_item(error, {"taskType": "authentication"})], 401)
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
            return answers.errors([answers.error_item(error, {})], 429, headers)
        if faults.hits("http500", key):
            return answers.server_error(faults.choice("http500", key, 3))
        submits = any(t.get("taskType") == "videoInference" for t in tasks)
        if submits and faults.hits("echo_key", key):
            return answers.key_echo_error(_api_key(request))
        if faults.hits("slow", key):
            await asyncio.sleep(self.config.slow_seconds)
        if faults.hits("reset", key):
            if faults.choice("reset", key, 2) == 0:
                return answers.DroppedResponse(b'{"data": [')  # before anything was done
            answer = await self._process(request, tasks)  # the ambiguous case: done, answer lost
            return answers.DroppedResponse(bytes(answer.body))
        return await self._process(request, tasks)

    async def _process(self, request: Request, tasks: Items) -> JSONResponse:
        refusal = self._whole_refusal(tasks)
        if refusal is not None:
            return answers.errors([answers.error_item(refusal, {})], refusal.status)
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
                errors.append(answers.error_item(refusal, task))
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
        return answers.LenientJSONResponse(body, status_code=status)

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
        if balance is not None and float(self.engine.billed) >= balance:
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


def _api_key(request: Request) -> str:
    return str(getattr(request.state, "api_key", ""))


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")
