"""The inputs of a sandbox task, obtained and checked against Kling's limits as the provider
would: an upload by UUID or URL, inline bytes, or a URL fetched (loopback only unless allowed)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from avatarbatch.manifest.media import ProbeError, probe_audio, probe_image
from avatarbatch.sandbox import store
from avatarbatch.sandbox.validation import media_form

if TYPE_CHECKING:
    from avatarbatch.sandbox.tasks import Task


class Inputs:
    """Obtains inputs and writes them to files for ffmpeg, each distinct one once."""

    def __init__(self, storage: Path, media: store.MediaStore, *, allow_remote: bool) -> None:
        self.storage = storage
        self.media = media
        self._allow_remote = allow_remote
        self._checked: dict[tuple[str, str], tuple[Path, float]] = {}

    async def obtain(self, task: Task) -> tuple[Path, Path, float]:
        """Obtain both inputs and check them against Kling's limits, as the provider would."""
        inputs = task.request["inputs"]
        image, _ = await self._checked_input(inputs["image"], "image")
        audio, seconds = await self._checked_input(inputs["audio"], "audio")
        return image, audio, seconds

    async def _checked_input(self, value: str, kind: str) -> tuple[Path, float]:
        """An input's file and, for audio, its length; worked out once per uploaded media.

        Uploads never change, and a batch of 200 tasks names the same few: probing and hashing
        them again for each task kept the sandbox's loop busy enough to delay every answer.
        """
        known = self._checked.get((value, kind))
        if known is not None:
            return known
        data, _ = await self._input_bytes(value)
        seconds = 0.0
        try:
            if kind == "image":
                probe_image(data)
            else:
                seconds = probe_audio(data).seconds or 0.0
        except ProbeError as exc:
            code = "invalidImage" if kind == "image" else "invalidAudio"
            raise store.InputError(code, f"The {kind} {exc}.") from None
        checked = (self._spill(data, kind), seconds)
        if media_form(value) == "uuid":
            self._checked[(value, kind)] = checked
        return checked

    async def _input_bytes(self, value: str) -> tuple[bytes, str]:
        form = media_form(value)
        if form == "uuid":
            item = self.media.get(value)
            if item is None:
                raise store.InputError("invalidMediaUUID", f"No uploaded media has UUID {value}.")
            return item.data, item.mime
        if form == "url":
            item = self.media.from_url(value)
            if item is not None:
                return item.data, item.mime
            return await store.fetch(value, allow_remote=self._allow_remote)
        return store.decode_inline(value)

    def _spill(self, data: bytes, kind: str) -> Path:
        """Write input bytes to a file for ffmpeg, once per distinct content."""
        path = self.storage / "inputs" / f"{kind}-{hashlib.sha256(data).hexdigest()[:32]}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return path
