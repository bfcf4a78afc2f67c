"""The sandbox's books, as /sandbox/ledger and /sandbox/videos report them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from avatarbatch.sandbox.tasks import Task

if TYPE_CHECKING:
    from avatarbatch.sandbox.engine import Engine


def ledger(tasks: Mapping[str, Task], conflicts: int) -> dict[str, Any]:
    """The bill: every task with its status and cost, and the total."""
    rows = [
        {
            "taskUUID": task.uuid,
            "model": task.request["model"],
            "status": task.status,
            "seconds": task.seconds,
            "results": sum(1 for r in task.results if r.status == "success"),
            "cost": float(task.cost),
        }
        for task in tasks.values()
    ]
    total = sum((task.cost for task in tasks.values()), Decimal(0))
    return {
        "tasks": rows,
        "total_cost": float(total),
        "submissions": len(tasks),
        "conflicts": conflicts,
    }


def videos(tasks: Mapping[str, Task]) -> dict[str, dict[str, Any]]:
    """Every rendered video by videoUUID, with the sha256 of the bytes served for it."""
    served: dict[str, dict[str, Any]] = {}
    for task in tasks.values():
        for result in task.results:
            if result.status == "success" and result.path is not None:
                data = result.path.read_bytes()
                served[result.video_uuid] = {
                    "taskUUID": task.uuid,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
    return served


#: Request kinds /sandbox/stats counts; the middle ones also count the POSTs that held them.
STATS_KEYS = (
    "http_posts",
    "videoInference",
    "getResponse",
    "mediaStorage",
    "imageUpload",
    "downloads",
)


def stats(engine: Engine) -> dict[str, Any]:
    """Requests by kind, POSTs by task type, tasks in flight, faults, webhooks, and for
    benchmarks: the wall clock (time.time()) of the first POST, and the CPU seconds of the
    process serving the sandbox so far."""
    return {
        "requests": {key: engine.requests[key] for key in STATS_KEYS},
        "posts_with": {key: engine.posts_with[key] for key in STATS_KEYS[1:-1]},
        "peak_in_flight": engine.peak_in_flight,
        "in_flight": engine.in_flight,
        "tasks": len(engine.tasks),
        "faults": dict(engine.faults.injected),
        "webhooks": engine.notifier.counts(),
        "first_post_at": engine.post_times[0] if engine.post_times else None,
        "process_cpu_s": time.process_time(),
    }
