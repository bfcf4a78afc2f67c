"""Secrets are redacted on the way in: text from the API or the network is scrubbed of them.

Keeping the key out of our own messages is not enough: a server (or a proxy in between) may
echo it back inside an error message, and that message then travels into the state file, the
reports and the log. So every API key is registered here when its `ClientSettings` is built,
and `scrub` is applied where outside text enters the program (`ApiError`, the error objects
of `apierrors`, and a logging filter on the CLI's handlers). Besides registered keys, scrub
also hides any `Bearer <token>` and `Authorization: <value>`, whoever's token that is.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse

REDACTED = "[redacted]"
#: Shorter strings are not registered: replacing them would mangle ordinary text, and no
#: real API key is that short.
MIN_SECRET_LENGTH = 8

_HINT = re.compile("bearer|authorization", re.IGNORECASE)
# A token runs to the next blank, quote, backslash (a JSON-escaped quote), comma or semicolon;
# one already redacted is left alone so that scrubbing twice changes nothing.
_BEARER = re.compile(r"\b(bearer)\s+(?!\[redacted\])[^\s\"'\\,;]+", re.IGNORECASE)
# `Authorization: x`, `"Authorization": "x"`, `authorization=x`: the value runs to the end of
# the line or the closing quote. The word boundary keeps codes like `invalidAuthorization:`
# (followed by a message we want to read) out of it.
_AUTHORIZATION = re.compile(r"\b(authorization[\"']?\s*[:=]\s*[\"']?)[^\r\n\"']+", re.IGNORECASE)


class SecretRegistry:
    """Secret strings to hide, and the scrubbing of text against them and bearer tokens."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def register(self, value: str) -> None:
        """Hide `value` (and its URL- and JSON-escaped forms) in all text scrubbed from now on."""
        value = value.strip()
        if len(value) < MIN_SECRET_LENGTH:
            return
        # A server may echo the key inside a URL or a JSON string, where it is escaped.
        forms = {value, urllib.parse.quote(value, safe=""), json.dumps(value)[1:-1]}
        with self._lock:
            if forms <= self._secrets:
                return
            self._secrets |= forms
            # Longest first: a secret holding another is replaced whole, not in pieces.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def scrub(self, text: str) -> str:
        """`text` with every registered secret, bearer token and Authorization value hidden."""
        pattern = self._pattern  # read once: a registration may swap it meanwhile
        hinted = _HINT.search(text) is not None
        if pattern is None and not hinted:
            return text  # the common case, and it costs one scan
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        if hinted:
            text = _BEARER.sub(rf"\1 {REDACTED}", text)
            text = _AUTHORIZATION.sub(rf"\1{REDACTED}", text)
        return text


_registry = SecretRegistry()


def register_secret(value: str) -> None:
    """Hide `value` in every text scrubbed from now on, process-wide (shorter than 8: ignored)."""
    _registry.register(value)


def scrub(text: str) -> str:
    """`text` with every registered secret, `Bearer <token>` and `Authorization: ...` hidden."""
    return _registry.scrub(text)


class RedactingFilter(logging.Filter):
    """Scrubs each record before a handler writes it: a log line cannot carry a key.

    Installed on handlers rather than on a logger, so that it also sees the records of child
    loggers that propagate to them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the handler's to report, as usual
            return True
        # Stored formatted: the handler's formatter then reads it as is, instead of formatting
        # the arguments (and their secrets) a second time.
        record.msg = scrub(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            # Formatted here, as the handler's formatter would, so its cached text is scrubbed.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True
