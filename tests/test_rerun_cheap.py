"""A rerun with nothing to do is cheap: reports are not rewritten while they are current,
media probes come from the state file, and plan and registration are set operations in SQL."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from test_report import QUICK, run

from avatarbatch.manifest import media as media_module
from avatarbatch.manifest.fields import JobFields
from avatarbatch.manifest.media import MediaInfo, ProbeError
from avatarbatch.manifest.preflight import preflight
from avatarbatch.manifest.quick import QuickCheck
from avatarbatch.plan import DAMAGED, HASHED, PlanStatus, StoredJob, build_plan, spec_hash
from avatarbatch.report.data import tally_by_status, tally_of
from avatarbatch.report.stamp import STAMP_KEY
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.probes import ProbeMemo
from avatarbatch.state.store import JobSpec, JobStatus, OwnedFile, StateStore

REPORTS = ("cost_report.csv", "report.json", "report.md", "index.html")


def stamps(out: Path) -> dict[str, int]:
    return {name: (out / name).stat().st_mtime_ns for name in REPORTS}


def backdate(out: Path) -> None:
    """Move the reports' mtimes into the past (and record them so, as if written then): a
    rewrite then shows even on a coarse clock."""
    for name in REPORTS:
        os.utime(out / name, ns=(10**18, 10**18))
    with StateStore.open(out / "state.sqlite") as store:
        text = store.meta(STAMP_KEY)
        assert text is not None
        written = []
        for name in json.loads(text)["files"]:
            found = (out / name).stat()
            written.append(OwnedFile(name, bytes=found.st_size, mtime_ns=found.st_mtime_ns))
        store.record_written(written, STAMP_KEY, text)


@pytest.fixture
def ran(demo_copy: Path, tmp_path: Path) -> tuple[Path, Path, RunningSandbox]:
    out = tmp_path / "out"
    with running_sandbox(QUICK) as sandbox:
        assert run(demo_copy / "demo.yaml", sandbox, out).exit_code == 0
        backdate(out)
        yield demo_copy / "demo.yaml", out, sandbox  # type: ignore[misc]


def test_an_unchanged_rerun_does_not_rewrite_the_reports(
    ran: tuple[Path, Path, RunningSandbox],
) -> None:
    manifest, out, sandbox = ran
    before = stamps(out)
    summary = run(manifest, sandbox, out)
    assert summary.exit_code == 0
    assert stamps(out) == before
    # The summary is still the report's, read from report.md.
    assert summary.report == (out / "report.md").read_text(encoding="utf-8")
    assert summary.report.startswith("# avatarbatch report: demo.yaml")


def test_a_changed_job_rewrites_the_reports(ran: tuple[Path, Path, RunningSandbox]) -> None:
    manifest, out, sandbox = ran
    before = stamps(out)
    with StateStore.open(out / "state.sqlite") as store:
        job_id = store.job_ids()[0]
        store.transition(job_id, JobStatus.PENDING)  # as --retry-failed or a new spec would
    assert run(manifest, sandbox, out).exit_code == 0
    after = stamps(out)
    assert all(after[name] != before[name] for name in REPORTS)


def test_a_deleted_report_is_written_again(ran: tuple[Path, Path, RunningSandbox]) -> None:
    manifest, out, sandbox = ran
    (out / "report.json").unlink()
    assert run(manifest, sandbox, out).exit_code == 0
    assert json.loads((out / "report.json").read_text())["counts"]["done"] > 0


def test_an_edited_report_is_written_again(ran: tuple[Path, Path, RunningSandbox]) -> None:
    manifest, out, sandbox = ran
    original = (out / "cost_report.csv").read_text()
    (out / "cost_report.csv").write_text("hand-edited\n")
    summary = run(manifest, sandbox, out)
    assert summary.exit_code == 0
    assert (out / "cost_report.csv").read_text() == original
    # The same size, another mtime: written again as well.
    md = out / "report.md"
    text = md.read_text()
    md.write_text(text.replace("#", "!", 1))
    assert run(manifest, sandbox, out).report == text
    assert md.read_text() == text


def test_another_output_spelling_or_version_writes_them_again(
    ran: tuple[Path, Path, RunningSandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, out, sandbox = ran
    before = stamps(out)
    monkeypatch.setattr("avatarbatch.report.stamp.__version__", "99.0")
    assert run(manifest, sandbox, out).exit_code == 0
    assert stamps(out) != before


# --- media probes kept in the state file ------------------------------------------------------


def test_a_rerun_reads_no_unchanged_media_and_a_touched_file_is_probed_again(
    ran: tuple[Path, Path, RunningSandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, out, sandbox = ran
    memo = ProbeMemo.read(out / "state.sqlite")
    portrait = manifest.parent / "media" / "presenter.png"
    found = portrait.stat()
    key = (str(portrait), "portrait", found.st_size, found.st_mtime_ns)
    assert isinstance(memo.recall(key), MediaInfo)

    def refuse(data: bytes) -> MediaInfo:
        raise ProbeError("was read again")

    monkeypatch.setattr(media_module, "probe_image", refuse)
    assert run(manifest, sandbox, out).exit_code == 0  # nothing was read
    os.utime(portrait, ns=(found.st_atime_ns, found.st_mtime_ns + 10**9))
    with pytest.raises(Exception, match="was read again"):
        run(manifest, sandbox, out)


def test_validate_and_a_fresh_state_probe_as_before(demo_copy: Path, tmp_path: Path) -> None:
    assert ProbeMemo.read(tmp_path / "missing.sqlite").recall(("x", "audio", 1, 1)) is None
    (tmp_path / "junk.sqlite").write_text("not sqlite")
    assert ProbeMemo.read(tmp_path / "junk.sqlite").fresh == []
    prober = media_module.Prober()
    assert preflight(demo_copy / "demo.yaml", prober).ok
    assert prober.reads > 0


# --- plan and registration as set operations ------------------------------------------------


def test_the_plan_lookup_agrees_with_the_stored_jobs(demo_copy: Path, tmp_path: Path) -> None:
    checked = preflight(demo_copy / "demo.yaml")
    assert checked.manifest is not None
    jobs = list(checked.manifest.jobs)
    digests = [spec_hash(job, checked.media) for job in jobs]
    with StateStore.open(tmp_path / "s.sqlite") as store:
        specs = [JobSpec(j.id, d, j.model, 1, 1.0, 0.1) for j, d in zip(jobs, digests, strict=True)]
        store.ensure_jobs(specs[1:])
        store.ensure_jobs([JobSpec(jobs[2].id, "old", jobs[2].model, 1, 1.0, 0.1)])
        for job_id, to in ((jobs[3].id, JobStatus.FAILED), (jobs[4].id, JobStatus.UPLOADING)):
            store.transition(job_id, to)
        store._db.execute("UPDATE jobs SET status = 'done' WHERE id = ?", [jobs[5].id])
        store._db.execute("UPDATE jobs SET status = 'done' WHERE id = ?", [jobs[6].id])
        store._db.conn.commit()
        stored = store.planning_view()
        stored[jobs[6].id] = StoredJob(stored[jobs[6].id].spec_hash, DAMAGED)

        def lookup(hashes: list[tuple[str, str]]) -> dict[str, PlanStatus]:
            return store.plan_statuses(hashes, {jobs[6].id})

        by_dict = build_plan(jobs, checked.media, stored)
        by_sql = build_plan(jobs, checked.media, lookup)
        assert [p.status for p in by_sql.jobs] == [p.status for p in by_dict.jobs]
        assert [p.status for p in by_sql.jobs] == [
            PlanStatus.NEW,
            PlanStatus.UNFINISHED,
            PlanStatus.CHANGED,  # stored with another spec
            PlanStatus.FAILED,
            PlanStatus.UNFINISHED,
            PlanStatus.DONE,
            PlanStatus.REFETCH,
        ]
        assert by_sql.totals_dict() == by_dict.totals_dict()
        assert store.unfinished() == {
            jobs[1].id: JobStatus.PENDING,
            jobs[2].id: JobStatus.PENDING,
            jobs[4].id: JobStatus.UPLOADING,
        }
        assert jobs[3].id in store.unfinished(failed=True)


def test_registering_an_unchanged_plan_writes_nothing(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s.sqlite") as store:
        specs = [JobSpec(f"j{i}", f"h{i}", "m", 1, 1.0, 0.1) for i in range(50)]
        store.ensure_jobs(specs)
        mark = store.change_mark()
        assert store.ensure_jobs(specs) == {f"j{i}": JobStatus.PENDING for i in range(50)}
        assert store.change_mark() == mark
        changed = store.ensure_jobs([JobSpec("j3", "new", "m", 1, 1.0, 0.1)])
        assert changed == {"j3": JobStatus.PENDING}
        assert store.change_mark() != mark
        assert [e["kind"] for e in store.events("j3")] == ["created", "changed"]


# --- the quick check of rows ------------------------------------------------------------------

ROWS = [
    {"id": "a", "portrait": "p.png", "audio": "a.mp3", "vars": {}},
    {"id": "a", "portrait": "p.png", "audio": "a.mp3", "prompt": "hi", "model": "pro", "vars": {}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "number_results": "2", "vars": {"x": ""}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "number_results": True, "vars": {}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "number_results": 1.0, "vars": {}},
    {"id": " b", "portrait": "p.png", "audio": "a.mp3", "vars": {}},
    {"id": "b", "portrait": "p.png\u2003", "audio": "a.mp3", "vars": {}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "vars": {"lang": " es"}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "prompt": "x" * 2501, "vars": {}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "safety": {"mode": "FULL"}, "vars": {}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "safety": {"check_content": 1}, "vars": {}},
    {"id": "..", "portrait": "p.png", "audio": "a.mp3", "vars": {}},
    {"id": "b", "portrait": 5, "audio": "a.mp3", "vars": {}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "model": "nope", "vars": {}},
    {"id": "b", "portrait": "p.png", "audio": "a.mp3", "output_format": "webm", "vars": {}},
]


@pytest.mark.parametrize("row", ROWS)
def test_the_quick_check_gives_what_jobfields_gives_or_defers_to_it(row: dict[str, object]) -> None:
    quick = QuickCheck()
    for _ in range(2):  # the second time from its memory of the shared fields
        values = quick.values(dict(row))
        try:
            expected = dict(JobFields.model_validate(row))
        except ValueError:
            assert values is None
            continue
        if values is not None:
            assert values == expected
            assert [type(v) for v in values.values()] == [type(v) for v in expected.values()]


def test_plain_rows_take_the_quick_way() -> None:
    quick = QuickCheck()
    assert quick.values(dict(ROWS[0])) == dict(JobFields.model_validate(ROWS[0]))
    assert quick.values(dict(ROWS[1])) is not None
    assert quick.values(dict(ROWS[5])) is None  # " b": pydantic strips it, so it decides


SPEC_MANIFEST = """
version: 1
defaults:
  portrait: media/presenter.png
  safety: {mode: full, check_content: true}
