"""JSON documents with one long list written one compact item per line.

`json.dumps(indent=2)` of a 100,000-job report uses the pure-Python encoder (indent rules out
the C one) and builds the whole text in memory: 4 s and hundreds of MB. Here the document
around the list is indented as usual, each item is one C-encoded line, and the text comes out
piece by piece. The result is ordinary JSON, and still readable with grep and diff.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from typing import Any


def json_with_item_lines(document: dict[str, Any], key: str, items: Iterable[Any]) -> Iterator[str]:
    """`document` with `document[key]` = `items` as JSON text, in pieces; ends with a newline."""
    # A fresh token per call, so no value inside the document can be mistaken for the slot.
    slot = json.dumps(f"avatarbatch-items-{secrets.token_hex(16)}")
    before, _, after = json.dumps({**document, key: json.loads(slot)}, indent=2).partition(slot)
    yield before + "["
    empty = True
    for item in items:
        yield ("\n    " if empty else ",\n    ") + json.dumps(item)
        empty = False
    yield ("]" if empty else "\n  ]") + after + "\n"
