"""The contenders of `make bench`, each run as its own process against the same sandbox.

    python bench/contenders.py {library,sdk,raw} MANIFEST.csv --api-url URL --out DIR \\
        --concurrency 16 [--rps 50] [--render-times TIMES.json]

- `library`: `avatarbatch.run_manifest`, the library entry point (the CLI is measured by
  running `avatarbatch run` itself).
- `sdk`: what a user writes with the official `runware-sdk` (REST transport): each distinct
  file uploaded once with `media_storage`, an `asyncio.Semaphore(concurrency)` around
  `run()` and the httpx download of each job.
- `raw`: the floor of client overhead and latency, a hand-written httpx loop: upload each
  distinct file once, submit, poll that task at avatarbatch's cadence (first at 98 % of its
  render time, which it is told, since it is a floor: `--render-times`; then every 2 %, at
  least 50 ms), download. API calls and downloads have separate connection pools, and a
  job gives its slot back before its download, as avatarbatch's does.

The SDK and raw contenders read the manifest CSV with the csv module and import nothing from
avatarbatch, as a user's script would not. Each prints one JSON line: jobs done and failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import mimetypes
import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MODELS = {"standard": "klingai:avatar@2.0-standard", "pro": "klingai:avatar@2.0-pro"}
API_KEY_VARIABLE = "RUNWARE_API_KEY"
#: The raw loop's poll cadence, avatarbatch's (config.PollTiming): the first check at 98 % of
#: the render time, then every 2 % of it, at least 50 ms apart.
POLL_EARLY = 0.98
POLL_STEP = 0.02
POLL_MIN_INTERVAL_S = 0.05
#: Downloads at once in the raw loop, in a pool of their own (avatarbatch's RunSettings.downloads).
RAW_DOWNLOADS = 8
#: The raw loop's API connections at most: httpcore checks every pooled connection on each
#: request, so 256 of them (one per task at concurrency 256) cost more CPU than waiting.
RAW_API_CONNECTIONS = 32


@dataclass(frozen=True)
class Row:
    id: str
    portrait: Path
    audio: Path
    model: str
    prompt: str
    audio_ref: str  #: the audio as the CSV names it


def read_rows(manifest: Path) -> list[Row]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return [
            Row(
                id=line["id"],
                portrait=manifest.parent / line["portrait"],
                audio=manifest.parent / line["audio"],
                model=MODELS.get(line["model"], line["model"]),
                prompt=line["prompt"],
                audio_ref=line["audio"],
            )
            for line in csv.DictReader(handle)
        ]


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


class UploadCache:
    """Each distinct file is uploaded once, however many rows name it (concurrent rows wait)."""

    def __init__(self, upload: Callable[[Path], Coroutine[Any, Any, str]]) -> None:
        self._upload = upload
        self._pending: dict[Path, asyncio.Task[str]] = {}

    async def get(self, path: Path) -> str:
        if path not in self._pending:
            self._pending[path] = asyncio.create_task(self._upload(path))
        return await self._pending[path]


async def download(http: httpx.AsyncClient, url: str, dest: Path) -> None:
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        with dest.open("wb") as handle:
            async for chunk in response.aiter_bytes(1 << 16):
                handle.write(chunk)


async def run_sdk(rows: list[Row], api_url: str, out: Path, concurrency: int) -> dict[str, int]:
    from runware import Runware

    gate = asyncio.Semaphore(concurrency)
    counts = {"done": 0, "failed": 0}
    async with (
        Runware(
            api_key=os.environ[API_KEY_VARIABLE], transport="rest", http_base_url=api_url
        ) as sdk,
        httpx.AsyncClient(timeout=120) as http,
    ):

        async def upload(path: Path) -> str:
            stored = await sdk.media_storage({"operation": "upload", "media": data_uri(path)})
            return str(stored[0]["mediaUUID"])

        uploads = UploadCache(upload)

        async def one(row: Row) -> None:
            async with gate:
                try:
                    image, audio = await uploads.get(row.portrait), await uploads.get(row.audio)
                    results = await sdk.run(
                        {
                            "taskType": "videoInference",
                            "model": row.model,
                            "positivePrompt": row.prompt,
                            "inputs": {"image": image, "audio": audio},
                            "numberResults": 1,
                            "includeCost": True,
                        }
                    )
                    await download(http, results[0]["videoURL"], out / f"{row.id}.mp4")
                    counts["done"] += 1
                except Exception:  # a user's script counts failures and goes on
                    counts["failed"] += 1

        await asyncio.gather(*(one(row) for row in rows))
    return counts


async def run_raw(
    rows: list[Row],
    api_url: str,
    out: Path,
    concurrency: int,
    render_s: dict[str, float] | None = None,
) -> dict[str, int]:
    """The floor: `render_s` maps each manifest audio path (as the CSV names it) to its render
    time at the sandbox, so the first poll lands just before the render ends."""
    gate = asyncio.Semaphore(concurrency)
    fetches = asyncio.Semaphore(RAW_DOWNLOADS)
    counts = {"done": 0, "failed": 0}
    headers = {"Authorization": f"Bearer {os.environ[API_KEY_VARIABLE]}"}
    connections = min(concurrency, RAW_API_CONNECTIONS)
    api_limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    video_limits = httpx.Limits(
        max_connections=RAW_DOWNLOADS, max_keepalive_connections=RAW_DOWNLOADS
    )
    async with (
        httpx.AsyncClient(headers=headers, timeout=120, limits=api_limits) as api,
        httpx.AsyncClient(timeout=120, limits=video_limits) as videos,
    ):

        async def post(task: dict[str, Any]) -> dict[str, Any]:
            response = await api.post(api_url, json=[{"taskUUID": str(uuid.uuid4()), **task}])
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            if answer.get("errors"):
                raise RuntimeError(answer["errors"][0].get("message"))
            return answer["data"][0]  # type: ignore[no-any-return]

        async def upload(path: Path) -> str:
            item = await post(
                {"taskType": "mediaStorage", "operation": "upload", "media": data_uri(path)}
            )
            return str(item["mediaUUID"])

        uploads = UploadCache(upload)

        async def rendered(row: Row) -> str:
            """Submit the row's task and poll it until done; its video URL."""
            image, audio = await uploads.get(row.portrait), await uploads.get(row.audio)
            task_uuid = str(uuid.uuid4())
            render = (render_s or {}).get(row.audio_ref, 0.0)
            sent = asyncio.get_running_loop().time()
            await post(
                {
                    "taskType": "videoInference",
                    "taskUUID": task_uuid,
                    "model": row.model,
                    "positivePrompt": row.prompt,
                    "inputs": {"image": image, "audio": audio},
                    "deliveryMethod": "async",
                    "numberResults": 1,
                    "includeCost": True,
                }
            )
            due = sent + POLL_EARLY * render
            step = max(POLL_STEP * render, POLL_MIN_INTERVAL_S)
            while True:
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                item = await post({"taskType": "getResponse", "taskUUID": task_uuid})
                if item.get("status") == "success":
                    return str(item["videoURL"])
                due += step

        async def one(row: Row) -> None:
            try:
                async with gate:  # a provider slot: held from submission until the render ends
                    url = await rendered(row)
                async with fetches:
                    await download(videos, url, out / f"{row.id}.mp4")
                counts["done"] += 1
            except Exception:
                counts["failed"] += 1

        await asyncio.gather(*(one(row) for row in rows))
    return counts


