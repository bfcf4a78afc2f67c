"""Is this file really the video we asked for?

A download can be complete by every HTTP measure and still be useless: a proxy's HTML error
page served with status 200, a body cut short under a Content-Length that matches the cut, a
close-delimited body that ended early. So a saved result is checked, cheapest first:

1. it is not empty;
2. its structure, in pure Python: MP4/MOV top-level boxes must tile the file exactly (a cut
   file ends inside a box, however intact its header), WebM must start with the EBML magic
   and its Segment must fit in the file;
3. the container, a video stream and the duration must be what the job asked for. For
   MP4/MOV `iso_boxes` reads them from the `moov` box in pure Python: a subprocess per
   download costs more CPU than everything else the client does for a job. WebM, a moov
   too big to read at once, and a moov that declares no duration (fragmented files) are
   read by ffmpeg instead (there is no ffprobe in imageio-ffmpeg, so `ffmpeg -i` without an
   output).

`verify_video` blocks (file reads, sometimes a subprocess); async callers run it with
`asyncio.to_thread`.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import imageio_ffmpeg

from avatarbatch.engine.iso_boxes import BoxError, Movie, read_movie

__all__ = ["DURATION_TOLERANCE", "FFMPEG_TIMEOUT", "VideoCheckError", "VideoFacts", "verify_video"]

FFMPEG_TIMEOUT = 60.0  #: seconds ffmpeg may take to read a file's headers
#: Seconds a video's duration may differ from its audio's. A good render is off by a frame or
#: a padded audio packet (tens of ms); a video cut short or made for other audio by far more.
#: Half a second tells them apart with room to spare.
DURATION_TOLERANCE = 0.5
# ffmpeg's demuxer names, as `Input #0, <names>, from` shows them.
ISO_DEMUXER = "mov,mp4,m4a,3gp,3g2,mj2"
MATROSKA_DEMUXER = "matroska,webm"
QUICKTIME_BRAND = b"qt  "
# Box types that may open an ISO-BMFF file; anything else is not an MP4/MOV at all.
FIRST_BOXES = frozenset(
    {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"sidx"}
)
# A real file has a handful of top-level boxes (thousands when fragmented); this bounds the
# walk over a crafted file of tiny boxes.
MAX_TOP_LEVEL_BOXES = 100_000
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
EBML_DOCTYPE = 0x4282
EBML_SEGMENT = 0x18538067
PREVIEW_BYTES = 12
STDERR_TAIL_LINES = 3


class VideoCheckError(Exception):
    """The file is not the video that was asked for; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class VideoFacts:
    """What a verified file turned out to be."""

    container: str  #: the format as a manifest names it: "MP4", "WEBM" or "MOV"
    video_codec: str  #: ffmpeg's codec name, e.g. "h264", "vp9" (also when read without it)
    seconds: float | None  #: the container's duration; None if it declares none
    size_bytes: int


def verify_video(
    path: Path,
    *,
    output_format: str,
    expected_seconds: float | None,
    tolerance: float = DURATION_TOLERANCE,
) -> VideoFacts:
    """Check that `path` is a complete `output_format` video lasting `expected_seconds`.

    :param output_format: "MP4", "WEBM" or "MOV", as the manifest says it.
    :param expected_seconds: the length asked for; None skips the duration check.
    :param tolerance: how far, in seconds, the duration may be from `expected_seconds`.
    :raises VideoCheckError: saying what is wrong with the file.
    """
    if output_format not in ("MP4", "WEBM", "MOV"):
        raise ValueError(f"output_format must be MP4, WEBM or MOV, not {output_format!r}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise VideoCheckError(f"cannot read the file: {exc.strerror or exc}") from exc
    if size == 0:
        raise VideoCheckError("the file is empty (0 bytes)")
    try:
        with path.open("rb") as handle:
            movie = _check_structure(handle, size, output_format)
    except OSError as exc:
        raise VideoCheckError(f"cannot read the file: {exc.strerror or exc}") from exc
    seconds: float | None
    if movie is not None and movie.seconds is not None:
        codec, seconds = movie.video_codec, movie.seconds
    else:
        codec, seconds = _probe(path, output_format)
    if expected_seconds is not None:
        _check_duration(seconds, expected_seconds, tolerance)
    return VideoFacts(output_format, codec, seconds, size)


# --- structure ------------------------------------------------------------------------------------


def _check_structure(handle: BinaryIO, size: int, output_format: str) -> Movie | None:
    """What the moov box says, for an MP4/MOV whose moov can be read at once; else None."""
    head = handle.read(PREVIEW_BYTES)
    family = _family(head)
    if family is None:
        raise VideoCheckError(f"not a video container (starts with {_preview(head)})")
    wanted = "ebml" if output_format == "WEBM" else "iso"
    if family != wanted:
        found = MATROSKA_DEMUXER if family == "ebml" else ISO_DEMUXER
        raise VideoCheckError(f"container is {found}, expected {output_format.lower()}")
    if family == "iso":
        return _check_iso(handle, size, output_format)
    _check_webm(handle, size)
    return None


def _family(head: bytes) -> str | None:
    if head.startswith(EBML_MAGIC):
        return "ebml"
    if head[4:8] in FIRST_BOXES:
        return "iso"
    return None


def _preview(head: bytes) -> str:
    """The first bytes as text a person can read: printable ASCII as is, the rest escaped."""
    shown = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in head[:PREVIEW_BYTES])
    return f"'{shown}'"


