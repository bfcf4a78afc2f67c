"""`make bench`: avatarbatch against the official SDK, a raw httpx loop, the ideal and the floor.

    .venv/bin/python bench/run_bench.py [--scenarios APBCDS] [--repeats 3] [--quick]
        [--c-rows 10000,100000] [--contenders cli,raw] [--results FILE] [--keep]

Every contender runs as a process of its own against a fresh sandbox process, and every one
runs `--repeats` times, interleaved: in round r each contender runs once, the order rotated
by r, so a slow spell of the machine is shared out instead of landing on one contender. Each
figure is reported as the median of the runs and their range. Scenarios (bench/README.md
explains each, with its ideal, its floor and its targets):

- A, latency-bound, uniform renders: 200 jobs of 3 s at concurrency 16.
- P, latency-bound, renders proportional to the audio (2 s per audio second, ~10.5-12.8 s).
- B, overhead-bound: 10,000 jobs, stub renders, no render latency, concurrency 256.
- C, scale: validate, plan, and rerun once everything is done, for 10,000 and 100,000 rows
  (1,000,000 with `--c-rows 10000,100000,1000000`).
- D, download memory: 20 videos of 50 MB, then of 200 MB.
- S, the sandbox itself: its CPU per task over 20,000 tasks (bench/sandbox_bench.py).

Results go to bench/results.json and into the figures block of bench/README.md (a full
default run only); `--quick` shrinks every scenario to a smoke test with one repeat and
writes nowhere unless `--results` says where.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from done_state import mark_all_done
from make_manifest import write_manifest
from measure import Measured, checked, machine_facts, run_measured, spread, spreads
from sandbox_bench import sandbox_bench
from sandbox_process import sandbox_process

from avatarbatch.manifest.media import probe_audio
from avatarbatch.sandbox.config import SandboxConfig

BENCH = Path(__file__).resolve().parent
API_KEY = "bench-key"
README = BENCH / "README.md"
RESULTS = BENCH / "results.json"
FIGURES_START = "<!-- figures: written by bench/run_bench.py -->"
FIGURES_END = "<!-- /figures -->"
#: Polls due within this share of a render's time can share a POST: avatarbatch's
#: PollTiming.window, and the rounding of the finish times that make a "wave" in the floor.
POLL_WINDOW = 0.02
LIFTED_RPS = 50.0


@dataclass(frozen=True)
class Contender:
    label: str
    kind: Literal["cli", "library", "sdk", "raw"]
    rps: float | None = None  #: avatarbatch's --rps; None passes none (its default, 5)

    @property
    def ours(self) -> bool:
        return self.kind in ("cli", "library")


CONTENDERS = {
    c.label: c
    for c in (
        Contender("cli", "cli"),
        Contender("cli-rps50", "cli", LIFTED_RPS),
        Contender("library", "library"),
        Contender("library-rps50", "library", LIFTED_RPS),
        Contender("sdk", "sdk"),
        Contender("raw", "raw"),
    )
}


@dataclass(frozen=True)
class Sizes:
    a_jobs: int = 200
    a_concurrency: int = 16
    a_render_s: float = 3.0  #: A: every render
    p_latency: float = 2.0  #: P: render seconds per audio second
    p_fixed_s: float = 0.0  #: P: render seconds added to each
    a_contenders: tuple[str, ...] = ("cli", "cli-rps50", "library", "sdk", "raw")
    #: P's runs take ~155 s each: the library adds nothing the CLI does not show in A
    p_contenders: tuple[str, ...] = ("cli", "cli-rps50", "sdk", "raw")
    b_jobs: int = 10_000
    b_concurrency: int = 256
    #: B measures client overhead; the CLI would add only its start-up (A measures that).
    #: The default --rps 5 would be B's ceiling, so the library runs lifted there.
    b_contenders: tuple[str, ...] = ("library-rps50", "sdk", "raw")
    c_rows: tuple[int, ...] = (10_000, 100_000)
    d_videos: int = 20
    d_video_mb: tuple[int, ...] = (50, 200)  #: the last is the target's size
    s_tasks: int = 20_000
    s_slice: int = 1_000
    #: S runs once: its twenty slices are its repeats, and a run takes ~90 s
    s_runs: int = 1
    repeats: int = 3


QUICK = Sizes(
    a_jobs=8,
    a_concurrency=4,
    a_render_s=0.5,
    p_latency=0.1,
    b_jobs=60,
    b_concurrency=16,
    c_rows=(200, 2000),
    d_videos=2,
    d_video_mb=(2, 8),
    s_tasks=400,
    s_slice=100,
    repeats=1,
)


def rotations(labels: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(round, label): each label once per round, the order rotated by one each round."""
    for r in range(repeats):
        k = r % len(labels) if labels else 0
        for label in [*labels[k:], *labels[:k]]:
            yield r, label


