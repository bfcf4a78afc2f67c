"""failures.yaml: a manifest of just the failed rows, runnable where it is written."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from avatarbatch.manifest.document import Job, Manifest
from avatarbatch.manifest.fields import TEMPLATED_FIELDS
from avatarbatch.manifest.media import MediaRef

RETRY_DIR = "retry"  #: where failures.yaml writes, relative to itself


def failures_manifest(jobs: Iterable[Job], manifest: Manifest, output_dir: Path) -> str:
    """A manifest of just these jobs, runnable where it is written.

    Paths are made relative to the output folder so the file still resolves from its new
    place; it writes into `retry/` beside it, with a state of its own, so running it as it is
    runs exactly these rows (rerunning the original with --retry-failed is the alternative).
    """
    document = {
        "version": 1,
        "output": {"dir": RETRY_DIR, "filename": manifest.filename},
        "jobs": [_row(job, output_dir) for job in jobs],
    }
    header = (
        f"# The failed rows of {manifest.path.name}, written by avatarbatch.\n"
        "# Run it as it is: avatarbatch run failures.yaml\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _row(job: Job, output_dir: Path) -> dict[str, Any]:
    """The job's checked values as a manifest row: every field it has, in `JobFields` order."""
    row = job.as_fields().model_dump(exclude_none=True)
    row.update(portrait=_ref(job.portrait, output_dir), audio=_ref(job.audio, output_dir))
    for name in TEMPLATED_FIELDS:
        if isinstance(row.get(name), str):
            row[name] = _literal(row[name])
    if not row["vars"]:
        del row["vars"]
    return row


def _ref(ref: MediaRef, output_dir: Path) -> str:
    if not ref.is_local:
        return ref.value
    return os.path.relpath(ref.value, os.path.abspath(output_dir))  # noqa: PTH100


def _literal(text: str) -> str:
    """Values are already filled in: keep any brace from being read as a placeholder again."""
    return text.replace("{", "{{").replace("}", "}}")
