"""`make bench`: avatarbatch against the official SDK, a raw httpx loop and the ideal.

    .venv/bin/python bench/run_bench.py [--scenarios ABCD] [--quick] [--results FILE]

Every contender runs as a process of its own against a fresh sandbox process, one after the
other in this one invocation, so the ratios compare like with like on whatever machine this
is. Scenarios (bench/README.md explains each):

- A, latency-bound: 200 jobs, 3 s renders, concurrency 16.
- B, overhead-bound: 5,000 jobs, stub renders, no render latency, concurrency 64.
- C, scale: validate, plan, and rerun once everything is done, for 10,000 and 100,000 rows.
- D, download memory: 20 videos of 200 MB each.

Results go to bench/results.json and into the figures block of bench/README.md; `--quick`
shrinks every scenario to a smoke test and writes nowhere unless `--results` says where.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from done_state import mark_all_done
from make_manifest import write_manifest
from measure import Measured, checked, machine_facts, run_measured
from sandbox_process import sandbox_process

from avatarbatch.sandbox.config import SandboxConfig

BENCH = Path(__file__).resolve().parent
API_KEY = "bench-key"
POLL_INTERVAL_S = 1.0  #: the raw loop's, and the "one poll interval" of target A
POST_KINDS = ("imageUpload", "mediaStorage", "videoInference", "getResponse")
CONTENDERS = ("cli", "library", "sdk", "raw")
#: B measures client overhead: the CLI would add only its start-up (about 0.5 s) to the
#: library's figure, and a 100 s run of it would push `make bench` towards its 15 minutes.
B_CONTENDERS = ("library", "sdk", "raw")
README = BENCH / "README.md"
RESULTS = BENCH / "results.json"
FIGURES_START = "<!-- figures: written by bench/run_bench.py -->"
FIGURES_END = "<!-- /figures -->"


@dataclass(frozen=True)
class Sizes:
    a_jobs: int = 200
    a_render_s: float = 3.0
    a_concurrency: int = 16
    b_jobs: int = 5000
    b_concurrency: int = 64
    c_rows: tuple[int, ...] = (10_000, 100_000)
    d_videos: int = 20
    d_video_mb: tuple[int, ...] = (50, 200)  #: the last is the target's size
    rps: float = 50.0  #: avatarbatch's --rps: the default 5 alone would take 40 s for 200 jobs


QUICK = Sizes(
    a_jobs=8,
    a_render_s=0.5,
    a_concurrency=4,
    b_jobs=40,
    b_concurrency=8,
    c_rows=(200, 2000),
    d_videos=2,
    d_video_mb=(2, 8),
)


class Bench:
    def __init__(self, work: Path, sizes: Sizes, contenders: tuple[str, ...] = CONTENDERS) -> None:
        self.work = work
        self.sizes = sizes
        self.contenders = contenders

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True)
        return path

    def contender(
        self,
        name: str,
        manifest: Path,
        config: SandboxConfig,
        concurrency: int,
        out: Path,
        rps: float | None = None,
    ) -> dict[str, Any]:
        """Run one contender on `manifest` against a fresh sandbox; its costs and the API's view."""
        with sandbox_process(config) as sandbox:
            command = contender_command(name, manifest, out, concurrency, rps or self.sizes.rps)
            env = {**os.environ, "RUNWARE_API_KEY": API_KEY, "RUNWARE_API_URL": sandbox.api_url}
            if name != "cli":
                command += ["--api-url", sandbox.api_url]
            measured = checked(run_measured(command, env=env), name)
            stats = sandbox.stats()
        videos = len(list((out / "videos").iterdir()))
        return {"measured": measured, "stats": stats, "videos": videos}

    # --- A ---------------------------------------------------------------------------------

    def scenario_a(self) -> dict[str, Any]:
        s = self.sizes
        folder = self.folder("A")
        manifest = write_manifest(s.a_jobs, folder / "input")
        config = SandboxConfig(
            latency=0, fixed_latency=s.a_render_s, render="stub", workers=s.a_concurrency
        )
        ideal = math.ceil(s.a_jobs / s.a_concurrency) * s.a_render_s
        results: dict[str, Any] = {"jobs": s.a_jobs, "concurrency": s.a_concurrency}
        results["ideal_s"] = ideal
        for name in self.contenders:
            run = self.contender(name, manifest, config, s.a_concurrency, folder / name)
            requests = run["stats"]["requests"]
            results[name] = {
                "wall_s": round(run["measured"].wall_s, 2),
                "wall_over_ideal": round(run["measured"].wall_s / ideal, 3),
                "requests_per_job": round(requests["http_posts"] / s.a_jobs, 3),
                "requests_by_type": {k: round(requests[k] / s.a_jobs, 3) for k in POST_KINDS},
                # A POST can carry many tasks: these count the POSTs holding each kind.
                "posts_by_type": {
                    k: round(run["stats"]["posts_with"][k] / s.a_jobs, 3) for k in POST_KINDS
                },
                "peak_in_flight": run["stats"]["peak_in_flight"],
                "videos": run["videos"],
            }
            print(f"  A {name}: {results[name]}", flush=True)
        return results

    # --- B ---------------------------------------------------------------------------------

    def scenario_b(self) -> dict[str, Any]:
        s = self.sizes
        folder = self.folder("B")
        manifest = write_manifest(s.b_jobs, folder / "input")
        config = SandboxConfig(latency=0, fixed_latency=0, render="stub", workers=s.b_concurrency)
        results: dict[str, Any] = {"jobs": s.b_jobs, "concurrency": s.b_concurrency, "rps": s.rps}
        for name in (c for c in self.contenders if c in B_CONTENDERS):
            run = self.contender(name, manifest, config, s.b_concurrency, folder / name)
            measured: Measured = run["measured"]
            results[name] = {
                "wall_s": round(measured.wall_s, 2),
                "jobs_per_s": round(s.b_jobs / measured.wall_s, 1),
                "cpu_s_per_job": round(measured.cpu_s / s.b_jobs, 5),
                "requests_per_job": round(run["stats"]["requests"]["http_posts"] / s.b_jobs, 3),
                "peak_rss_mb": round(measured.peak_rss_mb, 1),
                "videos": run["videos"],
            }
            print(f"  B {name}: {results[name]}", flush=True)
        return results

    # --- C ---------------------------------------------------------------------------------

    def scenario_c(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for rows in self.sizes.c_rows:
            folder = self.folder(f"C{rows}")
            manifest = write_manifest(rows, folder / "input")
            out = folder / "out"
            validate = self.cli("validate", manifest)
            plan = self.cli("plan", manifest)
            mark_all_done(manifest, out)
            # The rerun talks to a sandbox only to prove it sends nothing.
            with sandbox_process(SandboxConfig(render="stub")) as sandbox:
                rerun = self.cli("run", manifest, "--out", out, "--json", api_url=sandbox.api_url)
                posts = sandbox.stats()["requests"]["http_posts"]
            runs = (validate, plan, rerun)
            results[str(rows)] = {
                "validate_s": round(validate.wall_s, 2),
                "plan_s": round(plan.wall_s, 2),
                "rerun_s": round(rerun.wall_s, 2),
                "rerun_requests": posts,
                "peak_rss_mb": round(max(r.peak_rss_mb for r in runs), 1),
                "peak_rss_mb_by_step": {
                    step: round(r.peak_rss_mb, 1)
                    for step, r in zip(("validate", "plan", "rerun"), runs, strict=True)
                },
            }
            print(f"  C {rows}: {results[str(rows)]}", flush=True)
        small, large = (
            results[str(rows)] for rows in (self.sizes.c_rows[0], self.sizes.c_rows[-1])
        )
        factor = self.sizes.c_rows[-1] / self.sizes.c_rows[0]
        results["growth"] = {
            "rows": factor,
            **{
                key: round(large[key] / small[key], 2)
                for key in ("validate_s", "plan_s", "rerun_s", "peak_rss_mb")
            },
        }
        return results

    def cli(self, *args: Any, api_url: str | None = None) -> Measured:
        env = {**os.environ, "RUNWARE_API_KEY": API_KEY}
        if api_url is not None:
            env["RUNWARE_API_URL"] = api_url
        command = [sys.executable, "-m", "avatarbatch", *map(str, args)]
        return checked(run_measured(command, env=env), " ".join(map(str, args[:1])))

    # --- D ---------------------------------------------------------------------------------

    def scenario_d(self) -> dict[str, Any]:
        s = self.sizes
        folder = self.folder("D")
        manifest = write_manifest(s.d_videos, folder / "input")
        results: dict[str, Any] = {"videos": s.d_videos, "video_mb": s.d_video_mb[-1]}
        # The same run with tiny videos is the baseline; peak memory that grew with the
        # video size would show as a rising column.
        runs = [("stub", None), *((f"{mb} MB", mb * 2**20) for mb in s.d_video_mb)]
        for label, size in runs:
            config = SandboxConfig(
                latency=0, fixed_latency=0.2, render="stub", workers=4, video_bytes=size
            )
            out = folder / label.replace(" ", "")
            run = self.contender("cli", manifest, config, 4, out)
            downloaded = sum(p.stat().st_size for p in (out / "videos").iterdir())
            results[label] = {
                "peak_rss_mb": round(run["measured"].peak_rss_mb, 1),
                "wall_s": round(run["measured"].wall_s, 2),
                "downloaded_mb": round(downloaded / 2**20, 1),
            }
            shutil.rmtree(out / "videos")  # 4 GB of zeros need not wait for the next scenario
            print(f"  D {label}: {results[label]}", flush=True)
        results["sizes"] = [label for label, _ in runs]
        results["peak_rss_mb"] = results[runs[-1][0]]["peak_rss_mb"]
        return results


def contender_command(
    name: str, manifest: Path, out: Path, concurrency: int, rps: float
) -> list[str]:
    common = ["--out", str(out), "--concurrency", str(concurrency), "--rps", str(rps)]
    if name == "cli":
        return [sys.executable, "-m", "avatarbatch", "run", str(manifest), *common, "--json"]
    return [sys.executable, str(BENCH / "contenders.py"), name, str(manifest), *common]


# --- tables -----------------------------------------------------------------------------------


def tables(results: dict[str, Any]) -> str:
    """The figures as Markdown tables, for the terminal and for bench/README.md."""
    parts = [f"Measured {results['machine']['date']} on {_machine_line(results['machine'])}."]
    if "A" in results:
        a = results["A"]
        parts.append(
            f"**A, latency-bound** ({a['jobs']} jobs, renders of {a.get('render_s', '')} s, "
            f"concurrency {a['concurrency']}, ideal {a['ideal_s']:g} s)\n\n"
            + _table(
                (
                    "contender",
                    "wall / ideal",
                    "POSTs / job",
                    "upload POSTs",
                    "submit POSTs",
                    "poll POSTs",
                    "tasks polled",
                    "peak in flight",
                    "POSTs vs avatarbatch",
                ),
                [
                    (
                        name,
                        f"{a[name]['wall_over_ideal']:.3f}",
                        f"{a[name]['requests_per_job']:.2f}",
                        f"{_uploads_per_job(a[name]):.3f}",
                        f"{a[name]['posts_by_type']['videoInference']:.2f}",
                        f"{a[name]['posts_by_type']['getResponse']:.2f}",
                        f"{a[name]['requests_by_type']['getResponse']:.2f}",
                        str(a[name]["peak_in_flight"]),
                        f"{a[name]['requests_per_job'] / _ours(a)['requests_per_job']:.1f}x",
                    )
                    for name in CONTENDERS
                    if name in a
                ],
            )
        )
    if "B" in results:
        b = results["B"]
        parts.append(
            f"**B, overhead-bound** ({b['jobs']} jobs, stub renders, no latency, "
            f"concurrency {b['concurrency']})\n\n"
            + _table(
                (
                    "contender",
                    "jobs / s",
                    "vs raw loop",
                    "CPU ms / job",
                    "POSTs / job",
                    "peak RSS MB",
                ),
                [
                    (
                        name,
                        f"{b[name]['jobs_per_s']:.1f}",
                        f"{b[name]['jobs_per_s'] / b.get('raw', b[name])['jobs_per_s']:.2f}x",
                        f"{b[name]['cpu_s_per_job'] * 1000:.2f}",
                        f"{b[name]['requests_per_job']:.2f}",
                        f"{b[name]['peak_rss_mb']:.0f}",
                    )
                    for name in CONTENDERS
                    if name in b
                ],
            )
        )
    if "C" in results:
        c = results["C"]
        sizes = [key for key in c if key.isdigit()]
        parts.append(
            "**C, scale** (avatarbatch CLI; a few distinct media files)\n\n"
            + _table(
                ("rows", "validate s", "plan s", "rerun (all done) s", "peak RSS MB"),
                [
                    (
                        f"{int(rows):,}",
                        f"{c[rows]['validate_s']:.2f}",
                        f"{c[rows]['plan_s']:.2f}",
                        f"{c[rows]['rerun_s']:.2f}",
                        f"{c[rows]['peak_rss_mb']:.0f}",
                    )
                    for rows in sizes
                ]
                + [
                    (
                        f"growth ({c['growth']['rows']:g}x rows)",
                        f"{c['growth']['validate_s']:.2f}x",
                        f"{c['growth']['plan_s']:.2f}x",
                        f"{c['growth']['rerun_s']:.2f}x",
                        f"{c['growth']['peak_rss_mb']:.2f}x",
                    )
                ],
            )
        )
    if "D" in results:
        d = results["D"]
        parts.append(
            f"**D, download memory** ({d['videos']} videos per run, avatarbatch CLI)\n\n"
            + _table(
                ("each video", "downloaded MB", "peak RSS MB", "wall s"),
                [
                    (
                        f"{label}",
                        f"{d[label]['downloaded_mb']:.0f}",
                        f"{d[label]['peak_rss_mb']:.0f}",
                        f"{d[label]['wall_s']:.1f}",
                    )
                    for label in d["sizes"]
                ],
            )
        )
    if results.get("targets"):
        parts.append(
            "**Targets**\n\n"
            + _table(
                ("target", "measured", "limit", "met"),
                [
                    (
                        t["target"],
                        f"{t['measured']:g}",
                        f"{t['limit']:g}",
                        "yes" if t["met"] else "**no**",
                    )
                    for t in results["targets"]
                ],
            )
        )
    return "\n\n".join(parts) + "\n"


def targets(results: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    """Each target of the issue with the figure measured against it."""
    found: list[dict[str, Any]] = []

    def check(name: str, measured: float, limit: float, *, at_least: bool = False) -> None:
        met = measured >= limit if at_least else measured <= limit
        found.append(
            {"target": name, "measured": round(measured, 3), "limit": round(limit, 3), "met": met}
        )

    if "A" in results:
        a = results["A"]
        ideal = a["ideal_s"]
        limit = (1.05 * ideal + POLL_INTERVAL_S) / ideal
        for name in ("cli", "library"):
            if name in a:
                check(
                    f"A {name}: wall / ideal <= 1.05 + one poll interval",
                    a[name]["wall_over_ideal"],
                    limit,
                )
                check(f"A {name}: POSTs per job <= 1.3", a[name]["requests_per_job"], 1.3)
                if "sdk" in a:
                    ratio = a["sdk"]["requests_per_job"] / a[name]["requests_per_job"]
                    check(f"A {name}: SDK POSTs / ours >= 3", ratio, 3.0, at_least=True)
    if "B" in results and "raw" in results["B"]:
        b = results["B"]
        for name in ("cli", "library"):
            if name in b:
                ratio = b[name]["jobs_per_s"] / b["raw"]["jobs_per_s"]
                check(f"B {name}: jobs/s vs raw loop >= 0.5", ratio, 0.5, at_least=True)
    if "C" in results:
        largest = results["C"][str(sizes.c_rows[-1])]
        check(f"C {sizes.c_rows[-1]:,} rows: rerun s <= 10", largest["rerun_s"], 10.0)
        check(f"C {sizes.c_rows[-1]:,} rows: peak RSS MB <= 300", largest["peak_rss_mb"], 300.0)
        growth = results["C"]["growth"]
        for key in ("validate_s", "plan_s", "rerun_s", "peak_rss_mb"):
            check(f"C growth of {key} <= rows growth (linear)", growth[key], growth["rows"])
    if "D" in results:
        check("D peak RSS MB < 150", results["D"]["peak_rss_mb"], 150.0)
    return found


def _ours(scenario: dict[str, Any]) -> dict[str, Any]:
    return scenario["library"] if "library" in scenario else scenario["cli"]  # type: ignore[no-any-return]


def _uploads_per_job(contender: dict[str, Any]) -> float:
    by_type = contender["posts_by_type"]
    return float(by_type["imageUpload"] + by_type["mediaStorage"])


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gb']} GB, "
        f"{machine['os']}, Python {machine['python']}, "
        f"runware-sdk {machine['packages']['runware-sdk']}"
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = README.read_text(encoding="utf-8")
    start, end = readme.index(FIGURES_START), readme.index(FIGURES_END)
    README.write_text(
        readme[: start + len(FIGURES_START)] + "\n\n" + text + "\n" + readme[end:],
        encoding="utf-8",
    )


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "A": Bench.scenario_a,
    "B": Bench.scenario_b,
    "C": Bench.scenario_c,
    "D": Bench.scenario_d,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="ABCD")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--results", type=Path, help="where to write results JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="a subset, for profiling runs"
    )
    parser.add_argument(
        "--readme-only", action="store_true", help="rewrite README figures from results.json"
    )
    args = parser.parse_args()
    if args.readme_only:
        update_readme(tables(json.loads(RESULTS.read_text(encoding="utf-8"))))
        return
    sizes = QUICK if args.quick else Sizes()
    work = Path(tempfile.mkdtemp(prefix="avatarbatch-bench-"))
    results: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick}
    started = time.perf_counter()
    try:
        bench = Bench(work, sizes, tuple(args.contenders.split(",")))
        for letter in args.scenarios.upper():
            print(f"scenario {letter} ...", flush=True)
            results[letter] = SCENARIOS[letter](bench)
        if "A" in results:
            results["A"]["render_s"] = sizes.a_render_s
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["bench_wall_s"] = round(time.perf_counter() - started, 1)
    results["targets"] = targets(results, sizes)
    destination = args.results or (None if args.quick else RESULTS)
    if destination is not None:
        destination.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = tables(results)
    print("\n" + text)
    if not args.quick and args.scenarios.upper() == "ABCD":
        update_readme(text)
    print(f"bench: {results['bench_wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
