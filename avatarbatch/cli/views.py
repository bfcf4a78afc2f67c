"""Human-readable renderings of problems and plans, for the terminal and for cron logs.

Rich draws the tables; on a pipe it drops colour and keeps the layout. Per-job tables are built
as plain aligned text, because rich lays out a Table of thousands of rows slowly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from avatarbatch import catalog
from avatarbatch.cli.progress import TIME_FORMAT, stage_label
from avatarbatch.manifest.problems import Problem, Problems, plural
from avatarbatch.money import money
from avatarbatch.plan import Plan, PlannedJob, PlanStatus, Totals

if TYPE_CHECKING:
    from avatarbatch.engine.batch import RunSummary


def seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"


def model_name(model_id: str) -> str:
    return catalog.model_by_id(model_id).alias


def print_problems(console: Console, problems: Iterable[Problem]) -> None:
    for problem in problems:
        style = "red" if problem.is_error else "yellow"
        console.print(problem.format(), style=style, markup=False, highlight=False, soft_wrap=True)


def problems_summary(source: str, problems: Problems, jobs: int | None) -> str:
    errors, warnings = len(problems.errors), len(problems.warnings)
    counts = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if errors:
        return f"{source}: invalid ({counts})"
    return f"{source}: valid, {jobs} job{'s' * (jobs != 1)} ({counts})"


#: job lines per write: a write per line is slow through rich, one write of every line holds
#: the text of the whole plan in memory
PRINT_CHUNK = 2000


def print_plan(console: Console, plan: Plan, source: str) -> None:
    """The per-job table, then totals by model, by each var, and overall."""
    var_names = sorted(plan.by_var)
    header = ["id", "status", "model", "results", "audio s", "est. cost", *var_names]
    # Two passes over the rows instead of one list of them, which would hold a big plan's text.
    widths = [len(h) for h in header]
    for row in (_job_row(p, var_names) for p in plan.jobs):
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    numeric = {3, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    console.print(line(header), style="bold", markup=False, highlight=False, soft_wrap=True)
    for start in range(0, len(plan.jobs), PRINT_CHUNK):
        chunk = plan.jobs[start : start + PRINT_CHUNK]
        console.out("\n".join(line(_job_row(p, var_names)) for p in chunk), highlight=False)
    console.print()
    console.print(_totals_table("by model", {model_name(k): v for k, v in plan.by_model.items()}))
    for var in var_names:
        console.print(_totals_table(f"by {var}", plan.by_var[var]))
    console.print(_summary_line(plan, source), markup=False, highlight=False, soft_wrap=True)


def _job_row(planned: PlannedJob, var_names: list[str]) -> list[str]:
    job = planned.job
    return [
        job.id,
        planned.status.value,
        model_name(job.model),
        str(job.number_results),
        seconds(planned.audio_seconds),
        money(planned.estimated_cost),
        *(job.vars.get(name, "") for name in var_names),
    ]


def _totals_table(title: str, groups: dict[str, Totals]) -> Table:
    table = Table(title=f"Totals {title}", title_justify="left", box=None, pad_edge=False)
    table.add_column("")
    table.add_column("jobs", justify="right")
    table.add_column("audio s", justify="right")
    table.add_column("est. cost", justify="right")
    for name, totals in groups.items():
        table.add_row(name, str(totals.jobs), seconds(totals.audio_seconds), _cost(totals))
    return table


def _cost(totals: Totals) -> str:
    unknown = f" + {totals.unknown_cost_jobs} unknown" if totals.unknown_cost_jobs else ""
    return money(totals.estimated_cost) + unknown


def _summary_line(plan: Plan, source: str) -> str:
    total, run = plan.totals, plan.to_run
    text = (
        f"{source}: {total.jobs} jobs, {seconds(total.audio_seconds)} s of audio, "
        f"estimated {_cost(total)}"
    )
    if run.jobs != total.jobs:
        text += f"; to run now: {run.jobs} jobs, estimated {_cost(run)}"
    refetch = sum(1 for p in plan.jobs if p.status is PlanStatus.REFETCH)
    if refetch:
        text += (
            f"; {plural(refetch, 'done job')} whose video is missing or changed "
            f"{'is' if refetch == 1 else 'are'} downloaded again "
            "from their result URLs, at no cost (an expired URL fails the job: --retry-failed "
            "then renders it again, which is billed again)"
        )
    return text


def run_summary(summary: RunSummary) -> str:
    """The closing lines of `run`: the report's summary, the outcome, where everything is."""
    return (
        f"{summary.report.rstrip()}\n\n"
        f"{plural(summary.jobs, 'job')}: {summary.done} done, {summary.failed} failed, "
        f"{summary.pending} unfinished ({summary.submitted} submitted now, {summary.skipped} "
        f"already done); cost this run {money(summary.cost_this_run)}, "
        f"{money(summary.cost_actual)} in all through this state file "
        f"(estimate {money(summary.cost_estimated)})\n"
        f"{summary.message}\n"
        f"gallery: {summary.output_dir}/index.html  state: {summary.state_file}"
    ).lstrip()


def print_status(console: Console, report: dict[str, Any]) -> None:
    counts = ", ".join(
        f"{stage_label(status)} {n}" for status, n in report["by_status"].items() if n
    )
    console.print(
        f"{report['state_file']}: {report['jobs']} jobs ({counts or 'none'})", markup=False
    )
    console.print(
        f"spent {money(report['spend'])} (every attempt billed through this state file), "
        f"current jobs estimated {money(report['estimated'])}",
        markup=False,
    )
    for job_id, reason in report.get("damaged_videos", {}).items():
        console.print(
            f"video of {job_id}: {reason}; the next run downloads it again from its result URL",
            markup=False,
            style="yellow",
        )
    for failure in report["failures"]:
        console.print(
            f"failed {failure['id']}: {failure['error_message']}", markup=False, style="red"
        )
    last = report["last_run"]
    if last:
        console.print(last_run_line(last, running=report.get("running")), markup=False)


def last_run_line(run: Mapping[str, Any], *, running: bool | None = None) -> str:
    """`last run: #3 ok (exit 0), started ..., finished ...`; a run with no finish recorded is
    still going (`running`: its lock is held), or was killed before it could record one."""
    number, started = f"#{run.get('id', '?')}", f"started {_utc(run.get('started_at'))}"
    if run.get("finished_at") is None:
        if running is None:
            going = "still running (or killed)"
        else:
            going = "running now" if running else "killed before it could finish"
        return f"last run: {number} {started}, {going}"
    return (
        f"last run: {number} {run.get('outcome')} (exit {run.get('exit_code')}), {started}, "
        f"finished {_utc(run.get('finished_at'))}"
    )


def _utc(timestamp: object) -> str:
    if not isinstance(timestamp, int | float):
        return "?"
    return time.strftime(TIME_FORMAT, time.gmtime(timestamp))
