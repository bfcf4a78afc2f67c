"""Manifests: YAML, CSV, or YAML pointing at a CSV, turned into fully resolved jobs.

Reading happens in three passes, each collecting problems instead of stopping:
1. the document: top-level keys, `defaults`, `output`, and the rows from `jobs:`, `rows:`
   (a CSV file) and `matrix:` (template rows expanded over the product of their lists);
2. each row: defaults merged in, `{placeholders}` filled, values checked by `JobFields`,
   media references classified and resolved against the folder of the file that named them;
3. across rows: unique ids and unique output file names.
This module does pass 1; `resolve.Resolver` passes 2 and 3. Media files are not opened here;
`preflight` probes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from avatarbatch.errors import ManifestError
from avatarbatch.manifest import paths
from avatarbatch.manifest.fields import VARS_PREFIX, suggestion
from avatarbatch.manifest.job import Job, Manifest
from avatarbatch.manifest.problems import Origin, Problems, shorten
from avatarbatch.manifest.resolve import Resolver
from avatarbatch.manifest.rows import (
    RawRow,
    csv_columns,
    expand_matrix,
    is_csv_column,
    list_item_lines,
    row_from_csv,
    row_from_mapping,
)
from avatarbatch.manifest.sources import (
    MAX_CSV_BYTES,
    MAX_MANIFEST_BYTES,
    CsvReader,
    YList,
    YMap,
    decode,
    fail,
    parse_yaml,
    read_text,
)
from avatarbatch.manifest.templates import DEFAULT_FILENAME

# Job and Manifest are defined in `manifest.job` and exported from here too, with the reader.
__all__ = [
    "CSV_SUFFIXES",
    "DEFAULT_FILENAME",
    "TOP_LEVEL_KEYS",
    "Job",
    "Manifest",
    "load_manifest",
    "read_manifest",
]

TOP_LEVEL_KEYS = ("version", "defaults", "output", "jobs", "rows", "matrix")
CSV_SUFFIXES = (".csv", ".tsv")


def load_manifest(path: Path) -> Manifest:
    """The manifest at `path`; raises ManifestError listing every problem if it has errors."""
    problems = Problems()
    manifest = read_manifest(path, problems)
    if manifest is None or problems.errors:
        raise ManifestError(problems.items)
    return manifest


def read_manifest(path: Path, problems: Problems) -> Manifest | None:
    """Everything usable in the manifest; problems are appended, never raised.

    Returns None when the file itself cannot be read or parsed. Otherwise the result holds the
    rows that resolved cleanly, so media checks can still run on them in the same pass.
    """
    path = path.absolute()
    try:
        is_csv = path.suffix.lower() in CSV_SUFFIXES
        text = read_text(path, MAX_CSV_BYTES if is_csv else MAX_MANIFEST_BYTES)
        sha256 = hashlib.sha256(text.encode()).hexdigest()
        if is_csv:
            document = _Document(path, problems)
            document.add_csv(path, text, var_columns=())
        else:
            document = _Document(path, problems)
            document.add_yaml(parse_yaml(text, path, problems))
    except ManifestError as exc:
        problems.items.extend(exc.problems)
        return None
    del text  # a big CSV's text is not kept while its rows become jobs (peak memory)
    resolver = Resolver(problems, document.defaults, document.filename, document.filename_origin)
    jobs = resolver.resolve_all(document.rows)
    if not jobs and not problems.errors:
        problems.error(Origin(path), "has no jobs: add jobs:, rows: or matrix:")
    return Manifest(
        path=path,
        sha256=sha256,
        jobs=tuple(jobs),
        output_dir=document.output_dir,
        filename=document.filename,
    )


class _Document:
    """Pass 1: the top level of a manifest, gathering defaults, output settings and raw rows."""

    def __init__(self, path: Path, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self.defaults = RawRow(Origin(path))
        self.output_dir: Path | None = None
        self.filename = DEFAULT_FILENAME
        self.filename_origin = Origin(path)
        self.rows: list[RawRow] = []

    def add_yaml(self, top: Any) -> None:
        if not isinstance(top, YMap):
            # Never echo the content: the "manifest" may be a symlink to a secret file.
            kind = "a list" if isinstance(top, YList) else "a single value"
            raise fail(
                Origin(self.path, 1),
                f"should be a mapping with version, defaults and jobs; got {kind}",
            )
        for key in top:
            if key not in TOP_LEVEL_KEYS:
                hint = suggestion(key, TOP_LEVEL_KEYS) or suggestion(key)
                self.problems.error(self.origin(top, key), f"unknown top-level key {key!r}{hint}")
        self._version(top)
        defaults = top.get("defaults")
        if defaults is not None:
            if isinstance(defaults, YMap):
                self.defaults = row_from_mapping(defaults, self.path, self.problems, "defaults")
            else:
                self.problems.error(self.origin(top, "defaults"), "defaults: should be a mapping")
        self._output(top)
        # Rows come in the order their keys are written, so the file reads top to bottom.
        sections = {"jobs": self._jobs, "rows": self._rows, "matrix": self._matrix}
        for key in top:
            if key in sections:
                sections[key](top)

    def _version(self, top: YMap) -> None:
        if "version" not in top:
            self.problems.warning(Origin(self.path, top.line), "no version: assuming version: 1")
        elif str(top["version"]).strip() != "1":
            self.problems.error(
                self.origin(top, "version"),
                f"version: {shorten(top['version'])} is not supported; this avatarbatch reads "
                "version: 1",
            )

    def _output(self, top: YMap) -> None:
        output = top.get("output")
        if output is None:
            return
        if not isinstance(output, YMap):
            self.problems.error(self.origin(top, "output"), "output: should be a mapping")
            return
        for key, value in output.items():
            origin = self.origin(output, key)
            if key not in ("dir", "filename"):
                hint = suggestion(key, ("dir", "filename"))
                self.problems.error(origin, f"output: unknown key {key!r}{hint}")
            elif not isinstance(value, str) or not value.strip():
                self.problems.error(origin, f"output.{key}: should be text")
            elif key == "dir":
                self.output_dir = paths.resolve(self.path.parent, value)
            else:
                self.filename, self.filename_origin = value.strip(), origin

    def _jobs(self, top: YMap) -> None:
        jobs = top.get("jobs")
        if jobs is None:
            return
        if not isinstance(jobs, YList):
            self.problems.error(self.origin(top, "jobs"), "jobs: should be a list of mappings")
            return
        for item, line in zip(jobs, jobs.item_lines, strict=True):
            label = f"row {len(self.rows) + 1}"
            if isinstance(item, YMap):
                self.rows.append(row_from_mapping(item, self.path, self.problems, label))
            else:
                self.problems.error(
                    Origin(self.path, line),
                    f"should be a mapping of job fields, got {shorten(item)}",
                    job=label,
                )

    def _rows(self, top: YMap) -> None:
        spec = top.get("rows")
        if spec is None:
            return
        origin = self.origin(top, "rows")
        path_origin, path_field = origin, "rows"
        var_columns: list[str] = list(_declared_vars(self.defaults))
        if isinstance(spec, YMap):
            unknown = [key for key in spec if key not in ("path", "vars")]
            if unknown:
                self.problems.error(origin, f"rows: unknown key {unknown[0]!r}; use path and vars")
            listed = spec.get("vars", [])
            if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
                self.problems.error(origin, "rows.vars: should be a list of column names")
            else:
                var_columns.extend(listed)
            if "path" in spec:
                path_origin, path_field = self.origin(spec, "path"), "rows.path"
            spec = spec.get("path")
        if not isinstance(spec, str) or not spec.strip():
            self.problems.error(
                origin, "rows: should be the path of a CSV file (or path: and vars:)"
            )
            return
        csv_path = paths.resolve(self.path.parent, spec.strip())
        try:
            data = paths.read_regular_file(csv_path, MAX_CSV_BYTES)
        except paths.UnreadableFile as exc:
            # Said where the CSV is named: that line is what the user has to fix.
            self.problems.error(path_origin, f"{spec.strip()} {exc}", field=path_field)
            return
        try:
            self.add_csv(csv_path, decode(data, csv_path), var_columns)
        except ManifestError as exc:
            self.problems.items.extend(exc.problems)

    def add_csv(self, path: Path, text: str, var_columns: list[str] | tuple[str, ...]) -> None:
        reader = CsvReader(text, path, lambda column: is_csv_column(column, var_columns))
        columns = csv_columns(reader.header, reader.header_line, path, var_columns, self.problems)
        positions = [(reader.header.index(column), name) for column, name in columns.items()]
        # Row by row, and only once every row has been read: a bad one adds none of them.
        rows = [row_from_csv(record, path, positions) for record in reader]
        self.rows.extend(rows)

    def _matrix(self, top: YMap) -> None:
        spec = top.get("matrix")
        if spec is None:
            return
        blocks = spec if isinstance(spec, YList) else [spec]
        for block in blocks:
            label = f"row {len(self.rows) + 1}"
            if not isinstance(block, YMap):
                self.problems.error(
                    self.origin(top, "matrix"),
                    "matrix: should be a mapping of job fields (or a list of them)",
                )
                continue
            template = row_from_mapping(block, self.path, self.problems, label, allow_lists=True)
            self.rows.extend(expand_matrix(template, list_item_lines(block), self.problems, label))

    def origin(self, mapping: YMap, key: str) -> Origin:
        return Origin(self.path, mapping.key_lines.get(key, mapping.line))


def _declared_vars(defaults: RawRow) -> list[str]:
    return [
        name.removeprefix(VARS_PREFIX) for name in defaults.values if name.startswith(VARS_PREFIX)
    ]
