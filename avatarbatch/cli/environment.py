"""Where the API is and which key to use, from the environment, a .env file and options.

Only the CLI calls this (with os.environ and the .env it found); everything below receives a
finished `ClientSettings`, so no other module reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values
from pydantic import SecretStr

from avatarbatch.errors import UsageError
from avatarbatch.runware.client import DEFAULT_API_URL, ClientSettings, header_value_problem

KEY_VARIABLE = "RUNWARE_API_KEY"
URL_VARIABLE = "RUNWARE_API_URL"


def read_dotenv(path: Path) -> dict[str, str]:
    """Variables of a .env file (missing file: none); values never reach a message."""
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def client_settings(
    environ: Mapping[str, str],
    dotenv: Mapping[str, str] | None = None,
    *,
    api_url: str | None = None,
    **tuning: object,
) -> ClientSettings:
    """Settings for the real API; the environment wins over .env, an option over both."""
    merged = {**(dotenv or {}), **environ}
    # Stripped first: `RUNWARE_API_KEY=$(cat keyfile)` and editors leave a trailing newline.
    key = merged.get(KEY_VARIABLE, "").strip()
    if not key:
        raise UsageError(
            f"no API key: set {KEY_VARIABLE} in the environment or in a .env file to use the "
            "Runware API, or add --sandbox to run against the local sandbox instead"
        )
    problem = header_value_problem(key)
    if problem is not None:  # checked before any request: httpx would crash or retry on it
        raise UsageError(f"{KEY_VARIABLE} {problem}")
    url = api_url or merged.get(URL_VARIABLE, "").strip() or DEFAULT_API_URL
    if not url.lower().startswith(("http://", "https://")):
        raise UsageError(f"the API URL must be http(s), got {url!r}")
    return ClientSettings(api_url=url, api_key=SecretStr(key), **tuning)
