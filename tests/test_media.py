"""Probing local media: decoded for real, checked at each of Kling's limits."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zlib
from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image

from avatarbatch.manifest.media import (
    MediaKind,
    MediaRefError,
    ProbeError,
    Prober,
    parse_ref,
    probe_audio,
    probe_image,
    read_limited,
)
from conftest import DEMO, image_bytes, wav_bytes


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ((300, 300), True),
        ((299, 512), False),
        ((512, 299), False),
        ((750, 300), True),
        ((751, 300), False),
        ((300, 751), False),
    ],
)
def test_image_sides_and_aspect_ratio(size: tuple[int, int], ok: bool) -> None:
    data = image_bytes(*size)
    if ok:
        info = probe_image(data)
        assert (info.width, info.height, info.format) == (*size, "PNG")
    else:
        with pytest.raises(ProbeError, match="px"):
            probe_image(data)


def test_jpeg_is_accepted_and_gif_and_webp_are_not() -> None:
    assert probe_image(image_bytes(400, 400, "JPEG")).format == "JPEG"
    for fmt in ("GIF", "WEBP", "BMP"):
        with pytest.raises(ProbeError, match=f"is a {fmt} image; the API takes only JPEG or PNG"):
            probe_image(image_bytes(400, 400, fmt))


def test_text_named_png_is_not_an_image() -> None:
    with pytest.raises(ProbeError, match="is not a readable JPEG or PNG image"):
        probe_image(b"hello, I am a text file pretending to be a PNG\n" * 10)


def test_truncated_png_is_caught_by_decoding() -> None:
    noisy = Image.frombytes("RGB", (600, 600), os.urandom(600 * 600 * 3))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    data = buffer.getvalue()
    with pytest.raises(ProbeError, match="is not a readable JPEG or PNG image"):
        probe_image(data[: len(data) // 2])


def test_image_over_ten_megabytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(image_bytes() + b"\0" * 10_000_000)
    with pytest.raises(ProbeError, match=r"is 10\.0 MB; the limit is 10 MB"):
        read_limited(path, 10_000_000)


def test_decompression_bomb_is_refused() -> None:
    # A tiny file whose header claims 30000 x 30000 pixels.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = (
        struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    with pytest.raises(ProbeError, match="is not a readable JPEG or PNG image"):
        probe_image(b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 100)


@pytest.mark.parametrize(
    ("seconds", "ok"), [(1.9, False), (2.0, True), (300.0, True), (301.0, False)]
)
def test_audio_length_limits(seconds: float, ok: bool) -> None:
    data = wav_bytes(seconds, rate=4000)
    if ok:
        info = probe_audio(data)
        assert info.format == "WAV" and info.seconds == pytest.approx(seconds)
    else:
        with pytest.raises(ProbeError, match="audio must be 2 to 300 seconds"):
            probe_audio(data)


def test_audio_over_five_megabytes_is_refused() -> None:
    with pytest.raises(ProbeError, match=r"is 6\.0 MB; the limit is 5 MB"):
        probe_audio(b"\0" * 6_000_000)


def test_demo_mp3_is_measured() -> None:
    info = probe_audio((DEMO / "media/voices/en.mp3").read_bytes())
    assert info.format == "MP3" and 5.0 < (info.seconds or 0) < 6.0


def test_mp3_header_on_garbage_is_not_audio() -> None:
    header = (DEMO / "media/voices/en.mp3").read_bytes()[:4]
    garbage = header + bytes(range(256)) * 200
    with pytest.raises(ProbeError, match="is not a readable MP3, WAV, M4A or AAC file"):
        probe_audio(garbage)


def test_random_bytes_are_not_audio() -> None:
    with pytest.raises(ProbeError, match="is not a readable"):
        probe_audio(os.urandom(50_000))


def test_m4a_and_adts_aac_are_accepted(tmp_path: Path) -> None:
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    source = DEMO / "media/voices/en.mp3"
    for suffix, expected in ((".m4a", "M4A"), (".aac", "AAC")):
        target = tmp_path / f"clip{suffix}"
        subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(source), "-c:a", "aac", "-b:a", "48k", str(target)],
            check=True,
        )
        info = probe_audio(target.read_bytes())
        assert info.format == expected and 5.0 < (info.seconds or 0) < 6.5


def test_mp4_without_audio_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "video.mp4"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=64x64:d=3",
            "-pix_fmt",
            "yuv420p",
            str(target),
        ],
        check=True,
    )
    with pytest.raises(ProbeError):
        probe_audio(target.read_bytes())


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", r"is empty \(0 bytes\)"),
        ("dir", "is a directory"),
        ("fifo", "is not a regular file"),
        ("missing", "does not exist"),
        ("dangling", "does not exist"),
    ],
)
def test_files_that_are_not_files(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "thing"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ProbeError, match=message):
        read_limited(path, 1000)


def test_symlink_to_a_system_file_is_probed_as_what_it_is(tmp_path: Path) -> None:
    link = tmp_path / "face.png"
    link.symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    prober = Prober()
    with pytest.raises(ProbeError, match="is not a readable JPEG or PNG image"):
        prober.probe(parse_ref(str(link), "portrait", tmp_path), "portrait")


def test_prober_reads_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(wav_bytes(3))
    (tmp_path / "bad.png").write_bytes(b"nope")
    prober = Prober()
    for _ in range(50):
        prober.probe(parse_ref("a.wav", "audio", tmp_path), "audio")
        with pytest.raises(ProbeError):
            prober.probe(parse_ref("bad.png", "portrait", tmp_path), "portrait")
    assert prober.reads == 2


@pytest.mark.parametrize(
    ("text", "role", "kind"),
    [
        ("face.png", "portrait", MediaKind.PATH),
        ("https://example.org/face.png", "portrait", MediaKind.URL),
        ("HTTP://example.org/a.mp3", "audio", MediaKind.URL),
        ("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "audio", MediaKind.UUID),
        ("data:image/png;base64,iVBORw0KGgo=", "portrait", MediaKind.DATA_URI),
        ("A" * 200, "portrait", MediaKind.BASE64),
        ("A" * 200, "audio", MediaKind.PATH),
    ],
)
def test_references_are_classified(tmp_path: Path, text: str, role: str, kind: MediaKind) -> None:
    assert parse_ref(text, role, tmp_path).kind is kind


def test_inline_portrait_is_decoded_and_checked(tmp_path: Path) -> None:
    import base64

    small = base64.b64encode(image_bytes(200, 200)).decode()
    good = "data:image/png;base64," + base64.b64encode(image_bytes(400, 400)).decode()
    prober = Prober()
    assert prober.probe(parse_ref(good, "portrait", tmp_path), "portrait").width == 400
    with pytest.raises(ProbeError, match="200x200 px"):
        prober.probe(parse_ref(small, "portrait", tmp_path), "portrait")


def test_malformed_data_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MediaRefError, match="not a valid data URI"):
        parse_ref("data:image/png,abc", "portrait", tmp_path)
