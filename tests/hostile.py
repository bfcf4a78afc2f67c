"""A hostile Runware API for tests: the real sandbox, except where a test tells it to lie.

`HostileApi` is an ASGI app that wraps a sandbox app. Every request goes through to the
sandbox (so uploads, submissions and billing are real), and then, for the task types a test
has scripted with `lie(...)`, the sandbox's answer is replaced by whatever the script returns:
garbage, an HTML page, a reshaped `data`, a body that never ends. Under `/hostile/` it serves
downloads no honest CDN would: a 10 GB promise, an endless body, a redirect loop, a trickle;
and any other GET path outside `/sandbox/` (`/etc/passwd`, `/x/..%2F..%2Fescaped.mp4`) serves
`api.video` with a Content-Disposition that tries to escape the folder. `serving(...)` runs it on a loopback port in a thread, like
`avatarbatch.sandbox.server.running_sandbox`, and counts what it sent, so a test can prove
that a 10 GB body was never read.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from avatarbatch.sandbox.app import create_app
from avatarbatch.sandbox.config import SandboxConfig

TEN_GB = 10 * 1000**3


@dataclass
class Exchange:
    """One POST as the sandbox answered it, handed to a lie to rewrite."""

    tasks: list[dict[str, Any]]
    status: int
    answer: Any  #: the sandbox's decoded JSON answer
    base_url: str  #: http://127.0.0.1:PORT, for URLs that point back at this server
    api: HostileApi


Lie = Callable[[Exchange], Response | None]  #: None: let the sandbox's answer through


class HostileApi:
    def __init__(self, config: SandboxConfig) -> None:
        self.inner = create_app(config)
        self.engine = self.inner.state.engine
        self.path = config.path
        self.lies: dict[str, Lie] = {}
        self.sent: Counter[str] = Counter()  #: bytes sent per /hostile/ endpoint
        self.hits: Counter[str] = Counter()  #: requests per /hostile/ endpoint and per lie
        self.closing = threading.Event()
        self.video = b""  #: what any other GET path serves (see `_file`): set by the test
        self.big_bytes = 0  #: size of /hostile/big
        self.big_video: bytes | None = None  #: served at /hostile/big instead, when set
        self.router = Router(
            routes=[
                Route("/hostile/huge", self._huge),
                Route("/hostile/endless", self._endless),
                Route("/hostile/loop/{n:int}", self._loop),
                Route("/hostile/trickle", self._trickle),
                Route("/hostile/big", self._big),
                Route("/{rest:path}", self._file),  # any other GET: the name tricks
            ]
        )

    def lie(self, task_type: str, script: Lie) -> None:
        """Answer POSTs holding `task_type` with `script(exchange)` from now on."""
        self.lies[task_type] = script

    def honest(self) -> None:
        self.lies.clear()

    # --- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)  # lifespan: the sandbox's engine
            return
        path = scope["path"]
        if path.startswith("/hostile/") or (
            scope["method"] == "GET" and not path.startswith("/sandbox/")
        ):
            await self.router(scope, receive, send)
        elif scope["method"] == "POST" and path == self.path and self.lies:
            await self._post(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        status, headers, answer = await self._ask_sandbox(scope, body)
        tasks = json.loads(body)
        kind = next((str(t.get("taskType")) for t in tasks if t.get("taskType") in self.lies), None)
        lie = None
        if kind is not None:
            base = str(Request(scope).base_url).rstrip("/")
            lie = self.lies[kind](Exchange(tasks, status, json.loads(answer), base, self))
            self.hits["lie:" + kind] += lie is not None
        if lie is None:
            lie = Response(answer, status, headers=headers)
        await lie(scope, receive, send)  # the body is consumed: this only hears a disconnect

    async def _ask_sandbox(self, scope: Scope, body: bytes) -> tuple[int, dict[str, str], bytes]:
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            messages.append(message)

        await self.inner(scope, _replay(body), capture)
        start = messages[0]
        headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
        headers.pop("content-length", None)
        content = b"".join(m.get("body", b"") for m in messages[1:])
        return start["status"], headers, content

    # --- downloads no honest server would serve --------------------------------------------------

    async def zeros(
        self, name: str, total: int | None, chunk: int = 1 << 16, pause: float = 0.0
    ) -> AsyncIterator[bytes]:
        sent = 0
        while not self.closing.is_set() and (total is None or sent < total):
            piece = b"\0" * (chunk if total is None else min(chunk, total - sent))
            sent += len(piece)
            self.sent[name] += len(piece)
            yield piece
            await asyncio.sleep(pause)  # also lets a disconnect be noticed

    async def _huge(self, request: Request) -> Response:
        """Promises 10 GB (and would send it, slowly enough to notice a reader)."""
        self.hits["huge"] += 1
        headers = {"content-length": str(TEN_GB)}
        return StreamingResponse(self.zeros("huge", TEN_GB), headers=headers)

    async def _endless(self, request: Request) -> Response:
        """No length, no end."""
        self.hits["endless"] += 1
        return StreamingResponse(self.zeros("endless", None), media_type="video/mp4")

    async def _loop(self, request: Request) -> Response:
        """/hostile/loop/1 -> /hostile/loop/2 -> /hostile/loop/1 -> ..."""
        self.hits["loop"] += 1
        n = request.path_params["n"]
        return RedirectResponse(f"/hostile/loop/{3 - n}", status_code=302)

    async def _trickle(self, request: Request) -> Response:
        """A megabyte promised, one byte every 50 ms."""
        self.hits["trickle"] += 1
        stream = self.zeros("trickle", 1 << 20, chunk=1, pause=0.05)
        return StreamingResponse(stream, headers={"content-length": str(1 << 20)})

    async def _big(self, request: Request) -> Response:
        self.hits["big"] += 1
        self.sent["big"] += self.big_bytes
        body = self.big_video if self.big_video is not None else b"\1" * self.big_bytes
        return Response(body, media_type="video/mp4")

    async def _file(self, request: Request) -> Response:
        """The real video under any name, with a Content-Disposition that tries to escape."""
        self.hits["file"] += 1
        headers = {"content-disposition": 'attachment; filename="../../../escaped.mp4"'}
        return Response(self.video, media_type="video/mp4", headers=headers)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """A receive that hands the sandbox the request body already read from the client."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client is still there: wait, as uvicorn does
        return {"type": "http.disconnect"}

    return receive


@dataclass
class Serving:
    api: HostileApi
    base_url: str
    api_url: str


@contextmanager
def serving(config: SandboxConfig) -> Iterator[Serving]:
    """Serve a HostileApi on a free loopback port in a thread; stop it on exit."""
    api = HostileApi(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            api, log_level="critical", access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
    )
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="hostile-api", daemon=True
    )
    thread.start()
    try:
        ready = threading.Event()
        for _ in range(3000):
            if server.started or not thread.is_alive():
                break
            ready.wait(0.01)
        if not server.started:
            raise RuntimeError("the hostile API did not start")
        base = f"http://127.0.0.1:{port}"
        yield Serving(api, base, base + config.path)
    finally:
        api.closing.set()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
