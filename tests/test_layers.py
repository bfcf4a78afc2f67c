"""The package tree is the architecture: layers import only downward (checked by `make lint`
with import-linter), and loading a layer loads nothing it does not need."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("uvicorn", "starlette")


@pytest.mark.parametrize(
    "module",
    [
        "avatarbatch",
        "avatarbatch.engine.batch",
        "avatarbatch.cli.commands",
        "avatarbatch.runware.client",
    ],
)
def test_no_layer_loads_the_web_server_until_a_sandbox_is_asked_for(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""


def test_the_library_entry_point_is_still_at_the_top() -> None:
    import avatarbatch

    assert callable(avatarbatch.run_manifest)
    with pytest.raises(AttributeError):
        avatarbatch.no_such_thing  # noqa: B018
