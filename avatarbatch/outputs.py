"""The output folder as avatarbatch owns it: whose files are whose, and whether they still hold.

avatarbatch writes and deletes only files it wrote itself, as recorded in the state file's
`files` table (paths relative to the output folder, so a moved folder keeps every record).
Before a run writes anything it makes sure that:
- the folder holds nothing it did not write (a user's own `index.html` or `videos/a.mp4`
  would otherwise be overwritten or deleted);
- no job's output name is a file another job owns (one paid video written over another);
- every done job's videos are still there, unchanged; a missing or changed one is fetched
  again from its result URL, which costs nothing while the URL lives.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from avatarbatch.diagnostics import Problems
from avatarbatch.errors import UsageError
from avatarbatch.gallery import PAGES_DIR
from avatarbatch.manifest import Job
from avatarbatch.report import REPORT_FILES
from avatarbatch.state import JobOverview, JobStatus, OwnedFile, StateStore

VIDEOS = "videos"
SANDBOX_DIR = ".sandbox"  #: the embedded sandbox's renders, when `run --sandbox` is used
#: Names of our own temporary files: `.NAME.part` (reports) and `.NAME.XXXXXXXX.part` (videos).
PART_SUFFIX = ".part"
FOREIGN_SHOWN = 5  #: foreign files named in the refusal; the rest are counted
HASH_CHUNK = 1024 * 1024


def take_over(store: StateStore, out: Path, path: Path, *, write: bool = True) -> None:
    """Make sure the output folder is ours to write (adopting what a state file from before
    the `files` record wrote there), and (`write`) tidy what a killed run left."""
    legacy = [name for name in REPORT_FILES if (out / name).is_file()]
    legacy += [p.relative_to(out).as_posix() for p in (out / PAGES_DIR).glob("page-*.html")]
    store.relativize_outputs(out, relative_output, adopt=legacy)
    refuse_foreign(out, store, path)
    if write:
        claim_folder(out, store)
        clean_partials(out)


def relative_output(out: Path, stored: str) -> str:
    """A stored output path as a path relative to the output folder (POSIX style).

    State files written before paths were stored relative hold absolute paths or paths
    relative to the working folder of that run; those inside `out` are translated.
    """
    path = Path(stored)
    if not path.is_absolute():
        if not (out / path).exists() and path.exists():
            path = path.absolute()
        else:
            return path.as_posix()
    for base in (out.absolute(), out.resolve()):
        with contextlib.suppress(ValueError):
            return path.relative_to(base).as_posix()
    with contextlib.suppress(ValueError, OSError):
        return path.resolve().relative_to(out.resolve()).as_posix()
    return path.as_posix()


def _ours_by_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(PART_SUFFIX)


def _state_names(state_path: Path) -> set[str]:
    name = state_path.name
    return {name, f"{name}-wal", f"{name}-shm", f"{name}-journal", f"{name}.lock"}


def foreign_files(out: Path, owned: Mapping[str, object], state_path: Path) -> list[str]:
    """Files under `out` that avatarbatch did not write (relative paths, sorted).

    Ours: the recorded files, our temporary files, the state file (and its WAL, lock) when it
    lives here, the embedded sandbox's folder, and any folder that holds a state file of its
    own (a nested run, e.g. `retry/` of failures.yaml, owns what is in it).
    """
    if not out.is_dir():
        return []
    state_dir = state_path.parent.resolve() if state_path.parent.exists() else None
    found: list[str] = []
    root = out.resolve()
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        relative_dir = here.relative_to(root)
        if here != root and "state.sqlite" in names:
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not (here == root and d == SANDBOX_DIR))
        state_names = _state_names(state_path) if here == state_dir else set()
        for name in sorted(names):
            relative = (relative_dir / name).as_posix()
            if relative in owned or name in state_names or _ours_by_name(name):
                continue
            found.append(relative)
    return found


OUTPUT_DIR_KEY = "output_dir"  #: meta: the folder the `files` records belong to


def refuse_foreign(out: Path, store: StateStore | None, state_path: Path) -> None:
    """Stop before anything is written into a folder that holds someone else's files."""
    owned = store.owned_files() if store is not None and _records_apply(out, store) else {}
    foreign = foreign_files(out, owned, state_path)
    if not foreign:
        return
    shown = ", ".join(foreign[:FOREIGN_SHOWN])
    more = f" and {len(foreign) - FOREIGN_SHOWN} more" if len(foreign) > FOREIGN_SHOWN else ""
    raise UsageError(
        f"the output folder {out} holds files avatarbatch did not write ({shown}{more}); "
        "it writes and deletes report files and videos there, so it must be empty, new, or "
        "one of its own: choose another folder with --out (or output.dir), or move them away"
    )


def _records_apply(out: Path, store: StateStore) -> bool:
    """Do the state's file records describe `out`? Yes when the state file lives inside it (a
    moved folder takes its state along), or when `out` is the folder they were made for. A
    state kept elsewhere and pointed at another folder owns nothing there."""
    here = out.resolve()
    if store.path.resolve().is_relative_to(here):
        return True
    recorded = store.meta(OUTPUT_DIR_KEY)
    return recorded is None or recorded == str(here)


