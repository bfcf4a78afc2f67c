"""A small chaos run in the suite: every fault kind, two SIGKILLs and a SIGINT, then the audit."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from chaos import chaos


def test_small_chaos_run_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    result = chaos(jobs=30, kills=2, seed=11, concurrency=8, workdir=tmp_path)
    assert result.ok, result.line()
    assert result.interruptions >= 2 and result.faults > 0
    assert not result.lost and not result.double_billed and not result.bad_files
