"""Paths written in manifests, resolved against the folder of the file that wrote them."""

from __future__ import annotations

import os
from pathlib import Path


def resolve(base_dir: Path, written: str) -> Path:
    """An absolute, normalised path; `~` expands, symlinks are left alone (they are probed)."""
    # os.path.expanduser leaves `~nobody` alone; Path.expanduser raises for an unknown user.
    path = Path(os.path.expanduser(written))  # noqa: PTH111
    return Path(os.path.normpath(path if path.is_absolute() else base_dir.absolute() / path))
