"""What an MP4/MOV file's `moov` box says about it: the video codec and the duration.

Reading these few fields in Python costs microseconds; asking `ffmpeg -i` costs a process
(≈13 ms of CPU), which at hundreds of downloads a second is most of the client's time.

The file is untrusted (any server, any proxy), so every size is checked against the box that
holds it before anything is read, a box of size 0 runs to the end of its parent, size 1 has
a 64-bit size after the type, and the walk is bounded: only one fixed path of containers is
entered (moov/trak/mdia/minf/stbl/stsd, so the depth cannot grow), and at most
`MAX_MOOV_BOXES` boxes are looked at in all. Any inconsistency raises `BoxError`.

Only what the boxes say for certain is returned. When the movie declares no duration (a
fragmented file keeps its samples in `moof` boxes, so `moov` says 0 or less than the whole),
`Movie.seconds` is None and the caller asks ffmpeg, which reads the fragments.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["MAX_MOOV_BOXES", "MAX_MOOV_BYTES", "BoxError", "Movie", "parse_moov", "read_movie"]

#: A moov is read in one piece; a two-hour film's is a few MB. Larger ones are left to ffmpeg,
#: which reads them piecemeal, rather than letting a crafted file make us allocate gigabytes.
MAX_MOOV_BYTES = 64 * 1024 * 1024
#: A real moov holds a few dozen boxes on the path walked; this bounds a crafted one of tiny boxes.
MAX_MOOV_BOXES = 100_000
#: ffmpeg's codec names for the sample entry types it maps (libavformat/isom.c), so a pure
#: Python check reports the same `video_codec` as the ffmpeg one it replaces.
CODECS: dict[bytes, str] = {
    b"avc1": "h264",
    b"avc3": "h264",
    b"dva1": "h264",
    b"dvav": "h264",
    b"hvc1": "hevc",
    b"hev1": "hevc",
    b"dvh1": "hevc",
    b"dvhe": "hevc",
    b"vp08": "vp8",
    b"vp09": "vp9",
    b"av01": "av1",
    b"mp4v": "mpeg4",
    b"jpeg": "mjpeg",
    b"apch": "prores",
    b"apcn": "prores",
    b"apcs": "prores",
    b"apco": "prores",
    b"ap4h": "prores",
    b"ap4x": "prores",
}
VIDEO_HANDLER = b"vide"
HEADER = 8  # 32-bit size + type
LARGE_HEADER = 16  # ... + 64-bit size, when the 32-bit size is 1
# Full-box layouts (version + 24-bit flags first) of mvhd and mdhd, which share one:
# version 0 has 32-bit times, version 1 64-bit; the timescale is 32-bit in both.
TIMES = {0: (4 + 4 + 4, 4), 1: (4 + 8 + 8, 8)}  # version -> (timescale offset, duration width)


class BoxError(Exception):
    """The moov box is malformed; the text says where."""


@dataclass(frozen=True, slots=True)
class Movie:
    video_codec: str  #: ffmpeg's name for the first video track's codec, e.g. "h264"
    seconds: float | None  #: None when the boxes declare no usable duration


def read_movie(handle: BinaryIO, offset: int, length: int) -> Movie | None:
    """Parse the moov box of `length` bytes at `offset`; None when it is too big to read at once.

    The caller has checked that the box lies within the file.
    """
    if length > MAX_MOOV_BYTES:
        return None
    handle.seek(offset)
    data = handle.read(length)
    if len(data) != length:  # the file shrank since its boxes were checked
        raise BoxError(f"truncated: the file ends inside the 'moov' box at byte {offset:,}")
    return parse_moov(data)


def parse_moov(data: bytes) -> Movie:
    """The facts in a whole moov box (header included), or BoxError."""
    walk = _Walk(data)
    top = walk.box_at(0, len(data), "the file")
    if top.kind != b"moov":
        raise BoxError(f"corrupt: expected a 'moov' box, found {_name(top.kind)}")
    movie_seconds: float | None = None
    fragmented = False
    videos: list[tuple[str, float | None]] = []  # (codec, seconds) of each video track
    for child in walk.children(top):
        if child.kind == b"mvhd":
            movie_seconds = _seconds(data, child)
        elif child.kind == b"mvex":
            fragmented = True
        elif child.kind == b"trak":
            track = _video_track(walk, child)
            if track is not None:
                videos.append(track)
    if not videos:
        raise BoxError("no video stream (no track has a 'vide' handler)")
    if fragmented:
        # mvhd covers only the samples in moov (often none); the rest are in moof boxes.
        seconds = None
    elif movie_seconds:
        seconds = movie_seconds
    else:
        seconds = max((s for _, s in videos if s), default=None)
    return Movie(videos[0][0], seconds)


@dataclass(frozen=True, slots=True)
class _Box:
    kind: bytes
    start: int  #: where its payload starts, in the moov buffer
    end: int  #: where the box ends


class _Walk:
    """Boxes inside one buffer, counted so a crafted file cannot make the walk endless."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.seen = 0

    def children(self, parent: _Box) -> Iterator[_Box]:
        offset = parent.start
        # Fewer than 8 bytes left cannot be a box: QuickTime ends some containers with a
        # 32-bit zero, which players skip, so this is tolerated rather than refused.
        while parent.end - offset >= HEADER:
            child = self.box_at(offset, parent.end, _name(parent.kind))
            yield child
            offset = child.end

    def first(self, parent: _Box, kind: bytes) -> _Box | None:
        return next((child for child in self.children(parent) if child.kind == kind), None)

    def box_at(self, offset: int, end: int, parent: str) -> _Box:
        self.seen += 1
        if self.seen > MAX_MOOV_BOXES:
            raise BoxError(f"corrupt: more than {MAX_MOOV_BOXES:,} boxes in 'moov'")
        data = self.data
        if end - offset < HEADER:
            raise BoxError(f"corrupt: {parent} ends inside a box header")
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind, header = data[offset + 4 : offset + 8], HEADER
        if length == 1:
            if end - offset < LARGE_HEADER:
                raise BoxError(f"corrupt: {parent} ends inside the header of box {_name(kind)}")
            length, header = int.from_bytes(data[offset + 8 : offset + 16], "big"), LARGE_HEADER
        elif length == 0:
            length = end - offset
        if length < header:
            raise BoxError(f"corrupt: box {_name(kind)} in {parent} has size {length}")
        if offset + length > end:
            raise BoxError(
                f"corrupt: box {_name(kind)} runs past the end of {parent} "
                f"({offset + length - end:,} bytes too long)"
            )
        return _Box(kind, offset + header, offset + length)


