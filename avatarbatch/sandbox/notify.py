"""Deliveries the sandbox makes on its own: webhook POSTs and uploadEndpoint PUTs.

Webhooks carry the flat result item, one POST per finished item, retried on non-2xx with the
schedule Runware describes (250 ms doubling to 8 s, with jitter); a receiver must therefore
de-duplicate on taskUUID + videoUUID. Failed generations are posted too, in the `errors[]`
item shape: Runware does not document this, the sandbox chooses to tell. Targets beyond
loopback are refused unless the sandbox allows remote access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from avatarbatch.sandbox.store import is_loopback_host

if TYPE_CHECKING:
    from avatarbatch.sandbox.tasks import Task

log = logging.getLogger("avatarbatch.sandbox")

ATTEMPTS = 6
FIRST_DELAY = 0.25
MAX_DELAY = 8.0


class Notifier:
    def __init__(self, *, allow_remote: bool) -> None:
        self.allow_remote = allow_remote
        self._pending: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._counts: Counter[str] = Counter()

    def result_ready(self, task: Task, item: dict[str, Any], video: Path | None) -> None:
        webhook = task.request.get("webhookURL")
        if webhook:
            self._spawn(self._deliver("POST", webhook, json=item, kind="webhook"))
        endpoint = task.request.get("uploadEndpoint")
        if endpoint and video is not None:
            self._spawn(self._deliver("PUT", endpoint, content=video.read_bytes(), kind="upload"))

    def result_failed(self, task: Task, item: dict[str, Any]) -> None:
        webhook = task.request.get("webhookURL")
        if webhook:
            self._spawn(self._deliver("POST", webhook, json=item, kind="webhook"))

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    async def drain(self) -> None:
        """Wait for every delivery in progress (tests use this instead of sleeping)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        for pending in list(self._pending):
            pending.cancel()
        for pending in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        if self._http is not None:
            await self._http.aclose()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, method: str, url: str, *, kind: str, **body: Any) -> None:
        if not self.allow_remote and not is_loopback_host(urlsplit(url).hostname or ""):
            log.warning("sandbox: %s to a non-loopback host refused (use --allow-remote)", kind)
            self._counts[f"{kind}_refused"] += 1
            return
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0)
        delay = FIRST_DELAY
        for _ in range(ATTEMPTS):
            try:
                response = await self._http.request(method, url, **body)
                if response.is_success:
                    self._counts[f"{kind}_delivered"] += 1
                    return
            except httpx.HTTPError:
                pass
            self._counts[f"{kind}_retries"] += 1
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            delay = min(delay * 2, MAX_DELAY)
        self._counts[f"{kind}_failed"] += 1
        log.warning("sandbox: %s to %s failed after %d attempts", kind, url, ATTEMPTS)
