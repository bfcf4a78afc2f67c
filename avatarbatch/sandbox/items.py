"""The items a finished result is reported as, in getResponse answers and webhooks."""

from __future__ import annotations

from typing import Any

from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.render import EXTENSIONS
from avatarbatch.sandbox.tasks import Result, Task

VIDEO_ROUTE = "/sandbox/video/"


def result_item(
    task: Task, result: Result, config: SandboxConfig, base_url: str | None = None
) -> dict[str, Any]:
    """The getResponse / webhook item of one finished video.

    Its URL starts with `base_url`, the address the client reaches the sandbox at, or by
    default with the one it used to submit the task.
    """
    fmt = task.request.get("outputFormat", "MP4")
    base = base_url or task.base_url
    item: dict[str, Any] = {
        "taskType": "videoInference",
        "taskUUID": task.uuid,
        "status": config.success_status,
        "videoUUID": result.video_uuid,
        "videoURL": f"{base}{VIDEO_ROUTE}{result.video_uuid}.{EXTENSIONS[fmt]}",
        "seed": result.seed,
    }
    if task.request.get("uploadEndpoint") and not config.url_with_upload_endpoint:
        # The video goes to the caller's bucket; an API may then give no URL of its own.
        del item["videoURL"]
    safety = task.request.get("safety") or {}
    if safety.get("checkContent") or safety.get("mode") in ("fast", "full"):
        item["NSFWContent"] = False
    if task.request.get("includeCost"):
        item["cost"] = float(result.cost)
    return item


def error_item(task: Task, result: Result) -> dict[str, Any]:
    """The getResponse / webhook item of one failed generation."""
    code, message = result.error or ("unknownError", "Unknown failure.")
    return {
        "taskType": "videoInference",
        "taskUUID": task.uuid,
        "status": "error",
        "code": code,
        "message": message,
    }
