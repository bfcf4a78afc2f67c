"""The two Kling avatar models on Runware: ids, aliases, prices and input limits.

This module is the single source of these facts. Prices come from Runware's model pages;
the input limits are Kling's own (RUNWARE_PROTOCOL.md section 9), which Runware does not
document but passes through, so avatarbatch checks them before anything is paid for.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal


@dataclass(frozen=True, slots=True)
class AvatarModel:
    """One avatar model: what to send as `model`, what users may call it, what it costs."""

    id: str
    alias: str
    usd_per_second: Decimal
    #: the render time expected before any task of this model has finished: fixed seconds
    #: plus seconds per second of audio (see RENDER_PRIOR_NOTE)
    render_prior_fixed_s: float = 30.0
    render_prior_per_audio_s: float = 6.0

    def render_prior(self, audio_seconds: float) -> float:
        """Seconds one task is guessed to render for, before anything has been learnt."""
        return self.render_prior_fixed_s + self.render_prior_per_audio_s * audio_seconds

    def cost(self, seconds: float, results: int = 1) -> Decimal:
        """Cost of `results` videos of `seconds` each, rounded like Runware bills (5 places).

        Runware bills the output length truncated to milliseconds (RUNWARE_PROTOCOL.md §8).
        """
        # repr() keeps 17.333 as 17.333; float arithmetic would floor it to 17.332.
        billed_ms = (Decimal(repr(seconds)) * 1000).to_integral_value(ROUND_FLOOR)
        one = (self.usd_per_second * billed_ms / 1000).quantize(CENT_FRACTION, ROUND_HALF_EVEN)
        return one * results


CENT_FRACTION = Decimal("0.00001")

# RENDER_PRIOR_NOTE: Runware documents no render times for these models; the priors are a
# guess (a queue wait plus a render slower than real time, pro slower than standard), not a
# measurement. The poller only times its first, early, blind checks from them (a fraction of
# the prior) and replaces them with what it learns as soon as one task of the model finishes.
STANDARD = AvatarModel(
    "klingai:avatar@2.0-standard",
    "standard",
    Decimal("0.044"),
    render_prior_fixed_s=30.0,
    render_prior_per_audio_s=6.0,
)
PRO = AvatarModel(
    "klingai:avatar@2.0-pro",
    "pro",
    Decimal("0.087"),
    render_prior_fixed_s=45.0,
    render_prior_per_audio_s=10.0,
)
MODELS: tuple[AvatarModel, ...] = (STANDARD, PRO)
DEFAULT_MODEL = STANDARD

_BY_NAME = {name.lower(): m for m in MODELS for name in (m.id, m.alias)}
_BY_ID = {m.id: m for m in MODELS}


def find_model(name: str) -> AvatarModel | None:
    """The model called `name` (full id or alias, any case), or None."""
    return _BY_NAME.get(name.strip().lower())


def model_by_id(model_id: str) -> AvatarModel:
    """The model with this exact id; a KeyError means a bug, since ids come from find_model."""
    return _BY_ID[model_id]


# Input limits (Kling's avatar API). Sizes are decimal megabytes: the stricter reading of
# "10 MB", so nothing we accept can be refused by the provider for its size.
IMAGE_FORMATS = ("JPEG", "PNG")
IMAGE_MAX_BYTES = 10_000_000
IMAGE_MIN_SIDE = 300
IMAGE_MAX_ASPECT = 2.5
# Runware stores uploaded images at most this size on the long side; larger ones are scaled down.
IMAGE_STORED_MAX_SIDE = 2048

AUDIO_FORMATS = ("MP3", "WAV", "M4A", "AAC")
AUDIO_MAX_BYTES = 5_000_000
AUDIO_MIN_SECONDS = 2.0
AUDIO_MAX_SECONDS = 300.0

PROMPT_MAX_CHARS = 2500

OUTPUT_FORMATS = ("MP4", "WEBM", "MOV")
OUTPUT_QUALITY_RANGE = (20, 99)
NUMBER_RESULTS_RANGE = (1, 4)
TTL_MIN_SECONDS = 60
SAFETY_MODES = ("none", "fast", "full")
