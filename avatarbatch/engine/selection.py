"""`run --only ID` and `--where VAR=VALUE`: the rows one invocation works on.

The other rows are left exactly as they are (not registered, not reset, not fetched again),
so running a subset never costs or changes anything outside it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from avatarbatch.errors import UsageError
from avatarbatch.manifest.document import Job

SHOWN_VALUES = 8  #: values of a var listed when a --where matches nothing


def select(
    jobs: Sequence[Job], *, only: Sequence[str], where: Sequence[str]
) -> frozenset[str] | None:
    """Ids of the jobs to run (None: all of them). --only ids add up; every --where must hold.

    Raises UsageError naming the option for an unknown id, a malformed condition, a var no
    row has, or a selection that matches no row.
    """
    if not only and not where:
        return None
    ids = {job.id for job in jobs}
    chosen = set(ids)
    if only:
        unknown = [job_id for job_id in only if job_id not in ids]
        if unknown:
            raise UsageError(_unknown_id(unknown[0], ids))
        chosen = set(only)
    for condition in where:
        name, value = _condition(condition)
        values = {str(job.vars[name]) for job in jobs if name in job.vars}
        if not values:
            known = sorted({var for job in jobs for var in job.vars})
            listed = ", ".join(known) if known else "none"
            raise UsageError(f"--where {condition}: no row has a var {name!r} (vars: {listed})")
        chosen &= {job.id for job in jobs if str(job.vars.get(name)) == value and name in job.vars}
        if value not in values:
            shown = ", ".join(sorted(values)[:SHOWN_VALUES])
            more = ", ..." if len(values) > SHOWN_VALUES else ""
            raise UsageError(
                f"--where {condition}: no row has {name}={value} ({name}: {shown}{more})"
            )
    if not chosen:
        raise UsageError("no row matches every --only and --where given")
    return frozenset(chosen)


def _condition(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise UsageError(f"--where: expected VAR=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _unknown_id(job_id: str, ids: set[str]) -> str:
    close = difflib.get_close_matches(job_id, sorted(ids), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"--only: no job has the id {job_id!r}{hint}"
