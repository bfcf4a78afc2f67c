"""Running a manifest end to end: the one entry point behind `avatarbatch run` and the library.

It checks the manifest, locks and opens the state file, records the run, starts the sandbox
when asked, drives the runner, and turns what happened into a summary with an exit code
(DESIGN.md: 0 all done, 1 some failed, 3 budget, 4 auth/credit, 130 interrupted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from avatarbatch.engine import outputs, place, selection
from avatarbatch.engine.poller import PollTiming
from avatarbatch.engine.runner import Hooks, Outcome, Runner, RunOptions
from avatarbatch.errors import ManifestError, UsageError
from avatarbatch.manifest.document import Manifest
from avatarbatch.manifest.preflight import Preflight, preflight
from avatarbatch.plan import PlannedJob, PlanStatus, build_plan
from avatarbatch.report.files import summary_markdown, write_reports
from avatarbatch.runware.client import (
    DEFAULT_API_URL,
    ClientSettings,
    RunwareClient,
    make_http_client,
)
from avatarbatch.runware.limits import RateLimiter
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.state.lock import state_lock
from avatarbatch.state.store import JobOverview, JobSpec, JobStatus, StateStore

log = logging.getLogger("avatarbatch.run")

EXIT_OK, EXIT_FAILED, EXIT_BUDGET, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 3, 4, 130


@dataclass(frozen=True)
class BatchOptions:
    """Everything `run` needs besides the manifest; built once by the CLI or the caller."""

    client: ClientSettings | None = None  #: the real API; None requires `sandbox`
    sandbox: SandboxConfig | None = None  #: start a local sandbox for this run
    out: Path | None = None
    state: Path | None = None
    concurrency: int = 4
    rps: float = 5.0
    max_cost: Decimal | None = None
    retry_failed: bool = False
    poll: PollTiming = field(default_factory=PollTiming)
    job_timeout: float = 3600.0
    poll_batch: int | None = None  #: getResponse tasks per POST; None: the client's default
    only: tuple[str, ...] = ()  #: run just these job ids (the rest stay as they are)
    where: tuple[str, ...] = ()  #: run just the rows whose vars match each VAR=VALUE
    #: asked with the estimate and job count before anything is paid; False stops the run
    confirm: Callable[[Decimal, int], bool] | None = None

    def public(self) -> dict[str, Any]:
        """The options as stored in the state file and reports: no key, no secrets."""
        return {
            "api_url": self.client.api_url if self.client else None,
            "sandbox": self.sandbox is not None,
            "out": str(self.out) if self.out else None,
            "state": str(self.state) if self.state else None,
            "concurrency": self.concurrency,
            "rps": self.rps,
            "max_cost": str(self.max_cost) if self.max_cost is not None else None,
            "retry_failed": self.retry_failed,
            "poll_batch": self.poll_batch,
            "only": list(self.only),
            "where": list(self.where),
        }


@dataclass
class RunSummary:
    jobs: int
    done: int
    failed: int
    pending: int
    submitted: int  #: jobs that had a task accepted by this invocation
    tasks_sent: int  #: tasks accepted by this invocation, retries included
    skipped: int
    cost_actual: float  #: everything billed through this state file (the ledger's sum)
    cost_this_run: float  #: billed for what this invocation submitted
    cost_estimated: float
    exit_code: int
    message: str
    output_dir: str
    state_file: str
    report: str = ""  #: the Markdown summary also written to report.md

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("report")
        return values


def checked(manifest_path: Path) -> Preflight:
    result = preflight(manifest_path)
    if not result.ok:
        raise ManifestError(result.problems.items)
    return result


async def run_batch(
    manifest_path: Path,
    options: BatchOptions,
    *,
    hooks: Hooks | None = None,
    handle_signals: bool = False,
    on_runner: Callable[[Runner], None] | None = None,
) -> RunSummary:
    """Run the manifest; resumable, never paying twice for a job. Raises AvatarBatchError."""
    checked_manifest = checked(manifest_path)
    manifest = checked_manifest.manifest
    assert manifest is not None
    where = place.locate(
        manifest, out=options.out, state=options.state, sandbox=options.sandbox is not None
    )
    out, path = where.out, where.state
    selected = selection.select(manifest.jobs, only=options.only, where=options.where)
    fresh = not path.exists()
    if fresh:  # before a single byte is written: lock, state or videos folder
        outputs.refuse_foreign(out, None, path)
        _check_writable(out / outputs.VIDEOS)
    with state_lock(path), _signals_enabled(handle_signals) as on_signal:
        store = StateStore.open(path)
        try:
            # An existing state may belong to another target or manifest: that refusal
            # comes before anything (even the videos folder) is made.
            place.claim(store, where, manifest, _target(options))
            if not fresh:
                _check_writable(out / outputs.VIDEOS)
            owners = outputs.take_over(store, out, path)
            overview: dict[str, JobOverview] | None = None
            try:
                summary, overview = await _run_planned(
                    checked_manifest,
                    store,
                    owners,
                    where,
                    selected,
                    options,
                    _Wiring(hooks, on_signal, on_runner),
                )
            finally:
                # Written however the run ended; by now the plan is gone, which matters to
                # the peak memory of a 100,000-job batch.
                report, problem = _reports(manifest, store, out, overview)
            summary.report = report
            if problem is not None and summary.exit_code == EXIT_OK:
                summary.exit_code, summary.message = EXIT_FAILED, problem
        finally:
            store.close()
    return summary


@dataclass(frozen=True)
class _Wiring:
    """How the caller follows and steers a run: test checkpoints, signals, the progress bar."""

    hooks: Hooks | None
    on_signal: list[Callable[[], None]]
    on_runner: Callable[[Runner], None] | None


async def _run_planned(
    checked_manifest: Preflight,
    store: StateStore,
    owners: dict[str, str | None],
    where: place.Place,
    selected: frozenset[str] | None,
    options: BatchOptions,
    wiring: _Wiring,
) -> tuple[RunSummary, dict[str, JobOverview]]:
    """Plan against the state file, register, run what is left, record the run's summary.

    Also returns the jobs as the state file has them at the end, for the reports.
    """
    manifest = checked_manifest.manifest
    assert manifest is not None
    out = where.out
    # Everything that needs the recorded videos is worked out first, and let go before
    # planning: a 100,000-job batch must not hold both at once (peak memory).
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
    plan = build_plan(manifest.jobs, checked_manifest.media, store.planning_view())
    chosen = [p for p in plan.jobs if selected is None or p.job.id in selected]
    statuses = register_plan(store, chosen)
    outputs.apply_renames(renames, out, store)
    statuses |= _refetch_damaged(store, damage.damaged, statuses)
    _confirm(options, chosen, statuses)
    run_id = store.start_run(
        manifest=str(manifest.path),
        manifest_sha256=manifest.sha256,
        arguments=options.public(),
    )
    outcome = Outcome()
    try:
        # With nothing to do there is no sandbox, no connection, no request at all.
        strays = store.stray_tasks(job.id for job in manifest.jobs)
        if strays or _has_work(statuses, options.retry_failed):
            outcome = await _execute(
                checked_manifest, chosen, selected, store, out, options, wiring, run_id
            )
    finally:
        overview = store.overview()
        spend = (store.spend(), store.spend(run_id))
        summary = summarize(overview, chosen, outcome, where, spend)
        store.finish_run(
            run_id,
            outcome=_outcome_word(summary.exit_code),
            exit_code=summary.exit_code,
            summary=summary.as_dict(),
        )
    return summary, overview


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
    return store.ensure_jobs(
        JobSpec(
            id=p.job.id,
            spec_hash=p.spec_hash,
            model=p.job.model,
            number_results=p.job.number_results,
            audio_seconds=p.audio_seconds,
            estimated_cost=None if p.estimated_cost is None else float(p.estimated_cost),
            vars=p.job.vars,
        )
        for p in planned
    )


def _confirm(
    options: BatchOptions, chosen: list[PlannedJob], statuses: dict[str, JobStatus]
) -> None:
    """Ask the caller (a person at a terminal) before paying; a no stops before any request."""
    if options.confirm is None or options.sandbox is not None:
        return
    # Only jobs with no task yet: tasks of an interrupted run were paid for by that run.
    unpaid = {JobStatus.PENDING, JobStatus.UPLOADING}
    if options.retry_failed:
        unpaid.add(JobStatus.FAILED)
    to_run = [p for p in chosen if statuses.get(p.job.id) in unpaid]
    estimate = sum((p.estimated_cost or Decimal(0) for p in to_run), Decimal(0))
    if to_run and not options.confirm(estimate, len(to_run)):
        raise UsageError("not started: nothing was submitted or paid")


async def _execute(
    checked_manifest: Preflight,
    chosen: list[PlannedJob],
    selected: frozenset[str] | None,
    store: StateStore,
    out: Path,
    options: BatchOptions,
    wiring: _Wiring,
    run_id: int,
) -> Outcome:
    run_options = RunOptions(
        concurrency=options.concurrency,
        max_cost=options.max_cost,
        retry_failed=options.retry_failed,
        job_timeout=options.job_timeout,
        poll=options.poll,
    )
    pending = [p.job for p in chosen]
    manifest = checked_manifest.manifest
    assert manifest is not None
    with _api(options, out) as settings:
        async with (
            make_http_client(options.concurrency + 4) as http,
            make_http_client(run_options.downloads) as downloads,
        ):
            gate = RateLimiter(options.rps)
            client = RunwareClient(http, settings, gate=gate, downloads=downloads)
            runner = Runner(
                pending,
                checked_manifest.media,
                store,
                client,
                out,
                run_options,
                wiring.hooks,
                run_id,
                manifest_ids=None if selected is None else [job.id for job in manifest.jobs],
            )
            runner.estimated_total = float(_estimate(chosen))
            if wiring.on_runner is not None:
                wiring.on_runner(runner)
            wiring.on_signal.append(lambda: _interrupt(runner))
            try:
                return await runner.run()
            except asyncio.CancelledError:
                runner.outcome.interrupted = True
                return runner.outcome


def _reports(
    manifest: Manifest, store: StateStore, out: Path, overview: dict[str, JobOverview] | None
) -> tuple[str, str | None]:
    """Write the report files; returns the summary, and what went wrong if they could not be.

    A failure to write them must not hide the run's outcome, nor pass unnoticed: the caller
    turns it into a non-zero exit.
    """
    try:
        return summary_markdown(write_reports(manifest, store, out, overview)), None
    except OSError as exc:
        problem = f"could not write the reports into {out}: {exc.strerror or exc}"
        log.error("%s", problem)
        return "", problem


def _has_work(statuses: dict[str, JobStatus], retry_failed: bool) -> bool:
    finished = (JobStatus.DONE,) if retry_failed else (JobStatus.DONE, JobStatus.FAILED)
    return any(status not in finished for status in statuses.values())


def _interrupt(runner: Runner) -> None:
    runner.outcome.interrupted = True
    runner.stop("interrupted; in-flight tasks are picked up by the next run")


def _target(options: BatchOptions) -> str:
    """Whom the state file's tasks are sent to: the sandbox, or the API URL."""
    if options.sandbox is not None:
        return place.SANDBOX_TARGET
    if options.client is None:
        raise ValueError("BatchOptions needs client settings or a sandbox")
    return place.target_of(options.client.api_url)


