"""What `status` and `plan` read from a state file, without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avatarbatch import batch, outputs
from avatarbatch.errors import UsageError
from avatarbatch.manifest import load_manifest
from avatarbatch.plan import DAMAGED, StoredJob
from avatarbatch.report import summary_markdown, write_reports
from avatarbatch.state import JobStatus, StateStore


def stored_jobs(path: Path, out: Path | None, default_out: Path) -> dict[str, StoredJob]:
    """What `plan` needs of the state file; done jobs whose video in the output folder is
    missing or changed are marked DAMAGED (the next run fetches them again, at no cost)."""
    store = StateStore.open(path)
    try:
        stored = store.planning_view()
        folder = out or outputs.folder_of(store, default_out)
        damaged = outputs.damaged_videos(store.recorded_outputs(), folder).damaged
    finally:
        store.close()
    for job_id in damaged:
        stored[job_id] = StoredJob(stored[job_id].spec_hash, DAMAGED)
    return stored


def load(manifest: Path | None, *, state: Path | None, out: Path | None) -> dict[str, Any]:
    """Jobs by state, failures, spend and the last run, as one JSON-ready mapping."""
    default_out = None
    if state is None:
        if manifest is None:
            raise UsageError("give a MANIFEST or --state FILE")
        loaded = load_manifest(manifest)
        state = batch.state_path(loaded, out, None)
        default_out = batch.output_dir(loaded, out)
    if not state.exists():
        raise UsageError(f"no state file at {state}: nothing has run yet")
    store = StateStore.open(state)
    try:
        jobs = store.jobs()
        runs = store.runs()
        return {
            "state_file": str(state),
            "jobs": len(jobs),
            "by_status": store.counts(),
            "spend": round(store.spend(), 5),
            "damaged_videos": outputs.damaged_videos(
                store.recorded_outputs(),
                out or outputs.folder_of(store, default_out or state.parent),
            ).damaged,
            "estimated": round(sum(j.estimated_cost or 0.0 for j in jobs.values()), 5),
            "failures": [
                {"id": j.id, "error_code": j.error_code, "error_message": j.error_message}
                for j in jobs.values()
                if j.status is JobStatus.FAILED
            ],
            "last_run": runs[-1] if runs else None,
        }
    finally:
        store.close()


def rewrite_reports(
    manifest: Path | None, *, state: Path | None, out: Path | None
) -> tuple[str, Path]:
    """Rewrite the report files from the state file; returns the summary and the folder."""
    if manifest is None:
        if state is None:
            raise UsageError("give a MANIFEST or --state FILE")
        manifest = _last_manifest(state)
    loaded = load_manifest(manifest)
    default_out = state.parent if state is not None else batch.output_dir(loaded, None)
    state = state or batch.state_path(loaded, out, None)
    if not state.exists():
        raise UsageError(f"no state file at {state}: nothing has run yet")
    store = StateStore.open(state)
    try:
        folder = out or outputs.folder_of(store, default_out)
        outputs.take_over(store, folder, state, write=False)
        data = write_reports(loaded, store, folder)
    finally:
        store.close()
    return summary_markdown(data), folder


def _last_manifest(state: Path) -> Path:
    if not state.exists():
        raise UsageError(f"no state file at {state}: nothing has run yet")
    store = StateStore.open(state)
    try:
        runs = store.runs()
    finally:
        store.close()
    if not runs:
        raise UsageError(f"{state} records no run; give the MANIFEST")
    return Path(runs[-1]["manifest"])
