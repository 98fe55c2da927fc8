"""`pytest --pyargs conformance -n 2` through pytest-xdist (the `[xdist]` extra): each dtype's
run split into one shard per worker, the shards' results sent to the controller, which alone
writes one report, the same for a seed and a shard count whoever ran which shard. Each case
runs pytest in a subprocess from an empty directory, with the dev profile (about 50 s in all on
two cores); skipped where pytest-xdist is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conformance import report

pytest.importorskip("xdist", reason="pytest-xdist (the [xdist] extra) is not installed")

pytestmark = pytest.mark.slow
SCHEMA = json.loads((Path(report.__file__).parent / "report_schema.json").read_text())
DEV = ("--conformance-profile", "dev", "--conformance-seed", "0")


def _pytest(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path | None]:
    """Runs `pytest --pyargs conformance ARGS` in `cwd`; returns it and the one report
    directory it wrote under cwd/reports (None for none; more than one fails the test)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))
    }  # when run under xdist
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--pyargs",
            "conformance",
            "--conformance-report-dir",
            "reports",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    reports = cwd / "reports"
    runs = sorted(p for p in reports.iterdir() if p.is_dir()) if reports.exists() else []
    assert len(runs) <= 1, (runs, done.stdout)
    return done, runs[0] if runs else None


def _report(run_dir: Path | None) -> dict[str, Any]:
    assert run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(data, SCHEMA)
    return data


def test_n2_passes_with_one_report_of_the_whole_budget_the_same_whoever_ran_each_shard(
    tmp_path: Path,
) -> None:
    (tmp_path / "xdist").mkdir()
    done, run_dir = _pytest(tmp_path / "xdist", "-n", "2", *DEV)
    assert done.returncode == 0, done.stdout + done.stderr
    for item in (
        "float32-shard1of2",
        "float32-shard2of2",
        "float64-shard1of2",
        "float64-shard2of2",
    ):
        assert f"PASSED test_conformance.py::test_sgd_conformance[{item}]" in done.stdout
    assert run_dir is not None
    assert f"sgd-conformance report: reports/{run_dir.name}/report.md" in done.stdout
    sharded = _report(run_dir)
    assert sharded["result"] == "pass" and sharded["settings"]["jobs"] == 2
    assert sharded["settings"]["dtypes"] == ["float32", "float64"]
    assert sharded["not_verified"] == []
    # the whole budget of both dtypes (Hypothesis draws a few programs beyond max_examples,
    # and the canonical cases come first), split between the shards
    assert sharded["coverage"]["programs"] >= 2 * sharded["settings"]["examples"]

    # the same two shards in one process without xdist, one after the other: the same report
    (tmp_path / "sequential").mkdir()
    done, run_dir = _pytest(
        tmp_path / "sequential", "-p", "no:xdist", "--conformance-shards", "2", *DEV
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED test_conformance.py::test_sgd_conformance[float64-shard2of2]" in done.stdout
    assert report.timeless(_report(run_dir)) == report.timeless(sharded)


def test_n2_with_a_mutant_fails_each_item_and_reports_the_failure(tmp_path: Path) -> None:
    done, run_dir = _pytest(
        tmp_path,
        "-n",
        "2",
        "-k",
        "float64",
        "--optimizer",
        "conformance.mutants:LrOffByOnePpm",
        "--conformance-isolation",
        "none",
        "--conformance-max-failures",
        "1",
        *DEV,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert run_dir is not None
    for item in ("float64-shard1of2", "float64-shard2of2"):
        assert f"FAILED test_conformance.py::test_sgd_conformance[{item}]" in done.stdout
    assert (
        f"report (written when the session ends): reports/{run_dir.name}/report.md" in done.stdout
    )
    data = _report(run_dir)
    assert data["result"] == "fail" and data["settings"]["jobs"] == 2
    assert data["settings"]["dtypes"] == ["float64"]
    assert [(n["feature"], n["source"]) for n in data["not_verified"]] == [
        ("float32", "pytest selection")
    ]
    assert data["failures"] and data["failures"][0]["key"]["tensor"] == "param"
    assert (run_dir / "repro_1.py").exists()


def test_n2_checks_the_options_before_any_program(tmp_path: Path) -> None:
    done, run_dir = _pytest(tmp_path, "-n", "2", "--conformance-shards", "0")
    assert done.returncode == 4, done.stdout + done.stderr
    assert (
        "conformance: error: --conformance-shards must be at least 1, got 0"
        in done.stdout + done.stderr
    )
    assert run_dir is None and not (tmp_path / "reports").exists()
