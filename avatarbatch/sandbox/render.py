"""Real video files for the sandbox's finished avatar tasks, rendered with ffmpeg.

The sandbox must hand back a file that a player, a download check and a human reviewer all
accept, so `render_video` makes a genuine video: the portrait, the submitted audio, an audio
waveform that moves with the speech (so a glance shows the audio is really there and in sync)
and a "SANDBOX" mark so nobody mistakes the result for a paid render.

Pillow prepares the single background frame (`frame.py`) and hands it to ffmpeg as raw RGB on
stdin; ffmpeg loops that frame, draws `showwaves` over the band and encodes.

`render_stub` is for throughput benchmarks: thousands of tasks need some valid file quickly, so
one tiny clip per (duration in ms, format) is rendered once into a cache and copied from there.

Running ffmpeg safely is `ffmpeg.py`'s job and the background frame `frame.py`'s; the frame
lives in an anonymous temporary file, which disappears however the render ends.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import subprocess
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from avatarbatch.sandbox.ffmpeg import RenderError, ffmpeg_exe, file_url, render_into, tail
from avatarbatch.sandbox.frame import band_height, write_frame

__all__ = [
    "EXTENSIONS",
    "OutputFormat",
    "RenderError",
    "VideoInfo",
    "ffmpeg_exe",
    "pad_video",
    "probe_video",
    "render_stub",
    "render_video",
]

OutputFormat = Literal["MP4", "WEBM", "MOV"]
EXTENSIONS: dict[str, str] = {"MP4": "mp4", "WEBM": "webm", "MOV": "mov"}

FPS = 25
MIN_QUALITY, MAX_QUALITY = 20, 99  # Runware's outputQuality range
WAVE_COLOUR = "0x7fffd4"
STUB_SIDE = 64
STUB_COLOUR = "0x3a6ea5"
FREE_BOX_HEADER = 8  #: a 32-bit size and the type `free`


@dataclass(frozen=True, slots=True)
class VideoInfo:
    seconds: float  #: container duration as ffmpeg reports it (to 1/100 s)
    video_codec: str  #: ffmpeg's codec name, e.g. "h264", "vp9"
    audio_codec: str | None  #: e.g. "aac", "opus"; None without an audio stream
    width: int
    height: int


async def render_video(
    portrait: Path,
    audio: Path,
    seconds: float,
    output_format: OutputFormat,
    dest: Path,
    *,
    quality: int = 95,
    max_side: int = 1280,
    timeout: float = 300.0,
) -> None:
    """Render `portrait` speaking `audio` for exactly `seconds` into `dest`.

    :param quality: Runware's outputQuality (20..99), mapped to the encoder's CRF.
    :param max_side: the long side of the output is at most this (never upscaled).
    :param timeout: ffmpeg is killed and RenderError raised after this many seconds.
    """
    _check_common(seconds, output_format)
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise ValueError(f"quality must be {MIN_QUALITY}..{MAX_QUALITY}, not {quality}")
    if max_side < 2:
        raise ValueError(f"max_side must be at least 2, not {max_side}")

    # An anonymous file vanishes when closed, whatever happens; ffmpeg reads it as stdin.
    with tempfile.TemporaryFile() as frame:
        # Decoding a large JPEG takes long enough to stall other tasks; keep it off the loop.
        # If this is cancelled the thread may still be writing: closing the file stops it.
        size = await asyncio.to_thread(write_frame, portrait, max_side, frame)
        args = _video_args(size, audio, seconds, output_format, quality)
        what = f"render {dest.name} ({output_format}) from {portrait.name} and {audio.name}"
        await render_into(dest, args, what=what, timeout=timeout, stdin=frame)


def _video_args(
    size: tuple[int, int], audio: Path, seconds: float, output_format: OutputFormat, quality: int
) -> list[str]:
    """ffmpeg's inputs, filter graph and encoding for a raw RGB frame on stdin plus `audio`."""
    width, height = size
    band = band_height(height)
    graph = (
        f"[0:v]loop=loop=-1:size=1:start=0,setpts=N/{FPS}/TB[bg];"
        # apad + -t make the length exactly `seconds` whatever the decoder's idea of the end.
        "[1:a]asetpts=PTS-STARTPTS,apad,asplit[a][aw];"
        f"[aw]aformat=channel_layouts=mono,showwaves=s={width}x{band}:mode=cline:rate={FPS}"
        f":scale=sqrt:draw=full:colors={WAVE_COLOUR},format=rgba,colorchannelmixer=aa=0.8[wave];"
        "[bg][wave]overlay=0:H-h:format=auto,format=yuv420p[v]"
    )
    return [
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"),
        *("-framerate", str(FPS), "-i", "pipe:0"),
        # The audio is user input: a playlist disguised as .mp3 must not fetch anything.
        *("-protocol_whitelist", "file", "-i", file_url(audio)),
        *("-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-map_metadata", "-1"),
        *("-t", f"{seconds:.3f}"),
        *_codec_args(output_format, quality),
    ]


