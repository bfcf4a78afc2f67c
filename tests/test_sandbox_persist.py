"""A persistent sandbox (SandboxConfig.persist) carries on across restarts, on real loopback HTTP.

Each test starts the sandbox, stops it (gracefully, or with SIGKILL in a child process) and
starts it again on the same storage folder, as `avatarbatch run --sandbox` does after Ctrl-C.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from avatarbatch import catalog
from avatarbatch.errors import UsageError
from avatarbatch.sandbox import settings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.engine import Engine
from avatarbatch.sandbox.faults import FAULT_KINDS, unit_interval
from avatarbatch.sandbox.persist import STATE_FILE, StateError
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from conftest import image_bytes, new_uuid, video_task, wav_bytes

KEY = "sk-persist-Zq9vW4t8Lm"
SECONDS = 2.0
PRICE = catalog.STANDARD.cost(SECONDS)
IMAGE = image_bytes()
AUDIO = wav_bytes(SECONDS)
# Long enough that a task is surely still rendering when its sandbox is stopped.
FOREVER = 600.0


def persistent(storage: Path, **knobs: Any) -> SandboxConfig:
    base: dict[str, Any] = {
        "api_key": KEY,
        "render": "stub",
        "latency": 0.0,
        "fixed_latency": 0.0,
        "workers": 2,
        "storage_dir": storage,
        "persist": True,
    }
    return SandboxConfig(**{**base, **knobs})


def post(sandbox: RunningSandbox, *tasks: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(
        sandbox.api_url, json=list(tasks), headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    return answer.json()  # type: ignore[no-any-return]


def upload(sandbox: RunningSandbox) -> dict[str, str]:
    """Upload a portrait (imageUpload) and a voice (mediaStorage); their UUIDs and URLs."""
    image = post(
        sandbox,
        {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": _b64(IMAGE)},
    )["data"][0]
    audio = post(
        sandbox,
        {
            "taskType": "mediaStorage",
            "taskUUID": new_uuid(),
            "operation": "upload",
            "media": "data:audio/wav;base64," + _b64(AUDIO),
        },
    )["data"][0]
    return {
        "image": image["imageUUID"],
        "image_url": image["imageURL"],
        "image_task": image["taskUUID"],
        "audio": audio["mediaUUID"],
    }


def submit(sandbox: RunningSandbox, image: str, audio: str, **fields: Any) -> str:
    task = video_task(image, audio, **fields)
    answer = post(sandbox, task)
    assert answer.get("data") == [{"taskType": "videoInference", "taskUUID": task["taskUUID"]}]
    return str(task["taskUUID"])


def poll(sandbox: RunningSandbox, task_uuid: str) -> dict[str, Any]:
    return post(sandbox, {"taskType": "getResponse", "taskUUID": task_uuid})


def finished(sandbox: RunningSandbox, task_uuid: str, timeout: float = 20) -> dict[str, Any]:
    """The first poll answer that holds no processing item any more."""
    answer = until(lambda: _done(poll(sandbox, task_uuid)), timeout)
    assert answer is not None, f"task {task_uuid} did not finish within {timeout} s"
    return answer


def _done(answer: dict[str, Any]) -> dict[str, Any] | None:
    items = answer.get("data", [])
    if answer.get("errors") or (items and all(i.get("status") != "processing" for i in items)):
        return answer
    return None


def until(probe: Callable[[], Any], timeout: float) -> Any:
    """The first truthy value of `probe`, tried until `timeout` seconds pass; else None."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        pause.wait(0.02)


def download(url: str) -> bytes:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.content


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def billed_once(ledger: dict[str, Any], task_uuid: str) -> None:
    rows = [row for row in ledger["tasks"] if row["taskUUID"] == task_uuid]
    assert rows == [
        {
            "taskUUID": task_uuid,
            "model": catalog.STANDARD.id,
            "status": "success",
            "seconds": SECONDS,
            "results": 1,
            "cost": float(PRICE),
        }
    ]


# --- restarts -------------------------------------------------------------------------------------


