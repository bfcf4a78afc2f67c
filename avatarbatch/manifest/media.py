"""Media references (path, URL, Runware UUID, data URI, base64) and probing of local files.

A probe reads a file once, hashes it and decodes it for real: a text file named .png or an
MP3 header glued onto garbage must be caught here, before anything is uploaded or paid for.
`Prober` caches by path, so a portrait shared by 5,000 rows is read once per invocation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from avatarbatch import catalog
from avatarbatch.manifest import paths

UUID_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE
)
DATA_URI_PATTERN = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,(.*)$", re.DOTALL)
BASE64_PATTERN = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}$")
# Shorter strings are far more likely to be file names than inline images.
MIN_BASE64_CHARS = 128


class MediaKind(StrEnum):
    PATH = "path"  #: a local file, uploaded by the runner
    URL = "url"  #: an http(s) URL the provider fetches itself
    UUID = "uuid"  #: media already stored at Runware
    DATA_URI = "data_uri"  #: an inline image, data:image/png;base64,...
    BASE64 = "base64"  #: an inline image as plain base64


@dataclass(frozen=True, slots=True)
class MediaRef:
    kind: MediaKind
    value: str  #: absolute path for PATH; the string as written otherwise
    written: str  #: what the manifest said, for messages and for re-emitted manifests

    @property
    def is_local(self) -> bool:
        return self.kind is MediaKind.PATH

    @property
    def is_inline(self) -> bool:
        return self.kind in (MediaKind.DATA_URI, MediaKind.BASE64)

    @property
    def stem(self) -> str:
        """A short readable name, used to build default job ids."""
        if self.kind is MediaKind.PATH:
            return Path(self.value).stem
        if self.kind is MediaKind.URL:
            return Path(unquote(urlsplit(self.value).path)).stem or "url"
        if self.kind is MediaKind.UUID:
            return self.value[:8]
        return "inline"


class MediaRefError(ValueError):
    """A reference that is none of the accepted forms; the text is a complete sentence."""


def parse_ref(text: str, role: str, base_dir: Path) -> MediaRef:
    """Classify `text` as one of the media forms `role` ("portrait" or "audio") accepts."""
    text = text.strip()
    if UUID_PATTERN.match(text):
        return MediaRef(MediaKind.UUID, text.lower(), text)
    if text.lower().startswith("data:"):
        if role == "audio":
            raise MediaRefError(
                "inline audio is not accepted by the API; give a local file, an http(s) URL "
                "or a Runware media UUID"
            )
        if not DATA_URI_PATTERN.match(text):
            raise MediaRefError("is not a valid data URI (expected data:image/png;base64,...)")
        return MediaRef(MediaKind.DATA_URI, text, text)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme:
        if scheme.group(1).lower() not in {"http", "https"}:
            raise MediaRefError(f"only http(s) URLs are accepted, not {scheme.group(1)}://")
        if not urlsplit(text).hostname:
            raise MediaRefError("URL has no host name")
        return MediaRef(MediaKind.URL, text, text)
    if role == "portrait" and len(text) >= MIN_BASE64_CHARS and BASE64_PATTERN.match(text):
        return MediaRef(MediaKind.BASE64, text, text)
    if any(ord(ch) < 32 for ch in text):
        raise MediaRefError("contains control characters, so it cannot be a file name")
    return MediaRef(MediaKind.PATH, str(paths.resolve(base_dir, text)), text)


def inline_bytes(ref: MediaRef) -> bytes:
    """Decoded bytes of an inline image; raises MediaRefError if they do not decode."""
    payload = ref.value
    if ref.kind is MediaKind.DATA_URI:
        payload = payload.split(",", 1)[1]
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MediaRefError("is not valid base64") from None


# --- probing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What a probe learnt about one file; `format` is the decoded format, not the extension."""

    format: str
    bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    seconds: float | None = None


class ProbeError(Exception):
    """A file that cannot be used as the role asks; the text is a complete sentence."""


