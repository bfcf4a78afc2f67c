"""Contract tests: the Runware client against the in-process sandbox, over the real protocol."""

from __future__ import annotations

import contextlib
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from submitting import submit_one

from avatarbatch import catalog
from avatarbatch.errors import (
    ApiError,
    AuthError,
    ConflictError,
    CreditError,
    RejectedError,
    TransientError,
)
from avatarbatch.runware.client import ClientSettings, RunwareClient
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec
from conftest import (
    FAST,
    PORTRAIT,
    TEST_KEY,
    MakeClient,
    new_uuid,
    uploads,
    video_task,
    wait_finished,
    wav_bytes,
)


def faulty(spec: str, **overrides: Any) -> SandboxConfig:
    return FAST.model_copy(update={"faults": FaultSpec.parse(spec), "retry_after": 0, **overrides})


@pytest.mark.parametrize("model", [catalog.STANDARD, catalog.PRO])
@pytest.mark.parametrize("output_format", ["MP4", "WEBM", "MOV"])
async def test_upload_submit_poll_download(
    sandbox: MakeClient, tmp_path: Path, model: catalog.AvatarModel, output_format: str
) -> None:
    client, engine = await sandbox()
    image, audio = await uploads(client)
    task = video_task(image, audio, model=model.id, outputFormat=output_format)
    await submit_one(client, task)
    state = await wait_finished(client, task["taskUUID"])
    (result,) = state.results
    assert Decimal(str(result.cost)) == model.cost(5.486)
    assert result.video_url.endswith("." + output_format.lower())
    download = await client.download(result.video_url, tmp_path / "video.part")
    assert download.size == download.path.stat().st_size > 0
    assert engine.ledger()["total_cost"] == result.cost


async def test_several_results_are_cumulative_and_distinct(sandbox: MakeClient) -> None:
    client, engine = await sandbox()
    image, audio = await uploads(client)
    task = video_task(image, audio, numberResults=3)
    await submit_one(client, task)
    state = await wait_finished(client, task["taskUUID"], results=3)
    assert len({r.video_uuid for r in state.results}) == 3
    assert len({r.seed for r in state.results}) == 3
    assert engine.ledger()["tasks"][0]["results"] == 3


async def test_results_of_a_running_task_are_processing(sandbox: MakeClient) -> None:
    client, _ = await sandbox(FAST.model_copy(update={"fixed_latency": 30}))
    image, audio = await uploads(client)
    task = video_task(image, audio, numberResults=2)
    await submit_one(client, task)
    state = (await client.poll([task["taskUUID"]]))[task["taskUUID"]]
    assert state.processing == 2 and not state.results and not state.finished(2)


async def test_two_hundred_tasks_are_polled_in_four_posts(sandbox: MakeClient) -> None:
    client, engine = await sandbox(FAST.model_copy(update={"workers": 64}))
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(200)]
    for task in tasks:
        await submit_one(client, task)
    before = engine.requests["http_posts"]
    states = await client.poll(t["taskUUID"] for t in tasks)
    assert len(states) == 200
    assert engine.requests["http_posts"] - before == 4  # batches of 50


async def test_unknown_task_is_reported_not_found(sandbox: MakeClient) -> None:
    client, _ = await sandbox()
    unknown = new_uuid()
    state = (await client.poll([unknown]))[unknown]
    assert state.not_found and state.finished(1)
    assert (
        isinstance(state.errors[0], RejectedError)
        and state.errors[0].code == "taskFailedOrNotFound"
    )


async def test_reused_task_uuid_is_a_conflict_and_billed_once(sandbox: MakeClient) -> None:
    client, engine = await sandbox()
    image, audio = await uploads(client)
    task = video_task(image, audio)
    await submit_one(client, task)
    with pytest.raises(ConflictError) as caught:
        await submit_one(client, task)
    assert caught.value.code == "conflictTaskUUID"
    await wait_finished(client, task["taskUUID"])
    ledger = engine.ledger()
    assert ledger["submissions"] == 1 and ledger["conflicts"] == 1 and len(ledger["tasks"]) == 1


async def test_wrong_key_is_an_auth_error_and_not_retried(sandbox: MakeClient) -> None:
    client, engine = await sandbox(FAST.model_copy(update={"api_key": "right"}), api_key="wrong")
    with pytest.raises(AuthError) as caught:
        await client.upload_image(PORTRAIT, "image/png", new_uuid())
    assert caught.value.status == 401 and caught.value.code == "invalidApiKey"
    assert engine.requests["http_posts"] == 1
    assert "wrong" not in str(caught.value) and "wrong" not in repr(caught.value)