def _video_track(walk: _Walk, trak: _Box) -> tuple[str, float | None] | None:
    """(codec, seconds) if `trak` is a video track, else None."""
    mdia = walk.first(trak, b"mdia")
    if mdia is None:
        return None
    found: dict[bytes, _Box] = {}
    for child in walk.children(mdia):
        found.setdefault(child.kind, child)
    hdlr = found.get(b"hdlr")
    # Full box, then pre_defined (QuickTime: the component type), then the handler type.
    if hdlr is None or _field(walk.data, hdlr, 8, 4, "hdlr") != VIDEO_HANDLER:
        return None
    minf = found.get(b"minf")
    codec = _codec(walk, minf) if minf is not None else None
    if codec is None:
        raise BoxError("corrupt: the video track has no sample description ('stsd')")
    mdhd = found.get(b"mdhd")
    return codec, _seconds(walk.data, mdhd) if mdhd is not None else None


def _codec(walk: _Walk, minf: _Box) -> str | None:
    stbl = walk.first(minf, b"stbl")
    stsd = walk.first(stbl, b"stsd") if stbl is not None else None
    if stsd is None:
        return None
    count = int.from_bytes(_field(walk.data, stsd, 4, 4, "stsd"), "big")
    entries = _Box(stsd.kind, stsd.start + 8, stsd.end)  # after version, flags, entry count
    if count == 0 or entries.end - entries.start < HEADER:
        raise BoxError("corrupt: the video track's 'stsd' has no sample entry")
    fourcc = walk.box_at(entries.start, entries.end, "'stsd'").kind
    return CODECS.get(fourcc) or fourcc.decode("latin-1").strip().lower()


def _seconds(data: bytes, box: _Box) -> float | None:
    """An mvhd's or mdhd's duration in seconds; None if it declares none (0 or all ones)."""
    what = box.kind.decode("latin-1")
    version = _field(data, box, 0, 1, what)[0]
    layout = TIMES.get(version)
    if layout is None:  # a version this parser does not know: let ffmpeg judge the file
        return None
    at, width = layout
    timescale = int.from_bytes(_field(data, box, at, 4, what), "big")
    duration = int.from_bytes(_field(data, box, at + 4, width, what), "big")
    unknown = (1 << (8 * width)) - 1
    if timescale == 0 or duration in (0, unknown):
        return None
    return duration / timescale


def _field(data: bytes, box: _Box, at: int, width: int, what: str) -> bytes:
    if box.end - box.start < at + width:
        raise BoxError(f"corrupt: the '{what}' box is too short ({box.end - box.start} bytes)")
    return data[box.start + at : box.start + at + width]


def _name(kind: bytes) -> str:
    """A box type as text a person can read, in quotes: printable ASCII as is, the rest escaped."""
    return "'" + "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in kind) + "'"