def test_a_task_stopped_mid_render_finishes_after_a_restart_and_is_billed_once(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "sandbox"
    with running_sandbox(persistent(storage, fixed_latency=FOREVER)) as first:
        inputs = upload(first)
        before = time.time()
        task_uuid = submit(first, inputs["image"], inputs["audio"])
        after = time.time()
        assert poll(first, task_uuid)["data"][0]["status"] == "processing"
        assert first.stats()["in_flight"] == 1
        assert first.ledger()["total_cost"] == 0
    with running_sandbox(persistent(storage, fixed_latency=0.2)) as second:
        restored = second.app.state.engine.tasks[task_uuid]
        # Its age is wall-clock time since the acceptance, not time since this start.
        age = time.monotonic() - restored.accepted_at
        assert time.time() - after - 0.05 <= age <= time.time() - before + 0.05
        answer = finished(second, task_uuid)
        item = answer["data"][0]
        assert item["status"] == "success" and item["cost"] == float(PRICE)
        assert item["videoURL"].startswith(second.base_url + "/sandbox/video/")
        video = download(item["videoURL"])
        assert hashlib.sha256(video).hexdigest() == second.videos()[item["videoUUID"]]["sha256"]
        ledger = second.ledger()
        assert second.stats()["in_flight"] == 0
    billed_once(ledger, task_uuid)
    assert ledger["total_cost"] == float(PRICE) and ledger["submissions"] == 1
    # A third life changes nothing: the task is finished and billed.
    with running_sandbox(persistent(storage)) as third:
        assert poll(third, task_uuid)["data"][0]["videoUUID"] == item["videoUUID"]
        assert third.ledger() == ledger


CHILD = """
import sys, threading
from pathlib import Path
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import running_sandbox

config = SandboxConfig(
    api_key=sys.argv[2], render="stub", latency=0, fixed_latency=600,
    storage_dir=Path(sys.argv[1]), persist=True,
)
with running_sandbox(config) as sandbox:
    print(sandbox.base_url, flush=True)
    threading.Event().wait()
"""


def test_a_killed_sandbox_still_has_every_task_it_acknowledged(tmp_path: Path) -> None:
    storage = tmp_path / "sandbox"
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(storage), KEY], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            base = child.stdout.readline().strip()
            assert base.startswith("http://127.0.0.1:"), "the child sandbox did not start"
            killed = RunningSandbox(base, base + "/v1", persistent(storage))
            inputs = upload(killed)
            tasks = [submit(killed, inputs["image"], inputs["audio"]) for _ in range(3)]
        finally:
            child.kill()  # SIGKILL: no shutdown, no cleanup
            child.wait(timeout=30)
    with running_sandbox(persistent(storage)) as revived:
        assert revived.base_url == base  # the port was free again
        for task_uuid in tasks:
            assert finished(revived, task_uuid)["data"][0]["status"] == "success"
        ledger = revived.ledger()
    for task_uuid in tasks:
        billed_once(ledger, task_uuid)
    assert ledger["total_cost"] == pytest.approx(3 * float(PRICE))


