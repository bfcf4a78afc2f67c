"""The `avatarbatch` command line: thin typer commands that parse options and delegate."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from avatarbatch import (
    __version__,
    batch,
    check,
    check_command,
    run_command,
    starter,
    status_view,
    views,
)
from avatarbatch.diagnostics import display_path
from avatarbatch.errors import AvatarBatchError, ManifestError
from avatarbatch.plan import build_plan
from avatarbatch.poller import NOT_FOUND_GRACE
from avatarbatch.preflight import Preflight, preflight
from avatarbatch.sandbox import settings as sandbox_settings
from avatarbatch.sandbox.server import serve

app = typer.Typer(
    help="Batch talking-avatar videos through the Runware API: validate, estimate, run, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ManifestArg = Annotated[
    Path, typer.Argument(help="Manifest: a YAML file, or a CSV file of rows.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
StateOpt = Annotated[
    Path | None, typer.Option("--state", help="State file (default: OUT/state.sqlite).")
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Output folder (default: output.dir or out/NAME).")
]


def stdout() -> Console:
    return Console(soft_wrap=True, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn our own errors into a message and an exit code; anything else is a bug and surfaces."""
    try:
        yield
    except ManifestError as exc:
        views.print_problems(stderr(), exc.problems)
        raise typer.Exit(exc.exit_code) from None
    except AvatarBatchError as exc:
        stderr().print(f"avatarbatch: {exc}", style="red", markup=False)
        raise typer.Exit(exc.exit_code) from None


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


@app.command()
def validate(manifest: ManifestArg, as_json: JsonOpt = False) -> None:
    """Check every row and every media file; exit 0 when valid, 2 when not."""
    with user_errors():
        result = preflight(manifest)
    if as_json:
        typer.echo(json.dumps([p.as_dict() for p in result.problems.items], indent=2))
    else:
        console = stdout()
        views.print_problems(console, result.problems.items)
        jobs = len(result.manifest.jobs) if result.manifest else None
        summary = views.problems_summary(display_path(manifest.absolute()), result.problems, jobs)
        console.print(summary, markup=False)
    raise typer.Exit(0 if result.ok else 2)


@app.command()
def plan(
    manifest: ManifestArg, state: StateOpt = None, out: OutOpt = None, as_json: JsonOpt = False
) -> None:
    """Show what a run would do and what it would cost. Makes no API call."""
    with user_errors():
        result = _checked(manifest)
        assert result.manifest is not None
        path = batch.state_path(result.manifest, out, state)
        default_out = batch.output_dir(result.manifest, out)
        stored = status_view.stored_jobs(path, out, default_out) if path.exists() else {}
        the_plan = build_plan(result.manifest.jobs, result.media, stored)
    if as_json:
        for piece in the_plan.json_text():
            typer.echo(piece, nl=False)
    else:
        views.print_plan(stdout(), the_plan, display_path(result.manifest.path))


@app.command()
def run(
    manifest: ManifestArg,
    out: OutOpt = None,
    state: StateOpt = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Tasks in flight at once.")] = 4,
    rps: Annotated[float, typer.Option(min=0.05, help="API requests per second, at most.")] = 5.0,
    max_cost: Annotated[
        float | None, typer.Option(min=0, help="Stop submitting before spending more (USD).")
    ] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run failed jobs again.")] = False,
    api_url: Annotated[
        str | None, typer.Option(help="API base URL (default RUNWARE_API_URL).")
    ] = None,
    sandbox: Annotated[
        bool, typer.Option("--sandbox", help="Run against a local sandbox.")
    ] = False,
    sandbox_latency: Annotated[
        float, typer.Option(help="Sandbox render seconds per second of audio.")
    ] = 0.2,
    sandbox_faults: Annotated[str | None, typer.Option(help="Sandbox fault rates.")] = None,
    sandbox_render: Annotated[str, typer.Option(help="Sandbox renders: full or stub.")] = "full",
    sandbox_seed: Annotated[int, typer.Option(help="Sandbox seed.")] = 0,
    sandbox_profile: Annotated[
        str, typer.Option(help="Sandbox profile: default, or strict (the docs' narrowest reading).")
    ] = "default",
    poll_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=500,
            help="getResponse tasks per request (1: one each, the SDK's way; default: 50, "
            "or 1 if a fresh `avatarbatch check` found batches refused).",
        ),
    ] = None,
    not_found_grace: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a task the API accepted may answer 'not found' before it is sent "
            "again under the same UUID (a registration lag must not fail a paid job).",
        ),
    ] = NOT_FOUND_GRACE,
    as_json: JsonOpt = False,
) -> None:
    """Run every job that is not done yet (resumable; never pays twice for a job)."""
    tty = sys.stderr.isatty() and not as_json
    with user_errors():
        options = run_command.options(
            environ=os.environ,
            out=out,
            state=state,
            concurrency=concurrency,
            rps=rps,
            max_cost=max_cost,
            retry_failed=retry_failed,
            api_url=api_url,
            sandbox=sandbox,
            sandbox_latency=sandbox_latency,
            sandbox_faults=sandbox_faults,
            sandbox_render=sandbox_render,
            sandbox_seed=sandbox_seed,
            sandbox_profile=sandbox_profile,
            poll_batch=poll_batch,
            not_found_grace=not_found_grace,
        )
        summary = run_command.execute(manifest, options, tty=tty)
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
    else:
        stdout().print(views.run_summary(summary), markup=False)
    raise typer.Exit(summary.exit_code)


