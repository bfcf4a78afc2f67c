"""verify_video: real sandbox renders pass; pages, cut files, wrong formats and lengths do not.

MP4/MOV facts come from the moov box in pure Python (`iso_boxes`): they must equal what
ffmpeg reads, no subprocess may run for an ordinary file, and no crafted moov may raise
anything but VideoCheckError. ffmpeg remains for WebM and for moovs that declare no length.
"""

from __future__ import annotations

import asyncio
import random
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatarbatch.engine import iso_boxes, verify
from avatarbatch.engine.iso_boxes import BoxError, Movie, parse_moov
from avatarbatch.engine.verify import VideoCheckError, VideoFacts, verify_video
from avatarbatch.sandbox.render import (
    EXTENSIONS,
    ffmpeg_exe,
    pad_video,
    render_stub,
    render_video,
)
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
    assert rejected(sound) == "no video stream (no track has a 'vide' handler)"


def test_an_ffmpeg_that_cannot_run_is_a_check_error(
    videos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "_ffmpeg", lambda: str(tmp_path / "no-ffmpeg"))
    message = rejected(videos["WEBM"], "WEBM")  # MP4 and MOV no longer need it
    assert message.startswith("could not run ffmpeg to check the file: ")


def test_an_unknown_format_is_a_programming_error(videos: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="MKV"):
        verify_video(videos["MP4"], output_format="MKV", expected_seconds=None)


def test_verifying_a_3_second_video_is_quick(videos: dict[str, Path]) -> None:
    verify_video(videos["MP4"], output_format="MP4", expected_seconds=SECONDS)  # warm caches
    started = time.perf_counter()
    for _ in range(5):
        verify_video(videos["MP4"], output_format="MP4", expected_seconds=SECONDS)
    # Typically 0.05 ms each (20 ms with ffmpeg); the bound only catches a probe that decodes
    # the whole file.
    assert (time.perf_counter() - started) / 5 < 1.0


# --- MP4/MOV facts read from the moov box, without ffmpeg -----------------------------------------

CLIP = 2.0
LAVFI = (
    *("-f", "lavfi", "-i", f"color=c=black:s=64x64:d={CLIP:g}"),
    *("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", f"{CLIP:g}"),
)
# file name: (output_format, the codec ffmpeg names, encoder options)
ENCODINGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "h264-moov-at-end.mp4": ("MP4", "h264", ("-c:v", "libx264")),
    "h264-faststart.mp4": ("MP4", "h264", ("-c:v", "libx264", "-movflags", "+faststart")),
    "h264.mov": ("MOV", "h264", ("-c:v", "libx264", "-f", "mov")),
    "hevc.mp4": (
        "MP4",
        "hevc",
        ("-c:v", "libx265", "-tag:v", "hvc1", "-x265-params", "log-level=0"),
    ),
    "vp9.mp4": ("MP4", "vp9", ("-c:v", "libvpx-vp9", "-deadline", "realtime")),
    "mpeg4.mp4": ("MP4", "mpeg4", ("-c:v", "mpeg4")),
    "mjpeg.mov": ("MOV", "mjpeg", ("-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-f", "mov")),
    "prores.mov": ("MOV", "prores", ("-c:v", "prores_ks", "-f", "mov")),
    "fragmented.mp4": ("MP4", "h264", ("-c:v", "libx264", "-movflags", "frag_keyframe+empty_moov")),
}
FRAGMENTED = "fragmented.mp4"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2 s clip per ENCODINGS entry, encoded in parallel once for the module."""
    folder = tmp_path_factory.mktemp("clips")
    running = [
        subprocess.Popen(
            [ffmpeg_exe(), "-v", "error", "-nostdin", *LAVFI, *options, "-y", str(folder / name)]
        )
        for name, (_, _, options) in ENCODINGS.items()
    ]
    for process in running:
        assert process.wait(timeout=120) == 0
    return {name: folder / name for name in ENCODINGS}


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a subprocess ran: {args[0] if args else kwargs}")


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any subprocess.run from here on fails the test (verify imports the module itself)."""
    with monkeypatch.context() as patch:
        patch.setattr(verify.subprocess, "run", _refuse)
        yield


