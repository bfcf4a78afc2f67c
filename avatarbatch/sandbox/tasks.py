"""What the sandbox knows of one accepted task: its request, its results and their bill."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from avatarbatch import catalog


@dataclass
class Result:
    """One video of a task."""

    video_uuid: str
    seed: int
    status: str = "processing"  #: processing, success or error
    path: Path | None = None
    cost: Decimal = Decimal(0)
    error: tuple[str, str] | None = None  #: (code, message) when status is error
    expires_at: float = 0.0


@dataclass
class Task:
    uuid: str
    request: dict[str, Any]
    base_url: str  #: scheme://host:port the client used, to build result URLs it can reach
    accepted_at: float
    api_key: str = ""  #: the submitter's key, only so that `echo_key` can leak it; never saved
    results: list[Result] = field(default_factory=list)
    seconds: float | None = None
    finished: bool = False
    restored: bool = False  #: accepted by an earlier run of a persistent sandbox

    @property
    def model(self) -> catalog.AvatarModel:
        return catalog.model_by_id(self.request["model"])

    @property
    def status(self) -> str:
        if not self.finished:
            return "processing"
        return "success" if any(r.status == "success" for r in self.results) else "error"

    @property
    def cost(self) -> Decimal:
        return sum((r.cost for r in self.results if r.status == "success"), Decimal(0))

    def result_key(self, result: Result) -> str:
        """What faults on one result are keyed on: the client's task UUID and the result's place.

        Not the videoUUID, which is random: with it a seed could not replay the same faults.
        """
        return f"{self.uuid}/{self.results.index(result)}"
