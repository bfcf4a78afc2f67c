"""The `run` command's wiring: options from flags and environment, logging, progress, asyncio.

Kept out of cli.py so that the command body stays a few lines, and out of batch.py so that the
library entry point never touches logging configuration or the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path

from avatarbatch.cli import progress
from avatarbatch.cli.environment import client_settings, read_dotenv
from avatarbatch.engine import batch
from avatarbatch.engine.batch import BatchOptions, RunSummary
from avatarbatch.engine.poller import NOT_FOUND_GRACE, PollTiming
from avatarbatch.engine.runner import Runner
from avatarbatch.runware import check
from avatarbatch.sandbox import settings as sandbox_settings

log = logging.getLogger("avatarbatch.run")

PROGRESS_EVERY = 0.5  #: seconds between progress redraws
CHECKED_SINGLE_POLLS = 1  #: the poll batch that a check finding batches refused calls for


def options(
    *,
    environ: Mapping[str, str],
    out: Path | None,
    state: Path | None,
    concurrency: int,
    rps: float,
    max_cost: float | None,
    retry_failed: bool,
    api_url: str | None,
    sandbox: bool,
    sandbox_latency: float,
    sandbox_faults: str | None,
    sandbox_render: str,
    sandbox_seed: int,
    sandbox_profile: str = "default",
    poll_batch: int | None = None,
    not_found_grace: float = NOT_FOUND_GRACE,
    only: tuple[str, ...] = (),
    where: tuple[str, ...] = (),
    confirm: Callable[[Decimal, int], bool] | None = None,
) -> BatchOptions:
    """BatchOptions from command-line values; the sandbox is used only when asked for.

    Without --poll-batch, a fresh `avatarbatch check` of the same API decides whether polls
    are batched, so the very first poll of a real run already takes the right shape.
    """
    sandbox_config = None
    client = None
    if sandbox:
        sandbox_config = sandbox_settings.build(
            latency=sandbox_latency,
            faults=sandbox_faults,
            render=sandbox_render,
            seed=sandbox_seed,
            workers=max(4, concurrency),
            profile=sandbox_profile,
            option_prefix="--sandbox-",
        )
    else:
        client = client_settings(environ, read_dotenv(Path(".env")), api_url=api_url)
        if poll_batch is None and check.refused_batches(environ, client.api_url):
            poll_batch = CHECKED_SINGLE_POLLS
        if poll_batch is not None:
            client = client.model_copy(update={"poll_batch_size": poll_batch})
    return BatchOptions(
        client=client,
        sandbox=sandbox_config,
        out=out,
        state=state,
        concurrency=concurrency,
        rps=rps,
        max_cost=None if max_cost is None else Decimal(str(max_cost)),
        retry_failed=retry_failed,
        poll_batch=poll_batch,
        poll=PollTiming(not_found_grace=not_found_grace),
        only=only,
        where=where,
        confirm=confirm,
    )


def execute(
    manifest: Path,
    run_options: BatchOptions,
    *,
    tty: bool,
    quiet: bool = False,
    verbose: bool = False,
) -> RunSummary:
    """Run with log lines (and a live bar on a terminal); returns the summary."""
    console = progress.configure_logging(tty=tty, verbose=verbose)
    if quiet:
        logging.getLogger("avatarbatch").setLevel(logging.WARNING)
    client = run_options.client
    single = run_options.poll_batch == CHECKED_SINGLE_POLLS and client is not None
    if single and client is not None and check.refused_batches(os.environ, client.api_url):
        log.info("a fresh `avatarbatch check` found batched polls refused: one task each")
    try:
        return asyncio.run(_with_progress(manifest, run_options, console))
    finally:
        # Handlers hold this invocation's stream; a caller that goes on (tests, a REPL) must
        # not log into it once it is closed.
        logging.getLogger("avatarbatch").handlers.clear()


async def _with_progress(manifest: Path, run_options: BatchOptions, console: object) -> RunSummary:
    runners: list[Runner] = []
    from rich.console import Console

    bar = progress.RunProgress(0, console if isinstance(console, Console) else None)

    async def redraw() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            if runners:
                runner = runners[0]
                bar.set_total(len(runner.jobs))
                bar.update(
                    runner.state.counts(), float(runner.budget.spent), runner.estimated_total
                )

    with bar:
        ticker = asyncio.create_task(redraw())
        try:
            return await batch.run_batch(
                manifest, run_options, handle_signals=True, on_runner=runners.append
            )
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
