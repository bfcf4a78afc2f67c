"""Group commit: many writes to one transaction, each durable before its caller goes on."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from avatarbatch.state import writer as writer_module
from avatarbatch.state.store import (
    JobSpec,
    JobStatus,
    StateError,
    StateStore,
    TaskEntry,
    TaskStatus,
)
from avatarbatch.state.writer import StateWriter

S = JobStatus


def spec(job_id: str) -> JobSpec:
    return JobSpec(job_id, "h1", "klingai:avatar@2.0-standard", 1, 3.5, 0.154)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    store = StateStore.open(tmp_path / "state.sqlite")
    store.ensure_jobs(spec(f"j{i}") for i in range(50))
    return store


def submission(job_id: str) -> TaskEntry:
    return TaskEntry(f"t-{job_id}", TaskStatus.SUBMITTING, attempt=1)


async def test_writes_queued_together_share_one_commit_and_each_is_durable_on_return(
    store: StateStore,
) -> None:
    writer = StateWriter(store)
    moves = [
        writer.transition(f"j{i}", S.UPLOADING, tasks=[submission(f"j{i}")]) for i in range(50)
    ]
    records = await asyncio.gather(*moves)
    # Durable on return: another connection (another process would do the same) sees them.
    with StateStore.open(store.path) as other:
        assert other.counts()["uploading"] == 50
        assert len(other.tasks()) == 50
    assert [r.status for r in records] == [S.UPLOADING] * 50
    assert writer.commits <= 2  # the first write's commit, then everything queued meanwhile
    await writer.aclose()


async def test_a_refused_write_fails_only_its_caller_and_the_rest_of_its_group_lands(
    store: StateStore,
) -> None:
    writer = StateWriter(store)
    legal = writer.transition("j1", S.UPLOADING)
    illegal = writer.transition("j2", S.DONE)  # pending cannot jump to done
    missing = writer.transition("nobody", S.UPLOADING)
    after = writer.transition("j3", S.UPLOADING)
    results = await asyncio.gather(legal, illegal, missing, after, return_exceptions=True)
    assert isinstance(results[1], StateError) and "cannot go from pending to done" in str(
        results[1]
    )
    assert isinstance(results[2], StateError)
    statuses = {job_id: store.get(job_id).status for job_id in ("j1", "j2", "j3")}  # type: ignore[union-attr]
    assert statuses == {"j1": S.UPLOADING, "j2": S.PENDING, "j3": S.UPLOADING}
    # The refused move left no trace in the log either: its savepoint was rolled back.
    assert [e["job_id"] for e in store.events() if e["kind"] == "transition"] == ["j1", "j3"]
    await writer.aclose()


async def test_writes_run_on_the_writers_thread_not_the_event_loops(store: StateStore) -> None:
    writer = StateWriter(store)
    seen: list[str] = []
    await writer.write(lambda state: seen.append(threading.current_thread().name))
    assert seen and seen[0].startswith("avatarbatch-state")
    await writer.aclose()


async def test_a_cancelled_caller_s_write_still_lands(store: StateStore) -> None:
    writer = StateWriter(store)
    blocker = threading.Event()
    first = asyncio.ensure_future(writer.write(lambda state: blocker.wait(5)))
    await asyncio.sleep(0)  # the first batch is now in the thread, holding it
    cancelled = asyncio.ensure_future(writer.transition("j1", S.UPLOADING))
    await asyncio.sleep(0)
    cancelled.cancel()
    blocker.set()
    await first
    await writer.aclose()  # drains what was queued, the cancelled caller's move included
    assert store.get("j1").status is S.UPLOADING  # type: ignore[union-attr]


async def test_closing_commits_everything_queued_and_refuses_later_writes(
    store: StateStore,
) -> None:
    writer = StateWriter(store)
    pending = [asyncio.ensure_future(writer.transition(f"j{i}", S.UPLOADING)) for i in range(5)]
    await asyncio.sleep(0)
    await writer.aclose()
    assert all(task.done() and not task.exception() for task in pending)
    assert store.counts()["uploading"] == 5
    with pytest.raises(StateError, match="closed"):
        await writer.transition("j9", S.UPLOADING)


async def test_a_commit_that_fails_fails_every_write_of_its_group_and_none_lands(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "BUSY_TIMEOUT", 0.05)
    other = sqlite3.connect(store.path)
    other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    try:
        writer = StateWriter(store)
        results = await asyncio.gather(
            writer.transition("j1", S.UPLOADING),
            writer.transition("j2", S.UPLOADING),
            return_exceptions=True,
        )
        assert all(isinstance(r, StateError) for r in results)
        assert "cannot write the state file" in str(results[0])
    finally:
        other.rollback()
        other.close()
    assert store.counts()["uploading"] == 0
    # The lock gone, the writer works again.
    await writer.transition("j1", S.UPLOADING)
    await writer.aclose()
    assert store.counts()["uploading"] == 1
