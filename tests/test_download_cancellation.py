"""A download cancelled at any point (Ctrl-C, a deadline, another job's crash) leaves no open
file descriptor and no partial file behind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from pathlib import Path

from submitting import submit_one

from avatarbatch.runware.client import RunwareClient
from avatarbatch.sandbox.downloads import IN_MEMORY_VIDEO_BYTES
from conftest import FAST, MakeClient, uploads, video_task, wait_finished

#: Large enough for a download to take many turns of the event loop, so that cancellations
#: land before the request, between headers and body, mid-body and at the close; and above
#: what the sandbox answers from memory in one piece, so it streams as a CDN would.
VIDEO_BYTES = 2 * IN_MEMORY_VIDEO_BYTES


def open_descriptors() -> list[str]:
    """What each of this process's file descriptors points at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


async def rendered_url(client: RunwareClient) -> str:
    image, audio = await uploads(client)
    task = video_task(image, audio)
    await submit_one(client, task)
    (result,) = (await wait_finished(client, task["taskUUID"])).results
    assert result.video_url is not None
    return result.video_url


async def test_a_download_cancelled_at_any_point_leaks_no_descriptor(
    sandbox: MakeClient, tmp_path: Path
) -> None:
    client, _ = await sandbox(FAST.model_copy(update={"video_bytes": VIDEO_BYTES}))
    url = await rendered_url(client)
    folder = tmp_path / "videos"
    folder.mkdir()
    before = len(open_descriptors())
    for turns in itertools.count():
        target = folder / f"{turns}.part"
        running = asyncio.ensure_future(client.download(url, target))
        for _ in range(turns):  # 0: cancelled before it ever ran
            await asyncio.sleep(0)
        if running.done():
            break  # it ran to its end before the cancellation came: every point was tried
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        assert running.cancelled(), f"after {turns} turns: {running}"
        assert not target.exists(), f"a partial file survived a cancellation after {turns} turns"
        assert [p for p in open_descriptors() if p.startswith(str(folder))] == []
    assert turns > 10, "the download was too quick to be cancelled halfway"
    assert (await running).size == VIDEO_BYTES
    assert len(open_descriptors()) == before
