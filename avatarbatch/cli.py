"""The `avatarbatch` command line: thin typer commands that parse options and delegate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from avatarbatch import __version__, views
from avatarbatch.diagnostics import display_path
from avatarbatch.errors import AvatarBatchError, ManifestError
from avatarbatch.plan import build_plan
from avatarbatch.preflight import Preflight, preflight

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


def stdout() -> Console:
    return Console(soft_wrap=False, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


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
def plan(manifest: ManifestArg, as_json: JsonOpt = False) -> None:
    """Show what a run would do and what it would cost. Makes no API call."""
    with user_errors():
        result = _checked(manifest)
        assert result.manifest is not None
        the_plan = build_plan(result.manifest.jobs, result.media)
    if as_json:
        typer.echo(json.dumps(the_plan.as_dict(), indent=2))
    else:
        views.print_plan(stdout(), the_plan, display_path(result.manifest.path))


def _checked(manifest: Path) -> Preflight:
    """A preflight that must pass; warnings go to stderr, errors raise ManifestError."""
    result = preflight(manifest)
    if not result.ok:
        raise ManifestError(result.problems.items)
    views.print_problems(stderr(), result.problems.warnings)
    return result


def main() -> Any:
    return app()
