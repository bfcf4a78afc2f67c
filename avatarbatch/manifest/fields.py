"""Job fields: their names and aliases, and the pydantic model that checks one job's values.

A row arrives flat (`safety.mode`, `vars.lang`), from YAML or CSV, under our snake_case names
or Runware's camelCase ones. `canonical_name` folds every spelling to one key; `JobFields`
validates a row after defaults, matrix values and templates have been applied.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import ErrorDetails

from avatarbatch import catalog
from avatarbatch.manifest.problems import shorten

ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
VAR_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ID_LENGTH = 120
RESERVED_VAR_NAMES = frozenset({"id", "index", "ext", "n"})

SCALAR_FIELDS = (
    "id",
    "portrait",
    "audio",
    "prompt",
    "model",
    "output_format",
    "output_quality",
    "number_results",
    "ttl",
    "webhook_url",
    "upload_endpoint",
    "include_cost",
)
SAFETY_FIELDS = ("safety.check_content", "safety.mode")
TEMPLATED_FIELDS = ("id", "portrait", "audio", "prompt", "webhook_url", "upload_endpoint")

# Runware's request names, accepted wherever ours are.
ALIASES = {
    "positivePrompt": "prompt",
    "outputFormat": "output_format",
    "outputQuality": "output_quality",
    "numberResults": "number_results",
    "webhookURL": "webhook_url",
    "uploadEndpoint": "upload_endpoint",
    "includeCost": "include_cost",
    "safety.checkContent": "safety.check_content",
}
KNOWN_NAMES = (*SCALAR_FIELDS, *SAFETY_FIELDS, "safety", "vars", *ALIASES)
VARS_PREFIX = "vars."  #: how a var's flat name starts: `vars.lang` is the var `lang`


def canonical_name(name: str) -> str | None:
    """Our flat name for a field written as `name`, or None if it is no field at all.

    `vars.<name>` passes through; a bad var name is reported by the caller.
    """
    name = name.strip()
    if name in SCALAR_FIELDS or name in SAFETY_FIELDS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    if name.startswith(VARS_PREFIX) and len(name) > len(VARS_PREFIX):
        return name
    return None


def suggestion(name: str, choices: tuple[str, ...] = KNOWN_NAMES) -> str:
    """A ` (did you mean ...?)` hint for a misspelt name, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {known.lower(): known for known in choices}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_valid_id(value: str) -> bool:
    return (
        bool(ID_PATTERN.match(value)) and value not in {".", ".."} and len(value) <= MAX_ID_LENGTH
    )


def _no_bool(value: Any) -> Any:
    # pydantic's lax mode reads True as 1; a boolean in a number field is always a mistake.
    if isinstance(value, bool):
        raise ValueError("should be a whole number, not true/false")
    return value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


WholeNumber = Annotated[int, BeforeValidator(_no_bool)]


class Safety(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    check_content: bool | None = None
    mode: Annotated[Literal["none", "fast", "full"] | None, BeforeValidator(_lower)] = None


class JobFields(BaseModel):
    """One job's values, checked against the API's documented ranges (RUNWARE_PROTOCOL.md §2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    portrait: str = Field(min_length=1)
    audio: str = Field(min_length=1)
    prompt: str | None = Field(None, min_length=1, max_length=catalog.PROMPT_MAX_CHARS)
    model: str = catalog.DEFAULT_MODEL.id
    output_format: Annotated[Literal["MP4", "WEBM", "MOV"], BeforeValidator(_upper)] = "MP4"
    output_quality: WholeNumber | None = Field(
        None, ge=catalog.OUTPUT_QUALITY_RANGE[0], le=catalog.OUTPUT_QUALITY_RANGE[1]
    )
    number_results: WholeNumber = Field(
        1, ge=catalog.NUMBER_RESULTS_RANGE[0], le=catalog.NUMBER_RESULTS_RANGE[1]
    )
    ttl: WholeNumber | None = Field(None, ge=catalog.TTL_MIN_SECONDS)
    safety: Safety | None = None
    webhook_url: str | None = None
    upload_endpoint: str | None = None
    include_cost: bool = True
    vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not is_valid_id(value):
            raise ValueError(
                f"{value!r} may use only letters, digits, '.', '_' and '-' "
                "(it names the output files)"
            )
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        model = catalog.find_model(value)
        if model is None:
            names = ", ".join(f"{m.alias} ({m.id})" for m in catalog.MODELS)
            raise ValueError(f"unknown model {value!r}; choose {names}")
        return model.id

    @field_validator("webhook_url", "upload_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/?#]+[^\s]*$", value, re.IGNORECASE):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


FIELD_TYPES_HELP = {
    "int_parsing": "should be a whole number",
    "int_from_float": "should be a whole number",
    "int_type": "should be a whole number",
    "bool_parsing": "should be true or false",
    "bool_type": "should be true or false",
    "string_type": "should be text",
    "dict_type": "should be a mapping",
    "model_type": "should be a mapping",
}


def describe_error(error: ErrorDetails) -> str:
    """A pydantic error as one sentence for the person running the batch, with what was given.

    The sentence is complete: callers add nothing, so no message says "(got ...)" twice.
    """
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "missing":
        return "is required"
    if kind == "value_error":  # our validators' messages already quote the value
        return str(ctx.get("error", error["msg"]))
    if kind == "string_too_short":
        return "should not be empty"
    if kind == "string_too_long":
        # The length, not the text: the text may be a pasted blob.
        return f"should be at most {ctx.get('max_length')} characters (got {len(error['input'])})"
    if kind in FIELD_TYPES_HELP:
        message = FIELD_TYPES_HELP[kind]
    elif kind in {"greater_than_equal", "less_than_equal"}:
        bound = "at least" if kind == "greater_than_equal" else "at most"
        message = f"should be {bound} {ctx.get('ge', ctx.get('le'))}"
    else:
        message = str(error["msg"]).replace("Input should be", "should be", 1)
    return f"{message} (got {shorten(error['input'])})"
