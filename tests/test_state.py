"""The state file: migrations, privacy, the job state machine, round trips, and the run lock."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from avatarbatch.plan import PlanStatus, StoredJob, plan_status
from avatarbatch.state import migrations as migrations_module
from avatarbatch.state.lock import StateLocked, lock_path, state_lock
from avatarbatch.state.store import (
    MIGRATIONS,
    TRANSITIONS,
    JobRecord,
    JobSpec,
    JobStatus,
    OwnedFile,
    StateError,
    StateStore,
    TaskEntry,
    TaskStatus,
)

S = JobStatus
SPEC: dict[str, Any] = {
    "spec_hash": "h1",
    "model": "klingai:avatar@2.0-standard",
    "number_results": 1,
    "audio_seconds": 3.5,
    "estimated_cost": 0.35,
}
RESULT = {
    "video_uuid": "v-1",
    "video_url": "https://x/v.mp4",
    "seed": 7,
    "nsfw": False,
    "cost": 0.3,
}
OUTPUT = {"path": "videos/a.mp4", "bytes": 1234, "sha256": "ab" * 32}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "demo" / "state.sqlite"


@pytest.fixture
def store(path: Path) -> Any:
    store = StateStore.open(path)
    yield store
    store.close()


def sql(path: Path, script: str) -> list[tuple[Any, ...]]:
    """Run SQL on the file as another program would, on a connection of its own."""
    with closing(sqlite3.connect(path)) as conn:
        if ";" in script:
            conn.executescript(script)
            return []
        rows = conn.execute(script).fetchall()
        conn.commit()
        return rows


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def path_to(status: JobStatus) -> list[JobStatus]:
    """The shortest chain of legal moves from PENDING to `status` (excluding PENDING)."""
    queue: deque[list[JobStatus]] = deque([[S.PENDING]])
    while queue:
        chain = queue.popleft()
        if chain[-1] is status:
            return chain[1:]
        queue.extend([*chain, n] for n in TRANSITIONS[chain[-1]] if n not in chain)
    raise AssertionError(status)


def register(store: StateStore, job_id: str, **changes: Any) -> JobRecord:
    """Register one job as a run registers its plan (`ensure_jobs`); its record as stored."""
    store.ensure_jobs([JobSpec(job_id, **{**SPEC, **changes})])
    record = store.get(job_id)
    assert record is not None
    return record


def job_at(store: StateStore, status: JobStatus, job_id: str = "a") -> None:
    register(store, job_id)
    for step in path_to(status):
        store.transition(job_id, step)


# --- opening, migrations, privacy -----------------------------------------------------------------


def test_opening_a_new_path_creates_folders_and_applies_every_migration(path: Path) -> None:
    with StateStore.open(path) as store:
        assert store.path == path
    with sqlite_utils.Database(path) as db:
        assert {"runs", "jobs", "uploads", "events", "_migrations"} <= set(db.table_names())
        migrations = [r["name"] for r in db.query("select name from _migrations")]
        assert "events_job_id" in {i.name for i in db.table("events").indexes}
    assert migrations == [m.__name__ for m in MIGRATIONS]


def test_reopening_an_existing_file_applies_no_migration_twice(path: Path) -> None:
    with StateStore.open(path) as store:
        register(store, "a")
    before = sql(path, "select * from _migrations")
    with StateStore.open(path) as store:
        assert list(store.jobs()) == ["a"]
    with StateStore.open(path):
        pass
    assert sql(path, "select * from _migrations") == before


def test_a_later_migration_is_applied_once_to_an_older_file(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    StateStore.open(path).close()
    calls: list[str] = []

    def m099_test_notes(db: sqlite_utils.Database) -> None:
        calls.append("m099")
        db.execute("CREATE TABLE notes (text TEXT)")

    monkeypatch.setattr(migrations_module, "MIGRATIONS", [*MIGRATIONS, m099_test_notes])
    StateStore.open(path).close()
    StateStore.open(path).close()
    assert calls == ["m099"]
    assert sql(path, "select name from _migrations") == [
        ("m001_initial",),
        ("m002_ledger",),
        ("m003_media_probes",),
        ("m099_test_notes",),
    ]


def test_the_state_file_and_its_wal_are_private_even_under_a_loose_umask(path: Path) -> None:
    old = os.umask(0o022)
    try:
        with StateStore.open(path) as store:
            register(store, "a")
            wal = Path(f"{path}-wal")
            assert wal.exists()
            assert mode(path) == 0o600
            assert mode(wal) == 0o600
    finally:
        os.umask(old)


def test_an_existing_readable_state_file_is_made_private_on_open(path: Path) -> None:
    StateStore.open(path).close()
    path.chmod(0o644)
    StateStore.open(path).close()
    assert mode(path) == 0o600


def test_the_state_file_is_in_wal_mode(store: StateStore, path: Path) -> None:
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]


def test_a_file_of_random_bytes_is_a_clean_state_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(4096))
    with pytest.raises(StateError, match=r"state\.sqlite is not a usable avatarbatch state file"):
        StateStore.open(path)


def test_a_directory_in_place_of_the_state_file_is_a_clean_state_error(path: Path) -> None:
    path.mkdir(parents=True)
    with pytest.raises(StateError, match="cannot open the state file"):
        StateStore.open(path)


def test_an_empty_sqlite_database_is_adopted_and_migrated(path: Path) -> None:
    path.parent.mkdir(parents=True)
    sqlite3.connect(path).close()  # a valid, empty database (zero bytes)
    assert path.stat().st_size == 0
    with StateStore.open(path) as store:
        register(store, "a")
        assert store.counts()["pending"] == 1


def test_another_programs_database_is_refused_and_left_untouched(path: Path) -> None:
    path.parent.mkdir(parents=True)
    sql(path, "create table photos (id integer)")
    with pytest.raises(StateError, match=r"not an avatarbatch state file.*photos"):
        StateStore.open(path)
    assert sql(path, "PRAGMA journal_mode") == [("delete",)]
    assert sql(path, "select name from sqlite_master") == [("photos",)]


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("create table _migrations (id integer, version text)", "did not write"),
        (
            "create table _migrations (name text); insert into _migrations values ('0001_x')",
            "newer",
        ),
    ],
    ids=["foreign-columns", "unknown-names"],
)
def test_a_migrations_table_from_elsewhere_is_a_state_error(
    path: Path, ddl: str, message: str
) -> None:
    path.parent.mkdir(parents=True)
    sql(path, ddl + ";")
    with pytest.raises(StateError, match=message):
        StateStore.open(path)


def test_the_file_reads_as_plain_json_columns_for_sqlite_utils(
    store: StateStore, path: Path
) -> None:
    register(store, "a")
    store.transition("a", S.SUBMITTING, task_uuid="t-1", attempts=1)
    store.transition("a", S.PROCESSING)
    store.transition("a", S.DOWNLOADING, results=[RESULT])
    with sqlite_utils.Database(path) as db:
        row = next(db.query("select * from jobs"))
    assert row["status"] == "downloading"
    assert json.loads(row["results"]) == [RESULT]
    assert json.loads(row["vars"]) == {}  # a job's vars are read from its manifest, never here
    assert sql(path, "select json_extract(results, '$[0].cost') from jobs") == [(0.3,)]


# --- ensure_jobs ------------------------------------------------------------------------------------


def test_ensure_jobs_inserts_a_new_job_as_pending(store: StateStore) -> None:
    record = register(store, "a")
    assert (record.status, record.attempts, record.task_uuid) == (S.PENDING, 0, None)
    assert (record.results, record.outputs) == ([], [])
    assert store.get("a") == record
    assert [e["kind"] for e in store.events("a")] == ["created"]


def test_ensure_jobs_with_the_same_spec_leaves_the_stored_job_unchanged(store: StateStore) -> None:
    job_at(store, S.PROCESSING)
    stored = store.get("a")
    assert store.ensure_jobs([JobSpec("a", **SPEC)]) == {"a": S.PROCESSING}
    assert store.get("a") == stored


def test_ensure_jobs_with_a_changed_spec_resets_the_job_but_keeps_its_outputs(
    store: StateStore,
) -> None:
    job_at(store, S.DOWNLOADING)
    store.transition("a", S.DONE, task_uuid="t-1", attempts=1, results=[RESULT],
                     outputs=[OUTPUT], actual_cost=0.3, image_input="img")  # fmt: skip
    record = register(store, "a", spec_hash="h2", audio_seconds=9.0)
    assert (record.status, record.spec_hash, record.audio_seconds) == (S.PENDING, "h2", 9.0)
    assert (record.attempts, record.task_uuid, record.results) == (0, None, [])
    assert (record.actual_cost, record.error_code, record.image_input) == (None, None, None)
    assert record.outputs == [OUTPUT]
    changed = store.events("a")[-1]
    assert changed["kind"] == "changed"
    assert changed["detail"] == {"spec_hash": "h2", "old_spec_hash": "h1", "old_status": "done",
                                 "attempts": 1, "task_uuid": "t-1", "actual_cost": 0.3}  # fmt: skip


def test_ensure_jobs_handles_new_same_and_changed_jobs_in_one_call(store: StateStore) -> None:
    register(store, "same")
    job_at(store, S.FAILED, "changed")
    specs = [
        JobSpec("new", **SPEC),
        JobSpec("same", **SPEC),
        JobSpec("changed", **{**SPEC, "spec_hash": "h2"}),
    ]
    statuses = store.ensure_jobs(specs)
    assert statuses == dict.fromkeys(("new", "same", "changed"), S.PENDING)
    assert list(store.jobs()) == ["same", "changed", "new"]


# --- transitions ------------------------------------------------------------------------------------

LEGAL = sorted((a, b) for a, targets in TRANSITIONS.items() for b in targets)
ILLEGAL = sorted((a, b) for a, b in itertools.product(S, S) if b not in TRANSITIONS[a])


def test_the_table_allows_every_documented_move_and_nothing_else() -> None:
    assert len(LEGAL) == 4 + 4 + 5 + 6 + 4 + 2 + 1
    assert all((status, S.PENDING) in LEGAL for status in S)
    assert (S.PROCESSING, S.SUBMITTING) in LEGAL
    assert (S.SUBMITTING, S.UPLOADING) in LEGAL  # a submission refused for a forgotten upload
    assert (S.PENDING, S.DONE) in ILLEGAL


@pytest.mark.parametrize(("start", "to"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_every_legal_transition_is_accepted(store: StateStore, start: S, to: S) -> None:
    job_at(store, start)
    assert store.transition("a", to).status is to
    assert store.get("a").status is to  # type: ignore[union-attr]


@pytest.mark.parametrize(("start", "to"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_an_illegal_transition_is_a_state_error_naming_the_job_and_both_states(
    store: StateStore, start: S, to: S
) -> None:
    job_at(store, start, "job-7")
    before = store.get("job-7")
    with pytest.raises(StateError, match=f"job 'job-7' cannot go from {start} to {to}"):
        store.transition("job-7", to, attempts=99)
    assert store.get("job-7") == before


def test_a_transition_of_an_unknown_job_is_a_state_error(store: StateStore) -> None:
    with pytest.raises(StateError, match="job 'ghost' is not in"):
        store.transition("ghost", S.UPLOADING)


def test_an_unknown_field_is_a_type_error_and_writes_nothing(store: StateStore) -> None:
    register(store, "a")
    with pytest.raises(TypeError, match="colour"):
        store.transition("a", S.UPLOADING, colour="red")
    assert store.get("a").status is S.PENDING  # type: ignore[union-attr]
    assert [e["kind"] for e in store.events("a")] == ["created"]


def test_a_transition_appends_an_event_with_both_states_and_the_fields(store: StateStore) -> None:
    register(store, "a")
    store.transition("a", S.SUBMITTING, task_uuid="t-1", attempts=1)
    event = store.events("a")[-1]
    assert event["kind"] == "transition"
    assert event["detail"] == {
        "from": "pending",
        "to": "submitting",
        "task_uuid": "t-1",
        "attempts": 1,
    }
    assert event["at"] > 0


def test_a_transition_logs_the_ledger_and_files_writes_of_its_transaction(
    store: StateStore,
) -> None:
    job_at(store, S.PROCESSING)
    billed = TaskEntry("t-1", TaskStatus.BILLED, billed_cost=0.132, cost_source="api")
    claim = OwnedFile("videos/a.mp4")
    store.transition("a", S.DOWNLOADING, tasks=[billed], files=[claim], actual_cost=0.132)
    video = OwnedFile("videos/a.mp4", "a", 1234, "ab" * 32, 1_700_000_000_000_000_000)
    store.transition("a", S.DONE, files=[video], outputs=[OUTPUT])
    *_, result, done = store.events("a")
    assert result["detail"] == {
        "from": "processing",
        "to": "downloading",
        "actual_cost": 0.132,
        "tasks": [{"task_uuid": "t-1", "status": "billed", "billed_cost": 0.132,
                   "cost_source": "api"}],
        "files": [{"path": "videos/a.mp4"}],
    }  # fmt: skip
    assert done["detail"]["files"] == [{"path": "videos/a.mp4", "bytes": 1234, "sha256": "ab" * 32}]
    assert "tasks" not in done["detail"]
    (ledger,) = store.tasks("a")
    logged = result["detail"]["tasks"][0]
    assert (ledger["task_uuid"], ledger["status"], ledger["billed_cost"], ledger["cost_source"]) == (
        logged["task_uuid"], logged["status"], logged["billed_cost"], logged["cost_source"],
    )  # fmt: skip


def test_a_new_attempt_logs_its_task_with_attempt_run_and_estimate(store: StateStore) -> None:
    register(store, "a")
    sent = TaskEntry("t-1", TaskStatus.SUBMITTING, attempt=1, spec_hash="h1", run_id=3,
                     estimated_cost=0.35)  # fmt: skip
    store.transition("a", S.SUBMITTING, tasks=[sent], task_uuid="t-1", attempts=1)
    assert store.events("a")[-1]["detail"]["tasks"] == [
        {"task_uuid": "t-1", "status": "submitting", "attempt": 1, "run_id": 3,
         "estimated_cost": 0.35}
    ]  # fmt: skip


def test_settling_a_task_logs_its_whole_entry_in_the_same_commit(
    store: StateStore, path: Path
) -> None:
    register(store, "a")
    entry = TaskEntry("t-9", TaskStatus.BILLED, billed_cost=0.5, cost_source="estimate")
    store.settle_task("a", entry)
    assert store.events("a")[-1]["detail"] == {
        "task_uuid": "t-9",
        "status": "billed",
        "billed_cost": 0.5,
        "cost_source": "estimate",
    }
    sql(path, "create trigger no_events before insert on events "
             "begin select raise(abort, 'disk full, say'); end;")  # fmt: skip
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        store.settle_task("a", TaskEntry("t-10", TaskStatus.REFUSED, billed_cost=0.0))
    assert [t["task_uuid"] for t in store.tasks("a")] == ["t-9"]  # the ledger row went too


def test_fields_round_trip_through_a_reopened_file(path: Path) -> None:
    with StateStore.open(path) as store:
        register(store, "å-1")
        job_at(store, S.DOWNLOADING, "å-1")
        fields: dict[str, Any] = {
            "task_uuid": "t-9", "attempts": 2, "results": [RESULT, {**RESULT, "seed": None}],
            "outputs": [OUTPUT], "error_code": None, "error_message": "ünïcode ✓",
            "actual_cost": 0.1 + 0.2, "image_input": "https://x/face.png", "audio_input": None,
            "submitted_at": 1700000000.125, "estimated_cost": 1.5, "audio_seconds": None,
        }  # fmt: skip
        written = store.transition("å-1", S.DONE, **fields)
    with StateStore.open(path) as store:
        read = store.get("å-1")
    assert read == written
    assert read is not None
    for name, value in fields.items():
        assert getattr(read, name) == value
    assert read.status is S.DONE


def test_decimal_costs_are_stored_as_floats(store: StateStore) -> None:
    record = register(store, "a", estimated_cost=Decimal("0.35"))
    assert record.estimated_cost == 0.35
    job_at(store, S.PROCESSING)
    record = store.transition("a", S.DOWNLOADING, actual_cost=Decimal("0.30"),
                              results=[{**RESULT, "cost": Decimal("0.30")}])  # fmt: skip
    assert record.actual_cost == 0.3
    assert record.results[0]["cost"] == 0.3


def test_the_injected_clock_stamps_jobs_and_events(path: Path) -> None:
    ticks = itertools.count(100)
    with StateStore.open(path, clock=lambda: float(next(ticks))) as store:
        first = register(store, "a")
        second = store.transition("a", S.UPLOADING)
        times = [e["at"] for e in store.events("a")]
    assert 100 <= first.updated_at < second.updated_at
    assert times == sorted(times)
    assert times[0] >= 100


def test_each_public_write_commits_exactly_once(store: StateStore) -> None:
    statements: list[str] = []
    store._db.conn.set_trace_callback(statements.append)

    def commits(action: Any) -> int:
        statements.clear()
        action()
        return sum(s.strip().upper() == "COMMIT" for s in statements)

    run = 0

    def start() -> None:
        nonlocal run
        run = store.start_run(manifest="m.yaml", manifest_sha256="x", arguments={})

    writes = [
        start,
        lambda: store.ensure_jobs([JobSpec("a", **SPEC)]),
        lambda: store.ensure_jobs([JobSpec("b", **SPEC), JobSpec("c", **SPEC)]),
        lambda: store.ensure_jobs([JobSpec("a", **{**SPEC, "spec_hash": "h2"})]),
        lambda: store.transition("a", S.UPLOADING),
        lambda: store.transition(
            "a",
            S.SUBMITTING,
            tasks=[TaskEntry("t-1", TaskStatus.SUBMITTING)],
            files=[OwnedFile("videos/a.mp4")],
            task_uuid="t-1",
        ),
        lambda: store.settle_task("a", TaskEntry("t-1", TaskStatus.REFUSED, billed_cost=0.0)),
        lambda: store.record_upload("sha", "image", "u-1", None),
        lambda: store.own_files([OwnedFile("report.md")]),
        lambda: store.rename_outputs({"a": {"videos/a.mp4": "videos/b.mp4"}}),
        lambda: store.set_meta("target", "sandbox"),
        lambda: store.finish_run(run, outcome="ok", exit_code=0, summary={}),
    ]
    assert [commits(write) for write in writes] == [1] * len(writes)
    reads = [store.jobs, store.planning_view, store.counts, store.spend, store.runs, store.events]
    assert [commits(read) for read in reads] == [0] * len(reads)


def test_a_transition_whose_event_cannot_be_written_changes_nothing(
    store: StateStore, path: Path
) -> None:
    register(store, "a")
    sql(path, "create trigger no_events before insert on events "
             "begin select raise(abort, 'disk full, say'); end;")  # fmt: skip
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        store.transition("a", S.SUBMITTING, task_uuid="t-1", attempts=1)
    record = store.get("a")
    assert record is not None
    assert (record.status, record.task_uuid, record.attempts) == (S.PENDING, None, 0)


CRASHING_WRITER = """
import sys
from pathlib import Path
from avatarbatch.state.store import JobSpec, JobStatus as S, StateStore
store = StateStore.open(Path(sys.argv[1]))
store.ensure_jobs([JobSpec(f"j{i}", "h", "m", 1, 1.0, 0.1) for i in range(20)])
step = {S.PENDING: S.UPLOADING, S.UPLOADING: S.SUBMITTING, S.SUBMITTING: S.PROCESSING,
        S.PROCESSING: S.DOWNLOADING, S.DOWNLOADING: S.DONE, S.DONE: S.PENDING}
