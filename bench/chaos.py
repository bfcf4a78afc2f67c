"""Chaos run: faults on every layer, SIGKILLs at random moments, one SIGINT, then an audit.

    .venv/bin/python bench/chaos.py --jobs 200 --kills 5 --seed 7

A sandbox on loopback injects every fault kind (5xx, 429, dropped connections, slow answers,
failed generations, truncated downloads). `avatarbatch run` runs as a real subprocess and is
killed with SIGKILL at K moments chosen from the seed (each once a few more jobs have
progressed, so the kills land in every stage), interrupted once with SIGINT; then the manifest
is edited (every 7th row's prompt changes, so it is paid again; the last row is removed) and
it is rerun until it exits 0 or 1, and with --retry-failed while jobs failed. The audit then
checks the promises: every job done (or failed only after its retries, with a reason), at
most one billed success per job and spec, every task the sandbox billed present in the state
file's ledger, every file present with the sha256 the sandbox served and probing as a video of
its audio's length, and the cost report's total equal to the sandbox ledger's, to the cent.
One line sums it up; the exit status is 1 on any violation.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_manifest import write_manifest

from avatarbatch.engine.verify import VideoCheckError, verify_video
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.store import JobRecord, JobStatus, StateStore

#: Per request (downloads: per file). Submissions and polls share POSTs, so a 200-job run
#: makes about 60 of them, and these rates inject 35 to 55 faults into it (seeds 3 and 7).
DEFAULT_FAULTS = (
    "http500=0.15,http429=0.15,reset=0.1,slow=0.05,task_error=0.03,truncate=0.03,"
    "html_video=0.02,short_body=0.02,cut=0.02"
)
EDIT_EVERY = 7  #: every 7th row gets a new prompt before the final runs: it is paid again
KEY = "chaos-key"
PROGRESSED = ("processing", "downloading", "done", "failed")


@dataclass
class ChaosResult:
    jobs: int
    interruptions: int
    faults: int
    lost: list[str] = field(default_factory=list)
    double_billed: list[str] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    report_total: float = 0.0
    ledger_total: float = 0.0
    unaccounted: list[str] = field(default_factory=list)  #: billed, not in the state's ledger
    runs: int = 0

    @property
    def ok(self) -> bool:
        totals_match = abs(self.report_total - self.ledger_total) < 0.005
        problems = self.lost or self.double_billed or self.bad_files or self.unaccounted
        return not problems and totals_match

    def line(self) -> str:
        match = "=" if abs(self.report_total - self.ledger_total) < 0.005 else "!="
        return (
            f"chaos: {self.jobs} jobs, {self.interruptions} interruptions, {self.faults} faults "
            f"injected, {len(self.lost)} lost, {len(self.double_billed)} double-billed, "
            f"{len(self.bad_files)} bad files, {len(self.unaccounted)} unaccounted, "
            f"{len(self.failed)} failed after retries, "
            f"report {match} ledger (${self.ledger_total:,.2f}), {self.runs} runs"
        )


def chaos(
    jobs: int = 200,
    kills: int = 5,
    seed: int = 7,
    faults: str = DEFAULT_FAULTS,
    concurrency: int = 16,
    workdir: Path | None = None,
    profile: str = "default",
) -> ChaosResult:
    rng = random.Random(seed)
    folder = workdir or Path(tempfile.mkdtemp(prefix="avatarbatch-chaos-"))
    manifest = write_manifest(jobs, folder)
    out = folder / "out"
    config = SandboxConfig(
        profile=profile,
        latency=0.05,
        fixed_latency=0.4,
        render="stub",
        workers=concurrency,
        faults=FaultSpec.parse(faults),
        seed=seed,
        slow_seconds=0.5,
        retry_after=1,
    )
    with running_sandbox(config) as sandbox:
        env = {**os.environ, "RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": sandbox.api_url}
        command = [
            sys.executable,
            "-m",
            "avatarbatch",
            "run",
            str(manifest),
            "--out",
            str(out),
            "--concurrency",
            str(concurrency),
            "--rps",
            "50",
            # Seconds, not the default 30: the strict profile's lag is 2 s, and a task that
            # never landed is waited for this long before it is booked as never billed.
            "--not-found-grace",
            "5",
            "--json",
        ]
        interruptions = 0
        for number in range(kills + 1):
            final_signal = signal.SIGINT if number == kills else signal.SIGKILL
            if _interrupt(command, env, out / "state.sqlite", rng, jobs, final_signal):
                interruptions += 1
        runs = interruptions
        _edit(manifest)
        code, retried = None, 0
        while code not in (0,) and runs < interruptions + 10:
            extra = ["--retry-failed"] if code == 1 and retried < 3 else []
            retried += bool(extra)
            code = subprocess.run(
                command + extra, env=env, capture_output=True, check=False
            ).returncode
            runs += 1
            if code == 1 and retried >= 3:
                break
        return _audit(sandbox, out, jobs, interruptions, runs)


def _interrupt(
    command: list[str],
    env: dict[str, str],
    state: Path,
    rng: random.Random,
    jobs: int,
    how: signal.Signals,
) -> bool:
    """Start a run and stop it once a few more jobs progressed; False if it finished first."""
    before = _progressed(state)
    target = before + rng.randint(1, max(1, jobs // 8))
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if _progressed(state) >= target:
            process.send_signal(how)
            process.wait(timeout=60)
            return True
        time.sleep(0.02)  # polling the state file for progress
    if process.poll() is None:
        process.kill()
        process.wait()
        return True
    return False


def _edit(manifest: Path) -> None:
    """Change every EDIT_EVERY-th row's prompt and drop the last row, as users edit manifests."""
    header, *rows = manifest.read_text(encoding="utf-8").splitlines()
    edited = [
        row.replace(",presenter take ", ",presenter retake ") if i % EDIT_EVERY == 0 else row
        for i, row in enumerate(rows[:-1])
    ]
    manifest.write_text("\n".join([header, *edited]) + "\n", encoding="utf-8")


