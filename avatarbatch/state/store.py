"""The state file: the write-ahead log of a batch run, and the only module that speaks SQL.

Every job is one row in `jobs` whose `status` follows the state machine of DESIGN.md. The
runner commits its intent before any call that creates remote state or costs money (the task
UUID is stored before the submit POST) and commits the outcome after it. Each public write
method here is exactly one SQLite transaction (`BEGIN IMMEDIATE` ... `COMMIT`) that changes
the row and appends to `events` together, so a SIGKILL at any instant leaves the old state or
the new one, never half of each; `BEGIN IMMEDIATE` takes the write lock before the reads that
decide a write (is this move legal? is this job new?), so those reads cannot go stale.

WAL mode lets readers (`avatarbatch status`, Datasette) look while a run writes.
`synchronous=FULL` makes each commit survive a power cut as well as a crash: it costs one
fsync per transition (a fraction of a millisecond on an SSD), nothing next to a paid video,
and it is what keeps "store the task UUID, then POST" true after a reboot.

The file is ordinary SQLite: statuses are their string values, lists and dicts are JSON
text, times are unix seconds, so `sqlite-utils` and Datasette can read it. It is created
0600 because run arguments and result URLs are nobody else's business. The schema grows by
numbered migration functions (`m001_initial`, ...), recorded in `_migrations` and applied on
open, once each, in order, in one transaction.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from avatarbatch.errors import AvatarBatchError
from avatarbatch.plan import StoredJob

BUSY_TIMEOUT = 10.0  #: seconds to wait for another connection's write lock before giving up


class StateError(AvatarBatchError):
    """The state file cannot be used, or a job was asked to make an illegal move."""

    exit_code = 2


class JobStatus(StrEnum):
    PENDING = "pending"  #: known, nothing under way (new, changed, or reset for a retry)
    UPLOADING = "uploading"  #: local inputs are being uploaded (free, cached by content hash)
    SUBMITTING = "submitting"  #: task UUID committed; the paid POST may or may not have landed
    PROCESSING = "processing"  #: Runware has the task; poll its task UUID
    DOWNLOADING = "downloading"  #: results and costs known; the files are being fetched
    DONE = "done"  #: every result downloaded and verified
    FAILED = "failed"  #: given up; error_code and error_message say why


_S = JobStatus
#: The legal moves. Going back to PENDING is always allowed (a changed spec, --retry-failed);
#: a status may repeat itself where a stage can start over (another upload, a new attempt,
#: another poll, another download); SUBMITTING after PROCESSING is a resubmission after a
#: transient failed generation.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _S.PENDING: frozenset({_S.PENDING, _S.UPLOADING, _S.SUBMITTING, _S.FAILED}),
    _S.UPLOADING: frozenset({_S.PENDING, _S.UPLOADING, _S.SUBMITTING, _S.FAILED}),
    # back to UPLOADING: the API refused the submission for an input it no longer has
    _S.SUBMITTING: frozenset({_S.PENDING, _S.UPLOADING, _S.SUBMITTING, _S.PROCESSING, _S.FAILED}),
    # back to UPLOADING: a task the API lost, whose inputs it has forgotten as well
    _S.PROCESSING: frozenset(
        {_S.PENDING, _S.UPLOADING, _S.PROCESSING, _S.DOWNLOADING, _S.SUBMITTING, _S.FAILED}
    ),
    _S.DOWNLOADING: frozenset({_S.PENDING, _S.DOWNLOADING, _S.DONE, _S.FAILED}),
    # back to DOWNLOADING: the video on disk is missing or changed; its paid URL may still live
    _S.DONE: frozenset({_S.PENDING, _S.DOWNLOADING}),
    _S.FAILED: frozenset({_S.PENDING}),
}
_STATUS_BY_VALUE = {status.value: status for status in JobStatus}


class TaskStatus(StrEnum):
    """Where one task UUID stands in the ledger: what it may cost, and what it did cost."""

    SUBMITTING = "submitting"  #: written before the POST: it may or may not have landed
    ACCEPTED = "accepted"  #: the API has it; it will be billed if it renders
    BILLED = "billed"  #: results arrived; billed_cost is what they cost
    UNBILLED = "unbilled"  #: it ended without a result (a failed generation): nothing billed
    REFUSED = "refused"  #: the API refused the submission: nothing billed


#: Statuses whose task may still be billed: counted at their estimate until they settle.
OPEN_TASK_STATUSES = (TaskStatus.SUBMITTING.value, TaskStatus.ACCEPTED.value)


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One write to the ledger, made in the same transaction as the job's move."""

    task_uuid: str
    status: TaskStatus
    attempt: int | None = None  #: set when the task is first written
    spec_hash: str | None = None
    run_id: int | None = None
    estimated_cost: float | None = None
    billed_cost: float | None = None
    cost_source: str | None = None  #: "api", or "estimate" when the API gave no usable cost


