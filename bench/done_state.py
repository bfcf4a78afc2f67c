"""A state file in which every job of a manifest is done, as if a run had just finished.

Scenario C times the rerun of 100,000 finished jobs; rendering them through the sandbox
first would take hours. So the jobs are registered by avatarbatch itself (`register_plan`,
exactly what `avatarbatch run` does first) and then moved to `done` in one bulk UPDATE with
the fields a finished run leaves behind: a task UUID, one result with its cost and URL, one
downloaded file. The files themselves are not written; a rerun does not open them.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

from avatarbatch.batch import checked, register_plan, state_path
from avatarbatch.plan import build_plan
from avatarbatch.state import JobStatus, StateStore


def mark_all_done(manifest_path: Path, out: Path) -> Path:
    """Register every job of the manifest in `out`'s state file and mark it done; its path."""
    preflight = checked(manifest_path)
    manifest = preflight.manifest
    assert manifest is not None
    path = state_path(manifest, out, None)
    plan = build_plan(manifest.jobs, preflight.media, {})
    with StateStore.open(path) as store:
        register_plan(store, plan)
    now = time.time()
    rows = []
    for planned in plan.jobs:
        video = str(uuid.uuid4())
        cost = float(planned.estimated_cost or 0)
        result = {
            "video_uuid": video,
            "video_url": f"https://vm.runware.ai/video/{video}.mp4",
            "seed": 1,
            "nsfw": False,
            "cost": cost,
        }
        output = {
            "path": str(out / "videos" / f"{planned.job.id}.mp4"),
            "bytes": 250_000,
            "sha256": "0" * 64,
        }
        rows.append(
            (
                str(uuid.uuid4()),
                cost,
                json.dumps([result]),
                json.dumps([output]),
                now,
                now,
                planned.job.id,
            )
        )
    with sqlite3.connect(path) as db:
        db.executemany(
            f"""UPDATE jobs SET status = '{JobStatus.DONE.value}', attempts = 1, task_uuid = ?,
                actual_cost = ?, results = ?, outputs = ?, submitted_at = ?, updated_at = ?
                WHERE id = ?""",
            rows,
        )
    return path