async def test_exhausted_balance_is_a_credit_error(sandbox: MakeClient) -> None:
    client, _ = await sandbox(FAST.model_copy(update={"balance": 0.0}))
    image, audio = await uploads(client)
    with pytest.raises(CreditError) as caught:
        await submit_one(client, video_task(image, audio))
    assert caught.value.status == 402


@pytest.mark.parametrize(
    ("fields", "code", "parameter"),
    [
        ({"numberResults": 5}, "invalidNumberResults", "numberResults"),
        ({"outputQuality": 19}, "invalidOutputQuality", "outputQuality"),
        ({"model": "klingai:avatar@9"}, "unknownModel", "model"),
        ({"positivePrompt": ""}, "invalidPositivePrompt", "positivePrompt"),
        ({"seed": 4}, "unsupportedParameter", "seed"),
    ],
)
async def test_invalid_submission_is_rejected_with_its_parameter(
    sandbox: MakeClient, fields: dict[str, Any], code: str, parameter: str
) -> None:
    client, engine = await sandbox()
    image, audio = await uploads(client)
    with pytest.raises(RejectedError) as caught:
        await submit_one(client, video_task(image, audio, **fields))
    assert (caught.value.code, caught.value.parameter, caught.value.status) == (
        code,
        parameter,
        400,
    )
    assert engine.ledger()["submissions"] == 0


async def test_kling_limits_fail_the_generation(sandbox: MakeClient) -> None:
    client, engine = await sandbox()
    image, _ = await uploads(client)
    short = await client.upload_media(wav_bytes(1.5), "audio/wav", new_uuid())
    task = video_task(image, short.uuid)
    await submit_one(client, task)
    state = await wait_finished(client, task["taskUUID"])
    (error,) = state.errors
    assert isinstance(error, RejectedError) and error.code == "invalidAudio"
    assert engine.ledger()["total_cost"] == 0


async def test_failed_generation_is_transient_and_not_billed(sandbox: MakeClient) -> None:
    client, engine = await sandbox(faulty("task_error=1"))
    image, audio = await uploads(client)
    task = video_task(image, audio)
    await submit_one(client, task)
    state = await wait_finished(client, task["taskUUID"])
    (error,) = state.errors
    assert isinstance(error, TransientError) and error.code in ("timeoutProvider", "providerError")
    assert engine.ledger()["tasks"][0]["cost"] == 0


@pytest.mark.parametrize("spec", ["http500=0.5", "http429=0.5", "reset=0.5"])
async def test_transient_faults_are_retried_to_success(sandbox: MakeClient, spec: str) -> None:
    # Faults are drawn per task UUID, and these are random: at a 50% rate one of the ~50
    # requests failed 12 times running in about 1% of runs. 40 attempts make that 1e-10;
    # the backoff here is milliseconds, so extra attempts cost nothing.
    client, engine = await sandbox(faulty(spec, seed=3), max_attempts=40)
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(10)]
    for task in tasks:
        # ConflictError: an earlier attempt landed but its answer was lost; the task exists
        with contextlib.suppress(ConflictError):
            await submit_one(client, task)
    for task in tasks:
        await wait_finished(client, task["taskUUID"])
    ledger = engine.ledger()
    assert ledger["submissions"] == 10 and all(t["results"] == 1 for t in ledger["tasks"])
    assert sum(engine.faults.injected.values()) > 0


@pytest.mark.parametrize(
    ("spec", "error_type", "status"),
    [
        ("http500=1", TransientError, None),
        ("http429=1", TransientError, 429),
        ("reset=1", TransientError, None),
    ],
)
async def test_each_fault_has_its_category_when_retries_run_out(
    sandbox: MakeClient, spec: str, error_type: type[ApiError], status: int | None
) -> None:
    client, _ = await sandbox(faulty(spec), max_attempts=2)
    with pytest.raises(error_type) as caught:
        await client.upload_image(PORTRAIT, "image/png", new_uuid())
    if status is not None:
        assert caught.value.status == status


