"""A state file in which every job of a manifest is done, as if a run had just finished.

Scenario C times the rerun of 100,000 finished jobs; rendering them through the sandbox
first would take hours. So the jobs are registered by avatarbatch itself (`register_plan`,
exactly what `avatarbatch run` does first) and then moved to `done` in one bulk UPDATE with
the fields a finished run leaves behind: a task UUID, one result with its cost and URL, one
downloaded file (a 1 KB stand-in). Then the reports are written, as the run that finished
them would have: a rerun finds them current and leaves them alone.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from pathlib import Path

from avatarbatch.engine.place import STATE_NAME
from avatarbatch.engine.session import checked, register_plan
from avatarbatch.plan import build_plan
from avatarbatch.report.files import write_reports
from avatarbatch.state.store import JobStatus, StateStore


def mark_all_done(manifest_path: Path, out: Path) -> Path:
    """Register every job of the manifest in `out`'s state file and mark it done; its path."""
    preflight = checked(manifest_path)
    manifest = preflight.manifest
    assert manifest is not None
    path = out / STATE_NAME
    plan = build_plan(manifest.jobs, preflight.media, {})
    with StateStore.open(path) as store:
        register_plan(store, plan.jobs)
    now = time.time()
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    body = b"\0" * 1024  # a stand-in: a rerun checks size and mtime, not the picture
    digest = hashlib.sha256(body).hexdigest()
    rows, tasks, files = [], [], []
    for planned in plan.jobs:
        video = str(uuid.uuid4())
        task = str(uuid.uuid4())
        cost = float(planned.estimated_cost or 0)
        result = {
            "video_uuid": video,
            "video_url": f"https://vm.runware.ai/video/{video}.mp4",
            "seed": 1,
            "nsfw": False,
            "cost": cost,
        }
        relative = f"videos/{planned.job.id}.mp4"
        (out / relative).write_bytes(body)
        mtime = (out / relative).stat().st_mtime_ns
        output = {"path": relative, "bytes": len(body), "sha256": digest}
        rows.append(
            (task, cost, json.dumps([result]), json.dumps([output]), now, now, planned.job.id)
        )
        tasks.append((task, planned.job.id, planned.spec_hash, cost, cost, now, now))
        files.append((relative, planned.job.id, len(body), digest, mtime, now))
    with sqlite3.connect(path) as db:
        db.executemany(
            f"""UPDATE jobs SET status = '{JobStatus.DONE.value}', attempts = 1, task_uuid = ?,
                actual_cost = ?, results = ?, outputs = ?, submitted_at = ?, updated_at = ?
                WHERE id = ?""",
            rows,
        )
        db.executemany(
            """INSERT INTO tasks (task_uuid, job_id, spec_hash, attempt, status, estimated_cost,
                                  billed_cost, cost_source, created_at, updated_at)
               VALUES (?, ?, ?, 1, 'billed', ?, ?, 'api', ?, ?)""",
            tasks,
        )
        db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", files)
    db.close()
    with StateStore.open(path) as store:
        write_reports(manifest, store, out)
    return path
