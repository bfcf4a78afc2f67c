"""Shared fixtures: media made on the fly (exact sizes and durations) and manifest writers."""

from __future__ import annotations

import gc
import io
import math
import os
import shutil
import struct
import tempfile
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "manifests"


def image_bytes(width: int = 512, height: int = 512, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 120)).save(buffer, format=fmt)
    return buffer.getvalue()


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """A mono 16-bit tone of exactly `seconds` (to the sample)."""
    frames = round(seconds * rate)
    samples = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(min(frames, rate))
    )
    body = (samples * (frames // rate + 1))[: frames * 2]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(body)
    return buffer.getvalue()


@pytest.fixture
def official_sdk_leaks() -> Iterator[None]:
    """runware-sdk 1.8 leaves a socket unclosed after a REST session; collect it here.

    Otherwise its ResourceWarning surfaces in whichever later test the garbage collector
    happens to run in, failing an unrelated test at random. Tests using this fixture carry
    `@SDK_LEAKS_IGNORED` so the warning, raised in their own teardown, is not an error.
    """
    yield
    gc.collect()


SDK_LEAKS_IGNORED = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def as_unprivileged(action: Callable[[], str]) -> str:
    """Run `action` in a forked child that has dropped root, since root reads and writes anything."""
    if os.geteuid() != 0:
        return action()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            message = action()
        except BaseException as exc:
            message = f"raised {exc!r}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read().decode()


@pytest.fixture
def readable_batch() -> Iterator[Path]:
    """A world-readable folder with face.png, en.wav and a one-job m.yaml.

    Outside pytest's 0700 tmp folders, so a child that dropped root (as_unprivileged) can
    still read the manifest and its media.
    """
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        root.chmod(0o755)
        (root / "face.png").write_bytes(image_bytes())
        (root / "en.wav").write_bytes(wav_bytes(3))
        manifest = root / "m.yaml"
        manifest.write_text("version: 1\njobs:\n  - {id: a, portrait: face.png, audio: en.wav}\n")
        manifest.chmod(0o644)
        yield root


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A folder with a valid portrait (face.png) and valid audio clips (en.wav, es.wav)."""
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "face.png").write_bytes(image_bytes())
    (folder / "en.wav").write_bytes(wav_bytes(3.0))
    (folder / "es.wav").write_bytes(wav_bytes(4.0))
    return folder


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write a file under tmp_path (creating folders) and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """A copy of the shipped demo manifests and media, safe to modify."""
    target = tmp_path / "manifests"
    shutil.copytree(DEMO, target)
    return target


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, without the caller's Runware settings or cache."""
    monkeypatch.chdir(tmp_path)
    for name in ("RUNWARE_API_KEY", "RUNWARE_API_URL"):
        monkeypatch.delenv(name, raising=False)
    # `avatarbatch check` saves what it learnt there, and `run` reads it: never the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))


# --- the sandbox as the API's test double ---------------------------------------------------------

import uuid as _uuid  # noqa: E402
from collections.abc import AsyncIterator, Awaitable  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from avatarbatch import catalog  # noqa: E402
from avatarbatch.runware.client import ClientSettings, RunwareClient, TaskState  # noqa: E402
from avatarbatch.sandbox.app import create_app  # noqa: E402
from avatarbatch.sandbox.config import SandboxConfig  # noqa: E402
from avatarbatch.sandbox.engine import Engine  # noqa: E402

TEST_KEY = "test-key-Zq9v"
# No render latency and stub videos: client contract tests need protocol, not pictures.
FAST = SandboxConfig(latency=0, fixed_latency=0, render="stub", workers=8)
SANDBOX_BASE = "http://sandbox.test"

MakeClient = Callable[..., Awaitable[tuple[RunwareClient, Engine]]]


def new_uuid() -> str:
    return str(_uuid.uuid4())


PORTRAIT = (DEMO / "media/presenter.png").read_bytes()
VOICE = (DEMO / "media/voices/en.mp3").read_bytes()


async def uploads(client: RunwareClient) -> tuple[str, str]:
    """Upload the demo portrait and voice; their UUIDs."""
    image = await client.upload_image(PORTRAIT, "image/png", new_uuid())
    audio = await client.upload_media(VOICE, "audio/mpeg", new_uuid())
    return image.uuid, audio.uuid


def video_task(image: str, audio: str, **fields: Any) -> dict[str, Any]:
    """A videoInference task as avatarbatch sends it, with a fresh UUID."""
    return {
        "taskType": "videoInference",
        "taskUUID": new_uuid(),
        "model": catalog.STANDARD.id,
        "inputs": {"image": image, "audio": audio},
        "deliveryMethod": "async",
        "includeCost": True,
        **fields,
    }


@pytest.fixture
async def sandbox() -> AsyncIterator[MakeClient]:
    """Factory: a RunwareClient wired to an in-process sandbox through httpx's ASGI transport."""
    opened: list[tuple[httpx.AsyncClient, Engine]] = []

    async def make(config: SandboxConfig = FAST, **settings: Any) -> tuple[RunwareClient, Engine]:
        app = create_app(config)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        http = httpx.AsyncClient(transport=transport, base_url=SANDBOX_BASE)
        values: dict[str, Any] = {
            "api_url": SANDBOX_BASE + config.path,
            "api_key": TEST_KEY,
            "backoff_initial": 0.001,
            "backoff_max": 0.005,
            **settings,
        }
        opened.append((http, app.state.engine))
        return RunwareClient(http, ClientSettings(**values)), app.state.engine

    yield make
    for http, engine in opened:
        await http.aclose()
        await engine.aclose()


async def wait_finished(
    client: RunwareClient, task_uuid: str, results: int = 1, timeout: float = 60
) -> TaskState:
    """Poll until the task has all its results or failures (state polling with a deadline)."""
    import asyncio

    async with asyncio.timeout(timeout):
        while True:
            state = (await client.poll([task_uuid]))[task_uuid]
            if state.finished(results):
                return state
            await asyncio.sleep(0.02)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow first: under pytest-xdist the tests started last set the end of a run.

    A stable sort, so everything else keeps its order (and its module-scoped fixtures).
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
