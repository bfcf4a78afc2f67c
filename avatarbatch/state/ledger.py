"""The ledger: one row per task UUID ever submitted, what it may cost and what it did cost.

Rows are never reset or deleted, so money spent on a superseded attempt, a changed spec or a
removed row stays counted; every figure a report shows is a sum over this table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from avatarbatch.state.codec import to_float
from avatarbatch.state.database import StateDatabase
from avatarbatch.state.records import (
    OPEN_TASK_STATUSES,
    JobMoney,
    StrayTask,
    TaskEntry,
    TaskStatus,
)

_OPEN = ", ".join(f"'{status}'" for status in OPEN_TASK_STATUSES)
#: Below this, a job's ledger total and its record's cost are the same figure.
COST_TOLERANCE = 1e-9


class LedgerStore(StateDatabase):
    """Writes and sums of the `tasks` table."""

    def _write_task(self, job_id: str, task: TaskEntry) -> None:
        """Insert or update one task, inside the caller's transaction."""
        now = self._clock()
        self._db.execute(
            """INSERT INTO tasks (task_uuid, job_id, spec_hash, attempt, status, run_id,
                                  estimated_cost, billed_cost, cost_source, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (task_uuid) DO UPDATE SET
                   status = excluded.status, updated_at = excluded.updated_at,
                   run_id = coalesce(excluded.run_id, run_id),
                   estimated_cost = coalesce(excluded.estimated_cost, estimated_cost),
                   billed_cost = coalesce(excluded.billed_cost, billed_cost),
                   cost_source = coalesce(excluded.cost_source, cost_source)""",
            [
                task.task_uuid,
                job_id,
                task.spec_hash,
                task.attempt or 1,
                task.status.value,
                task.run_id,
                to_float(task.estimated_cost),
                to_float(task.billed_cost),
                task.cost_source,
                now,
                now,
            ],
        )

    def settle_task(self, job_id: str, task: TaskEntry) -> None:
        """Write a task's news to the ledger where its job does not move (a stray task's end,
        a refusal, a resend of the same UUID), and log it with the same commit."""
        with self._transaction():
            self._write_task(job_id, task)
            self._event(job_id, "task", task.logged())

    def tasks(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Ledger rows, oldest first (one job's, if given)."""
        where, params = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        return list(self._db.query(f"SELECT * FROM tasks {where} ORDER BY rowid", params))  # noqa: S608

    def spend(self, run_id: int | None = None) -> float:
        """What the provider billed through this state file (or for one run's submissions).

        A sum over the ledger, not over `jobs`: a changed spec, a retry or a removed row keeps
        every cent it cost here.
        """
        if run_id is None:
            row = self._db.execute("SELECT total(billed_cost) FROM tasks").fetchone()
        else:
            row = self._db.execute(
                "SELECT total(billed_cost) FROM tasks WHERE run_id = ?", [run_id]
            ).fetchone()
        return float(row[0])

    def money_by_job(self, manifest_ids: Iterable[str] | None = None) -> dict[str, JobMoney]:
        """The ledger summed per job id, removed jobs included (in the order first submitted).

        With `manifest_ids`, only the jobs whose money is not simply their record's
        `actual_cost` (earlier attempts, an estimated cost) and the jobs outside the manifest:
        100,000 ordinary jobs then cost no memory here.
        """
        only = ""
        params: list[Any] = []
        if manifest_ids is not None:
            only = """HAVING earlier != 0 OR guessed OR j.id IS NULL
                      OR abs(billed - coalesce(j.actual_cost, 0)) > ?
                      OR t.job_id NOT IN (SELECT value FROM json_each(?))"""
            params += [COST_TOLERANCE, json.dumps(list(manifest_ids))]
        rows = self._db.execute(
            f"""SELECT t.job_id, total(t.billed_cost) AS billed,
                       total(CASE WHEN t.task_uuid IS NOT j.task_uuid THEN t.billed_cost END)
                           AS earlier,
                       total(CASE WHEN t.status IN ({_OPEN}) THEN t.estimated_cost END),
                       max(t.cost_source = 'estimate') AS guessed, j.model
                FROM tasks t LEFT JOIN jobs j ON j.id = t.job_id
                GROUP BY t.job_id {only} ORDER BY min(t.rowid)""",  # noqa: S608 (fixed names)
            params,
        )
        return {
            job_id: JobMoney(float(billed), float(earlier), float(pending), bool(guessed), model)
            for job_id, billed, earlier, pending, guessed, model in rows
        }

    def stray_tasks(self, manifest_ids: Iterable[str]) -> list[StrayTask]:
        """Tasks that may still be billed but that no job drives any more: superseded by a
        changed spec while at the provider, or of a row removed from the manifest."""
        rows = self._db.execute(
            f"""SELECT t.task_uuid, t.job_id, t.status, t.estimated_cost, j.number_results,
                       j.audio_seconds
                FROM tasks t LEFT JOIN jobs j ON j.id = t.job_id
                WHERE t.status IN ({_OPEN}) AND (
                    t.task_uuid IS NOT j.task_uuid
                    OR t.job_id NOT IN (SELECT value FROM json_each(?)))
                ORDER BY t.rowid""",  # noqa: S608 (fixed names)
            [json.dumps(list(manifest_ids))],
        )
        return [
            StrayTask(uuid, job_id, TaskStatus(status), estimate, results or 1, seconds)
            for uuid, job_id, status, estimate, results, seconds in rows
        ]

    def open_tasks(self) -> int:
        """Tasks sent and not settled yet: only the endpoint that took them can answer."""
        query = f"SELECT count(*) FROM tasks WHERE status IN ({_OPEN})"  # noqa: S608
        row = self._db.execute(query).fetchone()
        return int(row[0])

    def holds_results(self) -> bool:
        """Whether a task was ever sent or a job got past `pending`: what a state file would
        strand if it changed hands to another API target."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM tasks) OR EXISTS "
            "(SELECT 1 FROM jobs WHERE status NOT IN ('pending', 'uploading'))"
        ).fetchone()
        return bool(row[0])
