"""Where a batch lives, and whose state a state file is.

A state file belongs to one API target (the sandbox, or one API URL) and one manifest. Mixing
them is how money and files get lost: a sandbox rehearsal's "done" jobs would be delivered as
the real result, tasks known to one endpoint would be asked about at another, and a second
manifest sharing the folder would see every job of the first as removed. So:

- the default output folder is anchored to the manifest's own folder (`out/<name>/` beside
  it), never to the working directory, and sandbox rehearsals default to `sandbox/` inside
  it, so "rehearse, then run for real" needs no flags;
- the state file records its target and manifest (`meta`), and a run against another target,
  or with another manifest, is refused before anything is written;
- a state file at the place the default used to be (`out/<name>/` in the working directory)
  is used, and said so, rather than silently ignored.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from avatarbatch.errors import UsageError
from avatarbatch.manifest.document import Manifest
from avatarbatch.state.store import StateStore

log = logging.getLogger("avatarbatch.run")

STATE_NAME = "state.sqlite"
REHEARSAL_DIR = "sandbox"  #: rehearsals live in this folder inside the real output folder
SANDBOX_TARGET = "sandbox"
TARGET_KEY = "target"  #: meta: "sandbox", or the API URL the state's tasks were sent to
DEFAULT_PORTS = {"http": 80, "https": 443}
MANIFEST_KEY = "manifest"  #: meta: the manifest, relative to the state file's folder


@dataclass(frozen=True)
class Place:
    """The output folder and state file of one batch, and how they were chosen."""

    out: Path
    state: Path
    explicit_state: bool  #: --state given: the user chose this file knowingly
    explicit_out: bool = False  #: --out given
    legacy: bool = False  #: found at the old, working-directory-relative default


def default_out(manifest: Manifest, *, sandbox: bool) -> Path:
    """output.dir, else `out/<manifest name>/` beside the manifest; rehearsals one level in."""
    folder = manifest.output_dir or manifest.path.parent / "out" / manifest.path.stem
    return folder / REHEARSAL_DIR if sandbox else folder


def locate(
    manifest: Manifest, *, out: Path | None, state: Path | None, sandbox: bool = False
) -> Place:
    """Where this batch's videos and state are (for a rehearsal when `sandbox`)."""
    folder = out or default_out(manifest, sandbox=sandbox)
    place = Place(
        folder,
        state or folder / STATE_NAME,
        explicit_state=state is not None,
        explicit_out=out is not None,
    )
    if out is None and state is None and manifest.output_dir is None:
        return _legacy(manifest, place, sandbox=sandbox) or place
    return place


def _legacy(manifest: Manifest, place: Place, *, sandbox: bool) -> Place | None:
    """The state at the old default place (`out/<name>/` in the working directory), when
    there is none at the new one and the old one holds this kind of run."""
    old = Path("out") / manifest.path.stem
    old_state = old / STATE_NAME
    if place.state.exists() or not old_state.is_file():
        return None
    if old.resolve() == place.out.resolve():
        return None
    store = StateStore.open(old_state)
    try:
        target = recorded_target(store)
        other = _recorded_manifest(store, old_state)
    finally:
        store.close()
    if (target == SANDBOX_TARGET) != sandbox:
        return None
    if other is not None and other != manifest.path.resolve() and other.exists():
        return None  # another manifest's batch that happens to share the name
    log.warning(
        "using the state file at the old default place %s (the default is now %s, beside the "
        "manifest); move the folder there, or keep passing --out %s",
        old_state,
        place.out,
        old,
    )
    return Place(old, old_state, explicit_state=False, legacy=True)


def target_of(api_url: str | None) -> str:
    """The target's name as recorded: "sandbox", or the API URL in a canonical spelling."""
    if api_url is None:
        return SANDBOX_TARGET
    parts = urlsplit(api_url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port if parts.port not in (None, DEFAULT_PORTS.get(scheme)) else None
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port}" if port is not None else ""
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def recorded_target(store: StateStore) -> str | None:
    """The target a state file belongs to; for a file from before it was recorded, the
    target of its runs (None when it never ran)."""
    target = store.meta(TARGET_KEY)
    if target is not None:
        return target
    runs = store.runs()
    if not runs:
        return None
    arguments = runs[-1]["arguments"]
    return target_of(None if arguments.get("sandbox") else arguments.get("api_url"))