def read_limited(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; refuses anything that is not a readable, non-empty regular file."""
    try:
        data = paths.read_regular_file(path, max_bytes)
    except paths.UnreadableFile as exc:
        raise ProbeError(str(exc)) from None
    if not data:
        raise ProbeError("is empty (0 bytes)")
    return data


def probe_image(data: bytes) -> MediaInfo:
    """Decode the whole image and check it against Kling's portrait limits."""
    if len(data) > catalog.IMAGE_MAX_BYTES:
        raise ProbeError(
            f"is {len(data) / 1e6:.1f} MB; the limit is {catalog.IMAGE_MAX_BYTES / 1e6:.0f} MB"
        )
    # Imported here: a run whose media the state file has probed already never needs it.
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or "unknown"
                if image_format not in catalog.IMAGE_FORMATS:
                    raise ProbeError(f"is a {image_format} image; the API takes only JPEG or PNG")
                width, height = image.size
                image.load()  # a truncated or corrupt file fails here, not at the provider
    except ProbeError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile bytes; all mean "not an image"
        raise ProbeError(f"is not a readable JPEG or PNG image ({_reason(exc)})") from None
    side = min(width, height)
    if side < catalog.IMAGE_MIN_SIDE:
        raise ProbeError(
            f"is {width}x{height} px; each side must be at least {catalog.IMAGE_MIN_SIDE} px"
        )
    aspect = max(width, height) / side
    if aspect > catalog.IMAGE_MAX_ASPECT:
        raise ProbeError(
            f"is {width}x{height} px (aspect {aspect:.2f}:1); the aspect ratio must be "
            f"between 1:{catalog.IMAGE_MAX_ASPECT} and {catalog.IMAGE_MAX_ASPECT}:1"
        )
    return MediaInfo(image_format, len(data), _sha256(data), width=width, height=height)


def probe_audio(data: bytes) -> MediaInfo:
    """Parse the audio container, measure its length and check Kling's audio limits."""
    if len(data) > catalog.AUDIO_MAX_BYTES:
        raise ProbeError(
            f"is {len(data) / 1e6:.1f} MB; the limit is {catalog.AUDIO_MAX_BYTES / 1e6:.0f} MB"
        )
    audio_format, seconds = _measure_audio(data)
    if seconds < catalog.AUDIO_MIN_SECONDS or seconds > catalog.AUDIO_MAX_SECONDS:
        raise ProbeError(
            f"is {seconds:.2f} s long; audio must be {catalog.AUDIO_MIN_SECONDS:g} to "
            f"{catalog.AUDIO_MAX_SECONDS:g} seconds"
        )
    return MediaInfo(audio_format, len(data), _sha256(data), seconds=round(seconds, 3))


NOT_AUDIO = "is not a readable MP3, WAV, M4A or AAC file"


def _measure_audio(data: bytes) -> tuple[str, float]:
    """The decoded format name and length in seconds; raises ProbeError for anything else."""
    parsed: Any = None
    format_name, reason = "", "unrecognised data"
    for candidate, parser in _audio_parsers(data[:12]):
        try:
            parsed = parser(io.BytesIO(data))
        except Exception as exc:  # mutagen raises many types on hostile bytes
            reason = _reason(exc)
            continue
        format_name = candidate
        break
    if parsed is None or parsed.info is None:
        raise ProbeError(f"{NOT_AUDIO} ({reason})")
    if format_name == "MP3" and getattr(parsed.info, "sketchy", False):
        # mutagen marks MP3 streams it could only guess at: typically a header on garbage.
        raise ProbeError(f"{NOT_AUDIO} (the MP3 frames are not valid)")
    if format_name == "M4A":
        codec = str(getattr(parsed.info, "codec", ""))
        if not codec.startswith("mp4a"):
            raise ProbeError(f"is an MP4 container without AAC audio (codec {codec or 'none'})")
    seconds = float(getattr(parsed.info, "length", 0.0) or 0.0)
    if seconds <= 0:
        raise ProbeError(f"{NOT_AUDIO} (no audio length could be measured)")
    return format_name, seconds


def _audio_parsers(head: bytes) -> list[tuple[str, type[Any]]]:
    """Parsers to try, chosen from the leading bytes, never from the file name.

    mutagen's own guess leans on the extension and cannot tell raw ADTS AAC from MP3 without one.
    """
    # Imported here: mutagen loads every format module, which would slow down `--help`.
    from mutagen.aac import AAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.wave import WAVE

    sync = head[:1] == b"\xff" and len(head) > 1
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return [("WAV", WAVE)]
    if head[4:8] == b"ftyp":
        return [("M4A", MP4)]
    if head[:4] == b"ADIF" or (sync and head[1] & 0xF6 == 0xF0):  # ADTS: layer bits are 00
        return [("AAC", AAC)]
    if head[:3] == b"ID3" or (sync and head[1] & 0xE0 == 0xE0):
        return [("MP3", MP3), ("AAC", AAC)]
    raise ProbeError(NOT_AUDIO)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


#: A local file as probed: (absolute path, role, size, mtime_ns)
ProbeKey = tuple[str, str, int, int]


class ProbeCache(Protocol):
    """What earlier invocations found probing local files (the engine keeps it in the state
    file; `validate` has none). Only files that passed are remembered."""

    def recall(self, key: ProbeKey) -> MediaInfo | None: ...

    def remember(self, key: ProbeKey, info: MediaInfo) -> None: ...


class Prober:
    """Probes each distinct (file, role) once per invocation and remembers the outcome;
    with a `cache`, a local file unchanged since an earlier invocation is not read at all."""

    def __init__(self, cache: ProbeCache | None = None) -> None:
        self._results: dict[tuple[str, str], MediaInfo | ProbeError] = {}
        self._cache = cache
        self.reads = 0

    def probe(self, ref: MediaRef, role: str) -> MediaInfo:
        """Probe a local or inline reference; raises ProbeError (also from the cache)."""
        key = (ref.value if ref.is_local else _sha256(ref.value.encode()), role)
        if key not in self._results:
            self._results[key] = self._probe_uncached(ref, role)
        result = self._results[key]
        if isinstance(result, ProbeError):
            raise result
        return result

    def _probe_uncached(self, ref: MediaRef, role: str) -> MediaInfo | ProbeError:
        key = _file_key(ref, role) if self._cache is not None else None
        if key is not None and self._cache is not None:
            known = self._cache.recall(key)
            if known is not None:
                return known
        result = self._probe_file(ref, role)
        if key is not None and self._cache is not None and isinstance(result, MediaInfo):
            self._cache.remember(key, result)
        return result

    def _probe_file(self, ref: MediaRef, role: str) -> MediaInfo | ProbeError:
        self.reads += 1
        limit = catalog.IMAGE_MAX_BYTES if role == "portrait" else catalog.AUDIO_MAX_BYTES
        try:
            data = read_limited(Path(ref.value), limit) if ref.is_local else inline_bytes(ref)
            return probe_image(data) if role == "portrait" else probe_audio(data)
        except (ProbeError, MediaRefError) as exc:
            return ProbeError(str(exc))


def _file_key(ref: MediaRef, role: str) -> ProbeKey | None:
    """A local regular file's cache key; None for anything else (it is probed as ever)."""
    if not ref.is_local:
        return None
    try:
        found = os.stat(ref.value)  # noqa: PTH116 - size and mtime in one call
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(found.st_mode):
        return None
    return (ref.value, role, found.st_size, found.st_mtime_ns)
