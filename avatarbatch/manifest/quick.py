"""Checking a big manifest's rows without one pydantic validation per row.

Rows of a big batch differ in a few fields (id, prompt, media, vars) and share the rest
(model, format, quality, ...). `QuickCheck` validates each distinct combination of the
shared fields once with `JobFields`, and checks the per-row fields in plain Python. Whatever
it is not sure of (a value pydantic would strip or convert, one that would fail) goes
through `JobFields` as before, so messages and results are exactly pydantic's. At 100,000
rows a JobFields per row was a third of reading the manifest.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from avatarbatch import catalog
from avatarbatch.manifest.fields import JobFields, is_valid_id

#: Fields that differ from row to row, checked here; every other field is shared
PER_ROW = ("id", "portrait", "audio", "prompt", "vars")
_PER_ROW = frozenset(PER_ROW)
_PLACEHOLDER = "x"  #: stands in for the per-row fields while the shared ones are validated


def plain(text: object) -> bool:
    """A str that JobFields keeps exactly as it is (its `str_strip_whitespace` strips what
    Unicode calls white space, all of which `str.isspace` also calls so)."""
    return type(text) is str and text != "" and not text[0].isspace() and not text[-1].isspace()


class QuickCheck:
    """Checked field values of a row, as `dict(JobFields(...))` would give them, or None
    when the row needs JobFields itself (to be checked, or to have its errors told)."""

    def __init__(self) -> None:
        #: the shared fields, by their values and types: their checked values, or None if
        #: they do not pass (1, 1.0 and True are one dict key, but not one value to pydantic)
        self._shared: dict[tuple[tuple[str, type, Any], ...], dict[str, Any] | None] = {}

    def values(self, data: dict[str, Any]) -> dict[str, Any] | None:
        row_id: Any = data.get("id")
        prompt: Any = data.get("prompt")
        job_vars: Any = data.get("vars")
        portrait: Any = data.get("portrait")
        audio: Any = data.get("audio")
        if not (
            plain(row_id)
            and is_valid_id(row_id)
            and plain(portrait)
            and plain(audio)
            and (prompt is None or (plain(prompt) and len(prompt) <= catalog.PROMPT_MAX_CHARS))
            and type(job_vars) is dict
        ):
            return None
        for name, value in job_vars.items():
            if type(name) is not str or not (value == "" or plain(value)):
                return None
        shared = self._shared_values(data)
        if shared is None:
            return None
        values = shared.copy()
        values.update(
            id=row_id, portrait=portrait, audio=audio, prompt=prompt, vars=job_vars.copy()
        )
        return values

    def _shared_values(self, data: dict[str, Any]) -> dict[str, Any] | None:
        try:
            key = tuple(
                [
                    (name, type(value), _frozen(value) if name == "safety" else value)
                    for name, value in data.items()
                    if name not in _PER_ROW
                ]
            )
            hash(key)
        except (TypeError, AttributeError):
            return None
        if key in self._shared:
            return self._shared[key]
        shared = {name: value for name, value in data.items() if name not in _PER_ROW}
        placeholders = dict.fromkeys(("id", "portrait", "audio"), _PLACEHOLDER)
        try:
            checked: dict[str, Any] | None = dict(
                JobFields.model_validate({**shared, **placeholders})
            )
        except ValidationError:
            checked = None
        self._shared[key] = checked
        return checked


def _frozen(safety: dict[str, Any]) -> tuple[tuple[str, type, Any], ...]:
    return tuple((name, type(value), value) for name, value in safety.items())