@contextlib.contextmanager
def _api(options: BatchOptions, out: Path) -> Iterator[ClientSettings]:
    if options.sandbox is None:
        if options.client is None:
            raise ValueError("BatchOptions needs client settings or a sandbox")
        yield options.client
        return
    key = "sandbox-" + secrets.token_hex(8)
    # The embedded sandbox keeps its tasks, uploads and renders with the rehearsal's state,
    # so an interrupted rehearsal resumes the way a run against the real API does.
    storage = options.sandbox.storage_dir or out / outputs.SANDBOX_DIR
    persist = options.sandbox.storage_dir is None or options.sandbox.persist
    config = options.sandbox.model_copy(
        update={"api_key": key, "storage_dir": storage, "persist": persist}
    )
    # Loaded here, not at import: the web server is only wanted when a run asks for it.
    from avatarbatch.sandbox.server import running_sandbox

    with running_sandbox(config) as sandbox:
        log.info("sandbox serving at %s", sandbox.api_url)
        base = options.client or ClientSettings(api_key=SecretStr(key))
        update: dict[str, Any] = {"api_url": sandbox.api_url, "api_key": SecretStr(key)}
        if options.poll_batch is not None:
            update["poll_batch_size"] = options.poll_batch
        yield base.model_copy(update=update)