def folder_of(store: StateStore, fallback: Path) -> Path:
    """The output folder this state file describes, for commands given no --out: the one
    its last run wrote to, or the state's own folder if that one is gone (moved along with
    the state inside it), or `fallback` for a state that never ran."""
    recorded = store.meta(OUTPUT_DIR_KEY)
    if recorded is None:
        return fallback
    return Path(recorded) if Path(recorded).is_dir() else store.path.parent


def claim_folder(out: Path, store: StateStore) -> None:
    """Remember which folder this state's file records belong to (after the foreign check)."""
    here = str(out.resolve())
    if store.meta(OUTPUT_DIR_KEY) != here:
        store.set_meta(OUTPUT_DIR_KEY, here)


def clean_partials(out: Path) -> int:
    """Remove temporary files a killed run left behind (the caller holds the state lock):
    beside the reports, and anywhere under videos/ and gallery/ (file names may hold
    folders, and a partial download sits beside its final name)."""
    candidates = [entry for entry in out.glob(".*" + PART_SUFFIX) if entry.is_file()]
    for folder in (out / VIDEOS, out / PAGES_DIR):
        candidates += [p for p in folder.rglob(".*" + PART_SUFFIX) if p.is_file()]
    for entry in candidates:
        entry.unlink(missing_ok=True)
    return len(candidates)


# --- names -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rename:
    job_id: str
    old: str  #: relative to the output folder
    new: str


def stored_outputs(overview: Mapping[str, JobOverview], out: Path) -> dict[str, list[str]]:
    """Each job's recorded video paths, relative to the output folder."""
    result: dict[str, list[str]] = {}
    for job_id, record in overview.items():
        if record.outputs_json != "[]":
            result[job_id] = [relative_output(out, o["path"]) for o in record.outputs]
    return result


def check_names(
    jobs: Iterable[Job], owners: Mapping[str, str | None], stored: Mapping[str, list[str]]
) -> Problems:
    """A job whose output name is a file another job still owns is refused, located."""
    problems = Problems()
    jobs = list(jobs)
    final = {job.id: {f"{VIDEOS}/{name}" for name in job.outputs} for job in jobs}
    for job in jobs:
        for name in job.outputs:
            path = f"{VIDEOS}/{name}"
            owner = owners.get(path)
            if owner is None or owner == job.id:
                continue
            # The owner keeps the file if its row still names it, or if it left the manifest.
            keeps = path in final[owner] if owner in final else path in stored.get(owner, [])
            if keeps:
                where = "a job no longer in the manifest" if owner not in final else "job"
                problems.error(
                    job.origin,
                    f"the output {path} already holds the paid video of {where} {owner!r}; "
                    "give this row another file name (output.filename), or move that file away",
                    job=job.id,
                    field="filename",
                )
    return problems


def plan_renames(jobs: Iterable[Job], stored: Mapping[str, list[str]]) -> list[Rename]:
    """Videos whose job now names them differently (its vars changed): renamed, not re-paid."""
    renames = []
    for job in jobs:
        for old, name in zip(stored.get(job.id, []), job.outputs, strict=False):
            new = f"{VIDEOS}/{name}"
            if old != new:
                renames.append(Rename(job.id, old, new))
    return renames


def apply_renames(renames: list[Rename], out: Path, store: StateStore) -> None:
    """Move each video to its new name through a temporary one (so swaps work) and record it.

    A crash half-way leaves a recorded path whose file is elsewhere: the next run finds it
    missing and fetches it again from its result URL, at no cost.
    """
    staged: list[tuple[Rename, Path]] = []
    for rename in renames:
        source = out / rename.old
        if not source.is_file():
            continue
        temporary = source.with_name(f".{source.name}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}")
        source.replace(temporary)
        staged.append((rename, temporary))
    for rename, temporary in staged:
        target = out / rename.new
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.replace(target)
    by_job: dict[str, dict[str, str]] = {}
    for rename, _ in staged:
        by_job.setdefault(rename.job_id, {})[rename.old] = rename.new
    if by_job:
        store.rename_outputs(by_job)


# --- verification on rerun ---------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def damaged_videos(
    overview: Mapping[str, JobOverview],
    owned: Mapping[str, OwnedFile],
    out: Path,
    only: Iterable[str] | None = None,
) -> dict[str, str]:
    """Done jobs whose video is missing or no longer what was downloaded: id -> reason.

    Cheap for a large batch: a stat per file; the hash is read again only when the size
    matches but the modification time moved.
    """
    ids = overview.keys() if only is None else only
    damaged: dict[str, str] = {}
    for job_id in ids:
        record = overview.get(job_id)
        if record is None or record.status is not JobStatus.DONE or record.outputs_json == "[]":
            continue
        for output in record.outputs:
            relative = relative_output(out, output["path"])
            reason = _damage(out / relative, output, owned.get(relative))
            if reason:
                damaged[job_id] = f"{relative} {reason}"
                break
    return damaged


def _damage(path: Path, output: Mapping[str, object], known: OwnedFile | None) -> str | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if output.get("bytes") is not None and stat.st_size != output["bytes"]:
        return f"has {stat.st_size:,} bytes, not the {output['bytes']:,} downloaded"
    if known is not None and known.mtime_ns == stat.st_mtime_ns:
        return None
    if output.get("sha256") and file_sha256(path) != output["sha256"]:
        return "was changed since it was downloaded"
    return None
