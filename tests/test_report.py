"""Reports derived from the state file: totals, spreadsheet safety, failures manifest, init."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from avatarbatch.cli.commands import app
from avatarbatch.config import PollTiming, RunSettings
from avatarbatch.engine.batch import RunSummary, run_batch
from avatarbatch.manifest.document import load_manifest
from avatarbatch.report import gallery
from avatarbatch.report.data import FINISHED, build_report, tally_by_status
from avatarbatch.report.failures import failures_manifest
from avatarbatch.report.files import cost_csv_lines, safe_cell
from avatarbatch.runware.client import ClientSettings
from avatarbatch.sandbox.config import SandboxConfig
from avatarbatch.sandbox.server import RunningSandbox, running_sandbox
from avatarbatch.state.store import JobSpec, JobStatus, StateStore
from conftest import DEMO, wav_bytes

QUICK = SandboxConfig(latency=0, fixed_latency=0.05, render="stub", workers=8)
runner = CliRunner()


def run(manifest: Path, sandbox: RunningSandbox, out: Path) -> RunSummary:
    client = ClientSettings(
        api_url=sandbox.api_url, api_key=SecretStr("k"), backoff_initial=0.01, backoff_max=0.05
    )
    options = RunSettings(
        client=client, out=out, rps=100, poll=PollTiming(initial=0.05, min_interval=0.05)
    )
    return asyncio.run(run_batch(manifest, options))


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_every_report_file_is_written_and_totals_match_the_ledger(
    demo_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with running_sandbox(QUICK) as sandbox:
        summary = run(demo_copy / "demo.yaml", sandbox, out)
        ledger = sandbox.ledger()
    assert summary.exit_code == 0
    for name in ("cost_report.csv", "report.json", "report.md", "index.html"):
        assert (out / name).is_file(), name
    assert not (out / "failures.yaml").exists()
    rows = read_csv(out / "cost_report.csv")
    jobs = [r for r in rows if not r["id"].startswith("TOTAL")]
    total = next(r for r in rows if r["id"] == "TOTAL")
    assert len(jobs) == 7
    assert float(total["actual_cost"]) == pytest.approx(sum(float(r["actual_cost"]) for r in jobs))
    assert float(total["actual_cost"]) == pytest.approx(ledger["total_cost"])
    by_model = {r["id"]: float(r["actual_cost"]) for r in rows if r["id"].startswith("TOTAL ")}
    assert by_model["TOTAL standard"] + by_model["TOTAL pro"] == pytest.approx(
        float(total["actual_cost"])
    )
    assert list(rows[0])[:4] == ["id", "campaign", "lang", "model"]
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["actual_cost"] == pytest.approx(ledger["total_cost"])
    assert report["run"]["arguments"]["concurrency"] == 4 and "api_key" not in json.dumps(report)
    assert set(report["by_var"]["lang"]) == {"en", "es", "de", "fr", "it", "pt"}
    assert summary.report.startswith("# avatarbatch report: demo.yaml")
    assert "| en | 2 |" in (out / "report.md").read_text()


@pytest.mark.parametrize("value", ["=1+2", "+cmd", "-2+3", "@SUM(A1)", "\t=x", "\r=x"])
def test_formula_cells_are_neutralised(value: str) -> None:
    assert safe_cell(value) == "'" + value
    assert safe_cell("plain") == "plain" and safe_cell(-2.5) == -2.5


def test_a_var_that_looks_like_a_formula_is_inert_in_the_csv(media: Path, tmp_path: Path) -> None:
    manifest_path = tmp_path / "m.yaml"
    manifest_path.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav, "
        "vars: {note: '=HYPERLINK(\"http://evil\")'}}\n"
    )
    manifest = load_manifest(manifest_path)
    with StateStore.open(tmp_path / "s.sqlite") as store:
        data = build_report(
            manifest.jobs, store, manifest="m", manifest_sha256="x", output_dir=tmp_path
        )
        text = "".join(cost_csv_lines(data))
    note = read_csv_text(text)[0]["note"]
    assert note.startswith("'=")


def read_csv_text(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_failures_manifest_reruns_only_the_failed_rows(demo_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with running_sandbox(QUICK) as sandbox:
        short = httpx.post(
            sandbox.api_url,
            headers={"Authorization": "Bearer k"},
            json=[
                {
                    "taskType": "mediaStorage",
                    "taskUUID": str(uuid.uuid4()),
                    "operation": "upload",
                    "media": "data:audio/wav;base64,"
                    + __import__("base64").b64encode(wav_bytes(1.0)).decode(),
                }
            ],
        ).json()["data"][0]["mediaURL"]
        manifest = demo_copy / "mixed.csv"
        shutil.copy(demo_copy / "example.csv", manifest)
        with manifest.open("a") as handle:
            handle.write(
                f"too-short,media/presenter.png,{short},standard,too short a clip,MP4,xx\n"
            )
        first = run(manifest, sandbox, out)
        assert (first.exit_code, first.done, first.failed) == (1, 3, 1)
        failures = out / "failures.yaml"
        document = yaml.safe_load(failures.read_text())
        assert [row["id"] for row in document["jobs"]] == ["too-short"]
        assert "invalidAudio" in (out / "report.md").read_text()
        again = run(failures, sandbox, out / "retry")
        assert (again.jobs, again.submitted, again.failed) == (1, 1, 1)


def test_failures_manifest_resolves_paths_from_its_new_place(
    demo_copy: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(demo_copy / "demo.yaml")
    out = tmp_path / "elsewhere" / "out"
    out.mkdir(parents=True)
    (out / "failures.yaml").write_text(failures_manifest(manifest.jobs[:2], manifest, out))
    reread = load_manifest(out / "failures.yaml")
    assert [j.portrait.value for j in reread.jobs] == [j.portrait.value for j in manifest.jobs[:2]]
    assert [j.prompt for j in reread.jobs] == [j.prompt for j in manifest.jobs[:2]]
    assert reread.output_dir == out / "retry"


def test_cost_mismatch_over_ten_percent_is_reported(media: Path, tmp_path: Path) -> None:
    manifest_path = tmp_path / "m.yaml"
    manifest_path.write_text(
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/en.wav}\n"
    )
    manifest = load_manifest(manifest_path)
    with StateStore.open(tmp_path / "s.sqlite") as store:
        store.ensure_jobs(
            [
                JobSpec(
                    "a",
                    spec_hash="h",
                    model=manifest.jobs[0].model,
                    number_results=1,
                    audio_seconds=3.0,
                    estimated_cost=0.132,
                )
            ]
        )
        for status in (JobStatus.UPLOADING, JobStatus.SUBMITTING, JobStatus.PROCESSING):
            store.transition("a", status)
        store.transition("a", JobStatus.DOWNLOADING, actual_cost=0.2)
        store.transition("a", JobStatus.DONE)
        data = build_report(
            manifest.jobs, store, manifest="m", manifest_sha256="x", output_dir=tmp_path
        )
    assert data.jobs[0].cost_mismatch


def test_report_command_rewrites_the_files_from_state(demo_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with running_sandbox(QUICK) as sandbox:
        run(demo_copy / "example.csv", sandbox, out)
    for name in ("cost_report.csv", "index.html", "report.md"):
        (out / name).unlink()
    result = runner.invoke(app, ["report", "--state", str(out / "state.sqlite")])
    assert result.exit_code == 0, result.output
    assert (out / "cost_report.csv").exists() and (out / "index.html").exists()
    assert "3 jobs: 3 done" in result.output


def test_gallery_pages_follow_the_batch_and_stale_ones_go(
    demo_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(gallery, "PAGE_SIZE", 2)
    with running_sandbox(QUICK) as sandbox:
        run(demo_copy / "example.csv", sandbox, out)
    assert (out / "index.html").is_file() and (out / "gallery" / "page-2.html").is_file()
    assert "../videos/" in (out / "gallery" / "page-2.html").read_text()
    monkeypatch.setattr(gallery, "PAGE_SIZE", 1000)
    result = runner.invoke(app, ["report", "--state", str(out / "state.sqlite")])
    assert result.exit_code == 0, result.output
    assert not list((out / "gallery").glob("page-*.html"))


def test_init_writes_starters_that_validate_once_media_is_there(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "new"
    assert runner.invoke(app, ["validate", str(folder / "avatarbatch.yaml")]).exit_code == 2
    shutil.copy(DEMO / "media/presenter.png", folder / "media/presenter.png")
    for lang in ("en", "es"):
        shutil.copy(DEMO / f"media/voices/{lang}.mp3", folder / f"media/voices/{lang}.mp3")
    for name in ("avatarbatch.yaml", "rows.csv"):
        checked = runner.invoke(app, ["validate", str(folder / name)])
        assert checked.exit_code == 0, checked.output
    again = runner.invoke(app, ["init", str(folder)])
    assert again.exit_code == 2 and "--force" in again.output


def test_one_tally_by_status_counts_jobs_and_sums_their_costs(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s.sqlite") as store:
        for job_id, estimate in (("a", 0.132), ("b", 0.176), ("c", None)):
            store.ensure_jobs(
                [
                    JobSpec(
                        job_id,
                        spec_hash="h",
                        model="klingai:avatar@2.0-standard",
                        number_results=1,
                        audio_seconds=None if estimate is None else 3.0,
                        estimated_cost=estimate,
                    )
                ]
            )
        for status in (JobStatus.UPLOADING, JobStatus.SUBMITTING, JobStatus.PROCESSING):
            store.transition("a", status)
        store.transition("a", JobStatus.DOWNLOADING, actual_cost=0.2)
        store.transition("a", JobStatus.DONE)
        tally = tally_by_status(store.overview().values())
        assert tally.counts(every=JobStatus) == store.counts()
    assert tally.counts() == {"pending": 2, "done": 1}
    assert tally.count(JobStatus.DONE) == 1 and tally.count(JobStatus.FAILED) == 0
    unfinished = tally.totals(status for status in JobStatus if status not in FINISHED)
    assert (unfinished.jobs, unfinished.unknown_cost_jobs) == (2, 1)
    assert unfinished.estimated_cost == pytest.approx(0.176)
    everything = tally.totals()
    assert everything.actual_cost == pytest.approx(0.2)
    assert everything.estimated_cost == pytest.approx(0.308)
