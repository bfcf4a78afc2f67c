"""verify_video: real sandbox renders pass; pages, cut files, wrong formats and lengths do not."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from pathlib import Path

import pytest

from avatarbatch.engine import verify
from avatarbatch.engine.verify import VideoCheckError, VideoFacts, verify_video
from avatarbatch.sandbox.render import EXTENSIONS, ffmpeg_exe, pad_video, render_video
from conftest import image_bytes, wav_bytes

SECONDS = 3.0
CODECS = {"MP4": "h264", "WEBM": "vp9", "MOV": "h264"}
HTML_PAGE = b"<html><body><h1>503 Service Unavailable</h1></body></html>"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small 3 s render per format, made once for the module."""
    folder = tmp_path_factory.mktemp("verify")
    portrait, voice = folder / "face.png", folder / "voice.wav"
    portrait.write_bytes(image_bytes(96, 128))
    voice.write_bytes(wav_bytes(SECONDS))

    async def render_all() -> None:
        await asyncio.gather(
            *(
                render_video(
                    portrait, voice, SECONDS, fmt, folder / f"v.{EXTENSIONS[fmt]}", max_side=128
                )
                for fmt in CODECS
            )
        )

    asyncio.run(render_all())
    return {fmt: folder / f"v.{EXTENSIONS[fmt]}" for fmt in CODECS}


def copy_of(source: Path, target: Path, length: int | None = None) -> Path:
    data = source.read_bytes()
    target.write_bytes(data if length is None else data[:length])
    return target


def rejected(path: Path, output_format: str = "MP4", expected: float | None = SECONDS) -> str:
    with pytest.raises(VideoCheckError) as caught:
        verify_video(path, output_format=output_format, expected_seconds=expected)
    return str(caught.value)


@pytest.mark.parametrize("fmt", list(CODECS))
def test_real_renders_pass_in_every_format(videos: dict[str, Path], fmt: str) -> None:
    path = videos[fmt]
    facts = verify_video(path, output_format=fmt, expected_seconds=SECONDS)
    assert facts == VideoFacts(fmt, CODECS[fmt], facts.seconds, path.stat().st_size)
    assert facts.seconds == pytest.approx(SECONDS, abs=0.05)


@pytest.mark.parametrize("fmt", ["MP4", "MOV"])
def test_a_result_padded_with_a_free_box_passes(
    videos: dict[str, Path], fmt: str, tmp_path: Path
) -> None:
    padded = copy_of(videos[fmt], tmp_path / f"big.{EXTENSIONS[fmt]}")
    pad_video(padded, 5_000_000)  # what the sandbox's video_bytes option does
    facts = verify_video(padded, output_format=fmt, expected_seconds=SECONDS)
    assert facts.size_bytes == 5_000_000


def test_the_duration_check_is_skipped_without_an_expectation(videos: dict[str, Path]) -> None:
    facts = verify_video(videos["MP4"], output_format="MP4", expected_seconds=None)
    assert facts.seconds == pytest.approx(SECONDS, abs=0.05)


def test_an_html_page_is_not_a_video(tmp_path: Path) -> None:
    page = tmp_path / "v.mp4"
    page.write_bytes(HTML_PAGE)
    assert rejected(page) == "not a video container (starts with '<html><body>')"


@pytest.mark.parametrize("fmt", list(CODECS))
@pytest.mark.parametrize("share", [3, 2])
def test_a_file_cut_to_a_third_or_a_half_is_truncated(
    videos: dict[str, Path], fmt: str, share: int, tmp_path: Path
) -> None:
    source = videos[fmt]
    size = source.stat().st_size
    cut = copy_of(source, tmp_path / source.name, size // share)
    message = rejected(cut, fmt)
    assert message.startswith("truncated: ")
    assert "runs past the end of the file" in message
    assert f"({size // share:,} of " in message


@pytest.mark.parametrize(("fmt", "what"), [("MP4", "MP4 box 'mdat'"), ("WEBM", "WebM Segment")])
def test_one_missing_byte_at_the_end_is_caught(
    videos: dict[str, Path], fmt: str, what: str, tmp_path: Path
) -> None:
    # ffmpeg reads the headers only and would accept this file; the structure check does not.
    source = videos[fmt]
    cut = copy_of(source, tmp_path / source.name, source.stat().st_size - 1)
    assert f"truncated: {what} runs past the end of the file" in rejected(cut, fmt)


@pytest.mark.parametrize(
    ("actual", "asked", "message"),
    [
        ("WEBM", "MP4", "container is matroska,webm, expected mp4"),
        ("MP4", "WEBM", "container is mov,mp4,m4a,3gp,3g2,mj2, expected webm"),
        ("MOV", "MP4", "container is mov (brand 'qt  '), expected mp4"),
        ("MP4", "MOV", "container is mp4 (brand 'isom'), expected mov"),
    ],
)
def test_a_file_in_another_format_is_refused(
    videos: dict[str, Path], actual: str, asked: str, message: str
) -> None:
    assert rejected(videos[actual], asked) == message


def test_a_wrong_duration_is_refused(videos: dict[str, Path]) -> None:
    message = rejected(videos["MP4"], expected=6.0)
    assert message == "duration 3.00 s, expected 6.00 s (±0.5 s)"
    verify_video(videos["MP4"], output_format="MP4", expected_seconds=3.4)  # within tolerance


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "v.webm"
    empty.touch()
    assert rejected(empty, "WEBM") == "the file is empty (0 bytes)"


@pytest.mark.parametrize("fmt", list(CODECS))
def test_random_bytes_are_refused(fmt: str, tmp_path: Path) -> None:
    noise = tmp_path / "noise"
    noise.write_bytes(random.Random(7).randbytes(50_000))
    assert rejected(noise, fmt).startswith("not a video container (starts with '")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert rejected(tmp_path / "absent.mp4").startswith("cannot read the file: ")


def test_an_mp4_without_a_video_stream_is_refused(tmp_path: Path) -> None:
    sound = tmp_path / "sound.mp4"
    silence = ("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "3", "-c:a", "aac")
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", *silence, "-y", str(sound)],
        check=True,
        timeout=60,
    )
    assert rejected(sound) == "no video stream (ffmpeg finds none)"


def test_an_ffmpeg_that_cannot_run_is_a_check_error(
    videos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "_ffmpeg", lambda: str(tmp_path / "no-ffmpeg"))
    assert rejected(videos["MP4"]).startswith("could not run ffmpeg to check the file: ")


def test_an_unknown_format_is_a_programming_error(videos: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="MKV"):
        verify_video(videos["MP4"], output_format="MKV", expected_seconds=None)


def test_verifying_a_3_second_video_is_quick(videos: dict[str, Path]) -> None:
    verify_video(videos["MP4"], output_format="MP4", expected_seconds=SECONDS)  # warm caches
    started = time.perf_counter()
    for _ in range(5):
        verify_video(videos["MP4"], output_format="MP4", expected_seconds=SECONDS)
    # Typically ~20 ms each; the bound only catches a probe that decodes the whole file.
    assert (time.perf_counter() - started) / 5 < 1.0
