"""`avatarbatch check`: the free probe of the API's undocumented corners, and its saved file.

The findings are checked against the sandbox on loopback (the real protocol over real HTTP),
in its default and strict profiles; the shapes the sandbox never sends (an empty answer, an
item for an unknown task, a wrong URL, an outage) against a scripted transport.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from avatarbatch.errors import AvatarBatchError, CreditError, TransientError, UsageError
from avatarbatch.runware import check
from avatarbatch.runware.check import CheckError, CheckResult
from avatarbatch.runware.client import USER_AGENT, ClientSettings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox

KEY = "check-key-Hq72xLw9"
FAKE_URL = "http://api.test/v1"


def sandbox_config(**overrides: Any) -> SandboxConfig:
    return SandboxConfig(latency=0, fixed_latency=0.05, render="stub", api_key=KEY, **overrides)


@pytest.fixture(scope="module")
def default_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(sandbox_config()) as running:
        yield running


def settings(api_url: str = FAKE_URL, key: str = KEY) -> ClientSettings:
    # Tiny backoffs: the retry tests wait for nothing.
    return ClientSettings(
        api_url=api_url, api_key=SecretStr(key), backoff_initial=0.001, backoff_max=0.002
    )


Handler = Callable[[list[dict[str, Any]]], httpx.Response]


class Scripted:
    """A transport that answers each POST through `handler` and records what was sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.bodies: list[list[dict[str, Any]]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        self.headers.append(request.headers)
        return self.handler(body)

    async def check(self) -> CheckResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(self)) as http:
            return await check.run_check(settings(), http=http)