# --- ideals and floors ---------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """What a provider with `slots` render slots does with jobs taken in manifest order.

    A slot takes the next job the moment it frees up, and each render takes exactly its time:
    no client can finish sooner (the ideal), and this is the shape the floor counts waves in.
    """

    renders: list[float]
    slots: int
    starts: list[float] = field(default_factory=list)
    finishes: list[float] = field(default_factory=list)

    @classmethod
    def fifo(cls, renders: list[float], slots: int) -> Schedule:
        free = [0.0] * min(slots, len(renders))
        starts, finishes = [], []
        for render in renders:
            start = heapq.heappop(free)
            starts.append(start)
            finishes.append(start + render)
            heapq.heappush(free, start + render)
        return cls(renders, slots, starts, finishes)

    @property
    def makespan(self) -> float:
        return max(self.finishes, default=0.0)

    def waves(self, window: float = POLL_WINDOW) -> list[list[int]]:
        """Jobs grouped by finish time: a wave opens at the earliest finish not yet in one and
        takes every job finishing within `window` x that job's render time of it."""
        order = sorted(range(len(self.finishes)), key=lambda i: self.finishes[i])
        waves: list[list[int]] = []
        closes = -math.inf
        for i in order:
            if self.finishes[i] > closes:
                waves.append([])
                closes = self.finishes[i] + window * self.renders[i]
            waves[-1].append(i)
        return waves


def post_floor(schedule: Schedule, uploads: int, window: float = POLL_WINDOW) -> dict[str, Any]:
    """The fewest POSTs a client could send without finishing later than the ideal.

    - uploads: one POST per distinct file, as avatarbatch sends them;
    - submits: one POST for the first wave of jobs, then one per wave of finishes after which
      a job starts (its jobs' freed slots are refilled together);
    - polls: one per wave of finishes (one POST finds every job of the wave).
    """
    waves = schedule.waves(window)
    started = set(schedule.starts)
    # A job started at a finish instant belongs to the wave holding that finish.
    refills = sum(1 for wave in waves if any(schedule.finishes[i] in started for i in wave))
    jobs = len(schedule.renders)
    submits = 1 + refills if jobs > schedule.slots else (1 if jobs else 0)
    polls = len(waves)
    total = uploads + submits + polls
    return {
        "uploads": uploads,
        "submits": submits,
        "polls": polls,
        "posts": total,
        "posts_per_job": round(total / jobs, 4) if jobs else 0.0,
        "window": window,
    }


def manifest_renders(
    manifest: Path, *, fixed: float, per_audio_s: float
) -> tuple[list[float], dict[str, float], int]:
    """Each row's render time by the sandbox's formula (fixed + latency x audio seconds, the
    audio measured as the sandbox measures it), the time per audio reference, and the number
    of distinct files the manifest names."""
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_audio: dict[str, float] = {}
    for ref in {row["audio"] for row in rows}:
        seconds = probe_audio((manifest.parent / ref).read_bytes()).seconds or 0.0
        by_audio[ref] = fixed + per_audio_s * seconds
    distinct = len({row["portrait"] for row in rows} | {row["audio"] for row in rows})
    return [by_audio[row["audio"]] for row in rows], by_audio, distinct


