"""The schema of the state file, as numbered steps applied once each, in order, on open.

A step is never edited once released: files in the wild were made by it. A new column or
table is a new step, and a step that drops data must leave every older file readable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlite_utils import Database

from avatarbatch.state.codec import to_float
from avatarbatch.state.records import JobStatus, TaskStatus

Migration = Callable[[Database], None]
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    """Register a schema step; steps run in the order they are defined, once per file."""
    MIGRATIONS.append(function)
    return function


@migration
def m001_initial(db: Database) -> None:
    """runs, jobs, uploads and events; JSON columns hold json.dumps text.

    `jobs.vars` is neither written nor read: a job's vars live in the manifest that names it.
    """
    db.execute("""CREATE TABLE runs (
        id INTEGER PRIMARY KEY, started_at REAL NOT NULL, finished_at REAL,
        manifest TEXT NOT NULL, manifest_sha256 TEXT NOT NULL, arguments TEXT NOT NULL,
        outcome TEXT, exit_code INTEGER, summary TEXT)""")
    # `vars` stays in the schema, unwritten and unread: older files have it, and dropping it
    # would take a migration that rebuilds the table for nothing.
    db.execute("""CREATE TABLE jobs (
        id TEXT PRIMARY KEY, spec_hash TEXT NOT NULL, status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, task_uuid TEXT,
        model TEXT NOT NULL, number_results INTEGER NOT NULL,
        audio_seconds REAL, estimated_cost REAL, actual_cost REAL,
        image_input TEXT, audio_input TEXT,
        results TEXT NOT NULL DEFAULT '[]', outputs TEXT NOT NULL DEFAULT '[]',
        error_code TEXT, error_message TEXT, vars TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL, updated_at REAL NOT NULL, submitted_at REAL)""")
    db.execute("""CREATE TABLE uploads (
        sha256 TEXT NOT NULL, kind TEXT NOT NULL, uuid TEXT NOT NULL, url TEXT,
        uploaded_at REAL NOT NULL, PRIMARY KEY (sha256, kind))""")
    db.execute("""CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
        job_id TEXT, kind TEXT NOT NULL, detail TEXT)""")
    db.execute("CREATE INDEX events_job_id ON events (job_id)")


@migration
def m002_ledger(db: Database) -> None:
    """tasks: every task UUID ever submitted and what it cost; files: what avatarbatch wrote.

    `jobs.actual_cost` is the current attempt's cost and was reset by a changed spec, so money
    billed for superseded attempts survived only in `events`: rebuild the ledger from there.
    """
    db.execute("""CREATE TABLE tasks (
        task_uuid TEXT PRIMARY KEY, job_id TEXT NOT NULL, spec_hash TEXT,
        attempt INTEGER NOT NULL, status TEXT NOT NULL, run_id INTEGER,
        estimated_cost REAL, billed_cost REAL, cost_source TEXT,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""")
    db.execute("CREATE INDEX tasks_job_id ON tasks (job_id)")
    db.execute("CREATE INDEX tasks_run_id ON tasks (run_id)")
    db.execute("""CREATE TABLE files (
        path TEXT PRIMARY KEY, job_id TEXT, bytes INTEGER, sha256 TEXT, mtime_ns INTEGER,
        written_at REAL NOT NULL)""")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    if db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0:
        # A new file: its paths are written relative from the start, nothing to adopt.
        db.execute("INSERT INTO meta (key, value) VALUES ('outputs_relative', '1')")
    db.conn.executemany(
        "INSERT INTO tasks (task_uuid, job_id, spec_hash, attempt, status, estimated_cost, "
        "billed_cost, cost_source, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        _ledger_from_events(db),
    )


def _ledger_from_events(db: Database) -> list[tuple[Any, ...]]:
    """Task rows recovered from the transition log of a state file written before the ledger."""
    tasks: dict[str, list[Any]] = {}
    current: dict[str, str] = {}  # job id -> its latest task UUID
    specs: dict[str, str] = {}
    for at, job_id, kind, text in db.execute(
        "SELECT at, job_id, kind, detail FROM events WHERE job_id IS NOT NULL ORDER BY id"
    ):
        try:
            detail = json.loads(text) if text else {}
        except ValueError:
            continue
        if not isinstance(detail, dict):
            continue
        if kind in ("created", "changed") and isinstance(detail.get("spec_hash"), str):
            specs[job_id] = detail["spec_hash"]
        if kind != "transition":
            continue
        uuid = detail.get("task_uuid")
        if isinstance(uuid, str) and uuid not in tasks:
            attempt = detail.get("attempts") if isinstance(detail.get("attempts"), int) else 1
            status = TaskStatus.SUBMITTING.value
            tasks[uuid] = [uuid, job_id, specs.get(job_id), attempt, status, None, None, None, at]
            current[job_id] = uuid
        task = tasks.get(current.get(job_id, ""))
        if task is None:
            continue
        if detail.get("to") == JobStatus.PROCESSING.value:
            task[4] = TaskStatus.ACCEPTED.value
        cost = to_float(detail["actual_cost"]) if "actual_cost" in detail else None
        if cost is not None:
            task[4], task[6], task[7] = TaskStatus.BILLED.value, cost, "recovered"
    for job_id, latest in db.execute("SELECT id, task_uuid FROM jobs"):
        for task in tasks.values():
            # An earlier attempt whose cost never reached the log was not billed (it failed).
            if task[1] == job_id and task[0] != latest and task[4] != TaskStatus.BILLED.value:
                task[4], task[6] = TaskStatus.UNBILLED.value, 0.0
    return [(*task, task[-1]) for task in tasks.values()]


@migration
def m003_media_probes(db: Database) -> None:
    """media_probes: what probing each local media file found, by path, role, size and mtime,
    so that a rerun does not read and decode the same files again."""
    db.execute("""CREATE TABLE media_probes (
        path TEXT NOT NULL, role TEXT NOT NULL, bytes INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL, info TEXT NOT NULL, probed_at REAL NOT NULL,
        PRIMARY KEY (path, role))""")