def answer(status: int = 200, **body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


def is_auth(tasks: list[dict[str, Any]]) -> bool:
    return bool(tasks[0]["taskType"] == "authentication")


# --- against the sandbox ---------------------------------------------------------------------


async def test_right_key_learns_the_default_sandbox(default_sandbox: RunningSandbox) -> None:
    before = time.time()
    result = await check.run_check(settings(default_sandbox.api_url))
    assert result.auth == "ok"
    assert result.batched_polls is True
    # The default sandbox answers an unknown UUID as Runware's SDK expects: an error tied to it.
    assert result.unknown_task == "error"
    assert result.unknown_task_detail == "taskFailedOrNotFound"
    assert result.round_trip_ms is not None and result.round_trip_ms > 0
    assert result.api_url == default_sandbox.api_url
    assert before <= result.checked_at <= time.time()
    # All free: nothing was submitted, rendered or billed.
    ledger = default_sandbox.ledger()
    assert (ledger["submissions"], ledger["total_cost"]) == (0, 0)


async def test_wrong_key_is_refused_and_nothing_else_is_asked(
    default_sandbox: RunningSandbox,
) -> None:
    posts_before = default_sandbox.stats()["requests"]["http_posts"]
    result = await check.run_check(settings(default_sandbox.api_url, key="wrong-key-Pp0d1e"))
    assert result.auth == "refused"
    assert result.batched_polls is None
    assert result.unknown_task is None
    assert result.round_trip_ms is not None and result.round_trip_ms > 0
    assert default_sandbox.stats()["requests"]["http_posts"] == posts_before + 1
    assert "key: refused" in "\n".join(check.summary_lines(result))


async def test_strict_sandbox_refuses_batched_polls() -> None:
    with running_sandbox(sandbox_config(profile="strict")) as strict:
        result = await check.run_check(settings(strict.api_url))
    assert result.auth == "ok"
    assert result.batched_polls is False
    assert result.unknown_task == "error"  # one task alone is still answered per task
    lines = check.summary_lines(result)
    assert "several getResponse tasks in one request: refused" in "\n".join(lines)


async def test_what_the_check_sends(default_sandbox: RunningSandbox) -> None:
    """An authentication task, then two unknown UUIDs in one POST, then one alone."""
    sent: list[list[dict[str, Any]]] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["user-agent"] == USER_AGENT

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        await check.run_check(settings(default_sandbox.api_url), http=http)
    assert [[t["taskType"] for t in body] for body in sent] == [
        ["authentication"],
        ["getResponse", "getResponse"],
        ["getResponse"],
    ]
    uuids = [t["taskUUID"] for body in sent[1:] for t in body]
    assert len(set(uuids)) == 3  # fresh random UUIDs, never a real task


# --- the saved check -------------------------------------------------------------------------


async def test_save_and_load_fresh_round_trip(
    default_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    result = await check.run_check(settings(default_sandbox.api_url))
    path = check.save(result, tmp_path / "state")
    assert path == tmp_path / "state" / "check.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert KEY not in text
    assert json.loads(text) == result.as_json()
    assert check.load_fresh(tmp_path / "state", default_sandbox.api_url) == result
    assert [p.name for p in path.parent.iterdir()] == ["check.json"]  # no temporary left


def saved(tmp_path: Path, **fields: Any) -> CheckResult:
    values: dict[str, Any] = {
        "api_url": FAKE_URL,
        "auth": "ok",
        "batched_polls": True,
        "unknown_task": "error",
        "unknown_task_detail": "taskFailedOrNotFound",
        "round_trip_ms": 80.0,
        "checked_at": 1_000_000.0,
        **fields,
    }
    result = CheckResult(**values)
    check.save(result, tmp_path)
    return result


def test_load_fresh_ages_out(tmp_path: Path) -> None:
    result = saved(tmp_path)
    day = 24 * 3600
    assert check.load_fresh(tmp_path, FAKE_URL, now=result.checked_at + day) == result
    assert check.load_fresh(tmp_path, FAKE_URL, now=result.checked_at + day + 1) is None
    assert check.load_fresh(tmp_path, FAKE_URL, max_age=60, now=result.checked_at + 61) is None
    # Dated in the future (a clock moved back, a copied file): not trusted.
    assert check.load_fresh(tmp_path, FAKE_URL, now=result.checked_at - 3600) is None


def test_load_fresh_is_for_one_api_only(tmp_path: Path) -> None:
    result = saved(tmp_path)
    assert check.load_fresh(tmp_path, "https://api.runware.ai/v1", now=result.checked_at) is None


def test_load_fresh_asks_a_refused_key_again(tmp_path: Path) -> None:
    result = saved(tmp_path, auth="refused", batched_polls=None, unknown_task=None)
    assert check.load_fresh(tmp_path, FAKE_URL, now=result.checked_at) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", b'{"api_url": "http://api.test/v1"}', b"\xff\xfe", b"null"],
)
def test_load_fresh_ignores_unreadable_files(tmp_path: Path, content: bytes) -> None:
    assert check.load_fresh(tmp_path, FAKE_URL) is None  # absent
    (tmp_path / "check.json").write_bytes(content)
    assert check.load_fresh(tmp_path, FAKE_URL) is None


def test_save_replaces_and_keeps_0600(tmp_path: Path) -> None:
    target = tmp_path / "check.json"
    target.write_text("old")
    target.chmod(0o644)
    result = saved(tmp_path)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert CheckResult.model_validate_json(target.read_text()) == result


def test_save_failure_is_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AvatarBatchError, match="cannot save the check"):
        check.save(saved(tmp_path), blocker / "state")


def test_default_folder() -> None:
    assert check.default_folder({"XDG_CACHE_HOME": "/xdg/cache"}) == Path("/xdg/cache/avatarbatch")
    home_cache = Path.home() / ".cache" / "avatarbatch"
    assert check.default_folder({}) == home_cache
    # The XDG spec: a relative path in the variable is invalid and ignored.
    assert check.default_folder({"XDG_CACHE_HOME": "relative/cache"}) == home_cache


# --- shapes the sandbox does not send --------------------------------------------------------


async def test_unknown_task_answered_with_nothing() -> None:
    scripted = Scripted(lambda tasks: answer(data=[]))
    result = await scripted.check()
    assert (result.auth, result.batched_polls, result.unknown_task) == ("ok", True, "empty")
    assert "an empty answer" in "\n".join(check.summary_lines(result))


async def test_unknown_task_answered_with_an_item() -> None:
    def handler(tasks: list[dict[str, Any]]) -> httpx.Response:
        if is_auth(tasks):
            return answer(data=[{"taskType": "authentication"}])
        return answer(
            data=[
                {"taskType": "getResponse", "taskUUID": t["taskUUID"], "status": "processing"}
                for t in tasks
            ]
        )

    result = await Scripted(handler).check()
    assert (result.unknown_task, result.unknown_task_detail) == ("item", "processing")
    assert result.batched_polls is True


