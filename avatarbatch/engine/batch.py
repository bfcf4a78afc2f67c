"""The library entry point: `run_manifest`, and the names callers of the engine import.

`avatarbatch.run_manifest("batch.yaml", sandbox=True)` runs a manifest like `avatarbatch run`
does (session.py) and returns its summary (summary.py; DESIGN.md's exit codes: 0 all done,
1 some failed, 3 budget, 4 auth/credit, 130 interrupted).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from pydantic import SecretStr

from avatarbatch.config import DEFAULTS, RunSettings, usd
from avatarbatch.engine.session import checked, register_plan, run_batch
from avatarbatch.engine.summary import RunSummary
from avatarbatch.errors import UsageError
from avatarbatch.runware.client import DEFAULT_API_URL, ClientSettings
from avatarbatch.sandbox.config import SandboxConfig

__all__ = [
    "RunSettings",
    "RunSummary",
    "checked",
    "register_plan",
    "run_batch",
    "run_manifest",
]


def run_manifest(
    manifest: str | Path,
    *,
    sandbox: bool | SandboxConfig = False,
    api_key: str | None = None,
    api_url: str | None = None,
    out: str | Path | None = None,
    state: str | Path | None = None,
    concurrency: int = DEFAULTS.concurrency,
    rps: float = DEFAULTS.rps,
    max_cost: float | Decimal | None = None,
    retry_failed: bool = DEFAULTS.retry_failed,
) -> RunSummary:
    """Run a manifest from Python, with the options of `avatarbatch run`; returns the summary.

    Give `api_key` (and optionally `api_url`) for the real API, or `sandbox=True` (or a
    SandboxConfig) for a local sandbox. Raises AvatarBatchError subclasses for bad manifests,
    a missing key, a locked state file; otherwise the summary's `exit_code` says how it went.
    """
    if not sandbox and not api_key:
        raise UsageError("run_manifest needs api_key=... for the Runware API, or sandbox=True")
    client = None
    if api_key:
        client = ClientSettings(api_url=api_url or DEFAULT_API_URL, api_key=SecretStr(api_key))
    rehearsal = None
    if sandbox:
        rehearsal = sandbox if isinstance(sandbox, SandboxConfig) else SandboxConfig()
    settings = RunSettings(
        client=client,
        sandbox=rehearsal,
        out=Path(out) if out is not None else None,
        state=Path(state) if state is not None else None,
        concurrency=concurrency,
        rps=rps,
        max_cost=usd(max_cost),
        retry_failed=retry_failed,
    )
    return asyncio.run(run_batch(Path(manifest), settings))
