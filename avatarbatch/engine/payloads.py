"""What avatarbatch sends: Runware task objects built from resolved jobs.

Only fields the manifest set are sent, plus `deliveryMethod` (the avatar models are async
only), `numberResults`, `outputFormat` (it names the files we download) and `includeCost`.
"""

from __future__ import annotations

from typing import Any

from avatarbatch.manifest.document import Job


def video_task(job: Job, image: str, audio: str, task_uuid: str) -> dict[str, Any]:
    """The videoInference task for `job`, with its inputs already as UUIDs or URLs."""
    task: dict[str, Any] = {
        "taskType": "videoInference",
        "taskUUID": task_uuid,
        "model": job.model,
        "inputs": {"image": image, "audio": audio},
        "deliveryMethod": "async",
        "outputFormat": job.output_format,
        "numberResults": job.number_results,
        "includeCost": job.include_cost,
    }
    optional = {
        "positivePrompt": job.prompt,
        "outputQuality": job.output_quality,
        "ttl": job.ttl,
        "webhookURL": job.webhook_url,
        "uploadEndpoint": job.upload_endpoint,
    }
    task.update({key: value for key, value in optional.items() if value is not None})
    if job.safety is not None:
        safety = {"checkContent": job.safety.check_content, "mode": job.safety.mode}
        task["safety"] = {key: value for key, value in safety.items() if value is not None}
    return task
