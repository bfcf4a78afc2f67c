"""JSON documents written with one list item per line must still be exactly the JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from avatarbatch.jsonlines import json_with_item_lines

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    document=st.dictionaries(st.text(), values, max_size=4),
    key=st.text(),
    items=st.lists(values, max_size=5),
)
def test_the_text_parses_back_to_the_document_with_its_list(
    document: dict[str, Any], key: str, items: list[Any]
) -> None:
    text = "".join(json_with_item_lines(document, key, iter(items)))
    assert json.loads(text) == {**document, key: items}
    assert list(json.loads(text)) == list({**document, key: items})  # key order kept
    assert text.endswith("\n")


def test_items_come_one_per_line_inside_an_indented_document() -> None:
    text = "".join(json_with_item_lines({"jobs": None, "total": 2}, "jobs", [{"a": 1}, {"b": 2}]))
    assert text == '{\n  "jobs": [\n    {"a": 1},\n    {"b": 2}\n  ],\n  "total": 2\n}\n'


def test_a_value_that_looks_like_the_slot_is_left_alone() -> None:
    document = {"note": "avatarbatch-items-", "jobs": None}
    assert json.loads("".join(json_with_item_lines(document, "jobs", [1]))) == {
        "note": "avatarbatch-items-",
        "jobs": [1],
    }
