"""A sandbox in a process of its own, so its CPU time never counts against a contender.

The parent starts `python bench/sandbox_process.py '<SandboxConfig JSON>' [PROFILE.prof]`;
the child serves on a free loopback port from its main thread, prints its base URL, and
stops when its stdin closes (which also happens when the parent dies, so no sandbox outlives
a benchmark). With a profile path it serves under cProfile and writes the profile on the way
out (bench/sandbox_bench.py uses this).
"""

from __future__ import annotations

import asyncio
import cProfile
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from avatarbatch.sandbox.app import create_app
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import RunningSandbox


@contextmanager
def sandbox_process(config: SandboxConfig, profile: Path | None = None) -> Iterator[RunningSandbox]:
    """A sandbox serving in a child process for the length of the `with` block."""
    extra = [str(profile)] if profile is not None else []
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), config.model_dump_json(), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        base_url = child.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"the sandbox process did not start (exit {child.poll()})")
        yield RunningSandbox(base_url, base_url + config.path, config)
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def serve(config: SandboxConfig, profile: Path | None) -> None:
    """Serve from this thread (where cProfile sees the event loop) until stdin closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
        )
    )

    def announce_then_wait() -> None:
        while not server.started:
            threading.Event().wait(0.01)
        print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        sys.stdin.read()  # until the parent closes the pipe
        server.should_exit = True

    threading.Thread(target=announce_then_wait, daemon=True).start()
    profiler = cProfile.Profile()
    if profile is not None:
        profiler.enable()
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        if profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        sock.close()


def main() -> None:
    config = SandboxConfig.model_validate_json(sys.argv[1])
    serve(config, Path(sys.argv[2]) if len(sys.argv) > 2 else None)


if __name__ == "__main__":
    main()
