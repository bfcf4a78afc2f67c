"""The `check` command's wiring: settings from the environment, the check, its saved result."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from avatarbatch.cli.environment import client_settings, read_dotenv
from avatarbatch.runware import check
from avatarbatch.runware.check import CheckResult


def execute(environ: Mapping[str, str], *, api_url: str | None) -> CheckResult:
    """Run the free checks and remember the answer where `run` looks for it."""
    settings = client_settings(environ, read_dotenv(Path(".env")), api_url=api_url)
    result = asyncio.run(check.run_check(settings))
    if result.auth == "ok":  # a refused key teaches nothing about the API itself
        check.save(result, check.default_folder(environ))
    return result
