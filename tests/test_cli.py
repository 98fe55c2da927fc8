"""`conformance run / replay / mutants`: exit codes, the report files, repro scripts, replay,
determinism and atomic writes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conformance import report
from conformance.__main__ import main

SCHEMA = json.loads((Path(report.__file__).parent / "report_schema.json").read_text())


def _target(name: str) -> str:
    from conformance.mutants import OPTIMIZER_MUTANTS

    return next(m.target for m in OPTIMIZER_MUTANTS if m.name == name)


def _run(tmp_path: Path, *args: str) -> tuple[int, Path | None]:
    code = main(
        [
            "run",
            "--profile",
            "dev",
            "--examples",
            "20",
            "--seed",
            "1",
            "--report-dir",
            str(tmp_path / "reports"),
            *args,
        ]
    )
    runs = sorted((tmp_path / "reports").glob("*")) if (tmp_path / "reports").exists() else []
    return code, runs[-1] if runs else None


def test_conformant_run_exits_0_and_writes_a_passing_report(tmp_path: Path) -> None:
    code, run_dir = _run(
        tmp_path, "--optimizer", "torch.optim:SGD", "--junit", str(tmp_path / "j.xml")
    )
    assert code == 0 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    assert data["schema_version"] == report.SCHEMA_VERSION and data["result"] == "pass"
    assert data["failures"] == [] and data["coverage"]["programs"] >= 40
    jsonschema.validate(data, SCHEMA)
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert "conforms to" in (run_dir / "report.md").read_text()


def test_divergent_run_exits_1_with_first_divergence_and_a_repro(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, run_dir = _run(tmp_path, "--optimizer", _target("maximize-ignored"))
    assert code == 1 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    assert data["result"] == "fail" and data["failures"]
    first = data["failures"][0]["first_divergence"]
    for key in (
        "action_index",
        "action",
        "group",
        "parameter",
        "tensor",
        "index",
        "expected",
        "actual",
        "abs_error",
        "ulp_error",
    ):
        assert key in first
    assert first["tensor"] in ("param", "momentum_buffer")
    assert json.loads(json.dumps(data)) == data  # plain JSON
    jsonschema.validate(data, SCHEMA)
    suite = ET.parse(run_dir / "junit.xml").getroot()
    assert suite.get("failures") == str(len({f["dtype"] for f in data["failures"]}))
    # the repro fails with the same first divergence, and passes once the optimizer is fixed
    repro = run_dir / data["failures"][0]["repro"]
    env = dict(os.environ, PYTHONPATH=str(Path.cwd()))
    done = subprocess.run(
        [sys.executable, str(repro)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert first["action"] in done.stdout
    fixed = tmp_path / "fixed.py"
    fixed.write_text(
        repro.read_text().replace(_target("maximize-ignored"), "conformance.mutants:CorrectSGD")
    )
    done = subprocess.run(
        [sys.executable, str(fixed)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0 and "conforms" in done.stdout, done.stdout + done.stderr
    # replay prints the same first divergence
    capsys.readouterr()
    assert main(["replay", str(run_dir / "report.json")]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith(
        f"action {first['action_index']} {first['action']}: "
        f"{first['tensor']} of {first['parameter']}"
    )


def test_same_seed_gives_the_same_report_apart_from_timings(tmp_path: Path) -> None:
    _, first = _run(tmp_path, "--optimizer", _target("lr-read-once"), "--dtype", "float64")
    _, second = _run(tmp_path, "--optimizer", _target("lr-read-once"), "--dtype", "float64")
    assert first != second
    a = json.loads((first / "report.json").read_text())
    b = json.loads((second / "report.json").read_text())
    for data in (a, b):  # what a clock measured
        data.pop("created")
        for failure in data["failures"]:
            failure.pop("found_after_seconds")
    assert a == b


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--optimizer", "no_such_module_xyz:SGD"], "cannot import"),
        (["run", "--optimizer", "json:loads"], "is not a class"),
        (["run", "--optimizer", "refimpl", "--examples", "0"], "--examples must be at least 1"),
        (["replay", "does-not-exist.json"], "cannot read"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--no-such-option"])
    assert exit_info.value.code == 2


def test_interrupted_write_leaves_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {
        "created": "2026-01-01T00:00:00+00:00",
        "implementation": "x",
        "failures": [],
        "result": "pass",
        "settings": {"dtypes": []},
        "coverage": {},
        "environment": {},
    }

    def interrupted(_: dict) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "markdown", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write(data, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_schema_rejects_a_report_missing_its_first_divergence() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    broken = {"schema_version": 1, "created": "x", "result": "maybe"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_html_report_is_self_contained_and_escapes_every_value(tmp_path: Path) -> None:
    from html.parser import HTMLParser

    hostile = "<script>alert('x')</script>"
    data = {
        "schema_version": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "result": "fail",
        "implementation": hostile,
        "environment": {"torch": hostile},
        "coverage": {"programs": 1, "actions": 2},
        "settings": {"dtypes": ["float32"], "mode": hostile},
        "failures": [
            {
                "dtype": "float32",
                "program": [{"kind": "step", "args": {"x": hostile}}],
                "repro": "repro_1.py",
                "error_per_action": [0.0, 3.0, -1.0],
                "first_divergence": {
                    "action_index": 1,
                    "action": hostile,
                    "group": 0,
                    "parameter": hostile,
                    "tensor": "param",
                    "index": [0, 1],
                    "expected": 1.0,
                    "actual": 2.0,
                    "abs_error": 1.0,
                    "ulp_error": 3.0,
                    "reason": hostile,
                    "detail": hostile,
                    "traceback": hostile,
                    "shape": [2, 3],
                    "ulp_errors": [0, 1, 2, 3, -1, 0],
                },
            }
        ],
    }
    page = report.html(data)
    assert "<script" not in page and "&lt;script&gt;" in page

    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.append(tag)
            for name, value in attrs:
                assert not (name == "src" and not value.startswith("data:image/png;base64,"))

    parser = Collect()
    parser.feed(page)
    parser.close()
    assert parser.tags.count("img") == 2  # error per action, error map: both inline
    assert "link" not in parser.tags and "script" not in parser.tags  # self-contained


def test_mutants_command_prints_the_kill_matrix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conformance import mutants

    catalogue = {m.name: m for m in mutants.OPTIMIZER_MUTANTS + mutants.AUTOGRAD_MUTANTS}
    monkeypatch.setattr(mutants, "OPTIMIZER_MUTANTS", (catalogue["lr-read-once"],))
    monkeypatch.setattr(mutants, "AUTOGRAD_MUTANTS", (catalogue["mse-grad-not-doubled"],))
    monkeypatch.setattr(mutants, "THOROUGH_MUTANTS", ())
    assert main(["mutants", "--profile", "dev"]) == 0
    out = capsys.readouterr().out
    assert "lr-read-once" in out and "mse-grad-not-doubled" in out
    assert out.count("killed") == 2 and "SURVIVED" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--without", "maximise"], "unknown feature(s) maximise"),
        (["--timeout", "nan"], "--timeout must be a positive number"),
        (["--timeout", "inf"], "--timeout must be a positive number"),
        (["--max-failures", "0"], "--max-failures must be at least 1"),
        (["--optimizer", "tests.test_contract:NoMaximizeSGD"], "--without maximize"),
    ],
)
def test_bad_run_options_exit_2_before_any_program(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_pyproject_settings_apply_and_the_command_line_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.sgd-conformance]\noptimizer = "tests.test_contract:DocSGD"\n'
        'without = ["maximize", "tensor-lr"]\nmax-failures = 2\n'
    )
    code, run_dir = _run(tmp_path, "--dtype", "float64")
    assert code == 0 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["implementation"] == "tests.test_contract:DocSGD"
    assert data["settings"]["config_file"] == str(tmp_path / "pyproject.toml")
    assert data["settings"]["max_failures"] == 2 and data["contract"] == "semantic"
    assert [(n["feature"], n["source"]) for n in data["not_verified"]] == [
        ("maximize", "pyproject.toml"),
        ("tensor-lr", "pyproject.toml"),
        ("float32", "--dtype"),
    ]
    assert "Not verified" in (run_dir / "report.md").read_text()
    code, run_dir = _run(tmp_path, "--dtype", "float64", "--without", "closure")
    data = json.loads((run_dir / "report.json").read_text())
    assert [n["feature"] for n in data["not_verified"]] == ["closure", "float32"]
    assert "step_closure" not in data["coverage"]["action_kinds"]
    (tmp_path / "pyproject.toml").write_text('[tool.sgd-conformance]\nwithot = ["closure"]\n')
    assert main(["run"]) == 2


def test_a_doc_written_sgd_fails_only_the_strict_contract(tmp_path: Path) -> None:
    code, _ = _run(tmp_path, "--optimizer", "tests.test_contract:DocSGD", "--dtype", "float32")
    assert code == 0
    code, run_dir = _run(
        tmp_path,
        "--optimizer",
        "tests.test_contract:DocSGD",
        "--dtype",
        "float32",
        "--contract",
        "strict",
    )
    assert code == 1 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    assert data["contract"] == "strict"
    assert {f["first_divergence"]["tensor"] for f in data["failures"]} <= {
        "param_groups",
        "exception",
    }


# --- containment: every bad input exits 2 with one line, before any program runs -------------


@pytest.fixture
def no_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that runs fails the test: through main, as an internal error (status 3)."""
    import conformance.machine
    import conformance.parallel
    import conformance.runner

    def ran(*_: object, **__: object) -> None:
        raise AssertionError("a program ran")

    monkeypatch.setattr(conformance.runner, "run", ran)
    monkeypatch.setattr(conformance.parallel, "run", ran)
    monkeypatch.setattr(conformance.machine, "replay", ran)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--timeout", "nan"],
            "--timeout must be a positive number of seconds, at most 86400, got nan",
        ),
        (
            ["--timeout", "inf"],
            "--timeout must be a positive number of seconds, at most 86400, got inf",
        ),
        (["--timeout", "1e300"], "--timeout must be a positive number of seconds"),
        (["--timeout", "0"], "--timeout must be a positive number"),
        (["--timeout", "-1"], "--timeout must be a positive number"),
        (["--examples", "0"], "--examples must be at least 1, got 0"),
        (["--max-failures", "0"], "--max-failures must be at least 1, got 0"),
        (["--memory-limit", "0"], "--memory-limit must be at least 1, got 0"),
        (["--memory-limit", "100000000000000"], "--memory-limit must be at most 1073741824 (MiB)"),
        (["--report-dir", "/proc"], "--report-dir: cannot write in /proc"),
        (["--report-dir", "/proc/foo"], "--report-dir: cannot create the directory /proc/foo"),
        (["--junit", "/proc/junit.xml"], "--junit: cannot write in /proc"),
    ],
)
def test_bad_values_exit_2_with_one_line_before_any_program(
    args: list[str], message: str, no_program: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *args]) == 2
    err = _one_error_line(capsys)
    assert err.startswith("conformance: error: ") and message in err, err


