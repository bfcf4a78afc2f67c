"""Engine benchmark: a batch against the sandbox, compared with the ideal, in one run.

    .venv/bin/python bench/engine_bench.py --jobs 200 --render-seconds 3 --concurrency 16

Ideal wall time = ceil(jobs / concurrency) x render time: the provider's slots never idle.
Reported: wall / ideal, POSTs per job (uploads + submits + polls; downloads are GETs and
not counted), peak tasks in flight, and the time of a rerun once everything is done (a
fresh `avatarbatch run` process, which must make no request at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_manifest import write_manifest

from avatarbatch.batch import BatchOptions, run_batch
from avatarbatch.runware import ClientSettings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import running_sandbox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--render-seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rps", type=float, default=50.0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="avatarbatch-bench-"))
    manifest = write_manifest(args.jobs, folder)
    # Render time independent of the audio length: a fixed provider latency, stub videos.
    config = SandboxConfig(
        latency=0, fixed_latency=args.render_seconds, render="stub", workers=args.concurrency
    )
    with running_sandbox(config) as sandbox:
        client = ClientSettings(api_url=sandbox.api_url, api_key=SecretStr("bench"))
        options = BatchOptions(
            client=client, out=folder / "out", concurrency=args.concurrency, rps=args.rps
        )
        started = time.perf_counter()
        summary = asyncio.run(run_batch(manifest, options))
        wall = time.perf_counter() - started
        stats = sandbox.stats()
        env = {**os.environ, "RUNWARE_API_KEY": "bench", "RUNWARE_API_URL": sandbox.api_url}
        started = time.perf_counter()
        rerun = subprocess.run(
            [
                sys.executable,
                "-m",
                "avatarbatch",
                "run",
                str(manifest),
                "--out",
                str(folder / "out"),
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        rerun_wall = time.perf_counter() - started
        stats_after = sandbox.stats()
    ideal = math.ceil(args.jobs / args.concurrency) * args.render_seconds
    requests = stats["requests"]
    result = {
        "jobs": args.jobs,
        "done": summary.done,
        "wall_s": round(wall, 2),
        "ideal_s": ideal,
        "wall_over_ideal": round(wall / ideal, 3),
        "posts_per_job": round(requests["http_posts"] / args.jobs, 3),
        "posts": {
            k: requests[k]
            for k in ("http_posts", "imageUpload", "mediaStorage", "videoInference", "getResponse")
        },
        "peak_in_flight": stats["peak_in_flight"],
        "rerun_s": round(rerun_wall, 2),
        "rerun_exit": rerun.returncode,
        "rerun_requests": stats_after["requests"]["http_posts"] - requests["http_posts"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