def _check_iso(handle: BinaryIO, size: int, output_format: str) -> Movie | None:
    boxes = _top_level_boxes(handle, size)
    for needed in (b"moov", b"mdat"):
        if needed not in boxes:
            raise VideoCheckError(f"incomplete: no '{needed.decode()}' box in the file")
    brand = _major_brand(handle, boxes)
    is_quicktime = brand == QUICKTIME_BRAND
    if output_format == "MP4" and brand is None:
        raise VideoCheckError("not an MP4: no 'ftyp' box")
    if output_format == "MP4" and is_quicktime:
        raise VideoCheckError("container is mov (brand 'qt  '), expected mp4")
    if output_format == "MOV" and brand is not None and not is_quicktime:
        raise VideoCheckError(f"container is mp4 (brand {_preview(brand)}), expected mov")
    try:
        return read_movie(handle, *boxes[b"moov"])
    except BoxError as exc:
        raise VideoCheckError(str(exc)) from exc


def _top_level_boxes(handle: BinaryIO, size: int) -> dict[bytes, tuple[int, int]]:
    """(offset, length) of the first box of each type; raises unless the boxes tile the file.

    Truncation shows as the last box running past the end of the file, even when everything
    ffmpeg reads first (ftyp, a faststart moov) is intact.
    """
    boxes: dict[bytes, tuple[int, int]] = {}
    offset = 0
    while offset < size:
        if len(boxes) >= MAX_TOP_LEVEL_BOXES:
            raise VideoCheckError(f"corrupt: more than {MAX_TOP_LEVEL_BOXES:,} top-level boxes")
        kind, length = _box_at(handle, offset, size)
        boxes.setdefault(kind, (offset, length))
        offset += length
    return boxes


def _box_at(handle: BinaryIO, offset: int, size: int) -> tuple[bytes, int]:
    """(type, total length) of the box starting at `offset`."""
    handle.seek(offset)
    header = handle.read(16)
    if len(header) < 8:
        raise VideoCheckError(f"truncated: the file ends inside an MP4 box header ({size:,} bytes)")
    length, kind, header_size = int.from_bytes(header[:4], "big"), header[4:8], 8
    if not all(0x20 <= b < 0x7F for b in kind):
        raise VideoCheckError(f"corrupt: no MP4 box at byte {offset:,} ({_preview(header[:8])})")
    if length == 1:  # the real size follows as a 64-bit number
        if len(header) < 16:
            raise VideoCheckError(
                f"truncated: the file ends inside an MP4 box header ({size:,} bytes)"
            )
        length, header_size = int.from_bytes(header[8:16], "big"), 16
    elif length == 0:  # the box runs to the end of the file
        length = size - offset
    name = kind.decode("ascii")
    if length < header_size:
        raise VideoCheckError(f"corrupt: MP4 box '{name}' at byte {offset:,} has size {length}")
    if offset + length > size:
        raise VideoCheckError(
            f"truncated: MP4 box '{name}' runs past the end of the file "
            f"({size:,} of {offset + length:,} bytes)"
        )
    return kind, length


def _major_brand(handle: BinaryIO, boxes: dict[bytes, tuple[int, int]]) -> bytes | None:
    ftyp = boxes.get(b"ftyp")
    if ftyp is None:
        return None
    handle.seek(ftyp[0])
    header = handle.read(12)
    return header[8:12] if len(header) == 12 else None


def _check_webm(handle: BinaryIO, size: int) -> None:
    """The EBML header must say webm, and a Segment of known size must fit in the file.

    A Segment of unknown size (a live-streamed file) cannot be checked this way; ffmpeg's
    reading and the duration check remain.
    """
    _, header_start, header_size = _ebml_element(handle, 0, size)
    if header_size is None:
        raise VideoCheckError("corrupt: the EBML header has no size")
    doctype = _ebml_doctype(handle, header_start, header_start + header_size)
    if doctype != b"webm":
        shown = _preview(doctype) if doctype is not None else "none"
        raise VideoCheckError(f"container is matroska (DocType {shown}), expected webm")
    segment_at = header_start + header_size
    if segment_at >= size:
        raise VideoCheckError(f"truncated: the file ends after the EBML header ({size:,} bytes)")
    segment_id, segment_start, segment_size = _ebml_element(handle, segment_at, size)
    if segment_id != EBML_SEGMENT:
        raise VideoCheckError(f"corrupt: no WebM Segment at byte {segment_at:,}")
    if segment_size is not None and segment_start + segment_size > size:
        raise VideoCheckError(
            "truncated: WebM Segment runs past the end of the file "
            f"({size:,} of {segment_start + segment_size:,} bytes)"
        )


