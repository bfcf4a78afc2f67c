"""Local inputs, uploaded once per content and kind and shared by every job that uses them.

The state file remembers each upload (content sha256 -> Runware UUID), so a rerun uploads
nothing it uploaded before; concurrent jobs needing the same file share one upload in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from avatarbatch.engine.context import new_uuid
from avatarbatch.errors import ApiError
from avatarbatch.manifest.media import MediaInfo, MediaRef
from avatarbatch.runware.client import RunwareClient
from avatarbatch.state.store import StateStore
from avatarbatch.state.writer import StateWriter

log = logging.getLogger("avatarbatch.run")

MIME_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MP3": "audio/mpeg",
    "WAV": "audio/wav",
    "M4A": "audio/mp4",
    "AAC": "audio/aac",
}
#: how Runware stores an input: `imageUpload` for the portrait, `mediaStorage` for the audio
InputKind = Literal["image", "media"]


class Uploads:
    def __init__(
        self,
        state: StateStore,
        writes: StateWriter,
        client: RunwareClient,
        media: Mapping[str, MediaInfo],
    ) -> None:
        self._state = state
        self._writes = writes
        self._client = client
        self._media = media
        self._running: dict[tuple[str, str], asyncio.Future[str]] = {}
        #: uploads known to this run, so each job does not ask the state file again
        self._known: dict[tuple[str, str], str] = {}
        self._refreshed: set[tuple[str, str]] = set()

    async def value(self, ref: MediaRef, kind: InputKind, *, refresh: bool = False) -> str:
        """The value to send for an input: remote refs as they are, local files uploaded once.

        `refresh` replaces a cached upload the API refused; concurrent refreshes of one file
        share a single new upload.
        """
        if not ref.is_local:
            return ref.value
        info = self._media[ref.value]
        key = (info.sha256, kind)
        if refresh and key not in self._refreshed:
            self._refreshed.add(key)
            self._running.pop(key, None)
            self._known.pop(key, None)
        elif key not in self._running:
            if key in self._known:
                return self._known[key]
            cached = self._state.upload_for(info.sha256, kind)
            if cached is not None:
                self._known[key] = cached[0]
                return cached[0]
        if key not in self._running:
            self._running[key] = asyncio.ensure_future(self._upload(ref, info, kind))
        try:
            return await asyncio.shield(self._running[key])
        except ApiError:
            self._running.pop(key, None)  # let the next job try again
            raise

    async def aclose(self) -> None:
        """End the uploads still running: shielded, they may outlive the job that started them,
        and must end before the HTTP client closes under them."""
        for upload in self._running.values():
            upload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _upload(self, ref: MediaRef, info: MediaInfo, kind: InputKind) -> str:
        data = await asyncio.to_thread(Path(ref.value).read_bytes)
        mime = MIME_TYPES.get(info.format, "application/octet-stream")
        upload_call = self._client.upload_image if kind == "image" else self._client.upload_media
        upload = await upload_call(data, mime, new_uuid())
        await self._writes.record_upload(info.sha256, kind, upload.uuid, upload.url)
        log.info("uploaded %s as %s", ref.written, upload.uuid)
        return upload.uuid