# --- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, sizes: Sizes, only: set[str] | None = None) -> None:
        self.work = work
        self.sizes = sizes
        self.only = only  #: contender labels to keep (--contenders), or all

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True)
        return path

    def labels(self, wanted: tuple[str, ...]) -> list[str]:
        return [label for label in wanted if self.only is None or label in self.only]

    def contender(
        self,
        contender: Contender,
        manifest: Path,
        config: SandboxConfig,
        concurrency: int,
        out: Path,
        render_times: Path | None = None,
    ) -> dict[str, Any]:
        """Run one contender on `manifest` against a fresh sandbox; its costs and the API's view."""
        with sandbox_process(config) as sandbox:
            command = contender_command(contender, manifest, out, concurrency, render_times)
            env = {**os.environ, "RUNWARE_API_KEY": API_KEY, "RUNWARE_API_URL": sandbox.api_url}
            if contender.kind != "cli":
                command += ["--api-url", sandbox.api_url]
            cpu_before = sandbox.stats()["process_cpu_s"]
            measured = checked(run_measured(command, env=env), contender.label)
            stats = sandbox.stats()
        videos = len(list((out / "videos").iterdir()))
        stats["process_cpu_s"] -= cpu_before
        return {"measured": measured, "stats": stats, "videos": videos}

    # --- A and P ---------------------------------------------------------------------------

    def scenario_a(self) -> dict[str, Any]:
        s = self.sizes
        config = SandboxConfig(
            latency=0, fixed_latency=s.a_render_s, render="stub", workers=s.a_concurrency
        )
        return self.latency_bound("A", config, s.a_contenders, "uniform")

    def scenario_p(self) -> dict[str, Any]:
        s = self.sizes
        config = SandboxConfig(
            latency=s.p_latency, fixed_latency=s.p_fixed_s, render="stub", workers=s.a_concurrency
        )
        what = f"{s.p_latency:g} s per audio second"
        if s.p_fixed_s:
            what += f" + {s.p_fixed_s:g} s"
        return self.latency_bound("P", config, s.p_contenders, what)

    def latency_bound(
        self, letter: str, config: SandboxConfig, wanted: tuple[str, ...], what: str
    ) -> dict[str, Any]:
        s = self.sizes
        folder = self.folder(letter)
        manifest = write_manifest(s.a_jobs, folder / "input")
        renders, by_audio, distinct = manifest_renders(
            manifest, fixed=config.fixed_latency, per_audio_s=config.latency
        )
        render_times = folder / "render_times.json"
        render_times.write_text(json.dumps(by_audio), encoding="utf-8")
        schedule = Schedule.fifo(renders, s.a_concurrency)
        ideal = schedule.makespan
        floor = post_floor(schedule, distinct)
        results: dict[str, Any] = {
            "jobs": s.a_jobs,
            "concurrency": s.a_concurrency,
            "renders": what,
            "render_s_range": [round(min(renders), 3), round(max(renders), 3)],
            "ideal_s": round(ideal, 3),
            "floor": floor,
            "repeats": s.repeats,
            "contenders": {},
        }
        runs: dict[str, list[dict[str, Any]]] = {}
        labels = self.labels(wanted)
        for r, label in rotations(labels, s.repeats):
            contender = CONTENDERS[label]
            out = folder / f"{label}-{r}"
            run = self.contender(contender, manifest, config, s.a_concurrency, out, render_times)
            figures = latency_figures(run, s.a_jobs, ideal, floor["posts_per_job"])
            runs.setdefault(label, []).append(figures)
            print(f"  {letter} {label} #{r + 1}: {_brief(figures)}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        results["contenders"] = {label: spreads(runs[label]) for label in labels}
        return results

    # --- B ---------------------------------------------------------------------------------

    def scenario_b(self) -> dict[str, Any]:
        s = self.sizes
        folder = self.folder("B")
        manifest = write_manifest(s.b_jobs, folder / "input")
        config = SandboxConfig(latency=0, fixed_latency=0, render="stub", workers=s.b_concurrency)
        results: dict[str, Any] = {
            "jobs": s.b_jobs,
            "concurrency": s.b_concurrency,
            "repeats": s.repeats,
        }
        runs: dict[str, list[dict[str, Any]]] = {}
        labels = self.labels(s.b_contenders)
        for r, label in rotations(labels, s.repeats):
            out = folder / f"{label}-{r}"
            run = self.contender(CONTENDERS[label], manifest, config, s.b_concurrency, out)
            measured: Measured = run["measured"]
            if run["videos"] != s.b_jobs:
                raise SystemExit(f"B {label}: {run['videos']} videos of {s.b_jobs}")
            figures = {
                "wall_s": measured.wall_s,
                "jobs_per_s": s.b_jobs / measured.wall_s,
                "cpu_ms_per_job": measured.cpu_s / s.b_jobs * 1000,
                "posts_per_job": run["stats"]["requests"]["http_posts"] / s.b_jobs,
                "peak_rss_mb": measured.peak_rss_mb,
                "sandbox_cpu_ms_per_job": run["stats"]["process_cpu_s"] / s.b_jobs * 1000,
            }
            runs.setdefault(label, []).append(figures)
            print(f"  B {label} #{r + 1}: {_brief(figures)}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        results["contenders"] = {label: spreads(runs[label]) for label in labels}
        return results

    # --- C ---------------------------------------------------------------------------------

    def scenario_c(self) -> dict[str, Any]:
        prepared: dict[int, tuple[Path, Path]] = {}
        results: dict[str, Any] = {"repeats": self.sizes.repeats, "rows": {}}
        for rows in self.sizes.c_rows:
            folder = self.folder(f"C{rows}")
            started = time.perf_counter()
            manifest = write_manifest(rows, folder / "input")
            out = folder / "out"
            mark_all_done(manifest, out)
            prepared[rows] = (manifest, out)
            print(f"  C {rows:,}: done state in {time.perf_counter() - started:.0f} s", flush=True)
        runs: dict[int, list[dict[str, Any]]] = {rows: [] for rows in self.sizes.c_rows}
        for r in range(self.sizes.repeats):
            for rows in self.sizes.c_rows:
                manifest, out = prepared[rows]
                validate = self.cli("validate", manifest)
                plan = self.cli("plan", manifest)
                # The rerun talks to a sandbox only to prove it sends nothing.
                with sandbox_process(SandboxConfig(render="stub")) as sandbox:
                    rerun = self.cli(
                        "run", manifest, "--out", out, "--json", api_url=sandbox.api_url
                    )
                    posts = sandbox.stats()["requests"]["http_posts"]
                if posts:
                    raise SystemExit(f"C {rows}: the rerun of finished jobs sent {posts} POSTs")
                figures = {
                    "validate_s": validate.wall_s,
                    "plan_s": plan.wall_s,
                    "rerun_s": rerun.wall_s,
                    "validate_rss_mb": validate.peak_rss_mb,
                    "plan_rss_mb": plan.peak_rss_mb,
                    "rerun_rss_mb": rerun.peak_rss_mb,
                    "peak_rss_mb": max(x.peak_rss_mb for x in (validate, plan, rerun)),
                }
                runs[rows].append(figures)
                print(f"  C {rows:,} #{r + 1}: {_brief(figures)}", flush=True)
        for rows in self.sizes.c_rows:
            results["rows"][str(rows)] = spreads(runs[rows])
        growth: list[dict[str, Any]] = []
        for small, large in zip(self.sizes.c_rows, self.sizes.c_rows[1:], strict=False):
            a, b = results["rows"][str(small)], results["rows"][str(large)]
            growth.append(
                {
                    "from": small,
                    "to": large,
                    "rows": large / small,
                    **{
                        key: round(b[key]["median"] / a[key]["median"], 2)
                        for key in ("validate_s", "plan_s", "rerun_s", "peak_rss_mb")
                    },
                }
            )
        results["growth"] = growth
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
        results: dict[str, Any] = {
            "videos": s.d_videos,
            "video_mb": s.d_video_mb[-1],
            "repeats": s.repeats,
        }
        # The same run with tiny videos is the baseline; peak memory that grew with the
        # video size would show as a rising column.
        sizes = [("stub", None), *((f"{mb} MB", mb * 2**20) for mb in s.d_video_mb)]
        runs: dict[str, list[dict[str, Any]]] = {}
        for r, label in rotations([label for label, _ in sizes], s.repeats):
            config = SandboxConfig(
                latency=0,
                fixed_latency=0.2,
                render="stub",
                workers=4,
                video_bytes=dict(sizes)[label],
            )
            out = folder / f"{label.replace(' ', '')}-{r}"
            run = self.contender(CONTENDERS["cli"], manifest, config, 4, out)
            downloaded = sum(p.stat().st_size for p in (out / "videos").iterdir())
            figures = {
                "peak_rss_mb": run["measured"].peak_rss_mb,
                "wall_s": run["measured"].wall_s,
                "downloaded_mb": downloaded / 2**20,
            }
            runs.setdefault(label, []).append(figures)
            shutil.rmtree(out)  # 4 GB of zeros need not wait for the next run
            print(f"  D {label} #{r + 1}: {_brief(figures)}", flush=True)
        results["sizes"] = [label for label, _ in sizes]
        results["runs"] = {label: spreads(runs[label]) for label, _ in sizes}
        return results

    # --- S ---------------------------------------------------------------------------------

    def scenario_s(self) -> dict[str, Any]:
        s = self.sizes
        runs = []
        for r in range(s.s_runs):
            run = sandbox_bench(s.s_tasks, s.s_slice)
            print(f"  S #{r + 1}: last/first slice {run['last_over_first']:.2f}", flush=True)
            runs.append(run)
        return {
            "tasks": s.s_tasks,
            "slice": s.s_slice,
            "repeats": s.s_runs,
            "cpu_ms_per_task_by_slice": [
                spread([run["cpu_ms_per_task"][i] for run in runs])
                for i in range(len(runs[0]["cpu_ms_per_task"]))
            ],
            "last_over_first": spread([run["last_over_first"] for run in runs]),
            "tasks_per_s": spread([run["tasks_per_s"] for run in runs], 1),
        }


def latency_figures(
    run: dict[str, Any], jobs: int, ideal: float, floor_per_job: float
) -> dict[str, Any]:
    """One run of A or P as figures per job."""
    measured: Measured = run["measured"]
    stats = run["stats"]
    if run["videos"] != jobs:
        raise SystemExit(f"{run['videos']} videos of {jobs}: the run's figures would mean nothing")
    posts = stats["requests"]["http_posts"] / jobs
    posts_with = stats["posts_with"]
    first = stats["first_post_at"]
    if first is None:
        raise SystemExit("the sandbox received no POST")
    return {
        "wall_s": measured.wall_s,
        "wall_over_ideal": measured.wall_s / ideal,
        "posts_per_job": posts,
        "posts_over_floor": posts / floor_per_job,
        # A POST can carry many tasks: these count the POSTs holding each kind.
        "upload_posts_per_job": (posts_with["imageUpload"] + posts_with["mediaStorage"]) / jobs,
        "submit_posts_per_job": posts_with["videoInference"] / jobs,
        "poll_posts_per_job": posts_with["getResponse"] / jobs,
        "tasks_polled_per_job": stats["requests"]["getResponse"] / jobs,
        "peak_in_flight": stats["peak_in_flight"],
        "startup_s": first - measured.started_at,
        "cpu_ms_per_job": measured.cpu_s / jobs * 1000,
        "peak_rss_mb": measured.peak_rss_mb,
    }


def contender_command(
    contender: Contender,
    manifest: Path,
    out: Path,
    concurrency: int,
    render_times: Path | None = None,
) -> list[str]:
    common = ["--out", str(out), "--concurrency", str(concurrency)]
    if contender.rps is not None:
        common += ["--rps", f"{contender.rps:g}"]
    if contender.kind == "cli":
        return [sys.executable, "-m", "avatarbatch", "run", str(manifest), *common, "--json"]
    if contender.kind == "raw" and render_times is not None:
        common += ["--render-times", str(render_times)]
    return [sys.executable, str(BENCH / "contenders.py"), contender.kind, str(manifest), *common]


def _brief(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in figures.items() if isinstance(v, int | float))


# --- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    scenario: str
    what: str
    limit: float
    at_least: bool = False


class Checks:
    """Targets checked so far: the median measured against each limit, the range, yes/no."""

    def __init__(self) -> None:
        self.found: list[dict[str, Any]] = []

    def __call__(
        self, name: str, figure: dict[str, Any], limit: float, *, at_least: bool = False
    ) -> None:
        measured = figure["median"]
        met = measured >= limit if at_least else measured <= limit
        self.found.append(
            {
                "target": name,
                "measured": measured,
                "range": [figure["min"], figure["max"]],
                "limit": round(limit, 4),
                "met": "yes" if met else "no",
            }
        )


#: POSTs per job of the issue's targets, by latency-bound scenario
POSTS_PER_JOB_TARGET = {"A": 0.35, "P": 0.5}
#: the contenders targets are checked on: avatarbatch at its defaults, what a user gets
TARGETED = ("cli", "library")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the median measured against it, the range, and yes/no."""
    check = Checks()
    for letter, posts_limit in POSTS_PER_JOB_TARGET.items():
        if letter in results:
            _latency_targets(check, letter, results[letter], posts_limit)
    if "B" in results:
        for label, c in results["B"]["contenders"].items():
            if CONTENDERS[label].ours:
                check(f"B {label}: jobs/s >= 250", c["jobs_per_s"], 250, at_least=True)
                check(f"B {label}: CPU ms per job <= 2", c["cpu_ms_per_job"], 2)
                check(f"B {label}: peak RSS MB <= 150", c["peak_rss_mb"], 150)
    if "C" in results:
        rows = results["C"]["rows"]
        if "100000" in rows:
            check("C 100,000 rows: rerun s <= 4", rows["100000"]["rerun_s"], 4)
            check("C 100,000 rows: rerun peak RSS MB <= 250", rows["100000"]["rerun_rss_mb"], 250)
        if "1000000" in rows:
            big = rows["1000000"]
            check("C 1,000,000 rows: validate s <= 30", big["validate_s"], 30)
            check("C 1,000,000 rows: rerun s <= 40", big["rerun_s"], 40)
            check("C 1,000,000 rows: peak RSS MB <= 1536", big["peak_rss_mb"], 1536)
    if "D" in results:
        largest = results["D"]["sizes"][-1]
        check(
            f"D {largest} videos: peak RSS MB < 150",
            results["D"]["runs"][largest]["peak_rss_mb"],
            150,
        )
    if "S" in results:
        check(
            "S sandbox CPU per task, last slice / first <= 1.5",
            results["S"]["last_over_first"],
            1.5,
        )
    return check.found


def _latency_targets(
    check: Checks, letter: str, scenario: dict[str, Any], posts_limit: float
) -> None:
    floor = scenario["floor"]["posts_per_job"]
    for label in TARGETED:
        c = scenario["contenders"].get(label)
        if c is None:
            continue
        check(f"{letter} {label}: wall / ideal <= 1.05", c["wall_over_ideal"], 1.05)
        check(
            f"{letter} {label}: POSTs per job <= {posts_limit:g}", c["posts_per_job"], posts_limit
        )
        check(
            f"{letter} {label}: POSTs per job <= 2 x floor ({floor:.3f})",
            c["posts_per_job"],
            2 * floor,
        )
    if letter == "A" and "cli" in scenario["contenders"]:
        check(
            "A cli: process start to first POST <= 0.3 s",
            scenario["contenders"]["cli"]["startup_s"],
            0.3,
        )


# --- tables -----------------------------------------------------------------------------------


def fig(figure: dict[str, Any], fmt: str = ".3f", unit: str = "") -> str:
    """A median, with its range when the runs differ at this precision: `1.04 (1.03-1.06)`."""
    median, low, high = (format(figure[k], fmt) + unit for k in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}-{high})"


def tables(results: dict[str, Any]) -> str:
    """The figures as Markdown tables, for the terminal and for bench/README.md."""
    parts = [f"Measured {results['machine']['date']} on {_machine_line(results['machine'])}."]
    if results.get("partial"):
        parts.insert(0, f"*A partial run*: {results['partial']}.")
    parts.append(
        "Each figure is the median of the runs and, in brackets, their range (min-max); "
        f"{results.get('repeats', 1)} run(s) of each, interleaved."
    )
    for letter, title in (("A", "uniform renders"), ("P", "audio-proportional renders")):
        if letter in results:
            parts.append(_latency_table(letter, title, results[letter]))
    if "B" in results:
        b = results["B"]
        parts.append(
            f"**B, overhead-bound** ({b['jobs']:,} jobs, stub renders, no latency, "
            f"concurrency {b['concurrency']})\n\n"
            + _table(
                (
                    "contender",
                    "jobs / s",
                    "CPU ms / job",
                    "POSTs / job",
                    "peak RSS MB",
                    "sandbox CPU ms / job",
                ),
                [
                    (
                        label,
                        fig(c["jobs_per_s"], ".0f"),
                        fig(c["cpu_ms_per_job"], ".2f"),
                        fig(c["posts_per_job"], ".2f"),
                        fig(c["peak_rss_mb"], ".0f"),
                        fig(c["sandbox_cpu_ms_per_job"], ".2f"),
                    )
                    for label, c in b["contenders"].items()
                ],
            )
        )
    if "C" in results:
        c = results["C"]
        parts.append(
            "**C, scale** (avatarbatch CLI; a few distinct media files)\n\n"
            + _table(
                (
                    "rows",
                    "validate s",
                    "plan s",
                    "rerun (all done) s",
                    "rerun RSS MB",
                    "peak RSS MB",
                ),
                [
                    (
                        f"{int(rows):,}",
                        fig(f["validate_s"], ".2f"),
                        fig(f["plan_s"], ".2f"),
                        fig(f["rerun_s"], ".2f"),
                        fig(f["rerun_rss_mb"], ".0f"),
                        fig(f["peak_rss_mb"], ".0f"),
                    )
                    for rows, f in c["rows"].items()
                ]
                + [
                    (
                        f"growth {g['from']:,} to {g['to']:,} ({g['rows']:g}x rows)",
                        f"{g['validate_s']:.2f}x",
                        f"{g['plan_s']:.2f}x",
                        f"{g['rerun_s']:.2f}x",
                        "",
                        f"{g['peak_rss_mb']:.2f}x",
                    )
                    for g in c["growth"]
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
                        label,
                        fig(d["runs"][label]["downloaded_mb"], ".0f"),
                        fig(d["runs"][label]["peak_rss_mb"], ".0f"),
                        fig(d["runs"][label]["wall_s"], ".1f"),
                    )
                    for label in d["sizes"]
                ],
            )
        )
    if "S" in results:
        s = results["S"]
        slices = s["cpu_ms_per_task_by_slice"]
        picked = sorted(
            {0, 1, len(slices) // 2, len(slices) - 2, len(slices) - 1} & set(range(len(slices)))
        )
        parts.append(
            f"**S, the sandbox itself** ({s['tasks']:,} tasks at zero latency: submit, poll, "
            f"download; {fig(s['tasks_per_s'], '.0f')} tasks/s)\n\n"
            + _table(
                (
                    "tasks",
                    *(f"{i * s['slice']:,}-{(i + 1) * s['slice']:,}" for i in picked),
                    "last / first",
                ),
                [
                    (
                        "sandbox CPU ms / task",
                        *(fig(slices[i], ".3f") for i in picked),
                        fig(s["last_over_first"], ".2f"),
                    )
                ],
            )
        )
    if results.get("targets"):
        parts.append(
            "**Targets** (median of the runs against each limit)\n\n"
            + _table(
                ("target", "median", "range", "limit", "met"),
                [
                    (
                        t["target"],
                        f"{t['measured']:g}",
                        f"{t['range'][0]:g}-{t['range'][1]:g}",
                        f"{t['limit']:g}",
                        "yes" if t["met"] == "yes" else "**no**",
                    )
                    for t in results["targets"]
                ],
            )
        )
    return "\n\n".join(parts) + "\n"


def _latency_table(letter: str, title: str, a: dict[str, Any]) -> str:
    floor = a["floor"]
    low, high = a["render_s_range"]
    renders = f"{low:g} s" if low == high else f"{low:g} to {high:g} s"
    head = (
        f"**{letter}, latency-bound, {title}** ({a['jobs']} jobs, renders of {renders} "
        f"({a['renders']}), concurrency {a['concurrency']}; ideal {a['ideal_s']:g} s; floor "
        f"{floor['posts_per_job']:.3f} POSTs / job = ({floor['uploads']} uploads + "
        f"{floor['submits']} submits + {floor['polls']} polls) / {a['jobs']})"
    )
    return (
        head
        + "\n\n"
        + _table(
            (
                "contender",
                "wall / ideal",
                "POSTs / job",
                "vs floor",
                "upload POSTs",
                "submit POSTs",
                "poll POSTs",
                "tasks polled",
                "start-up s",
                "CPU ms / job",
                "peak RSS MB",
            ),
            [
                (
                    label,
                    fig(c["wall_over_ideal"]),
                    fig(c["posts_per_job"], ".2f"),
                    fig(c["posts_over_floor"], ".1f", "x"),
                    fig(c["upload_posts_per_job"], ".3f"),
                    fig(c["submit_posts_per_job"], ".3f"),
                    fig(c["poll_posts_per_job"], ".2f"),
                    fig(c["tasks_polled_per_job"], ".2f"),
                    fig(c["startup_s"], ".2f"),
                    fig(c["cpu_ms_per_job"], ".1f"),
                    fig(c["peak_rss_mb"], ".0f"),
                )
                for label, c in a["contenders"].items()
            ],
        )
    )


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gb']} GB, "
        f"{machine['os']}, Python {machine['python']}, "
        f"runware-sdk {machine['packages']['runware-sdk']}"
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
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
    "P": Bench.scenario_p,
    "B": Bench.scenario_b,
    "C": Bench.scenario_c,
    "D": Bench.scenario_d,
    "S": Bench.scenario_s,
}
DEFAULT_SCENARIOS = "APBCDS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help="letters of APBCDS")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    parser.add_argument("--repeats", type=int, help="runs of each contender (default 3)")
    parser.add_argument(
        "--c-rows", help="C's manifest sizes, e.g. 10000,100000,1000000 (default 10000,100000)"
    )
    parser.add_argument("--results", type=Path, help="where to write results JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--contenders", help="a subset of " + ",".join(CONTENDERS))
    parser.add_argument(
        "--readme-only", action="store_true", help="rewrite README figures from results.json"
    )
    args = parser.parse_args()
    if args.readme_only:
        update_readme(tables(json.loads(RESULTS.read_text(encoding="utf-8"))))
        return
    sizes = QUICK if args.quick else Sizes()
    if args.repeats is not None:
        sizes = replace(sizes, repeats=args.repeats)
    if args.c_rows:
        sizes = replace(sizes, c_rows=tuple(int(n) for n in args.c_rows.split(",")))
    only = set(args.contenders.split(",")) if args.contenders else None
    if only is not None and not only <= set(CONTENDERS):
        parser.error(f"unknown contenders {sorted(only - set(CONTENDERS))}")
    scenarios = args.scenarios.upper()
    if not set(scenarios) <= set(SCENARIOS):
        parser.error(f"scenarios are letters of {DEFAULT_SCENARIOS}")
    work = Path(tempfile.mkdtemp(prefix="avatarbatch-bench-"))
    results: dict[str, Any] = {
        "machine": machine_facts(),
        "quick": args.quick,
        "repeats": sizes.repeats,
        "scenario_wall_s": {},
    }
    started = time.perf_counter()
    try:
        bench = Bench(work, sizes, only)
        for letter in scenarios:
            print(f"scenario {letter} ...", flush=True)
            began = time.perf_counter()
            results[letter] = SCENARIOS[letter](bench)
            results["scenario_wall_s"][letter] = round(time.perf_counter() - began, 1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["bench_wall_s"] = round(time.perf_counter() - started, 1)
    results["targets"] = targets(results)
    destination = args.results or (None if args.quick else RESULTS)
    if destination is not None:
        destination.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = tables(results)
    print("\n" + text)
    if not args.quick and args.results is None and scenarios == DEFAULT_SCENARIOS:
        update_readme(text)
    print(f"bench: {results['bench_wall_s']:.0f} s {results['scenario_wall_s']}", flush=True)


if __name__ == "__main__":
    main()
