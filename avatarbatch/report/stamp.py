"""Whether the report files on disk are still those of the state file: a rerun with nothing
to do must not spend seconds rewriting 60 MB of reports that would come out the same.

When the reports are written, a stamp goes into `meta`: the state file's change mark (every
write to a job, the ledger or a job's files appends to `events`), the manifest and the output
folder they were made for, this avatarbatch's version, and the files written. Each file's size
and modification time go into `files`. The reports are current while the stamp matches and
every file is as written; a deleted or edited report makes them all be written again.

What the reports say of the runs themselves (`report.json`'s last run, the gallery's count of
runs) is then that of the last run that changed something.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from avatarbatch import __version__
from avatarbatch.manifest.job import Manifest
from avatarbatch.state.store import OwnedFile, StateStore

STAMP_KEY = "reports_stamp"


def stamp(manifest: Manifest, store: StateStore, output_dir: Path) -> dict[str, Any]:
    """What the reports depend on, as of now (taken before they are built: a write that
    lands meanwhile makes the stamp stale, never the reports)."""
    return {
        "version": __version__,
        "state": store.change_mark(),
        "manifest": str(manifest.path),
        "manifest_sha256": manifest.sha256,
        "output_dir": str(output_dir),
    }


def current_summary(manifest: Manifest, store: StateStore, output_dir: Path) -> str | None:
    """report.md's text when every report file is current (see the module), else None."""
    text = store.meta(STAMP_KEY)
    if text is None:
        return None
    try:
        recorded = json.loads(text)
        names = [str(name) for name in recorded.pop("files")]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if recorded != stamp(manifest, store, output_dir) or "report.md" not in names:
        return None
    stats = store.file_stats(names)
    for name in names:
        try:
            found = (output_dir / name).stat()
        except OSError:
            return None
        if stats.get(name) != (found.st_size, found.st_mtime_ns):
            return None
    try:
        return (output_dir / "report.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def record(
    store: StateStore, output_dir: Path, taken: dict[str, Any], names: Iterable[str]
) -> None:
    """Remember the files just written, as they are now, under the stamp `taken` before."""
    files = []
    for name in names:
        found = os.stat(output_dir / name)  # noqa: PTH116 - one call, its two fields
        files.append(OwnedFile(name, bytes=found.st_size, mtime_ns=found.st_mtime_ns))
    value = json.dumps({**taken, "files": [f.path for f in files]})
    store.record_written(files, STAMP_KEY, value)
