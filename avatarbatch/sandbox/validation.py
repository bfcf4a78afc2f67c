"""Checking incoming tasks the way the real API does (RUNWARE_PROTOCOL.md §2, §4, §11).

Each check returns a `TaskError` naming the parameter, or None. The sandbox is deliberately
strict: a client that passes here sends nothing the real API documents as invalid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from avatarbatch import catalog

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
URL_RE = re.compile(r"^https?://[^\s/?#]+\S*$", re.I)
DATA_URI_RE = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.I)
BASE64_RE = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}$")

VIDEO_FIELDS = frozenset(
    {
        "taskType", "taskUUID", "model", "inputs", "positivePrompt", "outputType",
        "outputFormat", "outputQuality", "numberResults", "deliveryMethod", "webhookURL",
        "uploadEndpoint", "ttl", "includeCost", "safety", "routing",
    }
)  # fmt: skip
MODEL_IDS = frozenset(m.id for m in catalog.MODELS)


@dataclass(frozen=True)
class TaskError:
    code: str
    message: str
    parameter: str | None = None
    status: int = 400


def check_uuid(task: dict[str, Any]) -> TaskError | None:
    value = task.get("taskUUID")
    if value is None:
        return TaskError("missingTaskUUID", "taskUUID is required.", "taskUUID")
    if not isinstance(value, str) or not UUID_RE.match(value):
        return TaskError("invalidTaskUUID", "taskUUID must be a UUID v4 string.", "taskUUID")
    return None


def media_form(value: Any) -> str | None:
    """Which input form a value is: uuid, url, data_uri, base64; None if none of them."""
    if not isinstance(value, str) or not value:
        return None
    if UUID_RE.match(value):
        return "uuid"
    if URL_RE.match(value):
        return "url"
    if DATA_URI_RE.match(value):
        return "data_uri"
    if len(value) >= 16 and BASE64_RE.match(value):
        return "base64"
    return None


def check_video(task: dict[str, Any]) -> TaskError | None:
    """Validate a videoInference task for the two avatar models."""
    for name in task:
        if name not in VIDEO_FIELDS:
            return TaskError("unsupportedParameter", f"Parameter '{name}' is not supported.", name)
    model = task.get("model")
    if model is None:
        return TaskError("missingModel", "model is required.", "model")
    if model not in MODEL_IDS:
        return TaskError("unknownModel", f"Model '{model}' is not available.", "model")
    return _check_inputs(task.get("inputs")) or _check_options(task)


def _check_inputs(inputs: Any) -> TaskError | None:
    if not isinstance(inputs, dict):
        return TaskError("missingInputs", "inputs with image and audio is required.", "inputs")
    for name in inputs:
        if name not in ("image", "audio"):
            return TaskError(
                "unsupportedParameter", f"inputs.{name} is not supported.", f"inputs.{name}"
            )
    if "image" not in inputs:
        return TaskError("missingImage", "inputs.image is required.", "inputs.image")
    if media_form(inputs["image"]) is None:
        return TaskError(
            "invalidImage", "inputs.image must be a UUID, URL, data URI or base64.", "inputs.image"
        )
    if "audio" not in inputs:
        return TaskError("missingAudio", "inputs.audio is required.", "inputs.audio")
    if media_form(inputs["audio"]) not in ("uuid", "url"):
        return TaskError("invalidAudio", "inputs.audio must be a UUID or a URL.", "inputs.audio")
    return None


def _check_options(task: dict[str, Any]) -> TaskError | None:
    checks = (
        _text("positivePrompt", task, 1, catalog.PROMPT_MAX_CHARS),
        _enum("outputType", task, ("URL",)),
        _enum("outputFormat", task, catalog.OUTPUT_FORMATS),
        _integer("outputQuality", task, *catalog.OUTPUT_QUALITY_RANGE),
        _integer("numberResults", task, *catalog.NUMBER_RESULTS_RANGE),
        _enum("deliveryMethod", task, ("async",)),
        _integer("ttl", task, catalog.TTL_MIN_SECONDS, None),
        _boolean("includeCost", task),
        _url("webhookURL", task),
        _url("uploadEndpoint", task),
        _safety(task.get("safety")),
        None if isinstance(task.get("routing", {}), dict) else _invalid("routing", "an object"),
    )
    return next((error for error in checks if error is not None), None)


def _invalid(name: str, expected: str) -> TaskError:
    code = "invalid" + name[:1].upper() + name[1:].replace(".", "")
    return TaskError(code, f"{name} must be {expected}.", name)


def _text(name: str, task: dict[str, Any], low: int, high: int) -> TaskError | None:
    value = task.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not low <= len(value) <= high:
        return _invalid(name, f"a string of {low} to {high} characters")
    return None


def _enum(name: str, task: dict[str, Any], allowed: tuple[str, ...]) -> TaskError | None:
    value = task.get(name)
    if value is None or value in allowed:
        return None
    return _invalid(name, "one of " + ", ".join(allowed))


def _integer(name: str, task: dict[str, Any], low: int, high: int | None) -> TaskError | None:
    value = task.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        return _invalid(name, f"an integer {bounds}")
    return None


def _boolean(name: str, task: dict[str, Any]) -> TaskError | None:
    value = task.get(name)
    return None if value is None or isinstance(value, bool) else _invalid(name, "a boolean")


def _url(name: str, task: dict[str, Any]) -> TaskError | None:
    value = task.get(name)
    if value is None or (isinstance(value, str) and URL_RE.match(value)):
        return None
    return _invalid(name, "an http(s) URL")


def _safety(value: Any) -> TaskError | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return _invalid("safety", "an object")
    for name in value:
        if name not in ("checkContent", "mode"):
            return TaskError(
                "unsupportedParameter", f"safety.{name} is not supported.", f"safety.{name}"
            )
    if "checkContent" in value and not isinstance(value["checkContent"], bool):
        return _invalid("safety.checkContent", "a boolean")
    if "mode" in value and value["mode"] not in catalog.SAFETY_MODES:
        return _invalid("safety.mode", "one of " + ", ".join(catalog.SAFETY_MODES))
    return None


def check_upload(task: dict[str, Any], field_name: str) -> TaskError | None:
    """imageUpload (`image`) or mediaStorage upload (`media`): URL, data URI or base64."""
    if task.get("taskType") == "mediaStorage" and task.get("operation") != "upload":
        return TaskError(
            "unsupportedOperation", "Only operation 'upload' is supported here.", "operation"
        )
    value = task.get(field_name)
    if value is None:
        return TaskError(f"missing{field_name.title()}", f"{field_name} is required.", field_name)
    if media_form(value) not in ("url", "data_uri", "base64"):
        return _invalid(field_name, "a URL, data URI or base64 string")
    return None
