"""The manifest language: YAML, CSV, defaults, matrix, templates, fields and their limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from avatarbatch.errors import ManifestError
from avatarbatch.manifest.document import Job, Manifest, load_manifest, read_manifest
from avatarbatch.manifest.media import MediaKind
from avatarbatch.manifest.problems import Problems

Write = Callable[[str, str | bytes], Path]


def errors_of(path: Path) -> list[str]:
    problems = Problems()
    read_manifest(path, problems)
    return [p.format() for p in problems.errors]


def only_error(path: Path) -> str:
    errors = errors_of(path)
    assert len(errors) == 1, errors
    return errors[0]


def yaml_job(write: Write, media: Path, extra: str = "", name: str = "m.yaml") -> Path:
    """A one-job YAML manifest next to the media folder, with `extra` lines in the job."""
    body = "\n".join(f"    {line}" for line in extra.strip().splitlines())
    return write(
        name,
        "version: 1\njobs:\n  - id: a\n    portrait: media/face.png\n    audio: media/en.wav\n"
        + (body + "\n" if body else ""),
    )


def comparable(job: Job) -> Job:
    return replace(job, origin=replace(job.origin, line=0, file=Path("x")))


# --- reading the two forms ----------------------------------------------------------------------


def test_yaml_and_csv_manifests_give_identical_jobs(write: Write, media: Path) -> None:
    yaml_path = write(
        "jobs.yaml",
        """
version: 1
defaults:
  portrait: media/face.png
  model: pro
jobs:
  - id: one
    audio: media/en.wav
    prompt: calm presenter
    outputFormat: webm
    vars: {lang: en}
  - id: two
    audio: media/es.wav
    number_results: 2
    safety: {check_content: true, mode: FULL}
    vars: {lang: es}
""",
    )
    csv_path = write(
        "jobs.csv",
        "id,portrait,audio,model,positivePrompt,output_format,numberResults,"
        "safety.checkContent,safety.mode,vars.lang\n"
        "one,media/face.png,media/en.wav,pro,calm presenter,WEBM,,,,en\n"
        "two,media/face.png,media/es.wav,klingai:avatar@2.0-pro,,mp4,2,yes,full,es\n",
    )
    from_yaml = load_manifest(yaml_path).jobs
    from_csv = load_manifest(csv_path).jobs
    assert [comparable(j) for j in from_yaml] == [comparable(j) for j in from_csv]
    assert from_yaml[1].safety is not None and from_yaml[1].safety.mode == "full"
    assert from_yaml[1].outputs == ("two-1.mp4", "two-2.mp4")


def test_yaml_can_point_at_a_csv_whose_paths_resolve_from_the_csv(
    write: Write, media: Path
) -> None:
    write("data/a.wav", (media / "en.wav").read_bytes())
    write("data/rows.csv", "id,audio,lang\nx,a.wav,fr\n")
    manifest = load_manifest(
        write(
            "m.yaml",
            "version: 1\ndefaults:\n  portrait: media/face.png\n  vars: {lang: en}\n"
            "rows: data/rows.csv\n",
        )
    )
    (job,) = manifest.jobs
    assert job.audio.value == str(media.parent / "data" / "a.wav")
    assert job.portrait.value == str(media / "face.png")
    assert job.vars == {"lang": "fr"}  # `lang` is a var column because defaults declare it


def test_rows_mapping_declares_var_columns(write: Write, media: Path) -> None:
    write("rows.csv", "portrait,audio,region\nmedia/face.png,media/en.wav,emea\n")
    manifest = load_manifest(
        write("m.yaml", "version: 1\nrows:\n  path: rows.csv\n  vars: [region]\n")
    )
    assert manifest.jobs[0].vars == {"region": "emea"}


def test_semicolon_csv_from_a_spreadsheet_is_read(write: Write, media: Path) -> None:
    manifest = load_manifest(write("m.csv", "id;portrait;audio\na;media/face.png;media/en.wav\n"))
    assert manifest.jobs[0].id == "a"


def test_csv_comments_and_blank_lines_are_skipped_and_lines_are_counted(
    write: Write, media: Path
) -> None:
    path = write(
        "m.csv",
        "# a comment\nid,portrait,audio,output_quality\n\n"
        "a,media/face.png,media/en.wav,\nb,media/face.png,media/en.wav,100\n",
    )
    assert only_error(path) == "m.csv:5: job b: output_quality: should be at most 99 (got '100')"


def test_csv_unknown_column_is_reported_once_at_the_header(write: Write, media: Path) -> None:
    path = write(
        "m.csv",
        "id,portrait,audio,promt\na,media/face.png,media/en.wav,x\nb,media/face.png,media/en.wav,y\n",
    )
    message = only_error(path)
    assert message.startswith("m.csv:1: unknown column 'promt' (did you mean 'prompt'?)")


def test_paths_are_relative_to_the_manifest_not_the_working_directory(
    write: Write, media: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = yaml_job(write, media)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = load_manifest(path).jobs[0]
    assert job.portrait.kind is MediaKind.PATH
    assert Path(job.portrait.value) == media / "face.png"


def test_output_dir_resolves_from_the_manifest(write: Write, media: Path, tmp_path: Path) -> None:
    path = write(
        "sub/m.yaml",
        "version: 1\noutput: {dir: ../out/x, filename: '{lang}/{id}.{ext}'}\n"
        "jobs:\n  - {portrait: ../media/face.png, audio: ../media/en.wav, vars: {lang: es}}\n",
    )
    manifest: Manifest = load_manifest(path)
    assert manifest.output_dir == tmp_path / "out" / "x"
    assert manifest.jobs[0].outputs == ("es/face-en.mp4",)


# --- matrix and templates -----------------------------------------------------------------------


def test_matrix_expands_one_portrait_over_languages(write: Write, media: Path) -> None:
    for lang in ("de", "fr", "ja"):
        write(f"media/{lang}.wav", (media / "en.wav").read_bytes())
    path = write(
        "m.yaml",
        """
