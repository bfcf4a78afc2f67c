"""Submissions that come due together share one POST.

Slots free up in waves: one poll finds several tasks finished, and their drivers each submit
the next job within a few milliseconds. Sending those as one videoInference POST instead of
one POST each cuts the request count (what the API's rate limit and its overload answers are
about) and the round trips that hold every slot idle. Nagle's algorithm, not a timer: a
submission goes out at once when no submit POST is in flight, and the ones that arrive while
one is join the next. So a lone submission waits for nothing, and a wave costs two POSTs or so.
Several tasks in one POST is what the protocol describes but not what every client does: the
client resends a POST refused as a whole task by task (RunwareClient.submit_many).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from avatarbatch.errors import TransientError
from avatarbatch.runware.client import RunwareClient


@dataclass
class _Pending:
    task: dict[str, Any]
    outcome: asyncio.Future[None]


class SubmitQueue:
    def __init__(self, client: RunwareClient) -> None:
        self._client = client
        self._waiting: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0  #: batches sent (a batch over the client's batch_size is several POSTs)

    async def submit(self, task: dict[str, Any]) -> None:
        """Submit one task; raises what `RunwareClient.submit` would raise for it alone."""
        pending = _Pending(task, asyncio.get_running_loop().create_future())
        self._waiting.append(pending)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_waiting(), name="avatarbatch-submit")
        try:
            await pending.outcome
        except asyncio.CancelledError:
            # Not sent yet: withdraw it. Already sent: it may land; the state file says
            # `submitting` with its UUID, so the next run asks getResponse before paying again.
            with contextlib.suppress(ValueError):
                self._waiting.remove(pending)
            raise

    async def aclose(self) -> None:
        """Stop sending; whoever still waits learns that its submission is uncertain."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        self._interrupt(self._waiting)
        self._waiting = []

    async def _send_waiting(self) -> None:
        while self._waiting:
            # One turn of the event loop lets the other drivers woken by the same poll join.
            await asyncio.sleep(0)
            batch, self._waiting = self._waiting, []
            if not batch:  # every one of them was withdrawn meanwhile
                continue
            self.batches += 1
            try:
                outcomes = await self._client.submit_many([p.task for p in batch])
            except asyncio.CancelledError:
                self._interrupt(batch)
                raise
            except Exception as exc:  # a bug, not an API answer: each of them shows it
                for pending in batch:
                    _settle(pending, exc)
                continue
            for pending in batch:
                _settle(pending, outcomes[pending.task["taskUUID"]])

    @staticmethod
    def _interrupt(pending: list[_Pending]) -> None:
        for each in pending:
            uuid = each.task["taskUUID"]
            _settle(
                each,
                TransientError(
                    "the submission was interrupted before its answer came", task_uuid=uuid
                ),
            )


def _settle(pending: _Pending, error: BaseException | None) -> None:
    if pending.outcome.done():  # its driver was cancelled meanwhile
        return
    if error is None:
        pending.outcome.set_result(None)
    else:
        pending.outcome.set_exception(error)
