"""`status --watch`: the status view, redrawn in place on a terminal while a run goes on."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from avatarbatch.cli import views

REFRESH_EVERY = 1.0  #: seconds between two reads of the state file


def follow(
    load: Callable[[], dict[str, Any]],
    report: dict[str, Any],
    *,
    console: Console | None = None,
    every: float = REFRESH_EVERY,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Redraw until the run holding the state file ends (or Ctrl-C); returns the last view.

    Reads go through `load`, which opens the state file read-only for a moment each time,
    so watching never holds the run's lock nor slows its writes.
    """
    console = console or Console()
    stop = stop or threading.Event()
    with Live(_render(report, console), console=console, auto_refresh=False) as live:
        try:
            while report.get("running") and not stop.wait(every):
                report = load()
                live.update(_render(report, console), refresh=True)
        except KeyboardInterrupt:
            pass
    if not report.get("running"):
        console.print("no run is using this state file now", markup=False, style="dim")
    return report


def _render(report: dict[str, Any], console: Console) -> Text:
    buffer = Console(file=io.StringIO(), force_terminal=True, width=console.width)
    views.print_status(buffer, report)
    return Text.from_ansi(buffer.file.getvalue())  # type: ignore[attr-defined]