def run_library(
    manifest: Path, api_url: str, out: Path, concurrency: int, rps: float | None
) -> dict[str, int]:
    """`run_manifest`, at its own default rate limit unless `rps` lifts it."""
    from avatarbatch import run_manifest

    key = os.environ[API_KEY_VARIABLE]
    if rps is None:
        summary = run_manifest(
            manifest, api_key=key, api_url=api_url, out=out, concurrency=concurrency
        )
    else:
        summary = run_manifest(
            manifest, api_key=key, api_url=api_url, out=out, concurrency=concurrency, rps=rps
        )
    return {"done": summary.done, "failed": summary.failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=("library", "sdk", "raw"))
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rps", type=float, help="library only; its default if not given")
    parser.add_argument(
        "--render-times", type=Path, help="raw only: JSON {audio as the CSV names it: seconds}"
    )
    args = parser.parse_args()
    if args.contender == "library":
        counts = run_library(args.manifest, args.api_url, args.out, args.concurrency, args.rps)
    else:
        videos = args.out / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        rows = read_rows(args.manifest)
        if args.contender == "sdk":
            counts = asyncio.run(run_sdk(rows, args.api_url, videos, args.concurrency))
        else:
            times = None
            if args.render_times is not None:
                times = json.loads(args.render_times.read_text(encoding="utf-8"))
            counts = asyncio.run(run_raw(rows, args.api_url, videos, args.concurrency, times))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
