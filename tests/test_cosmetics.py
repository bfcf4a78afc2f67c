"""What people read (issue 13): money to 5 decimals everywhere, the report's file list, the CSV's
TOTAL rows, the progress bar, log times, stage names and the last run in `status`."""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from rich.console import Console
from rich.progress import BarColumn

from avatarbatch.cli import progress, views
from avatarbatch.engine.batch import RunSummary
from avatarbatch.manifest.document import load_manifest
from avatarbatch.manifest.preflight import preflight
from avatarbatch.plan import Totals, build_plan
from avatarbatch.report.data import REMOVED, JobReport, ReportData, money
from avatarbatch.report.files import (
    cost_csv_lines,
    report_files,
    summary_markdown,
    write_reports,
)
from avatarbatch.state.store import JobSpec, JobStatus, StateStore

#: a dollar figure with anything but 5 decimals
NOT_FIVE_PLACES = re.compile(r"\$[\d,]+(?:\.(?!\d{5}(?!\d))\d+)?(?![\d.,])")


def recording_console() -> Console:
    return Console(file=io.StringIO(), width=200, record=True)


def job(
    job_id: str,
    status: str = "done",
    *,
    estimated: float | None = 0.132,
    actual: float | None = 0.132,
    outputs: list[str] | None = None,
    error: str | None = None,
) -> JobReport:
    return JobReport(
        id=job_id,
        vars={"lang": "en"},
        model="bytedance:5@1",
        model_alias="standard",
        status=status,
        audio_seconds=3.0,
        results=1,
        estimated_cost=estimated,
        actual_cost=actual,
        attempts=1,
        task_uuid=None,
        outputs=[f"videos/{job_id}.mp4"] if outputs is None else outputs,
        sha256=[],
        error=error,
        cost_mismatch=False,
    )


def report_data(jobs: list[JobReport], removed: list[JobReport] | None = None) -> ReportData:
    data = ReportData(
        manifest="m.yaml",
        manifest_sha256="x",
        output_dir=Path("out"),
        generated_at="2026-12-02T12:00:00Z",
        jobs=jobs,
        counts={},
        totals=Totals(),
        by_model={},
        by_var={},
        var_names=["lang"],
        removed=removed or [],
    )
    data.tally()
    return data


# --- 1. money ------------------------------------------------------------------------------------


def test_money_is_one_format_with_five_decimals() -> None:
    assert money(0.132) == "$0.13200"
    assert money(0.044 * 12.345) == "$0.54318"
    assert money(1234.5) == "$1,234.50000"
    assert money(None) == "?" and money(None, unknown="—") == "—"
    assert NOT_FIVE_PLACES.findall("$0.13200 $1,234.50000 and $2") == ["$2"]
    assert NOT_FIVE_PLACES.findall("$0.1320 $1.004") == ["$0.1320", "$1.004"]


def test_plan_status_summary_and_markdown_print_five_decimals(
    write: Any, media: Path, tmp_path: Path
) -> None:
    path = write(
        "m.yaml",
        "version: 1\ndefaults: {portrait: media/face.png}\njobs:\n"
        "  - {id: en, audio: media/en.wav, vars: {lang: en}}\n"
        "  - {id: es, audio: media/es.wav, model: pro, number_results: 2, vars: {lang: es}}\n",
    )
    checked = preflight(path)
    assert checked.manifest is not None
    console = recording_console()
    views.print_plan(console, build_plan(checked.manifest.jobs, checked.media), "m.yaml")
    plan_text = console.export_text()
    assert "$0.13200" in plan_text and "$0.82800" in plan_text  # 0.132 + 0.696
    assert not NOT_FIVE_PLACES.findall(plan_text)

    console = recording_console()
    views.print_status(console, status_report(last_run=None))
    status_text = console.export_text()
    assert "spent $0.13200" in status_text and "estimated $1.00400" in status_text
    assert not NOT_FIVE_PLACES.findall(status_text)

    # only the fields run_summary reads: RunSummary itself is changing under other work
    summary = cast(
        RunSummary,
        SimpleNamespace(
            jobs=2,
            done=2,
            failed=0,
            pending=0,
            submitted=2,
            skipped=0,
            cost_actual=0.828,
            cost_this_run=0.828,
            cost_estimated=0.828,
            message="all done",
            output_dir="out",
            state_file="out/state.sqlite",
            report="# report",
        ),
    )
    assert "cost this run $0.82800, $0.82800 in all" in views.run_summary(summary)
    assert not NOT_FIVE_PLACES.findall(views.run_summary(summary))

    mismatch = job("a", estimated=0.1, actual=0.2)
    data = report_data([mismatch.__class__(**{**mismatch.as_dict(), "cost_mismatch": True})])
    markdown = summary_markdown(data)
    assert "- a: estimate $0.10000, actual $0.20000" in markdown
    assert not NOT_FIVE_PLACES.findall(markdown)


