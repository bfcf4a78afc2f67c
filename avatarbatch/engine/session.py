"""One run of a manifest, end to end: the one path behind `avatarbatch run` and the library.

It checks the manifest, locks and opens the state file, records the run, starts the sandbox
when asked, drives the runner, writes the reports and turns what happened into a summary with
an exit code (summary.py).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from avatarbatch.config import RunSettings
from avatarbatch.engine import outputs, place, sandboxed, selection
from avatarbatch.engine.budget import estimated_total
from avatarbatch.engine.outcome import Hooks, Outcome
from avatarbatch.engine.runner import Runner
from avatarbatch.engine.signals import signals_enabled
from avatarbatch.engine.summary import RunSummary, outcome_word, summarize
from avatarbatch.errors import ExitCode, ManifestError, UsageError
from avatarbatch.manifest.document import Manifest
from avatarbatch.manifest.media import ProbeCache
from avatarbatch.manifest.preflight import Preflight, preflight
from avatarbatch.plan import PlannedJob, PlanStatus, build_plan
from avatarbatch.report.data import FINISHED, tally_of
from avatarbatch.report.files import write_reports_if_changed
from avatarbatch.runware.client import RunwareClient, make_http_client
from avatarbatch.runware.limits import RateLimiter
from avatarbatch.state.lock import state_lock
from avatarbatch.state.probes import ProbeMemo
from avatarbatch.state.store import JobSpec, JobStatus, StateError, StateStore

log = logging.getLogger("avatarbatch.run")

#: API connections beyond one per task in flight: uploads, the submit queue's and the
#: poller's POSTs go through the same pool as the tasks' own requests
SPARE_API_CONNECTIONS = 4


def checked(
    manifest_path: Path, probes: Callable[[Manifest], ProbeCache | None] | None = None
) -> Preflight:
    """A preflight that must pass: its errors raise ManifestError; warnings are the caller's.

    `probes`: what earlier runs found probing the media (see `probe_memo`).
    """
    result = preflight(manifest_path, cache=probes)
    if not result.ok:
        raise ManifestError(result.problems.items)
    return result


def probe_memo(
    manifest: Manifest, *, out: Path | None, state: Path | None, sandbox: bool
) -> ProbeMemo:
    """The media probes kept in the state file a run with these options uses, read without
    locking or changing it: the manifest is checked before that, and a bad one leaves nothing
    behind. (A state at the old working-directory default is not looked for: its run just
    probes again.)"""
    folder = out or place.default_out(manifest, sandbox=sandbox)
    return ProbeMemo.read(state or folder / place.STATE_NAME)


@dataclass(frozen=True)
class _Wiring:
    """How the caller follows and steers a run: test checkpoints, signals, the progress bar."""

    hooks: Hooks | None
    on_signal: list[Callable[[], None]]
    on_runner: Callable[[Runner], None] | None


async def run_batch(
    manifest_path: Path,
    settings: RunSettings,
    *,
    hooks: Hooks | None = None,
    handle_signals: bool = False,
    on_runner: Callable[[Runner], None] | None = None,
) -> RunSummary:
    """Run the manifest; resumable, never paying twice for a job. Raises AvatarBatchError."""
    memo = ProbeMemo()

    def probes(manifest: Manifest) -> ProbeMemo:
        nonlocal memo
        memo = probe_memo(
            manifest, out=settings.out, state=settings.state, sandbox=settings.sandbox is not None
        )
        return memo

    checked_manifest = checked(manifest_path, probes)
    manifest = checked_manifest.manifest
    assert manifest is not None
    where = place.locate(
        manifest, out=settings.out, state=settings.state, sandbox=settings.sandbox is not None
    )
    out, path = where.out, where.state
    selected = selection.select(manifest.jobs, only=settings.only, where=settings.where)
    fresh = not path.exists()
    if fresh:  # before a single byte is written: lock, state or videos folder
        outputs.refuse_foreign(out, None, path)
        _check_writable(out / outputs.VIDEOS)
    with state_lock(path), signals_enabled(handle_signals) as on_signal:
        store = StateStore.open(path)
        try:
            # An existing state may belong to another target or manifest: that refusal
            # comes before anything (even the videos folder) is made.
            place.claim(store, where, manifest, sandboxed.target(settings))
            if not fresh:
                _check_writable(out / outputs.VIDEOS)
            store.remember_probes(memo.fresh)
            owners = outputs.take_over(store, out, path)
            try:
                summary = await _run_planned(
                    checked_manifest,
                    store,
                    owners,
                    where,
                    selected,
                    settings,
                    _Wiring(hooks, on_signal, on_runner),
                )
            finally:
                # Written however the run ended; by now the plan is gone, which matters to
                # the peak memory of a large batch.
                report, problem = _reports(manifest, store, out)
            summary.report = report
            if problem is not None and summary.exit_code == ExitCode.OK:
                summary.exit_code, summary.message = ExitCode.FAILED, problem
        finally:
            store.close()
    return summary


async def _run_planned(
    checked_manifest: Preflight,
    store: StateStore,
    owners: dict[str, str | None],
    where: place.Place,
    selected: frozenset[str] | None,
    settings: RunSettings,
    wiring: _Wiring,
) -> RunSummary:
    """Plan against the state file, register, run what is left, record the run's summary."""
    manifest = checked_manifest.manifest
    assert manifest is not None
    out = where.out
    # Everything that needs the recorded videos is worked out first, and let go before
    # planning: a large batch must not hold both at once (peak memory).
    recorded = store.recorded_outputs()
    clashes = outputs.check_names(manifest.jobs, owners, recorded)
    if clashes.errors:
        raise ManifestError(clashes.items)
    renames = outputs.plan_renames(manifest.jobs, recorded, out)
    damage = outputs.damaged_videos(recorded, out)
    del recorded, owners
    if selected is not None:
        renames = [r for r in renames if r.job_id in selected]
        damage.damaged = {k: v for k, v in damage.damaged.items() if k in selected}
    if damage.unchanged:
        store.seen_unchanged(damage.unchanged)
    plan = build_plan(manifest.jobs, checked_manifest.media, store.plan_statuses)
    chosen = [p for p in plan.jobs if selected is None or p.job.id in selected]
    estimated = estimated_total(chosen)  # once, for the progress display and the summary
    statuses = _register(store, chosen)
    outputs.apply_renames(renames, out, store)
    statuses |= _refetch_damaged(store, damage.damaged, statuses)
    _confirm(settings, chosen, statuses)
    run_id = store.start_run(
        manifest=str(manifest.path),
        manifest_sha256=manifest.sha256,
        arguments=settings.public(),
    )
    outcome = Outcome()
    try:
        # With nothing to do there is no sandbox, no connection, no request at all.
        strays = store.stray_tasks(job.id for job in manifest.jobs)
        if strays or _has_work(statuses, settings.retry_failed):
            manifest_ids = None if selected is None else [job.id for job in manifest.jobs]
            outcome = await _execute(
                checked_manifest,
                chosen,
                estimated,
                manifest_ids,
                store,
                out,
                settings,
                wiring,
                run_id,
            )
    finally:
        tally = tally_of(store, (p.job.id for p in chosen))
        spend = (store.spend(), store.spend(run_id))
        summary = summarize(tally, chosen, outcome, where, spend, estimated)
        store.finish_run(
            run_id,
            outcome=outcome_word(summary.exit_code),
            exit_code=int(summary.exit_code),
            summary=summary.as_dict(),
        )
    return summary


