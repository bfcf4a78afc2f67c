"""Measuring one child process, and the facts about the machine the figures come from.

Every contender runs in a process of its own, so its CPU time and peak memory are its own:
the sandbox, the benchmark driver and the other contenders never count. `os.wait4` hands
back the child's resource usage when it is reaped (wall time includes the ~20 ms start of
the small wrapper that reaps it).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Measured:
    """What one finished child process cost."""

    wall_s: float
    started_at: float  #: wall clock (time.time()) just before the command's process started
    cpu_s: float  #: user + system seconds of the child (and of any children it reaped)
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


# Runs the measured command and reports its rusage. Linux folds the memory high-water mark
# of the process that calls execve into the child's ru_maxrss, so a child started straight
# from this driver (hundreds of MB after scenario C) would report the driver's peak as its
# own. Started from this small interpreter instead, it reports only its own.
# It also notes the wall clock just before the child starts, which the sandbox's clock of the
# first POST it received is compared with (both processes read the same time.time()).
_WRAPPER = """
import json, os, subprocess, sys, time
started = time.time()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime,
               usage.ru_maxrss, started], report)
"""


def run_measured(
    command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Measured:
    """Run `command` to completion; its output goes to temporary files, not to memory."""
    with (
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
        tempfile.NamedTemporaryFile(suffix=".json") as usage,
    ):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", _WRAPPER, usage.name, *command],
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        wall = time.perf_counter() - started
        report = Path(usage.name).read_text() or "[-1, 0, 0, 0]"
        returncode, cpu, maxrss_kib, started_at = json.loads(report)
        stdout.seek(0)
        stderr.seek(0)
        return Measured(
            wall_s=wall,
            started_at=started_at,
            cpu_s=cpu,
            peak_rss_mb=maxrss_kib / 1024,  # Linux reports KiB
            returncode=returncode,
            stdout=stdout.read().decode("utf-8", errors="replace"),
            stderr=stderr.read().decode("utf-8", errors="replace"),
        )


def spread(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """A figure measured several times: its median, its range and every run, in order."""
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), digits),
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
        "runs": [round(v, digits) for v in values],
    }


def spreads(runs: Sequence[Mapping[str, Any]], digits: int = 3) -> dict[str, Any]:
    """The per-run figures of one contender (dicts of numbers, nested) as `spread`s."""
    first = runs[0]
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, Mapping):
            merged[key] = spreads([run[key] for run in runs], digits)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            merged[key] = spread([float(run[key]) for run in runs], digits)
        else:
            merged[key] = value
    return merged


def checked(measured: Measured, what: str) -> Measured:
    """Stop the benchmark loudly when a contender failed: its figures would mean nothing."""
    if measured.returncode != 0:
        tail = "\n".join((measured.stdout + measured.stderr).splitlines()[-20:])
        raise SystemExit(f"{what} exited with {measured.returncode}:\n{tail}")
    return measured


def machine_facts() -> dict[str, Any]:
    """Enough to tell whether two results files are comparable."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {
            name: _version(name)
            for name in ("avatarbatch", "runware-sdk", "httpx", "uvicorn", "starlette")
        },
        "executable": sys.executable,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
