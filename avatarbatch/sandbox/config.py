"""Settings of one sandbox instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from avatarbatch.sandbox.faults import FaultSpec

PROFILES = ("default", "strict")
#: What `profile="strict"` sets, for each knob not given explicitly: the most conservative
#: reading of the places Runware's docs leave open (RUNWARE_PROTOCOL.md §3, §5, §7, §12).
STRICT_KNOBS: dict[str, Any] = {
    "batched_polls": False,
    "ack_status": 202,
    "registration_lag": 2.0,
    "success_status": "completed",
    "url_with_upload_endpoint": False,
    "upload_conflicts": True,
}


class SandboxConfig(BaseModel):
    """How the simulated provider behaves. Defaults suit a demo; tests turn latency down."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    api_key: str | None = None  #: only this key is accepted; None accepts any non-empty key
    path: str = "/v1"
    latency: float = Field(0.2, ge=0)  #: render seconds per second of audio
    fixed_latency: float = Field(0.3, ge=0)  #: render seconds added to every task
    workers: int = Field(4, ge=1)  #: render slots: tasks beyond this wait in a queue
    render: Literal["full", "stub"] = "full"
    faults: FaultSpec = Field(default_factory=FaultSpec)
    seed: int = 0
    allow_remote: bool = False  #: fetch inputs and call webhooks beyond loopback addresses
    retry_after: int = Field(1, ge=0)  #: the Retry-After of injected 429 answers, seconds
    slow_seconds: float = Field(2.0, ge=0)  #: delay of a `slow` fault
    storage_dir: Path | None = None  #: where renders live; a temporary folder by default
    #: keep tasks, uploads and the ledger in `storage_dir` across restarts, like an endpoint
    #: that kept working while its client was away (requires storage_dir); tasks left
    #: unfinished are rendered on the next start, polls get URLs of the address they used
    persist: bool = False
    max_body_bytes: int = 64 * 1024 * 1024
    balance: float | None = None  #: USD; once billing reaches it, submissions get HTTP 402
    default_ttl: int = 24 * 3600  #: seconds a result URL lives when the task gives no ttl
    #: grow every MP4/MOV result to this many bytes with a trailing `free` box (a sparse
    #: file, so it costs no disk), to show what large downloads do to a client's memory
    video_bytes: int | None = Field(None, ge=0, lt=2**32)
    #: how a POST holding an invalid videoInference is refused: each task on its own (what
    #: Runware documents), or the whole request with one error naming no task, even when it
    #: held one task (what an API may do too: the protocol leaves it unconfirmed)
    batch_refusal: Literal["per_task", "whole"] = "per_task"

    #: "strict" turns every knob below to its value in STRICT_KNOBS unless it is given
    profile: Literal["default", "strict"] = "default"
    #: several getResponse tasks in one POST are answered; False refuses such a POST as a
    #: whole (400, one error naming no task), as an API that polls one task per call would
    batched_polls: bool = True
    #: HTTP status of a POST that accepted a videoInference task (an acknowledgement)
    ack_status: int = Field(200, ge=200, le=299)
    #: seconds after acceptance during which getResponse cannot see the task yet (answered
    #: as not found or as empty data, per task from the seed); resubmitting still conflicts
    registration_lag: float = Field(0.0, ge=0)
    #: `status` of finished result items in getResponse answers and webhooks
    success_status: str = Field("success", min_length=1)
    #: success items keep `videoURL` when the task has an uploadEndpoint; False leaves it out
    url_with_upload_endpoint: bool = True
    #: a reused taskUUID on imageUpload/mediaStorage answers 400 conflictTaskUUID instead of
    #: uploading again
    upload_conflicts: bool = False

    @field_validator("persist")
    @classmethod
    def _persist_needs_storage(cls, persist: bool, info: ValidationInfo) -> bool:
        if persist and info.data.get("storage_dir") is None:
            raise ValueError(
                "keeping tasks across restarts needs a storage folder (storage_dir) to keep them in"
            )
        return persist

    @model_validator(mode="before")
    @classmethod
    def _strict_profile(cls, data: Any) -> Any:
        """Fill the knobs the strict profile implies; explicit values win, so tests can mix.

        Runs on construction only: `model_copy(update={"profile": "strict"})` sets no knobs.
        """
        if isinstance(data, dict) and data.get("profile") == "strict":
            return {**STRICT_KNOBS, **data}
        return data
