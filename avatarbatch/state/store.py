"""The state file: the write-ahead log of a batch run, and the only place that speaks SQL.

Every job is one row in `jobs` whose `status` follows the state machine of DESIGN.md. The
runner commits its intent before any call that creates remote state or costs money (the task
UUID is stored before the submit POST) and commits the outcome after it. Each public write
method is exactly one SQLite transaction (`BEGIN IMMEDIATE` ... `COMMIT`) that changes the
row and appends to `events` together, so a SIGKILL at any instant leaves the old state or the
new one, never half of each; `BEGIN IMMEDIATE` takes the write lock before the reads that
decide a write (is this move legal? is this job new?), so those reads cannot go stale.

During a run the writes come through `writer.StateWriter`, which applies many of these
methods in one transaction, each in a savepoint (`StateDatabase.group`): the unit that lands
or not is still one method's whole change, and the caller waits for the commit.

WAL mode lets readers (`avatarbatch status`, Datasette) look while a run writes.
`synchronous=FULL` makes each commit survive a power cut as well as a crash: it costs one
fsync per transition (a fraction of a millisecond on an SSD), nothing next to a paid video,
and it is what keeps "store the task UUID, then POST" true after a reboot.

The file is ordinary SQLite: statuses are their string values, lists and dicts are JSON
text, times are unix seconds, so `sqlite-utils` and Datasette can read it. It is created
0600 because run arguments and result URLs are nobody else's business. The schema grows by
numbered migrations (`state/migrations.py`), applied on open, once each, in order, in one
transaction.

`StateStore` is assembled from parts: `database.py` (the connection, schema, transactions),
`ledger.py` (tasks and money), `files.py` (the owned output folder) and this module (runs,
jobs, uploads, meta). The names other layers use are all importable from here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from avatarbatch.state import matching
from avatarbatch.state.codec import FLOAT_FIELDS, JSON_FIELDS, column_value, dumps, to_float
from avatarbatch.state.database import make_private
from avatarbatch.state.files import FilesStore
from avatarbatch.state.ledger import LedgerStore
from avatarbatch.state.migrations import MIGRATIONS, Migration, m001_initial, m002_ledger
from avatarbatch.state.probes import REMEMBER_PROBES, encoded
from avatarbatch.state.records import (
    OPEN_TASK_STATUSES,
    STATUS_BY_VALUE,
    TRANSITIONS,
    JobMoney,
    JobOverview,
    JobRecord,
    JobSpec,
    JobStatus,
    OwnedFile,
    RecordedOutput,
    StateError,
    StrayTask,
    TaskEntry,
    TaskStatus,
)

if TYPE_CHECKING:
    from avatarbatch.manifest.media import MediaInfo, ProbeKey
    from avatarbatch.plan import PlanStatus, StoredJob

__all__ = [
    "BUSY_TIMEOUT",
    "MIGRATIONS",
    "OPEN_TASK_STATUSES",
    "TRANSITIONS",
    "JobMoney",
    "JobOverview",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "Migration",
    "OwnedFile",
    "RecordedOutput",
    "StateError",
    "StateStore",
    "StrayTask",
    "TaskEntry",
    "TaskStatus",
    "m001_initial",
    "m002_ledger",
]

BUSY_TIMEOUT = 10.0  #: seconds to wait for another connection's write lock before giving up

# A changed spec resets the job: the new spec in, the old attempt's traces out (not outputs).
_UPSERT_JOB = """
    INSERT INTO jobs (id, spec_hash, model, number_results, audio_seconds, estimated_cost,
                      status, created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7)
    ON CONFLICT (id) DO UPDATE SET
        spec_hash = ?2, model = ?3, number_results = ?4, audio_seconds = ?5,
        estimated_cost = ?6, status = 'pending', updated_at = ?7, attempts = 0,
        task_uuid = NULL, results = '[]', actual_cost = NULL, error_code = NULL,
        error_message = NULL, image_input = NULL, audio_input = NULL, submitted_at = NULL"""
_TRANSITION_FIELDS = frozenset(
    {"task_uuid", "attempts", "error_code", "error_message", "image_input", "audio_input"}
    | JSON_FIELDS
    | FLOAT_FIELDS
)


class StateStore(LedgerStore, FilesStore):
    """All reads and writes of one state file; build it with `StateStore.open`."""

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> StateStore:
        """Open (creating if needed) a private state file, in WAL mode, fully migrated."""
        path = Path(path)
        try:
            make_private(path)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StateError(f"cannot open the state file {path}: {reason}") from exc
        try:
            store = cls(Database(conn, execute_plugins=False), path, clock)
            store._prepare()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StateError(
                    f"{path} is not a usable avatarbatch state file ({exc}); "
                    "move it away or choose another state path"
                ) from exc
            raise
        return store

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------

    def start_run(self, *, manifest: str, manifest_sha256: str, arguments: dict[str, Any]) -> int:
        """Record the start of an invocation; `arguments` must already be free of secrets."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, manifest, manifest_sha256, arguments) "
                "VALUES (?, ?, ?, ?)",
                [self._clock(), manifest, manifest_sha256, dumps(arguments)],
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish_run(
        self, run_id: int, *, outcome: str, exit_code: int, summary: dict[str, Any]
    ) -> None:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ?, exit_code = ?, summary = ? "
                "WHERE id = ?",
                [self._clock(), outcome, exit_code, dumps(summary), run_id],
            )
            if cursor.rowcount != 1:
                raise StateError(f"run {run_id} is not in {self.path}")

    def runs(self) -> list[dict[str, Any]]:
        """Every invocation, oldest first, with `arguments` and `summary` decoded."""
        runs = list(self._db.query("SELECT * FROM runs ORDER BY id"))
        for run in runs:
            run["arguments"] = json.loads(run["arguments"])
            run["summary"] = None if run["summary"] is None else json.loads(run["summary"])
        return runs

    # -- jobs ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        found = self._select("WHERE id = ?", [job_id])
        return found[0] if found else None

    def jobs(self) -> dict[str, JobRecord]:
        """Every job by id, in insertion order."""
        return {record.id: record for record in self._select()}

    def job_ids(self) -> list[str]:
        """Every job id, in insertion order, without decoding a record."""
        return [row[0] for row in self._db.execute("SELECT id FROM jobs ORDER BY rowid")]

    def overview(self) -> dict[str, JobOverview]:
        """Every job by id, in insertion order, as summaries and reports need it."""
        with self._readable():
            rows = self._db.execute(
                "SELECT id, status, attempts, task_uuid, audio_seconds, estimated_cost, "
                "actual_cost, json_array_length(results), outputs, error_message FROM jobs "
                "ORDER BY rowid"
            )
            return {row[0]: JobOverview(JobStatus(row[1]), *row[2:]) for row in rows}

    def planning_view(self) -> dict[str, StoredJob]:
        """What `plan.build_plan` needs to know about each stored job."""
        # Imported here, not with the module: plan loads the manifest parser (a fifth of a
        # second), which no other part of the state layer needs.
        from avatarbatch.plan import StoredJob

        with self._readable():
            rows = self._db.execute("SELECT id, spec_hash, status FROM jobs ORDER BY rowid")
            return {job_id: StoredJob(spec, JobStatus(status)) for job_id, spec, status in rows}

    def counts(self) -> dict[str, int]:
        """Jobs per status, every status present (zeros included)."""
        counts = {status.value: 0 for status in JobStatus}
        for status, count in self._db.execute("SELECT status, count(*) FROM jobs GROUP BY 1"):
            counts[status] = count
        return counts

    def ensure_jobs(self, specs: Iterable[JobSpec]) -> dict[str, JobStatus]:
        """Bring many jobs in line with the manifest in one transaction; returns their statuses.

        Absent: inserted as PENDING. Same spec_hash: left exactly as stored. Another
        spec_hash: the job changed, so it goes back to PENDING with the new spec and no
        attempts, task, results, cost or error, but keeps `outputs`: the old video stays in
        place until the new one has arrived. The "changed" event keeps what was dropped.
        """
        rows = [
            (s.id, s.spec_hash, s.model, s.number_results, to_float(s.audio_seconds),
             to_float(s.estimated_cost))
            for s in specs
        ]  # fmt: skip
        with self._transaction() as db:
            # SQL finds the new and changed jobs: a rerun's unchanged ones never reach Python.
            differ = matching.differences(db.conn, rows)
            now = self._clock()
            db.conn.executemany(_UPSERT_JOB, [(*r, now) for r in matching.changed(rows, differ)])
            db.conn.executemany(
                "INSERT INTO events (at, job_id, kind, detail) VALUES (?, ?, ?, ?)",
                matching.change_events(differ, now),
            )
            # Statuses, not records: decoding every record again cost more than all the rest.
            statuses = {
                job_id: STATUS_BY_VALUE[status] for job_id, status in matching.statuses(db.conn)
            }
        return {row[0]: statuses[row[0]] for row in rows}

    def plan_statuses(
        self, hashes: Iterable[tuple[str, str]], damaged: Iterable[str] = ()
    ) -> dict[str, PlanStatus]:
        """`plan.build_plan`'s lookup: the plan status of each (job id, spec hash) that is not
        DONE; the jobs left out are done with this very spec, as every job of a rerun is.

        `damaged`: done jobs whose video is not as downloaded (REFETCH when unchanged).
        """
        from avatarbatch.plan import PlanStatus  # see planning_view

        hashes = list(hashes)
        with self._readable(), matching.scratch(self._db.conn) as conn:
            found = matching.plan_statuses(conn, hashes)
        statuses = {job_id: PlanStatus(status) for job_id, status in found}
        damaged = set(damaged)
        if damaged:
            rerun = (PlanStatus.NEW, PlanStatus.CHANGED)  # a new video comes anyway
            manifest = {job_id for job_id, _ in hashes}
            for job_id in damaged & manifest:
                if statuses.get(job_id) not in rerun:
                    statuses[job_id] = PlanStatus.REFETCH
        return statuses

    def unfinished(self, *, failed: bool = False) -> dict[str, JobStatus]:
        """Jobs not done or failed (failed ones too, if `failed`), by id, in insertion order."""
        finished = [JobStatus.DONE.value] + ([] if failed else [JobStatus.FAILED.value])
        with self._readable():
            rows = self._db.execute(matching.UNFINISHED, [json.dumps(finished)])
            return {job_id: JobStatus(status) for job_id, status in rows}

    def status_totals(self, ids: Iterable[str]) -> dict[str, tuple[int, float, float, float, int]]:
        """Per status, over these jobs: count, audio seconds, estimate, actual cost, and how
        many have no estimate; summed by SQL, for a summary that needs no job by job view."""
        with self._readable(), matching.scratch(self._db.conn) as conn:
            return matching.status_totals(conn, ids)

    def change_mark(self) -> str:
        """Changes whenever a job, the ledger or the jobs' files do: every such write appends
        to `events` (the counts catch writes made by hand, as bench/done_state.py does)."""
        return ":".join(str(value) for value in self._db.execute(matching.MARK).fetchone())

    def file_stats(self, paths: Iterable[str]) -> dict[str, tuple[int | None, int | None]]:
        """The recorded (bytes, mtime_ns) of these owned files; unknown paths left out."""
        rows = self._db.execute(
            "SELECT path, bytes, mtime_ns FROM files "
            "WHERE path IN (SELECT value FROM json_each(?))",
            [json.dumps(list(paths))],
        )
        return {path: (size, mtime) for path, size, mtime in rows}

    def record_written(self, files: Iterable[OwnedFile], key: str, value: str) -> None:
        """Files just written (with their size and mtime) and a meta value, in one commit."""
        with self._transaction() as db:
            self._own(files, None)
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )

    def remember_probes(self, probes: Iterable[tuple[ProbeKey, MediaInfo]]) -> None:
        """Keep media probes for later runs (see `state/probes.py`)."""
        now = self._clock()
        rows = [(*key, encoded(info), now) for key, info in probes]
        if not rows:
            return
        with self._transaction() as db:
            db.conn.executemany(REMEMBER_PROBES, rows)

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        tasks: Iterable[TaskEntry] = (),
        files: Iterable[OwnedFile] = (),
        **fields: Any,
    ) -> JobRecord:
        """Move a job to `to` and update the given fields, as one logged transaction.

        `tasks` write the ledger and `files` the owned-files record in the same transaction,
        so money and files can never disagree with the job's status after a crash. The
        "transition" event holds the move, the fields, and what was written to the ledger and
        the files record (`tasks`, `files`, when there were any): a job's whole history.
        """
        unknown = sorted(set(fields) - _TRANSITION_FIELDS)
        if unknown:
            raise TypeError(f"transition() got unexpected field(s): {', '.join(unknown)}")
        target = JobStatus(to)
        tasks, files = list(tasks), list(files)
        values = {name: column_value(name, value) for name, value in fields.items()}
        with self._transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row is None:
                raise StateError(f"job {job_id!r} is not in {self.path}")
            current = STATUS_BY_VALUE.get(row[0])
            if current is None or target not in TRANSITIONS[current]:
                raise StateError(f"job {job_id!r} cannot go from {row[0]} to {target}")
            values.update(status=target.value, updated_at=self._clock(), id=job_id)
            assignments = ", ".join(f"{name} = :{name}" for name in values if name != "id")
            # The column names come from _TRANSITION_FIELDS, never from the caller's text.
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = :id", values)  # noqa: S608
            for task in tasks:
                self._write_task(job_id, task)
            self._own(files, job_id)
            detail: dict[str, Any] = {"from": row[0], "to": target.value, **fields}
            if tasks:
                detail["tasks"] = [task.logged() for task in tasks]
            if files:
                detail["files"] = [file.logged() for file in files]
            self._event(job_id, "transition", detail)
            (record,) = self._select("WHERE id = ?", [job_id])
        return record

    def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The log, oldest first (one job's, if given), with `detail` decoded."""
        where, params = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        sql = f"SELECT id, at, job_id, kind, detail FROM events {where} ORDER BY id"  # noqa: S608
        events = list(self._db.query(sql, params))
        for event in events:
            if event["detail"] is not None:
                event["detail"] = json.loads(event["detail"])
        return events

    # -- uploads ------------------------------------------------------------------------

    def upload_for(self, sha256: str, kind: str) -> tuple[str, str | None] | None:
        """The (uuid, url) Runware gave this content before, if any."""
        row = self._db.execute(
            "SELECT uuid, url FROM uploads WHERE sha256 = ? AND kind = ?", [sha256, kind]
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def record_upload(self, sha256: str, kind: str, uuid: str, url: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO uploads (sha256, kind, uuid, url, uploaded_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256, kind) DO UPDATE SET "
                "uuid = excluded.uuid, url = excluded.url, uploaded_at = excluded.uploaded_at",
                [sha256, kind, uuid, url, self._clock()],
            )

    def forget_uploads(self) -> None:
        """Drop the upload cache: its UUIDs name media at another target."""
        with self._transaction() as db:
            db.execute("DELETE FROM uploads")
