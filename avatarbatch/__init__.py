"""avatarbatch: batch talking-avatar videos through the Runware API, resumably and within budget.

From Python: `avatarbatch.run_manifest("batch.yaml", sandbox=True)` runs a manifest like
`avatarbatch run` does and returns its summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from avatarbatch.engine.batch import RunSummary, run_manifest

__all__ = ["RunSummary", "__version__", "run_manifest"]


def __getattr__(name: str) -> Any:
    """The library entry points, loaded on first use: `import avatarbatch.manifest` (or any
    layer) must not load the engine, the HTTP client and the sandbox along with it."""
    if name in ("RunSummary", "run_manifest"):
        from avatarbatch.engine import batch

        return getattr(batch, name)
    raise AttributeError(f"module 'avatarbatch' has no attribute {name!r}")
