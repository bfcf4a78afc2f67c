"""Raw rows: one job's values under canonical flat names, with where each was written.

YAML mappings (`safety: {mode: full}`, `vars: {lang: es}`) and CSV records (`safety.mode`,
`vars.lang` columns) both become `RawRow`s with flat keys, so defaults merge with a plain dict
update and every later error can point at the line that set the value. A matrix block is a
RawRow whose list values are axes; `expand_matrix` turns it into one row per combination.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from avatarbatch.manifest.fields import (
    RESERVED_VAR_NAMES,
    VAR_NAME_PATTERN,
    VARS_PREFIX,
    canonical_name,
    suggestion,
)
from avatarbatch.manifest.problems import Origin, Problems, shorten
from avatarbatch.manifest.sources import CsvRow, YList, YMap

Scalar = str | int | float | bool | None
MAX_JOBS = 1_000_000
T = TypeVar("T")


@dataclass(slots=True)
class RawRow:
    origin: Origin  #: where the row (or matrix block) starts
    values: dict[str, Any] = field(default_factory=dict)
    #: where each value was written, where that is not `origin` (a CSV row's are all there)
    origins: dict[str, Origin] = field(default_factory=dict)
    axes: dict[str, str] = field(default_factory=dict)  #: matrix values of fields, for templates

    def merged_over(self, base: RawRow) -> RawRow:
        """This row with `base` (the defaults) filling in whatever it does not set."""
        if not (base.values or base.origins or base.axes):
            return self  # no defaults (a plain CSV): no copy per row
        # Each of this row's values was written at its row, unless `origins` says otherwise.
        return RawRow(
            self.origin,
            {**base.values, **self.values},
            {**base.origins, **dict.fromkeys(self.values, self.origin), **self.origins},
            {**base.axes, **self.axes},
        )


class _RowBuilder:
    def __init__(self, row: RawRow, problems: Problems, label: str, allow_lists: bool) -> None:
        self.row = row
        self.problems = problems
        self.label = label
        self.allow_lists = allow_lists
        self.written_as: dict[str, str] = {}

    def put(self, written: str, value: Any, origin: Origin) -> None:
        name = canonical_name(written)
        if name is None:
            self.problems.error(
                origin, f"unknown field {written!r}{suggestion(written)}", job=self.label
            )
            return
        if name.startswith(VARS_PREFIX) and not _valid_var_name(
            var := name.removeprefix(VARS_PREFIX)
        ):
            self.problems.error(
                origin,
                f"var name {var!r} must be a letter or _ followed by letters, digits or _, "
                f"and not one of {', '.join(sorted(RESERVED_VAR_NAMES))}",
                job=self.label,
            )
            return
        if name in self.written_as:
            self.problems.error(
                origin,
                f"given twice (as {self.written_as[name]!r} and {written!r})",
                job=self.label,
                field=name,
            )
            return
        if not self._check_value(value, name, origin):
            return
        self.written_as[name] = written
        self.row.values[name] = value
        self.row.origins[name] = origin

    def _check_value(self, value: Any, name: str, origin: Origin) -> bool:
        if isinstance(value, list) and self.allow_lists:
            if not value:
                self.problems.error(
                    origin, "empty list: the matrix would make no jobs", job=self.label, field=name
                )
                return False
            return all(self._check_value(item, name, origin) for item in value)
        if isinstance(value, list | dict):
            kind = "list" if isinstance(value, list) else "mapping"
            hint = " (lists belong in a matrix: block)" if isinstance(value, list) else ""
            self.problems.error(
                origin, f"should be a single value, not a {kind}{hint}", job=self.label, field=name
            )
            return False
        return True


def _valid_var_name(name: str) -> bool:
    return bool(VAR_NAME_PATTERN.match(name)) and name not in RESERVED_VAR_NAMES


def row_from_mapping(
    mapping: YMap, path: Path, problems: Problems, label: str, *, allow_lists: bool = False
) -> RawRow:
    """Flatten a YAML job mapping (nested `safety:` and `vars:` included)."""
    row = RawRow(Origin(path, mapping.line))
    builder = _RowBuilder(row, problems, label, allow_lists)
    for key, value in mapping.items():
        origin = Origin(path, mapping.key_lines.get(key, mapping.line))
        if key in ("safety", "vars"):
            if not isinstance(value, YMap):
                problems.error(
                    origin, f"should be a mapping, got {shorten(value)}", job=label, field=key
                )
                continue
            for sub_key, sub_value in value.items():
                sub_origin = Origin(path, value.key_lines.get(sub_key, value.line))
                builder.put(f"{key}.{sub_key}", sub_value, sub_origin)
        else:
            builder.put(key, value, origin)
    return row


def is_csv_column(column: str, var_columns: Iterable[str]) -> bool:
    """Whether a CSV header cell names a field or a declared var column."""
    return column in var_columns or canonical_name(column) is not None


def csv_columns(
    header: list[str], line: int, path: Path, var_columns: Iterable[str], problems: Problems
) -> dict[str, str]:
    """Map each usable column to its flat field name; unknown columns are reported once, here."""
    declared = set(var_columns)
    columns: dict[str, str] = {}
    for column in header:
        name = f"{VARS_PREFIX}{column}" if column in declared else canonical_name(column)
        if name is None:
            problems.error(
                Origin(path, line),
                f"unknown column {column!r}{suggestion(column)}; "
                f"name extra columns {VARS_PREFIX}{column} to carry them into the reports",
            )
        elif name.startswith(VARS_PREFIX) and not _valid_var_name(
            var := name.removeprefix(VARS_PREFIX)
        ):
            problems.error(
                Origin(path, line), f"column {column!r}: {var!r} is not a valid var name"
            )
        elif name in columns.values():
            first = next(written for written, known in columns.items() if known == name)
            problems.error(Origin(path, line), f"columns {first!r} and {column!r} both give {name}")
        else:
            columns[column] = sys.intern(name)
    return columns


def row_from_csv(record: CsvRow, path: Path, columns: list[tuple[int, str]]) -> RawRow:
    """A CSV record as a row; an empty cell means "use the default".

    `columns`: each usable column's position and flat field name (`csv_columns`, which has
    checked every name once for the whole file). A cell is always a single string, so no
    per-cell checks remain: a big file would pay for them per row.
    """
    origin = Origin(path, record.line)
    cells = record.cells
    count = len(cells)
    values = {
        name: cell
        for position, name in columns
        if position < count and (cell := cells[position]) and not cell.isspace()
    }
    return RawRow(origin, values)


def expand_matrix(
    block: RawRow, axis_lines: dict[str, list[int]], problems: Problems, label: str
) -> list[RawRow]:
    """One row per combination of the block's list values, first axis varying slowest."""
    axes = [(name, value) for name, value in block.values.items() if isinstance(value, list)]
    count = math.prod(len(values) for _, values in axes)
    if count > MAX_JOBS:
        problems.error(
            block.origin, f"matrix expands to {count:,} jobs; the limit is {MAX_JOBS:,}", job=label
        )
        return []
    fixed = {k: v for k, v in block.values.items() if not isinstance(v, list)}
    rows = []
    for combination in itertools.product(*(enumerate(values) for _, values in axes)):
        row = RawRow(block.origin, dict(fixed), dict(block.origins))
        for (name, _), (position, value) in zip(axes, combination, strict=True):
            row.values[name] = value
            lines = axis_lines.get(name)
            if lines and position < len(lines):
                row.origins[name] = Origin(block.origin.file, lines[position])
            if not name.startswith(VARS_PREFIX) and value is not None:
                row.axes[name] = str(value)
        rows.append(row)
    return rows


def list_item_lines(mapping: YMap) -> dict[str, list[int]]:
    """Line of every list item in a matrix block, keyed by flat field name."""
    lines: dict[str, list[int]] = {}
    for key, value in mapping.items():
        if key in ("vars", "safety") and isinstance(value, YMap):
            for sub_key, sub_value in value.items():
                if isinstance(sub_value, YList):
                    lines[canonical_name(f"{key}.{sub_key}") or key] = sub_value.item_lines
        elif isinstance(value, YList):
            lines[canonical_name(key) or key] = value.item_lines
    return lines


def consumed(items: list[T]) -> Iterator[T]:
    """Yield and drop each item in order, so one pass never holds a big list twice over.

    Rows become RawRows become Jobs; dropping each as it is converted keeps the peak memory
    of a big manifest to one stage at a time.
    """
    items.reverse()
    while items:
        yield items.pop()
