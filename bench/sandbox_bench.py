"""The sandbox's own benchmark: does its CPU per task stay flat as tasks pile up?

    .venv/bin/python bench/sandbox_bench.py [--tasks 20000] [--slice 1000] [--profile FILE]

A sandbox process (zero latency, stub renders) takes `--tasks` tasks, one slice after another:
each slice's tasks are submitted (100 to a POST), polled (100 to a POST) until done, and their
videos downloaded. After each slice the sandbox reports the CPU seconds of its process, so
each slice's CPU per task is the sandbox's alone (this driver is another process). A request
path that scanned every task, upload or result so far would make the later slices dearer:
the figure to watch is the last slice's CPU per task over the first's (flat is 1.0).

`--profile FILE` serves the sandbox under cProfile and prints its top functions, cumulative.
`run_bench.py --scenarios S` runs this as scenario S.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import pstats
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from make_manifest import DEMO_MEDIA
from measure import spread
from sandbox_process import sandbox_process

from avatarbatch.sandbox.config import SandboxConfig

PER_POST = 100  #: tasks in one submit or poll POST
DOWNLOADS = 16  #: videos fetched at once
POLL_PAUSE_S = 0.02
MODEL = "klingai:avatar@2.0-standard"


def sandbox_bench(tasks: int, slice_size: int, profile: Path | None = None) -> dict[str, Any]:
    """Run `tasks` tasks through a fresh sandbox process; the CPU per task of each slice."""
    config = SandboxConfig(latency=0, fixed_latency=0, render="stub", workers=256)
    with sandbox_process(config, profile) as sandbox:
        return asyncio.run(_drive(sandbox.base_url, sandbox.api_url, tasks, slice_size))


async def _drive(base_url: str, api_url: str, tasks: int, slice_size: int) -> dict[str, Any]:
    headers = {"Authorization": "Bearer sandbox-bench"}
    limits = httpx.Limits(max_connections=DOWNLOADS + 4)
    async with httpx.AsyncClient(headers=headers, timeout=120, limits=limits) as http:

        async def post(items: list[dict[str, Any]]) -> dict[str, Any]:
            response = await http.post(api_url, json=items)
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            if answer.get("errors"):
                raise RuntimeError(answer["errors"][:2])
            return answer

        async def cpu() -> float:
            return float((await http.get(f"{base_url}/sandbox/stats")).json()["process_cpu_s"])

        async def upload(path: Path, mime: str) -> str:
            media = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
            task = {"taskType": "mediaStorage", "taskUUID": str(uuid.uuid4())}
            answer = await post([{**task, "operation": "upload", "media": media}])
            return str(answer["data"][0]["mediaUUID"])

        image = await upload(DEMO_MEDIA / "presenter.png", "image/png")
        audio = await upload(DEMO_MEDIA / "voices" / "en.mp3", "audio/mpeg")
        fetches = asyncio.Semaphore(DOWNLOADS)

        async def download(url: str) -> None:
            async with fetches:
                response = await http.get(url)
                response.raise_for_status()

        async def one_slice(count: int) -> None:
            uuids = [str(uuid.uuid4()) for _ in range(count)]
            submits = [
                {
                    "taskType": "videoInference",
                    "taskUUID": u,
                    "model": MODEL,
                    "positivePrompt": "sandbox bench",
                    "inputs": {"image": image, "audio": audio},
                    "deliveryMethod": "async",
                    "numberResults": 1,
                    "includeCost": True,
                }
                for u in uuids
            ]
            await asyncio.gather(
                *(post(submits[i : i + PER_POST]) for i in range(0, count, PER_POST))
            )
            waiting, urls = set(uuids), []
            while waiting:
                await asyncio.sleep(POLL_PAUSE_S)
                batch = list(waiting)
                answers = await asyncio.gather(
                    *(
                        post([{"taskType": "getResponse", "taskUUID": u} for u in chunk])
                        for chunk in (
                            batch[i : i + PER_POST] for i in range(0, len(batch), PER_POST)
                        )
                    )
                )
                for answer in answers:
                    for item in answer.get("data", []):
                        if item.get("status") == "success":
                            waiting.discard(item["taskUUID"])
                            urls.append(item["videoURL"])
            await asyncio.gather(*(download(url) for url in urls))

        started = time.perf_counter()
        per_task: list[float] = []
        before = await cpu()
        done = 0
        while done < tasks:
            count = min(slice_size, tasks - done)
            await one_slice(count)
            after = await cpu()
            per_task.append((after - before) / count * 1000)
            before, done = after, done + count
        wall = time.perf_counter() - started
    return {
        "tasks": tasks,
        "slice": slice_size,
        "cpu_ms_per_task": [round(x, 4) for x in per_task],
        "last_over_first": round(per_task[-1] / per_task[0], 3),
        "tasks_per_s": round(tasks / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--slice", type=int, default=1_000)
    parser.add_argument("--profile", type=Path, help="serve under cProfile, write it here")
    parser.add_argument("--top", type=int, default=40, help="profile lines to print")
    args = parser.parse_args()
    result = sandbox_bench(args.tasks, args.slice, args.profile)
    slices = result["cpu_ms_per_task"]
    print(f"{result['tasks_per_s']:.0f} tasks/s; sandbox CPU ms per task by slice:")
    print("  " + " ".join(f"{x:.3f}" for x in slices))
    print(f"  last / first: {result['last_over_first']:.2f}; spread {spread(slices)}")
    if args.profile is not None:
        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
