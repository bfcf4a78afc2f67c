"""Group commit: a run's writes to the state file, off the event loop and many to a transaction.

Each write keeps the state file's promise before its caller goes on: `await writer.transition(...)`
returns once the transaction holding that move is durable (`synchronous=FULL`), so a task UUID
is on disk before its submission's POST, exactly as when every move was a commit of its own.
What changes is who waits for the disk, and how often. One thread with its own connection
applies every write queued since its last commit in one transaction, each in a savepoint of
its own, and commits once: sixteen submissions falling due together cost one flush instead of
sixteen, and the event loop goes on with HTTP while the flush happens. A slow flush (67 ms at
p99 on a loaded disk) then holds up the writes queued behind it, not every job in turn.

A write whose caller is cancelled while it waits is still applied: it was asked for before the
cancellation, and every write here is one the next run must see (an intent written ahead, or
an outcome), never one that needs its caller to act on it afterwards. Reads stay on the
caller's own connection; WAL shows them every committed write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from avatarbatch.state.store import (
    BUSY_TIMEOUT,
    JobRecord,
    JobStatus,
    OwnedFile,
    StateError,
    StateStore,
    TaskEntry,
)

log = logging.getLogger("avatarbatch.state")

T = TypeVar("T")
Change = Callable[[StateStore], Any]
#: one write's outcome from the writer's thread: its value, or the exception it raised
Applied = tuple[bool, Any]


class StateWriter:
    """The one writer of a run; reads go to the `StateStore` it was made from."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="avatarbatch-state")
        self._connection: StateStore | None = None
        self._queue: list[tuple[Change, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0  #: transactions committed, for tests and benchmarks

    # -- the writes a run makes ---------------------------------------------------------

    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        tasks: Iterable[TaskEntry] = (),
        files: Iterable[OwnedFile] = (),
        **fields: Any,
    ) -> JobRecord:
        tasks, files = list(tasks), list(files)
        record: JobRecord = await self.write(
            lambda state: state.transition(job_id, to, tasks=tasks, files=files, **fields)
        )
        return record

    async def settle_task(self, job_id: str, entry: TaskEntry) -> None:
        await self.write(lambda state: state.settle_task(job_id, entry))

    async def record_upload(self, sha256: str, kind: str, uuid: str, url: str | None) -> None:
        await self.write(lambda state: state.record_upload(sha256, kind, uuid, url))

    async def disown_files(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        await self.write(lambda state: state.disown_files(paths))

    # -- the mechanism ------------------------------------------------------------------

    async def write(self, change: Callable[[StateStore], T]) -> T:
        """Apply `change` to the state file; returns once it is durable."""
        if self._closed:
            raise StateError(f"the state file {self._state.path} is closed for this run")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((change, future))
        self._wake.set()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="avatarbatch-state")
        return await future

    async def aclose(self) -> None:
        """Commit everything queued, then close the writer's connection and thread."""
        if self._closed:
            return
        self._closed = True  # from now on a write is refused, so the queue only shrinks
        if self._flusher is not None:
            self._wake.set()
            await asyncio.shield(self._flusher)  # it returns once the queue is committed
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_connection)
        self._thread.shutdown(wait=True)

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._queue:
                batch, self._queue = self._queue, []
                changes = [change for change, _ in batch]
                # Shielded: once in the thread, a transaction ends (committed or rolled back)
                # whatever happens to this task, and its callers hear how.
                outcomes = await asyncio.shield(
                    loop.run_in_executor(self._thread, self._commit, changes)
                )
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled; the write stands all the same
                        if not ok:
                            log.debug("a write of a cancelled caller failed: %s", value)
                    elif ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            if self._closed:
                return
            self._wake.clear()
            await self._wake.wait()

    def _commit(self, changes: list[Change]) -> list[Applied]:
        """In the writer's thread: every change in one transaction, each in its savepoint."""
        if self._connection is None:
            self._connection = self._state.another_connection(BUSY_TIMEOUT)
        connection = self._connection
        outcomes: list[Applied] = []
        try:
            with connection.group():
                for change in changes:
                    try:
                        outcomes.append((True, change(connection)))
                    except Exception as exc:  # handed to the caller that asked for it
                        outcomes.append((False, exc))
        except StateError as exc:  # the commit itself failed: none of them landed
            return [(False, exc)] * len(changes)
        self.commits += 1
        return outcomes

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
