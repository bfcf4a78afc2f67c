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
    ENV,
    FAULTS_HELP,
    JsonOpt,
    ManifestArg,
    OptionalManifestArg,
    OutOpt,
    RehearsalOpt,
    SandboxProfile,
    SandboxRender,
    StateOpt,
    json_end,
    stderr,
    stdout,
    user_errors,
)
from avatarbatch.config import CONFIRM_ABOVE_USD, DEFAULTS, PollTiming, RunSettings, usd
from avatarbatch.engine.session import checked
from avatarbatch.manifest.preflight import Preflight, preflight
from avatarbatch.manifest.problems import display_path, plural
from avatarbatch.report.data import money
from avatarbatch.runware import check


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
    code = 0 if result.ok else 2
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
        result = _checked(manifest)
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
    concurrency: Annotated[
        int,
        typer.Option(
            min=1, max=256, metavar="N", envvar=ENV + "CONCURRENCY", help="Tasks in flight at once."
        ),
    ] = DEFAULTS.concurrency,
    rps: Annotated[
        float,
        typer.Option(
            min=0.05, metavar="N", envvar=ENV + "RPS", help="API requests per second, at most."
        ),
    ] = DEFAULTS.rps,
    max_cost: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="USD",
            envvar=ENV + "MAX_COST",
            help="Stop submitting before this invocation spends more.",
        ),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed jobs again.")
    ] = DEFAULTS.retry_failed,
    only: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ID", help="Run only this job (repeatable); the rest stay as they are."
        ),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            metavar="VAR=VALUE",
            help="Run only rows whose var has this value (repeatable: all must hold).",
        ),
    ] = None,
    confirm_above: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="USD",
            envvar=ENV + "CONFIRM_ABOVE",
            help="On a terminal, ask before a real run estimated above this.",
        ),
    ] = CONFIRM_ABOVE_USD,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Never ask; run.")] = False,
    api_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="API base URL (default RUNWARE_API_URL, or Runware's)."),
    ] = None,
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox", help="Rehearse on a local sandbox (its own folder: OUT/sandbox)."
        ),
    ] = False,
    sandbox_latency: Annotated[
        float,
        typer.Option(min=0, metavar="S", help="Sandbox render seconds per second of audio."),
    ] = 0.2,
    sandbox_faults: Annotated[str | None, typer.Option(metavar="SPEC", help=FAULTS_HELP)] = None,
    sandbox_render: Annotated[
        SandboxRender, typer.Option(help="Sandbox renders: real (full) or tiny cached (stub).")
    ] = "full",
    sandbox_seed: Annotated[
        int, typer.Option(metavar="N", help="Sandbox seed (faults replay from it).")
    ] = 0,
    sandbox_profile: Annotated[
        SandboxProfile,
        typer.Option(help="Sandbox profile: strict plays the docs' narrowest reading."),
    ] = "default",
    poll_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=500,
            metavar="N",
            envvar=ENV + "POLL_BATCH",
            help="getResponse tasks per request (1: one each, the SDK's way; default: 50, "
            "or 1 if a fresh `avatarbatch check` found batches refused).",
        ),
    ] = None,
    not_found_grace: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="S",
            help="Seconds a task the API accepted may answer 'not found' before it is sent "
            "again under the same UUID (a registration lag must not fail a paid job).",
        ),
    ] = DEFAULTS.poll.not_found_grace,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Warnings and errors only; no progress bar.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug log lines too.")] = False,
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


def _checked(manifest: Path) -> Preflight:
    """A preflight that must pass; warnings go to stderr, errors raise ManifestError."""
    result = checked(manifest)
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
    code = 4 if result.auth == "refused" else 0
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
