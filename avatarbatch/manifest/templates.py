"""String templates in manifests (`voices/{lang}.mp3`, `host-{lang}`) and output file names.

Deliberately not str.format: a manifest is untrusted input, and `{lang.__class__}` must not
reach Python's attribute lookup. Only `{name}` and `{name:spec}` are recognised; `{{`/`}}` are
literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
MAX_RENDERED_CHARS = 100_000
SAFE_PATH_PART = re.compile(r'^[^\x00-\x1f\\/:*?"<>|]+$')
MAX_PATH_PART = 200
DEFAULT_FILENAME = "{id}.{ext}"  #: `output.filename` unless the manifest says otherwise


class TemplateError(ValueError):
    """A template that cannot be filled in; the text names the placeholder."""


def placeholders(template: str) -> list[str]:
    """The names a template refers to, in order."""
    return [
        m.group(1).partition(":")[0].strip()
        for m in PLACEHOLDER.finditer(template)
        if m.group(1) is not None
    ]


def render(template: str, values: Mapping[str, object]) -> str:
    """Fill `{name}` / `{name:spec}` from `values`; raises TemplateError naming what is wrong."""
    if "{" not in template and "}" not in template:
        return template

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name, _, spec = match.group(1).partition(":")
        name = name.strip()
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise TemplateError(f"unknown placeholder {{{name}}} (known here: {known})")
        try:
            return format(values[name], spec)
        except (ValueError, TypeError) as exc:
            raise TemplateError(f"bad format in {{{match.group(1)}}}: {exc}") from None

    rendered = PLACEHOLDER.sub(fill, template)
    if len(rendered) > MAX_RENDERED_CHARS:
        raise TemplateError(f"expands to {len(rendered):,} characters")
    return rendered


def output_name(template: str, values: Mapping[str, object], results: int) -> list[str]:
    """Relative file names for a job's results; several results get `-{n}` unless `{n}` is used.

    Raises TemplateError when a name could leave the videos folder or is unusable as a file name.
    """
    names = []
    for n in range(1, results + 1):
        text = template
        if results > 1 and "n" not in placeholders(template):
            stem, dot, ext = template.rpartition(".")
            text = f"{stem}-{{n}}.{ext}" if dot else f"{template}-{{n}}"
        name = render(text, {**values, "n": n})
        check_relative_name(name)
        names.append(name)
    return names


def check_relative_name(name: str) -> None:
    """Refuse names that are absolute, climb out with `..`, hide themselves or hold odd bytes."""
    if not name or name.startswith("/"):
        raise TemplateError(f"file name {name!r} must be relative to the videos folder")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise TemplateError(f"file name {name!r} may not contain empty, '.' or '..' parts")
        if part.startswith("."):
            raise TemplateError(f"file name {name!r} may not have parts starting with '.'")
        if not SAFE_PATH_PART.match(part) or len(part) > MAX_PATH_PART:
            raise TemplateError(
                f"file name {name!r} has characters that are not safe in file names, "
                f"or a part longer than {MAX_PATH_PART}"
            )
