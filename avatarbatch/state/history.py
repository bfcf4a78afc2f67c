"""A job's history, told from the events log: what happened to it, in order, in short sentences.

The log is the state file's own format, so it is read here and nowhere else. Every transition
event holds the move and its fields; a state file written before the log carried the ledger
and files writes (`tasks`, `files`) tells the same story from the fields alone (the task
UUID and attempt, `actual_cost`, `outputs`), only without the cost's source.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from avatarbatch.money import money
from avatarbatch.state.records import JobStatus, TaskStatus

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  #: UTC, as the reports stamp their time

Step = dict[str, Any]
_S = JobStatus


def story(events: Iterable[Mapping[str, Any]]) -> list[Step]:
    """One job's events (`StateStore.events(job_id)`), oldest first, as the steps of its story:
    each `{"at": ISO time, "what": a short sentence, "kind": the event's kind, ...detail}`."""
    steps: list[Step] = []
    for event in events:
        detail = event.get("detail")
        detail = detail if isinstance(detail, dict) else {}
        at = time.strftime(TIME_FORMAT, time.gmtime(float(event["at"])))
        kind = str(event["kind"])
        for step in _steps(kind, detail):
            steps.append({"at": at, "what": step.pop("what"), "kind": kind, **step})
    return steps


def _steps(kind: str, detail: dict[str, Any]) -> list[Step]:
    if kind == "created":
        return [{"what": "registered", "spec_hash": detail.get("spec_hash")}]
    if kind == "changed":
        return [
            {
                "what": "reset to pending (spec changed)",
                "spec_hash": detail.get("spec_hash"),
                "old_status": detail.get("old_status"),
            }
        ]
    if kind == "renamed":
        moves = detail.get("moves") or {}
        return [{"what": f"renamed {old} to {new}", "path": new} for old, new in moves.items()]
    if kind == "task":
        return [_task_step(detail)]
    if kind == "transition":
        return _transition_steps(detail)
    return [{"what": kind, **detail}]


def _task_step(entry: Mapping[str, Any]) -> Step:
    """A ledger write where the job did not move (a stray task's end, a refusal, a resend)."""
    uuid, status = entry.get("task_uuid"), entry.get("status")
    endings: dict[str, str] = {
        TaskStatus.SUBMITTING: "sent again under the same UUID",
        TaskStatus.ACCEPTED: "accepted",
        TaskStatus.BILLED: f"ended: {_billed(entry.get('billed_cost'), entry)}",
        TaskStatus.UNBILLED: "ended without a result: nothing billed",
        TaskStatus.REFUSED: "refused: nothing billed",
    }
    what = endings.get(status, str(status)) if isinstance(status, str) else "written"
    return {"what": f"task {uuid} {what}", **_task_detail(entry)}


def _transition_steps(detail: dict[str, Any]) -> list[Step]:
    came, went = str(detail.get("from")), str(detail.get("to"))
    tasks: list[dict[str, Any]] = [t for t in detail.get("tasks") or [] if isinstance(t, dict)]
    move = {"from": came, "to": went}
    if went == _S.PENDING:
        reason = "--retry-failed" if came == _S.FAILED else f"was {came}"
        return [{"what": f"reset to pending ({reason})", **move}]
    if went == _S.UPLOADING:
        return [{"what": _uploading(came, detail), **move}]
    if went == _S.SUBMITTING:
        return [_submitted(detail, tasks, move)]
    if went == _S.PROCESSING:
        uuid = next((t.get("task_uuid") for t in tasks), detail.get("task_uuid"))
        what = "accepted" if came == _S.SUBMITTING else f"{came} to processing"
        return [{"what": what, **move, **({"task_uuid": uuid} if uuid else {})}]
    if went == _S.DOWNLOADING:
        return [_result(came, detail, tasks, move)]
    steps = [_task_step(task) for task in tasks if task.get("status") == TaskStatus.REFUSED]
    steps += _downloads(detail)
    if went == _S.DONE:
        steps.append({"what": "done", **move})
    elif went == _S.FAILED:
        code, message = detail.get("error_code"), detail.get("error_message")
        what = f"failed: {code}: {message}" if code else f"failed: {message}"
        steps.append({"what": what, **move, "error_code": code, "error_message": message})
    else:
        steps.append({"what": f"{came} to {went}", **move})
    return steps


def _uploading(came: str, detail: Mapping[str, Any]) -> str:
    if came == _S.UPLOADING and ("image_input" in detail or "audio_input" in detail):
        return "inputs uploaded"
    if came in (_S.SUBMITTING, _S.PROCESSING):
        return "uploading again (the API no longer had an input)"
    return "uploading"


def _submitted(detail: Mapping[str, Any], tasks: list[dict[str, Any]], move: Step) -> Step:
    """A new attempt: its task UUID committed before the submit POST."""
    sent = next((t for t in tasks if t.get("status") == TaskStatus.SUBMITTING), None)
    uuid = sent.get("task_uuid") if sent else detail.get("task_uuid")
    attempt = (sent.get("attempt") if sent else None) or detail.get("attempts")
    if uuid is None:
        return {"what": "submitting", **move}
    what = f"task {uuid} submitted" + (f" (attempt {attempt})" if attempt else "")
    return {"what": what, **move, **_task_detail(sent or {"task_uuid": uuid, "attempt": attempt})}


def _result(came: str, detail: Mapping[str, Any], tasks: list[dict[str, Any]], move: Step) -> Step:
    """Results arrived (and were billed), or a done job's video is fetched again."""
    if came == _S.DONE:
        return {"what": "video missing or changed: downloading it again", **move}
    if came == _S.DOWNLOADING:
        return {"what": "downloading again", **move}
    billed = next((t for t in tasks if t.get("status") == TaskStatus.BILLED), None)
    cost = billed.get("billed_cost") if billed else detail.get("actual_cost")
    paid = _billed(cost, billed or {})
    error = detail.get("error_message")
    outcome = f"partial, {detail.get('error_code')}: {error}" if error else "success"
    results = detail.get("results")
    count = (
        f", {len(results)} video{'s' * (len(results) != 1)}" if isinstance(results, list) else ""
    )
    step: Step = {"what": f"result: {outcome}{count}, {paid}", **move}
    if billed:
        step |= _task_detail(billed)
    elif cost is not None:
        step |= {"task_uuid": detail.get("task_uuid"), "billed_cost": cost}
    return step


def _downloads(detail: Mapping[str, Any]) -> list[Step]:
    """The videos a move records: the files it owns, or (older logs) its `outputs` field."""
    files = detail.get("files")
    if not files:
        files = [o for o in detail.get("outputs") or [] if isinstance(o, dict)]
    steps: list[Step] = []
    for file in files:
        if "delivered" in file:
            steps.append({"what": f"delivered to {file['delivered']}", "url": file["delivered"]})
            continue
        if "path" not in file or file.get("bytes") is None:
            continue  # a claim before the download, not a download
        size = file["bytes"]
        what = f"downloaded {file['path']} ({size:,} bytes)"
        steps.append(
            {"what": what, "path": file["path"], "bytes": size, "sha256": file.get("sha256")}
        )
    return steps


def _billed(cost: Any, entry: Mapping[str, Any]) -> str:
    if cost is None:
        return "cost unknown"
    source = entry.get("cost_source")
    note = " (our estimate: the API gave no usable cost)" if source == "estimate" else ""
    return f"{money(float(cost))} billed{note}"


def _task_detail(entry: Mapping[str, Any]) -> Step:
    """A ledger entry's fields for a step; its status as `task_status`, the job's being
    another thing."""
    names = {
        "task_uuid": "task_uuid",
        "status": "task_status",
        "attempt": "attempt",
        "run_id": "run_id",
        "estimated_cost": "estimated_cost",
        "billed_cost": "billed_cost",
        "cost_source": "cost_source",
    }
    return {shown: entry[name] for name, shown in names.items() if entry.get(name) is not None}


def lines(history: Mapping[str, Any]) -> list[str]:
    """A history (see `story`, with "job", "status" and "attempts") as lines to print."""
    attempts = int(history.get("attempts") or 0)
    head = f"job {history['job']}: {history['status']}, {attempts} attempt{'s' * (attempts != 1)}"
    return [head, *(f"  {step['at']}  {step['what']}" for step in history["events"])]
