"""The owned output folder: every file avatarbatch wrote there, recorded before it is written.

Anything in the folder that `files` does not name belongs to someone else, and a run refuses
to write beside it; a job's videos are claimed in the same transaction as the move that
promises them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from avatarbatch.state.codec import dumps
from avatarbatch.state.database import StateDatabase
from avatarbatch.state.records import OwnedFile, RecordedOutput


class FilesStore(StateDatabase):
    """Reads and writes of the `files` table, and of the paths in `jobs.outputs`."""

    def _own(self, files: Iterable[OwnedFile], job_id: str | None) -> None:
        """Record files as owned (by `job_id` unless a file names its job), inside the
        caller's transaction."""
        now = self._clock()
        self._db.conn.executemany(
            "INSERT INTO files (path, job_id, bytes, sha256, mtime_ns, written_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET job_id = excluded.job_id, "
            "bytes = excluded.bytes, sha256 = excluded.sha256, mtime_ns = excluded.mtime_ns, "
            "written_at = excluded.written_at",
            [(f.path, f.job_id or job_id, f.bytes, f.sha256, f.mtime_ns, now) for f in files],
        )

    def recorded_outputs(self) -> list[RecordedOutput]:
        """Every video every job's record names, flattened by SQLite's JSON functions: for a
        100,000-job batch far cheaper than decoding each job's outputs in Python."""
        with self._readable():
            rows = self._db.execute(
                """SELECT j.id, j.status, o.key, json_extract(o.value, '$.path'),
                          json_extract(o.value, '$.bytes'), json_extract(o.value, '$.sha256'),
                          f.mtime_ns
                   FROM jobs j, json_each(j.outputs) o
                   LEFT JOIN files f ON f.path = json_extract(o.value, '$.path')
                   WHERE json_extract(o.value, '$.path') IS NOT NULL
                   ORDER BY j.rowid, o.key"""
            )
            return [RecordedOutput(*row) for row in rows]

    def owner_map(self) -> dict[str, str | None]:
        """Every recorded file's path and the job that owns it (None: a report file)."""
        return dict(self._db.execute("SELECT path, job_id FROM files").fetchall())

    def seen_unchanged(self, mtimes: Iterable[tuple[str, int]]) -> None:
        """Files hashed again and found unchanged: remember their new mtime, so that the next
        run needs only a stat for them."""
        with self._transaction() as db:
            db.conn.executemany(
                "UPDATE files SET mtime_ns = ? WHERE path = ?",
                [(mtime, path) for path, mtime in mtimes],
            )

    def file_owners(self, paths: Iterable[str]) -> dict[str, str | None]:
        """The job that owns each of these paths (None: a report file); unknown paths left out."""
        rows = self._db.execute(
            "SELECT path, job_id FROM files WHERE path IN (SELECT value FROM json_each(?))",
            [json.dumps(list(paths))],
        )
        return dict(rows.fetchall())

    def own_files(self, files: Iterable[OwnedFile]) -> None:
        """Record files written outside a job's move (reports, a renamed video)."""
        with self._transaction():
            self._own(files, None)

    def rename_outputs(self, renames: dict[str, dict[str, str]]) -> None:
        """Record moved videos: job id -> {old relative path: new one}, in one transaction.

        All moves at once, like the files on disk: two jobs swapping names must each keep
        their own record, which moving one record after the other would merge.
        """
        moves = {old: new for job_moves in renames.values() for old, new in job_moves.items()}
        with self._transaction() as db:
            paths = json.dumps([*moves, *moves.values()])
            kept = db.execute(
                "SELECT path, job_id, bytes, sha256, mtime_ns FROM files "
                "WHERE path IN (SELECT value FROM json_each(?))",
                [paths],
            ).fetchall()
            db.execute("DELETE FROM files WHERE path IN (SELECT value FROM json_each(?))", [paths])
            moved = [OwnedFile(moves[row[0]], *row[1:]) for row in kept if row[0] in moves]
            self._own(moved, None)
            for job_id, job_moves in renames.items():
                row = db.execute("SELECT outputs FROM jobs WHERE id = ?", [job_id]).fetchone()
                outputs = json.loads(row[0]) if row else []
                for output in outputs:
                    output["path"] = job_moves.get(str(output.get("path")), output.get("path"))
                db.execute(
                    "UPDATE jobs SET outputs = ?, updated_at = ? WHERE id = ?",
                    [dumps(outputs), self._clock(), job_id],
                )
                self._event(job_id, "renamed", {"moves": job_moves})

    def relativize_outputs(
        self, out: Path, relative: Callable[[Path, str], str], *, adopt: Iterable[str] = ()
    ) -> None:
        """Once per state file written before the ledger: store output paths relative to the
        output folder, and record them and the report files found there (`adopt`) as owned."""
        if self.meta("outputs_relative") is not None:
            return
        with self._transaction() as db:
            rows = db.execute("SELECT id, outputs FROM jobs WHERE outputs != '[]'").fetchall()
            files = []
            for job_id, text in rows:
                outputs = json.loads(text)
                for output in outputs:
                    if "path" not in output:  # delivered to an uploadEndpoint: no file here
                        continue
                    output["path"] = relative(out, str(output["path"]))
                    files.append(
                        OwnedFile(output["path"], job_id, output.get("bytes"), output.get("sha256"))
                    )
                db.execute("UPDATE jobs SET outputs = ? WHERE id = ?", [dumps(outputs), job_id])
            self._own([*files, *(OwnedFile(path) for path in adopt)], None)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('outputs_relative', '1') "
                "ON CONFLICT (key) DO NOTHING"
            )

    def disown_files(self, paths: Iterable[str]) -> None:
        """Forget files that are gone (deleted by us, or found missing)."""
        with self._transaction() as db:
            db.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
