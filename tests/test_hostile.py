"""Containment: whatever the implementation under test does (exit, die of a signal, hang in C
or in Python, exhaust memory, wreck its own state, raise SystemExit or KeyboardInterrupt,
return a non-tensor loss), `conformance run` and `pytest --pyargs conformance` end with status 1
and a complete report naming what happened (tests/hostile.py holds the implementations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conformance import report
from conformance.__main__ import main
from tests.hostile import HOSTILE

SCHEMA = json.loads((Path(report.__file__).parent / "report_schema.json").read_text())
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = "1"  # seconds per action: a hang then costs about 1 + 0.5 s, and 8 x 1 s shrinking

# what the first failure's report line says for each
EXPECTED = {
    "ExitZero": "process exited with status 0 during step",
    "ExitThree": "process exited with status 3 during step",
    "Segfault": "killed by SIGSEGV during step",
    "CSleep": "during step() (the worker was killed",
    "PythonLoop": "ran past the timeout during step",
    "MemoryBomb": "ran out of memory during step() (its process may add",
    "DeletesState": "observing the implementation's state",
    "ChangesDtype": "dtype float32 != float16",
    "RaisesSystemExit": "the implementation SystemExit",
    "RaisesKeyboardInterrupt": "the implementation KeyboardInterrupt",
    "FloatLoss": "the implementation a float, not a tensor",
}


def _report(directory: Path) -> dict:
    runs = sorted(directory.glob("*/report.json"))
    assert len(runs) == 1, f"expected one report in {directory}, found {runs}"
    data = json.loads(runs[0].read_text())
    jsonschema.validate(data, SCHEMA)
    assert (runs[0].parent / "report.md").is_file() and (runs[0].parent / "report.html").is_file()
    return data


def _check(data: dict, name: str) -> None:
    assert data["result"] == "fail" and data["failures"], name
    first = data["failures"][0]
    text = json.dumps(first["first_divergence"])
    assert EXPECTED[name] in text, (name, text[:2000])


def test_every_hostile_case_is_listed() -> None:
    assert sorted(EXPECTED) == sorted(HOSTILE)


@pytest.mark.parametrize("name", HOSTILE)
def test_cli_ends_with_status_1_and_a_report(name: str, tmp_path: Path) -> None:
    code = main(
        [
            "run",
            "--optimizer",
            f"tests.hostile:{name}",
            "--profile",
            "dev",
            "--dtype",
            "float32",
            "--seed",
            "0",
            "--timeout",
            TIMEOUT,
            "--report-dir",
            str(tmp_path),
        ]
    )
    assert code == 1
    _check(_report(tmp_path), name)


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("name", ["ExitZero", "Segfault", "CSleep"])
def test_cli_process_exit_status_is_1(name: str, tmp_path: Path) -> None:
    """The real exit status of the command, from a process of its own."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformance",
            "run",
            "--optimizer",
            f"tests.hostile:{name}",
            "--profile",
            "dev",
            "--dtype",
            "float64",
            "--seed",
            "1",
            "--timeout",
            TIMEOUT,
            "--report-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    _check(_report(tmp_path), name)


@pytest.mark.parametrize("name", HOSTILE)
def test_pytest_route_ends_with_status_1_and_a_report(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "conformance",
            "--optimizer",
            f"tests.hostile:{name}",
            "--conformance-profile",
            "dev",
            "--conformance-seed",
            "0",
            "--conformance-timeout",
            TIMEOUT,
            "--conformance-report-dir",
            str(tmp_path),
            "-k",
            "float32",
        ],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    _check(_report(tmp_path), name)


def test_a_timeout_that_passes_when_re_run_is_a_flaky_failure_not_a_crash(tmp_path: Path) -> None:
    """The first step in the worker times out, its re-run passes: Hypothesis calls that
    flaky; the run reports it as a failure marked flaky (status 1), never a traceback."""
    code = main(
        [
            "run",
            "--optimizer",
            "tests.hostile:ColdStart",
            "--profile",
            "dev",
            "--dtype",
            "float32",
            "--seed",
            "0",
            "--timeout",
            TIMEOUT,
            "--report-dir",
            str(tmp_path),
        ]
    )
    assert code == 1
    data = _report(tmp_path)
    first = data["failures"][0]
    assert first["flaky"] is True and first["first_divergence"]["tensor"] == "process"
    assert "flaky" in next(tmp_path.glob("*/report.md")).read_text()
