"""What a newcomer and a cron script expect of the command line (issue 13).

`--json` always ends with one object carrying `exit_code`; options are named as typed; help is
plain; a subset of rows can be run; a person at a terminal is asked before a costly run, a
script never is; `status` tells a run going on from one that ended.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner, Result

from avatarbatch.cli import status_view, status_watch
from avatarbatch.cli.commands import app
from avatarbatch.config import RunSettings
from avatarbatch.engine.batch import run_batch
from avatarbatch.errors import TransientError, UsageError
from avatarbatch.runware.client import ClientSettings, RunwareClient
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.lock import state_lock
from avatarbatch.state.store import StateStore

runner = CliRunner()
QUICK = SandboxConfig(latency=0, fixed_latency=0, render="stub")
THREE_LANGS = (
    "version: 1\ndefaults: {portrait: media/face.png}\njobs:\n"
    "  - {id: a-en, audio: media/en.wav, vars: {lang: en}}\n"
    "  - {id: a-es, audio: media/es.wav, vars: {lang: es}}\n"
    "  - {id: b-en, audio: media/en.wav, vars: {lang: en, take: two}}\n"
)


@pytest.fixture
def stand_in() -> Iterator[RunningSandbox]:
    """A sandbox standing in for the real API."""
    with running_sandbox(QUICK) as server:
        yield server


def real(args: list[str], server: RunningSandbox, **env: str) -> Result:
    return runner.invoke(
        app, args, env={"RUNWARE_API_KEY": "k-test", "RUNWARE_API_URL": server.api_url, **env}
    )


def last_json(result: Result) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert lines, result.output
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# --- --json: one object at the end, whatever the exit ------------------------------------------


def test_json_ends_with_an_object_on_an_invalid_manifest(write: Any, media: Path) -> None:
    manifest = write("m.yaml", "version: 1\njobs:\n  - {id: a, portrait: media/face.png}\n")
    for command in (["run", "--sandbox"], ["plan"], ["validate"]):
        result = runner.invoke(app, [command[0], str(manifest), "--json", *command[1:]])
        no_traceback(result)
        answer = last_json(result)
        assert result.exit_code == 2 and answer["exit_code"] == 2, command
        if command != ["validate"]:
            assert answer["error"] == "m.yaml:3: job a: audio: is required", answer
            assert answer["problems"][0]["field"] == "audio"


def test_json_ends_with_an_object_without_a_key(write: Any, media: Path) -> None:
    manifest = write(
        "m.yaml", "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    )
    result = runner.invoke(app, ["run", str(manifest), "--json"])
    no_traceback(result)
    answer = last_json(result)
    assert (result.exit_code, answer["exit_code"]) == (2, 2)
    assert answer["error"].startswith("no API key: set RUNWARE_API_KEY")


def test_json_ends_with_an_object_when_the_state_is_locked(
    write: Any, media: Path, tmp_path: Path, stand_in: RunningSandbox
) -> None:
    manifest = write(
        "m.yaml", "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    )
    with state_lock(tmp_path / "out" / "m" / "state.sqlite"):
        result = real(["run", str(manifest), "--json"], stand_in)
    answer = last_json(result)
    assert (result.exit_code, answer["exit_code"]) == (2, 2)
    assert "another avatarbatch run is using" in answer["error"]
    assert stand_in.ledger()["tasks"] == []


def test_json_of_plan_status_and_a_finished_run_carry_the_exit_code(
    write: Any, media: Path, stand_in: RunningSandbox
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    done = real(["run", str(manifest), "--json", "--rps", "100"], stand_in)
    summary = last_json(done)
    assert (summary["exit_code"], summary["submitted"], summary["tasks_sent"]) == (0, 3, 3)
    assert Path(summary["output_dir"]).is_absolute() and Path(summary["state_file"]).is_absolute()
    assert (
        json.loads(runner.invoke(app, ["plan", str(manifest), "--json"]).stdout)["exit_code"] == 0
    )
    status = json.loads(runner.invoke(app, ["status", str(manifest), "--json"]).stdout)
    assert (status["exit_code"], status["running"], status["by_status"]["done"]) == (0, False, 3)
    assert status["target"] == stand_in.api_url


# --- options named as typed; plain help --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sandbox-faults", "bogus=1"], "--sandbox-faults: unknown fault 'bogus'"),
        (["--sandbox-faults", "http500"], "--sandbox-faults"),
        (["--sandbox-latency", "-1"], "--sandbox-latency"),
        (["--sandbox-render", "fancy"], "--sandbox-render"),
        (["--sandbox-profile", "lax"], "--sandbox-profile"),
    ],
)
def test_sandbox_options_are_named_as_typed(
    write: Any, media: Path, args: list[str], named: str
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    result = runner.invoke(app, ["run", str(manifest), "--sandbox", *args])
    no_traceback(result)
    assert result.exit_code == 2 and named in result.output, result.output
    bare = named.removeprefix("--sandbox-").split(":")[0]
    assert f"'--{bare}'" not in result.output and f"--{bare}:" not in result.output


def test_help_is_plain_short_flagged_and_shows_choices() -> None:
    result = runner.invoke(app, ["run", "-h"], terminal_width=200, prog_name="avatarbatch")
    assert result.exit_code == 0
    assert "Usage: avatarbatch run [OPTIONS] MANIFEST" in result.output
    assert "<bool>" not in result.output and "{" not in result.output.splitlines()[0]
    assert "--sandbox-render <full|stub>" in result.output
    assert "--sandbox-faults SPEC" in result.output and "http500" in result.output
    assert "--json " in result.output and "--json <" not in result.output
    for env in ("AVATARBATCH_CONCURRENCY", "AVATARBATCH_OUT", "AVATARBATCH_MAX_COST"):
        assert env in result.output
    top = runner.invoke(app, ["-h"])
    assert top.exit_code == 0 and "--install-completion" in top.output
    sandbox = runner.invoke(app, ["sandbox", "--help"], terminal_width=200)
    assert "--fixed-latency S" in sandbox.output and "--profile <default|strict>" in sandbox.output


def test_json_true_is_refused_as_an_extra_argument(write: Any, media: Path) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    result = runner.invoke(app, ["validate", str(manifest), "--json", "true"])
    assert result.exit_code == 2 and "unexpected extra argument(s) (true)" in result.output


def test_environment_variables_stand_for_common_options(
    write: Any, media: Path, tmp_path: Path, stand_in: RunningSandbox
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    result = real(
        ["run", str(manifest), "--json"],
        stand_in,
        AVATARBATCH_OUT=str(tmp_path / "elsewhere"),
        AVATARBATCH_RPS="100",
        AVATARBATCH_CONCURRENCY="2",
    )
    assert last_json(result)["output_dir"] == str(tmp_path / "elsewhere")
    with StateStore.open(tmp_path / "elsewhere" / "state.sqlite") as store:
        arguments = store.runs()[-1]["arguments"]
    assert (arguments["rps"], arguments["concurrency"]) == (100.0, 2)
    bad = real(["run", str(manifest)], stand_in, AVATARBATCH_CONCURRENCY="0")
    assert bad.exit_code == 2 and "AVATARBATCH_CONCURRENCY" in bad.output


# --- a subset of rows ---------------------------------------------------------------------------


def test_only_and_where_run_a_subset_and_leave_the_rest_untouched(
    write: Any, media: Path, tmp_path: Path, stand_in: RunningSandbox
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    first = real(["run", str(manifest), "--json", "--rps", "100", "--only", "a-es"], stand_in)
    assert (last_json(first)["jobs"], last_json(first)["submitted"]) == (1, 1)
    state = tmp_path / "out" / "m" / "state.sqlite"
    with StateStore.open(state) as store:
        assert set(store.jobs()) == {"a-es"}  # the others are not even registered
    second = real(["run", str(manifest), "--json", "--rps", "100", "--where", "lang=en"], stand_in)
    assert (last_json(second)["jobs"], last_json(second)["submitted"]) == (2, 2)
    both = real(
        ["run", str(manifest), "--json", "--where", "lang=en", "--where", "take=two"], stand_in
    )
    assert (last_json(both)["jobs"], last_json(both)["skipped"]) == (1, 1)
    assert len(stand_in.ledger()["tasks"]) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "a-enn"], "--only: no job has the id 'a-enn'; did you mean 'a-en'?"),
        (["--where", "lang"], "--where: expected VAR=VALUE, got 'lang'"),
        (["--where", "lng=en"], "--where lng=en: no row has a var 'lng' (vars: lang, take)"),
        (["--where", "lang=fr"], "--where lang=fr: no row has lang=fr (lang: en, es)"),
        (["--only", "a-es", "--where", "lang=en"], "no row matches every --only and --where"),
    ],
)
def test_a_selection_that_cannot_be_met_is_refused_before_anything_runs(
    write: Any, media: Path, stand_in: RunningSandbox, args: list[str], message: str
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    result = real(["run", str(manifest), "--json", *args], stand_in)
    no_traceback(result)
    assert result.exit_code == 2 and message in last_json(result)["error"]
    assert stand_in.ledger()["tasks"] == []


# --- asked before paying, at a terminal only ---------------------------------------------------


def options_for(server: RunningSandbox, **fields: Any) -> RunSettings:
    client = ClientSettings(api_url=server.api_url, api_key=SecretStr("k-test"))
    return RunSettings(client=client, rps=100, **fields)


def test_a_no_at_the_question_stops_before_any_request(
    write: Any, media: Path, stand_in: RunningSandbox
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    asked: list[tuple[Decimal, int]] = []

    def decline(estimate: Decimal, jobs: int) -> bool:
        asked.append((estimate, jobs))
        return False

    with pytest.raises(UsageError, match="not started: nothing was submitted or paid"):
        asyncio.run(run_batch(manifest, options_for(stand_in, confirm=decline)))
    assert [(float(estimate), jobs) for estimate, jobs in asked] == [(0.44, 3)]
    assert stand_in.ledger()["tasks"] == []
    # Once everything is done, there is nothing to ask about.
    asyncio.run(run_batch(manifest, options_for(stand_in)))
    asked.clear()
    summary = asyncio.run(run_batch(manifest, options_for(stand_in, confirm=decline)))
    assert (summary.exit_code, asked) == (0, [])


def test_without_a_terminal_nobody_is_asked(
    write: Any, media: Path, stand_in: RunningSandbox
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    result = real(["run", str(manifest), "--json", "--confirm-above", "0"], stand_in)
    assert last_json(result)["exit_code"] == 0, result.output


# --- status while a run goes on -----------------------------------------------------------------


def test_status_tells_a_run_going_on_from_one_that_was_killed(
    write: Any, media: Path, tmp_path: Path, stand_in: RunningSandbox
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    real(["run", str(manifest), "--rps", "100"], stand_in)
    state = tmp_path / "out" / "m" / "state.sqlite"
    with StateStore.open(state) as store:
        store.start_run(manifest=str(manifest), manifest_sha256="x", arguments={})
    killed = runner.invoke(app, ["status", str(manifest)])
    assert "killed" in killed.output and "None" not in killed.output
    with state_lock(state):
        report = status_view.load(manifest, state=None, out=None)
        going = runner.invoke(app, ["status", str(manifest)])
    assert report["running"] is True
    assert "None" not in going.output


def test_status_watch_redraws_until_the_run_ends() -> None:
    reports = iter(
        [
            {**_report(running=True), "by_status": {"processing": 2, "done": 1}},
            {**_report(running=False), "by_status": {"done": 3}},
        ]
    )
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100)
    final = status_watch.follow(
        lambda: next(reports), _report(running=True), console=console, every=0
    )
    assert final["running"] is False and final["by_status"] == {"done": 3}
    assert "no run is using this state file now" in output.getvalue()


def test_status_watch_stops_when_asked() -> None:
    stop = threading.Event()
    stop.set()
    console = Console(file=io.StringIO(), force_terminal=True)
    report = status_watch.follow(lambda: _report(True), _report(True), console=console, stop=stop)
    assert report["running"] is True


def _report(running: bool) -> dict[str, Any]:
    return {
        "state_file": "out/m/state.sqlite",
        "jobs": 3,
        "by_status": {"done": 3},
        "spend": 0.1,
        "damaged_videos": {},
        "estimated": 0.1,
        "failures": [],
        "last_run": None,
        "running": running,
        "target": "sandbox",
    }


# --- no network -----------------------------------------------------------------------------------


async def test_no_network_names_the_host_and_the_cause() -> None:
    settings = ClientSettings(
        api_url="http://127.0.0.1:9/v1", api_key=SecretStr("k-test"), max_attempts=1
    )
    async with httpx.AsyncClient() as http:
        client = RunwareClient(http, settings)
        with pytest.raises(TransientError) as caught:
            await client.upload_image(
                b"\x89PNG", "image/png", "0" * 8 + "-0000-4000-8000-" + "0" * 12
            )
    assert str(caught.value) == (
        "cannot reach Runware at 127.0.0.1:9 (imageUpload): Connection refused"
    )


def test_unfinished_jobs_are_not_sent_to_retry_failed() -> None:
    from avatarbatch.engine.summary import unfinished_message

    text = unfinished_message(0, 7, "cannot reach Runware at h (imageUpload): Connection refused")
    assert "--retry-failed" not in text and "run the same command again" in text
    assert "Connection refused" in text
    both = unfinished_message(2, 1, None)
    assert both == (
        "2 failed (--retry-failed runs them again); 1 unfinished (run the same command again "
        "to resume)"
    )


# --- init ------------------------------------------------------------------------------------------


def test_init_tip_names_the_folder_it_wrote(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "initdir"])
    assert result.exit_code == 0
    assert "put your portrait and voices in initdir/media/" in result.output


def test_status_without_sandbox_points_at_the_rehearsal(write: Any, media: Path) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    rehearsal = runner.invoke(
        app, ["run", str(manifest), "--sandbox", "--sandbox-render", "stub", "--json"]
    )
    assert last_json(rehearsal)["exit_code"] == 0, rehearsal.output
    result = runner.invoke(app, ["status", str(manifest), "--json"])
    answer = last_json(result)
    assert (result.exit_code, answer["exit_code"]) == (2, 2)
    assert answer["error"].endswith("out/m/sandbox/state.sqlite: add --sandbox)")
    assert (
        json.loads(runner.invoke(app, ["status", str(manifest), "--sandbox", "--json"]).stdout)[
            "target"
        ]
        == "sandbox"
    )


@pytest.mark.parametrize(
    ("extra", "answer", "asked", "code"),
    [
        ([], "n\n", True, 2),
        ([], "y\n", True, 0),
        (["--yes"], "", False, 0),
        (["--confirm-above", "100"], "", False, 0),
    ],
)
def test_a_person_at_a_terminal_is_asked_once_above_the_threshold(
    write: Any,
    media: Path,
    stand_in: RunningSandbox,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    answer: str,
    asked: bool,
    code: int,
) -> None:
    from avatarbatch.cli import commands

    monkeypatch.setattr(commands, "_at_terminal", lambda: True)
    manifest = write("m.yaml", THREE_LANGS)
    args = ["run", str(manifest), "--rps", "100", "--confirm-above", "0.1", *extra]
    result = runner.invoke(
        app,
        args,
        input=answer,
        env={"RUNWARE_API_KEY": "k-test", "RUNWARE_API_URL": stand_in.api_url},
    )
    assert result.exit_code == code, result.output
    question = "3 jobs to submit, estimated $0.44000 (above --confirm-above $0.1). Run them?"
    assert (question in result.output) is asked
    assert len(stand_in.ledger()["tasks"]) == (3 if code == 0 else 0)


def test_quiet_keeps_warnings_only_and_verbose_adds_debug(
    write: Any, media: Path, stand_in: RunningSandbox
) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    quiet = real(["run", str(manifest), "--rps", "100", "--quiet"], stand_in)
    assert quiet.exit_code == 0 and " INFO " not in quiet.stderr
    manifest.write_text(THREE_LANGS.replace("a-en", "a-en2"))
    loud = real(["run", str(manifest), "--rps", "100", "--verbose"], stand_in)
    assert loud.exit_code == 0 and " INFO " in loud.stderr


def test_the_browser_install_is_skipped_when_chromium_is_there(tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).parent.parent / "scripts" / "ensure_chromium.sh"
    fake = tmp_path / "bin" / "chromium"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(script)],
        env={"PATH": f"{fake.parent}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_status_job_tells_one_jobs_story(write: Any, media: Path, stand_in: RunningSandbox) -> None:
    manifest = write("m.yaml", THREE_LANGS)
    assert last_json(real(["run", str(manifest), "--json", "--rps", "100"], stand_in))["done"] == 3
    text = runner.invoke(app, ["status", str(manifest), "--job", "a-es"])
    assert text.exit_code == 0, text.output
    task = stand_in.ledger()["tasks"]
    assert any(t["taskUUID"] in text.output for t in task)
    assert "downloaded videos/a-es.mp4" in text.output
    answer = last_json(runner.invoke(app, ["status", str(manifest), "--job", "a-es", "--json"]))
    assert (answer["exit_code"], answer["job"], answer["status"]) == (0, "a-es", "done")
    unknown = runner.invoke(app, ["status", str(manifest), "--job", "a-ez", "--json"])
    assert unknown.exit_code == 2 and "did you mean 'a-es'" in last_json(unknown)["error"]
