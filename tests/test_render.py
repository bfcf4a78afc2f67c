"""Sandbox rendering: real, playable files with the right codecs, size, length and moving waveform."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from avatarbatch.sandbox import render
from avatarbatch.sandbox.render import (
    RenderError,
    VideoInfo,
    ffmpeg_exe,
    pad_video,
    probe_video,
    render_stub,
    render_video,
)
from conftest import DEMO, image_bytes, wav_bytes

PRESENTER = DEMO / "media" / "presenter.png"  # 768x1024
EN_MP3 = DEMO / "media" / "voices" / "en.mp3"
EN_SECONDS = 5.486  # mutagen's length, which is what the sandbox passes as `seconds`
CODECS = {"MP4": ("h264", "aac"), "WEBM": ("vp9", "opus"), "MOV": ("h264", "aac")}


@pytest.fixture
def portrait(tmp_path: Path) -> Path:
    path = tmp_path / "face.png"
    path.write_bytes(image_bytes(400, 600))
    return path


@pytest.fixture
def voice(tmp_path: Path) -> Path:
    path = tmp_path / "voice.wav"
    path.write_bytes(wav_bytes(3.0))
    return path


@dataclass
class FfmpegRuns:
    requested: int = 0  #: calls to create_subprocess_exec, counted before the process exists
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)


@pytest.fixture
def ffmpeg_runs(monkeypatch: pytest.MonkeyPatch) -> FfmpegRuns:
    """Every ffmpeg process the renderer starts, recorded (and still started for real)."""
    runs = FfmpegRuns()
    real = asyncio.create_subprocess_exec

    async def recording(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        runs.requested += 1
        runs.processes.append(await real(*args, **kwargs))
        return runs.processes[-1]

    monkeypatch.setattr(render.asyncio, "create_subprocess_exec", recording)
    return runs


def frame_at(video: Path, seconds: float, out: Path) -> Image.Image:
    command = [ffmpeg_exe(), "-v", "error", "-y", "-ss", str(seconds), "-i", str(video)]
    subprocess.run(
        [*command, "-frames:v", "1", str(out)],
        check=True,
        timeout=60,
    )
    return Image.open(out).convert("L")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(ImageStat.Stat(ImageChops.difference(a, b)).mean[0])


def assert_playable(info: VideoInfo, output_format: str, seconds: float, max_side: int) -> None:
    assert (info.video_codec, info.audio_codec) == CODECS[output_format]
    assert info.width % 2 == 0 and info.height % 2 == 0
    assert max(info.width, info.height) <= max_side
    assert abs(info.seconds - seconds) <= 0.15


@pytest.mark.parametrize("output_format", ["MP4", "WEBM", "MOV"])
async def test_each_format_renders_with_its_codecs_size_and_length(
    tmp_path: Path, portrait: Path, voice: Path, output_format: render.OutputFormat
) -> None:
    out = tmp_path / "out"
    dest = out / f"video.{render.EXTENSIONS[output_format]}"
    await render_video(portrait, voice, 3.0, output_format, dest, max_side=320)
    info = probe_video(dest)
    assert_playable(info, output_format, 3.0, 320)
    assert (info.width, info.height) == (212, 320)  # 400x600 fitted, 213 made even
    assert [p.name for p in out.iterdir()] == [dest.name]  # no temporary files left


async def test_a_portrait_larger_than_max_side_is_scaled_down_keeping_its_aspect(
    tmp_path: Path, voice: Path
) -> None:
    dest = tmp_path / "big.mp4"
    await render_video(PRESENTER, voice, 3.0, "MP4", dest, max_side=320)
    info = probe_video(dest)
    assert (info.width, info.height) == (240, 320)


async def test_odd_sizes_become_even_and_small_portraits_are_not_upscaled(
    tmp_path: Path, voice: Path
) -> None:
    portrait = tmp_path / "odd.jpg"
    portrait.write_bytes(image_bytes(151, 97, fmt="JPEG"))
    dest = tmp_path / "odd.mp4"
    await render_video(portrait, voice, 3.0, "MP4", dest, max_side=1280)
    info = probe_video(dest)
    assert (info.width, info.height) == (150, 96)


async def test_a_text_file_as_portrait_raises_and_leaves_no_file(
    tmp_path: Path, voice: Path
) -> None:
    portrait = tmp_path / "face.png"
    portrait.write_text("not an image\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RenderError, match="portrait"):
        await render_video(portrait, voice, 3.0, "MP4", out / "video.mp4", max_side=320)
    assert list(out.iterdir()) == []


async def test_unreadable_audio_raises_with_ffmpegs_reason_and_leaves_no_file(
    tmp_path: Path, portrait: Path
) -> None:
    audio = tmp_path / "voice.mp3"
    audio.write_text("not audio either\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RenderError, match=r"ffmpeg failed to render video\.webm.*exit status"):
        await render_video(portrait, audio, 3.0, "WEBM", out / "video.webm", max_side=320)
    assert list(out.iterdir()) == []


async def test_a_render_over_its_timeout_is_killed_and_leaves_no_file(
    tmp_path: Path, portrait: Path, voice: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Ten minutes of padded video cannot finish in a fraction of a second.
    with pytest.raises(RenderError, match=r"took longer than 0\.3 s"):
        await render_video(portrait, voice, 600.0, "MP4", out / "video.mp4", timeout=0.3)
    assert list(out.iterdir()) == []


async def test_cancelling_a_render_stops_ffmpeg_and_leaves_no_file(
    tmp_path: Path, portrait: Path, voice: Path, ffmpeg_runs: FfmpegRuns
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    task = asyncio.create_task(render_video(portrait, voice, 600.0, "MP4", out / "video.mp4"))
    while not list(out.iterdir()) and not task.done():  # until ffmpeg has started writing
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [process.returncode for process in ffmpeg_runs.processes] == [-9]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("phase", ["spawning", "running"])
@pytest.mark.parametrize("gap", [0, 1, 3, 10])
async def test_a_render_cancelled_twice_still_kills_and_reaps_ffmpeg(
    tmp_path: Path, portrait: Path, voice: Path, ffmpeg_runs: FfmpegRuns, phase: str, gap: int
) -> None:
    """A worker cancelled, then the loop's shutdown cancelling what is left, must not leak."""
    out = tmp_path / "out"
    out.mkdir()
    task = asyncio.create_task(render_video(portrait, voice, 600.0, "MP4", out / "video.mp4"))
    started = (
        (lambda: ffmpeg_runs.requested) if phase == "spawning" else (lambda: list(out.iterdir()))
    )
    while not started() and not task.done():
        await asyncio.sleep(0 if phase == "spawning" else 0.001)  # the spawn lasts a tick or two
    task.cancel()
    for _ in range(gap):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ffmpeg_runs.requested == 1
    assert [process.returncode for process in ffmpeg_runs.processes] == [-9]
    assert list(out.iterdir()) == []


