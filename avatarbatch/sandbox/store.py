"""Uploaded media and fetched inputs of the sandbox.

Uploads (imageUpload, mediaStorage) are kept in memory and served back at their URL (those a
persistent sandbox restored from its storage folder are read from their file when needed).
Inputs of a task may name an upload by UUID or URL, carry the bytes inline, or point at a URL:
those are fetched only from loopback addresses unless the sandbox was started with
--allow-remote, so a sandbox cannot be turned into a proxy to the outside world.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

MEDIA_ROUTE = "/sandbox/media/"
MAX_INPUT_BYTES = 50 * 1024 * 1024
MIME_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/mp4": "m4a",
    "audio/aac": "aac",
}


class InputError(Exception):
    """An input that cannot be obtained; becomes a failed generation or a rejected upload."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StoredMedia:
    uuid: str
    content: bytes | None  #: the bytes, or None when they live in `path`
    mime: str
    path: Path | None = None

    @property
    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def filename(self) -> str:
        return f"{self.uuid}.{MIME_EXTENSIONS.get(self.mime, 'bin')}"


class MediaStore:
    def __init__(self) -> None:
        self._items: dict[str, StoredMedia] = {}

    def put(self, data: bytes, mime: str) -> StoredMedia:
        item = StoredMedia(str(uuidlib.uuid4()), data, mime)
        self._items[item.uuid] = item
        return item

    def add(self, item: StoredMedia) -> None:
        """Keep an upload made earlier (restored by a persistent sandbox)."""
        self._items[item.uuid] = item

    def get(self, media_uuid: str) -> StoredMedia | None:
        return self._items.get(media_uuid.lower())

    def from_url(self, url: str) -> StoredMedia | None:
        """The upload a sandbox media URL points at, whatever host name it was reached by."""
        path = urlsplit(url).path
        if not path.startswith(MEDIA_ROUTE):
            return None
        return self.get(path[len(MEDIA_ROUTE) :].split(".", 1)[0])


def decode_inline(value: str) -> tuple[bytes, str]:
    """Bytes and MIME type of a data URI or plain base64 string."""
    mime = "application/octet-stream"
    payload = value
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        mime = header[5:].split(";", 1)[0] or mime
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError("invalidBase64", "The input is not valid base64.") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError("invalidInputSize", "The input is larger than the sandbox accepts.")
    return data, mime


def is_loopback_host(host: str) -> bool:
    """Whether every address `host` resolves to is on this machine."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


async def fetch(url: str, *, allow_remote: bool, timeout: float = 30.0) -> tuple[bytes, str]:
    """Download an input URL; refuses non-loopback hosts unless remote fetching is allowed."""
    host = urlsplit(url).hostname or ""
    if not allow_remote and not is_loopback_host(host):
        raise InputError(
            "invalidRemoteURL",
            f"The sandbox only fetches from loopback addresses; {host} is not one "
            "(start it with --allow-remote to change that).",
        )
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=True) as http,
            http.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise InputError(
                    "downloadFailed", f"Fetching the input failed: HTTP {response.status_code}."
                )
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_INPUT_BYTES:
                    raise InputError("invalidInputSize", "The input is too large.")
                chunks.append(chunk)
            mime = response.headers.get("content-type", "application/octet-stream")
            return b"".join(chunks), mime.split(";", 1)[0]
    except httpx.HTTPError as exc:
        raise InputError(
            "downloadFailed", f"Fetching the input failed: {type(exc).__name__}."
        ) from exc
