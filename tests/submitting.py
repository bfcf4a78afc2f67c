"""Submitting one task in a test the way the engine submits: through `submit_many`."""

from __future__ import annotations

from typing import Any

from avatarbatch.runware.client import RunwareClient


async def submit_one(client: RunwareClient, task: dict[str, Any]) -> None:
    """Submit `task`; raise the error the API answered for it, if any."""
    refused = (await client.submit_many([task]))[task["taskUUID"]]
    if refused is not None:
        raise refused
