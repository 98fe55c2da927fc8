"""`conformance run / replay / mutants`: exit codes, the report files, repro scripts, replay,
determinism and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from conformance import report
from conformance.__main__ import main

SCHEMA = json.loads((Path(report.__file__).parent / "report_schema.json").read_text())


def _target(name: str) -> str:
    from conformance.mutants import OPTIMIZER_MUTANTS
    return next(m.target for m in OPTIMIZER_MUTANTS if m.name == name)


def _run(tmp_path: Path, *args: str) -> tuple[int, Path | None]:
    code = main(["run", "--profile", "dev", "--examples", "20", "--seed", "1",
                 "--report-dir", str(tmp_path / "reports"), *args])
    runs = sorted((tmp_path / "reports").glob("*")) if (tmp_path / "reports").exists() else []
    return code, runs[-1] if runs else None


def test_conformant_run_exits_0_and_writes_a_passing_report(tmp_path: Path) -> None:
    code, run_dir = _run(tmp_path, "--optimizer", "torch.optim:SGD", "--junit",
                         str(tmp_path / "j.xml"))
    assert code == 0 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    assert data["schema_version"] == report.SCHEMA_VERSION and data["result"] == "pass"
    assert data["failures"] == [] and data["coverage"]["programs"] >= 40
    jsonschema.validate(data, SCHEMA)
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert "conforms to" in (run_dir / "report.md").read_text()


def test_divergent_run_exits_1_with_first_divergence_and_a_repro(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, run_dir = _run(tmp_path, "--optimizer", _target("maximize-ignored"))
    assert code == 1 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    assert data["result"] == "fail" and data["failures"]
    first = data["failures"][0]["first_divergence"]
    for key in ("action_index", "action", "group", "parameter", "tensor", "index", "expected",
                "actual", "abs_error", "ulp_error"):
        assert key in first
    assert first["tensor"] in ("param", "momentum_buffer")
    assert json.loads(json.dumps(data)) == data  # plain JSON
    jsonschema.validate(data, SCHEMA)
    suite = ET.parse(run_dir / "junit.xml").getroot()
    assert suite.get("failures") == str(len({f["dtype"] for f in data["failures"]}))
    # the repro fails with the same first divergence, and passes once the optimizer is fixed
    repro = run_dir / data["failures"][0]["repro"]
    env = dict(os.environ, PYTHONPATH=str(Path.cwd()))
    done = subprocess.run([sys.executable, str(repro)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr
    assert first["action"] in done.stdout
    fixed = tmp_path / "fixed.py"
    fixed.write_text(repro.read_text().replace(_target("maximize-ignored"),
                                               "conformance.mutants:CorrectSGD"))
    done = subprocess.run([sys.executable, str(fixed)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "conforms" in done.stdout, done.stdout + done.stderr
    # replay prints the same first divergence
    capsys.readouterr()
    assert main(["replay", str(run_dir / "report.json")]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith(f"action {first['action_index']} {first['action']}: "
                              f"{first['tensor']} of {first['parameter']}")


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


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--optimizer", "no_such_module_xyz:SGD"], "cannot import"),
    (["run", "--optimizer", "json:loads"], "is not a class"),
    (["run", "--optimizer", "refimpl", "--examples", "0"], "--examples must be at least 1"),
    (["replay", "does-not-exist.json"], "cannot read"),
])
def test_configuration_errors_exit_2_with_one_line(args: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--no-such-option"])
    assert exit_info.value.code == 2


def test_interrupted_write_leaves_no_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    data = {"created": "2026-01-01T00:00:00+00:00", "implementation": "x", "failures": [],
            "result": "pass", "settings": {"dtypes": []}, "coverage": {}, "environment": {}}

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
        "schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "result": "fail",
        "implementation": hostile, "environment": {"torch": hostile}, "coverage":
        {"programs": 1, "actions": 2}, "settings": {"dtypes": ["float32"], "mode": hostile},
        "failures": [{
            "dtype": "float32", "program": [{"kind": "step", "args": {"x": hostile}}],
            "repro": "repro_1.py", "error_per_action": [0.0, 3.0, -1.0],
            "first_divergence": {"action_index": 1, "action": hostile, "group": 0,
                                 "parameter": hostile, "tensor": "param", "index": [0, 1],
                                 "expected": 1.0, "actual": 2.0, "abs_error": 1.0,
                                 "ulp_error": 3.0, "reason": hostile, "detail": hostile,
                                 "traceback": hostile, "shape": [2, 3],
                                 "ulp_errors": [0, 1, 2, 3, -1, 0]}}],
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


def test_mutants_command_prints_the_kill_matrix(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from conformance import mutants

    catalogue = {m.name: m for m in mutants.OPTIMIZER_MUTANTS + mutants.AUTOGRAD_MUTANTS}
    monkeypatch.setattr(mutants, "OPTIMIZER_MUTANTS", (catalogue["lr-read-once"],))
    monkeypatch.setattr(mutants, "AUTOGRAD_MUTANTS", (catalogue["mse-grad-not-doubled"],))
    monkeypatch.setattr(mutants, "THOROUGH_MUTANTS", ())
    assert main(["mutants", "--profile", "dev"]) == 0
    out = capsys.readouterr().out
    assert "lr-read-once" in out and "mse-grad-not-doubled" in out
    assert out.count("killed") == 2 and "SURVIVED" not in out


@pytest.mark.parametrize(("args", "message"), [
    (["--without", "maximise"], "unknown feature(s) maximise"),
    (["--timeout", "nan"], "--timeout must be a positive number"),
    (["--timeout", "inf"], "--timeout must be a positive number"),
    (["--max-failures", "0"], "--max-failures must be at least 1"),
    (["--optimizer", "contract_optimizers:NoMaximizeSGD"], "--without maximize"),
])
def test_bad_run_options_exit_2_before_any_program(args: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import tests.test_contract  # noqa: F401  (registers contract_optimizers)

    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_pyproject_settings_apply_and_the_command_line_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.test_contract  # noqa: F401  (registers contract_optimizers)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.sgd-conformance]\noptimizer = "contract_optimizers:DocSGD"\n'
        'without = ["maximize", "tensor-lr"]\nmax-failures = 2\n')
    code, run_dir = _run(tmp_path, "--dtype", "float64")
    assert code == 0 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["implementation"] == "contract_optimizers:DocSGD"
    assert data["settings"]["config_file"] == str(tmp_path / "pyproject.toml")
    assert data["settings"]["max_failures"] == 2 and data["contract"] == "semantic"
    assert [(n["feature"], n["source"]) for n in data["not_verified"]] == [
        ("maximize", "pyproject.toml"), ("tensor-lr", "pyproject.toml"),
        ("float32", "--dtype")]
    assert "Not verified" in (run_dir / "report.md").read_text()
    code, run_dir = _run(tmp_path, "--dtype", "float64", "--without", "closure")
    data = json.loads((run_dir / "report.json").read_text())
    assert [n["feature"] for n in data["not_verified"]] == ["closure", "float32"]
    assert "step_closure" not in data["coverage"]["action_kinds"]
    (tmp_path / "pyproject.toml").write_text('[tool.sgd-conformance]\nwithot = ["closure"]\n')
    assert main(["run"]) == 2


def test_a_doc_written_sgd_fails_only_the_strict_contract(tmp_path: Path) -> None:
    import tests.test_contract  # noqa: F401  (registers contract_optimizers)

    code, _ = _run(tmp_path, "--optimizer", "contract_optimizers:DocSGD", "--dtype", "float32")
    assert code == 0
    code, run_dir = _run(tmp_path, "--optimizer", "contract_optimizers:DocSGD", "--dtype",
                         "float32", "--contract", "strict")
    assert code == 1 and run_dir is not None
    data = json.loads((run_dir / "report.json").read_text())
    assert data["contract"] == "strict"
    assert {f["first_divergence"]["tensor"] for f in data["failures"]} <= {
        "param_groups", "exception"}
