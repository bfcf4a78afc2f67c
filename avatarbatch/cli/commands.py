"""The `avatarbatch` command line: thin typer commands that parse options and delegate."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from avatarbatch import __version__
from avatarbatch.cli import (
    check_command,
    run_command,
    sandbox_command,
    starter,
    status_view,
    status_watch,
    views,
)
from avatarbatch.cli.options import (
    ConcurrencyOpt,
    ConfirmAboveOpt,
    JsonOpt,
    ManifestArg,
    MaxCostOpt,
    NotFoundGraceOpt,
    OnlyOpt,
    OptionalManifestArg,
    OutOpt,
    PollBatchOpt,
    QuietOpt,
    RehearsalOpt,
    RetryFailedOpt,
    RpsOpt,
    RunApiUrlOpt,
    SandboxFaultsOpt,
    SandboxLatencyOpt,
    SandboxOpt,
    SandboxProfileOpt,
    SandboxRenderOpt,
    SandboxSeedOpt,
    StateOpt,
    VerboseOpt,
    WhereOpt,
    YesOpt,
    json_end,
    stderr,
    stdout,
    user_errors,
)
from avatarbatch.config import CONFIRM_ABOVE_USD, DEFAULTS, PollTiming, RunSettings, usd
from avatarbatch.engine.session import checked, probe_memo
from avatarbatch.errors import ExitCode
from avatarbatch.manifest.job import Manifest
from avatarbatch.manifest.media import ProbeCache
from avatarbatch.manifest.preflight import Preflight, preflight
from avatarbatch.manifest.problems import display_path, plural
from avatarbatch.report.data import money
from avatarbatch.runware import check
from avatarbatch.sandbox.config import SandboxConfig

#: The `--sandbox-*` options of `run` default to what the sandbox itself defaults to.
SANDBOX_DEFAULTS = SandboxConfig.model_fields


class _Command(typer.core.TyperCommand):
    """Usage lines as people write them: `run [OPTIONS] MANIFEST`, not `{MANIFEST}`."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


