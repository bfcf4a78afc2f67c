"""SIGINT and SIGTERM during a run: the first stops it gracefully, the second at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator

from avatarbatch.errors import ExitCode

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_enabled(enabled: bool) -> Iterator[list[Callable[[], None]]]:
    """Yields the callbacks to run on the first signal; the caller appends to it.

    A second signal leaves at once: every state write is already committed, so the state
    stays consistent and the next run resumes from it.
    """
    callbacks: list[Callable[[], None]] = []
    if not enabled:
        yield callbacks
        return
    loop = asyncio.get_running_loop()
    received = []

    def handler() -> None:
        received.append(1)
        if len(received) > 1:
            os._exit(ExitCode.INTERRUPTED)
        for callback in callbacks:
            callback()

    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, handler)
    try:
        yield callbacks
    finally:
        for number in STOP_SIGNALS:
            loop.remove_signal_handler(number)