@contextlib.contextmanager
def _signals_enabled(enabled: bool) -> Iterator[list[Callable[[], None]]]:
    """First SIGINT/SIGTERM: a graceful stop. Second: leave at once (state stays consistent)."""
    callbacks: list[Callable[[], None]] = []
    if not enabled:
        yield callbacks
        return
    loop = asyncio.get_running_loop()
    received = []

    def handler() -> None:
        received.append(1)
        if len(received) > 1:
            os._exit(EXIT_INTERRUPTED)  # every state write is already committed
        for callback in callbacks:
            callback()

    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, handler)
    try:
        yield callbacks
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)


def run_manifest(
    manifest: str | Path,
    *,
    sandbox: bool | SandboxConfig = False,
    api_key: str | None = None,
    api_url: str | None = None,
    out: str | Path | None = None,
    state: str | Path | None = None,
    concurrency: int = 4,
    rps: float = 5.0,
    max_cost: float | Decimal | None = None,
    retry_failed: bool = False,
) -> RunSummary:
    """Run a manifest from Python, with the options of `avatarbatch run`; returns the summary.

    Give `api_key` (and optionally `api_url`) for the real API, or `sandbox=True` (or a
    SandboxConfig) for a local sandbox. Raises AvatarBatchError subclasses for bad manifests,
    a missing key, a locked state file; otherwise the summary's `exit_code` says how it went.
    """
    if not sandbox and not api_key:
        raise UsageError("run_manifest needs api_key=... for the Runware API, or sandbox=True")
    client = None
    if api_key:
        client = ClientSettings(api_url=api_url or DEFAULT_API_URL, api_key=SecretStr(api_key))
    options = BatchOptions(
        client=client,
        sandbox=(sandbox if isinstance(sandbox, SandboxConfig) else SandboxConfig())
        if sandbox
        else None,
        out=Path(out) if out is not None else None,
        state=Path(state) if state is not None else None,
        concurrency=concurrency,
        rps=rps,
        max_cost=None if max_cost is None else Decimal(str(max_cost)),
        retry_failed=retry_failed,
    )
    return asyncio.run(run_batch(Path(manifest), options))


