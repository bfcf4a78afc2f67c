"""Where a run sends its tasks: the real API, or a sandbox started for this run alone.

The sandbox's web server is imported only when a run asks for one, so importing the engine
loads no web server (the layers contract of pyproject.toml holds this).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from avatarbatch.config import RunSettings
from avatarbatch.engine import outputs, place
from avatarbatch.runware.client import ClientSettings

log = logging.getLogger("avatarbatch.run")

#: random bytes of the key a run's own sandbox accepts: no other client can use it by chance
SANDBOX_KEY_BYTES = 8


def target(settings: RunSettings) -> str:
    """Whom the state file's tasks are sent to: the sandbox, or the API URL."""
    if settings.sandbox is not None:
        return place.SANDBOX_TARGET
    if settings.client is None:
        raise ValueError("RunSettings needs client settings or a sandbox")
    return place.target_of(settings.client.api_url)


@contextlib.contextmanager
def api_settings(settings: RunSettings, out: Path) -> Iterator[ClientSettings]:
    """The client settings of this run, with the sandbox serving for as long as it lasts."""
    update: dict[str, Any] = {}
    if settings.poll_batch is not None:
        update["poll_batch_size"] = settings.poll_batch
    if settings.sandbox is None:
        if settings.client is None:
            raise ValueError("RunSettings needs client settings or a sandbox")
        yield settings.client.model_copy(update=update)
        return
    key = "sandbox-" + secrets.token_hex(SANDBOX_KEY_BYTES)
    # The embedded sandbox keeps its tasks, uploads and renders with the rehearsal's state,
    # so an interrupted rehearsal resumes the way a run against the real API does.
    storage = settings.sandbox.storage_dir or out / outputs.SANDBOX_DIR
    persist = settings.sandbox.storage_dir is None or settings.sandbox.persist
    config = settings.sandbox.model_copy(
        update={"api_key": key, "storage_dir": storage, "persist": persist}
    )
    from avatarbatch.sandbox.server import running_sandbox

    with running_sandbox(config) as sandbox:
        log.info("sandbox serving at %s", sandbox.api_url)
        base = settings.client or ClientSettings(api_key=SecretStr(key))
        update |= {"api_url": sandbox.api_url, "api_key": SecretStr(key)}
        yield base.model_copy(update=update)
