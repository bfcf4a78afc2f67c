"""Secrets are scrubbed from text on the way in: the registry, `scrub` and the logging filter."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator

import pytest

from avatarbatch.cli import progress
from avatarbatch.errors import ApiError, RejectedError
from avatarbatch.redact import RedactingFilter, SecretRegistry, register_secret, scrub

KEY = "sk-live-7f3a9c2e4b1d"


@pytest.fixture
def registry() -> SecretRegistry:
    """A registry of its own, so tests neither see nor leave the process-wide secrets."""
    fresh = SecretRegistry()
    fresh.register(KEY)
    return fresh


def unique_key() -> str:
    return "sk-" + secrets.token_hex(10)


# --- the registry ---------------------------------------------------------------------------------


def test_without_secrets_or_hints_text_is_returned_as_is() -> None:
    # The fast path: scrub runs on every log line and every error, and copies nothing then.
    text = "Runware: invalidModel (model): unknown model runware:999@1"
    assert SecretRegistry().scrub(text) is text


@pytest.mark.parametrize("short", ["", "       ", "abc", "sk-1234", "  sk-1234  \n"])
def test_short_or_empty_strings_are_not_registered(short: str) -> None:
    fresh = SecretRegistry()
    fresh.register(short)
    text = "abc sk-1234 and a    gap"
    assert fresh.scrub(text) is text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Invalid API key {KEY}.", "Invalid API key [redacted]."),
        (f'{{"apiKey": "{KEY}", "taskType": "x"}}', '{"apiKey": "[redacted]", "taskType": "x"}'),
        (f"https://cdn.test/v.mp4?key={KEY}&x=1", "https://cdn.test/v.mp4?key=[redacted]&x=1"),
        (f"https://cdn.test/{KEY}/v.mp4", "https://cdn.test/[redacted]/v.mp4"),
        (f"{KEY}{KEY} and {KEY}", "[redacted][redacted] and [redacted]"),
        (f"line one\n{KEY}\nline three", "line one\n[redacted]\nline three"),
    ],
)
def test_a_registered_key_is_hidden_wherever_it_appears(
    registry: SecretRegistry, text: str, expected: str
) -> None:
    assert registry.scrub(text) == expected


def test_escaped_forms_of_a_key_are_hidden_too() -> None:
    key = 'sk-a/b+c"d\\e=f'
    fresh = SecretRegistry()
    fresh.register(key)
    url = "https://x.test/?k=sk-a%2Fb%2Bc%22d%5Ce%3Df"
    json_text = '{"k": "sk-a/b+c\\"d\\\\e=f"}'
    assert fresh.scrub(url) == "https://x.test/?k=[redacted]"
    assert fresh.scrub(json_text) == '{"k": "[redacted]"}'
    assert fresh.scrub(key) == "[redacted]"


def test_a_key_is_registered_without_its_surrounding_whitespace() -> None:
    fresh = SecretRegistry()
    fresh.register(f"  {KEY}\n")
    assert fresh.scrub(f"key={KEY}") == "key=[redacted]"


def test_a_secret_holding_another_is_hidden_whole() -> None:
    fresh = SecretRegistry()
    fresh.register("abcdefgh")
    fresh.register("abcdefgh-ijklmnop")
    assert fresh.scrub("x abcdefgh-ijklmnop y") == "x [redacted] y"


def test_registering_again_changes_nothing(registry: SecretRegistry) -> None:
    registry.register(KEY)
    assert registry.scrub(KEY) == "[redacted]"


# --- bearer tokens and Authorization values, registered or not ------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rejected Bearer abc.def-123_x", "rejected Bearer [redacted]"),
        ("rejected bearer abc", "rejected bearer [redacted]"),
        ("rejected BEARER   abc; retry", "rejected BEARER [redacted]; retry"),
        ('{"token": "Bearer abc", "n": 1}', '{"token": "Bearer [redacted]", "n": 1}'),
        ("Authorization: Bearer abc", "Authorization: [redacted]"),
        ("authorization: Basic dXNlcjpwYXNz\nnext line", "authorization: [redacted]\nnext line"),
        ('{"Authorization": "Bearer abc", "n": 1}', '{"Authorization": "[redacted]", "n": 1}'),
        ("{'authorization': 'Bearer abc'}", "{'authorization': '[redacted]'}"),
        ("https://x.test/?authorization=abc", "https://x.test/?authorization=[redacted]"),
        ("Proxy-Authorization: abc", "Proxy-Authorization: [redacted]"),
    ],
)
def test_bearer_tokens_and_authorization_values_are_hidden(text: str, expected: str) -> None:
    assert SecretRegistry().scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Runware: invalidAuthorization: the key was refused",
        "Runware: missingHeader (authorization): send a key",
        "the authorization failed",
    ],
)
def test_words_that_only_mention_authorization_are_kept(text: str) -> None:
    assert SecretRegistry().scrub(text) == text


def test_scrubbing_twice_changes_nothing(registry: SecretRegistry) -> None:
    text = f'Authorization: Bearer {KEY}\n{{"k": "{KEY}"}} bearer xyz Bearer [redacted]'
    once = registry.scrub(text)
    assert KEY not in once and "xyz" not in once
    assert registry.scrub(once) == once


# --- the process-wide registry and where it is hooked in ------------------------------------------


def test_the_process_wide_registry_hides_what_was_registered() -> None:
    key = unique_key()
    assert scrub(f"key {key}") == f"key {key}"
    register_secret(key)
    assert scrub(f"key {key}") == "key [redacted]"


def test_every_api_error_is_scrubbed_whatever_builds_it() -> None:
    key = unique_key()
    register_secret(key)
    error = RejectedError(
        f"Runware: bad ({key}): key {key}, Authorization: Bearer {key}",
        code=f"code-{key}",
        parameter=key,
        task_uuid="t",
    )
    twin = error.for_task("u")
    for text in (str(error), repr(error), error.message, str(twin), repr(twin)):
        assert key not in text and "[redacted]" in text
    assert error.parameter == "[redacted]" and error.code == "code-[redacted]"
    assert isinstance(twin, ApiError) and twin.task_uuid == "u"


# --- the logging filter ---------------------------------------------------------------------------


def filtered_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_the_filter_scrubs_messages_and_their_arguments() -> None:
    key = unique_key()
    register_secret(key)
    logger, stream = filtered_logger("test_redact.args")
    logger.info("key %s in %r", key, {"Authorization": f"Bearer {key}"})
    logger.warning(f"inline {key}")
    logger.info("nothing to hide: %d", 3)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "key [redacted] in {'Authorization': '[redacted]'}",
        "inline [redacted]",
        "nothing to hide: 3",
    ]


def test_the_filter_scrubs_tracebacks() -> None:
    key = unique_key()
    register_secret(key)
    logger, stream = filtered_logger("test_redact.exc")
    try:
        raise ValueError(f"the server said {key}")
    except ValueError:
        logger.exception("failed")
    assert "Traceback" in stream.getvalue() and key not in stream.getvalue()


def test_the_filter_leaves_a_broken_format_to_the_handler() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert RedactingFilter().filter(record) is True
    assert record.args == ("not a number",)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging rewires the avatarbatch logger: put it back for the other tests."""
    logger = logging.getLogger("avatarbatch")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.mark.parametrize("tty", [False, True])
def test_the_cli_logging_scrubs_every_line(restored_logging: None, tty: bool) -> None:
    key = unique_key()
    register_secret(key)
    stream = io.StringIO()
    progress.configure_logging(tty=tty, stream=stream)
    logging.getLogger("avatarbatch.runware").info("retrying after attempt 1: %s", key)
    logging.getLogger("avatarbatch.runner").error("job a: failed: Authorization: Bearer abc")
    written = stream.getvalue()
    assert "retrying after attempt 1: [redacted]" in written, written
    assert key not in written and "abc" not in written
    assert all(
        isinstance(h.filters[0], RedactingFilter) for h in logging.getLogger("avatarbatch").handlers
    )
