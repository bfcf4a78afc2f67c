"""The poller against the in-process sandbox: tasks are found soon after they end, in few POSTs."""

from __future__ import annotations

import asyncio
import time

from avatarbatch.engine.poller import Poller, PollTiming
from avatarbatch.runware.client import RunwareClient
from conftest import FAST, PORTRAIT, MakeClient, new_uuid, uploads, video_task, wav_bytes


async def submit_watched(
    client: RunwareClient, poller: Poller, image: str, audio: str, seconds: float
) -> tuple[float, asyncio.Future[object]]:
    task = video_task(image, audio)
    await client.submit(task)
    return time.monotonic(), poller.watch(task["taskUUID"], 1, seconds)  # type: ignore[return-value]


async def test_waves_of_tasks_are_found_soon_after_they_end(sandbox: MakeClient) -> None:
    render = 0.4
    client, _ = await sandbox(FAST.model_copy(update={"fixed_latency": render, "workers": 8}))
    image, audio = await uploads(client)
    poller = Poller(client, PollTiming(initial=0.1, blind_min=0.1))
    waits: list[list[float]] = []
    polls: list[int] = []
    for _ in range(4):
        before = poller.polls
        watched = [await submit_watched(client, poller, image, audio, 5.5) for _ in range(4)]
        wave = []
        for started, future in watched:
            await future
            wave.append(time.monotonic() - started)
        waits.append(wave)
        polls.append(poller.polls - before)
    await poller.aclose()
    # Once a render has been seen, the next are checked just before their expected end and
    # then every 50 ms: each is found within ~0.1 s of it, and a wave costs a few POSTs.
    assert max(max(wave) for wave in waits[1:]) < render + 0.25, waits
    assert max(polls[1:]) <= 4, polls


async def test_a_task_waiting_blind_follows_what_another_one_taught(sandbox: MakeClient) -> None:
    # Renders take 0.1 s per audio second here. Both tasks start blind (nothing learnt), with
    # re-checks 2 s apart; the short one is found on the first check, and from what it taught
    # the long one is checked near its end instead of 2 s later.
    config = FAST.model_copy(update={"fixed_latency": 0, "latency": 0.1})
    client, _ = await sandbox(config)
    image = (await client.upload_image(PORTRAIT, "image/png", new_uuid())).uuid
    short = (await client.upload_media(wav_bytes(3), "audio/wav", new_uuid())).uuid
    long = (await client.upload_media(wav_bytes(9), "audio/wav", new_uuid())).uuid
    poller = Poller(client, PollTiming(initial=0.5, blind_min=2.0))
    _, short_done = await submit_watched(client, poller, image, short, 3.0)
    long_started, long_done = await submit_watched(client, poller, image, long, 9.0)
    await short_done
    await long_done
    waited = time.monotonic() - long_started
    await poller.aclose()
    assert 0.9 <= waited < 2.0, waited  # the render takes 0.9 s; blind, it would be 2.5 s
