"""avatarbatch: batch talking-avatar videos through the Runware API, resumably and within budget."""

__version__ = "0.1.0"
