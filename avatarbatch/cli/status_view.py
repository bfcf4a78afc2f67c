"""What `status` and `plan` read from a state file, without running anything."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from avatarbatch.engine import outputs, place
from avatarbatch.errors import UsageError
from avatarbatch.manifest.document import Manifest, load_manifest
from avatarbatch.manifest.preflight import Preflight
from avatarbatch.money import MONEY_PLACES
from avatarbatch.plan import Plan, PlanStatus, build_plan
from avatarbatch.report.data import tally_by_status
from avatarbatch.report.files import summary_markdown, write_reports
from avatarbatch.state import lock
from avatarbatch.state.history import lines, story
from avatarbatch.state.store import JobStatus, StateStore


def plan_of(
    checked: Preflight, *, out: Path | None, state: Path | None, sandbox: bool = False
) -> Plan:
    """What a run would do now, read from the state file (if any); no API call.

    Done jobs whose video in the output folder is missing or changed are REFETCH (the next
    run fetches them again, at no cost).
    """
    manifest = checked.manifest
    assert manifest is not None
    where = place.locate(manifest, out=out, state=state, sandbox=sandbox)
    if not where.state.exists():
        return build_plan(manifest.jobs, checked.media)
    store = StateStore.open(where.state)
    try:
        place.check_manifest(store, where, manifest)
        folder = out or outputs.folder_of(store, where.out)
        damaged = outputs.damaged_videos(store.recorded_outputs(), folder).damaged

        def statuses(hashes: list[tuple[str, str]]) -> dict[str, PlanStatus]:
            return store.plan_statuses(hashes, damaged)

        return build_plan(manifest.jobs, checked.media, statuses)
    finally:
        store.close()


def located(
    manifest: Path, *, state: Path | None, out: Path | None, sandbox: bool
) -> tuple[Manifest, place.Place]:
    """The manifest and where its batch lives (the rehearsal's folder when `sandbox`)."""
    loaded = load_manifest(manifest)
    return loaded, place.locate(loaded, out=out, state=state, sandbox=sandbox)


def load(
    manifest: Path | None, *, state: Path | None, out: Path | None, sandbox: bool = False
) -> dict[str, Any]:
    """Jobs by state, failures, spend and the last run, as one JSON-ready mapping."""
    default_out = None
    if manifest is not None:
        loaded, where = located(manifest, state=state, out=out, sandbox=sandbox)
        state, default_out = where.state, where.out
    elif state is None:
        raise UsageError("give a MANIFEST or --state FILE")
    if not state.exists():
        raise UsageError(_nothing_ran(state))
    store = StateStore.open(state)
    try:
        if manifest is not None:
            place.check_manifest(store, where, loaded)
        jobs = store.jobs()
        tally = tally_by_status(jobs.values())
        runs = store.runs()
        return {
            "state_file": str(state),
            "jobs": len(jobs),
            "by_status": tally.counts(every=JobStatus),
            "spend": round(store.spend(), MONEY_PLACES),
            "damaged_videos": outputs.damaged_videos(
                store.recorded_outputs(),
                out or outputs.folder_of(store, default_out or state.parent),
            ).damaged,
            "estimated": round(tally.totals().estimated_cost, MONEY_PLACES),
            "failures": [
                {"id": j.id, "error_code": j.error_code, "error_message": j.error_message}
                for j in jobs.values()
                if j.status is JobStatus.FAILED
            ],
            "last_run": runs[-1] if runs else None,
            "running": lock.held(state),
            "target": place.recorded_target(store),
        }
    finally:
        store.close()


#: How many known job ids a refusal of an unknown one suggests, and how alike they must be.
SUGGESTIONS = 3
SUGGESTION_CUTOFF = 0.6


def job_history(
    manifest: Path | None, *, state: Path | None, out: Path | None, sandbox: bool, job_id: str
) -> dict[str, Any]:
    """One job's story from the state file's events, as one JSON-ready mapping:
    {"job", "status", "attempts", "events": [{"at", "what", ...detail}, ...]}."""
    if manifest is not None:
        loaded, where = located(manifest, state=state, out=out, sandbox=sandbox)
        state = where.state
    elif state is None:
        raise UsageError("give a MANIFEST or --state FILE")
    if not state.exists():
        raise UsageError(_nothing_ran(state))
    store = StateStore.open(state)
    try:
        if manifest is not None:
            place.check_manifest(store, where, loaded)
        record = store.get(job_id)
        if record is None:
            raise UsageError(_unknown_job(job_id, store.job_ids(), state))
        events = store.events(job_id)
    finally:
        store.close()
    return {
        "job": record.id,
        "status": record.status.value,
        "attempts": record.attempts,
        "events": story(events),
    }


def history_lines(history: dict[str, Any]) -> list[str]:
    """A `job_history` as lines to print: a heading, then one line per step, oldest first."""
    return lines(history)


def _unknown_job(job_id: str, known: list[str], state: Path) -> str:
    close = difflib.get_close_matches(job_id, known, n=SUGGESTIONS, cutoff=SUGGESTION_CUTOFF)
    if close:
        hint = "did you mean " + " or ".join(repr(name) for name in close) + "?"
    elif known:
        shown = ", ".join(known[:SUGGESTIONS]) + (", ..." if len(known) > SUGGESTIONS else "")
        hint = f"it holds {len(known)} job{'s' * (len(known) != 1)}: {shown}"
    else:
        hint = "it holds no job yet"
    return f"no job {job_id!r} in {state}; {hint}"


def rewrite_reports(
    manifest: Path | None, *, state: Path | None, out: Path | None, sandbox: bool = False
) -> tuple[str, Path]:
    """Rewrite the report files from the state file; returns the summary and the folder."""
    if manifest is None:
        if state is None:
            raise UsageError("give a MANIFEST or --state FILE")
        manifest = _last_manifest(state)
    explicit_state = state
    loaded, where = located(manifest, state=state, out=out, sandbox=sandbox)
    state = where.state
    default_out = explicit_state.parent if explicit_state is not None else where.out
    if not state.exists():
        raise UsageError(_nothing_ran(state))
    store = StateStore.open(state)
    try:
        place.check_manifest(store, where, loaded)
        folder = out or outputs.folder_of(store, default_out)
        outputs.take_over(store, folder, state, write=False)
        data = write_reports(loaded, store, folder)
    finally:
        store.close()
    return summary_markdown(data), folder


def _nothing_ran(state: Path) -> str:
    """No state file here; a rehearsal's, one folder in, is worth pointing at."""
    rehearsal = state.parent / place.REHEARSAL_DIR / place.STATE_NAME
    hint = (
        f" (a sandbox rehearsal's is at {rehearsal}: add --sandbox)" if rehearsal.exists() else ""
    )
    return f"no state file at {state}: nothing has run yet{hint}"


def _last_manifest(state: Path) -> Path:
    if not state.exists():
        raise UsageError(_nothing_ran(state))
    store = StateStore.open(state)
    try:
        runs = store.runs()
    finally:
        store.close()
    if not runs:
        raise UsageError(f"{state} records no run; give the MANIFEST")
    return Path(runs[-1]["manifest"])
