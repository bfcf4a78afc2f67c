"""Building a SandboxConfig from command-line values, with user-facing errors."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from avatarbatch.errors import UsageError
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.faults import FaultSpec, FaultSpecError


def build(*, faults: str | None = None, **values: Any) -> SandboxConfig:
    """A validated config; bad values raise UsageError naming the option."""
    try:
        spec = FaultSpec.parse(faults)
    except FaultSpecError as exc:
        raise UsageError(f"--faults: {exc}") from None
    try:
        return SandboxConfig(faults=spec, **values)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + str(error["loc"][0]).replace("_", "-")
        raise UsageError(f"{option}: {error['msg']}") from None