async def render_stub(
    seconds: float,
    output_format: OutputFormat,
    dest: Path,
    *,
    cache_dir: Path,
    timeout: float = 120.0,
) -> None:
    """Copy a tiny valid clip of `seconds` (to the millisecond) into `dest`, rendering it once.

    The clip is a 64x64 solid colour with silent audio. Its video stream ends on a frame
    boundary at or before the audio, so the audio fixes the container's length: exact in
    MP4/MOV; in WEBM the Matroska duration can exceed it by up to one Opus frame (20 ms).
    """
    _check_common(seconds, output_format)
    millis = round(seconds * 1000)
    if millis < 1:
        raise ValueError(f"seconds must be at least 0.001, not {seconds}")
    cached = cache_dir / f"stub-{millis}ms.{EXTENSIONS[output_format]}"
    # The lock stops a burst of same-length tasks from all rendering the same clip; the
    # temporary file and rename protect the cache from other processes sharing it.
    async with _stub_lock(cache_dir, millis, output_format):
        if not cached.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            frame = 1000 // FPS
            video = max(frame, millis // frame * frame) / 1000
            size = f"{STUB_SIDE}x{STUB_SIDE}"
            args = [
                *("-f", "lavfi", "-i", f"color=c={STUB_COLOUR}:s={size}:r={FPS}:d={video:.3f}"),
                *("-f", "lavfi", "-i", f"anullsrc=r=48000:cl=mono:d={millis / 1000:.3f}"),
                *("-t", f"{millis / 1000:.3f}"),
                *_codec_args(output_format, quality=50),
            ]
            what = f"render the {millis} ms {output_format} stub"
            await render_into(cached, args, what=what, timeout=timeout)
    await asyncio.to_thread(_copy_into_place, cached, dest)


def pad_video(path: Path, size: int) -> None:
    """Grow an MP4/MOV file to `size` bytes with a trailing `free` box, which players skip.

    The box is written as a hole (truncate past the end), so a 200 MB result costs no disk
    and no time, yet is downloaded, hashed and saved like any other 200 MB file.
    """
    if path.suffix not in (".mp4", ".mov"):
        raise ValueError(f"only MP4 and MOV results can be padded, not {path.name}")
    current = path.stat().st_size
    padding = size - current
    if padding < FREE_BOX_HEADER:
        return  # already that large, or too close to it for a box header
    with path.open("r+b") as handle:
        handle.seek(current)
        handle.write(padding.to_bytes(4, "big") + b"free")
        handle.truncate(size)


def probe_video(path: Path, *, timeout: float = 60.0) -> VideoInfo:
    """Duration, codecs and frame size of a video, parsed from `ffmpeg -i` (there is no ffprobe)."""
    try:
        result = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", file_url(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,  # without an output file ffmpeg always exits 1
        )
    except subprocess.TimeoutExpired as exc:
        raise RenderError(f"ffmpeg took longer than {timeout:g} s to read {path}") from exc
    text = result.stderr.decode("utf-8", errors="replace")
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    video = re.search(r"Stream #\d+:\d+\S*: Video: (\w+)[^\n]*?,\s*(\d{1,5})x(\d{1,5})\b", text)
    if duration is None or video is None:
        raise RenderError(f"{path} is not a readable video: {tail(result.stderr)}")
    hours, minutes, secs = duration.groups()
    audio = re.search(r"Stream #\d+:\d+\S*: Audio: (\w+)", text)
    return VideoInfo(
        seconds=int(hours) * 3600 + int(minutes) * 60 + float(secs),
        video_codec=video.group(1),
        audio_codec=audio.group(1) if audio else None,
        width=int(video.group(2)),
        height=int(video.group(3)),
    )


def _check_common(seconds: float, output_format: str) -> None:
    if output_format not in EXTENSIONS:
        raise ValueError(
            f"output_format must be one of {', '.join(EXTENSIONS)}, not {output_format!r}"
        )
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, not {seconds}")


def _codec_args(output_format: OutputFormat, quality: int) -> list[str]:
    """Encoder and muxer options; `quality` 20..99 maps linearly onto a sensible CRF span."""
    share = (quality - MIN_QUALITY) / (MAX_QUALITY - MIN_QUALITY)  # 0 = worst, 1 = best
    common = ["-threads", "2"]  # leave cores for the sandbox's other render workers
    if output_format == "WEBM":
        crf = round(50 - share * 26)  # VP9: 50 (rough) .. 24 (near transparent)
        return [
            *("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"),
            *("-crf", str(crf), "-b:v", "0", "-pix_fmt", "yuv420p"),
            *("-c:a", "libopus", "-b:a", "64k", *common, "-f", "webm"),
        ]
    crf = round(36 - share * 18)  # x264: 36 (rough) .. 18 (near transparent)
    return [
        *("-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", *common),
        *("-f", "mp4" if output_format == "MP4" else "mov"),
    ]


_StubKey = tuple[str, int, str]
# asyncio locks belong to one event loop, and tests start a loop per test.
_stub_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_StubKey, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _stub_lock(cache_dir: Path, millis: int, output_format: str) -> asyncio.Lock:
    locks = _stub_locks.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault((str(cache_dir.absolute()), millis, output_format), asyncio.Lock())


def _copy_into_place(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        shutil.copyfile(source, partial)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
