"""Several submissions in one POST: each task's own outcome, whatever the others do."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hostile import HostileApi
from starlette.responses import Response
from submitting import submit_one

from avatarbatch.engine.submit_queue import SubmitQueue
from avatarbatch.errors import ConflictError, RejectedError, TransientError
from avatarbatch.runware.client import ClientSettings, RunwareClient
from avatarbatch.sandbox.faults import FaultSpec
from conftest import (
    FAST,
    SANDBOX_BASE,
    TEST_KEY,
    MakeClient,
    uploads,
    video_task,
    wait_finished,
)


@pytest.mark.parametrize("refusal", ["per_task", "whole"])
async def test_one_bad_task_in_a_batch_fails_alone(sandbox: MakeClient, refusal: str) -> None:
    # Runware documents per-task refusals; an API refusing the whole POST instead must not
    # fail the good tasks with it.
    client, engine = await sandbox(FAST.model_copy(update={"batch_refusal": refusal}))
    image, audio = await uploads(client)
    known = video_task(image, audio)
    await submit_one(client, known)
    good, bad = video_task(image, audio), video_task(image, audio, outputQuality=19)
    later = video_task(image, audio)
    outcomes = await client.submit_many([good, bad, known, later])
    assert outcomes[good["taskUUID"]] is None and outcomes[later["taskUUID"]] is None
    refused = outcomes[bad["taskUUID"]]
    assert isinstance(refused, RejectedError) and refused.parameter == "outputQuality"
    assert isinstance(outcomes[known["taskUUID"]], ConflictError)  # already there: poll it
    await wait_finished(client, later["taskUUID"])
    assert engine.ledger()["submissions"] == 3


async def test_a_batch_goes_in_posts_of_batch_size(sandbox: MakeClient) -> None:
    client, engine = await sandbox(FAST.model_copy(update={"workers": 16}), batch_size=4)
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(10)]
    outcomes = await client.submit_many(tasks)
    assert list(outcomes.values()) == [None] * 10
    assert engine.posts_with["videoInference"] == 3
    assert engine.ledger()["submissions"] == 10


async def test_a_failed_post_leaves_the_earlier_posts_outcomes_alone() -> None:
    # Three tasks, two per POST; the second POST's answer is lost (503 after the sandbox took
    # it). The first two were accepted and must say so: otherwise their jobs would be
    # treated as unsent and their budget released while they run and bill.
    api = HostileApi(FAST)
    answers = iter([None, Response("busy", 503)])
    api.lie("videoInference", lambda exchange: next(answers))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=SANDBOX_BASE)
    settings = ClientSettings(
        api_url=SANDBOX_BASE + FAST.path, api_key=TEST_KEY, batch_size=2, max_attempts=1
    )
    client = RunwareClient(http, settings)
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(3)]
    try:
        outcomes = list((await client.submit_many(tasks)).values())
    finally:
        await http.aclose()
        await api.engine.aclose()
    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], TransientError) and outcomes[2].task_uuid == tasks[2]["taskUUID"]


async def test_submissions_made_together_share_a_post(sandbox: MakeClient) -> None:
    client, engine = await sandbox(FAST.model_copy(update={"workers": 16}))
    image, audio = await uploads(client)
    queue = SubmitQueue(client)
    tasks = [video_task(image, audio) for _ in range(12)]
    tasks[5]["outputQuality"] = 19
    results = await asyncio.gather(*(queue.submit(t) for t in tasks), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType"] * 5 + ["RejectedError"] + [
        "NoneType"
    ] * 6
    assert queue.batches == engine.posts_with["videoInference"] == 1
    await queue.aclose()


async def test_a_failed_post_fails_each_of_its_submissions(sandbox: MakeClient) -> None:
    failing = FAST.model_copy(update={"faults": FaultSpec.parse("http500=1")})
    client, engine = await sandbox(failing, max_attempts=2)
    queue = SubmitQueue(client)
    tasks = [video_task("a" * 8, "b" * 8) for _ in range(3)]
    results = await asyncio.gather(*(queue.submit(t) for t in tasks), return_exceptions=True)
    assert all(isinstance(r, TransientError) for r in results)
    assert len({id(r) for r in results}) == 3  # each caller raises an error of its own
    assert engine.ledger()["submissions"] == 0


async def test_a_submission_cancelled_before_sending_is_never_sent(sandbox: MakeClient) -> None:
    slow = FAST.model_copy(update={"faults": FaultSpec.parse("slow=1"), "slow_seconds": 0.3})
    client, engine = await sandbox(slow)
    queue = SubmitQueue(client)
    image, audio = "0" * 8, "1" * 8  # never rendered: only what was sent matters
    first = asyncio.create_task(queue.submit(video_task(image, audio)))
    while not queue.batches:  # the first POST is out, and held by the slow fault
        await asyncio.sleep(0)
    withdrawn = video_task(image, audio)
    second = asyncio.create_task(queue.submit(withdrawn))
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert queue.batches == 1 and engine.requests["videoInference"] == 1
    await queue.aclose()


async def test_closing_the_queue_tells_every_waiting_caller_its_submission_is_uncertain(
    sandbox: MakeClient,
) -> None:
    slow = FAST.model_copy(update={"faults": FaultSpec.parse("slow=1"), "slow_seconds": 5})
    client, _ = await sandbox(slow)
    queue = SubmitQueue(client)
    in_flight = asyncio.create_task(queue.submit(video_task("0" * 8, "1" * 8)))
    while not queue.batches:
        await asyncio.sleep(0)
    queued = asyncio.create_task(queue.submit(video_task("0" * 8, "1" * 8)))
    await asyncio.sleep(0)
    await queue.aclose()
    for caller in (in_flight, queued):
        with pytest.raises(TransientError, match="interrupted"):
            await caller