@app.command()
def status(
    manifest: Annotated[Path | None, typer.Argument(help="Manifest whose state to show.")] = None,
    state: StateOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs by state, failures and spend so far, read from the state file."""
    with user_errors():
        report = status_view.load(manifest, state=state, out=out)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        views.print_status(stdout(), report)


def _checked(manifest: Path) -> Preflight:
    """A preflight that must pass; warnings go to stderr, errors raise ManifestError."""
    result = preflight(manifest)
    if not result.ok:
        raise ManifestError(result.problems.items)
    views.print_problems(stderr(), result.problems.warnings)
    return result


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    api_key: Annotated[
        str | None, typer.Option(help="Accept only this key (default: any non-empty key).")
    ] = None,
    latency: Annotated[float, typer.Option(help="Render seconds per second of audio.")] = 0.2,
    fixed_latency: Annotated[float, typer.Option(help="Render seconds added to every task.")] = 0.3,
    workers: Annotated[int, typer.Option(help="Render slots; more tasks wait in a queue.")] = 4,
    render: Annotated[
        str, typer.Option(help="full: real renders; stub: tiny cached videos.")
    ] = "full",
    faults: Annotated[
        str | None, typer.Option(help="Fault rates, e.g. http500=0.05,http429=0.05,reset=0.02.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed that makes faults and seeds reproducible.")] = 0,
    allow_remote: Annotated[
        bool, typer.Option(help="Fetch inputs and call webhooks beyond loopback addresses.")
    ] = False,
    balance: Annotated[
        float | None, typer.Option(help="USD; submissions get HTTP 402 once billing reaches it.")
    ] = None,
    video_bytes: Annotated[
        int | None,
        typer.Option(help="Pad every MP4/MOV result to this size (sparse), to test big downloads."),
    ] = None,
    profile: Annotated[
        str,
        typer.Option(
            help="default, or strict: one getResponse per request, 202 acknowledgements, a 2 s "
            "registration lag, 'completed' results, no videoURL with an uploadEndpoint, "
            "upload UUIDs never reused."
        ),
    ] = "default",
) -> None:
    """Serve the offline Runware emulator (POST /v1, GET /sandbox/ledger, /sandbox/stats)."""
    with user_errors():
        config = sandbox_settings.build(
            api_key=api_key,
            latency=latency,
            fixed_latency=fixed_latency,
            workers=workers,
            render=render,
            faults=faults,
            seed=seed,
            allow_remote=allow_remote,
            balance=balance,
            video_bytes=video_bytes,
            profile=profile,
        )
        if host not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
            stderr().print(f"warning: serving on {host}: other machines can reach this sandbox")
        stderr().print(
            f"sandbox: http://{host}:{port}/v1 (ledger: /sandbox/ledger, stats: /sandbox/stats); "
            f"profile {config.profile}, faults: {config.faults}, seed {config.seed}; Ctrl-C stops",
            markup=False,
        )
        serve(config, host, port)


@app.command()
def report(
    manifest: Annotated[
        Path | None, typer.Argument(help="Manifest whose reports to write.")
    ] = None,
    state: StateOpt = None,
    out: OutOpt = None,
) -> None:
    """Rewrite cost_report.csv, report.json, report.md, index.html and failures.yaml from state."""
    with user_errors():
        summary, folder = status_view.rewrite_reports(manifest, state=state, out=out)
    stdout().print(summary.rstrip(), markup=False)
    stdout().print(f"gallery: {folder / 'index.html'}", markup=False)


@app.command(name="check")
def check_api(
    api_url: Annotated[
        str | None, typer.Option(help="API base URL (default RUNWARE_API_URL).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Before your first real batch: what the API accepts, with calls that cost nothing."""
    with user_errors():
        result = check_command.execute(os.environ, api_url=api_url)
    if as_json:
        typer.echo(json.dumps(result.as_json()))
    else:
        for line in check.summary_lines(result):
            stdout().print(line, markup=False)
    raise typer.Exit(4 if result.auth == "refused" else 0)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the starter files.")] = Path(),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a commented starter manifest (YAML, and the same rows as CSV) to fill in."""
    with user_errors():
        written = starter.write(folder, force=force)
    for path in written:
        stdout().print(f"wrote {display_path(path.absolute())}", markup=False)
    stdout().print(
        "put your portrait and voices in media/, then: avatarbatch validate "
        f"{display_path(written[0].absolute())}",
        markup=False,
    )


def main() -> Any:
    return app()
