"""Preflight: everything that can be checked before a cent is spent, reported in one pass.

Reads the manifest, then probes every distinct local or inline media file once, however many
jobs share it. A bad file is reported once, at the first job that uses it, with a count of the
others, so 300 rows sharing one broken portrait give one error, not 300.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from avatarbatch import catalog
from avatarbatch.manifest.document import read_manifest
from avatarbatch.manifest.job import Job, Manifest
from avatarbatch.manifest.media import MediaInfo, MediaKind, MediaRef, ProbeError, Prober
from avatarbatch.manifest.problems import Problems, plural

EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg"},
    "PNG": {".png"},
    "MP3": {".mp3"},
    "WAV": {".wav", ".wave"},
    "M4A": {".m4a", ".mp4"},
    "AAC": {".aac"},
}


@dataclass
class Preflight:
    """The outcome of checking a manifest: the manifest (None if unreadable), problems, media."""

    manifest: Manifest | None
    problems: Problems
    media: dict[str, MediaInfo] = field(default_factory=dict)  #: by MediaRef.value

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems.errors


def preflight(path: Path, prober: Prober | None = None) -> Preflight:
    """Check the manifest at `path` and every local file it names."""
    problems = Problems()
    manifest = read_manifest(path, problems)
    result = Preflight(manifest, problems)
    if manifest is not None:
        _check_media(manifest.jobs, prober or Prober(), result)
    return result


def _check_media(jobs: tuple[Job, ...], prober: Prober, result: Preflight) -> None:
    users: dict[tuple[str, str], list[Job]] = defaultdict(list)
    unmeasured: list[Job] = []
    for job in jobs:
        for role, ref in (("portrait", job.portrait), ("audio", job.audio)):
            if ref.is_local or ref.is_inline:
                users[(ref.value, role)].append(job)
        if not job.audio.is_local:
            unmeasured.append(job)
    for (_, role), using in users.items():
        first = using[0]
        ref = getattr(first, role)
        try:
            info = prober.probe(ref, role)
        except ProbeError as exc:
            others = (
                f" (also used by {plural(len(using) - 1, 'other job')})" if len(using) > 1 else ""
            )
            result.problems.error(
                first.origin, f"{_describe(ref)} {exc}{others}", job=first.id, field=role
            )
            continue
        result.media[ref.value] = info
        _warn_about(ref, role, info, first, result.problems)
    if unmeasured:
        result.problems.warning(
            unmeasured[0].origin,
            f"{plural(len(unmeasured), 'job')} {'uses' if len(unmeasured) == 1 else 'use'} remote "
            "or stored audio: its length, and so the cost, is unknown until the video is rendered",
            job=unmeasured[0].id,
            field="audio",
        )


def _warn_about(ref: MediaRef, role: str, info: MediaInfo, job: Job, problems: Problems) -> None:
    if ref.kind is MediaKind.PATH:
        suffix = Path(ref.value).suffix.lower()
        if suffix and suffix not in EXTENSIONS.get(info.format, set()):
            problems.warning(
                job.origin,
                f"{ref.written} is {info.format} inside, despite its {suffix} extension",
                job=job.id,
                field=role,
            )
    if info.width and info.height and max(info.width, info.height) > catalog.IMAGE_STORED_MAX_SIDE:
        problems.warning(
            job.origin,
            f"{_describe(ref)} is {info.width}x{info.height} px; Runware stores images at most "
            f"{catalog.IMAGE_STORED_MAX_SIDE} px on the long side and will scale it down",
            job=job.id,
            field=role,
        )


def _describe(ref: MediaRef) -> str:
    return "the inline image" if ref.is_inline else ref.written
