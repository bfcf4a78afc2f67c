"""The `run` command's wiring: where tasks go (flags and environment), logging, progress, asyncio.

Kept out of commands.py so that the command body stays a few lines, and out of the engine so
that the library entry point never touches logging configuration or the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from avatarbatch.cli import progress
from avatarbatch.cli.environment import client_settings, read_dotenv
from avatarbatch.config import RunSettings
from avatarbatch.engine.runner import Runner
from avatarbatch.engine.session import run_batch
from avatarbatch.engine.summary import RunSummary
from avatarbatch.runware import check
from avatarbatch.sandbox import settings as sandbox_settings

log = logging.getLogger("avatarbatch.run")

PROGRESS_EVERY = 0.5  #: seconds between progress redraws
CHECKED_SINGLE_POLLS = 1  #: the poll batch that a check finding batches refused calls for
#: render slots of a rehearsal's sandbox when the run sends fewer tasks at once: the
#: sandbox's own default, so a rehearsal at low concurrency renders like `avatarbatch sandbox`
REHEARSAL_MIN_WORKERS = 4


@dataclasses.dataclass(frozen=True)
class Rehearsal:
    """The `--sandbox-*` flags: how the sandbox started for a rehearsal behaves."""

    latency: float
    faults: str | None
    render: str
    seed: int
    profile: str = "default"


def connect(
    wanted: RunSettings,
    *,
    environ: Mapping[str, str],
    api_url: str | None,
    rehearsal: Rehearsal | None,
) -> RunSettings:
    """The settings, told where tasks go: a sandbox if asked for, else the API.

    Without --poll-batch, a fresh `avatarbatch check` of the same API decides whether polls
    are batched, so the very first poll of a real run already takes the right shape.
    """
    if rehearsal is not None:
        config = sandbox_settings.build(
            latency=rehearsal.latency,
            faults=rehearsal.faults,
            render=rehearsal.render,
            seed=rehearsal.seed,
            workers=max(REHEARSAL_MIN_WORKERS, wanted.concurrency),
            profile=rehearsal.profile,
            option_prefix="--sandbox-",
        )
        return dataclasses.replace(wanted, sandbox=config)
    client = client_settings(environ, read_dotenv(Path(".env")), api_url=api_url)
    poll_batch = wanted.poll_batch
    if poll_batch is None and check.refused_batches(environ, client.api_url):
        poll_batch = CHECKED_SINGLE_POLLS
    return dataclasses.replace(wanted, client=client, poll_batch=poll_batch)


def execute(
    manifest: Path,
    settings: RunSettings,
    *,
    tty: bool,
    quiet: bool = False,
    verbose: bool = False,
) -> RunSummary:
    """Run with log lines (and a live bar on a terminal); returns the summary."""
    console = progress.configure_logging(tty=tty, verbose=verbose)
    if quiet:
        logging.getLogger("avatarbatch").setLevel(logging.WARNING)
    client = settings.client
    single = settings.poll_batch == CHECKED_SINGLE_POLLS and client is not None
    if single and client is not None and check.refused_batches(os.environ, client.api_url):
        log.info("a fresh `avatarbatch check` found batched polls refused: one task each")
    try:
        return asyncio.run(_with_progress(manifest, settings, console))
    finally:
        # Handlers hold this invocation's stream; a caller that goes on (tests, a REPL) must
        # not log into it once it is closed.
        logging.getLogger("avatarbatch").handlers.clear()


async def _with_progress(manifest: Path, settings: RunSettings, console: object) -> RunSummary:
    runners: list[Runner] = []
    from rich.console import Console

    bar = progress.RunProgress(0, console if isinstance(console, Console) else None)

    async def redraw() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            if runners:
                now = runners[0].progress()
                bar.set_total(now.jobs)
                bar.update(now.counts, now.spent, now.estimated_total)

    with bar:
        ticker = asyncio.create_task(redraw())
        try:
            return await run_batch(
                manifest, settings, handle_signals=True, on_runner=runners.append
            )
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
