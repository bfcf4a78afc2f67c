"""What the commands share: option types, consoles, and how errors end a command."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from avatarbatch.cli import views
from avatarbatch.errors import AvatarBatchError, ManifestError
from avatarbatch.sandbox.faults import FAULT_KINDS

ENV = "AVATARBATCH_"  #: prefix of the environment variables that stand for common options

ManifestArg = Annotated[
    Path,
    typer.Argument(
        metavar="MANIFEST", help="Manifest: a YAML file, or a CSV file of rows.", show_default=False
    ),
]
OptionalManifestArg = Annotated[
    Path | None, typer.Argument(metavar="MANIFEST", help="Manifest whose state to read.")
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print JSON; the last line is always one object with exit_code."),
]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state",
        metavar="FILE",
        envvar=ENV + "STATE",
        help="State file (default: OUT/state.sqlite).",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        metavar="DIR",
        envvar=ENV + "OUT",
        help="Output folder (default: output.dir, or out/NAME beside the manifest).",
    ),
]
RehearsalOpt = Annotated[
    bool,
    typer.Option("--sandbox", help="The sandbox rehearsal's folder (default OUT/sandbox) instead."),
]
SandboxRender = Literal["full", "stub"]
SandboxProfile = Literal["default", "strict"]
FAULTS_HELP = (
    "KIND=RATE[,KIND=RATE...], rates 0-1, e.g. http500=0.05,http429=0.05,reset=0.02; kinds: "
    + ", ".join(FAULT_KINDS)
    + "."
)


def stdout() -> Console:
    return Console(soft_wrap=True, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def user_errors(as_json: bool = False) -> Iterator[None]:
    """Turn our own errors into a message and an exit code; anything else is a bug and surfaces.

    With --json the last line of stdout is still one JSON object, so a script reading it
    learns the exit code and the reason however the command ended.
    """
    try:
        yield
    except ManifestError as exc:
        views.print_problems(stderr(), exc.problems)
        if as_json:
            errors = [p for p in exc.problems if p.is_error] or list(exc.problems)
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            json_end(
                exc.exit_code,
                error=(errors[0].format() + more) if errors else "invalid manifest",
                problems=[p.as_dict() for p in exc.problems],
            )
        raise typer.Exit(exc.exit_code) from None
    except AvatarBatchError as exc:
        stderr().print(f"avatarbatch: {exc}", style="red", markup=False)
        if as_json:
            json_end(exc.exit_code, error=str(exc))
        raise typer.Exit(exc.exit_code) from None


def json_end(exit_code: int, **fields: Any) -> None:
    typer.echo(json.dumps({"exit_code": exit_code, **fields}))
