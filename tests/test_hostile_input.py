"""Hostile input through the real command line: a located message, exit 2, nothing written."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from conftest import DEMO, image_bytes, wav_bytes

runner = CliRunner()
MP3 = (DEMO / "media/voices/en.mp3").read_bytes()


def truncated_png() -> bytes:
    noisy = Image.frombytes("RGB", (500, 500), os.urandom(500 * 500 * 3))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    return buffer.getvalue()[:20000]


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def symlink_to_system_file(path: Path) -> None:
    path.symlink_to("/etc/passwd")


LYING_PORTRAITS: dict[str, Callable[[Path], None] | bytes] = {
    "text named png": b"I am text\n" * 50,
    "truncated png": truncated_png(),
    "zero bytes": b"",
    "299 px": image_bytes(299, 600),
    "1:3 aspect": image_bytes(300, 900),
    "gif": image_bytes(400, 400, "GIF"),
    "fifo": make_fifo,
    "symlink to /etc/passwd": symlink_to_system_file,
}
LYING_AUDIO: dict[str, Callable[[Path], None] | bytes] = {
    "mp3 header on garbage": MP3[:4] + bytes(range(256)) * 100,
    "zero bytes": b"",
    "6 MB": b"ID3" + b"\0" * 6_000_000,
    "301 seconds": wav_bytes(301, rate=2000),
    "1.9 seconds": wav_bytes(1.9),
    "fifo": make_fifo,
}


def place(path: Path, content: Callable[[Path], None] | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)


def assert_refused(manifest: Path, tmp_path: Path, field: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    for command in (["validate", str(manifest)], ["run", str(manifest), "--sandbox"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output
        assert f"m.yaml:3: job a: {field}:" in result.output, result.output
    assert sorted(tmp_path.rglob("*")) == before  # not even an output folder


@pytest.mark.parametrize("case", LYING_PORTRAITS)
def test_lying_portraits_are_refused_before_anything_runs(
    media: Path, tmp_path: Path, case: str
) -> None:
    place(media / "bad.png", LYING_PORTRAITS[case])
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/bad.png, audio: media/en.wav}\n"
    )
    assert_refused(manifest, tmp_path, "portrait")


@pytest.mark.parametrize("case", LYING_AUDIO)
def test_lying_audio_is_refused_before_anything_runs(
    media: Path, tmp_path: Path, case: str
) -> None:
    place(media / "bad.mp3", LYING_AUDIO[case])
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/bad.mp3}\n"
    )
    assert_refused(manifest, tmp_path, "audio")


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ("{id: '../x', portrait: media/face.png, audio: media/en.wav}", "id"),
        ("{id: '/etc/x', portrait: media/face.png, audio: media/en.wav}", "id"),
        ("{id: '{d}x', portrait: media/face.png, audio: media/en.wav, vars: {d: '../'}}", "id"),
    ],
)
def test_ids_that_try_to_leave_the_output_folder(
    media: Path, tmp_path: Path, job: str, field: str
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"version: 1\njobs:\n  - {job}\n")
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["run", str(manifest), "--sandbox"])
    assert result.exit_code == 2 and "m.yaml:3: row 1: id:" in result.output, result.output
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("template", ["../{id}.{ext}", "/tmp/{id}.{ext}", "{lang}/{id}.{ext}"])
def test_filename_templates_that_try_to_leave_the_videos_folder(
    media: Path, tmp_path: Path, template: str
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"version: 1\noutput: {{filename: '{template}'}}\n"
        "jobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav, vars: {lang: '..'}}\n"
    )
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["run", str(manifest), "--sandbox"])
    assert result.exit_code == 2 and "output.filename" in result.output, result.output
    assert "m.yaml:2:" in result.output
    assert sorted(tmp_path.rglob("*")) == before
