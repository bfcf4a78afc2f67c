"""Passes 2 and 3 of reading a manifest: each raw row to a `Job`, then the checks across rows.

A row gets the defaults under it, its `{placeholders}` filled, its values checked by `JobFields`
and its media references resolved against the folder of the file that named them; then ids and
output file names must be unique across the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from avatarbatch.manifest.fields import (
    MAX_ID_LENGTH,
    SCALAR_FIELDS,
    TEMPLATED_FIELDS,
    VARS_PREFIX,
    JobFields,
    describe_error,
    is_valid_id,
)
from avatarbatch.manifest.job import Job
from avatarbatch.manifest.media import MediaRef, MediaRefError, parse_ref
from avatarbatch.manifest.problems import Origin, Problems, shorten
from avatarbatch.manifest.quick import QuickCheck
from avatarbatch.manifest.rows import RawRow, consumed
from avatarbatch.manifest.templates import DEFAULT_FILENAME, TemplateError, output_name, render


class Resolver:
    """Passes 2 and 3: rows to jobs, then checks that span rows."""

    def __init__(
        self, problems: Problems, defaults: RawRow, filename: str, filename_origin: Origin
    ) -> None:
        self.problems = problems
        self.defaults = defaults  #: the document's `defaults:`, under every row
        self.filename = filename  #: `output.filename`, and where it was written
        self.filename_origin = filename_origin
        # Big batches name a few files many times: classify and resolve each once, and let
        # the jobs share the MediaRef (parsing was a large share of a big rerun's time).
        self._refs: dict[tuple[str, str, Path], MediaRef] = {}
        self._quick = QuickCheck()

    def _ref(self, text: str, role: str, written_in: Path) -> MediaRef:
        """`text` as a media reference, relative to the file it was written in; parsed once.

        Keyed by that file's own Path object, shared by all its rows, whose hash Python
        caches: hashing a new `.parent` per row is slow on a big manifest.
        """
        key = (text, role, written_in)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = parse_ref(text, role, written_in.parent)
        return ref

    def resolve_all(self, rows: list[RawRow]) -> list[Job]:
        """The rows that resolve cleanly, as jobs; `rows` is emptied on the way."""
        jobs: list[Job] = []
        first_seen: dict[str, Origin] = {}
        outputs: dict[str, Job] = {}
        for index, raw in enumerate(consumed(rows), start=1):
            job, job_id = self.resolve(raw.merged_over(self.defaults), index)
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
            clash = None
            for name in job.outputs:
                if name in outputs:
                    clash = name
                    break
            if clash is not None:
                self.problems.error(
                    job.origin,
                    f"writes {clash!r}, as job {outputs[clash].id} does; make output.filename "
                    "unique per job",
                    job=job.id,
                )
                continue
            for name in job.outputs:
                outputs[name] = job
            jobs.append(job)
        return jobs

    def resolve(self, raw: RawRow, index: int) -> tuple[Job | None, str | None]:
        """The row as a job (None if it has errors), and its id whenever that is known."""
        label = f"row {index}"
        known_id: str | None = None
        values = dict(raw.values)
        job_vars = {
            name[_VARS_AT:]: value if type(value) is str else as_text(value)
            for name, value in values.items()
            if name.startswith(VARS_PREFIX) and value is not None
        }
        ok = True
        templated: set[str] = set()  #: fields whose value templating changed
        if _braced(values):
            context: dict[str, object] = {**job_vars, **raw.axes, "index": index}
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
        else:
            # Nothing to fill in (most rows of a big batch): what the loop concludes then.
            given = values.get("id")
            if isinstance(given, str) and is_valid_id(given.strip()):
                label = known_id = given.strip()
        if not ok:
            return None, known_id
        if values.get("id") is None:
            values["id"] = self._job_id(values, raw, label)
            known_id = values["id"] if is_valid_id(values["id"]) else None
        fields = self._validate(values, job_vars, raw, label, templated)
        if fields is None:
            return None, known_id
        return self._job(fields, raw, index), fields["id"]

    def _job_id(self, values: dict[str, Any], raw: RawRow, label: str) -> str:
        given = values.get("id")
        if given is not None:
            return as_text(given)
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
    ) -> dict[str, Any] | None:
        """The row's checked field values, as `dict(JobFields)` gives them; None on errors."""
        data: dict[str, Any] = {k: v for k in SCALAR_FIELDS if (v := values.get(k)) is not None}
        safety = {
            k[7:]: values[k]
            for k in ("safety.check_content", "safety.mode")
            if values.get(k) is not None
        }
        if safety:
            data["safety"] = safety
        data["vars"] = job_vars
        quick = self._quick.values(data)
        if quick is not None:
            return quick
        try:
            return dict(JobFields.model_validate(data))
        except ValidationError as exc:
            for error in exc.errors():
                name = ".".join(str(part) for part in error["loc"][:2])
                message = describe_error(error)
                if name in templated and error["type"] == "string_too_long":
                    message += ", counted after templating"
                self._error(raw, name, message, label)
            return None

    def _job(self, fields: dict[str, Any], raw: RawRow, index: int) -> Job | None:
        refs: dict[str, MediaRef] = {}
        job_id: str = fields["id"]
        for role in ("portrait", "audio"):
            origin = raw.origins.get(role, raw.origin)
            try:
                refs[role] = self._ref(fields[role], role, origin.file)
            except MediaRefError as exc:
                self._error(raw, role, f"{shorten(fields[role])}: {exc}", job_id)
        ext = fields["output_format"].lower()
        results: int = fields["number_results"]
        try:
            if self.filename == DEFAULT_FILENAME and results == 1 and job_id[0] != ".":
                # What output_name makes of it: a valid id is a safe file name (but a hidden one).
                outputs: list[str] = [f"{job_id}.{ext}"]
            else:
                values = {**fields["vars"], "id": job_id, "index": index, "ext": ext}
                outputs = output_name(self.filename, values, results)
        except TemplateError as exc:
            self.problems.error(self.filename_origin, str(exc), job=job_id, field="output.filename")
            return None
        if len(refs) < 2:
            return None
        return Job.from_values(
            fields,
            portrait=refs["portrait"],
            audio=refs["audio"],
            index=index,
            origin=raw.origin,
            outputs=tuple(outputs),
        )

    def _error(self, raw: RawRow, name: str, message: str, job: str) -> None:
        origin = raw.origins.get(name, raw.origin)
        self.problems.error(origin, message, job=job, field=name)


_VARS_AT = len(VARS_PREFIX)


def _braced(values: dict[str, Any]) -> bool:
    """Whether templating may change a value (`render` leaves text without braces alone)."""
    for name in TEMPLATED_FIELDS:
        value = values.get(name)
        if isinstance(value, str) and ("{" in value or "}" in value):
            return True
    return False


def as_text(value: Any) -> str:
    """A scalar from YAML or CSV as the text a var or an id holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
