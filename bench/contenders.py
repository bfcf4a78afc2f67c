"""The contenders of `make bench`, each run as its own process against the same sandbox.

    python bench/contenders.py {library,sdk,raw} MANIFEST.csv --api-url URL --out DIR \\
        --concurrency 16 [--rps 50]

- `library`: `avatarbatch.run_manifest`, the library entry point (the CLI is measured by
  running `avatarbatch run` itself).
- `sdk`: what a user writes with the official `runware-sdk` (REST transport): each distinct
  file uploaded once with `media_storage`, an `asyncio.Semaphore(concurrency)` around
  `run()` and the httpx download of each job.
- `raw`: the floor of client overhead, a hand-written httpx loop: upload each distinct file
  once, submit, poll that task every second, download.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MODELS = {"standard": "klingai:avatar@2.0-standard", "pro": "klingai:avatar@2.0-pro"}
POLL_INTERVAL_S = 1.0
API_KEY_VARIABLE = "RUNWARE_API_KEY"


@dataclass(frozen=True)
class Row:
    id: str
    portrait: Path
    audio: Path
    model: str
    prompt: str


def read_rows(manifest: Path) -> list[Row]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return [
            Row(
                id=line["id"],
                portrait=manifest.parent / line["portrait"],
                audio=manifest.parent / line["audio"],
                model=MODELS.get(line["model"], line["model"]),
                prompt=line["prompt"],
            )
            for line in csv.DictReader(handle)
        ]


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


class UploadCache:
    """Each distinct file is uploaded once, however many rows name it (concurrent rows wait)."""

    def __init__(self, upload: Callable[[Path], Awaitable[str]]) -> None:
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


async def run_raw(rows: list[Row], api_url: str, out: Path, concurrency: int) -> dict[str, int]:
    gate = asyncio.Semaphore(concurrency)
    counts = {"done": 0, "failed": 0}
    headers = {"Authorization": f"Bearer {os.environ[API_KEY_VARIABLE]}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=120, limits=limits) as http:

        async def post(task: dict[str, Any]) -> dict[str, Any]:
            response = await http.post(api_url, json=[{"taskUUID": str(uuid.uuid4()), **task}])
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

        async def one(row: Row) -> None:
            async with gate:
                try:
                    image, audio = await uploads.get(row.portrait), await uploads.get(row.audio)
                    task_uuid = str(uuid.uuid4())
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
                    while True:
                        await asyncio.sleep(POLL_INTERVAL_S)
                        item = await post({"taskType": "getResponse", "taskUUID": task_uuid})
                        if item.get("status") == "success":
                            break
                    await download(http, item["videoURL"], out / f"{row.id}.mp4")
                    counts["done"] += 1
                except Exception:
                    counts["failed"] += 1

        await asyncio.gather(*(one(row) for row in rows))
    return counts


def run_library(
    manifest: Path, api_url: str, out: Path, concurrency: int, rps: float
) -> dict[str, int]:
    from avatarbatch import run_manifest

    summary = run_manifest(
        manifest,
        api_key=os.environ[API_KEY_VARIABLE],
        api_url=api_url,
        out=out,
        concurrency=concurrency,
        rps=rps,
    )
    return {"done": summary.done, "failed": summary.failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=("library", "sdk", "raw"))
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rps", type=float, default=50.0)
    args = parser.parse_args()
    if args.contender == "library":
        counts = run_library(args.manifest, args.api_url, args.out, args.concurrency, args.rps)
    else:
        videos = args.out / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        rows = read_rows(args.manifest)
        runner = run_sdk if args.contender == "sdk" else run_raw
        counts = asyncio.run(runner(rows, args.api_url, videos, args.concurrency))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
