"""The command line, run as users run it: exit codes, text output and --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from avatarbatch import __version__
from avatarbatch.cli.commands import app

Write = Callable[[str, str | bytes], Path]
runner = CliRunner()


def test_demo_manifest_validates(demo_copy: Path) -> None:
    result = runner.invoke(app, ["validate", str(demo_copy / "demo.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("valid, 7 jobs (0 errors, 0 warnings)")


def test_example_csv_validates(demo_copy: Path) -> None:
    result = runner.invoke(app, ["validate", str(demo_copy / "example.csv")])
    assert result.exit_code == 0, result.output


def test_invalid_manifest_lists_problems_and_exits_2(write: Write, media: Path) -> None:
    path = write(
        "m.yaml",
        "version: 1\njobs:\n  - {id: a, portrait: media/face.png, audio: media/nope.wav, ttl: 5}\n",
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "m.yaml:3: job a: ttl: should be at least 60 (got 5)",
        "m.yaml: invalid (1 error, 0 warnings)",
    ]


def test_validate_json_lists_problem_objects(write: Write, media: Path) -> None:
    path = write("m.yaml", "jobs:\n  - {id: a, portrait: media/face.png, audio: media/nope.wav}\n")
    result = runner.invoke(app, ["validate", "--json", str(path)])
    assert result.exit_code == 2
    answer = json.loads(result.output)
    assert (answer["exit_code"], answer["valid"], answer["jobs"]) == (2, False, 1)
    assert answer["problems"] == [
        {
            "severity": "warning",
            "file": "m.yaml",
            "line": 1,
            "job": None,
            "field": None,
            "message": "no version: assuming version: 1",
        },
        {
            "severity": "error",
            "file": "m.yaml",
            "line": 2,
            "job": "a",
            "field": "audio",
            "message": "media/nope.wav does not exist",
        },
    ]


def test_validate_json_of_a_valid_manifest_lists_no_problem(demo_copy: Path) -> None:
    result = runner.invoke(app, ["validate", "--json", str(demo_copy / "demo.yaml")])
    answer = {"exit_code": 0, "valid": True, "jobs": 7, "problems": []}
    assert result.exit_code == 0 and json.loads(result.output) == answer


def test_plan_prints_jobs_and_totals(demo_copy: Path) -> None:
    result = runner.invoke(app, ["plan", str(demo_copy / "demo.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "id",
        "status",
        "model",
        "results",
        "audio",
        "s",
        "est.",
        "cost",
        "campaign",
        "lang",
    ]
    assert lines[1].split()[:3] == ["host-en", "new", "standard"]
    assert "Totals by model" in result.output and "Totals by lang" in result.output
    assert lines[-1].startswith("manifests/demo.yaml: 7 jobs, 40.8 s of audio, estimated $2.02898")


def test_plan_json_has_the_documented_shape(demo_copy: Path) -> None:
    result = runner.invoke(app, ["plan", "--json", str(demo_copy / "demo.yaml")])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    first = plan["jobs"][0]
    assert {"id", "status", "model", "audio_seconds", "estimated_cost"} <= set(first)
    assert first["id"] == "host-en" and first["status"] == "new"
    assert first["model"] == "klingai:avatar@2.0-standard"
    totals = plan["totals"]
    assert {"jobs", "audio_seconds", "estimated_cost", "by_model", "by_var"} <= set(totals)
    assert totals["jobs"] == 7
    assert totals["estimated_cost"] == round(sum(j["estimated_cost"] for j in plan["jobs"]), 5)
    assert set(totals["by_var"]["lang"]) == {"en", "es", "de", "fr", "it", "pt"}


def test_plan_of_an_invalid_manifest_exits_2_with_problems_on_stderr(
    write: Write, media: Path
) -> None:
    path = write("m.yaml", "version: 1\njobs:\n  - {id: a, portrait: media/face.png}\n")
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert "m.yaml:3: job a: audio: is required" in result.output


def test_missing_manifest_argument_is_a_usage_error() -> None:
    assert runner.invoke(app, ["validate"]).exit_code == 2


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"avatarbatch {__version__}"
