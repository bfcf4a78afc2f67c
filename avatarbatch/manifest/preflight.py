"""Preflight: everything that can be checked before a cent is spent, reported in one pass.

Reads the manifest, then probes every distinct local or inline media file once, however many
jobs share it. A bad file is reported once, at the first job that uses it, with a count of the
others, so 300 rows sharing one broken portrait give one error, not 300.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from avatarbatch import catalog
from avatarbatch.manifest.document import read_manifest
from avatarbatch.manifest.job import Job, Manifest
from avatarbatch.manifest.media import (
    MediaInfo,
    MediaKind,
    MediaRef,
    ProbeCache,
    ProbeError,
    Prober,
)
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


def preflight(
    path: Path,
    prober: Prober | None = None,
    *,
    cache: Callable[[Manifest], ProbeCache | None] | None = None,
) -> Preflight:
    """Check the manifest at `path` and every local file it names.

    `cache`: gives the probes earlier runs of this manifest made (the engine's, from the
    state file the manifest leads to), for a Prober made here.
    """
    problems = Problems()
    manifest = read_manifest(path, problems)
    result = Preflight(manifest, problems)
    if manifest is not None:
        if prober is None:
            prober = Prober(None if cache is None else cache(manifest))
        _check_media(manifest.jobs, prober, result)
    return result


def _check_media(jobs: tuple[Job, ...], prober: Prober, result: Preflight) -> None:
    first_user: dict[tuple[str, str], Job] = {}
    users: Counter[tuple[str, str]] = Counter()
    unmeasured, remote = 0, None  # jobs with audio of unknown length, and the first of them
    for role in ("portrait", "audio"):
        # Jobs share their MediaRef objects: count each one's users (in C), find its first
        # user (usually among the first rows), and look at each distinct reference once.
        get = attrgetter(role)
        counts = Counter(map(id, map(get, jobs)))
        firsts: dict[int, Job] = {}
        for job in jobs:
            if id(get(job)) not in firsts:
                firsts[id(get(job))] = job
                if len(firsts) == len(counts):
                    break
        for ref_id, job in firsts.items():
            ref, count = get(job), counts[ref_id]
            if role == "audio" and not ref.is_local:
                unmeasured += count
                remote = job if remote is None or job.index < remote.index else remote
            if ref.is_local or ref.is_inline:
                key = (ref.value, role)
                users[key] += count
                if key not in first_user or job.index < first_user[key].index:
                    first_user[key] = job
    for key, first in sorted(first_user.items(), key=lambda item: item[1].index):
        role = key[1]
        ref = getattr(first, role)
        try:
            info = prober.probe(ref, role)
        except ProbeError as exc:
            using = users[key]
            others = f" (also used by {plural(using - 1, 'other job')})" if using > 1 else ""
            result.problems.error(
                first.origin, f"{_describe(ref)} {exc}{others}", job=first.id, field=role
            )
            continue
        result.media[ref.value] = info
        _warn_about(ref, role, info, first, result.problems)
    if remote is not None:
        result.problems.warning(
            remote.origin,
            f"{plural(unmeasured, 'job')} {'uses' if unmeasured == 1 else 'use'} remote "
            "or stored audio: its length, and so the cost, is unknown until the video is rendered",
            job=remote.id,
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
