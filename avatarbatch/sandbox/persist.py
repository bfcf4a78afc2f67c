"""What a persistent sandbox (SandboxConfig.persist) keeps across restarts, in its storage_dir.

    storage_dir/
    ├── sandbox.sqlite        tasks and their results, the upload index, the answered upload
    │                         taskUUIDs, the conflict count and the last port (WAL mode, so
    │                         also sandbox.sqlite-wal and sandbox.sqlite-shm while it runs)
    ├── sandbox.lock          held while a sandbox uses the folder: two at once would clash
    ├── uploads/<uuid>.<ext>  the bytes of each imageUpload / mediaStorage
    ├── <videoUUID>.<ext>     rendered videos (where a sandbox always puts them)
    └── inputs/, stub-cache/  working copies, made again when missing

Each change is one small transaction, committed before the answer that reveals it is sent:
a task is on disk before its acknowledgement, an upload's bytes and row before its UUID is
given out, a result before a poll can see it. SQLite's WAL survives the process being killed
at any instant (synchronous=NORMAL may lose the last commits on power loss, not on SIGKILL).
Times are wall-clock seconds, since monotonic clocks restart with the process. API keys are
never written: a task's key is kept in memory only, and a message that quotes it (the
`echo_key` fault) is stored with the key blanked out.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatarbatch.sandbox.store import StoredMedia
    from avatarbatch.sandbox.tasks import Task

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one sandbox per folder by convention
    fcntl = None  # type: ignore[assignment]

STATE_FILE = "sandbox.sqlite"
LOCK_FILE = "sandbox.lock"
UPLOADS = "uploads"
SCHEMA_VERSION = 1
REDACTED = "[redacted]"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    uuid TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    base_url TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    seconds REAL,
    finished INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS results (
    task_uuid TEXT NOT NULL REFERENCES tasks (uuid),
    position INTEGER NOT NULL,
    video_uuid TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    path TEXT,
    cost TEXT NOT NULL,
    error_code TEXT,
    error_message TEXT,
    expires_at REAL NOT NULL,
    PRIMARY KEY (task_uuid, position)
);
CREATE TABLE IF NOT EXISTS uploads (
    media_uuid TEXT PRIMARY KEY,
    task_uuid TEXT NOT NULL,
    mime TEXT NOT NULL,
    filename TEXT NOT NULL
);
"""


class StateError(RuntimeError):
    """The storage folder cannot hold this sandbox's state (in use, or from a newer version)."""


@dataclass(frozen=True)
class SavedResult:
    video_uuid: str
    seed: int
    status: str
    path: str | None  #: relative to storage_dir
    cost: Decimal
    error: tuple[str, str] | None
    expires_at: float


@dataclass(frozen=True)
class SavedTask:
    uuid: str
    request: dict[str, Any]
    base_url: str
    accepted_at: float  #: wall clock
    seconds: float | None
    finished: bool
    results: list[SavedResult]


@dataclass(frozen=True)
class SavedUpload:
    media_uuid: str
    task_uuid: str
    mime: str
    path: Path


@dataclass(frozen=True)
class Saved:
    """Everything a previous run left, in acceptance order."""

    tasks: list[SavedTask]
    uploads: list[SavedUpload]
    conflicts: int


class StateFile:
    """The SQLite file of one storage folder; used from one thread at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(folder / LOCK_FILE)
        try:
            self._db = sqlite3.connect(folder / STATE_FILE, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{folder / STATE_FILE} was written by a newer avatarbatch "
                    f"(schema {version}); use another storage folder"
                )
            with self._db:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None  # type: ignore[assignment]
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # --- reading -----------------------------------------------------------------------------

    def load(self) -> Saved:
        results: dict[str, list[SavedResult]] = {}
        for row in self._db.execute(
            "SELECT task_uuid, video_uuid, seed, status, path, cost, error_code, error_message,"
            " expires_at FROM results ORDER BY task_uuid, position"
        ):
            error = (row[6], row[7] or "") if row[6] is not None else None
            results.setdefault(row[0], []).append(
                SavedResult(row[1], row[2], row[3], row[4], Decimal(row[5]), error, row[8])
            )
        tasks = [
            SavedTask(
                uuid,
                json.loads(request),
                base_url,
                accepted_at,
                seconds,
                bool(finished),
                results.get(uuid, []),
            )
            for uuid, request, base_url, accepted_at, seconds, finished in self._db.execute(
                "SELECT uuid, request, base_url, accepted_at, seconds, finished FROM tasks"
                " ORDER BY rowid"
            )
        ]
        uploads = [
            SavedUpload(media_uuid, task_uuid, mime, self.folder / filename)
            for media_uuid, task_uuid, mime, filename in self._db.execute(
                "SELECT media_uuid, task_uuid, mime, filename FROM uploads ORDER BY rowid"
            )
        ]
        conflicts = int(self.meta("conflicts") or 0)
        return Saved(tasks, uploads, conflicts)

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # --- writing -----------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def add_task(self, task: Task, accepted_at: float) -> None:
        """Record an accepted task (before its acknowledgement is sent)."""
        request = {k: v for k, v in task.request.items() if k != "apiKey"}
        with self._db:
            self._db.execute(
                "INSERT INTO tasks (uuid, request, base_url, accepted_at) VALUES (?, ?, ?, ?)",
                (task.uuid, json.dumps(request), task.base_url, accepted_at),
            )
            self._db.executemany(
                "INSERT INTO results (task_uuid, position, video_uuid, seed, status, cost,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (task.uuid, index, r.video_uuid, r.seed, r.status, str(r.cost), r.expires_at)
                    for index, r in enumerate(task.results)
                ],
            )

    def save_task(self, task: Task) -> None:
        """Record a task's progress: its results so far, its length, whether it finished."""
        rows = []
        for index, result in enumerate(task.results):
            path = None
            if result.path is not None and result.status == "success":
                path = result.path.relative_to(self.folder).as_posix()
            code, message = result.error or (None, None)
            if message and task.api_key:
                message = message.replace(task.api_key, REDACTED)
            cost = result.cost if result.status == "success" else Decimal(0)
            row = (result.status, path, str(cost), code, message, result.expires_at)
            rows.append((*row, task.uuid, index))
        with self._db:
            self._db.execute(
                "UPDATE tasks SET seconds = ?, finished = ? WHERE uuid = ?",
                (task.seconds, int(task.finished), task.uuid),
            )
            self._db.executemany(
                "UPDATE results SET status = ?, path = ?, cost = ?, error_code = ?,"
                " error_message = ?, expires_at = ? WHERE task_uuid = ? AND position = ?",
                rows,
            )

    def write_upload(self, item: StoredMedia) -> Path:
        """Write an upload's bytes to their file (any thread); the file."""
        path = self.folder / UPLOADS / item.filename
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        partial.write_bytes(item.data)
        partial.replace(path)
        return path

    def index_upload(self, item: StoredMedia, task_uuid: str, path: Path) -> None:
        """Record an upload whose bytes `write_upload` put in `path`."""
        with self._db:
            self._db.execute(
                "INSERT INTO uploads (media_uuid, task_uuid, mime, filename) VALUES (?, ?, ?, ?)",
                (item.uuid, task_uuid, item.mime, path.relative_to(self.folder).as_posix()),
            )


def _lock(path: Path) -> IO[bytes] | None:
    """An exclusive lock on the folder, released when the process ends however it ends."""
    if fcntl is None:  # pragma: no cover
        return None
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StateError(
            f"another sandbox is using {path.parent}; stop it or use another storage folder"
        ) from None
    return handle
