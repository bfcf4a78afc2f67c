"""Streaming a finished video to a file: capped, hashed on the way, never left half-written.

A download carries no key (the video URL is all it needs) and runs in a pool of its own, so a
long one never holds up a poll. Chunks are hashed and written to disk as they arrive; small
chunks keep peak memory flat whatever the video's size.

Written in place on the event loop, not through aiofiles: a chunk's write to the page cache
is brief, and a hop to a worker thread for each chunk costs more CPU and throughput than it
gives back in the loop's responsiveness (README.md, "Dependency notes", has the figures).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from avatarbatch.errors import RejectedError, TransientError
from avatarbatch.runware import classify
from avatarbatch.runware.connection import ClientSettings
from avatarbatch.runware.redirects import followed
from avatarbatch.runware.transport import retrying

#: Bytes read from the network and written to disk at a time. Larger chunks made peak memory
#: grow with video size (bench/README.md, "Download chunks").
DOWNLOAD_CHUNK = 64 * 1024
#: Answers to a GET of a video that say it will never come (expired or removed).
GONE_STATUSES = frozenset({404, 410})
#: Answers that say "not now": the download is tried again.
BUSY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    sha256: str


async def download(
    http: httpx.AsyncClient, settings: ClientSettings, url: str, target: Path
) -> Download:
    """Stream `url` to `target` (a temporary name chosen by the caller), checking length.

    Transient failures are retried. The target is removed on any failure, so a partial file
    never survives.
    """
    try:
        async for attempt in retrying(settings):
            with attempt:
                return await _download_once(http, settings, url, target)
    except BaseException:  # also cancellation: no partial file may outlive the call
        target.unlink(missing_ok=True)
        raise
    raise AssertionError("unreachable: tenacity reraises the last error")


async def _download_once(
    http: httpx.AsyncClient, settings: ClientSettings, url: str, target: Path
) -> Download:
    limit = settings.max_download_bytes
    digest = hashlib.sha256()
    size = 0
    try:
        async with asyncio.timeout(settings.download_timeout), followed(http, url) as response:
            _check_status(response)
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise RejectedError(f"download of {url} is {int(declared):,} bytes, over the limit")
            with target.open("wb") as out:
                async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise RejectedError(f"download of {url} exceeded {limit:,} bytes")
                    digest.update(chunk)
                    out.write(chunk)
    except TimeoutError as exc:
        raise TransientError(f"download of {url} took too long", code="timeout") from exc
    except httpx.TooManyRedirects as exc:
        raise RejectedError(f"download of {url} redirects in a loop") from exc
    except httpx.TimeoutException as exc:
        raise TransientError(f"download of {url} timed out", code="timeout") from exc
    except httpx.UnsupportedProtocol as exc:  # the transport refused the address: as final
        raise RejectedError(
            f"download of {url} leads to an address that cannot be fetched"
        ) from exc
    except httpx.TransportError as exc:
        raise TransientError(
            f"download of {url} broke off: {type(exc).__name__}", code="connection"
        ) from exc
    if declared is not None and declared.isdigit() and int(declared) != size:
        raise TransientError(f"download of {url} was truncated ({size:,} of {declared} bytes)")
    if size == 0:
        raise TransientError(f"download of {url} was empty")
    return Download(target, size, digest.hexdigest())


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 300:
        return
    retry_after = classify.parse_retry_after(response.headers.get("retry-after"))
    if status in GONE_STATUSES:
        raise RejectedError(
            f"download failed: HTTP {status} (the result expired or is gone)", status=status
        )
    if status in BUSY_STATUSES or status >= 500:
        raise TransientError(
            f"download failed: HTTP {status}", status=status, retry_after=retry_after
        )
    raise RejectedError(f"download failed: HTTP {status}", status=status)