def _estimate(planned: Iterable[PlannedJob]) -> Decimal:
    return sum((p.estimated_cost or Decimal(0) for p in planned), Decimal(0))


def summarize(
    records: dict[str, JobOverview],
    chosen: list[PlannedJob],
    outcome: Outcome,
    where: place.Place,
    spend: tuple[float, float],
) -> RunSummary:
    """The run's outcome over the jobs it was given; `spend` is the ledger's (lifetime, this
    run's) billed cost."""
    ids = [p.job.id for p in chosen]
    done = sum(1 for i in ids if records[i].status is JobStatus.DONE)
    failed = sum(1 for i in ids if records[i].status is JobStatus.FAILED)
    pending = len(ids) - done - failed
    skipped = sum(1 for p in chosen if p.status is PlanStatus.DONE)
    remaining = [
        records[i] for i in ids if records[i].status not in (JobStatus.DONE, JobStatus.FAILED)
    ]
    remaining_cost = sum((r.estimated_cost or 0.0) for r in remaining)
    if outcome.fatal is not None:
        code, message = EXIT_AUTH, f"stopped: {outcome.fatal}"
    elif outcome.local_error is not None:  # before `interrupted`: stopping cancels the drivers
        code = EXIT_FAILED
        message = f"stopped: {outcome.local_error}; fix it and run again to resume"
    elif outcome.interrupted:
        code, message = EXIT_INTERRUPTED, "interrupted: run the same command again to resume"
    elif outcome.budget_stopped:
        code = EXIT_BUDGET
        message = (
            f"budget reached: {len(remaining)} jobs remain, estimated ${remaining_cost:,.4f}; "
            "raise --max-cost and run again to continue"
        )
    elif failed or pending:
        code = EXIT_FAILED
        message = _unfinished_message(failed, pending, outcome.left_by)
    else:
        code, message = EXIT_OK, "every job done"
    return RunSummary(
        jobs=len(ids),
        done=done,
        failed=failed,
        pending=pending,
        submitted=len(outcome.submitted_jobs),
        tasks_sent=outcome.tasks_sent,
        skipped=skipped,
        cost_actual=round(spend[0], 5),
        cost_this_run=round(spend[1], 5),
        cost_estimated=float(_estimate(chosen)),
        exit_code=code,
        message=message,
        output_dir=str(where.out.absolute()),
        state_file=str(where.state.absolute()),
    )


def _unfinished_message(failed: int, pending: int, left_by: str | None) -> str:
    """What is left, and the command that deals with each part of it."""
    parts = []
    if failed:
        parts.append(f"{failed} failed (--retry-failed runs them again)")
    if pending:
        why = f" after: {left_by}" if left_by else ""
        parts.append(f"{pending} unfinished{why} (run the same command again to resume)")
    return "; ".join(parts)


def _outcome_word(code: int) -> str:
    return {
        EXIT_OK: "done",
        EXIT_FAILED: "failed",
        EXIT_BUDGET: "budget",
        EXIT_AUTH: "auth",
        EXIT_INTERRUPTED: "interrupted",
    }.get(code, "unknown")