async def test_lost_answer_to_a_submit_turns_into_a_conflict(sandbox: MakeClient) -> None:
    # seed 1 plays the "processed, then dropped" variant for this fault key (see faults.choice)
    for seed in range(20):
        client, engine = await sandbox(faulty("reset=1", seed=seed), max_attempts=1)
        task = video_task(new_uuid(), new_uuid())
        engine.faults.spec.rates["reset"] = 0.0
        image, audio = await uploads(client)
        engine.faults.spec.rates["reset"] = 1.0
        task["inputs"] = {"image": image, "audio": audio}
        with pytest.raises(TransientError):
            await submit_one(client, task)
        if task["taskUUID"] in engine.tasks:
            engine.faults.spec.rates["reset"] = 0.0
            with pytest.raises(ConflictError):
                await submit_one(client, task)
            assert engine.ledger()["submissions"] == 1
            return
    pytest.fail("no seed produced the ambiguous reset")


async def test_truncated_download_is_retried_then_reported(
    sandbox: MakeClient, tmp_path: Path
) -> None:
    client, engine = await sandbox(faulty("truncate=1"), max_attempts=3)
    image, audio = await uploads(client)
    task = video_task(image, audio)
    await submit_one(client, task)
    state = await wait_finished(client, task["taskUUID"])
    target = tmp_path / "v.part"
    with pytest.raises(TransientError, match="truncated"):
        await client.download(state.results[0].video_url, target)
    assert not target.exists()
    assert engine.requests["downloads"] == 3


async def test_expired_result_is_rejected(sandbox: MakeClient, tmp_path: Path) -> None:
    client, engine = await sandbox()
    image, audio = await uploads(client)
    task = video_task(image, audio, ttl=60)
    await submit_one(client, task)
    state = await wait_finished(client, task["taskUUID"])
    for result in engine.tasks[task["taskUUID"]].results:
        result.expires_at = 0  # as if the ttl had passed
    with pytest.raises(RejectedError, match="expired"):
        await client.download(state.results[0].video_url, tmp_path / "v.part")


# --- answers no sandbox would give: byte-level cases through a MockTransport ---------------------


def mock_client(handler: Any, **settings: Any) -> RunwareClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    values = {
        "api_url": "http://api.test/v1",
        "api_key": TEST_KEY,
        "max_attempts": 2,
        "backoff_initial": 0.001,
        "backoff_max": 0.002,
        **settings,
    }
    return RunwareClient(http, ClientSettings(**values))


@pytest.mark.parametrize(
    ("status", "body", "content_type", "error_type"),
    [
        (200, b"<html>hello</html>", "text/html", TransientError),
        (200, b'{"data": [', "application/json", TransientError),
        (200, b'{"data": {"not": "a list"}}', "application/json", TransientError),
        (200, b'"just a string"', "application/json", TransientError),
        (200, b'{"data": []}', "application/json", TransientError),
        (502, b"<html>Bad Gateway</html>", "text/html", TransientError),
        (401, b"", "application/json", AuthError),
        (403, b"{}", "application/json", AuthError),
        (402, b"{}", "application/json", CreditError),
        (
            400,
            b'{"error": {"code": "invalidModel", "message": "no"}}',
            "application/json",
            RejectedError,
        ),
        (
            400,
            b'[{"code": "insufficientCredits", "message": "pay"}]',
            "application/json",
            CreditError,
        ),
        (418, b"teapot", "text/plain", RejectedError),
    ],
)
async def test_odd_answers_are_classified(
    status: int, body: bytes, content_type: str, error_type: type[ApiError]
) -> None:
    client = mock_client(
        lambda request: httpx.Response(status, content=body, headers={"content-type": content_type})
    )
    with pytest.raises(error_type):
        await client.upload_image(b"x", "image/png", new_uuid())


async def test_unknown_status_counts_as_still_running_and_bad_urls_fail() -> None:
    first, second = new_uuid(), new_uuid()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "data": [
                    {"taskType": "videoInference", "taskUUID": first, "status": "scheduled"},
                    {
                        "taskType": "videoInference",
                        "taskUUID": second,
                        "status": "success",
                        "videoUUID": new_uuid(),
                        "videoURL": "file:///etc/passwd",
                    },
                ]
            },
        )

    states = await mock_client(handler).poll([first, second])
    assert states[first].processing == 1 and not states[first].finished(1)
    assert states[second].errors and "not an http(s) URL" in str(states[second].errors[0])