version: 1
defaults: {portrait: media/face.png}
matrix:
  id: host-{lang}
  audio: media/{lang}.wav
  prompt: "presenter speaking {lang}, take {index}"
  vars:
    lang: [en, es, de, fr, ja]
""",
    )
    jobs = load_manifest(path).jobs
    assert [j.id for j in jobs] == ["host-en", "host-es", "host-de", "host-fr", "host-ja"]
    assert jobs[2].audio.value == str(media / "de.wav")
    assert jobs[4].prompt == "presenter speaking ja, take 5"
    assert [j.vars["lang"] for j in jobs] == ["en", "es", "de", "fr", "ja"]


def test_matrix_product_over_fields_and_vars_first_axis_slowest(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        """
version: 1
matrix:
  - id: "{lang}-{model}"
    portrait: media/face.png
    audio: media/{lang}.wav
    vars: {lang: [en, es]}
    model: [standard, pro]
""",
    )
    jobs = load_manifest(path).jobs
    assert [j.id for j in jobs] == ["en-standard", "en-pro", "es-standard", "es-pro"]
    assert [j.catalog_model.alias for j in jobs] == ["standard", "pro", "standard", "pro"]


def test_matrix_items_point_at_their_own_line(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\nmatrix:\n  id: q{output_quality}\n  portrait: media/face.png\n"
        "  audio: media/en.wav\n  output_quality:\n    - 50\n    - 500\n",
    )
    assert only_error(path) == "m.yaml:8: job q500: output_quality: should be at most 99 (got 500)"


def test_empty_matrix_list_is_an_error(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\nmatrix:\n  portrait: media/face.png\n  audio: media/en.wav\n  vars: {lang: []}\n",
    )
    assert "empty list: the matrix would make no jobs" in only_error(path)


def test_huge_matrix_is_refused_before_expanding(write: Write, media: Path) -> None:
    values = "[" + ", ".join(str(i) for i in range(1000)) + "]"
    path = write(
        "m.yaml",
        f"version: 1\nmatrix:\n  portrait: media/face.png\n  audio: media/en.wav\n"
        f"  vars: {{a: {values}, b: {values}, c: {values}}}\n",
    )
    assert "matrix expands to 1,000,000,000 jobs" in only_error(path)


def test_unknown_placeholder_is_located(write: Write, media: Path) -> None:
    path = yaml_job(write, media, "prompt: hello {lnag}\nvars: {lang: en}")
    assert only_error(path) == (
        "m.yaml:6: job a: prompt: unknown placeholder {lnag} (known here: id, index, lang)"
    )


def test_placeholder_id_works_in_other_fields(write: Write, media: Path) -> None:
    path = yaml_job(write, media, "prompt: clip {id}")
    assert load_manifest(path).jobs[0].prompt == "clip a"


def test_default_id_comes_from_portrait_and_audio_stems(write: Write, media: Path) -> None:
    path = write(
        "m.yaml", "version: 1\njobs:\n  - {portrait: media/face.png, audio: media/es.wav}\n"
    )
    assert load_manifest(path).jobs[0].id == "face-es"


def test_default_ids_that_collide_are_reported(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\njobs:\n  - {portrait: media/face.png, audio: media/es.wav}\n"
        "  - {portrait: media/face.png, audio: media/es.wav, prompt: other}\n",
    )
    assert only_error(path) == (
        "m.yaml:4: job face-es: id: duplicate id (also m.yaml:3); ids must be unique"
    )


# --- fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "ok"),
    [
        ("output_quality: 19", False),
        ("output_quality: 20", True),
        ("output_quality: 99", True),
        ("output_quality: 100", False),
        ("outputQuality: 95", True),
        ("output_quality: true", False),
        ("output_quality: 50.5", False),
        ("number_results: 0", False),
        ("number_results: 1", True),
        ("number_results: 4", True),
        ("number_results: 5", False),
        ("ttl: 59", False),
        ("ttl: 60", True),
        ("output_format: mov", True),
        ("output_format: gif", False),
        ("model: Pro", True),
        ("model: klingai:avatar@2.0-standard", True),
        ("model: kling-3", False),
        ("safety: {mode: fast}", True),
        ("safety: {mode: paranoid}", False),
        ("safety: {checkContent: maybe}", False),
        ("include_cost: false", True),
        ("webhook_url: https://hooks.example.org/a?token=x", True),
        ("webhook_url: ftp://hooks.example.org/a", False),
        ("upload_endpoint: http://bucket.example.org/put", True),
        ("upload_endpoint: not a url", False),
        ("prompt: ''", False),
    ],
)
def test_field_boundaries(write: Write, media: Path, extra: str, ok: bool) -> None:
    errors = errors_of(yaml_job(write, media, extra))
    assert (errors == []) is ok, errors


def test_range_error_names_file_line_job_field_and_bound(write: Write, media: Path) -> None:
    path = yaml_job(write, media, "prompt: fine\noutput_quality: 100")
    assert only_error(path) == "m.yaml:7: job a: output_quality: should be at most 99 (got 100)"


@pytest.mark.parametrize(("length", "ok"), [(2500, True), (2501, False)])
def test_prompt_length_is_counted_after_templating(
    write: Write, media: Path, length: int, ok: bool
) -> None:
    # "{lang}" (6 characters) becomes "en" (2): the limit applies to what is sent.
    prompt = "x" * (length - 2) + "{lang}"
    path = yaml_job(write, media, f"prompt: '{prompt}'\nvars: {{lang: en}}")
    errors = errors_of(path)
    assert (errors == []) is ok, errors
    if not ok:
        assert "should be at most 2500 characters (got 2501)" in errors[0]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "/etc/passwd", "..", "a b", "é", "x" * 121])
def test_unsafe_ids_are_rejected(write: Write, media: Path, bad_id: str) -> None:
    path = yaml_job(write, media).parent / "m.yaml"
    path.write_text(
        f"version: 1\njobs:\n  - id: '{bad_id}'\n    portrait: media/face.png\n    audio: media/en.wav\n"
    )
    error = only_error(path)
    assert error.startswith("m.yaml:3: row 1: id:"), error


def test_var_that_expands_to_dotdot_cannot_escape_through_the_id(write: Write, media: Path) -> None:
    path = yaml_job(write, media).parent / "m.yaml"
    path.write_text(
        "version: 1\njobs:\n  - id: '{dir}/x'\n    portrait: media/face.png\n"
        "    audio: media/en.wav\n    vars: {dir: '..'}\n"
    )
    assert "may use only letters" in only_error(path)


def test_unknown_field_suggests_the_closest_name(write: Write, media: Path) -> None:
    path = yaml_job(write, media, "outptu_format: mp4")
    assert (
        only_error(path)
        == "m.yaml:6: row 1: unknown field 'outptu_format' (did you mean 'output_format'?)"
    )


def test_field_given_under_two_names_is_an_error(write: Write, media: Path) -> None:
    path = yaml_job(write, media, "prompt: a\npositivePrompt: b")
    assert "given twice (as 'prompt' and 'positivePrompt')" in only_error(path)


def test_list_outside_a_matrix_is_explained(write: Write, media: Path) -> None:
    path = yaml_job(write, media, "prompt: [a, b]")
    assert "should be a single value, not a list (lists belong in a matrix: block)" in only_error(
        path
    )


def test_null_in_a_row_clears_a_default(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\ndefaults: {prompt: hi, portrait: media/face.png}\n"
        "jobs:\n  - {id: a, audio: media/en.wav, prompt: null}\n",
    )
    assert load_manifest(path).jobs[0].prompt is None


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        ("data:audio/mpeg;base64,SUQz", "inline audio is not accepted by the API"),
        ("ftp://example.org/a.mp3", "only http(s) URLs are accepted, not ftp://"),
        ("https://", "URL has no host name"),
    ],
)
def test_bad_audio_references(write: Write, media: Path, audio: str, message: str) -> None:
    path = write(
        "m.yaml",
        f"version: 1\njobs:\n  - id: a\n    portrait: media/face.png\n    audio: '{audio}'\n",
    )
    error = only_error(path)
    assert error.startswith("m.yaml:5: job a: audio:") and message in error


def test_remote_and_stored_references_are_classified(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\njobs:\n  - id: a\n    portrait: 5E7D1C9A-0B3F-4E62-8A14-C2D9F0E6B7A3\n"
        "    audio: https://cdn.example.org/voices/intro.mp3\n",
    )
    job = load_manifest(path).jobs[0]
    assert job.portrait.kind is MediaKind.UUID
    assert job.portrait.value == "5e7d1c9a-0b3f-4e62-8a14-c2d9f0e6b7a3"
    assert job.audio.kind is MediaKind.URL


# --- document structure -------------------------------------------------------------------------


def test_missing_version_is_a_warning_and_a_wrong_one_an_error(write: Write, media: Path) -> None:
    path = write("m.yaml", "jobs:\n  - {portrait: media/face.png, audio: media/en.wav}\n")
    problems = Problems()
    read_manifest(path, problems)
    assert [p.format() for p in problems.warnings] == [
        "m.yaml:1: warning: no version: assuming version: 1"
    ]
    path.write_text("version: 2\njobs:\n  - {portrait: media/face.png, audio: media/en.wav}\n")
    assert "version: 2 is not supported" in only_error(path)


def test_unknown_top_level_key_suggests(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\ndefault: {}\njobs:\n  - {portrait: media/face.png, audio: media/en.wav}\n",
    )
    assert (
        only_error(path) == "m.yaml:2: unknown top-level key 'default' (did you mean 'defaults'?)"
    )


def test_duplicate_yaml_key_is_an_error(write: Write, media: Path) -> None:
    path = yaml_job(write, media, "prompt: a\nprompt: b")
    assert only_error(path) == "m.yaml:7: duplicate key 'prompt' (first on line 6)"


def test_no_jobs_is_an_error(write: Write) -> None:
    assert (
        only_error(write("m.yaml", "version: 1\n"))
        == "m.yaml: has no jobs: add jobs:, rows: or matrix:"
    )


def test_every_problem_is_reported_in_one_pass(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        """
version: 1
jobs:
  - {id: a, portrait: media/face.png, audio: media/en.wav, output_quality: 5}
  - {id: b, portrait: media/face.png, audio: media/en.wav, number_results: 9}
  - {id: c, portrait: media/face.png, audio: media/en.wav, model: nope, ttl: 1}
""",
    )
    assert len(errors_of(path)) == 4


def test_load_manifest_raises_with_every_problem(write: Write, media: Path) -> None:
    path = write("m.yaml", "version: 1\njobs:\n  - {id: a}\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert {p.field for p in caught.value.problems} == {"portrait", "audio"}
    assert str(caught.value) == "m.yaml:3: job a: portrait: is required (and 1 more)"


def test_two_csv_columns_for_one_field_are_reported_once_at_the_header(write: Write) -> None:
    rows = "".join(f"j{i},a.png,b.wav,x,y\n" for i in range(50))
    path = write("m.csv", "id,portrait,audio,prompt,positivePrompt\n" + rows)
    problems = Problems()
    read_manifest(path, problems)
    assert [p.format() for p in problems.errors] == [
        "m.csv:1: columns 'prompt' and 'positivePrompt' both give prompt"
    ]
