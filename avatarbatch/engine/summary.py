"""What a run did, in numbers and one sentence, and the exit code that says it to scripts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from avatarbatch.engine.outcome import Outcome
from avatarbatch.engine.place import Place
from avatarbatch.errors import ExitCode
from avatarbatch.manifest.problems import plural
from avatarbatch.plan import MONEY_PLACES, PlannedJob, PlanStatus
from avatarbatch.report.data import FINISHED, StatusTally, money
from avatarbatch.state.store import JobStatus

#: how each exit code is recorded as the outcome of a run in the state file
OUTCOME_WORDS = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "failed",
    ExitCode.BUDGET: "budget",
    ExitCode.AUTH: "auth",
    ExitCode.INTERRUPTED: "interrupted",
}


@dataclass
class RunSummary:
    jobs: int
    done: int
    failed: int
    pending: int
    submitted: int  #: jobs that had a task accepted by this invocation
    tasks_sent: int  #: tasks accepted by this invocation, retries included
    skipped: int
    cost_actual: float  #: everything billed through this state file (the ledger's sum)
    cost_this_run: float  #: billed for what this invocation submitted
    cost_estimated: float
    exit_code: ExitCode
    message: str
    output_dir: str
    state_file: str
    report: str = ""  #: the Markdown summary also written to report.md

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("report")
        values["exit_code"] = int(self.exit_code)
        return values


def summarize(
    tally: StatusTally,
    chosen: list[PlannedJob],
    outcome: Outcome,
    where: Place,
    spend: tuple[float, float],
    estimated: Decimal,
) -> RunSummary:
    """The run's outcome over the jobs it was given, `tally` being theirs as the state file
    has them now; `spend` is the ledger's (lifetime, this run's) billed cost, `estimated` the
    plan's estimate of `chosen`."""
    done, failed = tally.count(JobStatus.DONE), tally.count(JobStatus.FAILED)
    pending = len(chosen) - done - failed
    skipped = sum(1 for p in chosen if p.status is PlanStatus.DONE)
    remaining = tally.totals(s for s in JobStatus if s not in FINISHED)
    remaining_cost = remaining.estimated_cost
    if outcome.fatal is not None:
        code, message = ExitCode.AUTH, f"stopped: {outcome.fatal}"
    elif outcome.local_error is not None:  # before `interrupted`: stopping cancels the drivers
        code = ExitCode.FAILED
        message = f"stopped: {outcome.local_error}; fix it and run again to resume"
    elif outcome.interrupted:
        code, message = ExitCode.INTERRUPTED, "interrupted: run the same command again to resume"
    elif outcome.budget_stopped:
        code = ExitCode.BUDGET
        message = (
            f"budget reached: {plural(remaining.jobs, 'job')} remain, estimated "
            f"{money(remaining_cost)}; "
            "raise --max-cost and run again to continue"
        )
    elif failed or pending:
        code = ExitCode.FAILED
        message = unfinished_message(failed, pending, outcome.left_by)
    else:
        code, message = ExitCode.OK, "every job done"
    return RunSummary(
        jobs=len(chosen),
        done=done,
        failed=failed,
        pending=pending,
        submitted=len(outcome.submitted_jobs),
        tasks_sent=outcome.tasks_sent,
        skipped=skipped,
        cost_actual=round(spend[0], MONEY_PLACES),
        cost_this_run=round(spend[1], MONEY_PLACES),
        cost_estimated=float(estimated),
        exit_code=code,
        message=message,
        output_dir=str(where.out.absolute()),
        state_file=str(where.state.absolute()),
    )


def unfinished_message(failed: int, pending: int, left_by: str | None) -> str:
    """What is left, and the command that deals with each part of it."""
    parts = []
    if failed:
        parts.append(f"{failed} failed (--retry-failed runs them again)")
    if pending:
        why = f" after: {left_by}" if left_by else ""
        parts.append(f"{pending} unfinished{why} (run the same command again to resume)")
    return "; ".join(parts)


def outcome_word(code: ExitCode) -> str:
    """The run's outcome as the state file's `runs` table records it."""
    return OUTCOME_WORDS.get(code, "unknown")
