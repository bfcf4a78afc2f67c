"""Serving the sandbox: on a chosen port for `avatarbatch sandbox`, or on a free loopback port
in a background thread for tests, benchmarks and `run --sandbox`.

A persistent sandbox (SandboxConfig.persist) first tries the port it served on last time, so
the URLs a client recorded then still lead to it, and records the port it got.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from avatarbatch.sandbox.app import ConnectionDropped, create_app
from avatarbatch.sandbox.config import SandboxConfig

STARTUP_TIMEOUT = 30.0


class _HideInjectedDrops(logging.Filter):
    """uvicorn logs every exception in the app; the deliberate connection drops are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ConnectionDropped)


def _uvicorn_config(app: Any, config: SandboxConfig, log_level: str) -> uvicorn.Config:
    logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        # A render of several results must not be cut short by a graceful shutdown.
        timeout_graceful_shutdown=5,
    )


def serve(config: SandboxConfig, host: str, port: int, log_level: str = "info") -> None:
    """Serve in the foreground until interrupted (the `avatarbatch sandbox` command)."""
    app = create_app(config)
    if port:
        app.state.engine.listening_on(port)
    server_config = _uvicorn_config(app, config, log_level)
    server_config.host, server_config.port = host, port
    uvicorn.Server(server_config).run()


@dataclass
class RunningSandbox:
    """A sandbox serving on loopback; `api_url` is what a Runware client should use."""

    base_url: str
    api_url: str
    config: SandboxConfig
    app: Any = None  #: the Starlette app, for tests that change faults while it runs

    def ledger(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/sandbox/ledger", timeout=10).json()  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/sandbox/stats", timeout=10).json()  # type: ignore[no-any-return]

    def videos(self) -> dict[str, dict[str, Any]]:
        return httpx.get(f"{self.base_url}/sandbox/videos", timeout=60).json()  # type: ignore[no-any-return]

    def post_times(self) -> list[float]:
        return httpx.get(f"{self.base_url}/sandbox/requests", timeout=10).json()["post_times"]  # type: ignore[no-any-return]


@contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, host: str = "127.0.0.1"
) -> Iterator[RunningSandbox]:
    """Start a sandbox on a free port of `host` in a thread; stop it on exit.

    A persistent one takes the port it had last time if that is free, and any free one if not.
    """
    config = config or SandboxConfig()
    app = create_app(config)
    engine = app.state.engine
    sock = None
    previous = engine.previous_port() if config.persist else None
    if previous is not None:
        sock = _listening(host, previous)
    if sock is None:
        sock = _tcp_socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
    port = sock.getsockname()[1]
    engine.listening_on(port)
    server = uvicorn.Server(_uvicorn_config(app, config, "warning"))
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])),
        name="avatarbatch-sandbox",
        daemon=True,
    )
    thread.start()
    try:
        if (
            not _wait_until(lambda: server.started or not thread.is_alive(), STARTUP_TIMEOUT)
            or not server.started
        ):
            raise RuntimeError("the sandbox did not start")
        base = f"http://{host}:{port}"
        yield RunningSandbox(base, base + config.path, config, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        if not thread.is_alive():  # its shutdown closed it, unless it never started
            engine.close_state()


def _tcp_socket() -> socket.socket:
    """A listening socket whose connections get TCP_NODELAY.

    asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and accepted sockets
    inherit the listener's proto; made with the default proto 0, every answer smaller than a
    segment (uvicorn writes headers and body separately) waited for the client's delayed ACK:
    44 ms for a poll answer or a 9 KB video on loopback, against 1 ms with it.
    """
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)


def _listening(host: str, port: int) -> socket.socket | None:
    """A socket listening on `port`, or None if someone else holds it.

    Listening at once, not only binding: SO_REUSEADDR lets two sockets bind one port, and only
    listen() tells whether another server already has it.
    """
    sock = _tcp_socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        return None
    return sock


def _wait_until(condition: Any, timeout: float) -> bool:
    event = threading.Event()
    deadline = timeout
    step = 0.01
    while deadline > 0:
        if condition():
            return True
        event.wait(step)
        deadline -= step
    return bool(condition())
