"""Manifests: YAML, CSV, or YAML pointing at a CSV, turned into fully resolved jobs.

Reading happens in three passes, each collecting problems instead of stopping:
1. the document: top-level keys, `defaults`, `output`, and the rows from `jobs:`, `rows:`
   (a CSV file) and `matrix:` (template rows expanded over the product of their lists);
2. each row: defaults merged in, `{placeholders}` filled, values checked by `JobFields`,
   media references classified and resolved against the folder of the file that named them;
3. across rows: unique ids and unique output file names.
Media files are not opened here; `preflight` probes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from avatarbatch import catalog
from avatarbatch.errors import ManifestError
from avatarbatch.manifest import paths
from avatarbatch.manifest.fields import (
    MAX_ID_LENGTH,
    SCALAR_FIELDS,
    TEMPLATED_FIELDS,
    JobFields,
    Safety,
    describe_error,
    is_valid_id,
    suggestion,
)
from avatarbatch.manifest.media import MediaRef, MediaRefError, parse_ref
from avatarbatch.manifest.problems import Origin, Problems, shorten
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
    MAX_MANIFEST_BYTES,
    YList,
    YMap,
    decode,
    fail,
    parse_csv,
    parse_yaml,
    read_text,
)
from avatarbatch.manifest.templates import TemplateError, output_name, render

TOP_LEVEL_KEYS = ("version", "defaults", "output", "jobs", "rows", "matrix")
CSV_SUFFIXES = (".csv", ".tsv")
DEFAULT_FILENAME = "{id}.{ext}"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Job:
    """One fully resolved job: what to send, where it came from, what to call its outputs."""

    id: str
    index: int  #: 1-based position in the manifest
    origin: Origin
    model: str
    portrait: MediaRef
    audio: MediaRef
    prompt: str | None
    output_format: str
    output_quality: int | None
    number_results: int
    ttl: int | None
    safety: Safety | None
    webhook_url: str | None
    upload_endpoint: str | None
    include_cost: bool
    vars: dict[str, str]
    outputs: tuple[str, ...]  #: file names under videos/, one per result

    @property
    def catalog_model(self) -> catalog.AvatarModel:
        return catalog.model_by_id(self.model)


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    sha256: str
    jobs: tuple[Job, ...]
    output_dir: Path | None  #: `output.dir`, resolved; None means the default
    filename: str


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
        text = read_text(path)
        if path.suffix.lower() in CSV_SUFFIXES:
            document = _Document(path, problems)
            document.add_csv(path, text, var_columns=())
        else:
            document = _Document(path, problems)
            document.add_yaml(parse_yaml(text, path, problems))
    except ManifestError as exc:
        problems.items.extend(exc.problems)
        return None
    jobs = _Resolver(document, problems).resolve_all()
    if not jobs and not problems.errors:
        problems.error(Origin(path), "has no jobs: add jobs:, rows: or matrix:")
    return Manifest(
        path=path,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
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
            data = paths.read_regular_file(csv_path, MAX_MANIFEST_BYTES)
        except paths.UnreadableFile as exc:
            # Said where the CSV is named: that line is what the user has to fix.
            self.problems.error(path_origin, f"{spec.strip()} {exc}", field=path_field)
            return
        try:
            self.add_csv(csv_path, decode(data, csv_path), var_columns)
        except ManifestError as exc:
            self.problems.items.extend(exc.problems)

    def add_csv(self, path: Path, text: str, var_columns: list[str] | tuple[str, ...]) -> None:
        table = parse_csv(text, path, lambda column: is_csv_column(column, var_columns))
        columns = csv_columns(table.header, table.header_line, path, var_columns, self.problems)
        self.rows.extend(row_from_csv(record, path, columns) for record in _consumed(table.rows))

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


class _Resolver:
    """Passes 2 and 3: rows to jobs, then checks that span rows."""

    def __init__(self, document: _Document, problems: Problems) -> None:
        self.document = document
        self.problems = problems
        # Big batches name a few files many times: classify and resolve each once, and let
        # the jobs share the MediaRef (parse_ref was 12% of a profiled 100,000-row rerun).
        self._refs: dict[tuple[str, str, Path], MediaRef] = {}

    def _ref(self, text: str, role: str, written_in: Path) -> MediaRef:
        """`text` as a media reference, relative to the file it was written in; parsed once.

        Keyed by that file's own Path object, shared by all its rows, whose hash Python
        caches: a new `.parent` per row cost 0.3 s of hashing on 100,000 rows.
        """
        key = (text, role, written_in)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = parse_ref(text, role, written_in.parent)
        return ref

    def resolve_all(self) -> list[Job]:
        jobs: list[Job] = []
        first_seen: dict[str, Origin] = {}
        outputs: dict[str, Job] = {}
        for index, raw in enumerate(_consumed(self.document.rows), start=1):
            job, job_id = self.resolve(raw.merged_over(self.document.defaults), index)
            # Rows with other errors count too, so a repeated id is reported in the same pass.
            if job_id is not None:
                if job_id in first_seen:
                    self.problems.error(
                        raw.origin,
                        f"duplicate id (also {first_seen[job_id].format()}); ids must be unique",
                        job=job_id,
                        field="id",
                    )
                    continue
                first_seen[job_id] = raw.origin
            if job is None:
                continue
            clash = next((name for name in job.outputs if name in outputs), None)
            if clash is not None:
                self.problems.error(
                    job.origin,
                    f"writes {clash!r}, as job {outputs[clash].id} does; make output.filename "
                    "unique per job",
                    job=job.id,
                )
                continue
            outputs.update(dict.fromkeys(job.outputs, job))
            jobs.append(job)
        return jobs

    def resolve(self, raw: RawRow, index: int) -> tuple[Job | None, str | None]:
        """The row as a job (None if it has errors), and its id whenever that is known."""
        label = f"row {index}"
        known_id: str | None = None
        values = dict(raw.values)
        job_vars = {
            name[5:]: _as_text(value)
            for name, value in values.items()
            if name.startswith("vars.") and value is not None
        }
        context: dict[str, object] = {**job_vars, **raw.axes, "index": index}
        ok = True
        templated: set[str] = set()  #: fields whose value templating changed
        for name in TEMPLATED_FIELDS:
            value = values.get(name)
            if not isinstance(value, str):
                continue
            if name != "id" and "id" not in context:
                context["id"] = self._job_id(values, raw, label)
            try:
                values[name] = render(value, context)
            except TemplateError as exc:
                self._error(raw, name, str(exc), label)
                ok = False
                continue
            if values[name] != value:
                templated.add(name)
            if name == "id":
                context["id"] = values["id"]
                if is_valid_id(values["id"].strip()):
                    label = known_id = values["id"].strip()
        if not ok:
            return None, known_id
        if values.get("id") is None:
            values["id"] = self._job_id(values, raw, label)
            known_id = values["id"] if is_valid_id(values["id"]) else None
        fields = self._validate(values, job_vars, raw, label, templated)
        if fields is None:
            return None, known_id
        return self._job(fields, raw, index), fields.id

    def _job_id(self, values: dict[str, Any], raw: RawRow, label: str) -> str:
        given = values.get("id")
        if given is not None:
            return _as_text(given)
        stems = []
        for role in ("portrait", "audio"):
            value = values.get(role)
            if isinstance(value, str) and value.strip() and "{" not in value:
                try:
                    stems.append(self._ref(value, role, raw.origin.file).stem)
                except MediaRefError:
                    return label.replace(" ", "-")
        derived = "-".join(stems) or label.replace(" ", "-")
        safe = "".join(
            ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "-" for ch in derived
        )
        return safe.strip(".")[:MAX_ID_LENGTH] or label.replace(" ", "-")

    def _validate(
        self,
        values: dict[str, Any],
        job_vars: dict[str, str],
        raw: RawRow,
        label: str,
        templated: set[str],
    ) -> JobFields | None:
        data: dict[str, Any] = {k: values[k] for k in SCALAR_FIELDS if values.get(k) is not None}
        safety = {
            k[7:]: values[k]
            for k in ("safety.check_content", "safety.mode")
            if values.get(k) is not None
        }
        if safety:
            data["safety"] = safety
        data["vars"] = job_vars
        try:
            return JobFields.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                name = ".".join(str(part) for part in error["loc"][:2])
                message = describe_error(error)
                if name in templated and error["type"] == "string_too_long":
                    message += ", counted after templating"
                self._error(raw, name, message, label)
            return None

    def _job(self, fields: JobFields, raw: RawRow, index: int) -> Job | None:
        refs: dict[str, MediaRef] = {}
        for role in ("portrait", "audio"):
            origin = raw.origins.get(role, raw.origin)
            try:
                refs[role] = self._ref(getattr(fields, role), role, origin.file)
            except MediaRefError as exc:
                self._error(raw, role, f"{shorten(getattr(fields, role))}: {exc}", fields.id)
        ext = fields.output_format.lower()
        try:
            outputs = output_name(
                self.document.filename,
                {**fields.vars, "id": fields.id, "index": index, "ext": ext},
                fields.number_results,
            )
        except TemplateError as exc:
            self.problems.error(
                self.document.filename_origin, str(exc), job=fields.id, field="output.filename"
            )
            return None
        if len(refs) < 2:
            return None
        return Job(
            id=fields.id,
            index=index,
            origin=raw.origin,
            model=fields.model,
            portrait=refs["portrait"],
            audio=refs["audio"],
            prompt=fields.prompt,
            output_format=fields.output_format,
            output_quality=fields.output_quality,
            number_results=fields.number_results,
            ttl=fields.ttl,
            safety=fields.safety,
            webhook_url=fields.webhook_url,
            upload_endpoint=fields.upload_endpoint,
            include_cost=fields.include_cost,
            vars=fields.vars,
            outputs=tuple(outputs),
        )

    def _error(self, raw: RawRow, name: str, message: str, job: str) -> None:
        origin = raw.origins.get(name, raw.origin)
        self.problems.error(origin, message, job=job, field=name)


def _consumed(items: list[T]) -> Iterator[T]:
    """Yield and drop each item in order, so one pass never holds a big list twice over.

    Rows become RawRows become Jobs; dropping each as it is converted lowers the peak
    memory of a 100,000-row manifest by the size of the stage before.
    """
    items.reverse()
    while items:
        yield items.pop()


def _declared_vars(defaults: RawRow) -> list[str]:
    return [name[5:] for name in defaults.values if name.startswith("vars.")]


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
