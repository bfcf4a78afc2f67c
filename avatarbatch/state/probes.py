"""The state file's memory of media probes (`media_probes`): a rerun's preflight reads no
media file that has not changed since an earlier run probed it.

The manifest is checked before the state file is locked or opened for writing (a bad
manifest must leave nothing behind), so the probes are read through a read-only connection
of their own, and what was probed anew is written once the run holds the state file
(`StateStore.remember_probes`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatarbatch import __version__

if TYPE_CHECKING:  # the prober's module loads PIL: not for every reader of the state file
    from avatarbatch.manifest.media import MediaInfo, ProbeKey


REMEMBER_PROBES = """
    INSERT INTO media_probes (path, role, bytes, mtime_ns, info, probed_at)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path, role) DO UPDATE SET
        bytes = excluded.bytes, mtime_ns = excluded.mtime_ns, info = excluded.info,
        probed_at = excluded.probed_at"""


class ProbeMemo:
    """A `manifest.media.ProbeCache` over the probes a state file holds."""

    def __init__(self, known: dict[ProbeKey, MediaInfo] | None = None) -> None:
        self._known = known or {}
        self.fresh: list[tuple[ProbeKey, MediaInfo]] = []  #: probed by this invocation

    def recall(self, key: ProbeKey) -> MediaInfo | None:
        return self._known.get(key)

    def remember(self, key: ProbeKey, info: MediaInfo) -> None:
        self._known[key] = info
        self.fresh.append((key, info))

    @classmethod
    def read(cls, path: Path) -> ProbeMemo:
        """The probes of the state file at `path`; none if it is missing, older or unreadable
        (its own checks come later, when the run opens it)."""
        if not path.is_file():
            return cls()
        known: dict[ProbeKey, MediaInfo] = {}
        try:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        except (sqlite3.Error, ValueError):
            return cls()
        with contextlib.closing(conn):
            try:
                rows = conn.execute(
                    "SELECT path, role, bytes, mtime_ns, info FROM media_probes"
                ).fetchall()
            except sqlite3.Error:
                return cls()
        for file, role, size, mtime, text in rows:
            info = _decoded(text)
            if info is not None:
                known[(file, role, size, mtime)] = info
        return cls(known)


def encoded(info: MediaInfo) -> str:
    """A probe as stored, with the version that made it: another version probes again."""
    return json.dumps({"version": __version__, **dataclasses.asdict(info)})


def _decoded(text: Any) -> MediaInfo | None:
    from avatarbatch.manifest.media import MediaInfo

    try:
        values = json.loads(text)
        if values.pop("version") != __version__:
            return None
        return MediaInfo(**values)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