# --- 2. the files report.md lists --------------------------------------------------------------


def test_markdown_lists_the_files_actually_written(media: Path, tmp_path: Path) -> None:
    manifest_path = tmp_path / "m.yaml"
    manifest_path.write_text(
        "version: 1\ndefaults: {portrait: media/face.png}\njobs:\n"
        "  - {id: a, audio: media/en.wav}\n  - {id: b, audio: media/es.wav}\n"
    )
    manifest = load_manifest(manifest_path)
    out = tmp_path / "out"
    with StateStore.open(tmp_path / "s.sqlite") as store:
        data = write_reports(manifest, store, out)
        line = _files_line(out)
        assert line == f"Files in {out}: cost_report.csv, report.json, report.md, index.html"
        assert line == f"Files in {out}: " + ", ".join(report_files(data))

        store.ensure_jobs(
            [
                JobSpec(
                    "b",
                    spec_hash="h",
                    model=manifest.jobs[1].model,
                    number_results=1,
                    audio_seconds=4.0,
                    estimated_cost=0.176,
                )
            ]
        )
        store.transition("b", JobStatus.FAILED, error_code="x", error_message="refused")
        write_reports(manifest, store, out)
    line = _files_line(out)
    assert line.endswith("index.html, failures.yaml")
    for name in line.partition(": ")[2].split(", "):
        assert (out / name).is_file(), name


def _files_line(out: Path) -> str:
    (line,) = [x for x in (out / "report.md").read_text().splitlines() if x.startswith("Files")]
    return line


def test_files_line_names_videos_and_counts_further_gallery_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from avatarbatch.report import gallery

    monkeypatch.setattr(gallery, "PAGE_SIZE", 2)
    data = report_data([job("a"), job("b"), job("c", "failed", outputs=[], error="no")])
    line = summary_markdown(data).splitlines()[-1]
    assert line == (
        "Files in out: videos/, cost_report.csv, report.json, report.md, "
        "index.html (+ 1 more pages in gallery/), failures.yaml"
    )


# --- 3. the CSV's TOTAL rows -------------------------------------------------------------------


def test_csv_totals_count_jobs_in_a_jobs_column_not_in_status() -> None:
    gone = job("old", REMOVED, estimated=None, actual=0.5, outputs=[])
    data = report_data([job("a"), job("b"), job("c", "failed", actual=0.0)], removed=[gone])
    rows = list(csv.DictReader(io.StringIO("".join(cost_csv_lines(data)))))
    header = list(rows[0])
    assert header[header.index("status") + 1] == "jobs"
    by_id = {row["id"]: row for row in rows}
    assert [by_id[i]["jobs"] for i in ("a", "b", "c", "old")] == ["1", "1", "1", "0"]
    total, standard = by_id["TOTAL"], by_id["TOTAL standard"]
    assert (total["status"], total["jobs"], total["model"]) == ("", "3", "")
    assert (standard["status"], standard["jobs"], standard["model"]) == ("", "3", "standard")
    jobs = [row for row in rows if not row["id"].startswith("TOTAL")]
    assert sum(int(row["jobs"]) for row in jobs) == int(total["jobs"])
    assert float(total["actual_cost"]) == pytest.approx(0.764)  # 0.132 x 2 + the removed 0.5


# --- 4. the progress bar -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bar_text(bar: progress.RunProgress) -> str:
    console = Console(file=io.StringIO(), width=160, record=True, force_terminal=True)
    assert bar._progress is not None
    console.print(bar._progress.get_renderable())
    return console.export_text()


