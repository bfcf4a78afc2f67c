"""Issue 13: located messages that said the wrong thing, or too late, or twice.

Each case runs `avatarbatch validate` as a user would and compares the whole output, so a
message that regains a doubled "(got ...)" or loses its line fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from avatarbatch.manifest.preflight import preflight
from conftest import image_bytes

Write = Callable[[str, str | bytes], Path]
runner = CliRunner()
JOB = "portrait: media/face.png, audio: media/en.wav"


def validate(path: Path) -> list[str]:
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.output.splitlines()


# --- 1. a CSV written with another delimiter ------------------------------------------------------


@pytest.mark.parametrize(
    ("separator", "named"), [("|", "not '|'"), (" ", "not spaces"), (":", "not ':'")]
)
def test_csv_with_another_delimiter_is_refused_at_its_header(
    write: Write, media: Path, separator: str, named: str
) -> None:
    header = separator.join(("id", "portrait", "audio"))
    row = separator.join(("a", "media/face.png", "media/en.wav"))
    path = write("m.csv", f"{header}\n{row}\n")
    assert validate(path) == [
        f"m.csv:1: header has one column, {header!r}; separate columns with a comma, "
        f"semicolon or tab, {named}",
        "m.csv: invalid (1 error, 0 warnings)",
    ]


def test_rows_csv_with_another_delimiter_is_refused_at_its_header(
    write: Write, media: Path
) -> None:
    write("rows.csv", "# exported\nid|portrait|audio\na|media/face.png|media/en.wav\n")
    path = write("m.yaml", "version: 1\nrows: rows.csv\n")
    assert validate(path) == [
        "rows.csv:2: header has one column, 'id|portrait|audio'; separate columns with a "
        "comma, semicolon or tab, not '|'",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]


def test_one_unknown_column_without_a_delimiter_in_sight(write: Write, media: Path) -> None:
    path = write("m.csv", "idportraitaudio\nx\n")
    assert validate(path) == [
        "m.csv:1: header has one column, 'idportraitaudio'; separate columns with a comma, "
        "semicolon or tab",
        "m.csv: invalid (1 error, 0 warnings)",
    ]


def test_one_column_csv_of_a_real_field_is_still_read(write: Write, media: Path) -> None:
    # Defaults give the portrait, the CSV only the audio: one column, and nothing wrong.
    write("rows.csv", "audio\nmedia/en.wav\nmedia/es.wav\n")
    path = write("m.yaml", "version: 1\ndefaults:\n  portrait: media/face.png\nrows: rows.csv\n")
    assert validate(path)[-1] == "m.yaml: valid, 2 jobs (0 errors, 0 warnings)"


def test_one_column_csv_of_a_declared_var_is_still_read(write: Write, media: Path) -> None:
    write("rows.csv", "region\nemea\napac\n")
    path = write(
        "m.yaml",
        "version: 1\ndefaults:\n  portrait: media/face.png\n  audio: media/en.wav\n"
        "  id: 'host-{region}'\nrows:\n  path: rows.csv\n  vars: [region]\n",
    )
    assert validate(path)[-1] == "m.yaml: valid, 2 jobs (0 errors, 0 warnings)"


def test_a_two_column_csv_with_one_odd_name_still_gets_a_suggestion(
    write: Write, media: Path
) -> None:
    path = write("m.csv", "id,portrait,audio,promt\na,media/face.png,media/en.wav,x\n")
    assert validate(path) == [
        "m.csv:1: unknown column 'promt' (did you mean 'prompt'?); name extra columns "
        "vars.promt to carry them into the reports",
        "m.csv: invalid (1 error, 0 warnings)",
    ]


# --- 2. a duplicate id in the same pass as the row's other errors ---------------------------------


def test_duplicate_id_is_reported_with_the_other_errors_of_its_row(
    write: Write, media: Path
) -> None:
    path = write(
        "m.yaml",
        f"version: 1\njobs:\n  - {{id: a, {JOB}}}\n  - {{id: a, {JOB}, model: kling-9}}\n",
    )
    assert validate(path) == [
        "m.yaml:4: job a: model: unknown model 'kling-9'; choose standard "
        "(klingai:avatar@2.0-standard), pro (klingai:avatar@2.0-pro)",
        "m.yaml:4: job a: id: duplicate id (also m.yaml:3); ids must be unique",
        "m.yaml: invalid (2 errors, 0 warnings)",
    ]


def test_a_row_with_errors_still_claims_its_id(write: Write, media: Path) -> None:
    path = write(
        "m.csv",
        "id,portrait,audio,ttl\na,media/face.png,media/en.wav,5\na,media/face.png,media/es.wav,\n",
    )
    assert validate(path) == [
        "m.csv:2: job a: ttl: should be at least 60 (got '5')",
        "m.csv:3: job a: id: duplicate id (also m.csv:2); ids must be unique",
        "m.csv: invalid (2 errors, 0 warnings)",
    ]


def test_a_duplicate_id_beside_a_template_error_is_reported(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        f"version: 1\njobs:\n  - {{id: a, {JOB}}}\n  - {{id: a, {JOB}, prompt: 'hi {{who}}'}}\n",
    )
    assert validate(path) == [
        "m.yaml:4: job a: prompt: unknown placeholder {who} (known here: id, index)",
        "m.yaml:4: job a: id: duplicate id (also m.yaml:3); ids must be unique",
        "m.yaml: invalid (2 errors, 0 warnings)",
    ]


# --- 3. one "(got ...)" per message ---------------------------------------------------------------


def test_too_long_prompt_says_what_it_got_once(write: Write, media: Path) -> None:
    path = write("m.yaml", f"version: 1\njobs:\n  - {{id: a, {JOB}, prompt: '{'very ' * 600}'}}\n")
    assert validate(path) == [
        "m.yaml:3: job a: prompt: should be at most 2500 characters (got 3000)",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]


def test_too_long_prompt_after_templating_says_so(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        f"version: 1\njobs:\n  - {{id: a, {JOB}, vars: {{w: very}}, prompt: '{'{w} ' * 600}'}}\n",
    )
    assert validate(path) == [
        "m.yaml:3: job a: prompt: should be at most 2500 characters (got 3000), counted after "
        "templating",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("id: '" + "x" * 121 + "'", "row 1: id: should be at most 120 characters (got 121)"),
        ("prompt: ''", "job a: prompt: should not be empty"),
        ("ttl: 5", "job a: ttl: should be at least 60 (got 5)"),
        ("output_quality: 100", "job a: output_quality: should be at most 99 (got 100)"),
        ("number_results: 9", "job a: number_results: should be at most 4 (got 9)"),
        ("number_results: true", "job a: number_results: should be a whole number, not true/false"),
        ("ttl: soon", "job a: ttl: should be a whole number (got 'soon')"),
        ("include_cost: maybe", "job a: include_cost: should be true or false (got 'maybe')"),
        (
            "output_format: gif",
            "job a: output_format: should be 'MP4', 'WEBM' or 'MOV' (got 'GIF')",
        ),
        ("webhook_url: ftp://x.org/a", "job a: webhook_url: 'ftp://x.org/a' is not an http(s) URL"),
    ],
)
def test_range_and_type_messages_say_got_at_most_once(
    write: Write, media: Path, field: str, message: str
) -> None:
    job = f"{{id: a, {JOB}, {field}}}" if not field.startswith("id:") else f"{{{field}, {JOB}}}"
    output = validate(write("m.yaml", f"version: 1\njobs:\n  - {job}\n"))
    assert output == [f"m.yaml:3: {message}", "m.yaml: invalid (1 error, 0 warnings)"]
    assert output[0].count("(got ") <= 1


# --- 4. one job, two jobs -------------------------------------------------------------------------


@pytest.mark.parametrize(("sharing", "others"), [(2, "1 other job"), (3, "2 other jobs")])
def test_a_shared_bad_file_counts_the_other_jobs_in_good_english(
    write: Write, media: Path, sharing: int, others: str
) -> None:
    write("media/small.png", image_bytes(299, 400))
    rows = "".join(f"j{i},media/small.png,media/en.wav\n" for i in range(sharing))
    result = preflight(write("m.csv", "id,portrait,audio\n" + rows))
    assert [p.format() for p in result.problems.items] == [
        "m.csv:2: job j0: portrait: media/small.png is 299x400 px; each side must be at least "
        f"300 px (also used by {others})"
    ]


@pytest.mark.parametrize(
    ("count", "said", "summary"),
    [(1, "1 job uses", "valid, 1 job"), (2, "2 jobs use", "valid, 2 jobs")],
)
def test_remote_audio_warning_counts_jobs_in_good_english(
    write: Write, media: Path, count: int, said: str, summary: str
) -> None:
    rows = "".join(
        f"  - {{id: j{i}, portrait: media/face.png, audio: 'https://cdn.example.org/a.mp3'}}\n"
        for i in range(count)
    )
    assert validate(write("m.yaml", "version: 1\njobs:\n" + rows)) == [
        f"m.yaml:3: warning: job j0: audio: {said} remote or stored audio: its length, and so "
        "the cost, is unknown until the video is rendered",
        f"m.yaml: {summary} (0 errors, 1 warning)",
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("id,id", "header repeats column: id"),
        ("id,audio,id,audio", "header repeats columns: audio, id"),
    ],
)
def test_repeated_header_columns_in_good_english(write: Write, header: str, message: str) -> None:
    assert validate(write("m.csv", header + "\n")) == [
        f"m.csv:1: {message}",
        "m.csv: invalid (1 error, 0 warnings)",
    ]


def test_a_row_wider_than_a_one_column_header(write: Write, media: Path) -> None:
    write("rows.csv", "audio\nmedia/en.wav,extra\n")
    yaml = write("m.yaml", "version: 1\ndefaults: {portrait: media/face.png}\nrows: rows.csv\n")
    assert validate(yaml) == [
        "rows.csv:2: row has 2 cells but the header has 1 column",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]


# --- 5. a missing rows: CSV, located where it is named ------------------------------------------


def test_missing_rows_csv_is_located_at_the_rows_key(write: Write) -> None:
    path = write("m.yaml", "version: 1\n\nrows: data/nope.csv\n")
    assert validate(path) == [
        "m.yaml:3: rows: data/nope.csv does not exist",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]


def test_missing_rows_csv_is_located_at_its_path_key(write: Write) -> None:
    path = write("m.yaml", "version: 1\nrows:\n  vars: [region]\n  path: nope.csv\n")
    assert validate(path) == [
        "m.yaml:4: rows.path: nope.csv does not exist",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]


def test_rows_naming_a_folder_is_located_at_the_rows_key(write: Write, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = write("m.yaml", "version: 1\nrows: data\n")
    assert validate(path) == [
        "m.yaml:2: rows: data is a directory, not a file",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]
