"""Property tests of the manifest reader.

- No input makes `preflight` raise: whatever the text, bytes, table or broken field, it comes
  back with problems, and a manifest it refuses has at least one error.
- Every problem is located: it names a file, and a line of it (a real one) whenever it is
  about something written in the file rather than the file as a whole.
- A manifest that validates means what it says: the jobs it yields hold exactly the values
  written, through YAML and through CSV.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatarbatch import catalog
from avatarbatch.manifest.fields import RESERVED_VAR_NAMES
from avatarbatch.manifest.preflight import Preflight, preflight
from avatarbatch.manifest.problems import Problem
from conftest import image_bytes, wav_bytes

# AVATARBATCH_FUZZ_EXAMPLES=5000 for a deep local run; by default the file takes seconds.
FUZZ = settings(
    max_examples=int(os.environ.get("AVATARBATCH_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

MEDIA_DIR = Path(tempfile.mkdtemp(prefix="avatarbatch-fuzz-"))
(MEDIA_DIR / "face.png").write_bytes(image_bytes(400, 400))
(MEDIA_DIR / "a.wav").write_bytes(wav_bytes(3.0))
AUDIO_SECONDS = 3.0

VALID: dict[str, Any] = {
    "version": 1,
    "defaults": {"portrait": "face.png", "model": "standard", "vars": {"lang": "en"}},
    "output": {"filename": "{id}.{ext}"},
    "jobs": [
        {
            "id": "a",
            "audio": "a.wav",
            "prompt": "hello {lang}",
            "output_format": "MP4",
            "output_quality": 90,
            "number_results": 2,
            "ttl": 3600,
            "safety": {"check_content": True, "mode": "fast"},
            "include_cost": True,
        }
    ],
    "matrix": {"id": "m-{lang}", "audio": "a.wav", "vars": {"lang": ["de", "fr"]}},
}

any_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
NASTY_STRINGS = [
    "",
    " ",
    "..",
    "../x",
    "/etc/passwd",
    "{id}",
    "{x}",
    "{",
    "\x00",
    "a" * 3000,
    "-1",
    "1e400",
    "~",
    "[",
    "data:,",
]


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in leaf_paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value) for p in leaf_paths(v, (*prefix, i))]
    return [prefix]


PATHS = [p for p in leaf_paths(VALID) if p]


def mutate(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    result = copy.deepcopy(document)
    target = result
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return result


def lines_of(data: bytes) -> int:
    """How many lines a reader could number in `data`, counting every kind of line break."""
    text = (
        data.decode("utf-16")
        if data[:2] in (b"\xff\xfe", b"\xfe\xff")
        else data.decode("utf-8", "replace")
    )
    return len(text.splitlines()) + 1


def about_the_text(problem: Problem) -> bool:
    """Whether the problem is about something written in the file (a row, a field), which has
    a line, rather than about the file as a whole."""
    return problem.job is not None or problem.field is not None


def checked(data: bytes, suffix: str) -> Preflight:
    """Preflight of `data` as a manifest file, with the properties every outcome must have."""
    path = MEDIA_DIR / f"fuzz{suffix}"
    path.write_bytes(data)
    result = preflight(path)  # never raises: everything wrong is a located problem
    if not result.ok:
        assert result.problems.errors, "refused without an error saying why"
    for problem in result.problems.items:
        origin = problem.origin
        assert origin.file.is_absolute() and problem.message, problem
        assert problem.format().startswith(origin.format()), problem
        if origin.file == path:
            assert 0 <= origin.line <= lines_of(data), (problem.format(), data)
            if about_the_text(problem) and data.strip():
                assert origin.line >= 1, f"no line for {problem.format()!r} in {data!r}"
    return result


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_as_yaml(text: str) -> None:
    checked(text.encode("utf-8", "surrogatepass"), ".yaml")


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_yaml_or_csv(data: bytes) -> None:
    checked(data, ".yaml")
    checked(data, ".csv")


@FUZZ
@given(st.lists(st.lists(st.text(max_size=12), max_size=6), max_size=6))
def test_arbitrary_csv_tables(table: list[list[str]]) -> None:
    text = "id,portrait,audio,prompt\n" + "\n".join(",".join(row) for row in table)
    checked(text.encode("utf-8", "surrogatepass"), ".csv")


@FUZZ
@given(st.sampled_from(PATHS), any_value | st.sampled_from(NASTY_STRINGS))
def test_valid_manifest_with_one_field_broken(path: tuple[Any, ...], value: Any) -> None:
    document = mutate(VALID, path, value)
    checked(yaml.safe_dump(document, allow_unicode=True).encode(), ".yaml")


def test_the_unmutated_document_is_valid() -> None:
    result = checked(yaml.safe_dump(VALID).encode(), ".yaml")
    assert result.ok and result.manifest is not None, [p.format() for p in result.problems.items]
    assert [job.id for job in result.manifest.jobs] == ["a", "m-de", "m-fr"]


# --- a manifest that validates yields the values written --------------------------------------

# Letters, digits, punctuation and spaces, without template braces; the ends are stripped,
# as the reader strips them.
plain_text = (
    st.text(
        st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"], exclude_characters="{}"),
        min_size=1,
        max_size=60,
    )
    .map(str.strip)
    .filter(bool)
)
job_fields = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,30}", fullmatch=True),
        "model": st.sampled_from(
            [m.alias for m in catalog.MODELS] + [m.id for m in catalog.MODELS]
        ),
        "prompt": st.none() | plain_text,
        "output_format": st.sampled_from(["MP4", "WEBM", "MOV", "mp4", "WebM", "mov"]),
        "output_quality": st.none() | st.integers(*catalog.OUTPUT_QUALITY_RANGE),
        "number_results": st.integers(*catalog.NUMBER_RESULTS_RANGE),
        "ttl": st.none() | st.integers(catalog.TTL_MIN_SECONDS, 10**7),
        "include_cost": st.booleans(),
        "vars": st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
                lambda name: name not in RESERVED_VAR_NAMES
            ),
            plain_text,
            max_size=3,
        ),
    }
)


def assert_round_trip(result: Preflight, rows: list[dict[str, Any]]) -> None:
    assert result.ok, [p.format() for p in result.problems.items]
    assert result.manifest is not None
    assert len(result.manifest.jobs) == len(rows)
    for index, (job, row) in enumerate(zip(result.manifest.jobs, rows, strict=True), 1):
        assert job.index == index
        assert job.id == row["id"]
        model = catalog.find_model(row["model"])
        assert model is not None and job.model == model.id
        assert job.prompt == row["prompt"]
        assert job.output_format == row["output_format"].upper()
        assert job.output_quality == row["output_quality"]
        assert job.number_results == row["number_results"]
        assert job.ttl == row["ttl"]
        assert job.include_cost is row["include_cost"]
        assert job.vars == row["vars"]
        assert job.portrait.value == str(MEDIA_DIR / "face.png")
        assert job.audio.value == str(MEDIA_DIR / "a.wav")
        assert len(job.outputs) == row["number_results"]


unique_rows = st.lists(job_fields, min_size=1, max_size=4, unique_by=lambda row: row["id"].lower())


@FUZZ
@given(unique_rows)
def test_a_valid_yaml_manifest_yields_the_values_written(rows: list[dict[str, Any]]) -> None:
    jobs = [{**row, "portrait": "face.png", "audio": "a.wav"} for row in rows]
    text = yaml.safe_dump({"version": 1, "jobs": jobs}, allow_unicode=True)
    assert_round_trip(checked(text.encode(), ".yaml"), rows)


@FUZZ
@given(unique_rows)
def test_a_valid_csv_manifest_yields_the_values_written(rows: list[dict[str, Any]]) -> None:
    names = sorted({name for row in rows for name in row["vars"]})
    header = [key for key in rows[0] if key != "vars"] + ["portrait", "audio"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header + [f"vars.{name}" for name in names])
    for row in rows:
        cells = [_cell(row[key]) for key in header[:-2]] + ["face.png", "a.wav"]
        writer.writerow(cells + [row["vars"].get(name, "") for name in names])
    # A row leaves the var columns of other rows' vars empty: an empty cell is "not given".
    assert_round_trip(checked(out.getvalue().encode(), ".csv"), rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