def _refetch_damaged(
    store: StateStore, damaged: dict[str, str], statuses: dict[str, JobStatus]
) -> dict[str, JobStatus]:
    """Done jobs whose video is missing or changed go back to `downloading`: the result URL
    they were paid for is fetched again (free while it lives), never rendered again. A job
    whose spec changed meanwhile is not: it renders anew anyway."""
    refetch = [job_id for job_id in damaged if statuses.get(job_id) is JobStatus.DONE]
    for job_id in refetch:
        log.warning("job %s: %s; downloading it again from its result URL", job_id, damaged[job_id])
        store.transition(job_id, JobStatus.DOWNLOADING)
    return dict.fromkeys(refetch, JobStatus.DOWNLOADING)


def _check_writable(folder: Path) -> None:
    """Create the videos folder and prove it writable before anything is paid for.

    Otherwise an unusable output folder (read-only, or a file where a folder should be)
    only showed once the first paid video arrived, as a traceback.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write into the output folder {folder}: {exc.strerror or exc}; "
            "choose another one with --out"
        ) from exc


def register_plan(store: StateStore, planned: Iterable[PlannedJob]) -> dict[str, JobStatus]:
    """Bring the state file in line with the manifest (new and changed jobs) in one commit."""
    return store.ensure_jobs(job_spec(p) for p in planned)


def _register(store: StateStore, chosen: list[PlannedJob]) -> dict[str, JobStatus]:
    """`register_plan` for a plan just made against this state under its lock: only its new
    and changed jobs are written, and the others' statuses are what the plan found (a rerun
    of 100,000 finished jobs sends none of them to SQL again)."""
    fresh = register_plan(store, (p for p in chosen if p.status in _REGISTERED))
    left = store.unfinished() if any(p.status is PlanStatus.UNFINISHED for p in chosen) else {}
    statuses = {}
    for planned in chosen:
        job_id = planned.job.id
        status = fresh.get(job_id) or left.get(job_id) or _SETTLED.get(planned.status)
        if status is None:
            raise StateError(f"job {job_id!r} changed in {store.path} while it was planned")
        statuses[job_id] = status
    return statuses


_REGISTERED = (PlanStatus.NEW, PlanStatus.CHANGED)
#: What the state file says of a job the plan found settled (REFETCH: done, its video not)
_SETTLED = {
    PlanStatus.DONE: JobStatus.DONE,
    PlanStatus.REFETCH: JobStatus.DONE,
    PlanStatus.FAILED: JobStatus.FAILED,
}


def job_spec(planned: PlannedJob) -> JobSpec:
    """What the state file keeps of a planned job (made here: the state sits below the plan)."""
    cost = planned.estimated_cost
    return JobSpec(
        id=planned.job.id,
        spec_hash=planned.spec_hash,
        model=planned.job.model,
        number_results=planned.job.number_results,
        audio_seconds=planned.audio_seconds,
        estimated_cost=None if cost is None else float(cost),
    )


def _confirm(
    settings: RunSettings, chosen: list[PlannedJob], statuses: dict[str, JobStatus]
) -> None:
    """Ask the caller (a person at a terminal) before paying; a no stops before any request."""
    if settings.confirm is None or settings.sandbox is not None:
        return
    # Only jobs with no task yet: tasks of an interrupted run were paid for by that run.
    unpaid = {JobStatus.PENDING, JobStatus.UPLOADING}
    if settings.retry_failed:
        unpaid.add(JobStatus.FAILED)
    to_run = [p for p in chosen if statuses.get(p.job.id) in unpaid]
    if to_run and not settings.confirm(estimated_total(to_run), len(to_run)):
        raise UsageError("not started: nothing was submitted or paid")


async def _execute(
    checked_manifest: Preflight,
    chosen: list[PlannedJob],
    estimated: Decimal,
    manifest_ids: list[str] | None,
    store: StateStore,
    out: Path,
    settings: RunSettings,
    wiring: _Wiring,
    run_id: int,
) -> Outcome:
    with sandboxed.api_settings(settings, out) as client_settings:
        async with (
            make_http_client(settings.concurrency + SPARE_API_CONNECTIONS) as http,
            make_http_client(settings.downloads) as downloads,
        ):
            gate = RateLimiter(settings.rps)
            client = RunwareClient(http, client_settings, gate=gate, downloads=downloads)
            runner = Runner(
                chosen,
                checked_manifest.media,
                store,
                client,
                out,
                settings,
                wiring.hooks,
                run_id,
                estimated_total=estimated,
                manifest_ids=manifest_ids,
            )
            if wiring.on_runner is not None:
                wiring.on_runner(runner)
            wiring.on_signal.append(runner.interrupt)
            try:
                return await runner.run()
            except asyncio.CancelledError:
                runner.outcome.interrupted = True
                return runner.outcome


def _reports(manifest: Manifest, store: StateStore, out: Path) -> tuple[str, str | None]:
    """Write the report files (unless those there are current); returns the summary, and
    what went wrong if they could not be written.

    A failure to write them must not hide the run's outcome, nor pass unnoticed: the caller
    turns it into a non-zero exit.
    """
    try:
        return write_reports_if_changed(manifest, store, out), None
    except OSError as exc:
        problem = f"could not write the reports into {out}: {exc.strerror or exc}"
        log.error("%s", problem)
        return "", problem


def _has_work(statuses: dict[str, JobStatus], retry_failed: bool) -> bool:
    finished = (JobStatus.DONE,) if retry_failed else FINISHED
    return any(status not in finished for status in statuses.values())