async def test_errors_that_never_name_a_task_cannot_tell_batching() -> None:
    """An API that names no task in any error: a refused batch looks like two unknown tasks."""

    def handler(tasks: list[dict[str, Any]]) -> httpx.Response:
        if is_auth(tasks):
            return answer(data=[])
        return answer(400, errors=[{"code": "taskFailedOrNotFound", "message": "no"}])

    result = await Scripted(handler).check()
    assert result.unknown_task == "error-without-uuid"
    assert result.unknown_task_detail == "taskFailedOrNotFound"
    assert result.batched_polls is None
    assert "could not tell" in "\n".join(check.summary_lines(result))


async def test_a_batch_refused_as_a_whole_with_200() -> None:
    """An error naming no task refuses the batch even under a 2xx: the runner would raise it."""

    def handler(tasks: list[dict[str, Any]]) -> httpx.Response:
        if len(tasks) > 1:
            return answer(errors=[{"code": "unsupportedBatch", "message": "one at a time"}])
        return answer(data=[])

    result = await Scripted(handler).check()
    assert (result.batched_polls, result.unknown_task) == (False, "empty")


async def test_bare_http_error_for_an_unknown_task() -> None:
    def handler(tasks: list[dict[str, Any]]) -> httpx.Response:
        if is_auth(tasks):
            return answer(data=[])
        return httpx.Response(404)

    result = await Scripted(handler).check()
    assert result.unknown_task == "http-404"
    assert result.batched_polls is None  # same bare 404 either way: nothing to compare
    assert "HTTP 404 with no error detail" in "\n".join(check.summary_lines(result))


async def test_authentication_task_not_taken_falls_back_to_getresponse() -> None:
    def handler(tasks: list[dict[str, Any]]) -> httpx.Response:
        if is_auth(tasks):
            return answer(400, errors=[{"code": "invalidTaskType", "message": "not over REST"}])
        return answer(
            400,
            errors=[{"code": "taskFailedOrNotFound", "taskUUID": t["taskUUID"]} for t in tasks],
        )

    scripted = Scripted(handler)
    result = await scripted.check()
    assert (result.auth, result.batched_polls, result.unknown_task) == ("ok", True, "error")
    # The fallback getResponse is the single-task probe too: no request is made twice.
    assert [len(body) for body in scripted.bodies] == [1, 1, 2]


async def test_refusal_seen_by_the_fallback() -> None:
    def handler(tasks: list[dict[str, Any]]) -> httpx.Response:
        if is_auth(tasks):
            return answer(400, errors=[{"code": "invalidTaskType"}])
        return answer(403, errors=[{"code": "permissionDenied"}])

    result = await Scripted(handler).check()
    assert (result.auth, result.batched_polls, result.unknown_task) == ("refused", None, None)


async def test_key_code_refuses_even_with_200() -> None:
    scripted = Scripted(lambda tasks: answer(errors=[{"code": "invalidApiKey"}]))
    assert (await scripted.check()).auth == "refused"


async def test_wrong_url_is_an_error_not_an_accepted_key() -> None:
    page = httpx.Response(404, html="<html>Not Found</html>")
    with pytest.raises(CheckError, match="is the API URL right"):
        await Scripted(lambda tasks: page).check()


async def test_redirect_names_the_address() -> None:
    moved = httpx.Response(301, headers={"location": "https://api.example/v1"})
    with pytest.raises(UsageError, match=r"redirects \(HTTP 301\) to https://api.example/v1"):
        await Scripted(lambda tasks: moved).check()


async def test_lasting_outage_fails_after_a_few_attempts() -> None:
    scripted = Scripted(lambda tasks: answer(503, errors=[{"code": "serviceUnavailable"}]))
    with pytest.raises(TransientError, match="HTTP 503 to the authentication check") as caught:
        await scripted.check()
    assert len(scripted.bodies) == check.MAX_ATTEMPTS
    assert KEY not in str(caught.value)