async def test_the_waveform_moves_with_the_audio_while_the_face_stays_still(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "talk.mp4"
    await render_video(PRESENTER, EN_MP3, EN_SECONDS, "MP4", dest, max_side=320)
    assert_playable(probe_video(dest), "MP4", EN_SECONDS, 320)
    first = frame_at(dest, 1.0, tmp_path / "a.png")
    second = frame_at(dest, 2.5, tmp_path / "b.png")
    width, height = first.size
    band = (0, height - height // 8, width, height)  # well inside the waveform band
    face = (0, height // 8, width // 3, height // 2)  # below the mark, above the band
    assert mean_difference(first.crop(band), second.crop(band)) > 3.0
    assert mean_difference(first.crop(face), second.crop(face)) < 1.0


@pytest.mark.parametrize("output_format", ["MP4", "WEBM"])
async def test_stubs_have_the_requested_length_and_are_rendered_once_per_key(
    tmp_path: Path,
    output_format: render.OutputFormat,
    ffmpeg_runs: FfmpegRuns,
) -> None:
    cache = tmp_path / "cache"
    ext = render.EXTENSIONS[output_format]
    for seconds in (1.234, 3.001):
        dest = tmp_path / f"first-{seconds}.{ext}"
        await render_stub(seconds, output_format, dest, cache_dir=cache)
        info = probe_video(dest)
        assert info.audio_codec == CODECS[output_format][1]
        # ffmpeg prints centiseconds; WebM may run one 20 ms Opus frame long.
        assert abs(info.seconds - seconds) <= (0.006 if output_format == "MP4" else 0.025)
    assert len(ffmpeg_runs.processes) == 2
    cached = cache / f"stub-1234ms.{ext}"
    before = cached.stat()

    again = [tmp_path / f"again-{i}.{ext}" for i in range(3)]
    await asyncio.gather(*(render_stub(1.234, output_format, d, cache_dir=cache) for d in again))
    assert len(ffmpeg_runs.processes) == 2
    assert (cached.stat().st_ino, cached.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert all(d.read_bytes() == cached.read_bytes() for d in again)
    assert sorted(p.name for p in cache.iterdir()) == [f"stub-1234ms.{ext}", f"stub-3001ms.{ext}"]


async def test_concurrent_requests_for_a_new_stub_render_it_once(
    tmp_path: Path, ffmpeg_runs: FfmpegRuns
) -> None:
    cache = tmp_path / "cache"
    dests = [tmp_path / f"v{i}.mov" for i in range(5)]
    await asyncio.gather(*(render_stub(2.0, "MOV", d, cache_dir=cache) for d in dests))
    assert len(ffmpeg_runs.processes) == 1
    assert probe_video(dests[0]).video_codec == "h264"


def test_probing_a_file_that_is_not_a_video_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("hello\n")
    with pytest.raises(RenderError, match="not a readable video"):
        probe_video(path)


@pytest.mark.parametrize("output_format", ["MP4", "MOV"])
async def test_padded_results_stay_playable_and_take_no_disk(
    tmp_path: Path, output_format: render.OutputFormat
) -> None:
    dest = tmp_path / f"big.{render.EXTENSIONS[output_format]}"
    await render_stub(1.5, output_format, dest, cache_dir=tmp_path / "cache")
    pad_video(dest, 64 * 2**20)
    assert dest.stat().st_size == 64 * 2**20
    assert dest.stat().st_blocks * 512 < 2**20  # a hole, not 64 MB of zeros on disk
    assert abs(probe_video(dest).seconds - 1.5) <= 0.006
    pad_video(dest, 1000)  # never shrinks
    assert dest.stat().st_size == 64 * 2**20


async def test_only_mp4_and_mov_results_are_padded(tmp_path: Path) -> None:
    dest = tmp_path / "clip.webm"
    await render_stub(1.0, "WEBM", dest, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="only MP4 and MOV"):
        pad_video(dest, 2**20)