jobs:
  - {id: a, audio: media/voices/en.mp3, prompt: "h\\u00e9llo \\u2603 \\"q\\"", output_quality: 80}
  - {id: b, audio: media/voices/es.mp3, safety: {mode: fast}, webhook_url: "https://x.y/z"}
  - {id: c, audio: "https://example.com/a.mp3", number_results: 2, include_cost: false, ttl: 3600}
"""


def test_the_spec_hash_is_still_that_of_the_sorted_json_text(demo_copy: Path) -> None:
    """The hash decides what is paid for again: it must stay exactly what it always was."""
    manifest = demo_copy / "spec.yaml"
    manifest.write_text(SPEC_MANIFEST)
    checked = preflight(manifest)
    assert checked.manifest is not None, checked.problems.items
    for job in checked.manifest.jobs:
        spec = {name: getattr(job, name) for name in HASHED}
        for role in ("portrait", "audio"):
            ref = getattr(job, role)
            info = checked.media.get(ref.value)
            spec[role] = f"sha256:{info.sha256}" if info else f"{ref.kind.value}:{ref.value}"
        text = json.dumps(
            spec,
            sort_keys=True,
            separators=(",", ":"),
            default=lambda v: v.model_dump(),
        )
        assert spec_hash(job, checked.media) == hashlib.sha256(text.encode()).hexdigest()


def test_the_summary_tally_by_sql_matches_the_one_job_by_job(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s.sqlite") as store:
        store.ensure_jobs(
            [JobSpec(f"j{i}", "h", "m", 1, 1.5 * i, None if i == 3 else 0.1 * i) for i in range(6)]
        )
        store.transition("j1", JobStatus.FAILED, error_code="x")
        store.transition("j2", JobStatus.UPLOADING)
        ids = ["j0", "j1", "j2", "j3", "j4"]  # j5 is not among the chosen
        by_sql = tally_of(store, ids)
        overview = store.overview()
        by_rows = tally_by_status(overview[i] for i in ids)
    assert by_sql.counts() == by_rows.counts()
    for status, group in by_rows.groups.items():
        assert vars(by_sql.groups[status]) == pytest.approx(vars(group))
