"""The run lock: at most one avatarbatch process per state file.

Two runs sharing a state file would both submit the same pending jobs and pay twice, so a run
holds an exclusive `flock` on `<state>.lock` for its whole life. The kernel drops a flock
when its process dies, however it dies, so a SIGKILLed run never leaves a stale lock behind,
and the file can be kept on exit: unlinking it would race with a process that has opened the
old file but not yet locked it, and two runs would each hold a lock on a different file. The
pid written inside only serves the message. The descriptor is not inherited by child
processes (Python opens files non-inheritable), so an ffmpeg child cannot keep the lock alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from avatarbatch.errors import AvatarBatchError
from avatarbatch.state.records import StateError


class StateLocked(AvatarBatchError):
    """Another avatarbatch run (or another lock in this process) is using the state file."""

    exit_code = 2


def lock_path(state_path: Path) -> Path:
    """The lock file that guards `state_path`: the same name with `.lock` appended."""
    return state_path.with_name(state_path.name + ".lock")


@contextmanager
def state_lock(state_path: Path) -> Iterator[None]:
    """Hold the state file's lock for the duration of the block, or raise StateLocked.

    The lock belongs to the real file: a symlink or a second path to the same state file
    finds the same lock; a lock of its own would let two runs pay twice.
    """
    state_path = Path(state_path).resolve()
    path = lock_path(state_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"cannot create the lock file {path}: {exc.strerror}") from exc
    try:
        with contextlib.suppress(OSError):  # someone else's file: the lock still works
            os.fchmod(fd, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(_held_message(state_path, fd)) from None
        except OSError as exc:
            raise StateError(f"cannot lock {path}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for the next reader
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def _held_message(state_path: Path, fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    if not text.isdigit():  # the holder has not written its pid yet
        holder = ""
    elif int(text) == os.getpid():
        holder = f" (pid {text}, this very process)"
    else:
        holder = f" (pid {text})"
    return (
        f"another avatarbatch run is using {state_path}{holder}; wait for it to finish, or stop it"
    )


def held(state_path: Path) -> bool:
    """Whether a run holds the state file's lock right now (for `status`); takes nothing."""
    path = lock_path(Path(state_path).resolve())
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