while True:
    for job in store.jobs().values():
        store.transition(job.id, step[job.status], attempts=job.attempts + 1)
    print("round", flush=True)
"""


def test_a_writer_killed_mid_run_leaves_a_file_the_next_run_reads_consistently(path: Path) -> None:
    for _ in range(3):  # kill, resume from what was stored, kill again
        child = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        for _ in range(3):
            assert child.stdout.readline() == "round\n"
        child.kill()  # SIGKILL while the writer is somewhere in its next round
        child.wait(timeout=30)
        child.stdout.close()
        with StateStore.open(path) as store:
            for job in store.jobs().values():
                moves = [e["detail"] for e in store.events(job.id) if e["kind"] == "transition"]
                assert job.attempts == len(moves)  # the row and its event landed together
                assert job.status == (moves[-1]["to"] if moves else "pending")


@settings(max_examples=150, deadline=None)
@given(moves=st.lists(st.sampled_from(list(S)), max_size=25))
def test_random_move_sequences_follow_the_table(moves: list[JobStatus]) -> None:
    with tempfile.TemporaryDirectory() as folder, StateStore.open(Path(folder) / "s.db") as store:
        register(store, "a")
        current, accepted = S.PENDING, []
        for target in moves:
            if target in TRANSITIONS[current]:
                assert store.transition("a", target).status is target
                current = target
                accepted.append(target.value)
            else:
                with pytest.raises(StateError, match=f"from {current} to {target}"):
                    store.transition("a", target)
            assert store.get("a").status is current  # type: ignore[union-attr]
        logged = [e["detail"]["to"] for e in store.events("a") if e["kind"] == "transition"]
        assert logged == accepted


# --- reads, uploads, runs ---------------------------------------------------------------------------


def test_jobs_are_listed_in_insertion_order(store: StateStore) -> None:
    for job_id in ["zeta", "alpha", "mid"]:
        register(store, job_id)
    store.transition("alpha", S.UPLOADING)
    assert list(store.jobs()) == ["zeta", "alpha", "mid"]


def test_planning_view_matches_plan_stored_job(store: StateStore) -> None:
    register(store, "a")
    job_at(store, S.DONE, "b")
    view = store.planning_view()
    assert view == {"a": StoredJob("h1", S.PENDING), "b": StoredJob("h1", S.DONE)}
    assert all(type(stored.status) is JobStatus for stored in view.values())
    assert plan_status(view["b"], "h1") is PlanStatus.DONE
    assert plan_status(view["b"], "h2") is PlanStatus.CHANGED
    assert plan_status(view["a"], "h1") is PlanStatus.UNFINISHED


def test_events_can_be_read_for_one_job_or_all(store: StateStore) -> None:
    register(store, "a")
    register(store, "b")
    store.settle_task("b", TaskEntry("t-b", TaskStatus.REFUSED, billed_cost=0.0))
    store.transition("a", S.UPLOADING)
    assert [e["kind"] for e in store.events("b")] == ["created", "task"]
    assert store.events("b")[-1]["detail"] == {
        "task_uuid": "t-b",
        "status": "refused",
        "billed_cost": 0.0,
    }
    assert [(e["job_id"], e["kind"]) for e in store.events()] == [
        ("a", "created"),
        ("b", "created"),
        ("b", "task"),
        ("a", "transition"),
    ]


def test_the_upload_cache_maps_content_and_kind_to_uuid_and_url(path: Path) -> None:
    with StateStore.open(path) as store:
        assert store.upload_for("sha-face", "image") is None
        store.record_upload("sha-face", "image", "u-1", "https://im/u-1.png")
        store.record_upload("sha-face", "audio", "u-2", None)
    with StateStore.open(path) as store:
        assert store.upload_for("sha-face", "image") == ("u-1", "https://im/u-1.png")
        assert store.upload_for("sha-face", "audio") == ("u-2", None)
        store.record_upload("sha-face", "image", "u-3", None)  # re-uploaded after expiry
        assert store.upload_for("sha-face", "image") == ("u-3", None)


def test_counts_cover_every_status_and_spend_sums_actual_costs(store: StateStore) -> None:
    assert store.counts() == dict.fromkeys([s.value for s in S], 0)
    assert store.spend() == 0.0
    job_at(store, S.DOWNLOADING, "a")
    billed = TaskEntry("task-a", TaskStatus.BILLED, billed_cost=0.25, cost_source="api")
    store.transition("a", S.DONE, tasks=[billed], actual_cost=0.25)
    job_at(store, S.PROCESSING, "b")
    billed = TaskEntry("task-b", TaskStatus.BILLED, billed_cost=0.5, cost_source="api")
    store.transition("b", S.FAILED, tasks=[billed], actual_cost=0.5, error_code="nsfw")
    register(store, "c")
    assert store.counts() == {
        **dict.fromkeys([s.value for s in S], 0),
        "done": 1,
        "failed": 1,
        "pending": 1,
    }
    assert store.spend() == pytest.approx(0.75)


def test_runs_are_recorded_from_start_to_finish(store: StateStore) -> None:
    first = store.start_run(manifest="m.yaml", manifest_sha256="abc", arguments={"rps": 2.0})
    second = store.start_run(manifest="m.yaml", manifest_sha256="abc", arguments={})
    store.finish_run(first, outcome="interrupted", exit_code=130, summary={"done": 3})
    runs = store.runs()
    assert [r["id"] for r in runs] == [first, second]
    assert runs[0]["arguments"] == {"rps": 2.0}
    assert (runs[0]["outcome"], runs[0]["exit_code"], runs[0]["summary"]) == (
        "interrupted",
        130,
        {"done": 3},
    )
    assert runs[0]["finished_at"] >= runs[0]["started_at"]
    assert (runs[1]["finished_at"], runs[1]["summary"]) == (None, None)


def test_finishing_an_unknown_run_is_a_state_error(store: StateStore) -> None:
    with pytest.raises(StateError, match="run 42 is not in"):
        store.finish_run(42, outcome="ok", exit_code=0, summary={})


def test_a_hundred_thousand_jobs_are_written_and_read_quickly(store: StateStore) -> None:
    specs = [JobSpec(f"job-{i:06d}", **{**SPEC, "spec_hash": f"h{i}"}) for i in range(100_000)]
    started = time.perf_counter()
    store.ensure_jobs(specs)
    written = time.perf_counter()
    jobs = store.jobs()
    read = time.perf_counter()
    view = store.planning_view()
    viewed = time.perf_counter()
    again = store.ensure_jobs(specs)  # the common rerun: nothing changed
    rerun = time.perf_counter()
    print(f"\n100k: ensure_jobs {written - started:.2f}s, jobs() {read - written:.2f}s, "
          f"planning_view() {viewed - read:.2f}s, unchanged ensure_jobs {rerun - viewed:.2f}s")  # fmt: skip
    assert len(jobs) == len(view) == len(again) == 100_000
    assert next(iter(jobs)) == "job-000000"
    assert written - started < 10
    assert read - written < 10
    assert rerun - viewed < 10


# --- the run lock -----------------------------------------------------------------------------------


def test_a_second_lock_on_the_same_state_file_is_refused_with_the_holders_pid(path: Path) -> None:
    with state_lock(path), pytest.raises(StateLocked) as refused:  # noqa: SIM117
        with state_lock(path):
            pytest.fail("the second lock was granted")
    message = str(refused.value)
    assert message.startswith(f"another avatarbatch run is using {path} (pid {os.getpid()}")
    assert message.endswith("wait for it to finish, or stop it")
    assert refused.value.exit_code == 2


def test_the_lock_is_released_after_the_block_even_on_error(path: Path) -> None:
    with pytest.raises(RuntimeError), state_lock(path):
        raise RuntimeError("boom")
    with state_lock(path):
        pass
    with state_lock(path):
        pass


def test_a_lock_held_by_another_process_is_refused(path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from avatarbatch.state.lock import state_lock\n"
         "with state_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()",
         str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "held\n"
        with pytest.raises(StateLocked, match=rf"\(pid {child.pid}\)"), state_lock(path):
            pass
    finally:
        child.communicate("", timeout=30)
    with state_lock(path):  # the child is gone, and so is its lock
        pass


def test_the_lock_file_is_private_and_kept_after_release(path: Path) -> None:
    old = os.umask(0o022)
    try:
        with state_lock(path):
            assert mode(lock_path(path)) == 0o600
            assert lock_path(path).read_text() == f"{os.getpid()}\n"
    finally:
        os.umask(old)
    assert lock_path(path).exists()
    assert lock_path(path).name == "state.sqlite.lock"
