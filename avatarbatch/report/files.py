"""All outputs derived from the state file: cost CSV, JSON, Markdown, gallery, failures manifest.

Written at the end of every `run` (also an interrupted or budget-stopped one) and by
`avatarbatch report`. Each file is written to a temporary name and renamed, so a reader never
sees half a report.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from avatarbatch.jsonlines import json_with_item_lines
from avatarbatch.manifest.document import Manifest
from avatarbatch.manifest.problems import plural
from avatarbatch.money import MONEY_PLACES, money
from avatarbatch.plan import SECONDS_PLACES, Totals
from avatarbatch.report import stamp
from avatarbatch.report.data import (
    DELIVERED,
    MISMATCH_RATIO,
    REMOVED,
    JobReport,
    ReportData,
    ReportStatus,
    build_report,
)
from avatarbatch.report.failures import failures_manifest
from avatarbatch.report.gallery import PAGES_DIR, gallery_pages, page_paths
from avatarbatch.state.store import JobOverview, OwnedFile, StateStore

log = logging.getLogger("avatarbatch.report")

REPORT_FILES = ("cost_report.csv", "report.json", "report.md", "index.html", "failures.yaml")
LISTED_IDS = 10  #: job ids report.md names in a sentence before it says "..."
# A cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def write_reports(
    manifest: Manifest,
    store: StateStore,
    output_dir: Path,
    overview: dict[str, JobOverview] | None = None,
) -> ReportData:
    """Write every report file into `output_dir`; returns the data they were made from.

    `overview`: the state file's jobs, if the caller has just read them.
    """
    taken = stamp.stamp(manifest, store, output_dir)
    data = build_report(
        manifest.jobs,
        store,
        manifest=str(manifest.path),
        manifest_sha256=manifest.sha256,
        output_dir=output_dir,
        overview=overview,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    # Only the few files that may be deleted are looked up, not every video's record.
    stale_pages = [
        p.relative_to(output_dir).as_posix() for p in (output_dir / PAGES_DIR).glob("page-*.html")
    ]
    owned = store.file_owners(["failures.yaml", *stale_pages])
    # Recorded before they are written: a crash (or a locked state file) between the two
    # must not leave report files that the next run takes for someone else's.
    store.own_files(OwnedFile(name) for name in report_files(data, failed=True))
    written = [
        _write(output_dir, "cost_report.csv", cost_csv_lines(data)),
        _write(output_dir, "report.json", report_json(data)),
        _write(output_dir, "report.md", summary_markdown(data)),
        *_write_gallery(output_dir, data, owned),
    ]
    failed = [
        job
        for job, row in zip(manifest.jobs, data.jobs, strict=True)
        if row.status == ReportStatus.FAILED
    ]
    if failed:  # the condition report_files() and the Markdown's file list rely on
        written.append(
            _write(output_dir, "failures.yaml", failures_manifest(failed, manifest, output_dir))
        )
    if not failed and "failures.yaml" in owned:  # never a failures.yaml we did not write
        (output_dir / "failures.yaml").unlink(missing_ok=True)
        store.disown_files(["failures.yaml"])
    stamp.record(store, output_dir, taken, written)
    return data


def write_reports_if_changed(manifest: Manifest, store: StateStore, output_dir: Path) -> str:
    """Write the reports unless those on disk are current (`stamp`); returns report.md's text."""
    current = stamp.current_summary(manifest, store, output_dir)
    if current is not None:
        log.debug("reports in %s are current; not written again", output_dir)
        return current
    return summary_markdown(write_reports(manifest, store, output_dir))


def report_files(data: ReportData, *, failed: bool | None = None) -> list[str]:
    """The report files `write_reports` writes for `data`, relative to the output folder.

    failures.yaml only when a job failed (`failed` overrides that, to own it in advance).
    """
    names = ["cost_report.csv", "report.json", "report.md", *page_paths(len(data.jobs))]
    if failed is None:
        failed = any(job.status == ReportStatus.FAILED for job in data.jobs)
    return [*names, "failures.yaml"] if failed else names


def _write_gallery(output_dir: Path, data: ReportData, owned: Mapping[str, object]) -> list[str]:
    written: list[str] = []
    for page in gallery_pages(data):
        path = output_dir / page.path
        path.parent.mkdir(exist_ok=True)
        written.append(_write(output_dir, page.path, page.chunks))
    # Pages left by an earlier, longer report would show jobs no longer in the manifest.
    for stale in (output_dir / PAGES_DIR).glob("page-*.html"):
        relative = stale.relative_to(output_dir).as_posix()
        if relative not in written and relative in owned:
            stale.unlink()
    return written


def _write(output_dir: Path, name: str, text: str | Iterable[str]) -> str:
    """Write `name` under the folder through a temporary file; returns `name`.

    The temporary file never outlives a failure (a full disk, a read-only folder).
    """
    path = output_dir / name
    partial = path.with_name(f".{path.name}.part")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            if isinstance(text, str):
                handle.write(text)
            else:
                handle.writelines(text)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return name


# --- report.json --------------------------------------------------------------------------------


def report_json(data: ReportData) -> Iterator[str]:
    """report.json, piece by piece: the totals indented, then one job per line."""
    return json_with_item_lines(data.head(), "jobs", (job.as_dict() for job in data.jobs))


# --- cost_report.csv ----------------------------------------------------------------------------


