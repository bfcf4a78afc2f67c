"""What a persistent sandbox takes up from its folder when it starts again.

Finished tasks keep their answers and videos; an unfinished one goes back to the queue and
renders only the results it still owes. The registration lag of a restored task counts from
its acceptance on the wall clock (the monotonic clock it was stamped with died with the
process): its `accepted_at` becomes the monotonic instant that lies as far in the past.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from avatarbatch.sandbox import persist, store
from avatarbatch.sandbox.tasks import Result, Task


@dataclass
class Restored:
    tasks: dict[str, Task] = field(default_factory=dict)
    uploads: list[store.StoredMedia] = field(default_factory=list)
    upload_uuids: set[str] = field(default_factory=set)
    resumed: list[Task] = field(default_factory=list)  #: unfinished: to be queued again
    ended: list[Task] = field(default_factory=list)  #: stopped after their last result


def restore(saved: persist.Saved, storage: Path) -> Restored:
    """The tasks and uploads `saved` describes, with their files under `storage`."""
    now, wall = time.monotonic(), time.time()
    found = Restored()
    for item in saved.uploads:
        if item.path.is_file():
            found.uploads.append(store.StoredMedia(item.media_uuid, None, item.mime, item.path))
    found.upload_uuids = {item.task_uuid for item in saved.uploads}
    for row in saved.tasks:
        task = Task(
            row.uuid,
            row.request,
            row.base_url,
            now - max(0.0, wall - row.accepted_at),
            seconds=row.seconds,
            finished=row.finished,
            restored=True,
        )
        task.results = [_result(task, result, storage) for result in row.results]
        found.tasks[task.uuid] = task
        if task.finished:
            continue
        if all(result.status != "processing" for result in task.results):
            task.finished = True  # stopped between its last result and the end of the task
            found.ended.append(task)
            continue
        found.resumed.append(task)
    return found


def _result(task: Task, saved: persist.SavedResult, storage: Path) -> Result:
    result = Result(saved.video_uuid, saved.seed, saved.status, expires_at=saved.expires_at)
    result.error = saved.error
    if saved.status == "success" and saved.path is not None:
        result.path, result.cost = storage / saved.path, saved.cost
        if not task.finished and not result.path.is_file():
            result.status, result.path, result.cost = "processing", None, Decimal(0)
    return result


def with_port(url: str, port: int) -> str:
    """`url` with its port replaced (scheme, host and path kept)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return parts._replace(netloc=f"{host}:{port}").geturl()
