"""How values are stored: JSON text for lists and dicts, REAL for costs, and `jobs` rows decoded
back into records. Every write of the state layer encodes through here."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from avatarbatch.state.records import STATUS_BY_VALUE, JobRecord

# The columns of `jobs` in JobRecord's field order, so a row maps onto a record positionally.
NAMES = tuple(JobRecord.__dataclass_fields__)
COLUMNS = ", ".join(NAMES)
_STATUS_INDEX = NAMES.index("status")
_JSON_INDEXES = tuple(NAMES.index(name) for name in ("results", "outputs"))
JSON_FIELDS = frozenset({"results", "outputs"})
FLOAT_FIELDS = frozenset({"actual_cost", "submitted_at", "estimated_cost", "audio_seconds"})


def _json_default(value: object) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be stored as JSON")


def dumps(value: Any) -> str:
    """JSON text for a column or an event's detail."""
    # allow_nan=False: SQLite's JSON functions refuse NaN, and one such value made every later
    # run and report die on "malformed JSON". finite() has replaced them before this point.
    return json.dumps(finite(value), default=_json_default, ensure_ascii=False, allow_nan=False)


def finite(value: Any) -> Any:
    """The value with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def to_float(value: Any) -> float | None:
    """Costs may arrive as Decimal (plan.py computes in Decimal); SQLite stores REAL.

    A number that is not finite is stored as unknown: NaN in a sum poisons every total.
    """
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def column_value(name: str, value: Any) -> Any:
    """A job field as its `jobs` column stores it."""
    if name in JSON_FIELDS:
        if not isinstance(value, list):
            raise TypeError(f"{name} must be a list, not {type(value).__name__}")
        return dumps(value)
    return to_float(value) if name in FLOAT_FIELDS else value


def decode_job(row: tuple[Any, ...]) -> JobRecord:
    """A `jobs` row, selected as `COLUMNS`, as a record with its JSON columns decoded."""
    values = list(row)
    status = STATUS_BY_VALUE.get(values[_STATUS_INDEX])
    if status is None:
        raise ValueError(f"job {values[0]!r} has the unknown status {values[_STATUS_INDEX]!r}")
    values[_STATUS_INDEX] = status
    for index in _JSON_INDEXES:
        text = values[index]
        # Most rows hold empty lists: skip the parser for those.
        values[index] = [] if text == "[]" else json.loads(text)
    return JobRecord(*values)
