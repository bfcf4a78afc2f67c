"""Reading manifest files safely: text decoding, YAML with line numbers, CSV with line numbers.

Everything a user can point avatarbatch at (a FIFO, a directory, /dev/zero, a 2 GB log, a
UTF-16 export from Excel, a YAML bomb) must end in a located `ManifestError`, never a hang,
a traceback or an exhausted machine. So files are checked with stat() before they are opened,
read with a size cap, and parsed by code that keeps the line of every value.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from avatarbatch.errors import ManifestError
from avatarbatch.manifest import paths
from avatarbatch.manifest.problems import Origin, Problems, plural, shorten

MAX_MANIFEST_BYTES = 64_000_000  #: a YAML manifest: its parsed nodes take many times that
#: a CSV of MAX_JOBS rows of about 250 characters (a million rows of a typical batch are ~90 MB)
MAX_CSV_BYTES = 256_000_000
MAX_YAML_DEPTH = 50
PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
CSV_DELIMITERS = (",", ";", "\t")
MAX_CSV_CELL = 16 * 1024 * 1024


class YMap(dict[str, Any]):
    """A YAML mapping that remembers its own line and the line of each key."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}


class YList(list[Any]):
    """A YAML sequence that remembers its own line and the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


def fail(origin: Origin, message: str) -> ManifestError:
    problems = Problems()
    problems.error(origin, message)
    return ManifestError(problems.items)


def read_text(path: Path, limit: int = MAX_MANIFEST_BYTES) -> str:
    """The file's text, decoded; any reason it cannot be read becomes a located ManifestError."""
    try:
        data = paths.read_regular_file(path, limit)
    except paths.UnreadableFile as exc:
        raise fail(Origin(path), str(exc)) from None
    return decode(data, path)


def decode(data: bytes, path: Path) -> str:
    if not data.strip():
        raise fail(Origin(path), "is empty")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise fail(
                Origin(path), "looks like UTF-16 but does not decode; save it as UTF-8"
            ) from None
    if b"\x00" in data[:8192]:
        raise fail(Origin(path), "is a binary file (it contains NUL bytes), not a text manifest")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise fail(
            Origin(path, line),
            f"is not valid UTF-8 (byte 0x{bad}); save the file with UTF-8 encoding",
        ) from None


# --- YAML ------------------------------------------------------------------------------------