async def test_a_passing_hiccup_is_retried() -> None:
    statuses = iter([502, 200, 200, 200])
    scripted = Scripted(lambda tasks: answer(next(statuses), data=[]))
    result = await scripted.check()
    assert result.auth == "ok" and len(scripted.bodies) == 4


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "could not reach"),
        (httpx.ReadTimeout("timed out"), "got no answer"),
    ],
)
async def test_network_failure_is_a_message(error: Exception, words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(TransientError, match=words) as caught:
            await check.run_check(settings(), http=http)
    assert FAKE_URL in str(caught.value)
    assert KEY not in str(caught.value)
    assert caught.value.exit_code == 1


async def test_unusable_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot be used"):
        await check.run_check(settings(api_url="ftp://api.test/v1"))


async def test_no_credit_is_said_so() -> None:
    with pytest.raises(CreditError, match="cannot pay") as caught:
        await Scripted(lambda tasks: answer(402, errors=[{"code": "insufficientCredits"}])).check()
    assert caught.value.exit_code == 4


async def test_an_echoed_key_stays_out_of_the_result(tmp_path: Path) -> None:
    """A server quoting the key in an error code: the stored detail hides it."""

    def handler(tasks: list[dict[str, Any]]) -> httpx.Response:
        if is_auth(tasks):
            return answer(data=[])
        errors = [{"code": f"unknown:{KEY}", "taskUUID": t["taskUUID"]} for t in tasks]
        return answer(400, errors=errors)

    result = await Scripted(handler).check()
    assert result.unknown_task == "error"
    assert KEY not in (result.unknown_task_detail or "")
    assert KEY not in check.save(result, tmp_path).read_text()
    assert KEY not in "\n".join(check.summary_lines(result))


# --- the summary -----------------------------------------------------------------------------


def test_summary_lines() -> None:
    result = CheckResult(
        api_url=FAKE_URL,
        auth="ok",
        batched_polls=True,
        unknown_task="error",
        unknown_task_detail="taskFailedOrNotFound",
        round_trip_ms=85.4,
        checked_at=0.0,
    )
    assert check.summary_lines(result) == [
        f"API: {FAKE_URL}",
        "key: accepted",
        "several getResponse tasks in one request: accepted (the run batches its polls)",
        "an unknown task is answered with: an error naming the task (taskFailedOrNotFound), "
        "which the run reads as 'not found'",
        "round trip: 85 ms",
        "checked at: 1970-01-01 00:00:00 UTC",
    ]
    odd = result.model_copy(update={"batched_polls": False, "unknown_task_detail": "somethingElse"})
    lines = check.summary_lines(odd)
    assert "refused (the run will poll one task per request)" in lines[2]
    assert "which the run does not read as 'not found'" in lines[3]


# --- the command, and the run that reads its answer ------------------------------------------


def test_the_check_command_against_both_profiles_and_a_wrong_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from avatarbatch.cli.commands import app

    cli = CliRunner()
    for profile, batched in (("default", True), ("strict", False)):
        with running_sandbox(sandbox_config(profile=profile)) as sandbox:
            env = {"RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": sandbox.api_url}
            result = cli.invoke(app, ["check", "--json"], env=env)
            assert result.exit_code == 0, result.output
            found = json.loads(result.stdout)
            assert found["auth"] == "ok" and found["batched_polls"] is batched
            assert found["unknown_task"] and found["round_trip_ms"] > 0
            text = cli.invoke(app, ["check"], env=env)
            assert "key: accepted" in text.stdout
            wrong = cli.invoke(
                app, ["check", "--json"], env={**env, "RUNWARE_API_KEY": "nope-1234567"}
            )
            assert wrong.exit_code == 4 and json.loads(wrong.stdout)["auth"] == "refused"
            assert "nope-1234567" not in wrong.output


def test_a_run_reads_a_fresh_check_and_polls_one_task_per_request(
    tmp_path: Path, media: Path
) -> None:
    from typer.testing import CliRunner

    from avatarbatch.cli.commands import app

    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\njobs:\n"
        "  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
        "  - {id: b, portrait: media/face.png, audio: media/es.wav}\n"
    )
    cli = CliRunner()
    with running_sandbox(sandbox_config(profile="strict", registration_lag=0.2)) as sandbox:
        env = {"RUNWARE_API_KEY": KEY, "RUNWARE_API_URL": sandbox.api_url}
        assert cli.invoke(app, ["check"], env=env).exit_code == 0
        result = cli.invoke(app, ["run", str(manifest), "--out", str(tmp_path / "o")], env=env)
        assert result.exit_code == 0, result.output
    # The check's answer was used from the first poll: no batch was tried and refused.
    assert "found batched polls refused: one task each" in result.output
    assert "polling one task per request from now on" not in result.output
