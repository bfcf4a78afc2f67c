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

# --- the options of `run` (their defaults are RunSettings' and SandboxConfig's) ---------------

ConcurrencyOpt = Annotated[
    int,
    typer.Option(
        min=1, max=256, metavar="N", envvar=ENV + "CONCURRENCY", help="Tasks in flight at once."
    ),
]
RpsOpt = Annotated[
    float,
    typer.Option(
        min=0.05, metavar="N", envvar=ENV + "RPS", help="API requests per second, at most."
    ),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        min=0,
        metavar="USD",
        envvar=ENV + "MAX_COST",
        help="Stop submitting before this invocation spends more.",
    ),
]
RetryFailedOpt = Annotated[bool, typer.Option("--retry-failed", help="Run failed jobs again.")]
OnlyOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="ID", help="Run only this job (repeatable); the rest stay as they are."),
]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option(
        metavar="VAR=VALUE",
        help="Run only rows whose var has this value (repeatable: all must hold).",
    ),
]
ConfirmAboveOpt = Annotated[
    float,
    typer.Option(
        min=0,
        metavar="USD",
        envvar=ENV + "CONFIRM_ABOVE",
        help="On a terminal, ask before a real run estimated above this.",
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Never ask; run.")]
RunApiUrlOpt = Annotated[
    str | None,
    typer.Option(metavar="URL", help="API base URL (default RUNWARE_API_URL, or Runware's)."),
]
SandboxOpt = Annotated[
    bool,
    typer.Option("--sandbox", help="Rehearse on a local sandbox (its own folder: OUT/sandbox)."),
]
SandboxLatencyOpt = Annotated[
    float, typer.Option(min=0, metavar="S", help="Sandbox render seconds per second of audio.")
]
SandboxFaultsOpt = Annotated[str | None, typer.Option(metavar="SPEC", help=FAULTS_HELP)]
SandboxRenderOpt = Annotated[
    SandboxRender, typer.Option(help="Sandbox renders: real (full) or tiny cached (stub).")
]
SandboxSeedOpt = Annotated[
    int, typer.Option(metavar="N", help="Sandbox seed (faults replay from it).")
]
SandboxProfileOpt = Annotated[
    SandboxProfile,
    typer.Option(help="Sandbox profile: strict plays the docs' narrowest reading."),
]
PollBatchOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=500,
        metavar="N",
        envvar=ENV + "POLL_BATCH",
        help="getResponse tasks per request (1: one each, the SDK's way; default: 50, "
        "or 1 if a fresh `avatarbatch check` found batches refused).",
    ),
]
NotFoundGraceOpt = Annotated[
    float,
    typer.Option(
        min=0,
        metavar="S",
        help="Seconds a task the API accepted may answer 'not found' before it is sent "
        "again under the same UUID (a registration lag must not fail a paid job).",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Warnings and errors only; no progress bar.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug log lines too.")]


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