def test_no_full_bar_before_the_total_is_known_and_no_placeholder_eta() -> None:
    console = Console(file=io.StringIO(), width=160, force_terminal=True)
    bar = progress.RunProgress(0, console)
    assert bar._progress is not None
    task = bar._progress.tasks[0]
    assert task.total is None
    (column,) = [c for c in bar._progress.columns if isinstance(c, BarColumn)]
    assert column.render(task).total is None  # rich pulses such a bar, rather than fill it
    text = bar_text(bar)
    assert "starting" in text and "0/0" not in text and "-:--:--" not in text
    bar.set_total(4)
    bar.update({"pending": 4}, 0.0, 0.5)
    text = bar_text(bar)
    assert "0/4" in text and "ETA —" in text and "-:--:--" not in text
    assert "$0.00000 of ~$0.50000" in text


def test_eta_follows_the_rate_of_jobs_finished_in_this_run() -> None:
    clock = Clock()
    bar = progress.RunProgress(0, None, clock=clock)
    assert bar.eta(0) == ""  # nothing known yet
    bar.set_total(12)
    bar.update({"done": 2}, 0.0, 1.0)  # done by an earlier run: not this run's rate
    assert bar.eta(2) == "ETA —"
    clock.now += 30
    bar.update({"done": 3, "processing": 4}, 0.0, 1.0)
    assert bar.eta(3) == "ETA —"  # one finished: too few for a rate
    clock.now += 30
    bar.update({"done": 4, "failed": 1}, 0.0, 1.0)
    assert bar.eta(5) == "ETA 0:02:20"  # 3 jobs in 60 s, 7 left
    clock.now += 3600
    assert bar.eta(6) == "ETA 1:31:30"  # 4 jobs in 3,660 s, 6 left
    assert bar.eta(12) == ""


def test_eta_for_a_run_of_fewer_jobs_than_the_minimum() -> None:
    clock = Clock()
    bar = progress.RunProgress(2, None, clock=clock)
    bar.update({"pending": 2}, 0.0, 1.0)
    clock.now += 10
    assert bar.eta(1) == "ETA 0:00:10"


# --- 5. log times ------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("avatarbatch")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("tty", [True, False])
def test_log_lines_carry_the_same_iso_time_on_a_terminal_and_off_it(tty: bool) -> None:
    stream = io.StringIO()
    progress.configure_logging(tty=tty, stream=stream)
    logging.getLogger("avatarbatch.test").info("job a: submitted")
    text = stream.getvalue()
    assert re.match(r"\s*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", text), text
    assert "job a: submitted" in text and not re.search(r"\[\d\d/\d\d/\d\d", text)


# --- 6. stage names ----------------------------------------------------------------------------


def test_a_job_waiting_for_a_render_slot_reads_as_waiting() -> None:
    console = Console(file=io.StringIO(), width=160, force_terminal=True)
    bar = progress.RunProgress(0, console)
    bar.set_total(9)
    bar.update({"pending": 2, "uploading": 3, "processing": 4}, 0.0, 1.0)
    text = bar_text(bar)
    assert "waiting:3 processing:4" in text and "uploading" not in text

    console = recording_console()
    views.print_status(console, status_report(last_run=None))
    assert "(pending 1, waiting 3, done 2)" in console.export_text()


# --- the last run in `status` ------------------------------------------------------------------


def status_report(last_run: dict[str, Any] | None) -> dict[str, Any]:
    by_status = {status.value: 0 for status in JobStatus}
    by_status.update(pending=1, uploading=3, done=2)
    return {
        "state_file": "out/state.sqlite",
        "jobs": 6,
        "by_status": by_status,
        "spend": 0.132,
        "damaged_videos": {},
        "estimated": 1.004,
        "failures": [],
        "last_run": last_run,
    }


def test_status_shows_a_run_still_going_instead_of_none() -> None:
    run = {"id": 3, "started_at": 1796212800.0, "finished_at": None, "outcome": None}
    console = recording_console()
    views.print_status(console, status_report(run | {"exit_code": None}))
    text = console.export_text()
    assert "last run: #3 started 2026-12-02T12:00:00Z, still running (or killed)" in text
    assert "None" not in text

    finished = run | {"finished_at": 1796213100.5, "outcome": "completed", "exit_code": 0}
    assert views.last_run_line(finished) == (
        "last run: #3 completed (exit 0), started 2026-12-02T12:00:00Z, "
        "finished 2026-12-02T12:05:00Z"
    )
