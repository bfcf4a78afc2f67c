"""avatarbatch: batch talking-avatar videos through the Runware API, resumably and within budget.

From Python: `avatarbatch.run_manifest("batch.yaml", sandbox=True)` runs a manifest like
`avatarbatch run` does and returns its summary.
"""

__version__ = "0.1.0"

from avatarbatch.batch import RunSummary, run_manifest

__all__ = ["RunSummary", "__version__", "run_manifest"]
