"""A small chaos run in the suite: every fault kind, two SIGKILLs and a SIGINT, then the audit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from chaos import chaos

pytestmark = pytest.mark.slow


def test_small_chaos_run_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    # 20 jobs make about 25 to 45 POSTs, 25 tasks and 25 downloads over the runs: at these
    # rates the odds of drawing no fault at all are under one in a million (at the old, lower
    # rates a run drew none); a run draws 10 to 25. Not higher: a POST refused again and again
    # waits out the client's growing backoff (1 s at least per 429), so at 0.2 for 500s and
    # 429s each the run took 10 to 40 s, and 429s that common halve the client's rate.
    faults = "http500=0.15,http429=0.1,reset=0.1,slow=0.05,task_error=0.1,truncate=0.1"
    result = chaos(jobs=20, kills=2, seed=11, faults=faults, concurrency=8, workdir=tmp_path)
    assert result.ok, result.line()
    assert result.interruptions >= 2 and result.faults > 0
    assert not result.lost and not result.double_billed and not result.bad_files


def test_small_chaos_run_under_the_strict_profile(tmp_path: Path) -> None:
    # The narrowest reading of the docs: one poll per POST, 202 acknowledgements, a 2 s
    # registration lag, `completed` results. Smaller than the run above: the lag costs time.
    # Lower request-fault rates than above: one poll per POST makes many more POSTs to hit
    # (12 jobs make about 50 to 70 POSTs).
    faults = "http500=0.05,http429=0.05,reset=0.05,task_error=0.1,truncate=0.1,cut=0.1"
    result = chaos(
        jobs=12, kills=1, seed=5, faults=faults, concurrency=8, workdir=tmp_path, profile="strict"
    )
    assert result.ok, result.line()
    assert result.interruptions >= 1 and result.faults > 0
