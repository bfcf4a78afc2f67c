"""Fault injection for the sandbox, reproducible from a seed.

A decision is a pure function of (seed, fault kind, key, how often that key was seen), not a
draw from a shared random stream, so the same manifest meets the same faults whatever order
concurrent requests happen to arrive in.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

# What each kind does when it hits. Request kinds are keyed on the tasks a POST holds,
# task_error and echo_key's task errors on the task UUID, download and money kinds on the
# result (task UUID and result index; videoUUIDs are random, so they could not replay). Each
# retry of a request or download, and each later poll of a result, is a fresh draw: rate 1
# fails every attempt, while a rate like 0.5 lets a retrying client through in the end.
FAULT_DESCRIPTIONS: dict[str, str] = {
    "http500": "POST /v1 answers 500, 503 or a proxy's 502 HTML page",
    "http429": "POST /v1 answers 429 rateLimitExceeded with Retry-After",
    "reset": "POST /v1 drops the connection mid-answer, before or after doing the work",
    "slow": "POST /v1 answers only after slow_seconds",
    "task_error": "a render fails half-way as a failed generation (timeoutProvider, providerError)",
    "echo_key": (
        "a POST holding a videoInference answers 500 'Invalid request for key KEY' with an "
        "'Authorization: Bearer KEY' line, and a task_error it hits repeats the key in its "
        "message (at rate 1 no submission ever lands)"
    ),
    "truncate": "a video download promises the whole file, sends half, then drops the connection",
    "html_video": "a video download answers 200 text/html with a short error page",
    "short_body": "a video download sends the first third with a Content-Length matching it",
    "cut": "a video download sends the first half without a Content-Length and ends cleanly",
    "nan_cost": "a successful getResponse item reports its cost as NaN (the ledger is right)",
    "inf_cost": "a successful getResponse item reports its cost as Infinity",
    "negative_cost": "a successful getResponse item reports its cost as -0.5",
}
FAULT_KINDS = tuple(FAULT_DESCRIPTIONS)
SYNTAX = "expected NAME=RATE[,NAME=RATE...] with RATE from 0 to 1 and NAME one of " + ", ".join(
    FAULT_KINDS
)


class FaultSpecError(ValueError):
    """A --faults value that cannot be read; the text says which part."""


@dataclass(frozen=True)
class FaultSpec:
    """Probability of each fault kind, 0 to 1."""

    rates: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> FaultSpec:
        """Read `http500=0.05,http429=0.05,reset=0.02`; an empty text means no faults."""
        rates: dict[str, float] = {}
        for part in (text or "").split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise FaultSpecError(f"{part.strip()!r} has no rate; {SYNTAX}")
            if name not in FAULT_KINDS:
                raise FaultSpecError(f"unknown fault {name!r}; {SYNTAX}")
            try:
                rate = float(value)
            except ValueError:
                rate = math.nan
            if not 0 <= rate <= 1:  # NaN fails this too
                raise FaultSpecError(
                    f"{part.strip()!r}: the rate must be a number from 0 to 1 "
                    "(a probability, e.g. http500=0.05)"
                )
            rates[name] = rate
        return cls(rates)

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.rates.items()) or "none"


class FaultInjector:
    """Decides, reproducibly, whether a fault hits a given request, and counts the hits."""

    def __init__(self, spec: FaultSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self._seen: Counter[tuple[str, str]] = Counter()
        self.injected: Counter[str] = Counter()

    def hits(self, kind: str, key: str) -> bool:
        rate = self.spec.rates.get(kind, 0.0)
        if rate <= 0:
            return False
        self._seen[(kind, key)] += 1
        if unit_interval(self.seed, kind, key, self._seen[(kind, key)]) >= rate:
            return False
        self.injected[kind] += 1
        return True

    def choice(self, kind: str, key: str, options: int) -> int:
        """A reproducible pick among `options` (which variant of a fault to play)."""
        return int(unit_interval(self.seed, kind + ":choice", key, 0) * options) % options


def unit_interval(seed: int, *parts: object) -> float:
    """A number in [0, 1) determined by the seed and the parts."""
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