async def test_nested_error_shape_in_data_is_a_failure() -> None:
    task = new_uuid()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "data": [
                    {
                        "taskUUID": task,
                        "status": "error",
                        "error": {"code": "timeoutProvider", "message": "slow"},
                    }
                ]
            },
        )

    state = (await mock_client(handler).poll([task]))[task]
    assert isinstance(state.errors[0], TransientError) and state.errors[0].code == "timeoutProvider"


async def test_retry_after_is_passed_to_the_gate() -> None:
    seen: list[float | None] = []

    class Gate:
        async def acquire(self) -> None:
            return None

        def throttled(self, retry_after: float | None) -> None:
            seen.append(retry_after)

    http = httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(
                429, headers={"Retry-After": "0"}, json={"errors": [{"code": "rateLimitExceeded"}]}
            )
        )
    )
    client = RunwareClient(
        http,
        ClientSettings(
            api_url="http://api.test/v1",
            api_key=TEST_KEY,
            max_attempts=3,
            backoff_initial=0.001,
            backoff_max=0.002,
        ),
        gate=Gate(),
    )
    with pytest.raises(TransientError):
        await client.upload_image(b"x", "image/png", new_uuid())
    assert seen == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("declared", [True, False])
async def test_download_never_sends_the_api_key_and_caps_size(
    tmp_path: Path, declared: bool
) -> None:
    headers: list[httpx.Headers] = []

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 700

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        if declared:
            return httpx.Response(200, content=b"x" * 5000)
        return httpx.Response(200, content=chunks())  # streamed: no length up front

    client = mock_client(handler, max_download_bytes=1000)
    with pytest.raises(RejectedError, match="over the limit" if declared else "exceeded"):
        await client.download("http://cdn.test/v.mp4", tmp_path / "v.part")
    assert all("authorization" not in h for h in headers)
    assert not (tmp_path / "v.part").exists()


async def test_redirect_loop_is_rejected(tmp_path: Path) -> None:
    client = mock_client(
        lambda request: httpx.Response(302, headers={"Location": str(request.url)})
    )
    with pytest.raises(RejectedError, match="redirects in a loop"):
        await client.download("http://cdn.test/v.mp4", tmp_path / "v.part")


def test_the_key_never_shows_in_reprs() -> None:
    settings = ClientSettings(api_url="http://api.test/v1", api_key=TEST_KEY)
    client = RunwareClient(httpx.AsyncClient(), settings)
    assert TEST_KEY not in repr(settings) and TEST_KEY not in str(settings)
    assert TEST_KEY not in repr(client)


async def test_the_key_never_reaches_a_log_line_or_error(
    sandbox: MakeClient, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    secret = "sk-" + "5ecret" * 4
    client, _ = await sandbox(
        faulty("http500=0.3,http429=0.3,reset=0.3,task_error=0.5", seed=11),
        api_key=secret,
        max_attempts=8,
    )
    messages: list[str] = []
    try:
        image, audio = await uploads(client)
        task = video_task(image, audio)
        await submit_one(client, task)
        state = await wait_finished(client, task["taskUUID"])
        messages += [str(e) + repr(e) for e in state.errors]
        if state.results:
            await client.download(state.results[0].video_url, tmp_path / "v.part")
    except ApiError as exc:
        messages.append(str(exc) + repr(exc))
    bad, _ = await sandbox(FAST.model_copy(update={"api_key": "other"}), api_key=secret)
    with pytest.raises(AuthError) as caught:
        await bad.upload_image(PORTRAIT, "image/png", new_uuid())
    messages.append(str(caught.value) + repr(caught.value))
    assert caplog.records
    assert secret not in caplog.text and all(secret not in m for m in messages)


async def test_tasks_beyond_the_render_slots_wait_their_turn(sandbox: MakeClient) -> None:
    # The render clock starts when a slot takes the task, not when it was accepted: with one
    # slot, the third of three 0.3 s renders ends after about 0.9 s.
    client, _ = await sandbox(FAST.model_copy(update={"fixed_latency": 0.3, "workers": 1}))
    image, audio = await uploads(client)
    tasks = [video_task(image, audio) for _ in range(3)]
    started = time.monotonic()
    assert all(outcome is None for outcome in (await client.submit_many(tasks)).values())
    await wait_finished(client, tasks[2]["taskUUID"])
    assert time.monotonic() - started >= 0.85
