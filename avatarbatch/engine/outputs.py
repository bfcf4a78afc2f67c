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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from avatarbatch.errors import UsageError
from avatarbatch.manifest.document import Job
from avatarbatch.manifest.problems import Problems
from avatarbatch.report.files import REPORT_FILES
from avatarbatch.report.gallery import PAGES_DIR
from avatarbatch.state.store import JobStatus, RecordedOutput, StateStore

VIDEOS = "videos"
SANDBOX_DIR = ".sandbox"  #: the embedded sandbox's renders, when `run --sandbox` is used
#: Names of our own temporary files: `.NAME.part` (reports) and `.NAME.XXXXXXXX.part` (videos).
PART_SUFFIX = ".part"
FOREIGN_SHOWN = 5  #: foreign files named in the refusal; the rest are counted
HASH_CHUNK = 1024 * 1024


def take_over(
    store: StateStore, out: Path, path: Path, *, write: bool = True
) -> dict[str, str | None]:
    """Make sure the output folder is ours to write (adopting what a state file from before
    the `files` record wrote there), and (`write`) tidy what a killed run left. Returns the
    owner of every recorded file, as read for the check."""
    legacy = [name for name in REPORT_FILES if (out / name).is_file()]
    legacy += [p.relative_to(out).as_posix() for p in (out / PAGES_DIR).glob("page-*.html")]
    store.relativize_outputs(out, legacy_relative, adopt=legacy)
    owners = refuse_foreign(out, store, path)
    if write:
        claim_folder(out, store)
        clean_partials(out)
    return owners


def relative_output(out: Path, stored: str) -> str:
    """A stored output path as a path relative to the output folder (POSIX style).

    Paths are stored relative to the output folder; an absolute one (a state file from
    before, whose path could not be translated) is made relative when it lies inside `out`.
    No system call for a relative path: a 100,000-job rerun reads every one of them.
    """
    if not os.path.isabs(stored):  # noqa: PTH117 - a string test, for speed
        return stored
    path = Path(stored)
    for base in (out.absolute(), out.resolve()):
        with contextlib.suppress(ValueError):
            return path.relative_to(base).as_posix()
    with contextlib.suppress(ValueError, OSError):
        return path.resolve().relative_to(out.resolve()).as_posix()
    return path.as_posix()


def legacy_relative(out: Path, stored: str) -> str:
    """`relative_output` for a state file written before paths were stored relative, once:
    a relative path then meant relative to the working folder of the run that wrote it."""
    path = Path(stored)
    if not path.is_absolute() and not (out / path).exists() and path.exists():
        return relative_output(out, str(path.absolute()))
    return relative_output(out, stored)


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
    # Strings, not Paths, per file: the videos folder of a large batch holds 100,000 of them.
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        prefix = "" if here == root else here.relative_to(root).as_posix() + "/"
        if prefix and "state.sqlite" in names:
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not (not prefix and d == SANDBOX_DIR))
        state_names = _state_names(state_path) if here == state_dir else set()
        for name in sorted(names):
            relative = prefix + name
            if relative in owned or name in state_names or _ours_by_name(name):
                continue
            found.append(relative)
    return found


OUTPUT_DIR_KEY = "output_dir"  #: meta: the folder the `files` records belong to


def refuse_foreign(out: Path, store: StateStore | None, state_path: Path) -> dict[str, str | None]:
    """Stop before anything is written into a folder that holds someone else's files;
    returns the owner of every file the state records there."""
    owned = store.owner_map() if store is not None and _records_apply(out, store) else {}
    foreign = foreign_files(out, owned, state_path)
    if not foreign:
        return owned
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


def check_names(
    jobs: Sequence[Job], owners: Mapping[str, str | None], recorded: Sequence[RecordedOutput]
) -> Problems:
    """A job whose output name is a file another job still owns is refused, located."""
    problems = Problems()
    by_id: dict[str, Job] | None = None  # built only if some name is owned by another job
    for job in jobs:
        for name in job.outputs:
            path = f"{VIDEOS}/{name}"
            owner = owners.get(path)
            if owner is None or owner == job.id:
                continue
            by_id = by_id or {j.id: j for j in jobs}
            # The owner keeps the file if its row still names it, or if it left the manifest.
            if owner in by_id:
                keeps = name in by_id[owner].outputs
            else:
                keeps = any(o.job_id == owner and o.path == path for o in recorded)
            if keeps:
                where = "job" if owner in by_id else "a job no longer in the manifest"
                problems.error(
                    job.origin,
                    f"the output {path} already holds the paid video of {where} {owner!r}; "
                    "give this row another file name (output.filename), or move that file away",
                    job=job.id,
                    field="filename",
                )
    return problems


def plan_renames(
    jobs: Iterable[Job], recorded: Iterable[RecordedOutput], out: Path
) -> list[Rename]:
    """Videos whose job now names them differently (its vars changed): renamed, not re-paid."""
    names = {job.id: job.outputs for job in jobs}
    renames = []
    for output in recorded:
        wanted = names.get(output.job_id, ())
        if output.index >= len(wanted):
            continue
        old, new = relative_output(out, output.path), f"{VIDEOS}/{wanted[output.index]}"
        if old != new:
            renames.append(Rename(output.job_id, old, new))
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


@dataclass
class Damage:
    """What a look at the done jobs' videos found."""

    damaged: dict[str, str]  #: job id -> what is wrong with (one of) its videos
    unchanged: list[tuple[str, int]]  #: (path, mtime) of files hashed again and found intact


def damaged_videos(recorded: Iterable[RecordedOutput], out: Path) -> Damage:
    """Done jobs whose video is missing or no longer what was downloaded.

    Cheap for a large batch: a stat per file; the hash is read again only when the size
    matches but the modification time moved (and the new mtime is then remembered).
    """
    found = Damage({}, [])
    base = os.path.join(out, "")  # noqa: PTH118 - the folder with its separator
    for output in recorded:
        if output.status != JobStatus.DONE or output.job_id in found.damaged:
            continue
        relative = relative_output(out, output.path)
        reason = _damage(base, relative, output, found)
        if reason:
            found.damaged[output.job_id] = f"{relative} {reason}"
    return found


def _damage(out: str, relative: str, output: RecordedOutput, found: Damage) -> str | None:
    path = out + relative  # a string, not a Path: this runs once per video of the batch
    try:
        stat = os.stat(path)  # noqa: PTH116
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if output.bytes is not None and stat.st_size != output.bytes:
        return f"has {stat.st_size:,} bytes, not the {output.bytes:,} downloaded"
    if output.mtime_ns == stat.st_mtime_ns or not output.sha256:
        return None
    if file_sha256(Path(path)) != output.sha256:
        return "was changed since it was downloaded"
    found.unchanged.append((relative, stat.st_mtime_ns))
    return None
