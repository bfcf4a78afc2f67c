"""Comparing the manifest's jobs with the stored ones in SQL: the manifest's side goes into a
TEMP table with one executemany, and joins find what differs. A rerun of 100,000 unchanged
jobs then brings none of them back into Python (`StateStore.ensure_jobs`, `plan_statuses`,
`status_totals`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from avatarbatch.state.codec import dumps

#: TEMP tables of the manifest's jobs (name: columns), so that SQL compares them with the
#: stored ones. No key: SQL walks such a table and finds each job by the jobs table's key.
_SCRATCH = {
    "specs": "id TEXT, spec_hash TEXT, model TEXT, number_results INTEGER, "
    "audio_seconds REAL, estimated_cost REAL",
    "hashes": "id TEXT, spec_hash TEXT",
    "ids": "id TEXT",
}
_DIFFERENCES = """
    SELECT s.id, s.spec_hash, j.spec_hash, j.status, j.attempts, j.task_uuid, j.actual_cost
    FROM temp.specs s LEFT JOIN jobs j ON j.id = s.id
    WHERE j.id IS NULL OR j.spec_hash != s.spec_hash ORDER BY s.rowid"""
_PLAN_STATUSES = """
    SELECT s.id, CASE
        WHEN j.id IS NULL THEN 'new'
        WHEN j.spec_hash != s.spec_hash THEN 'changed'
        WHEN j.status = 'failed' THEN 'failed'
        ELSE 'unfinished' END
    FROM temp.hashes s LEFT JOIN jobs j ON j.id = s.id
    WHERE j.id IS NULL OR j.spec_hash != s.spec_hash OR j.status != 'done'"""


UNFINISHED = """SELECT id, status FROM jobs
    WHERE status NOT IN (SELECT value FROM json_each(?)) ORDER BY rowid"""
#: What `StateStore.change_mark` reads
MARK = """SELECT (SELECT max(id) FROM events), (SELECT count(*) FROM jobs),
    (SELECT max(rowid) FROM jobs), (SELECT count(*) FROM tasks),
    (SELECT max(updated_at) FROM tasks)"""
_DROPPED_ON_CHANGE = ("old_spec_hash", "old_status", "attempts", "task_uuid", "actual_cost")


def _fill(conn: sqlite3.Connection, name: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """(Re)fill one of the _SCRATCH tables (ids are unique: a manifest's are)."""
    # In memory: a file for 100,000 rows that live a moment cost more than the rows. (SQLite
    # refuses the change inside a transaction once temporary storage is in use: it is only
    # a matter of speed, so the table then goes where it would have gone anyway.)
    with contextlib.suppress(sqlite3.OperationalError):
        conn.execute("PRAGMA temp_store = MEMORY")
    columns = _SCRATCH[name]
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns})")
    conn.execute(f"DELETE FROM temp.{name}")  # noqa: S608 (fixed names)
    marks = ", ".join("?" * (columns.count(",") + 1))
    conn.executemany(f"INSERT INTO temp.{name} VALUES ({marks})", rows)  # noqa: S608


def changed(rows: list[tuple[Any, ...]], differ: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The spec rows of the new and changed jobs, in the manifest's order."""
    if not differ:
        return []
    wanted = {row[0] for row in differ}
    return [row for row in rows if row[0] in wanted]


def differences(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Fill `specs` with job specs (id, hash, model, results, seconds, estimate); returns the
    new and changed ones: id, new hash, then the stored hash, status, attempts, task, cost
    (all None for a new job)."""
    _fill(conn, "specs", rows)
    return conn.execute(_DIFFERENCES).fetchall()


def change_events(differ: list[tuple[Any, ...]], now: float) -> list[tuple[Any, ...]]:
    """The "created" and "changed" events of `differences`; a changed job's keeps what the
    change drops."""
    events = []
    for job_id, digest, *old in differ:
        detail = {"spec_hash": digest}
        if old[0] is not None:
            detail |= dict(zip(_DROPPED_ON_CHANGE, old, strict=True))
        kind = "created" if old[0] is None else "changed"
        events.append((now, job_id, kind, dumps(detail)))
    return events


def statuses(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """The stored status of each job in `specs`, which is emptied."""
    found = conn.execute("SELECT s.id, j.status FROM temp.specs s JOIN jobs j ON j.id = s.id")
    rows = found.fetchall()
    conn.execute("DELETE FROM temp.specs")
    return rows


def plan_statuses(conn: sqlite3.Connection, hashes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The plan status of each (id, hash) whose job is not done with this hash."""
    _fill(conn, "hashes", hashes)
    return conn.execute(_PLAN_STATUSES).fetchall()


def status_totals(
    conn: sqlite3.Connection, ids: Iterable[str]
) -> dict[str, tuple[int, float, float, float, int]]:
    """See `StateStore.status_totals`."""
    # Every row's JSON is parsed, as reading the jobs one by one did: a damaged row stops
    # the run with a message naming it, however little the run has to do.
    conn.execute(
        "SELECT total(json_array_length(results) + json_array_length(outputs)) FROM jobs"
    ).fetchone()
    _fill(conn, "ids", ((job_id,) for job_id in ids))
    rows = conn.execute(
        "SELECT j.status, count(*), total(j.audio_seconds), total(j.estimated_cost), "
        "total(j.actual_cost), count(*) - count(j.estimated_cost) "
        "FROM temp.ids s JOIN jobs j ON j.id = s.id GROUP BY j.status"
    )
    return {row[0]: row[1:] for row in rows}


@contextmanager
def scratch(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read that fills a TEMP table first: one snapshot, and nothing committed (the
    temporary rows are thrown away with the transaction)."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