app = typer.Typer(
    help="Batch talking-avatar videos through the Runware API: validate, estimate, run, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: flags without a `<bool>` placeholder, which read as if they took a value.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
command = functools.partial(app.command, cls=_Command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avatarbatch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Batch talking-avatar videos through the Runware API."""


@command()
def validate(manifest: ManifestArg, as_json: JsonOpt = False) -> None:
    """Check every row and every media file; exit 0 when valid, 2 when not."""
    with user_errors(as_json):
        result = preflight(manifest)
    code = ExitCode.OK if result.ok else ExitCode.USAGE
    jobs = len(result.manifest.jobs) if result.manifest else None
    if as_json:
        problems = [p.as_dict() for p in result.problems.items]
        json_end(code, valid=result.ok, jobs=jobs, problems=problems)
    else:
        console = stdout()
        views.print_problems(console, result.problems.items)
        summary = views.problems_summary(display_path(manifest.absolute()), result.problems, jobs)
        console.print(summary, markup=False)
    raise typer.Exit(code)


@command()
def plan(
    manifest: ManifestArg,
    state: StateOpt = None,
    out: OutOpt = None,
    sandbox: RehearsalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what a run would do and what it would cost. Makes no API call."""
    with user_errors(as_json):
        result = _checked(
            manifest,
            lambda found: probe_memo(found, out=out, state=state, sandbox=sandbox),
        )
        assert result.manifest is not None
        the_plan = status_view.plan_of(result, out=out, state=state, sandbox=sandbox)
    if as_json:
        for piece in the_plan.json_text(exit_code=0):
            typer.echo(piece, nl=False)
    else:
        views.print_plan(stdout(), the_plan, display_path(result.manifest.path))


@command()
def run(
    manifest: ManifestArg,
    out: OutOpt = None,
    state: StateOpt = None,
    concurrency: ConcurrencyOpt = DEFAULTS.concurrency,
    rps: RpsOpt = DEFAULTS.rps,
    max_cost: MaxCostOpt = None,
    retry_failed: RetryFailedOpt = DEFAULTS.retry_failed,
    only: OnlyOpt = None,
    where: WhereOpt = None,
    confirm_above: ConfirmAboveOpt = CONFIRM_ABOVE_USD,
    yes: YesOpt = False,
    api_url: RunApiUrlOpt = None,
    sandbox: SandboxOpt = False,
    sandbox_latency: SandboxLatencyOpt = SANDBOX_DEFAULTS["latency"].default,
    sandbox_faults: SandboxFaultsOpt = None,
    sandbox_render: SandboxRenderOpt = SANDBOX_DEFAULTS["render"].default,
    sandbox_seed: SandboxSeedOpt = SANDBOX_DEFAULTS["seed"].default,
    sandbox_profile: SandboxProfileOpt = SANDBOX_DEFAULTS["profile"].default,
    poll_batch: PollBatchOpt = None,
    not_found_grace: NotFoundGraceOpt = DEFAULTS.poll.not_found_grace,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run every job that is not done yet (resumable; never pays twice for a job)."""
    tty = sys.stderr.isatty() and not as_json and not quiet
    with user_errors(as_json):
        wanted = RunSettings(
            out=out,
            state=state,
            concurrency=concurrency,
            rps=rps,
            max_cost=usd(max_cost),
            retry_failed=retry_failed,
            poll=PollTiming(not_found_grace=not_found_grace),
            poll_batch=poll_batch,
            only=tuple(only or ()),
            where=tuple(where or ()),
            confirm=None if yes else _asker(confirm_above),
        )
        rehearsal = None
        if sandbox:
            rehearsal = run_command.Rehearsal(
                sandbox_latency, sandbox_faults, sandbox_render, sandbox_seed, sandbox_profile
            )
        settings = run_command.connect(
            wanted, environ=os.environ, api_url=api_url, rehearsal=rehearsal
        )
        summary = run_command.execute(manifest, settings, tty=tty, quiet=quiet, verbose=verbose)
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
    else:
        stdout().print(views.run_summary(summary), markup=False)
    raise typer.Exit(summary.exit_code)


def _at_terminal() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _asker(threshold: float) -> Callable[[Decimal, int], bool] | None:
    """A question for a person at a terminal; None (never ask) when nobody is there."""
    if not _at_terminal():
        return None

    def ask(estimate: Decimal, jobs: int) -> bool:
        if estimate <= Decimal(str(threshold)):
            return True
        return typer.confirm(
            f"{plural(jobs, 'job')} to submit, estimated {money(estimate)} "
            f"(above --confirm-above ${threshold:g}). Run them?",
            default=False,
            err=True,
        )

    return ask


@command()
def status(
    manifest: OptionalManifestArg = None,
    state: StateOpt = None,
    out: OutOpt = None,
    sandbox: RehearsalOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="On a terminal, refresh while a run goes on.")
    ] = False,
    job: Annotated[
        str | None,
        typer.Option(metavar="ID", help="One job's history: tasks, bills, downloads, failures."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs by state, failures and spend so far, read from the state file."""
    if job is not None:
        with user_errors(as_json):
            history = status_view.job_history(
                manifest, state=state, out=out, sandbox=sandbox, job_id=job
            )
        if as_json:
            typer.echo(json.dumps({**history, "exit_code": 0}))
        else:
            for line in status_view.history_lines(history):
                stdout().print(line, markup=False)
        return
    with user_errors(as_json):
        report = status_view.load(manifest, state=state, out=out, sandbox=sandbox)
        if watch and not as_json and sys.stdout.isatty():
            status_watch.follow(
                lambda: status_view.load(manifest, state=state, out=out, sandbox=sandbox),
                report,
            )
            return
    if as_json:
        typer.echo(json.dumps({**report, "exit_code": 0}))
    else:
        views.print_status(stdout(), report)


def _checked(
    manifest: Path, probes: Callable[[Manifest], ProbeCache | None] | None = None
) -> Preflight:
    """A preflight that must pass; warnings go to stderr, errors raise ManifestError.
    `probes`: what the state file knows of the media (see `session.checked`)."""
    result = checked(manifest, probes)
    views.print_problems(stderr(), result.problems.warnings)
    return result


command(name="sandbox")(sandbox_command.sandbox)


@command()
def report(
    manifest: OptionalManifestArg = None,
    state: StateOpt = None,
    out: OutOpt = None,
    sandbox: RehearsalOpt = False,
) -> None:
    """Rewrite cost_report.csv, report.json, report.md, index.html and failures.yaml from state."""
    with user_errors():
        summary, folder = status_view.rewrite_reports(
            manifest, state=state, out=out, sandbox=sandbox
        )
    stdout().print(summary.rstrip(), markup=False)
    stdout().print(f"gallery: {folder / 'index.html'}", markup=False)


@command(name="check")
def check_api(
    api_url: Annotated[
        str | None, typer.Option(metavar="URL", help="API base URL (default RUNWARE_API_URL).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Before your first real batch: what the API accepts, with calls that cost nothing."""
    with user_errors(as_json):
        result = check_command.execute(os.environ, api_url=api_url)
    code = ExitCode.AUTH if result.auth == "refused" else ExitCode.OK
    if as_json:
        typer.echo(json.dumps({**result.as_json(), "exit_code": code}))
    else:
        for line in check.summary_lines(result):
            stdout().print(line, markup=False)
    raise typer.Exit(code)


@command()
def init(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="Where to write the starter files.")
    ] = Path(),
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a commented starter manifest (YAML, and the same rows as CSV) to fill in."""
    with user_errors():
        written = starter.write(folder, force=force)
    for path in written:
        stdout().print(f"wrote {display_path(path.absolute())}", markup=False)
    media = display_path((folder / "media").absolute())
    stdout().print(
        f"put your portrait and voices in {media}/, then: avatarbatch validate "
        f"{display_path(written[0].absolute())}",
        markup=False,
    )


def main() -> Any:
    return app()