def claim(store: StateStore, place: Place, manifest: Manifest, target: str) -> None:
    """Make sure the state file is this manifest's and this target's, and record it.

    Raises UsageError (exit 2) before anything is written when it belongs to another manifest,
    when a rehearsal and a real run would mix, or when tasks are still open at another API
    URL. A state that holds no task and no result yet may change target freely.
    """
    owner = recorded_target(store)
    if owner is not None and owner != target:
        rehearsal = SANDBOX_TARGET in (owner, target)
        if (rehearsal and store.holds_results()) or store.open_tasks():
            raise UsageError(_target_refusal(place, owner, target, store.open_tasks()))
        # Settled tasks need nothing from their endpoint any more (result URLs are absolute),
        # so an API URL may change between runs; uploads are the old endpoint's, though.
        log.info("%s now belongs to %s (was %s)", place.state, _shown(target), _shown(owner))
        store.forget_uploads()
    check_manifest(store, place, manifest)
    if store.meta(TARGET_KEY) != target:
        store.set_meta(TARGET_KEY, target)
    relative = _relative_manifest(manifest.path, place.state)
    if store.meta(MANIFEST_KEY) != relative:
        store.set_meta(MANIFEST_KEY, relative)


def check_manifest(store: StateStore, place: Place, manifest: Manifest) -> None:
    """Refuse a state file made by another manifest that still exists (unless --state
    named the file: then the user has said it is the one to use)."""
    other = _recorded_manifest(store, place.state)
    if other is None or other == manifest.path.resolve() or place.explicit_state:
        return
    if not other.exists():
        log.warning(
            "%s was made with the manifest %s, which is gone; taking it over for %s",
            place.state,
            other,
            manifest.path,
        )
        return
    raise UsageError(
        f"{place.state} belongs to another manifest, {other}: its jobs are not this one's. "
        f"Give {manifest.path.name} its own folder (--out, or output.dir in the manifest), "
        f"or pass --state {place.state} to take that state file over knowingly"
    )


def _recorded_manifest(store: StateStore, state: Path) -> Path | None:
    relative = store.meta(MANIFEST_KEY)
    if relative is not None:
        return (state.parent.resolve() / relative).resolve()
    runs = store.runs()
    if not runs:
        return None
    recorded = Path(runs[-1]["manifest"])
    # A file from before: only an absolute path says for sure which manifest it was.
    return recorded.resolve() if recorded.is_absolute() else None


def _relative_manifest(manifest: Path, state: Path) -> str:
    """Relative to the state file's folder, so that moving the project folder as a whole
    (manifest and output together) keeps the state file its own."""
    return os.path.relpath(manifest.resolve(), state.parent.resolve())


def _shown(target: str) -> str:
    return "the sandbox" if target == SANDBOX_TARGET else target


def _target_refusal(place: Place, owner: str, target: str, open_tasks: int) -> str:
    where = f"{place.state}"
    if owner == SANDBOX_TARGET and not (place.explicit_out or place.explicit_state):
        return (
            f"{where} holds a sandbox rehearsal made before rehearsals got a folder of their "
            f"own, where a real run now keeps its state: move that folder's contents into "
            f"{place.out / REHEARSAL_DIR} (or delete them), or give the real run another "
            "folder with --out"
        )
    if owner == SANDBOX_TARGET:
        return (
            f"{where} holds a sandbox rehearsal: its videos are not real results. A real run "
            f"keeps its own state: leave out --out/--state to use the default folder, or "
            f"choose another one (rehearsals default to {REHEARSAL_DIR}/ inside it)"
        )
    if target == SANDBOX_TARGET:
        return (
            f"{where} belongs to real runs against {owner}; a sandbox rehearsal must not mix "
            f"into it: leave out --out/--state (rehearsals default to their own "
            f"{REHEARSAL_DIR}/ folder) or choose another folder"
        )
    tasks = f"{open_tasks} task{'s' * (open_tasks != 1)}"
    return (
        f"{where} has {tasks} still open at {owner}, which {target} does not know: finish "
        f"them with --api-url {owner} first, or give this target its own folder with --out"
    )
