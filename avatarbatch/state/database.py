"""One open state file: its schema brought up to date, its transactions, and its events log.

`StateDatabase` is the base of `StateStore` and of the ledger and files parts it is made of;
they share the connection, the clock and the one way to write (`_transaction`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlite_utils import Database

from avatarbatch.state import migrations
from avatarbatch.state.codec import COLUMNS, decode_job, dumps
from avatarbatch.state.records import JobRecord, StateError

#: How many problems an integrity check names before it stops looking.
INTEGRITY_PROBLEMS_SHOWN = 3


def make_private(path: Path) -> None:
    """Create the file 0600 before SQLite opens it; make an older one and its WAL private."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away, never added: be exact
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):  # SQLite gives these the main file's mode when it makes them
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").chmod(0o600)


class StateDatabase:
    """The connection to one state file; see `StateStore.open` for how one is made."""

    def __init__(self, db: Database, path: Path, clock: Callable[[], float]) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        self._grouped = False  #: inside `group()`: each write is a savepoint of its transaction

    def close(self) -> None:
        self._db.close()

    def another_connection(self, timeout: float) -> Self:
        """This file through a connection of its own, for another thread (`StateWriter`'s).
        This one has checked and migrated it; only the per-connection settings are made again."""
        conn = sqlite3.connect(self.path, timeout=timeout)
        try:
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(f"cannot open the state file {self.path}: {exc}") from exc
        return type(self)(Database(conn, execute_plugins=False), self.path, self._clock)

    # -- schema -------------------------------------------------------------------------

    def _prepare(self) -> None:
        # Read first: a foreign file is refused before anything in it changes.
        steps = migrations.MIGRATIONS
        pending = {step.__name__ for step in steps} - self._applied_migrations()
        self._check_integrity()
        self._db.enable_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        if not pending:
            return  # a reader (`status`) opening a current file writes nothing
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            applied = self._applied_migrations()  # again: another process may have migrated
            for step in steps:
                if step.__name__ not in applied:
                    step(db)
                    db.execute(
                        "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                        [step.__name__, self._clock()],
                    )

    def _check_integrity(self) -> None:
        """Refuse a damaged file up front (a few ms per 10 MB): otherwise SQLite fails half-way
        through a run, as a raw DatabaseError, or the run keeps writing into a broken file."""
        problems = [
            " ".join(str(row[0]).split())
            for row in self._db.execute(f"PRAGMA quick_check({INTEGRITY_PROBLEMS_SHOWN})")
        ]
        if problems != ["ok"]:
            raise StateError(
                f"{self.path} is damaged ({'; '.join(problems)}); move it away, or try "
                f"`sqlite3 {self.path} .recover`"
            )

    def _applied_migrations(self) -> set[str]:
        tables = {t for t in self._db.table_names() if not t.startswith("sqlite_")}
        if "_migrations" not in tables:
            if tables:
                raise StateError(
                    f"{self.path} is an SQLite database but not an avatarbatch state file "
                    f"(it holds {', '.join(sorted(tables))}); choose another state path"
                )
            return set()
        if "name" not in self._db["_migrations"].columns_dict:
            raise StateError(
                f"{self.path} has a _migrations table that avatarbatch did not write; "
                "choose another state path"
            )
        applied = {str(row[0]) for row in self._db.execute("SELECT name FROM _migrations")}
        unknown = applied - {step.__name__ for step in migrations.MIGRATIONS}
        if unknown:
            raise StateError(
                f"{self.path} records migrations this avatarbatch does not know "
                f"({', '.join(sorted(unknown))}): it was written by a newer avatarbatch, "
                "or by another program"
            )
        return applied

    # -- writing ------------------------------------------------------------------------

    @contextmanager
    def group(self) -> Iterator[None]:
        """One transaction for many writes (`StateWriter`'s group commit): they are durable
        together, at one flush. Each write inside keeps its own savepoint, so one that is
        refused (an illegal move) undoes only itself, as it would on its own."""
        with self._transaction():
            self._grouped = True
            try:
                yield
            finally:
                self._grouped = False

    @contextmanager
    def _transaction(self) -> Iterator[Database]:
        """One committed write: everything inside lands together, or nothing does."""
        db = self._db
        if self._grouped:
            with self._savepoint():
                yield db
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
        except sqlite3.OperationalError as exc:
            # Locked by another program past BUSY_TIMEOUT, a full disk, an I/O error: a message
            # naming the file instead of a traceback (nothing of this transaction was written).
            raise StateError(f"cannot write the state file {self.path}: {exc}") from exc

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        db = self._db
        db.execute("SAVEPOINT write")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK TO write")
            db.execute("RELEASE write")
            raise
        db.execute("RELEASE write")

    def _event(self, job_id: str | None, kind: str, detail: dict[str, Any] | None) -> None:
        """Append to the log, inside the caller's transaction."""
        self._db.execute(
            "INSERT INTO events (at, job_id, kind, detail) VALUES (?, ?, ?, ?)",
            [self._clock(), job_id, kind, None if detail is None else dumps(detail)],
        )

    # -- meta ---------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A one-time marker or a fact about the whole file (see ARCHITECTURE.md)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )

    # -- reading jobs -------------------------------------------------------------------

    def _select(self, where: str = "", params: Iterable[Any] = ()) -> list[JobRecord]:
        with self._readable():
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM jobs {where} ORDER BY rowid",  # noqa: S608 (fixed names)
                list(params),
            ).fetchall()
            return [decode_job(row) for row in rows]

    @contextmanager
    def _readable(self) -> Iterator[None]:
        """A row that cannot be decoded (a flipped byte passes quick_check) is a clean error
        naming the job, never a UnicodeDecodeError or JSON traceback."""
        try:
            yield
        except (ValueError, sqlite3.OperationalError, sqlite3.DataError) as exc:
            text = str(exc)
            if isinstance(exc, sqlite3.OperationalError) and not (
                "decode" in text or "malformed JSON" in text
            ):
                raise
            raise StateError(
                f"{self.path} holds a job that cannot be read ({self._unreadable_job()}: "
                f"{exc}); restore the file from a backup, or move it away to start afresh"
            ) from exc

    def _unreadable_job(self) -> str:
        """The id of the first job row whose text or JSON does not decode, for the message."""
        conn = self._db.conn
        previous = conn.text_factory
        conn.text_factory = bytes
        try:
            for row in conn.execute(f"SELECT {COLUMNS} FROM jobs ORDER BY rowid"):  # noqa: S608
                try:
                    texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in row]
                    decode_job(tuple(texts))
                except ValueError:
                    name = (
                        row[0].decode("utf-8", "replace") if isinstance(row[0], bytes) else row[0]
                    )
                    return f"job {name!r}"
        finally:
            conn.text_factory = previous
        return "a job"
