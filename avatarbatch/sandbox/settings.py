"""Building a SandboxConfig from command-line values, with user-facing errors."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from avatarbatch.errors import UsageError
from avatarbatch.sandbox.config import PROFILES, STRICT_KNOBS, SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec, FaultSpecError


def build(
    *,
    faults: str | None = None,
    profile: str = "default",
    option_prefix: str = "--",
    **values: Any,
) -> SandboxConfig:
    """A validated config; bad values raise UsageError naming the option.

    Options are named `option_prefix` + the value's name with dashes (`--faults`, or
    `--sandbox-faults` for a command that prefixes its sandbox options). A profile knob passed
    as None counts as not given, so the profile decides it: a CLI can default those options
    to None and pass them all through.
    """
    if profile not in PROFILES:
        raise UsageError(f"{option_prefix}profile: {profile!r} is not one of {', '.join(PROFILES)}")
    try:
        spec = FaultSpec.parse(faults)
    except FaultSpecError as exc:
        raise UsageError(f"{option_prefix}faults: {exc}") from None
    given = {k: v for k, v in values.items() if not (k in STRICT_KNOBS and v is None)}
    try:
        return SandboxConfig(faults=spec, profile=profile, **given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "sandbox"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{option_prefix}{name.replace('_', '-')}: {message}") from None
