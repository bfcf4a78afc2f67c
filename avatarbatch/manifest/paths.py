"""Paths written in manifests, and reading the files they name without surprises."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnreadableFile(Exception):
    """A path that is not a readable regular file within the size cap; the text says why."""


def resolve(base_dir: Path, written: str) -> Path:
    """An absolute, normalised path; `~` expands, symlinks are left alone (they are probed)."""
    # os.path.expanduser leaves `~nobody` alone; Path.expanduser raises for an unknown user.
    path = Path(os.path.expanduser(written))  # noqa: PTH111
    return Path(os.path.normpath(path if path.is_absolute() else base_dir.absolute() / path))


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing what could hang or flood us: FIFOs, devices, huge files.

    stat() comes before open(), because opening a FIFO blocks until a writer appears.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UnreadableFile("does not exist") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise UnreadableFile(f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableFile("is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableFile("is not a regular file (a device, FIFO or socket?)")
    if info.st_size > max_bytes:
        raise UnreadableFile(f"is {info.st_size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")
    try:
        with path.open("rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise UnreadableFile(f"cannot be read ({exc.strerror or exc})") from None
