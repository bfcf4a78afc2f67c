"""No manifest, however broken, ends in a traceback: each gets a located message and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from avatarbatch.manifest.document import read_manifest
from avatarbatch.manifest.preflight import preflight
from avatarbatch.manifest.problems import Problems
from avatarbatch.manifest.sources import MAX_CSV_BYTES, MAX_MANIFEST_BYTES
from conftest import as_unprivileged

Write = Callable[[str, str | bytes], Path]
runner = CliRunner()


def first_error(path: Path) -> str:
    problems = Problems()
    read_manifest(path, problems)
    assert problems.errors, "expected an error"
    return problems.errors[0].format()


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.yaml", "version: 1\njobs:\n  - id: a\n   portrait: x\n", "bad.yaml:4: invalid YAML:"),
        ("bad.yaml", "version: 1\njobs: [\n", "bad.yaml:3: invalid YAML:"),
        ("bad.yaml", "a: 1\n---\nb: 2\n", "bad.yaml:2: invalid YAML:"),
        (
            "bad.yaml",
            "- 1\n- 2\n",
            "bad.yaml:1: should be a mapping with version, defaults and jobs",
        ),
        ("bad.yaml", "just text\n", "bad.yaml:1: should be a mapping"),
        ("bad.yaml", "", "bad.yaml: is empty"),
        ("bad.yaml", "   \n\n", "bad.yaml: is empty"),
        ("bad.yaml", "# only a comment\n", "bad.yaml: is empty (no YAML document)"),
        (
            "bad.yaml",
            b"version: 1\nprompt: caf\xe9\n",
            "bad.yaml:2: is not valid UTF-8 (byte 0xe9)",
        ),
        ("bad.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "bad.yaml: is a binary file"),
        ("bad.yaml", bytes(range(256)) * 4, "bad.yaml: is a binary file"),
        (
            "bad.yaml",
            "version: 1\njobs: {a: 1}\n",
            "bad.yaml:2: jobs: should be a list of mappings",
        ),
        (
            "bad.yaml",
            "version: 1\njobs:\n  - 42\n",
            "bad.yaml:3: row 1: should be a mapping of job fields",
        ),
        ("bad.yaml", "version: 1\n? [a, b]\n: 1\n", "bad.yaml:2: a key must be a plain name"),
        (
            "bad.yaml",
            "version: 1\njobs: !!python/object:os.system {}\n",
            "bad.yaml:2: unsupported YAML tag",
        ),
        ("bad.yaml", "[" * 5000 + "]" * 5000, "bad.yaml"),
        ("bad.csv", "", "bad.csv: is empty"),
        ("bad.csv", 'id,portrait,audio\n"a,b\n', "bad.csv"),
        (
            "bad.csv",
            "id,portrait,audio\na,b,c,d\n",
            "bad.csv:2: row has 4 cells but the header has 3",
        ),
        ("bad.csv", "id,,audio\n", "bad.csv:1: header column 2 has no name"),
        ("bad.csv", "id,id\n", "bad.csv:1: header repeats column: id"),
        ("bad.csv", "# nothing but a comment\n", "bad.csv: has no header row"),
        ("bad.csv", b"id,prompt\na,caf\xe9\n", "bad.csv:2: is not valid UTF-8"),
    ],
)
def test_broken_manifests_give_one_located_error(
    write: Write, name: str, content: str | bytes, expected: str
) -> None:
    assert first_error(write(name, content)).startswith(expected)


def test_utf16_export_is_read(write: Write, media: Path) -> None:
    text = "id,portrait,audio\na,media/face.png,media/en.wav\n"
    problems = Problems()
    manifest = read_manifest(
        write("m.csv", "\ufeff".encode("utf-16-le") + text.encode("utf-16-le")), problems
    )
    assert manifest is not None and manifest.jobs[0].id == "a"


def test_yaml_bomb_stays_small(write: Write) -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    assert first_error(write("bomb.yaml", "\n".join(lines) + "\n")) == (
        "bomb.yaml:2: unknown top-level key 'a0'"
    )


def test_yaml_bomb_in_a_matrix_is_refused(write: Write) -> None:
    lines = ["version: 1", "matrix:", "  portrait: p.png", "  audio: a.wav", "  vars:"]
    lines += ["    a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"    v{i}: *a" for i in range(8)]
    assert "matrix expands to 1,000,000,000 jobs" in first_error(
        write("bomb.yaml", "\n".join(lines) + "\n")
    )


@pytest.mark.parametrize("kind", ["directory", "missing", "fifo", "device", "dangling"])
def test_manifest_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "dangling":
        path.symlink_to(tmp_path / "nowhere.yaml")
    message = first_error(path)
    assert message.startswith("m.yaml: ")
    assert any(word in message for word in ("directory", "does not exist", "not a regular file"))


def test_symlink_to_a_system_file_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.symlink_to("/etc/passwd")
    message = first_error(path)
    assert "root:" not in message


def test_huge_manifest_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: costs no disk
    assert "the limit is 64 MB" in first_error(path)
    path = tmp_path / "huge.csv"  # a CSV of a million rows may be larger
    with path.open("wb") as handle:
        handle.truncate(MAX_CSV_BYTES + 1)
    assert "the limit is 256 MB" in first_error(path)


def test_unreadable_manifest(write: Write) -> None:
    path = write("m.yaml", "version: 1\n")
    path.chmod(0)
    message = as_unprivileged(lambda: first_error(path))
    assert message.startswith("m.yaml: cannot be read (Permission denied)"), message


def test_unreadable_media_file(readable_batch: Path) -> None:
    path = readable_batch / "m.yaml"
    # The child cannot read the interpreter's lazily imported modules: load them all first.
    assert preflight(path).ok
    (readable_batch / "en.wav").chmod(0)
    message = as_unprivileged(lambda: preflight(path).problems.errors[0].message)
    assert message == "en.wav cannot be read (Permission denied)", message


def test_rows_csv_problems_name_the_csv_file(write: Write) -> None:
    write("rows.csv", 'id,portrait\n"unterminated\n')
    message = first_error(write("m.yaml", "version: 1\nrows: rows.csv\n"))
    assert message.startswith("rows.csv")


def test_rows_pointing_at_a_missing_csv(write: Write) -> None:
    # Located where the CSV is named: that is the line to fix.
    assert (
        first_error(write("m.yaml", "version: 1\nrows: nope.csv\n"))
        == "m.yaml:2: rows: nope.csv does not exist"
    )


@pytest.mark.parametrize(
    "content",
    [
        "version: 1\njobs:\n  - id: a\n   bad: indent\n",
        "",
        b"\x00\x01\x02",
        "[[[[",
        "version: 1\nrows: 5\n",
    ],
)
def test_cli_never_shows_a_traceback(write: Write, content: str | bytes) -> None:
    path = write("m.yaml", content)
    for command in ("validate", "plan"):
        result = runner.invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output


def test_real_process_prints_a_located_error_and_exits_2(write: Write) -> None:
    path = write("m.yaml", "version: 1\njobs: [\n")
    done = subprocess.run(
        [sys.executable, "-m", "avatarbatch", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert "m.yaml:3: invalid YAML" in done.stdout
