"""How to reach the Runware API and how hard to try: one frozen object, built once and passed down.

Every key passes through here (the CLI's, the library's, the sandbox's generated one) and is
registered with `redact.py`, so that any text from the API that echoes it is scrubbed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from avatarbatch import __version__
from avatarbatch.errors import UsageError
from avatarbatch.redact import register_secret

DEFAULT_API_URL = "https://api.runware.ai/v1"
USER_AGENT = f"avatarbatch/{__version__}"

#: Tasks per POST, for submissions and polls alike, unless the settings say otherwise.
DEFAULT_BATCH_SIZE = 50
MAX_BATCH_SIZE = 500
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_INITIAL = 0.5  #: seconds before the first retry (before jitter)
DEFAULT_BACKOFF_MAX = 30.0  #: longest pause between two attempts, Retry-After included
DEFAULT_MAX_DOWNLOAD_BYTES = 4 * 1024**3
DEFAULT_DOWNLOAD_TIMEOUT = 600.0
DEFAULT_REQUEST_TIMEOUT = 300.0


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot travel in an HTTP header (as the API key does), or None if it can.

    Says where, never what: the value is a secret.
    """
    for position, char in enumerate(value, 1):
        if not char.isascii():
            return f"holds a non-ASCII character at position {position}; an API key is plain ASCII"
        if not char.isprintable():
            return (
                f"holds a line break or control character at position {position}; "
                "an API key is one line of plain text"
            )
    return None


class ClientSettings(BaseModel):
    """How to reach the API and how hard to try. Built once by the CLI and passed down."""

    model_config = ConfigDict(frozen=True)

    api_url: str = DEFAULT_API_URL
    api_key: SecretStr
    #: videoInference tasks per POST when submitting many at once
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    #: getResponse tasks per POST when polling many at once; 1 polls one task per POST, as
    #: the official SDK does. The docs never show batched polls: an API refusing them makes
    #: the client fall back to 1 for the rest of its life (see RunwareClient.poll)
    poll_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1)
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    #: whole-download deadline: a trickling server cannot hang us
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT
    #: whole-exchange deadline of one API request (httpx's timeouts are per read, so a server
    #: sending a byte a minute would otherwise hold a submit or an upload for ever)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    @field_validator("api_key")
    @classmethod
    def _sendable_key(cls, value: SecretStr) -> SecretStr:
        # A UsageError, not a ValueError: pydantic lets it through unwrapped, so a key that
        # cannot be sent stops the command with exit 2 (httpx would crash on a non-ASCII one
        # and retry a newline as a network error). The CLI checks first, naming the
        # variable; this catches keys given to the library directly.
        key = value.get_secret_value().strip()
        problem = header_value_problem(key)
        if problem is not None:
            raise UsageError(f"the API key {problem}")
        return SecretStr(key)

    def model_post_init(self, context: Any, /) -> None:
        # From now on, any text from the API that echoes this key is scrubbed (see redact.py).
        register_secret(self.api_key.get_secret_value())

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # A copy with a new key skips validation and model_post_init: register that key too.
        copy = super().model_copy(update=update, deep=deep)
        key = copy.api_key
        register_secret(key.get_secret_value() if isinstance(key, SecretStr) else str(key))
        return copy
