"""Tasks no job drives any more, followed to their end so that what they cost is booked.

A task whose spec changed, or whose row was removed, while it rendered is still billed by the
provider: the ledger must say so, or the reports would show less than was paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal

from avatarbatch.engine.budget import billed_cost
from avatarbatch.engine.context import RunContext
from avatarbatch.errors import ConflictError, RejectedError, TransientError
from avatarbatch.report.data import money
from avatarbatch.state.store import StrayTask, TaskEntry, TaskStatus

log = logging.getLogger("avatarbatch.run")


async def settle_stray(ctx: RunContext, task: StrayTask) -> None:
    """Wait for a stray task and book what it cost.

    One still `submitting` may never have landed: it holds no render slot, and only when
    it stays unknown through the not-found grace period is it booked as never billed (a
    registration lag must not pass for "it never arrived").
    """
    uuid = task.task_uuid
    landed = task.status is not TaskStatus.SUBMITTING
    async with ctx.in_flight if landed else contextlib.nullcontext():
        # The ledger keeps no model per task (the job's may have changed since): the
        # poller's unknown-model learner times it.
        waiting = ctx.poller.watch(uuid, task.number_results, task.audio_seconds)
        try:  # an error that stops the run is the runner's to judge, as for any job
            async with asyncio.timeout(ctx.settings.job_timeout):
                state = await waiting
        except (TimeoutError, TransientError, RejectedError, ConflictError) as exc:
            ctx.poller.forget(uuid)
            log.warning(
                "earlier task %s of %s: %s; the next run asks again", uuid, task.job_id, exc
            )
            return
    if state.unknown and not landed:
        gone = TaskEntry(uuid, TaskStatus.REFUSED, billed_cost=0.0)
        await ctx.settle(task.job_id, gone)
        return
    per_result = Decimal(str(task.estimated_cost or 0.0)) / task.number_results
    cost, source = billed_cost(state.results, per_result)
    status = TaskStatus.BILLED if state.results else TaskStatus.UNBILLED
    entry = TaskEntry(uuid, status, billed_cost=float(cost), cost_source=source)
    await ctx.settle(task.job_id, entry)
    log.info("earlier task %s of %s ended: %s booked", uuid, task.job_id, money(cost))