def safe_cell(value: Any) -> Any:
    """Neutralise text a spreadsheet would run as a formula; numbers pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def cost_csv_lines(data: ReportData) -> Iterator[str]:
    """cost_report.csv line by line: one per job, then a TOTAL per model and overall.

    Columns: `id`, one per var, `model`, `status`, `jobs`, `audio_seconds`, `results`,
    `estimated_cost`, `actual_cost`, `earlier_cost`, `cost_source`, `attempts`, `task_uuid`,
    `outputs`, `sha256`, `error`.

    - a job's row: `jobs` is 1;
    - a `removed` row (a job id paid for that has left the manifest): `jobs` is 0, so the
      column sums to the TOTAL row's, while its cost is counted in the totals;
    - `TOTAL <model>` rows (`model` is the model) and a last `TOTAL` row: `status` is empty,
      `jobs` is how many of the manifest's jobs they sum, the numeric columns are sums and the
      per-job columns are empty.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def line(cells: list[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line(
        [
            "id",
            *data.var_names,
            "model",
            "status",
            "jobs",
            "audio_seconds",
            "results",
            "estimated_cost",
            "actual_cost",
            "earlier_cost",
            "cost_source",
            "attempts",
            "task_uuid",
            "outputs",
            "sha256",
            "error",
        ]
    )
    for job in (*data.jobs, *data.removed):
        yield line([safe_cell(cell) for cell in _job_cells(job, data.var_names)])
    blanks = [""] * len(data.var_names)
    for alias, totals in data.by_model.items():
        yield line([f"TOTAL {alias}", *blanks, alias, *_total_cells(totals)])
    yield line(["TOTAL", *blanks, "", *_total_cells(data.totals)])


def _job_cells(job: JobReport, var_names: list[str]) -> list[Any]:
    return [
        job.id,
        *(job.vars.get(name, "") for name in var_names),
        job.model,
        job.status,
        int(job.status != REMOVED),
        _number(job.audio_seconds, SECONDS_PLACES),
        job.results,
        _number(job.estimated_cost, MONEY_PLACES),
        _number(job.actual_cost, MONEY_PLACES),
        _number(job.earlier_cost, MONEY_PLACES),
        job.cost_source or "",
        job.attempts,
        job.task_uuid or "",
        ";".join(job.outputs),
        ";".join(job.sha256),
        job.error or "",
    ]


def _total_cells(totals: Totals) -> list[Any]:
    rounded = totals.rounded()
    return [
        "",
        totals.jobs,
        rounded["audio_seconds"],
        "",
        rounded["estimated_cost"],
        rounded["actual_cost"],
        rounded["earlier_cost"],
        "",
        "",
        "",
        "",
        "",
        "",
    ]


def _number(value: float | None, places: int) -> Any:
    return "" if value is None else round(value, places)


# --- report.md ----------------------------------------------------------------------------------


def summary_markdown(data: ReportData) -> str:
    """The human summary: counts, totals by model and var, failures, where the files are."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(data.counts.items()))
    total = data.totals
    lines = [
        f"# avatarbatch report: {Path(data.manifest).name}",
        "",
        f"{total.jobs} jobs: {counts}. Actual cost {money(total.actual_cost)} "
        f"(estimate {money(total.estimated_cost)}), {total.audio_seconds:,.1f} s of audio.",
        "",
        "| model | jobs | audio s | estimate | actual |",
        "|---|---:|---:|---:|---:|",
        *(_totals_row(name, t) for name, t in data.by_model.items()),
    ]
    for var in data.var_names:
        lines += [
            "",
            f"| {var} | jobs | audio s | estimate | actual |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [_totals_row(value, t) for value, t in data.by_var.get(var, {}).items()]
    if total.earlier_cost:
        lines += [
            "",
            f"Of the actual cost, {money(total.earlier_cost)} paid for earlier attempts: "
            "superseded specs, retries, and rows no longer in the manifest "
            f"({len(data.removed)} removed).",
        ]
    estimated = [j.id for j in data.jobs if j.cost_source == "estimate"]
    if estimated:
        lines += [
            "",
            f"{plural(len(estimated), 'job')} got no usable cost from the API; their estimate is "
            f"counted instead: {', '.join(estimated[:LISTED_IDS])}"
            f"{' ...' * (len(estimated) > LISTED_IDS)}",
        ]
    mismatches = [j for j in data.jobs if j.cost_mismatch]
    if mismatches:
        lines += ["", f"Actual cost differs from the estimate by more than {MISMATCH_RATIO:.0%}:"]
        lines += [
            f"- {j.id}: estimate {money(j.estimated_cost or 0)}, actual {money(j.actual_cost or 0)}"
            for j in mismatches
        ]
    failed = data.failed()
    if failed:
        lines += ["", f"Failed ({len(failed)}); `failures.yaml` reruns just these:"]
        lines += [f"- {j.id}: {j.error or 'no reason recorded'}" for j in failed]
    lines += ["", f"Files in {data.output_dir}: {_files_line(data)}", ""]
    return "\n".join(lines)


def _files_line(data: ReportData) -> str:
    """What `write_reports` writes for `data`, further gallery pages counted, not listed."""
    files = report_files(data)
    pages = [name for name in files if name.startswith(f"{PAGES_DIR}/")]
    names = [name for name in files if name not in pages]
    if pages:
        names[names.index("index.html")] += f" (+ {len(pages)} more pages in {PAGES_DIR}/)"
    has_videos = any(not o.startswith(DELIVERED) for job in data.jobs for o in job.outputs)
    return ", ".join(["videos/", *names] if has_videos else names)


def _totals_row(name: str, totals: Totals) -> str:
    return (
        f"| {name} | {totals.jobs} | {totals.audio_seconds:,.1f} | "
        f"{money(totals.estimated_cost)} | {money(totals.actual_cost)} |"
    )
