"""Video downloads written through aiofiles against plain blocking writes, in one run.

    .venv/bin/python bench/aiofiles_bench.py [--videos 8] [--mb 50] [--rounds 5]
                                             [--concurrency 8] [--json FILE]

A sandbox in a process of its own renders `--videos` stub videos padded to `--mb` MB each
(sparse on its side, so serving them costs it no disk). Each round then downloads all of them
at `--concurrency`, as a run's download pool does, once per way of writing, in an order that
rotates from round to round:

- `client`: `RunwareClient.download`, the real path (redirect checks, retries, plain writes);
- `aiofiles`: the bare loop (stream, hash, write) writing through aiofiles, its open and
  close shielded from cancellation as the client would need them (`writing` below);
- `plain`: the same loop writing with blocking `file.write` on the event loop.

For each: wall time, CPU time of this process (the worker threads of aiofiles included), and
how late a 10 ms asyncio ticker fires meanwhile (p50, p99, max), which is what every other
task of a run (polls, submissions, the progress display) waits on. Figures are the median
and the range over the rounds. Needs aiofiles (`.venv/bin/pip install aiofiles`), which
avatarbatch itself does not use: README.md, "Dependency notes", says why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiofiles
import httpx
from aiofiles.threadpool.binary import AsyncBufferedIOBase
from sandbox_process import sandbox_process

from avatarbatch import catalog
from avatarbatch.runware.client import ClientSettings, RunwareClient, make_http_client
from avatarbatch.runware.download import DOWNLOAD_CHUNK
from avatarbatch.sandbox.config import SandboxConfig

DEMO = Path(__file__).resolve().parent.parent / "manifests" / "media"
API_KEY = "bench-key"
TICK_S = 0.010  #: the ticker's period: lateness beyond it is time the loop was blocked
WAYS = ("client", "aiofiles", "plain")
POLL_S = 0.05

Fetch = Callable[[str, Path], Awaitable[int]]
T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> tuple[T, asyncio.CancelledError | None]:
    """What `work` gives once it has ended, and the cancellation the caller met meanwhile.

    aiofiles opens and closes in a worker thread that a cancellation cannot stop: a task
    cancelled while the thread was opening would never see the file, and its descriptor
    would stay open. So the work runs shielded to its end, and the caller raises the
    cancellation afterwards.
    """
    future = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            return await asyncio.shield(future), cancelled
        except asyncio.CancelledError as exc:
            if future.cancelled():
                raise
            cancelled = exc
        except BaseException as exc:
            if cancelled is not None:
                raise cancelled from exc
            raise


@contextlib.asynccontextmanager
async def writing(path: Path) -> AsyncIterator[AsyncBufferedIOBase]:
    """`path` opened for writing through aiofiles, closed on the way out whatever happens."""
    file, cancelled = await to_the_end(aiofiles.open(path, "wb"))
    try:
        if cancelled is not None:
            raise cancelled
        yield file
    finally:
        _, cancelled = await to_the_end(file.close())
        if cancelled is not None:
            raise cancelled


async def plain_fetch(http: httpx.AsyncClient, url: str, target: Path) -> int:
    digest, size = hashlib.sha256(), 0
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        with target.open("wb") as out:
            async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                size += len(chunk)
                digest.update(chunk)
                out.write(chunk)
    return size


async def aiofiles_fetch(http: httpx.AsyncClient, url: str, target: Path) -> int:
    digest, size = hashlib.sha256(), 0
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        async with writing(target) as out:
            async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                size += len(chunk)
                digest.update(chunk)
                await out.write(chunk)
    return size


async def ticker(lateness: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lateness.append(time.perf_counter() - started - TICK_S)


async def one_way(fetch: Fetch, urls: list[str], folder: Path, concurrency: int) -> dict[str, Any]:
    folder.mkdir()
    slots = asyncio.Semaphore(concurrency)
    lateness: list[float] = []
    stop = asyncio.Event()

    async def one(index: int, url: str) -> int:
        async with slots:
            return await fetch(url, folder / f"{index}.part")

    watching = asyncio.create_task(ticker(lateness, stop))
    await asyncio.sleep(TICK_S * 2)  # the ticker's first tick is not a download's doing
    lateness.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    sizes = await asyncio.gather(*(one(i, url) for i, url in enumerate(urls)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stop.set()
    await watching
    shutil.rmtree(folder)
    late_ms = sorted(x * 1000 for x in lateness)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "mb_per_s": sum(sizes) / 2**20 / wall,
        "late_p50_ms": late_ms[len(late_ms) // 2],
        "late_p99_ms": late_ms[min(len(late_ms) - 1, int(len(late_ms) * 0.99))],
        "late_max_ms": late_ms[-1],
    }


async def rendered_videos(client: RunwareClient, count: int) -> list[str]:
    portrait = await client.upload_image(
        (DEMO / "presenter.png").read_bytes(), "image/png", str(uuid.uuid4())
    )
    voice = await client.upload_media(
        (DEMO / "voices/en.mp3").read_bytes(), "audio/mpeg", str(uuid.uuid4())
    )
    tasks = [
        {
            "taskType": "videoInference",
            "taskUUID": str(uuid.uuid4()),
            "model": catalog.STANDARD.id,
            "inputs": {"image": portrait.uuid, "audio": voice.uuid},
            "deliveryMethod": "async",
        }
        for _ in range(count)
    ]
    refused = [e for e in (await client.submit_many(tasks)).values() if e is not None]
    if refused:
        raise RuntimeError(f"the sandbox refused a task: {refused[0]}")
    urls: dict[str, str] = {}
    while len(urls) < count:
        await asyncio.sleep(POLL_S)
        for task_uuid, state in (await client.poll(t["taskUUID"] for t in tasks)).items():
            if state.results and state.results[0].video_url:
                urls[task_uuid] = state.results[0].video_url
    return list(urls.values())


async def measure(api_url: str, args: argparse.Namespace, work: Path) -> dict[str, list[Any]]:
    settings = ClientSettings(api_url=api_url, api_key=API_KEY)
    runs: dict[str, list[Any]] = {way: [] for way in WAYS}
    async with make_http_client(4) as api, make_http_client(args.concurrency) as pool:
        client = RunwareClient(api, settings, downloads=pool)
        urls = await rendered_videos(client, args.videos)

        async def by_client(url: str, target: Path) -> int:
            return (await client.download(url, target)).size

        fetches: dict[str, Fetch] = {
            "client": by_client,
            "aiofiles": lambda url, target: aiofiles_fetch(pool, url, target),
            "plain": lambda url, target: plain_fetch(pool, url, target),
        }
        for number in range(args.rounds):
            order = WAYS[number % len(WAYS) :] + WAYS[: number % len(WAYS)]
            for way in order:
                run = await one_way(fetches[way], urls, work / f"{number}-{way}", args.concurrency)
                runs[way].append(run)
                print(f"round {number + 1} {way:8} " + _row(run), flush=True)
    return runs


def _row(run: dict[str, float]) -> str:
    return " ".join(f"{key}={value:.2f}" for key, value in run.items())


def summary(runs: dict[str, list[dict[str, float]]]) -> str:
    keys = list(runs[WAYS[0]][0])
    lines = ["| way | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for way, measured in runs.items():
        cells = []
        for key in keys:
            values = [run[key] for run in measured]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        lines.append(f"| {way} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    config = SandboxConfig(
        latency=0, fixed_latency=0, render="stub", workers=8, video_bytes=args.mb * 2**20
    )
    with sandbox_process(config) as sandbox, tempfile.TemporaryDirectory() as work:
        runs = asyncio.run(measure(sandbox.api_url, args, Path(work)))
    print(
        f"\n{args.videos} videos of {args.mb} MB, concurrency {args.concurrency}, "
        f"{args.rounds} rounds: median (min-max)\n"
    )
    print(summary(runs))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "runs": runs}))


if __name__ == "__main__":
    main()