@pytest.fixture
def ffmpeg_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The commands verify runs, recorded as they run."""
    commands: list[Any] = []
    real = subprocess.run

    def spy(*args: Any, **kwargs: Any) -> Any:
        commands.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(verify.subprocess, "run", spy)
    return commands


def ffmpeg_facts(path: Path, fmt: str = "MP4") -> tuple[str, float | None]:
    return verify._probe(path, fmt)


def verified_without_ffmpeg(
    path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str = "MP4", expected: float | None = None
) -> VideoFacts:
    with monkeypatch.context() as patch:
        patch.setattr(verify.subprocess, "run", _refuse)
        return verify_video(path, output_format=fmt, expected_seconds=expected)


def top_level(data: bytes) -> dict[bytes, tuple[int, int]]:
    """(offset, length) of each top-level box of a whole file."""
    import io

    return verify._top_level_boxes(io.BytesIO(data), len(data))


def moov_of(data: bytes) -> bytes:
    offset, length = top_level(data)[b"moov"]
    return data[offset : offset + length]


@pytest.mark.parametrize("name", [name for name in ENCODINGS if name != FRAGMENTED])
def test_the_moov_says_what_ffmpeg_says(
    clips: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fmt, codec, _ = ENCODINGS[name]
    ffmpeg_codec, ffmpeg_seconds = ffmpeg_facts(clips[name], fmt)
    facts = verified_without_ffmpeg(clips[name], monkeypatch, fmt, expected=CLIP)
    assert facts.video_codec == ffmpeg_codec == codec
    assert facts.seconds == pytest.approx(ffmpeg_seconds, abs=0.05)


@pytest.mark.parametrize("fmt", ["MP4", "MOV"])
def test_sandbox_renders_verify_without_a_subprocess(
    videos: dict[str, Path], fmt: str, no_subprocess: None
) -> None:
    facts = verify_video(videos[fmt], output_format=fmt, expected_seconds=SECONDS)
    assert (facts.video_codec, facts.seconds) == ("h264", pytest.approx(SECONDS, abs=0.05))


@pytest.mark.parametrize("fmt", ["MP4", "MOV"])
def test_sandbox_stub_videos_verify_without_a_subprocess(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the sandbox serves with render="stub", the videos throughput runs download.
    stub = tmp_path / f"stub.{EXTENSIONS[fmt]}"
    asyncio.run(render_stub(SECONDS, fmt, stub, cache_dir=tmp_path / "stub-cache"))  # type: ignore[arg-type]
    facts = verified_without_ffmpeg(stub, monkeypatch, fmt, expected=SECONDS)
    assert facts == VideoFacts(fmt, "h264", pytest.approx(SECONDS, abs=0.001), stub.stat().st_size)


def test_a_fragmented_mp4_is_left_to_ffmpeg(clips: dict[str, Path], ffmpeg_runs: list[Any]) -> None:
    # Its moov declares no samples (empty_moov); only ffmpeg, reading the moofs, knows the length.
    facts = verify_video(clips[FRAGMENTED], output_format="MP4", expected_seconds=CLIP)
    assert len(ffmpeg_runs) == 1
    assert facts.video_codec == "h264"
    assert facts.seconds == pytest.approx(CLIP, abs=0.2)  # ffmpeg says 2.13: the last frame


def test_a_moov_too_big_to_read_at_once_is_left_to_ffmpeg(
    clips: dict[str, Path], ffmpeg_runs: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(iso_boxes, "MAX_MOOV_BYTES", 64)
    facts = verify_video(clips["h264.mov"], output_format="MOV", expected_seconds=CLIP)
    assert len(ffmpeg_runs) == 1
    assert (facts.video_codec, facts.seconds) == ("h264", pytest.approx(CLIP, abs=0.05))


def as_version_1(data: bytes, *, wide: bool) -> bytes:
    """The file with its mvhd rewritten as version 1 (64-bit times); `wide` scales timescale
    and duration up until the duration needs more than 32 bits. The moov must be the last
    box: it grows by 12 bytes."""
    moov_at, moov_length = top_level(data)[b"moov"]
    assert moov_at + moov_length == len(data)
    at = data.index(b"mvhd", moov_at) - 4
    (size,) = struct.unpack_from(">I", data, at)
    created, modified, timescale, duration = struct.unpack_from(">IIII", data, at + 12)
    scale = 0xFFFF_FFFF // timescale if wide else 1
    times = struct.pack(">QQIQ", created, modified, timescale * scale, duration * scale)
    mvhd = struct.pack(">I", size + 12) + b"mvhd\x01\0\0\0" + times + data[at + 28 : at + size]
    moov = struct.pack(">I", moov_length + 12) + data[moov_at + 4 : at] + mvhd
    return data[:moov_at] + moov + data[at + size :]


@pytest.mark.parametrize("wide", [False, True])
def test_a_version_1_mvhd_is_read(
    clips: dict[str, Path], wide: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patched = tmp_path / "v1.mp4"
    patched.write_bytes(as_version_1(clips["h264-moov-at-end.mp4"].read_bytes(), wide=wide))
    assert b"mvhd\x01" in patched.read_bytes()
    facts = verified_without_ffmpeg(patched, monkeypatch, expected=CLIP)
    assert (facts.video_codec, facts.seconds) == ("h264", pytest.approx(CLIP, abs=0.05))
    if not wide:  # the wide file's edit lists, in the movie's timescale, no longer add up
        assert facts.seconds == pytest.approx(ffmpeg_facts(patched)[1], abs=0.05)


def test_a_movie_without_a_duration_takes_its_video_tracks(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(clips["h264-faststart.mp4"].read_bytes())
    at = data.index(b"mvhd") - 4
    data[at + 24 : at + 28] = bytes(4)  # the version 0 duration
    patched = tmp_path / "zero.mp4"
    patched.write_bytes(data)
    facts = verified_without_ffmpeg(patched, monkeypatch, expected=CLIP)
    assert facts.seconds == pytest.approx(CLIP, abs=0.05)  # the video's mdhd


def test_a_truncated_moov_is_refused(clips: dict[str, Path], tmp_path: Path) -> None:
    # The moov's own size says it is half as long, so the top-level boxes still tile the file.
    data = clips["h264-faststart.mp4"].read_bytes()
    at, length = top_level(data)[b"moov"]
    half = length // 2
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(
        data[:at] + struct.pack(">I", half) + data[at + 4 : at + half] + data[at + length :]
    )
    message = rejected(cut, expected=CLIP)
    assert message.startswith("corrupt: box 'trak' runs past the end of 'moov' (")


def test_a_box_longer_than_its_parent_is_refused(clips: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(clips["h264-faststart.mp4"].read_bytes())
    at = data.index(b"mdhd") - 4
    data[at : at + 4] = struct.pack(">I", 0x7FFF_FFFF)
    patched = tmp_path / "long.mp4"
    patched.write_bytes(data)
    assert rejected(patched, expected=CLIP).startswith(
        "corrupt: box 'mdhd' runs past the end of 'mdia' ("
    )


# Hand-made boxes, for what ffmpeg never writes.


def box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, *parts: bytes) -> bytes:
    return box(kind, bytes([version, 0, 0, 0]), *parts)


def mvhd(timescale: int, duration: int, version: int = 0) -> bytes:
    layout = ">IIII" if version == 0 else ">QQIQ"
    return full_box(b"mvhd", version, struct.pack(layout, 0, 0, timescale, duration), bytes(80))


def track(
    handler: bytes = b"vide",
    fourcc: bytes = b"avc1",
    timescale: int = 12_800,
    duration: int = 0,
    entries: int = 1,
) -> bytes:
    stsd = full_box(b"stsd", 0, struct.pack(">I", entries), box(fourcc, bytes(78)) * entries)
    mdhd = full_box(b"mdhd", 0, struct.pack(">IIII", 0, 0, timescale, duration), bytes(4))
    hdlr = full_box(b"hdlr", 0, bytes(4), handler, bytes(12), b"VideoHandler\0")
    return box(b"trak", box(b"mdia", mdhd, hdlr, box(b"minf", box(b"stbl", stsd))))


def mp4_file(*moov: bytes) -> bytes:
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")
    return ftyp + box(b"moov", *moov) + box(b"mdat", bytes(8))


def test_a_hand_made_mp4_verifies_without_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = tmp_path / "made.mp4"
    made.write_bytes(mp4_file(mvhd(1000, 3000), track(b"soun", b"mp4a"), track()))
    facts = verified_without_ffmpeg(made, monkeypatch, expected=SECONDS)
    assert facts == VideoFacts("MP4", "h264", 3.0, made.stat().st_size)


@pytest.mark.parametrize(
    ("moov", "movie"),
    [
        ([mvhd(600, 1800), track(fourcc=b"hev1")], Movie("hevc", 3.0)),
        ([mvhd(600, 1800, version=1), track(fourcc=b"vp09")], Movie("vp9", 3.0)),
        ([mvhd(600, 1800), track(fourcc=b"apcn")], Movie("prores", 3.0)),
        # an unknown sample entry is named as written, like ffmpeg's "none (XyZ / 0x...)"
        ([mvhd(600, 1800), track(fourcc=b"XyZ ")], Movie("xyz", 3.0)),
        # no movie duration: the longest video track's, never the audio's
        (
            [
                mvhd(600, 0),
                track(duration=12_800),
                track(b"soun", b"mp4a", 8000, 80_000),
                track(fourcc=b"hvc1", duration=25_600),
            ],
            Movie("h264", 2.0),
        ),
        ([mvhd(600, 0xFFFF_FFFF), track(duration=38_400)], Movie("h264", 3.0)),  # "unknown"
        ([track(duration=38_400)], Movie("h264", 3.0)),  # no mvhd at all
        ([mvhd(600, 0), track()], Movie("h264", None)),  # nothing: ffmpeg decides
        ([mvhd(600, 1800), track(), box(b"mvex")], Movie("h264", None)),  # fragmented
        ([full_box(b"mvhd", 2, bytes(96)), track(duration=38_400)], Movie("h264", 3.0)),
        ([mvhd(0, 1800), track()], Movie("h264", None)),  # a timescale of 0 is no answer
        ([mvhd(600, 1800), track(), bytes(4)], Movie("h264", 3.0)),  # QuickTime's 0 terminator
    ],
)
def test_what_a_hand_made_moov_says(moov: list[bytes], movie: Movie) -> None:
    assert parse_moov(box(b"moov", *moov)) == movie


def test_box_sizes_0_and_1_are_understood() -> None:
    trak = track(duration=38_400)
    to_the_end = bytes(4) + trak[4:]  # size 0: the box runs to the end of its parent
    large = struct.pack(">I", 1) + b"trak" + struct.pack(">Q", len(trak) + 8) + trak[8:]
    assert parse_moov(box(b"moov", mvhd(600, 0), large, to_the_end)) == Movie("h264", 3.0)
    whole = box(b"moov", mvhd(600, 1800), track())
    assert parse_moov(
        struct.pack(">I", 1) + b"moov" + struct.pack(">Q", len(whole) + 8) + whole[8:]
    )


@pytest.mark.parametrize(
    ("moov", "message"),
    [
        (
            box(b"moov", mvhd(600, 1800), track(b"soun", b"mp4a")),
            "no video stream (no track has a 'vide' handler)",
        ),
        (box(b"moov"), "no video stream (no track has a 'vide' handler)"),
        (
            box(b"moov", struct.pack(">I", 3) + b"trak" + bytes(8)),
            "corrupt: box 'trak' in 'moov' has size 3",
        ),
        (
            box(b"moov", struct.pack(">I", 1) + b"trak" + bytes(4)),
            "corrupt: 'moov' ends inside the header of box 'trak'",
        ),
        (
            box(b"moov", struct.pack(">I", 1) + b"trak" + struct.pack(">Q", 1 << 40)),
            "corrupt: box 'trak' runs past the end of 'moov' (",
        ),
        (
            box(b"moov", struct.pack(">I", 20) + b"\x00\xffab" + bytes(4)),
            "corrupt: box '\\x00\\xffab' runs past the end of 'moov' (",
        ),
        (
            box(b"moov", full_box(b"mvhd", 0, bytes(8)), track()),
            "corrupt: the 'mvhd' box is too short (12 bytes)",
        ),
        (
            box(b"moov", box(b"trak", box(b"mdia", full_box(b"hdlr", 0, b"vi")))),
            "corrupt: the 'hdlr' box is too short (6 bytes)",
        ),
        (
            box(b"moov", box(b"trak", box(b"mdia", full_box(b"hdlr", 0, bytes(4), b"vide")))),
            "corrupt: the video track has no sample description ('stsd')",
        ),
        (
            box(b"moov", track(entries=0)),
            "corrupt: the video track's 'stsd' has no sample entry",
        ),
        (box(b"free", track()), "corrupt: expected a 'moov' box, found 'free'"),
    ],
)
def test_a_malformed_moov_says_what_is_wrong(moov: bytes, message: str) -> None:
    with pytest.raises(BoxError) as caught:
        parse_moov(moov)
    assert str(caught.value).startswith(message)


def test_a_moov_of_countless_tiny_boxes_is_refused(tmp_path: Path) -> None:
    crafted = tmp_path / "many.mp4"
    crafted.write_bytes(mp4_file(box(b"free") * (iso_boxes.MAX_MOOV_BOXES + 1), track()))
    assert rejected(crafted) == "corrupt: more than 100,000 boxes in 'moov'"


# Property tests: whatever the bytes, VideoCheckError (BoxError inside iso_boxes) or facts.

HOSTILE = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SIZES = st.sampled_from([0, 1, 2, 7, 8, 9, 16, 0x7FFF_FFFF, 0xFFFF_FFFF]) | st.integers(
    0, 2**32 - 1
)
EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), SIZES), max_size=6)
FLIPS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)


def mutated(data: bytes, edits: list[tuple[int, int]], flips: list[tuple[int, int]]) -> bytes:
    """`data` with 32-bit words (box sizes, mostly) and single bytes overwritten."""
    out = bytearray(data)
    for at, word in edits:
        at %= len(out) - 3
        out[at : at + 4] = word.to_bytes(4, "big")
    for at, value in flips:
        out[at % len(out)] = value
    return bytes(out)


@pytest.fixture(scope="module")
def real_moov(clips: dict[str, Path]) -> bytes:
    return moov_of(clips["h264-faststart.mp4"].read_bytes())


@HOSTILE
@given(edits=EDITS, flips=FLIPS, keep=st.integers(0, 1 << 20))
def test_a_mutated_moov_gives_facts_or_a_box_error(
    real_moov: bytes, edits: list[tuple[int, int]], flips: list[tuple[int, int]], keep: int
) -> None:
    data = mutated(real_moov, edits, flips)[: max(8, keep % (len(real_moov) + 1))]
    try:
        movie = parse_moov(data)
    except BoxError as exc:
        assert str(exc)
    else:
        assert isinstance(movie.video_codec, str)


@HOSTILE
@given(edits=EDITS, flips=FLIPS, tail=st.binary(max_size=64))
def test_a_mutated_mp4_header_gives_facts_or_a_check_error(
    clips: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edits: list[tuple[int, int]],
    flips: list[tuple[int, int]],
    tail: bytes,
) -> None:
    # The edits land in ftyp + moov (faststart: the first boxes); ffmpeg, when asked, says no.
    monkeypatch.setattr(verify, "_ffmpeg_says", lambda path: "")
    data = clips["h264-faststart.mp4"].read_bytes()
    at, length = top_level(data)[b"moov"]
    head = mutated(data[: at + length], edits, flips)
    target = tmp_path / "mutant.mp4"
    target.write_bytes(head + data[at + length :] + tail)
    try:
        verify_video(target, output_format="MP4", expected_seconds=None)
    except VideoCheckError as exc:
        assert str(exc)


@HOSTILE
@given(body=st.binary(max_size=4096))
def test_random_boxes_after_an_ftyp_give_facts_or_a_check_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    monkeypatch.setattr(verify, "_ffmpeg_says", lambda path: "")
    target = tmp_path / "random.mp4"
    target.write_bytes(mp4_file()[:32] + body)
    try:
        verify_video(target, output_format="MP4", expected_seconds=None)
    except VideoCheckError as exc:
        assert str(exc)