def test_a_finished_task_survives_a_restart_with_its_answer_video_and_bill(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "sandbox"
    with running_sandbox(persistent(storage)) as first:
        inputs = upload(first)
        task_uuid = submit(first, inputs["image"], inputs["audio"])
        answer = finished(first, task_uuid)
        video = download(answer["data"][0]["videoURL"])
        again = post(first, video_task(inputs["image"], inputs["audio"], taskUUID=task_uuid))
        assert again["errors"][0]["code"] == "conflictTaskUUID"
        ledger = first.ledger()
    assert ledger["conflicts"] == 1
    billed_once(ledger, task_uuid)
    with running_sandbox(persistent(storage)) as second:
        assert poll(second, task_uuid) == _at(answer, first.base_url, second.base_url)
        assert download(poll(second, task_uuid)["data"][0]["videoURL"]) == video
        assert second.ledger() == ledger
        again = post(second, video_task(inputs["image"], inputs["audio"], taskUUID=task_uuid))
        assert again["errors"][0]["code"] == "conflictTaskUUID"  # still known: no new bill
        assert second.ledger() == {**ledger, "conflicts": 2}


def _at(answer: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    items = [{**item, "videoURL": item["videoURL"].replace(old, new)} for item in answer["data"]]
    return {**answer, "data": items}


def test_uploads_made_before_a_restart_are_still_inputs(tmp_path: Path) -> None:
    storage = tmp_path / "sandbox"
    with running_sandbox(persistent(storage, upload_conflicts=True)) as first:
        inputs = upload(first)
    with running_sandbox(persistent(storage, upload_conflicts=True)) as second:
        # One input by UUID, the other by the URL handed out before the restart.
        task_uuid = submit(second, inputs["image_url"], inputs["audio"])
        assert finished(second, task_uuid)["data"][0]["status"] == "success"
        path = inputs["image_url"].split("/sandbox/", 1)[1]
        assert download(f"{second.base_url}/sandbox/{path}") == IMAGE
        task = {"taskType": "imageUpload", "taskUUID": inputs["image_task"], "image": _b64(IMAGE)}
        assert post(second, task)["errors"][0]["code"] == "conflictTaskUUID"
        billed_once(second.ledger(), task_uuid)
    assert (storage / "uploads" / inputs["image_url"].rsplit("/", 1)[1]).read_bytes() == IMAGE


def test_the_port_is_kept_when_free_and_urls_follow_a_new_one(tmp_path: Path) -> None:
    storage = tmp_path / "sandbox"
    with running_sandbox(persistent(storage)) as first:
        inputs = upload(first)
        task_uuid = submit(first, inputs["image"], inputs["audio"])
        finished(first, task_uuid)
    with running_sandbox(persistent(storage)) as second:
        assert second.base_url == first.base_url
    port = int(first.base_url.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with running_sandbox(persistent(storage)) as third:
            assert third.base_url != first.base_url
            item = poll(third, task_uuid)["data"][0]
            assert item["videoURL"].startswith(third.base_url + "/sandbox/video/")
            assert download(item["videoURL"])
            # Webhooks of restored tasks go out with the new address too.
            assert third.app.state.engine.tasks[task_uuid].base_url == third.base_url
    with running_sandbox(persistent(storage)) as fourth:
        assert fourth.base_url == third.base_url  # the port recorded is the last one used


def _echoing_uuid() -> str:
    """A task UUID whose POST escapes `echo_key=0.5` while its failed render repeats the key."""
    for number in range(1000):
        candidate = f"00000000-0000-4000-8000-{number:012d}"
        if (
            unit_interval(0, "echo_key", candidate + "videoInference", 1) >= 0.5
            and unit_interval(0, "echo_key", candidate, 1) < 0.5
        ):
            return candidate
    raise AssertionError("no UUID meets the faults")


def test_the_api_key_is_never_saved(tmp_path: Path) -> None:
    storage = tmp_path / "sandbox"
    faults = settings.build(faults="task_error=1,echo_key=0.5").faults
    with running_sandbox(persistent(storage, faults=faults)) as first:
        inputs = upload(first)
        task = video_task(inputs["image"], inputs["audio"], taskUUID=_echoing_uuid())
        assert "data" in post(first, task)
        failure = finished(first, task["taskUUID"])["errors"][0]
        assert KEY in failure["message"]  # the key was there to be leaked
    files = [path for path in storage.rglob("*") if path.is_file()]
    assert any(path.name == STATE_FILE for path in files)
    assert not [path for path in files if KEY.encode() in path.read_bytes()]
    with running_sandbox(persistent(storage)) as second:
        failure = poll(second, task["taskUUID"])["errors"][0]
        assert failure["code"] in ("timeoutProvider", "providerError")
        assert KEY not in failure["message"] and "[redacted]" in failure["message"]
        assert second.app.state.engine.tasks[task["taskUUID"]].api_key == ""


def test_two_sandboxes_cannot_share_a_storage_folder(tmp_path: Path) -> None:
    storage = tmp_path / "sandbox"
    with (
        running_sandbox(persistent(storage)),
        pytest.raises(StateError, match="another sandbox is using"),
    ):
        Engine(persistent(storage))
    with running_sandbox(persistent(storage)):  # free again once the first one stopped
        pass


# --- without persist ------------------------------------------------------------------------------


def test_without_persist_a_restarted_sandbox_forgets_everything(tmp_path: Path) -> None:
    storage = tmp_path / "sandbox"
    config = persistent(storage, persist=False)
    with running_sandbox(config) as first:
        inputs = upload(first)
        task_uuid = submit(first, inputs["image"], inputs["audio"])
        finished(first, task_uuid)
    with running_sandbox(config) as second:
        assert poll(second, task_uuid)["errors"][0]["code"] == "taskFailedOrNotFound"
        assert second.ledger()["tasks"] == []
        refused = post(second, video_task(inputs["image"], inputs["audio"]))
        assert refused["errors"][0]["code"] == "invalidImage"
    assert not (storage / STATE_FILE).exists()


def test_persist_needs_a_storage_dir() -> None:
    with pytest.raises(ValidationError, match="storage"):
        SandboxConfig(persist=True)
    with pytest.raises(UsageError, match=r"^--sandbox-persist: .*storage"):
        settings.build(persist=True, option_prefix="--sandbox-")
    with pytest.raises(ValueError, match="storage_dir"):
        Engine(SandboxConfig().model_copy(update={"persist": True}))  # validation skipped


# --- option names in settings errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"faults": "bogus=1"}, r"^--sandbox-faults: unknown fault 'bogus'; expected NAME=RATE"),
        ({"faults": "http500"}, r"^--sandbox-faults: 'http500' has no rate; expected NAME=RATE"),
        ({"faults": "reset=2"}, r"^--sandbox-faults: 'reset=2': the rate must be a number"),
        ({"faults": "reset=x"}, r"^--sandbox-faults: 'reset=x': the rate must be a number"),
        ({"profile": "lenient"}, r"^--sandbox-profile: 'lenient' is not one of default, strict"),
        ({"render": "movie"}, r"^--sandbox-render: "),
        ({"latency": -1}, r"^--sandbox-latency: "),
        ({"fixed_latency": -1}, r"^--sandbox-fixed-latency: "),
        ({"seed": "x"}, r"^--sandbox-seed: "),
    ],
)
def test_settings_errors_name_the_prefixed_option(values: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings.build(option_prefix="--sandbox-", **values)


def test_fault_errors_state_the_syntax_and_every_kind() -> None:
    with pytest.raises(UsageError) as caught:
        settings.build(faults="http500=0.1,bogus=1")
    text = str(caught.value)
    assert text.startswith("--faults: unknown fault 'bogus'")  # the default prefix
    assert "NAME=RATE[,NAME=RATE...]" in text
    assert all(kind in text for kind in FAULT_KINDS)