def _progressed(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with StateStore.open(state) as store:
            counts = store.counts()
    except Exception:  # the file may be mid-creation by the run
        return 0
    return sum(counts.get(status, 0) for status in PROGRESSED)


def _audit(
    sandbox: RunningSandbox, out: Path, jobs: int, interruptions: int, runs: int
) -> ChaosResult:
    ledger = sandbox.ledger()
    served = sandbox.videos()
    faults = sum(sandbox.stats()["faults"].values())
    result = ChaosResult(jobs, interruptions, faults, runs=runs, ledger_total=ledger["total_cost"])
    with StateStore.open(out / "state.sqlite") as store:
        records = store.jobs()
        tasks = store.tasks()
    billed = {t["taskUUID"]: t for t in ledger["tasks"] if t["results"] > 0}
    paid_per_spec: dict[tuple[str, str], int] = {}
    for task in tasks:
        if task["task_uuid"] in billed:
            key = (task["job_id"], task["spec_hash"])
            paid_per_spec[key] = paid_per_spec.get(key, 0) + 1
    # The same job and spec billed twice: one attempt paid for and thrown away.
    result.double_billed = sorted(
        f"{job}@{spec}" for (job, spec), n in paid_per_spec.items() if n > 1
    )
    result.unaccounted = sorted(set(billed) - {t["task_uuid"] for t in tasks})
    kept = _manifest_ids(out.parent / "manifest.csv")
    for job in records.values():
        if job.id not in kept:  # removed from the manifest: only its money is audited
            continue
        if job.status is JobStatus.FAILED:
            result.failed[job.id] = job.error_message or ""
            if not job.error_message:
                result.lost.append(job.id)
            continue
        if job.status is not JobStatus.DONE or job.task_uuid not in billed:
            result.lost.append(job.id)
            continue
        for output, item in zip(job.outputs, job.results, strict=False):
            if not _good_file(out / output["path"], output, served.get(item["video_uuid"]), job):
                result.bad_files.append(job.id)
    with (out / "cost_report.csv").open(newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["id"] == "TOTAL")
    result.report_total = float(total["actual_cost"] or 0)
    return result


def _manifest_ids(manifest: Path) -> set[str]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return {row["id"] for row in csv.DictReader(handle)}


def _good_file(
    path: Path, output: dict[str, Any], served: dict[str, Any] | None, job: JobRecord
) -> bool:
    """The file the sandbox served for this result, and a video of the audio's length."""
    if not path.exists() or served is None or output["sha256"] != served.get("sha256"):
        return False
    try:
        verify_video(
            path,
            output_format=path.suffix[1:].upper(),
            expected_seconds=job.audio_seconds,
        )
    except VideoCheckError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--faults", default=DEFAULT_FAULTS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", default="default", choices=("default", "strict"))
    args = parser.parse_args()
    started = time.monotonic()
    result = chaos(
        args.jobs, args.kills, args.seed, args.faults, args.concurrency, profile=args.profile
    )
    elapsed = time.monotonic() - started
    print(f"{result.line()} in {elapsed:.0f} s (seed {args.seed}, profile {args.profile})")
    for job_id, reason in result.failed.items():
        print(f"  failed {job_id}: {reason}")
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
