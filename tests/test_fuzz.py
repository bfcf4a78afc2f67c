"""Property tests: no manifest text, and no single broken field, can crash the reader."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatarbatch.errors import AvatarBatchError
from avatarbatch.manifest.preflight import preflight
from conftest import image_bytes, wav_bytes

# AVATARBATCH_FUZZ_EXAMPLES=5000 for a deep local run; CI keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("AVATARBATCH_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

MEDIA_DIR = Path(tempfile.mkdtemp(prefix="avatarbatch-fuzz-"))
(MEDIA_DIR / "face.png").write_bytes(image_bytes(400, 400))
(MEDIA_DIR / "a.wav").write_bytes(wav_bytes(3.0))

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


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in leaf_paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value) for p in leaf_paths(v, (*prefix, i))]
    return [prefix]


PATHS = [p for p in leaf_paths(VALID) if p]


def mutate(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    import copy

    result = copy.deepcopy(document)
    target = result
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return result


def check_text(data: bytes, suffix: str) -> None:
    path = MEDIA_DIR / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        result = preflight(path)
    except AvatarBatchError:  # allowed, though preflight reports rather than raises
        return
    assert result.ok or result.problems.errors


def test_the_unmutated_document_is_valid() -> None:
    path = MEDIA_DIR / "valid.yaml"
    path.write_text(yaml.safe_dump(VALID))
    result = preflight(path)
    assert result.ok, [p.format() for p in result.problems.items]


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_as_yaml(text: str) -> None:
    check_text(text.encode("utf-8", "surrogatepass"), ".yaml")


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_yaml_or_csv(data: bytes) -> None:
    check_text(data, ".yaml")
    check_text(data, ".csv")


@FUZZ
@given(st.lists(st.lists(st.text(max_size=12), max_size=6), max_size=6))
def test_arbitrary_csv_tables(table: list[list[str]]) -> None:
    text = "id,portrait,audio,prompt\n" + "\n".join(",".join(row) for row in table)
    check_text(text.encode("utf-8", "surrogatepass"), ".csv")


@FUZZ
@given(st.sampled_from(PATHS), any_value)
def test_valid_manifest_with_one_field_broken(path: tuple[Any, ...], value: Any) -> None:
    document = mutate(VALID, path, value)
    check_text(yaml.safe_dump(document, allow_unicode=True).encode(), ".yaml")


@FUZZ
@given(
    st.sampled_from(PATHS),
    st.sampled_from(
        [
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
    ),
)
def test_valid_manifest_with_one_field_set_to_a_nasty_string(
    path: tuple[Any, ...], value: str
) -> None:
    document = mutate(VALID, path, value)
    check_text(yaml.safe_dump(document, allow_unicode=True).encode(), ".yaml")