def parse_yaml(text: str, path: Path, problems: Problems) -> Any:
    """The document as YMap/YList/scalars with line numbers; raises ManifestError on bad syntax."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise fail(
            Origin(path, line), f"invalid YAML: {exc.reason} (character {exc.character!r})"
        ) from None
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        reason = exc.problem or exc.context or "invalid YAML"
        raise fail(Origin(path, line), f"invalid YAML: {reason}") from None
    except yaml.YAMLError as exc:
        raise fail(Origin(path), f"invalid YAML: {type(exc).__name__}") from None
    except RecursionError:
        raise fail(Origin(path), "invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    if node is None:
        raise fail(Origin(path), "is empty (no YAML document)")
    return _Converter(loader, path, problems).convert(node, 0)


class _Converter:
    """Turns a composed YAML node tree into located Python values.

    Converting the node tree ourselves (rather than yaml.safe_load) keeps the line of every
    key and item. Aliases map to the already-converted object, so a "billion laughs" document
    costs no more memory than it has nodes.
    """

    def __init__(self, loader: yaml.SafeLoader, path: Path, problems: Problems) -> None:
        self.loader = loader
        self.path = path
        self.problems = problems
        self.seen: dict[int, Any] = {}

    def convert(self, node: yaml.Node, depth: int) -> Any:
        if id(node) in self.seen:
            return self.seen[id(node)]
        if depth > MAX_YAML_DEPTH:
            raise fail(self.origin(node), f"nested more than {MAX_YAML_DEPTH} levels deep")
        if not isinstance(node, yaml.ScalarNode) and node.tag not in PLAIN_TAGS:
            raise fail(self.origin(node), f"unsupported YAML tag {node.tag}")
        if isinstance(node, yaml.MappingNode):
            value: Any = self.mapping(node, depth)
        elif isinstance(node, yaml.SequenceNode):
            value = YList(node.start_mark.line + 1)
            self.seen[id(node)] = value
            for item in node.value:
                value.append(self.convert(item, depth + 1))
                value.item_lines.append(item.start_mark.line + 1)
        else:
            try:
                value = self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                raise fail(self.origin(node), f"invalid YAML value: {exc}") from None
        self.seen[id(node)] = value
        return value

    def mapping(self, node: yaml.MappingNode, depth: int) -> YMap:
        result = YMap(node.start_mark.line + 1)
        self.seen[id(node)] = result
        try:
            self.loader.flatten_mapping(node)  # applies YAML merge keys (<<: *defaults)
        except yaml.YAMLError as exc:
            raise fail(self.origin(node), f"invalid YAML merge: {exc}") from None
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise fail(
                    Origin(self.path, line), "a key must be a plain name, not a list or mapping"
                )
            key = str(key_node.value)
            if key in result:
                self.problems.error(
                    Origin(self.path, line),
                    f"duplicate key {key!r} (first on line {result.key_lines[key]})",
                )
                continue
            result[key] = self.convert(value_node, depth + 1)
            result.key_lines[key] = line
        return result

    def origin(self, node: yaml.Node) -> Origin:
        return Origin(self.path, node.start_mark.line + 1)


# --- CSV -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int
    #: in the header's order; a short row has fewer (a list: far smaller than a dict by name,
    #: at a million rows)
    cells: list[str]


@dataclass(frozen=True, slots=True)
class CsvTable:
    header: list[str]
    header_line: int
    rows: list[CsvRow]


def parse_csv(
    text: str, path: Path, is_column: Callable[[str], bool] = lambda _name: True
) -> CsvTable:
    """Header and rows of a CSV file (see `CsvReader`), all at once."""
    reader = CsvReader(text, path, is_column)
    return CsvTable(reader.header, reader.header_line, list(reader))


class CsvReader:
    """Header and rows of a CSV file; blank lines and lines starting with # are skipped.

    The header is read at once; the rows one at a time, so that a big file's rows need not
    all exist twice over (as records, then as whatever they are turned into). A bad row
    raises ManifestError when it is reached.

    The delimiter (comma, semicolon or tab) is taken from the header line, since spreadsheets
    in many locales export semicolons. A header that splits into one column which is no known
    column (`is_column`) was written with some other delimiter: it is refused at the header,
    rather than reported as one long unknown column and then a missing field on every row.
    """

    def __init__(
        self, text: str, path: Path, is_column: Callable[[str], bool] = lambda _name: True
    ) -> None:
        end = text.find("\n")
        first_line = text if end < 0 else text[:end]
        delimiter = max(CSV_DELIMITERS, key=first_line.count)
        csv.field_size_limit(MAX_CSV_CELL)  # inline base64 portraits are long cells
        self.path = path
        self._reader = csv.reader(_lines(text), delimiter=delimiter, strict=True)
        self._records = self._lines()
        self.header: list[str] = []
        self.header_line = 0
        for line, record in self._records:
            self.header = _check_header(record, Origin(path, line), is_column)
            self.header_line = line
            break
        else:
            raise fail(Origin(path), "has no header row")

    def _lines(self) -> Iterator[tuple[int, list[str]]]:
        """(line, record) of each record that is not blank or a comment."""
        reader = self._reader
        next_line = 1
        try:
            for record in reader:
                line, next_line = next_line, reader.line_num + 1
                first = record[0].lstrip() if record else ""
                if first.startswith("#") or not (first or any(cell.strip() for cell in record)):
                    continue
                yield line, record
        except csv.Error as exc:
            raise fail(Origin(self.path, reader.line_num), f"invalid CSV: {exc}") from None

    def __iter__(self) -> Iterator[CsvRow]:
        columns = len(self.header)
        for line, record in self._records:
            if len(record) > columns:
                raise fail(
                    Origin(self.path, line),
                    f"row has {len(record)} cells but the header has {plural(columns, 'column')}",
                )
            yield CsvRow(line, record)


def _lines(text: str) -> Iterator[str]:
    """The lines of `text` as `io.StringIO(text, newline="")` gives them, for csv.reader.

    Sliced from the text itself: a StringIO holds its own copy, four bytes a character,
    which for a CSV of a million rows was a third of the peak memory of reading it.
    """
    if text.count("\r") != text.count("\r\n"):  # lines that end in a lone CR: rare
        yield from io.StringIO(text, newline="")
        return
    start, size = 0, len(text)
    while start < size:
        end = text.find("\n", start)
        end = size if end < 0 else end + 1
        yield text[start:end]
        start = end


def _check_header(record: list[str], origin: Origin, is_column: Callable[[str], bool]) -> list[str]:
    header = [cell.strip() for cell in record]
    for number, name in enumerate(header, start=1):
        if not name:
            raise fail(origin, f"header column {number} has no name")
    if len(header) == 1 and not is_column(header[0]):
        used = _likely_delimiter(header[0])
        raise fail(
            origin,
            f"header has one column, {shorten(header[0])}; separate columns with a comma, "
            f"semicolon or tab{f', not {used}' if used else ''}",
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        noun = "column" if len(duplicates) == 1 else "columns"
        raise fail(origin, f"header repeats {noun}: {', '.join(duplicates)}")
    return header


def _likely_delimiter(cell: str) -> str | None:
    """The character that seems to separate the names in `cell`, described; None if none does.

    Column names hold letters, digits, `_` and `.`, so the commonest other character is it.
    """
    counts = Counter(ch for ch in cell if not ch.isalnum() and ch not in "._")
    if not counts:
        return None
    char = counts.most_common(1)[0][0]
    return "spaces" if char == " " else repr(char)
