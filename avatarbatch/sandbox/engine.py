"""The simulated provider behind the sandbox: a queue, render slots, results and a ledger.

Accepted tasks wait in a FIFO queue for one of `workers` render slots, like a real provider's
capacity; a task's render takes `latency` seconds per second of audio plus a fixed part, then
its results appear one by one. Billing follows Runware's rule (price x output seconds, rounded
to 5 places) per successful result and never for failures; a reused task UUID is refused with
`conflictTaskUUID` and never billed twice.

With `persist`, every change is also written to storage_dir (persist.py) and a new engine on
the same folder carries on where the last one stopped: finished tasks keep their answers and
videos; unfinished ones are queued again and render the results they still owe (with the
videoUUIDs and seeds given at acceptance), billed when they succeed, and only once, since the
ledger is the sum of the results that succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import tempfile
import time
import uuid as uuidlib
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from avatarbatch.sandbox import accounts, items, persist, restore, store
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultInjector, unit_interval
from avatarbatch.sandbox.inputs import Inputs
from avatarbatch.sandbox.notify import Notifier
from avatarbatch.sandbox.render import (
    EXTENSIONS,
    RenderError,
    pad_video,
    render_stub,
    render_video,
)
from avatarbatch.sandbox.tasks import Result, Task

log = logging.getLogger("avatarbatch.sandbox")

# Codes of injected failed generations: both are transient in the official SDK's taxonomy.
FAILED_GENERATION_CODES = ("timeoutProvider", "providerError")
# What the money faults report instead of the price; the ledger keeps billing the true one.
BOGUS_COSTS: dict[str, float] = {"nan_cost": math.nan, "inf_cost": math.inf, "negative_cost": -0.5}


class Engine:
    """All sandbox state. Lives in the server's event loop; workers start on first use."""

    def __init__(self, config: SandboxConfig) -> None:
        if config.persist and config.storage_dir is None:  # model_copy skips the validator
            raise ValueError("a persistent sandbox needs a storage_dir")
        self.config = config
        self.tasks: dict[str, Task] = {}
        #: every result by its videoUUID, so a download finds its file without a scan
        self._by_video: dict[str, tuple[Result, Task]] = {}
        self.billed = Decimal(0)  #: the ledger's total, kept as results succeed
        self.media = store.MediaStore()
        self.faults = FaultInjector(config.faults, config.seed)
        self.requests: Counter[str] = Counter()  #: tasks by type, and HTTP requests
        self.posts_with: Counter[str] = Counter()  #: POSTs holding at least one task of a type
        self.post_times: list[float] = []
        self.conflicts = 0
        self.upload_uuids: set[str] = set()  #: taskUUIDs of answered imageUpload/mediaStorage
        self.in_flight = 0
        self.peak_in_flight = 0
        self._queue: asyncio.Queue[Task] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if config.storage_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="avatarbatch-sandbox-")
        self.storage = Path(config.storage_dir or self._own_dir.name)  # type: ignore[union-attr]
        self.notifier = Notifier(allow_remote=config.allow_remote)
        self.inputs = Inputs(self.storage, self.media, allow_remote=config.allow_remote)
        self.state: persist.StateFile | None = None  #: where a persistent sandbox saves
        self._resumed: list[Task] = []  #: restored unfinished tasks, queued once started
        if config.persist:
            self.state = persist.StateFile(self.storage)
            try:
                self._restore(self.state.load())
            except BaseException:
                self.state.close()
                raise

    def ensure_started(self) -> None:
        """Start the render slots in the running loop (an ASGI transport has no lifespan)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.config.workers)]
            for task in self._resumed:
                self._queue.put_nowait(task)
            self._resumed = []

    async def aclose(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        self._queue = None
        await self.notifier.aclose()
        self.close_state()
        if self._own_dir is not None:
            self._own_dir.cleanup()

    # --- persistence ----------------------------------------------------------------------------

    def close_state(self) -> None:
        """Close the state file and free the storage folder for another sandbox (idempotent)."""
        if self.state is not None:
            self.state.close()
            self.state = None

    def _restore(self, saved: persist.Saved) -> None:
        """Take up what an earlier run saved: its tasks, uploads and conflict count."""
        restored = restore.restore(saved, self.storage)
        for item in restored.uploads:
            self.media.add(item)
        self.upload_uuids = restored.upload_uuids
        self.conflicts = saved.conflicts
        for task in restored.tasks.values():
            self._index(task)
        for task in restored.ended:
            self._save(task)
        self._resumed = restored.resumed
        self.in_flight = self.peak_in_flight = len(restored.resumed)

    def _save(self, task: Task) -> None:
        """Write a task's progress, if persistent; a failed write is logged, never raised.

        A lost progress write costs a render again after a restart, nothing more, while a
        render slot that died on it would stall every task behind it.
        """
        if self.state is None:
            return
        try:
            self.state.save_task(task)
        except Exception:
            log.exception("sandbox: could not save task %s", task.uuid)

    def previous_port(self) -> int | None:
        """The port a persistent sandbox last served on, so URLs handed out stay valid."""
        value = self.state.meta("port") if self.state is not None else None
        return int(value) if value else None

    def listening_on(self, port: int) -> None:
        """Record the port; restored tasks send their webhooks' URLs through it from now on."""
        if self.state is None:
            return
        for task in self.tasks.values():
            if task.restored:
                task.base_url = restore.with_port(task.base_url, port)
        self.state.set_meta("port", str(port))

    async def store_upload(self, data: bytes, mime: str, task_uuid: str) -> store.StoredMedia:
        """Keep an uploaded input (on disk too, if persistent) before its UUID is handed out."""
        if self.state is None:
            item = self.media.put(data, mime)
        else:
            item = store.StoredMedia(str(uuidlib.uuid4()), data, mime)
            # Up to 50 MB: written beside the loop, indexed in it (the database is not shared).
            path = await asyncio.to_thread(self.state.write_upload, item)
            self.state.index_upload(item, task_uuid, path)
            self.media.add(item)
        self.upload_uuids.add(task_uuid)
        return item

    def count_conflict(self) -> None:
        self.conflicts += 1
        if self.state is not None:
            self.state.set_meta("conflicts", str(self.conflicts))

    # --- submissions ----------------------------------------------------------------------------

    def accept(self, request: dict[str, Any], base_url: str, api_key: str = "") -> Task:
        """Queue a validated videoInference task."""
        self.ensure_started()
        assert self._queue is not None
        number = int(request.get("numberResults", 1))
        task = Task(request["taskUUID"], request, base_url, time.monotonic(), api_key=api_key)
        rng = random.Random(f"{self.config.seed}|{task.uuid}")  # noqa: S311 - simulated seeds
        task.results = [
            Result(str(uuidlib.uuid4()), rng.randrange(1, 2**31)) for _ in range(number)
        ]
        if self.state is not None:  # on disk before the acknowledgement can be sent
            self.state.add_task(task, time.time())
        self._index(task)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self._queue.put_nowait(task)
        return task

    def registering(self, task_uuid: str) -> bool:
        """Whether an accepted task is still inside its registration lag (unseen by polls).

        Measured from acceptance on the monotonic clock the task was stamped with, so nothing
        has to sleep: the lag simply ends when enough time has passed.
        """
        task = self.tasks.get(task_uuid)
        if task is None:
            return False
        return time.monotonic() - task.accepted_at < self.config.registration_lag

    def lag_answers_empty(self, task_uuid: str) -> bool:
        """How a still-registering task looks to a poll: empty data (True) or not found.

        Fixed per task by the seed, so a run replays the same answers while a batch of tasks
        meets both shapes.
        """
        return unit_interval(self.config.seed, "registration_lag", task_uuid) < 0.5

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            task = await self._queue.get()
            try:
                await self._render_task(task)
            except Exception:  # one broken task must not take a render slot down with it
                log.exception("sandbox: task %s crashed", task.uuid)
                self._fail(task, "internalServerError", "The sandbox failed to render this task.")
            finally:
                task.finished = True
                self.in_flight -= 1
                self._queue.task_done()
            # Not reached when the engine stops mid-render: the task stays unfinished on disk.
            self._save(task)

    async def _render_task(self, task: Task) -> None:
        # The simulated time runs from the moment a render slot takes the task, as a provider's
        # would: the sandbox's own work (probing inputs while 15 other submissions arrive) must
        # not stretch every render, and a task that queued for a slot still waits its turn.
        started = time.monotonic()
        if task.restored:  # as if the sandbox had kept rendering while it was down
            started = min(started, task.accepted_at)
        try:
            portrait, audio, seconds = await self.inputs.obtain(task)
        except store.InputError as exc:
            self._fail(task, exc.code, str(exc))
            return
        task.seconds = seconds
        render_time = self.config.fixed_latency + self.config.latency * seconds
        if self.faults.hits("task_error", task.uuid):
            await asyncio.sleep(started + render_time / 2 - time.monotonic())
            code = FAILED_GENERATION_CODES[self.faults.choice("task_error", task.uuid, 2)]
            self._fail(task, code, self._generation_failure(task))
            return
        ready_at = started + render_time
        for index, result in enumerate(task.results):
            ready_at += 0 if index == 0 else render_time * 0.1
            if result.status != "processing":  # finished before a restart
                continue
            delay = ready_at - time.monotonic()
            # A TaskGroup, not gather: on cancellation it waits for the render to stop too,
            # so ffmpeg never outlives the engine or writes into a deleted folder.
            async with asyncio.TaskGroup() as group:
                group.create_task(asyncio.sleep(delay))
                rendering = group.create_task(self._render_result(task, result, portrait, audio))
            # Only now, once the simulated render time has passed too, is the result visible.
            error = rendering.result()
            if error is not None:
                result.status, result.error = "error", error
                self._save(task)
                self.notifier.result_failed(task, items.error_item(task, result))
                continue
            result.status = "success"
            self.billed += result.cost
            self._save(task)
            self.notifier.result_ready(
                task, items.result_item(task, result, self.config), result.path
            )

    async def _render_result(
        self, task: Task, result: Result, portrait: Path, audio: Path
    ) -> tuple[str, str] | None:
        """Render one video file; returns (code, message) if it could not be made."""
        fmt = task.request.get("outputFormat", "MP4")
        dest = self.storage / f"{result.video_uuid}.{EXTENSIONS[fmt]}"
        seconds = task.seconds or 0.0
        try:
            if self.config.render == "stub":
                await render_stub(seconds, fmt, dest, cache_dir=self.storage / "stub-cache")
            else:
                quality = int(task.request.get("outputQuality", 95))
                await render_video(portrait, audio, seconds, fmt, dest, quality=quality)
            if self.config.video_bytes is not None and fmt != "WEBM":
                await asyncio.to_thread(pad_video, dest, self.config.video_bytes)
        except RenderError as exc:
            log.warning("sandbox: render of %s failed: %s", task.uuid, exc)
            return ("processingFailed", "Rendering failed.")
        result.path = dest
        result.cost = task.model.cost(seconds)
        result.expires_at = time.time() + int(task.request.get("ttl", self.config.default_ttl))
        return None

    def _generation_failure(self, task: Task) -> str:
        """The message of an injected failed generation; `echo_key` makes it leak the key."""
        message = "The provider failed to generate this video (injected fault)."
        if self.faults.hits("echo_key", task.uuid):
            # Upstream errors passed through verbatim can hold the request's credentials.
            message += f" Upstream said: Invalid request for key {task.api_key}"
            message += f" (Authorization: Bearer {task.api_key})."
        return message

    def _fail(self, task: Task, code: str, message: str) -> None:
        for result in task.results:
            if result.status == "processing":
                result.status, result.error = "error", (code, message)
                self.notifier.result_failed(task, items.error_item(task, result))

    # --- answers --------------------------------------------------------------------------------

    def poll(
        self, task_uuid: str, base_url: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Cumulative data items and failed-generation items of one task.

        `base_url` (the poll's own address) goes into result URLs instead of the submission's.
        """
        task = self.tasks[task_uuid]
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for result in task.results:
            if result.status == "success":
                item = items.result_item(task, result, self.config, base_url)
                data.append(self._reported(task, result, item))
            elif result.status == "error":
                errors.append(items.error_item(task, result))
            else:
                data.append(
                    {"taskType": "videoInference", "taskUUID": task.uuid, "status": "processing"}
                )
        return data, errors

    def _reported(self, task: Task, result: Result, item: dict[str, Any]) -> dict[str, Any]:
        """The item as a getResponse answer reports it: a money fault corrupts its cost.

        Only the reported number changes (never the ledger, never the webhook, which could not
        even encode NaN), so a test can compare what a client stored with what was billed.
        """
        if "cost" not in item:
            return item
        key = task.result_key(result)
        for kind, bogus in BOGUS_COSTS.items():
            if self.faults.hits(kind, key):
                return {**item, "cost": bogus}
        return item

    def _index(self, task: Task) -> None:
        self.tasks[task.uuid] = task
        for result in task.results:
            self._by_video[result.video_uuid] = (result, task)
            if result.status == "success":
                self.billed += result.cost

    def video(self, name: str) -> tuple[Result, Task] | None:
        """The finished, unexpired result a video URL names."""
        found = self._by_video.get(name.split(".", 1)[0])
        if found is None or found[0].status != "success" or found[0].expires_at < time.time():
            return None
        return found

    # --- accounts -------------------------------------------------------------------------------

    def ledger(self) -> dict[str, Any]:
        return accounts.ledger(self.tasks, self.conflicts)

    def videos(self) -> dict[str, dict[str, Any]]:
        """Every rendered video by videoUUID, with the sha256 of the bytes served for it."""
        return accounts.videos(self.tasks)

    def stats(self) -> dict[str, Any]:
        return accounts.stats(self)
