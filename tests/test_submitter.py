"""Several submissions in one POST: each task's own outcome, whatever the others do."""

from __future__ import annotations

import asyncio

import pytest

from avatarbatch.errors import ConflictError, RejectedError, TransientError
from avatarbatch.sandbox.faults import FaultSpec
from avatarbatch.submitter import SubmitQueue
from conftest import FAST, MakeClient, uploads, video_task, wait_finished


@pytest.mark.parametrize("refusal", ["per_task", "whole"])
async def test_one_bad_task_in_a_batch_fails_alone(sandbox: MakeClient, refusal: str) -> None:
    # Runware documents per-task refusals; an API refusing the whole POST instead must not
    # fail the good tasks with it.
    client, engine = await sandbox(FAST.model_copy(update={"batch_refusal": refusal}))
    image, audio = await uploads(client)
    known = video_task(image, audio)
    await client.submit(known)
    good, bad = video_task(image, audio), video_task(image, audio, outputQuality=19)
    outcomes = await client.submit_many([good, bad, known])
    assert outcomes[good["taskUUID"]] is None
    refused = outcomes[bad["taskUUID"]]
    assert isinstance(refused, RejectedError) and refused.parameter == "outputQuality"
    assert isinstance(outcomes[known["taskUUID"]], ConflictError)  # already there: poll it
    await wait_finished(client, good["taskUUID"])
    assert engine.ledger()["submissions"] == 2


async def test_a_batch_goes_in_posts_of_batch_size(sandbox: MakeClient) -> None:
    client, engine = await sandbox(FAST.model_copy(update={"workers": 16}), batch_size=4)
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(10)]
    outcomes = await client.submit_many(tasks)
    assert list(outcomes.values()) == [None] * 10
    assert engine.posts_with["videoInference"] == 3
    assert engine.ledger()["submissions"] == 10


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
    assert queue.posts == engine.posts_with["videoInference"] == 1
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
    while not queue.posts:  # the first POST is out, and held by the slow fault
        await asyncio.sleep(0)
    withdrawn = video_task(image, audio)
    second = asyncio.create_task(queue.submit(withdrawn))
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert queue.posts == 1 and engine.requests["videoInference"] == 1
    await queue.aclose()
