"""Preflight: manifest and media checked together, each distinct file probed once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from avatarbatch.manifest.media import Prober
from avatarbatch.manifest.preflight import preflight
from conftest import image_bytes, wav_bytes

Write = Callable[[str, str | bytes], Path]


def test_valid_manifest_passes_with_media_measured(write: Write, media: Path) -> None:
    path = write(
        "m.yaml", "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/es.wav}\n"
    )
    result = preflight(path)
    assert result.ok and not result.problems
    assert result.media[str(media / "es.wav")].seconds == 4.0
    assert result.media[str(media / "face.png")].width == 512


def test_each_distinct_file_is_probed_once_however_many_rows_use_it(
    write: Write, media: Path
) -> None:
    rows = "".join(f"j{i},media/face.png,media/{'en' if i % 2 else 'es'}.wav\n" for i in range(500))
    prober = Prober()
    result = preflight(write("m.csv", "id,portrait,audio\n" + rows), prober)
    assert result.ok
    assert prober.reads == 3


def test_a_bad_shared_file_is_reported_once_with_a_count(write: Write, media: Path) -> None:
    write("media/small.png", image_bytes(299, 400))
    rows = "".join(f"j{i},media/small.png,media/en.wav\n" for i in range(40))
    result = preflight(write("m.csv", "id,portrait,audio\n" + rows))
    assert [p.format() for p in result.problems.items] == [
        "m.csv:2: job j0: portrait: media/small.png is 299x400 px; each side must be at least "
        "300 px (also used by 39 other jobs)"
    ]


def test_media_and_field_errors_are_reported_together(write: Write, media: Path) -> None:
    write("media/long.wav", wav_bytes(301, rate=2000))
    path = write(
        "m.yaml",
        "version: 1\njobs:\n"
        "  - {id: a, portrait: media/face.png, audio: media/long.wav}\n"
        "  - {id: b, portrait: media/missing.png, audio: media/en.wav}\n"
        "  - {id: c, portrait: media/face.png, audio: media/en.wav, ttl: 5}\n",
    )
    assert [p.format() for p in preflight(path).problems.errors] == [
        "m.yaml:5: job c: ttl: should be at least 60 (got 5)",
        "m.yaml:3: job a: audio: media/long.wav is 301.00 s long; audio must be 2 to 300 seconds",
        "m.yaml:4: job b: portrait: media/missing.png does not exist",
    ]


def test_content_that_disagrees_with_the_extension_is_a_warning(write: Write, media: Path) -> None:
    write("media/face.jpg", image_bytes(400, 400, "PNG"))
    path = write(
        "m.yaml", "version: 1\njobs:\n  - {id: a, portrait: media/face.jpg, audio: media/en.wav}\n"
    )
    result = preflight(path)
    assert result.ok
    assert [p.format() for p in result.problems.warnings] == [
        "m.yaml:3: warning: job a: portrait: media/face.jpg is PNG inside, despite its .jpg extension"
    ]


def test_oversized_portrait_warns_that_runware_scales_it(write: Write, media: Path) -> None:
    write("media/big.png", image_bytes(2400, 1200))
    path = write(
        "m.yaml", "version: 1\njobs:\n  - {id: a, portrait: media/big.png, audio: media/en.wav}\n"
    )
    (warning,) = preflight(path).problems.warnings
    assert "at most 2048 px on the long side" in warning.message


def test_remote_audio_warns_that_cost_is_unknown(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: 'https://cdn.example.org/a.mp3'}\n",
    )
    result = preflight(path)
    assert result.ok
    assert "1 job uses remote or stored audio" in result.problems.warnings[0].message


def test_unreadable_manifest_gives_no_manifest(write: Write) -> None:
    result = preflight(write("m.yaml", "version: 1\njobs: ["))
    assert result.manifest is None and not result.ok
