"""What reading a manifest produces: `Job`s, each one row checked and resolved, in a `Manifest`.

A job is built from the `JobFields` that checked its row (`Job.from_fields`: every field by
name, none copied by hand) plus what reading adds: its place in the manifest, its media
references resolved against the file that named them, and the names of its output files.
`Job.as_fields` goes back, for what is written as manifest rows again (failures.yaml).
A Job keeps plain slots rather than the pydantic model itself: a big manifest holds one per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarbatch import catalog
from avatarbatch.manifest.fields import JobFields, Safety
from avatarbatch.manifest.media import MediaRef
from avatarbatch.manifest.problems import Origin


@dataclass(frozen=True, slots=True)
class Job:
    """One fully resolved job: what to send, where it came from, what to call its outputs."""

    # JobFields' fields, in its order (`from_fields` fails at once if one is missing here)
    id: str
    portrait: MediaRef  #: resolved against the folder of the file that named it
    audio: MediaRef
    prompt: str | None
    model: str  #: the full model id
    output_format: str
    output_quality: int | None
    number_results: int
    ttl: int | None
    safety: Safety | None
    webhook_url: str | None
    upload_endpoint: str | None
    include_cost: bool
    vars: dict[str, str]
    # what reading adds
    index: int  #: 1-based position in the manifest
    origin: Origin
    outputs: tuple[str, ...]  #: file names under videos/, one per result

    @classmethod
    def from_fields(
        cls,
        fields: JobFields,
        *,
        portrait: MediaRef,
        audio: MediaRef,
        index: int,
        origin: Origin,
        outputs: tuple[str, ...],
    ) -> Job:
        """The job of a checked row. `dict(fields)` is pydantic's shallow dump: a nested
        Safety stays a model."""
        return cls.from_values(
            dict(fields),
            portrait=portrait,
            audio=audio,
            index=index,
            origin=origin,
            outputs=outputs,
        )

    @classmethod
    def from_values(
        cls,
        values: dict[str, Any],
        *,
        portrait: MediaRef,
        audio: MediaRef,
        index: int,
        origin: Origin,
        outputs: tuple[str, ...],
    ) -> Job:
        """The job of checked field values, as `dict(JobFields)` gives them; `values` is
        used up (its media text replaced by the references)."""
        values.update(portrait=portrait, audio=audio)
        return cls(**values, index=index, origin=origin, outputs=outputs)

    def as_fields(self) -> JobFields:
        """The JobFields this job was built from (media as written), not checked again."""
        values = {name: getattr(self, name) for name in JobFields.model_fields}
        values.update(portrait=self.portrait.written, audio=self.audio.written)
        return JobFields.model_construct(**values)

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