@dataclass(frozen=True, slots=True)
class StrayTask:
    """A ledger task that may still be billed and that no job drives (see `stray_tasks`)."""

    task_uuid: str
    job_id: str
    status: TaskStatus
    estimated_cost: float | None
    number_results: int
    audio_seconds: float | None


@dataclass(frozen=True, slots=True)
class OwnedFile:
    """A file avatarbatch wrote into the output folder (path relative to it, POSIX style)."""

    path: str
    job_id: str | None = None  #: None for report files
    bytes: int | None = None
    sha256: str | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class RecordedOutput:
    """One video a job's record names, with what `files` knows of it (see recorded_outputs)."""

    job_id: str
    status: str
    index: int  #: which result of the job
    path: str  #: as stored: relative to the output folder (absolute in very old files)
    bytes: int | None
    sha256: str | None
    mtime_ns: int | None  #: when it was last seen as downloaded, if recorded


@dataclass(frozen=True, slots=True)
class JobMoney:
    """What the ledger says one job id cost, over every attempt this state file recorded."""

    billed: float  #: everything billed for this job id
    earlier: float  #: the part billed for attempts other than the current one
    open_estimate: float  #: estimates of tasks that may still be billed
    estimated_only: bool  #: some billed figure is our estimate: the API gave no usable cost
    model: str | None  #: the job's model as the state file last knew it


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of `jobs`, decoded."""

    id: str
    spec_hash: str
    status: JobStatus
    attempts: int  #: videoInference submissions (task UUIDs) so far
    task_uuid: str | None  #: the current attempt's task UUID, written before the submit POST
    model: str
    number_results: int
    audio_seconds: float | None
    estimated_cost: float | None
    actual_cost: float | None  #: sum of billed result costs once known
    image_input: str | None  #: what was sent as inputs.image (UUID or URL; None if inline)
    audio_input: str | None
    results: list[dict[str, Any]]  #: {"video_uuid", "video_url", "seed", "nsfw", "cost"}
    outputs: list[dict[str, Any]]  #: downloaded files: {"path", "bytes", "sha256"}
    error_code: str | None
    error_message: str | None
    vars: dict[str, str]
    updated_at: float
    submitted_at: float | None


@dataclass(frozen=True, slots=True)
class JobOverview:
    """What summaries and reports need of a job: no results, vars or events decoded.

    100,000 full JobRecords took 1.7 s and 260 MB to decode; this takes a fraction of both.
    """

    status: JobStatus
    attempts: int
    task_uuid: str | None
    audio_seconds: float | None
    estimated_cost: float | None
    actual_cost: float | None
    results: int  #: how many results are known
    outputs_json: str
    error_message: str | None

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Downloaded files: {"path", "bytes", "sha256"}."""
        return json.loads(self.outputs_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the manifest says about one job: the input of `StateStore.ensure_jobs`."""

    id: str
    spec_hash: str
    model: str
    number_results: int
    audio_seconds: float | None
    estimated_cost: float | None
    vars: dict[str, str] = field(default_factory=dict)


# The columns of `jobs` in JobRecord's field order, so a row maps onto a record positionally.
_NAMES = tuple(JobRecord.__dataclass_fields__)
_COLUMNS = ", ".join(_NAMES)
_STATUS_INDEX = _NAMES.index("status")
_JSON_INDEXES = tuple(_NAMES.index(name) for name in ("results", "outputs", "vars"))
_JSON_FIELDS = frozenset({"results", "outputs"})
_FLOAT_FIELDS = frozenset({"actual_cost", "submitted_at", "estimated_cost", "audio_seconds"})
# A changed spec resets the job: the new spec in, the old attempt's traces out (not outputs).
_UPSERT_JOB = """
    INSERT INTO jobs (id, spec_hash, model, number_results, audio_seconds, estimated_cost, vars,
                      status, created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?8)
    ON CONFLICT (id) DO UPDATE SET
        spec_hash = ?2, model = ?3, number_results = ?4, audio_seconds = ?5,
        estimated_cost = ?6, vars = ?7, status = 'pending', updated_at = ?8, attempts = 0,
        task_uuid = NULL, results = '[]', actual_cost = NULL, error_code = NULL,
        error_message = NULL, image_input = NULL, audio_input = NULL, submitted_at = NULL"""
_DROPPED_ON_CHANGE = ("old_spec_hash", "old_status", "attempts", "task_uuid", "actual_cost")
_TRANSITION_FIELDS = frozenset(
    {"task_uuid", "attempts", "error_code", "error_message", "image_input", "audio_input"}
    | _JSON_FIELDS
    | _FLOAT_FIELDS
)

Migration = Callable[[Database], None]
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    """Register a schema step; steps run in the order they are defined, once per file."""
    MIGRATIONS.append(function)
    return function


@migration
def m001_initial(db: Database) -> None:
    """runs, jobs, uploads and events; JSON columns hold json.dumps text."""
    db.execute("""CREATE TABLE runs (
        id INTEGER PRIMARY KEY, started_at REAL NOT NULL, finished_at REAL,
        manifest TEXT NOT NULL, manifest_sha256 TEXT NOT NULL, arguments TEXT NOT NULL,
        outcome TEXT, exit_code INTEGER, summary TEXT)""")
    db.execute("""CREATE TABLE jobs (
        id TEXT PRIMARY KEY, spec_hash TEXT NOT NULL, status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, task_uuid TEXT,
        model TEXT NOT NULL, number_results INTEGER NOT NULL,
        audio_seconds REAL, estimated_cost REAL, actual_cost REAL,
        image_input TEXT, audio_input TEXT,
        results TEXT NOT NULL DEFAULT '[]', outputs TEXT NOT NULL DEFAULT '[]',
        error_code TEXT, error_message TEXT, vars TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL, updated_at REAL NOT NULL, submitted_at REAL)""")
    db.execute("""CREATE TABLE uploads (
        sha256 TEXT NOT NULL, kind TEXT NOT NULL, uuid TEXT NOT NULL, url TEXT,
        uploaded_at REAL NOT NULL, PRIMARY KEY (sha256, kind))""")
    db.execute("""CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
        job_id TEXT, kind TEXT NOT NULL, detail TEXT)""")
    db.execute("CREATE INDEX events_job_id ON events (job_id)")


@migration
def m002_ledger(db: Database) -> None:
    """tasks: every task UUID ever submitted and what it cost; files: what avatarbatch wrote.

    `jobs.actual_cost` is the current attempt's cost and was reset by a changed spec, so money
    billed for superseded attempts survived only in `events`: rebuild the ledger from there.
    """
    db.execute("""CREATE TABLE tasks (
        task_uuid TEXT PRIMARY KEY, job_id TEXT NOT NULL, spec_hash TEXT,
        attempt INTEGER NOT NULL, status TEXT NOT NULL, run_id INTEGER,
        estimated_cost REAL, billed_cost REAL, cost_source TEXT,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""")
    db.execute("CREATE INDEX tasks_job_id ON tasks (job_id)")
    db.execute("CREATE INDEX tasks_run_id ON tasks (run_id)")
    db.execute("""CREATE TABLE files (
        path TEXT PRIMARY KEY, job_id TEXT, bytes INTEGER, sha256 TEXT, mtime_ns INTEGER,
        written_at REAL NOT NULL)""")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    if db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0:
        # A new file: its paths are written relative from the start, nothing to adopt.
        db.execute("INSERT INTO meta (key, value) VALUES ('outputs_relative', '1')")
    db.conn.executemany(
        "INSERT INTO tasks (task_uuid, job_id, spec_hash, attempt, status, estimated_cost, "
        "billed_cost, cost_source, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        _ledger_from_events(db),
    )


def _ledger_from_events(db: Database) -> list[tuple[Any, ...]]:
    """Task rows recovered from the transition log of a state file written before the ledger."""
    tasks: dict[str, list[Any]] = {}
    current: dict[str, str] = {}  # job id -> its latest task UUID
    specs: dict[str, str] = {}
    for at, job_id, kind, text in db.execute(
        "SELECT at, job_id, kind, detail FROM events WHERE job_id IS NOT NULL ORDER BY id"
    ):
        try:
            detail = json.loads(text) if text else {}
        except ValueError:
            continue
        if not isinstance(detail, dict):
            continue
        if kind in ("created", "changed") and isinstance(detail.get("spec_hash"), str):
            specs[job_id] = detail["spec_hash"]
        if kind != "transition":
            continue
        uuid = detail.get("task_uuid")
        if isinstance(uuid, str) and uuid not in tasks:
            attempt = detail.get("attempts") if isinstance(detail.get("attempts"), int) else 1
            status = TaskStatus.SUBMITTING.value
            tasks[uuid] = [uuid, job_id, specs.get(job_id), attempt, status, None, None, None, at]
            current[job_id] = uuid
        task = tasks.get(current.get(job_id, ""))
        if task is None:
            continue
        if detail.get("to") == JobStatus.PROCESSING.value:
            task[4] = TaskStatus.ACCEPTED.value
        cost = _float(detail["actual_cost"]) if "actual_cost" in detail else None
        if cost is not None:
            task[4], task[6], task[7] = TaskStatus.BILLED.value, cost, "recovered"
    for job_id, latest in db.execute("SELECT id, task_uuid FROM jobs"):
        for task in tasks.values():
            # An earlier attempt whose cost never reached the log was not billed (it failed).
            if task[1] == job_id and task[0] != latest and task[4] != TaskStatus.BILLED.value:
                task[4], task[6] = TaskStatus.UNBILLED.value, 0.0
    return [(*task, task[-1]) for task in tasks.values()]


def _json_default(value: object) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be stored as JSON")


def _dumps(value: Any) -> str:
    # allow_nan=False: SQLite's JSON functions refuse NaN, and one such value made every later
    # run and report die on "malformed JSON". _finite() has replaced them before this point.
    return json.dumps(_finite(value), default=_json_default, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    """The value with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _float(value: Any) -> float | None:
    """Costs may arrive as Decimal (plan.py computes in Decimal); SQLite stores REAL.

    A number that is not finite is stored as unknown: NaN in a sum poisons every total.
    """
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _column_value(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        if not isinstance(value, list):
            raise TypeError(f"{name} must be a list, not {type(value).__name__}")
        return _dumps(value)
    return _float(value) if name in _FLOAT_FIELDS else value


def _make_private(path: Path) -> None:
    """Create the file 0600 before SQLite opens it; make an older one and its WAL private."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away, never added: be exact
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):  # SQLite gives these the main file's mode when it makes them
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").chmod(0o600)


def _record(row: tuple[Any, ...]) -> JobRecord:
    """A `jobs` row, selected as `_COLUMNS`, as a record with its JSON columns decoded."""
    values = list(row)
    status = _STATUS_BY_VALUE.get(values[_STATUS_INDEX])
    if status is None:
        raise ValueError(f"job {values[0]!r} has the unknown status {values[_STATUS_INDEX]!r}")
    values[_STATUS_INDEX] = status
    for index in _JSON_INDEXES:
        text = values[index]
        # Most rows hold empty lists and dicts: skip the parser for those.
        values[index] = [] if text == "[]" else {} if text == "{}" else json.loads(text)
    return JobRecord(*values)


class StateStore:
    """All reads and writes of one state file; build it with `StateStore.open`."""

    def __init__(self, db: Database, path: Path, clock: Callable[[], float]) -> None:
        self._db = db
        self.path = path
        self._clock = clock

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> StateStore:
        """Open (creating if needed) a private state file, in WAL mode, fully migrated."""
        path = Path(path)
        try:
            _make_private(path)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StateError(f"cannot open the state file {path}: {reason}") from exc
        try:
            store = cls(Database(conn, execute_plugins=False), path, clock)
            store._prepare()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StateError(
                    f"{path} is not a usable avatarbatch state file ({exc}); "
                    "move it away or choose another state path"
                ) from exc
            raise
        return store

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------

    def _prepare(self) -> None:
        # Read first: a foreign file is refused before anything in it changes.
        pending = {step.__name__ for step in MIGRATIONS} - self._applied_migrations()
        self._check_integrity()
        self._db.enable_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        if not pending:
            return  # a reader (`status`) opening a current file writes nothing
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            applied = self._applied_migrations()  # again: another process may have migrated
            for step in MIGRATIONS:
                if step.__name__ not in applied:
                    step(db)
                    db.execute(
                        "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                        [step.__name__, self._clock()],
                    )

    def _check_integrity(self) -> None:
        """Refuse a damaged file up front (a few ms per 10 MB): otherwise SQLite fails half-way
        through a run, as a raw DatabaseError, or the run keeps writing into a broken file."""
        problems = [
            " ".join(str(row[0]).split()) for row in self._db.execute("PRAGMA quick_check(3)")
        ]
        if problems != ["ok"]:
            raise StateError(
                f"{self.path} is damaged ({'; '.join(problems)}); move it away, or try "
                f"`sqlite3 {self.path} .recover`"
            )

    def _applied_migrations(self) -> set[str]:
        tables = {t for t in self._db.table_names() if not t.startswith("sqlite_")}
        if "_migrations" not in tables:
            if tables:
                raise StateError(
                    f"{self.path} is an SQLite database but not an avatarbatch state file "
                    f"(it holds {', '.join(sorted(tables))}); choose another state path"
                )
            return set()
        if "name" not in self._db["_migrations"].columns_dict:
            raise StateError(
                f"{self.path} has a _migrations table that avatarbatch did not write; "
                "choose another state path"
            )
        applied = {str(row[0]) for row in self._db.execute("SELECT name FROM _migrations")}
        unknown = applied - {step.__name__ for step in MIGRATIONS}
        if unknown:
            raise StateError(
                f"{self.path} records migrations this avatarbatch does not know "
                f"({', '.join(sorted(unknown))}): it was written by a newer avatarbatch, "
                "or by another program"
            )
        return applied

    @contextmanager
    def _transaction(self) -> Iterator[Database]:
        """One committed write: everything inside lands together, or nothing does."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
        except sqlite3.OperationalError as exc:
            # Locked by another program past BUSY_TIMEOUT, a full disk, an I/O error: a message
            # naming the file instead of a traceback (nothing of this transaction was written).
            raise StateError(f"cannot write the state file {self.path}: {exc}") from exc

    def _event(self, job_id: str | None, kind: str, detail: dict[str, Any] | None) -> None:
        self._db.execute(
            "INSERT INTO events (at, job_id, kind, detail) VALUES (?, ?, ?, ?)",
            [self._clock(), job_id, kind, None if detail is None else _dumps(detail)],
        )

    def _select(self, where: str = "", params: Iterable[Any] = ()) -> list[JobRecord]:
        with self._readable():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY rowid",  # noqa: S608 (fixed names)
                list(params),
            ).fetchall()
            return [_record(row) for row in rows]

    @contextmanager
    def _readable(self) -> Iterator[None]:
        """A row that cannot be decoded (a flipped byte passes quick_check) is a clean error
        naming the job, never a UnicodeDecodeError or JSON traceback."""
        try:
            yield
        except (ValueError, sqlite3.OperationalError, sqlite3.DataError) as exc:
            text = str(exc)
            if isinstance(exc, sqlite3.OperationalError) and not (
                "decode" in text or "malformed JSON" in text
            ):
                raise
            raise StateError(
                f"{self.path} holds a job that cannot be read ({self._unreadable_job()}: "
                f"{exc}); restore the file from a backup, or move it away to start afresh"
            ) from exc

    def _unreadable_job(self) -> str:
        """The id of the first job row whose text or JSON does not decode, for the message."""
        conn = self._db.conn
        previous = conn.text_factory
        conn.text_factory = bytes
        try:
            for row in conn.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY rowid"):  # noqa: S608
                try:
                    texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in row]
                    _record(tuple(texts))
                except ValueError:
                    name = (
                        row[0].decode("utf-8", "replace") if isinstance(row[0], bytes) else row[0]
                    )
                    return f"job {name!r}"
        finally:
            conn.text_factory = previous
        return "a job"

    # -- runs ---------------------------------------------------------------------------

    def start_run(self, *, manifest: str, manifest_sha256: str, arguments: dict[str, Any]) -> int:
        """Record the start of an invocation; `arguments` must already be free of secrets."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, manifest, manifest_sha256, arguments) "
                "VALUES (?, ?, ?, ?)",
                [self._clock(), manifest, manifest_sha256, _dumps(arguments)],
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish_run(
        self, run_id: int, *, outcome: str, exit_code: int, summary: dict[str, Any]
    ) -> None:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ?, exit_code = ?, summary = ? "
                "WHERE id = ?",
                [self._clock(), outcome, exit_code, _dumps(summary), run_id],
            )
            if cursor.rowcount != 1:
                raise StateError(f"run {run_id} is not in {self.path}")

    def runs(self) -> list[dict[str, Any]]:
        """Every invocation, oldest first, with `arguments` and `summary` decoded."""
        runs = list(self._db.query("SELECT * FROM runs ORDER BY id"))
        for run in runs:
            run["arguments"] = json.loads(run["arguments"])
            run["summary"] = None if run["summary"] is None else json.loads(run["summary"])
        return runs

    # -- jobs ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        found = self._select("WHERE id = ?", [job_id])
        return found[0] if found else None

    def jobs(self) -> dict[str, JobRecord]:
        """Every job by id, in insertion order."""
        return {record.id: record for record in self._select()}

    def overview(self) -> dict[str, JobOverview]:
        """Every job by id, in insertion order, as summaries and reports need it."""
        with self._readable():
            rows = self._db.execute(
                "SELECT id, status, attempts, task_uuid, audio_seconds, estimated_cost, "
                "actual_cost, json_array_length(results), outputs, error_message FROM jobs "
                "ORDER BY rowid"
            )
            return {row[0]: JobOverview(JobStatus(row[1]), *row[2:]) for row in rows}

    def planning_view(self) -> dict[str, StoredJob]:
        """What `plan.build_plan` needs to know about each stored job."""
        with self._readable():
            rows = self._db.execute("SELECT id, spec_hash, status FROM jobs ORDER BY rowid")
            return {job_id: StoredJob(spec, status) for job_id, spec, status in rows}

    def ensure_job(
        self,
        job_id: str,
        *,
        spec_hash: str,
        model: str,
        number_results: int,
        audio_seconds: float | None,
        estimated_cost: float | None,
        vars: dict[str, str],
    ) -> JobRecord:
        """Insert a new job, keep an unchanged one, reset a changed one; see `ensure_jobs`."""
        spec = JobSpec(
            job_id, spec_hash, model, number_results, audio_seconds, estimated_cost, vars
        )
        self.ensure_jobs([spec])
        record = self.get(job_id)
        assert record is not None
        return record

    def ensure_jobs(self, specs: Iterable[JobSpec]) -> dict[str, JobStatus]:
        """Bring many jobs in line with the manifest in one transaction; returns their statuses.

        Absent: inserted as PENDING. Same spec_hash: left exactly as stored. Another
        spec_hash: the job changed, so it goes back to PENDING with the new spec and no
        attempts, task, results, cost or error, but keeps `outputs`: the old video stays in
        place until the new one has arrived. The "changed" event keeps what was dropped.
        """
        specs = list(specs)
        ids = json.dumps([spec.id for spec in specs])
        with self._transaction() as db:
            stored = {
                row[0]: row[1:]
                for row in db.execute(
                    "SELECT id, spec_hash, status, attempts, task_uuid, actual_cost FROM jobs "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    [ids],
                )
            }
            now = self._clock()
            rows: list[tuple[Any, ...]] = []
            events: list[tuple[Any, ...]] = []
            for spec in specs:
                old = stored.get(spec.id)
                if old is not None and old[0] == spec.spec_hash:
                    continue
                detail = {"spec_hash": spec.spec_hash}
                if old is not None:
                    detail |= dict(zip(_DROPPED_ON_CHANGE, old, strict=True))
                kind = "created" if old is None else "changed"
                events.append((now, spec.id, kind, _dumps(detail)))
                floats = _float(spec.audio_seconds), _float(spec.estimated_cost)
                row = (spec.id, spec.spec_hash, spec.model, spec.number_results, *floats)
                rows.append((*row, _dumps(spec.vars), now))
                stored[spec.id] = (spec.spec_hash, JobStatus.PENDING.value, 0, None, None)
            db.conn.executemany(_UPSERT_JOB, rows)
            db.conn.executemany(
                "INSERT INTO events (at, job_id, kind, detail) VALUES (?, ?, ?, ?)", events
            )
        # Statuses, not records: decoding 100,000 records again took longer than the rest.
        return {spec.id: JobStatus(stored[spec.id][1]) for spec in specs}

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        tasks: Iterable[TaskEntry] = (),
        files: Iterable[OwnedFile] = (),
        **fields: Any,
    ) -> JobRecord:
        """Move a job to `to` and update the given fields, as one logged transaction.

        `tasks` write the ledger and `files` the owned-files record in the same transaction,
        so money and files can never disagree with the job's status after a crash.
        """
        unknown = sorted(set(fields) - _TRANSITION_FIELDS)
        if unknown:
            raise TypeError(f"transition() got unexpected field(s): {', '.join(unknown)}")
        target = JobStatus(to)
        values = {name: _column_value(name, value) for name, value in fields.items()}
        with self._transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row is None:
                raise StateError(f"job {job_id!r} is not in {self.path}")
            current = _STATUS_BY_VALUE.get(row[0])
            if current is None or target not in TRANSITIONS[current]:
                raise StateError(f"job {job_id!r} cannot go from {row[0]} to {target}")
            values.update(status=target.value, updated_at=self._clock(), id=job_id)
            assignments = ", ".join(f"{name} = :{name}" for name in values if name != "id")
            # The column names come from _TRANSITION_FIELDS, never from the caller's text.
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = :id", values)  # noqa: S608
            for task in tasks:
                self._write_task(job_id, task)
            self._own(files, job_id)
            self._event(job_id, "transition", {"from": row[0], "to": target.value, **fields})
            (record,) = self._select("WHERE id = ?", [job_id])
        return record

    def _write_task(self, job_id: str, task: TaskEntry) -> None:
        now = self._clock()
        self._db.execute(
            """INSERT INTO tasks (task_uuid, job_id, spec_hash, attempt, status, run_id,
                                  estimated_cost, billed_cost, cost_source, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (task_uuid) DO UPDATE SET
                   status = excluded.status, updated_at = excluded.updated_at,
                   run_id = coalesce(excluded.run_id, run_id),
                   estimated_cost = coalesce(excluded.estimated_cost, estimated_cost),
                   billed_cost = coalesce(excluded.billed_cost, billed_cost),
                   cost_source = coalesce(excluded.cost_source, cost_source)""",
            [
                task.task_uuid,
                job_id,
                task.spec_hash,
                task.attempt or 1,
                task.status.value,
                task.run_id,
                _float(task.estimated_cost),
                _float(task.billed_cost),
                task.cost_source,
                now,
                now,
            ],
        )

    def _own(self, files: Iterable[OwnedFile], job_id: str | None) -> None:
        now = self._clock()
        self._db.conn.executemany(
            "INSERT INTO files (path, job_id, bytes, sha256, mtime_ns, written_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET job_id = excluded.job_id, "
            "bytes = excluded.bytes, sha256 = excluded.sha256, mtime_ns = excluded.mtime_ns, "
            "written_at = excluded.written_at",
            [(f.path, f.job_id or job_id, f.bytes, f.sha256, f.mtime_ns, now) for f in files],
        )

    def record_event(
        self, job_id: str | None, kind: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Append to the log (API outcomes, reconciliation notes); nothing else changes."""
        with self._transaction():
            self._event(job_id, kind, detail)

    def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The log, oldest first (one job's, if given), with `detail` decoded."""
        where, params = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        sql = f"SELECT id, at, job_id, kind, detail FROM events {where} ORDER BY id"  # noqa: S608
        events = list(self._db.query(sql, params))
        for event in events:
            if event["detail"] is not None:
                event["detail"] = json.loads(event["detail"])
        return events

    # -- uploads ------------------------------------------------------------------------

    def upload_for(self, sha256: str, kind: str) -> tuple[str, str | None] | None:
        """The (uuid, url) Runware gave this content before, if any."""
        row = self._db.execute(
            "SELECT uuid, url FROM uploads WHERE sha256 = ? AND kind = ?", [sha256, kind]
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def record_upload(self, sha256: str, kind: str, uuid: str, url: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO uploads (sha256, kind, uuid, url, uploaded_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256, kind) DO UPDATE SET "
                "uuid = excluded.uuid, url = excluded.url, uploaded_at = excluded.uploaded_at",
                [sha256, kind, uuid, url, self._clock()],
            )

    # -- summaries ----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Jobs per status, every status present (zeros included)."""
        counts = {status.value: 0 for status in JobStatus}
        for status, count in self._db.execute("SELECT status, count(*) FROM jobs GROUP BY 1"):
            counts[status] = count
        return counts

    def spend(self, run_id: int | None = None) -> float:
        """What the provider billed through this state file (or for one run's submissions).

        A sum over the ledger, not over `jobs`: a changed spec, a retry or a removed row keeps
        every cent it cost here.
        """
        if run_id is None:
            row = self._db.execute("SELECT total(billed_cost) FROM tasks").fetchone()
        else:
            row = self._db.execute(
                "SELECT total(billed_cost) FROM tasks WHERE run_id = ?", [run_id]
            ).fetchone()
        return float(row[0])

    def money_by_job(self, manifest_ids: Iterable[str] | None = None) -> dict[str, JobMoney]:
        """The ledger summed per job id, removed jobs included (in the order first submitted).

        With `manifest_ids`, only the jobs whose money is not simply their record's
        `actual_cost` (earlier attempts, an estimated cost) and the jobs outside the manifest:
        100,000 ordinary jobs then cost no memory here.
        """
        open_statuses = ", ".join(f"'{status}'" for status in OPEN_TASK_STATUSES)
        only = ""
        params: list[Any] = []
        if manifest_ids is not None:
            only = """HAVING earlier != 0 OR guessed OR j.id IS NULL
                      OR abs(billed - coalesce(j.actual_cost, 0)) > 1e-9
                      OR t.job_id NOT IN (SELECT value FROM json_each(?))"""
            params.append(json.dumps(list(manifest_ids)))
        rows = self._db.execute(
            f"""SELECT t.job_id, total(t.billed_cost) AS billed,
                       total(CASE WHEN t.task_uuid IS NOT j.task_uuid THEN t.billed_cost END)
                           AS earlier,
                       total(CASE WHEN t.status IN ({open_statuses}) THEN t.estimated_cost END),
                       max(t.cost_source = 'estimate') AS guessed, j.model
                FROM tasks t LEFT JOIN jobs j ON j.id = t.job_id
                GROUP BY t.job_id {only} ORDER BY min(t.rowid)""",  # noqa: S608 (fixed names)
            params,
        )
        return {
            job_id: JobMoney(float(billed), float(earlier), float(pending), bool(guessed), model)
            for job_id, billed, earlier, pending, guessed, model in rows
        }

    def stray_tasks(self, manifest_ids: Iterable[str]) -> list[StrayTask]:
        """Tasks that may still be billed but that no job drives any more: superseded by a
        changed spec while at the provider, or of a row removed from the manifest."""
        open_statuses = ", ".join(f"'{status}'" for status in OPEN_TASK_STATUSES)
        rows = self._db.execute(
            f"""SELECT t.task_uuid, t.job_id, t.status, t.estimated_cost, j.number_results,
                       j.audio_seconds
                FROM tasks t LEFT JOIN jobs j ON j.id = t.job_id
                WHERE t.status IN ({open_statuses}) AND (
                    t.task_uuid IS NOT j.task_uuid
                    OR t.job_id NOT IN (SELECT value FROM json_each(?)))
                ORDER BY t.rowid""",  # noqa: S608 (fixed names)
            [json.dumps(list(manifest_ids))],
        )
        return [
            StrayTask(uuid, job_id, TaskStatus(status), estimate, results or 1, seconds)
            for uuid, job_id, status, estimate, results, seconds in rows
        ]

    def settle_task(self, job_id: str, task: TaskEntry) -> None:
        """Write a task's news to the ledger where its job does not move (a stray task's end,
        a refusal, a resend of the same UUID)."""
        with self._transaction():
            self._write_task(job_id, task)
            self._event(job_id, "task", {"task_uuid": task.task_uuid, "status": task.status})

    def tasks(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Ledger rows, oldest first (one job's, if given)."""
        where, params = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        return list(self._db.query(f"SELECT * FROM tasks {where} ORDER BY rowid", params))  # noqa: S608

    # -- files --------------------------------------------------------------------------

    def owned_files(self) -> dict[str, OwnedFile]:
        """Every file avatarbatch recorded writing, by path relative to the output folder."""
        return {
            row[0]: OwnedFile(*row)
            for row in self._db.execute(
                "SELECT path, job_id, bytes, sha256, mtime_ns FROM files ORDER BY rowid"
            )
        }

    def recorded_outputs(self) -> list[RecordedOutput]:
        """Every video every job's record names, flattened by SQLite's JSON functions: for a
        100,000-job batch far cheaper than decoding each job's outputs in Python."""
        with self._readable():
            rows = self._db.execute(
                """SELECT j.id, j.status, o.key, json_extract(o.value, '$.path'),
                          json_extract(o.value, '$.bytes'), json_extract(o.value, '$.sha256'),
                          f.mtime_ns
                   FROM jobs j, json_each(j.outputs) o
                   LEFT JOIN files f ON f.path = json_extract(o.value, '$.path')
                   WHERE json_extract(o.value, '$.path') IS NOT NULL
                   ORDER BY j.rowid, o.key"""
            )
            return [RecordedOutput(*row) for row in rows]

    def owner_map(self) -> dict[str, str | None]:
        """Every recorded file's path and the job that owns it (None: a report file)."""
        return dict(self._db.execute("SELECT path, job_id FROM files").fetchall())

    def seen_unchanged(self, mtimes: Iterable[tuple[str, int]]) -> None:
        """Files hashed again and found unchanged: remember their new mtime, so that the next
        run needs only a stat for them."""
        with self._transaction() as db:
            db.conn.executemany(
                "UPDATE files SET mtime_ns = ? WHERE path = ?",
                [(mtime, path) for path, mtime in mtimes],
            )

    def file_owners(self, paths: Iterable[str]) -> dict[str, str | None]:
        """The job that owns each of these paths (None: a report file); unknown paths left out."""
        rows = self._db.execute(
            "SELECT path, job_id FROM files WHERE path IN (SELECT value FROM json_each(?))",
            [json.dumps(list(paths))],
        )
        return dict(rows.fetchall())

    def own_files(self, files: Iterable[OwnedFile]) -> None:
        """Record files written outside a job's move (reports, a renamed video)."""
        with self._transaction():
            self._own(files, None)

    def rename_outputs(self, renames: dict[str, dict[str, str]]) -> None:
        """Record moved videos: job id -> {old relative path: new one}, in one transaction.

        All moves at once, like the files on disk: two jobs swapping names must each keep
        their own record, which moving one record after the other would merge.
        """
        moves = {old: new for job_moves in renames.values() for old, new in job_moves.items()}
        with self._transaction() as db:
            paths = json.dumps([*moves, *moves.values()])
            kept = db.execute(
                "SELECT path, job_id, bytes, sha256, mtime_ns FROM files "
                "WHERE path IN (SELECT value FROM json_each(?))",
                [paths],
            ).fetchall()
            db.execute("DELETE FROM files WHERE path IN (SELECT value FROM json_each(?))", [paths])
            moved = [OwnedFile(moves[row[0]], *row[1:]) for row in kept if row[0] in moves]
            self._own(moved, None)
            for job_id, job_moves in renames.items():
                row = db.execute("SELECT outputs FROM jobs WHERE id = ?", [job_id]).fetchone()
                outputs = json.loads(row[0]) if row else []
                for output in outputs:
                    output["path"] = job_moves.get(str(output.get("path")), output.get("path"))
                db.execute(
                    "UPDATE jobs SET outputs = ?, updated_at = ? WHERE id = ?",
                    [_dumps(outputs), self._clock(), job_id],
                )
                self._event(job_id, "renamed", {"moves": job_moves})

    def relativize_outputs(
        self, out: Path, relative: Callable[[Path, str], str], *, adopt: Iterable[str] = ()
    ) -> None:
        """Once per state file written before the ledger: store output paths relative to the
        output folder, and record them and the report files found there (`adopt`) as owned."""
        if self.meta("outputs_relative") is not None:
            return
        with self._transaction() as db:
            rows = db.execute("SELECT id, outputs FROM jobs WHERE outputs != '[]'").fetchall()
            files = []
            for job_id, text in rows:
                outputs = json.loads(text)
                for output in outputs:
                    if "path" not in output:  # delivered to an uploadEndpoint: no file here
                        continue
                    output["path"] = relative(out, str(output["path"]))
                    files.append(
                        OwnedFile(output["path"], job_id, output.get("bytes"), output.get("sha256"))
                    )
                db.execute("UPDATE jobs SET outputs = ? WHERE id = ?", [_dumps(outputs), job_id])
            self._own([*files, *(OwnedFile(path) for path in adopt)], None)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('outputs_relative', '1') "
                "ON CONFLICT (key) DO NOTHING"
            )

    def disown_files(self, paths: Iterable[str]) -> None:
        """Forget files that are gone (deleted by us, or found missing)."""
        with self._transaction() as db:
            db.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    def holds_results(self) -> bool:
        """Whether a task was ever sent or a job got past `pending`: what a state file would
        strand if it changed hands to another API target."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM tasks) OR EXISTS "
            "(SELECT 1 FROM jobs WHERE status NOT IN ('pending', 'uploading'))"
        ).fetchone()
        return bool(row[0])

    def open_tasks(self) -> int:
        """Tasks sent and not settled yet: only the endpoint that took them can answer."""
        statuses = ", ".join(f"'{status}'" for status in OPEN_TASK_STATUSES)
        query = f"SELECT count(*) FROM tasks WHERE status IN ({statuses})"  # noqa: S608
        row = self._db.execute(query).fetchone()
        return int(row[0])

    def forget_uploads(self) -> None:
        """Drop the upload cache: its UUIDs name media at another target."""
        with self._transaction() as db:
            db.execute("DELETE FROM uploads")

    # -- meta ---------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
