"""Downloads from the sandbox: uploaded media and finished videos, with the download faults
(truncate, html_video, short_body, cut) played on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from avatarbatch.sandbox.answers import DroppedResponse, error_item, errors
from avatarbatch.sandbox.engine import Engine
from avatarbatch.sandbox.validation import TaskError

# What a CDN or proxy answers in place of a video it cannot serve, with status 200 all the same.
HTML_ERROR_PAGE = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
STREAM_CHUNK = 1024 * 1024
VIDEO_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"}
#: Videos up to this size are answered from memory: a FileResponse's stat, open and reads
#: each hop to a thread, which cost the sandbox ~0.75 ms of CPU per download of a stub (the
#: sandbox shares the machine with the client it serves in benchmarks). Larger ones stream.
IN_MEMORY_VIDEO_BYTES = 2**20


async def media(engine: Engine, request: Request) -> Response:
    """An uploaded medium, at the URL its upload answer gave."""
    item = engine.media.get(request.path_params["name"].split(".", 1)[0])
    if item is None:
        return errors([error_item(TaskError("notFound", "No such media.", None, 404), {})], 404)
    if item.content is None and item.path is not None:  # restored: served from its file
        return FileResponse(item.path, media_type=item.mime)
    return Response(item.data, media_type=item.mime)


async def video(engine: Engine, request: Request) -> Response:
    """A finished result at its videoURL, unless a download fault breaks this attempt."""
    engine.requests["downloads"] += 1
    name = request.path_params["name"]
    found = engine.video(name)
    if found is None or found[0].path is None:
        return errors(
            [error_item(TaskError("notFound", "No such video, or it expired.", None, 404), {})],
            404,
        )
    result, task = found
    assert result.path is not None
    media_type = VIDEO_TYPES[result.path.suffix[1:]]
    faulty = _faulty_video(engine, task.result_key(result), result.path, media_type)
    if faulty is not None:
        return faulty
    if result.path.stat().st_size <= IN_MEMORY_VIDEO_BYTES:
        return Response(result.path.read_bytes(), media_type=media_type)
    return FileResponse(result.path, media_type=media_type)


def _faulty_video(engine: Engine, key: str, path: Path, media_type: str) -> Response | None:
    """A broken answer for this download, if a download fault hits it.

    Drawn per video and per attempt, so a retried download of the same video can succeed.
    """
    faults = engine.faults
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
