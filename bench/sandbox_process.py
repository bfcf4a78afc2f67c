"""A sandbox in a process of its own, so its CPU time never counts against a contender.

The parent starts `python bench/sandbox_process.py '<SandboxConfig JSON>'`; the child serves
on a free loopback port, prints its base URL, and stops when its stdin closes (which also
happens when the parent dies, so no sandbox outlives a benchmark).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox


@contextmanager
def sandbox_process(config: SandboxConfig) -> Iterator[RunningSandbox]:
    """A sandbox serving in a child process for the length of the `with` block."""
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), config.model_dump_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        base_url = child.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"the sandbox process did not start (exit {child.poll()})")
        yield RunningSandbox(base_url, base_url + config.path, config)
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main() -> None:
    config = SandboxConfig.model_validate_json(sys.argv[1])
    with running_sandbox(config) as sandbox:
        print(sandbox.base_url, flush=True)
        sys.stdin.read()  # until the parent closes the pipe


if __name__ == "__main__":
    main()
