"""Running ffmpeg for the sandbox without ever leaving a process or a partial file behind.

Every run is an asyncio subprocess with a timeout that is killed and reaped when it times out
or is cancelled (even twice). Every output is written to a hidden temporary file beside its
destination and renamed into place only when complete; ffmpeg's messages live in an anonymous
temporary file, which disappears however the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import IO

import imageio_ffmpeg

# Enough of ffmpeg's stderr to see why it failed, short enough for a task's error message.
STDERR_TAIL_LINES = 5
# How many cancellations the cleanup of a cancelled ffmpeg run absorbs before giving up.
CLEANUP_ATTEMPTS = 5


class RenderError(Exception):
    """ffmpeg (or Pillow, for the portrait) could not produce the video; the text says why."""


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg (or the one IMAGEIO_FFMPEG_EXE names)."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def render_into(
    dest: Path, args: list[str], *, what: str, timeout: float, stdin: IO[bytes] | None = None
) -> None:
    """Run ffmpeg writing to a hidden file beside `dest`; rename it into place on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        await _run_ffmpeg([*args, "-y", file_url(partial)], what=what, timeout=timeout, stdin=stdin)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


async def _run_ffmpeg(
    args: list[str], *, what: str, timeout: float, stdin: IO[bytes] | None
) -> None:
    """Run ffmpeg without blocking the loop; kill it on timeout or cancellation.

    Input and messages go through files, not pipes: with no pipe to connect, CPython 3.11
    cannot hang when a spawn is cancelled half-way (it waits for pipes connected after the
    cancel), and there is no pipe buffer for a chatty ffmpeg to fill.
    """
    with tempfile.TemporaryFile() as messages:
        process = await _spawn(args, what=what, stdin=stdin, stderr=messages)
        try:
            async with asyncio.timeout(timeout):
                returncode = await process.wait()
        except TimeoutError:
            raise RenderError(f"ffmpeg took longer than {timeout:g} s to {what}; stopped") from None
        finally:
            if process.returncode is None:
                await _stop(process)
        if returncode != 0:
            raise RenderError(
                f"ffmpeg failed to {what} (exit status {returncode}): {tail(_end_of(messages))}"
            )


async def _spawn(
    args: list[str], *, what: str, stdin: IO[bytes] | None, stderr: IO[bytes]
) -> asyncio.subprocess.Process:
    spawning = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            ffmpeg_exe(),
            *("-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"),
            *args,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    )
    try:
        # Shielded so that a cancel arriving mid-spawn still yields a process to stop.
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        process = await _spawned(spawning)
        if process is not None:
            await _stop(process)
        raise
    except OSError as exc:
        raise RenderError(f"could not start ffmpeg to {what}: {exc}") from exc


async def _spawned(
    spawning: asyncio.Future[asyncio.subprocess.Process],
) -> asyncio.subprocess.Process | None:
    """The process a cancelled spawn still creates, waited for through further cancels."""
    for _ in range(CLEANUP_ATTEMPTS):
        try:
            return await asyncio.shield(spawning)
        except asyncio.CancelledError:
            if spawning.cancelled():  # the spawn itself was cancelled: nothing to stop
                return None
        except OSError:
            return None
    return None


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Kill ffmpeg and reap it, even if cancelled again meanwhile, then pass the cancel on.

    Cancellation can arrive twice (a worker cancelled, then the loop shutting down cancels
    whatever is left); giving up half-way would leave ffmpeg running and its transport open
    after the loop closes. A killed process is reaped within milliseconds.
    """
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    cancelled = False
    for _ in range(CLEANUP_ATTEMPTS):
        try:
            await process.wait()
            break
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def tail(stderr: bytes) -> str:
    """The last few lines ffmpeg wrote, for an error message."""
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines()]
    return " | ".join([line for line in lines if line][-STDERR_TAIL_LINES:]) or "no message"


def _end_of(messages: IO[bytes], size: int = 4096) -> bytes:
    messages.seek(0, os.SEEK_END)
    messages.seek(max(0, messages.tell() - size))
    return messages.read()


def file_url(path: Path) -> str:
    # An explicit protocol: a relative name like "concat:x" or "-x.mp3" is just a file.
    return f"file:{path.absolute()}"