def _ebml_doctype(handle: BinaryIO, start: int, end: int) -> bytes | None:
    offset = start
    while offset < end:
        element, data_start, data_size = _ebml_element(handle, offset, end)
        if data_size is None:
            return None
        if element == EBML_DOCTYPE:
            handle.seek(data_start)
            return handle.read(min(data_size, 32)).rstrip(b"\x00")
        offset = data_start + data_size
    return None


def _ebml_element(handle: BinaryIO, offset: int, end: int) -> tuple[int, int, int | None]:
    """(id, where its data starts, data size or None when unknown) of the element at `offset`."""
    handle.seek(offset)
    head = handle.read(16)
    element, id_length = _vint(head, 0, keep_marker=True, end=end - offset)
    size, size_length = _vint(head, id_length, keep_marker=False, end=end - offset)
    unknown = size == (1 << (7 * size_length)) - 1  # all ones: "unknown size" (live streams)
    return element, offset + id_length + size_length, None if unknown else size


def _vint(data: bytes, at: int, *, keep_marker: bool, end: int) -> tuple[int, int]:
    """An EBML variable-length integer at `data[at]`: (value, its length in bytes)."""
    if at >= min(len(data), end):
        raise VideoCheckError("truncated: the file ends inside a WebM element header")
    first = data[at]
    length = 9 - first.bit_length() if first else 9
    if length > 8:
        raise VideoCheckError(f"corrupt: invalid WebM element header byte 0x{first:02x}")
    if at + length > min(len(data), end):
        raise VideoCheckError("truncated: the file ends inside a WebM element header")
    value = int.from_bytes(data[at : at + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, length


# --- ffmpeg ---------------------------------------------------------------------------------------

_INPUT = re.compile(r"^Input #0, (.+?), from ", re.MULTILINE)
_DURATION = re.compile(r"^\s*Duration: (?:(\d+):(\d\d):(\d\d(?:\.\d+)?)|N/A)", re.MULTILINE)
_VIDEO = re.compile(r"^\s*Stream #\d+:\d+\S*: Video: (\w+)(?![^\n]*\(attached pic\))", re.MULTILINE)


@functools.cache
def _ffmpeg() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _probe(path: Path, output_format: str) -> tuple[str, float | None]:
    """(video codec, duration) as ffmpeg reads them; the container must be the right one."""
    text = _ffmpeg_says(path)
    found = _INPUT.search(text)
    if found is None:
        raise VideoCheckError(f"ffmpeg cannot read it as a video: {_tail(text)}")
    wanted = MATROSKA_DEMUXER if output_format == "WEBM" else ISO_DEMUXER
    if found.group(1) != wanted:
        raise VideoCheckError(f"container is {found.group(1)}, expected {output_format.lower()}")
    video = _VIDEO.search(text)
    if video is None:
        raise VideoCheckError("no video stream (ffmpeg finds none)")
    return video.group(1), _duration(text)


def _ffmpeg_says(path: Path) -> str:
    """ffmpeg's description of the file: without an output it reads the headers and stops."""
    try:
        command = [_ffmpeg(), "-hide_banner", "-nostdin", "-protocol_whitelist", "file"]
        # The file: prefix keeps a name like "concat:x" or "-x" an ordinary file.
        command += ["-i", f"file:{path.absolute()}"]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=FFMPEG_TIMEOUT,
            check=False,  # with no output file ffmpeg always exits 1
        )
    except subprocess.TimeoutExpired as exc:
        raise VideoCheckError(
            f"ffmpeg took longer than {FFMPEG_TIMEOUT:g} s to read the file"
        ) from exc
    except (OSError, RuntimeError) as exc:  # RuntimeError: imageio-ffmpeg found no binary
        raise VideoCheckError(f"could not run ffmpeg to check the file: {exc}") from exc
    return result.stderr.decode("utf-8", errors="replace")


def _duration(text: str) -> float | None:
    found = _DURATION.search(text)
    if found is None or found.group(1) is None:
        return None
    hours, minutes, seconds = found.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _check_duration(seconds: float | None, expected: float, tolerance: float) -> None:
    if seconds is None:
        raise VideoCheckError(f"the container declares no duration, expected {expected:.2f} s")
    if abs(seconds - expected) > tolerance:
        raise VideoCheckError(
            f"duration {seconds:.2f} s, expected {expected:.2f} s (±{tolerance:g} s)"
        )


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "output file must be specified" not in line]
    return " | ".join(lines[-STDERR_TAIL_LINES:]) or "no message"