def test_report_dir_and_junit_of_the_wrong_kind_exit_2(
    tmp_path: Path, no_program: None, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "reports.txt"
    a_file.write_text("mine")
    assert main(["run", "--report-dir", str(a_file)]) == 2
    assert f"--report-dir: {a_file} exists and is not a directory" in _one_error_line(capsys)
    assert a_file.read_text() == "mine"
    assert main(["run", "--report-dir", str(tmp_path / "r"), "--junit", str(tmp_path)]) == 2
    assert f"--junit: {tmp_path} is a directory, not a file" in _one_error_line(capsys)
    assert (
        main(["run", "--report-dir", str(tmp_path / "r"), "--junit", str(a_file / "junit.xml")])
        == 2
    )
    assert f"--junit: {a_file} exists and is not a directory" in _one_error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_report_dir_exits_2(
    tmp_path: Path, no_program: None, capsys: pytest.CaptureFixture[str]
) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        assert main(["run", "--report-dir", str(read_only)]) == 2
        assert f"--report-dir: cannot write in {read_only}" in _one_error_line(capsys)
    finally:
        read_only.chmod(0o755)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--isolation", "bogus"],
        ["run", "--memory-limit", "lots"],
        ["run", "--no-such-option"],
        ["replay"],
        [],
    ],
)
def test_argparse_usage_errors_exit_2_in_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = _one_error_line(capsys)
    assert ": error: " in err and "--help" in err


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            'isolation = "bogus"',
            "--isolation must be one of none, process, got 'bogus' (from pyproject.toml)",
        ),
        ("memory-limit = 0", "--memory-limit must be at least 1, got 0 (from pyproject.toml)"),
        (
            "timeout = inf",
            "--timeout must be a positive number of seconds, at most 86400, got inf "
            "(from pyproject.toml)",
        ),
        ("timeout = nan", "got nan (from pyproject.toml)"),
        ("examples = true", "--examples must be at least 1, got True (from pyproject.toml)"),
        ("max-failures = 1.5", "--max-failures must be at least 1, got 1.5"),
        ('report-dir = "/proc/foo"', "--report-dir: cannot create the directory /proc/foo"),
        ("junit = 3", "--junit must be a file name, got 3"),
        ("[tool.sgd-conformance.nested]", "unknown key(s) nested"),
    ],
)
def test_bad_pyproject_values_exit_2_with_one_line(
    toml: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_program: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(f"[tool.sgd-conformance]\n{toml}\n")
    assert main(["run"]) == 2
    assert message in _one_error_line(capsys)


def test_isolation_memory_limit_and_report_dir_from_pyproject_reach_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.sgd-conformance]\nisolation = "none"\nmemory-limit = 512\n'
        'report-dir = "out"\njunit = "ci/junit.xml"\nexamples = 2\ndtype = "float64"\n'
    )
    assert main(["run", "--seed", "0"]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    data = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert (data["settings"]["isolation"], data["settings"]["memory_limit"]) == ("none", 512)
    assert ET.parse(tmp_path / "ci" / "junit.xml").getroot().get("tests") == "2"


@pytest.fixture(scope="module")
def diverging_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real report.json with one failure (float64), read back."""
    reports = tmp_path_factory.mktemp("reports")
    code = main(
        [
            "run",
            "--optimizer",
            _target("maximize-ignored"),
            "--dtype",
            "float64",
            "--examples",
            "10",
            "--seed",
            "1",
            "--max-failures",
            "1",
            "--isolation",
            "none",
            "--report-dir",
            str(reports),
        ]
    )
    assert code == 1
    (run_dir,) = reports.iterdir()
    return json.loads((run_dir / "report.json").read_text())


def _a_report(tmp_path: Path, original: dict[str, Any], change: Callable[[Any], Any]) -> Path:
    data = copy.deepcopy(original)
    data = change(data) or data
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return path


def _set(path: str, value: Any) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if key.isdigit() else data[key]
        data[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (lambda d: [d], [], "not a report: a JSON object expected, found an array"),
        (lambda d: d.pop("failures") and None, [], "'failures' is a required property"),
        (
            _set("failures.0.case", {"setup": {}, "actions": []}),
            [],
            "at $.failures[0].case.setup: 'model' is a required property",
        ),
        (
            _set("failures.0.case.actions.0.kind", "explode"),
            [],
            "at $.failures[0].case.actions[0].kind: 'explode' is not one of",
        ),
        (
            _set("failures.0.case.setup.dtype", "float16"),
            [],
            "at $.failures[0].case.setup.dtype: 'float16' is not one of",
        ),
        (
            _set("schema_version", 7),
            [],
            "report schema_version 7 is newer than this conformance (2); upgrade sgd-conformance",
        ),
        (_set("schema_version", "2"), [], "report schema_version '2' is unknown"),
        (
            _set("failures.0.case.setup.groups.0.params", ["no.such.parameter"]),
            [],
            "groups name parameters its model lacks: no.such.parameter",
        ),
        (
            _set("failures.0.case.setup.model.layers", [{"op": "no-such-layer"}]),
            [],
            "failure 1 is not a case this version can replay",
        ),
        (lambda d: None, ["--case", "2"], "has 1 failure(s); --case 2 is not one of them"),
        (lambda d: None, ["--case", "0"], "--case 0 is not one of them"),
    ],
)
def test_replay_of_a_report_it_cannot_read_exits_2_with_one_line(
    change: Callable[[Any], Any],
    args: list[str],
    message: str,
    tmp_path: Path,
    diverging_report: dict[str, Any],
    no_program: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _a_report(tmp_path, diverging_report, change)
    assert main(["replay", str(path), *args]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"conformance: error: {path}") and message in err, err


def test_the_replay_fixture_is_a_valid_report_that_still_replays(
    tmp_path: Path, diverging_report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _a_report(tmp_path, diverging_report, lambda d: None)
    jsonschema.validate(json.loads(path.read_text()), SCHEMA)
    assert main(["replay", str(path)]) == 1
    first = diverging_report["failures"][0]["first_divergence"]
    assert f"{first['tensor']} of {first['parameter']}" in capsys.readouterr().out


def test_a_missing_extra_names_it_in_one_line(
    monkeypatch: pytest.MonkeyPatch, no_program: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # what find_spec reads first
    assert main(["run"]) == 2
    assert _one_error_line(capsys) == (
        "conformance: error: hypothesis is not installed; install the suite with pip install "
        "'sgd-conformance[conformance]' (torch==2.13.0 first)"
    )


def test_a_missing_extra_through_the_entry_point_exits_2() -> None:
    code = (
        "import runpy, sys\nsys.modules['tqdm'] = None\nsys.modules['jsonschema'] = None\n"
        "sys.argv = ['conformance', 'run', '--profile', 'dev']\n"
        "runpy.run_module('conformance', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "conformance: error: tqdm, jsonschema are not installed; install the suite with pip "
        "install 'sgd-conformance[conformance]' (torch==2.13.0 first)"
    )


def test_an_extra_module_that_fails_to_import_late_is_still_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import conformance.__main__ as cli

    monkeypatch.setattr(cli, "_check_extra", lambda: None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert main(["run", "--report-dir", str(tmp_path)]) == 2
    assert "tqdm is not installed; install the suite" in _one_error_line(capsys)


# --- a bug of ours is status 3; the user's interrupt 130 -------------------------------------


def test_an_internal_error_prints_the_traceback_and_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import conformance.parallel
    from conformance.__main__ import INTERNAL_ERROR_LINE

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the harness broke")

    monkeypatch.setattr(conformance.parallel, "run", broken)
    assert main(["run", "--report-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert "RuntimeError: the harness broke" in err
    assert (
        err[-1]
        == INTERNAL_ERROR_LINE
        == (
            "conformance: internal error (a bug in sgd-conformance, not in your optimizer): "
            "please file it with the traceback above"
        )
    )
    assert list(tmp_path.iterdir()) == []


def test_a_report_that_cannot_be_written_after_a_divergence_is_status_3_not_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_: dict) -> str:
        raise ValueError("a renderer broke")

    monkeypatch.setattr(report, "markdown", broken)
    code, run_dir = _run(
        tmp_path,
        "--optimizer",
        _target("maximize-ignored"),
        "--dtype",
        "float64",
        "--isolation",
        "none",
    )
    assert code == 3 and run_dir is None  # no half-written report either
    err = capsys.readouterr().err
    assert "ValueError: a renderer broke" in err and "please file it" in err


def test_the_users_interrupt_is_130_not_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import conformance.parallel

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(conformance.parallel, "run", interrupted)
    assert main(["run", "--report-dir", str(tmp_path)]) == 130
    assert _one_error_line(capsys) == "conformance: interrupted"


# --- the pytest route ------------------------------------------------------------------------


def test_pytest_route_checks_its_options_before_any_program(tmp_path: Path) -> None:
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
            "--conformance-memory-limit",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 4, done.stdout + done.stderr
    assert (
        "conformance: error: --conformance-memory-limit must be at least 1, got 0"
        in done.stdout + done.stderr
    )
    assert not (tmp_path / "reports").exists()


def test_pytest_route_writes_the_report_a_failing_test_names(tmp_path: Path) -> None:
    reports = tmp_path / "out"
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
            "-k",
            "float64",
            "--optimizer",
            _target("maximize-ignored"),
            "--conformance-profile",
            "dev",
            "--conformance-seed",
            "1",
            "--conformance-max-failures",
            "1",
            "--conformance-isolation",
            "none",
            "--conformance-report-dir",
            str(reports),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    (run_dir,) = reports.iterdir()
    assert f"report (written when the session ends): {run_dir}/report.md" in done.stdout
    assert f"sgd-conformance report: {run_dir}/report.md" in done.stdout
    data = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["result"] == "fail" and data["settings"]["dtypes"] == ["float64"]
    assert data["settings"]["isolation"] == "none"
    assert [(n["feature"], n["source"]) for n in data["not_verified"]] == [
        ("float32", "pytest selection")
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "junit.xml",
        "report.html",
        "report.json",
        "report.md",
        "repro_1.py",
    ]
