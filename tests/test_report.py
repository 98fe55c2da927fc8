"""report.json schema v2 and its renderers, from synthetic run results: several distinct
failures per run, the contract, what was not verified, the failing group's hyperparameters
(a tensor lr, groups added and changed by the program), an overwritten grad, trajectories.

The results are stand-ins shaped like the runner's (`RunResult`, `Failure`), so these tests
neither run the state machine nor import torch."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest

from conformance import report

SCHEMA = json.loads((Path(report.__file__).parent / "report_schema.json").read_text())
HOSTILE = "<script>alert(1)</script>"
CREATED = "2026-01-01T00:00:00+00:00"
ENVIRONMENT = {
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "numpy": "2.1.0",
    "hypothesis": "6.100.0",
    "torch_cpu_capability": "AVX512",
    "rounding_model": "fused",
}


@pytest.fixture(autouse=True)
def _no_torch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`environment()` asks torch; these reports are synthetic, so is their environment."""
    monkeypatch.setattr(report, "environment", lambda: dict(ENVIRONMENT))


# --- stand-ins for the runner's results ----------------------------------------------------------


@dataclass
class Coverage:
    programs: int = 0
    actions: int = 0
    action_kinds: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Coverage) -> None:
        self.programs += other.programs
        self.actions += other.actions
        self.action_kinds.update(other.action_kinds)

    def to_json(self, options: Any = None) -> dict[str, Any]:
        return {
            "programs": self.programs,
            "actions": self.actions,
            "action_kinds": dict(sorted(self.action_kinds.items())),
            "model_kinds": {"mlp": self.programs},
            "losses": {"mse": self.programs},
            "dtypes": {"float32": self.programs},
            "distinct_hyperparameter_configurations": 7,
            "distinct_group_layouts": 3,
        }


@dataclass
class Divergence:
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)


# Two linear layers: parameters 0.weight, 0.bias, 1.weight and 1.bias.
MODEL = {
    "kind": "mlp",
    "input_shape": [2, 3],
    "loss": "mse",
    "seed": 0,
    "layers": [{"op": "linear", "out": 3}, {"op": "linear", "out": 1}],
}


def _case(
    actions: list[dict[str, Any]],
    *,
    tensor_lr: bool,
    groups: list[dict[str, Any]],
    nesterov: bool = False,
    dtype: str = "float32",
) -> Any:
    setup = {
        "model": MODEL,
        "dtype": dtype,
        "defaults": {
            "lr": 0.1,
            "momentum": 0.9,
            "dampening": 0.0,
            "weight_decay": 0.0,
            "maximize": False,
            "nesterov": nesterov,
            "foreach": None,
        },
        "groups": groups,
        "tensor_lr": tensor_lr,
    }
    return SimpleNamespace(
        setup=SimpleNamespace(dtype=dtype),
        actions=actions,
        to_json=lambda: {"setup": copy.deepcopy(setup), "actions": copy.deepcopy(actions)},
    )


def _mismatch(
    index: list[int], expected: float | str, actual: float | str, ulp: float | str
) -> dict[str, Any]:
    return {
        "index": index,
        "expected": expected,
        "actual": actual,
        "abs_error": 0.25,
        "ulp_error": ulp,
        "count": 2,
        "max_abs_error": 0.25,
        "max_ulp_error": ulp,
        "budget": 1e-16,
        "reason": "exceeds budget: |actual - expected| = 0.25 > 1e-16",
    }


def _divergence(
    index: int,
    action: str,
    tensor: str,
    parameter: str | None,
    *,
    group: int | None = None,
    mismatch: dict[str, Any] | None = None,
    detail: str = "",
    traceback: str | None = None,
    others: list[dict[str, Any]] | None = None,
    overwritten: str | None = None,
    features: list[str] | None = None,
) -> Divergence:
    return Divergence(
        {
            "action_index": index,
            "action": action,
            "tensor": tensor,
            "parameter": parameter,
            "group": group,
            "mismatch": mismatch,
            "detail": detail,
            "traceback": traceback,
            "others": others or [],
            "shape": [3, 2] if mismatch else None,
            "ulp_errors": [0.0, 1.0, 4.0, -1.0, 0.0, 2.0] if mismatch else None,
            "overwritten": overwritten,
            "features": features or [],
        }
    )


def _tensor_lr_failure() -> Any:
    """float32: after a group was added and the lr changed (a tensor lr), the step gives
    0.weight the wrong value; three more tensors differ at that step."""
    actions = [
        {"kind": "backward", "args": {"batch": 0}},
        {
            "kind": "add_param_group",
            "args": {"params": ["1.weight"], "options": {"weight_decay": 0.01}},
        },
        {"kind": "set_hyperparameter", "args": {"group": 0, "name": "lr", "value": 0.5}},
        {"kind": "step", "args": {}},
    ]
    case = _case(
        actions,
        tensor_lr=True,
        groups=[{"params": ["0.weight", "0.bias"], "options": {"momentum": 0.5}}],
    )
    divergence = _divergence(
        3,
        "step()",
        "param",
        "0.weight",
        group=0,
        mismatch=_mismatch([1, 0], 0.25, 0.5, 4.0),
        others=[
            {
                "tensor": "momentum_buffer",
                "parameter": "0.weight",
                "mismatch": _mismatch([1, 0], 1.0, "nan", "inf"),
                "detail": "",
            },
            {
                "tensor": "param",
                "parameter": "1.weight",
                "mismatch": _mismatch([0, 2], -0.75, -0.5, 3.0),
                "detail": "",
            },
            {
                "tensor": "requires_grad",
                "parameter": "0.bias",
                "mismatch": None,
                "detail": "torch True, the implementation False",
            },
        ],
        features=["tensor-lr", "set-hyperparameter"],
    )
    return SimpleNamespace(
        divergence=divergence,
        case=case,
        key={
            "tensor": "param",
            "difference": "values",
            "action": "step",
            "features": ["tensor-lr", "set-hyperparameter"],
        },
        found_after_programs=12,
        found_after_seconds=1.25,
        error_per_action=[0.0, 0.0, 0.0, 4.0],
        trajectory={
            "tensor": "param",
            "parameter": "0.weight",
            "index": [1, 0],
            "expected": [0.0, 0.0, 0.0, 0.25],
            "actual": [0.0, 0.0, 0.0, 0.5],
        },
    )


def _overwritten_grad_failure() -> Any:
    """float32, a one-action program: the implementation's nesterov step overwrote .grad."""
    actions = [{"kind": "step_closure", "args": {"batch": 7}}]
    case = _case(
        actions,
        tensor_lr=False,
        nesterov=True,
        groups=[
            {"params": ["0.weight"], "options": {}},
            {"params": ["0.bias"], "options": {"lr": 0.01}},
        ],
    )
    divergence = _divergence(
        0,
        "step_closure(batch=7)",
        "grad",
        "0.weight",
        mismatch=_mismatch([0, 1], 1.5, 2.25, 9.0),
        overwritten="implementation",
        features=["nesterov", "closure"],
    )
    return SimpleNamespace(
        divergence=divergence,
        case=case,
        key={
            "tensor": "grad",
            "difference": "values",
            "action": "step",
            "features": ["nesterov", "closure"],
        },
        found_after_programs=40,
        found_after_seconds=3.5,
        error_per_action=[9.0],
        trajectory={
            "tensor": "grad",
            "parameter": "0.weight",
            "index": [0, 1],
            "expected": [1.5],
            "actual": [2.25],
        },
    )


def _result(dtype: str, failures: list[Any], programs: int = 100) -> Any:
    coverage = Coverage(programs, programs * 4, Counter({"step": programs, "backward": programs}))
    return SimpleNamespace(
        implementation="mypkg.optim:MySGD",
        dtypes=(dtype,),
        coverage=coverage,
        seconds=10.0,
        failures=failures,
    )


def _settings(**changes: Any) -> dict[str, Any]:
    return {
        "optimizer": "mypkg.optim:MySGD",
        "profile": "ci",
        "examples": 1000,
        "seed": 1,
        "mode": "ulp",
        "contract": "semantic",
        "reference_path": "for-loop",
        "dtypes": ["float32", "float64"],
        "timeout": 10.0,
        "max_failures": 3,
        "without": ["maximize"],
        "state_key": "momentum_buffer",
        "config_file": "/src/mypkg/pyproject.toml",
        **changes,
    }


NOT_VERIFIED = [
    {
        "feature": "maximize",
        "description": "maximize=True (gradient ascent) is never drawn",
        "source": "--without",
    },
    {
        "feature": "tensor-lr",
        "description": "a learning rate given as a 1-element tensor is never drawn",
        "source": "pyproject.toml",
    },
]


def _failing() -> dict[str, Any]:
    results = [
        _result("float32", [_tensor_lr_failure(), _overwritten_grad_failure()]),
        _result("float64", []),
    ]
    return report.build(results, _settings(), CREATED, not_verified=NOT_VERIFIED)


def _passing() -> dict[str, Any]:
    results = [_result("float32", []), _result("float64", [])]
    return report.build(results, _settings(without=[], config_file=None), CREATED, not_verified=[])


# --- report.json ---------------------------------------------------------------------------------


def test_schema_is_valid_and_both_reports_satisfy_it() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for data in (_passing(), _failing()):
        assert json.loads(json.dumps(data, allow_nan=False)) == data  # plain JSON
        jsonschema.validate(data, SCHEMA)


def test_passing_report() -> None:
    data = _passing()
    assert data["schema_version"] == report.SCHEMA_VERSION == 2
    assert data["result"] == "pass" and data["failures"] == []
    assert data["contract"] == "semantic" and data["not_verified"] == []
    assert data["coverage"]["programs"] == 200  # both dtypes merged


def test_build_leaves_the_results_coverage_alone() -> None:
    results = [_result("float32", []), _result("float64", [])]
    report.build(results, _settings(), CREATED, not_verified=[])
    assert results[0].coverage.programs == 100


def test_failing_report_records_each_failure() -> None:
    data = _failing()
    assert data["result"] == "fail" and data["contract"] == "semantic"
    assert data["not_verified"] == NOT_VERIFIED
    first, second = data["failures"]
    assert [f["repro"] for f in data["failures"]] == ["repro_1.py", "repro_2.py"]
    assert first["key"] == {
        "tensor": "param",
        "difference": "values",
        "action": "step",
        "features": ["tensor-lr", "set-hyperparameter"],
    }
    assert (first["found_after_programs"], first["found_after_seconds"]) == (12, 1.25)
    assert first["trajectory"]["expected"] == [0.0, 0.0, 0.0, 0.25]
    assert first["error_per_action"] == [0.0, 0.0, 0.0, 4.0]
    # group 0's options over the defaults, then the program's lr change, as a tensor
    assert first["group_hyperparameters"] == {
        "lr": {"tensor": 0.5},
        "momentum": 0.5,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "maximize": False,
        "nesterov": False,
        "foreach": None,
    }
    assert [(o["tensor"], o["parameter"]) for o in first["other_divergences"]] == [
        ("momentum_buffer", "0.weight"),
        ("param", "1.weight"),
        ("requires_grad", "0.bias"),
    ]
    d = second["first_divergence"]
    assert d["overwritten"] == "implementation" and d["features"] == ["nesterov", "closure"]
    assert d["group"] is None and second["group_hyperparameters"]["nesterov"] is True
    assert second["group_hyperparameters"]["lr"] == 0.1  # group 0 has no lr of its own


def test_schema_rejects_a_v2_report_without_its_new_fields() -> None:
    for field_name in ("contract", "not_verified"):
        broken = _failing()
        del broken[field_name]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)
    broken = _failing()
    del broken["failures"][0]["first_divergence"]["overwritten"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    broken = _failing()
    broken["failures"][0]["group_hyperparameters"]["lr"] = {"tensor": 0.5, "device": "cpu"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_build_requires_at_least_one_result() -> None:
    with pytest.raises(ValueError, match="at least one dtype"):
        report.build([], _settings(), CREATED, not_verified=[])


# --- the failing group's hyperparameters ---------------------------------------------------------


def _case_json(actions: list[dict[str, Any]], tensor_lr: bool = False) -> dict[str, Any]:
    return {
        "setup": {
            "defaults": {"lr": 0.1, "momentum": 0.0},
            "tensor_lr": tensor_lr,
            "groups": [
                {"params": ["a"], "options": {}},
                {"params": ["b"], "options": {"momentum": 0.9}},
            ],
        },
        "actions": actions,
    }


def _at(index: int, parameter: str | None, group: int | None = None) -> dict[str, Any]:
    return {"action_index": index, "parameter": parameter, "group": group}


def test_group_hyperparameters_follow_the_program_up_to_the_failing_action() -> None:
    change = lambda group, value: {
        "kind": "set_hyperparameter",
        "args": {"group": group, "name": "lr", "value": value},
    }
    add = lambda params, options: {
        "kind": "add_param_group",
        "args": {"params": params, "options": options},
    }
    step = {"kind": "step", "args": {}}
    case = _case_json(
        [
            change(3, 0.2),
            add(["c"], {"lr": 0.3}),
            add(["a", "d"], {"lr": 9.0}),
            step,
            change(1, 0.4),
        ]
    )
    # group index 3 of 2 groups is group 1, as the optimizer's param_groups[3 % 2]
    assert report.group_hyperparameters(case, _at(3, "b")) == {"lr": 0.2, "momentum": 0.9}
    assert report.group_hyperparameters(case, _at(3, "c")) == {"lr": 0.3, "momentum": 0.0}
    # torch rejects a group holding a parameter already in one: "d" stays ungrouped
    assert report.group_hyperparameters(case, _at(3, "d")) is None
    # the failing action's own change is not applied: it is what failed
    assert report.group_hyperparameters(case, _at(4, "b"))["lr"] == 0.2
    # no parameter: the divergence's group, else nothing (an exception, the loss)
    assert report.group_hyperparameters(case, _at(3, None, group=0)) == {"lr": 0.1, "momentum": 0.0}
    assert report.group_hyperparameters(case, _at(3, None)) is None


def test_a_tensor_lr_is_marked_as_one() -> None:
    case = _case_json([], tensor_lr=True)
    assert report.group_hyperparameters(case, _at(0, "b")) == {
        "lr": {"tensor": 0.1},
        "momentum": 0.9,
    }


# --- Markdown ------------------------------------------------------------------------------------


def test_markdown_of_a_passing_run_names_the_contract_and_says_nothing_was_left_out() -> None:
    text = report.markdown(_passing())
    assert text.startswith(
        "## ✅ `mypkg.optim:MySGD` conforms to torch.optim.SGD under the semantic contract\n"
    )
    assert "### Not verified\n\nNothing: every feature was checked." in text


def test_markdown_of_a_failing_run() -> None:
    text = report.markdown(_failing())
    headline = text.splitlines()[0]
    assert "diverges from torch.optim.SGD under the semantic contract" in headline
    assert "2 feature(s) not verified" in headline
    assert text.splitlines()[2].startswith("First: float32, `param` of `0.weight` at action ")
    not_verified = text.split("### Not verified")[1].split("###")[0]
    assert "`maximize` (--without): maximize=True (gradient ascent) is never drawn" in not_verified
    assert "`tensor-lr` (pyproject.toml)" in not_verified
    first, second = text.split("### 1. ")[1].split("### 2. ")
    assert first.startswith("float32: `param` of `0.weight` at action 3, `step()`")
    # every tensor that differs at the failing action, one table row each
    rows = [line for line in first.splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| `param`", "`0.weight`"],
        ["| `momentum_buffer`", "`0.weight`"],
        ["| `param`", "`1.weight`"],
        ["| `requires_grad`", "`0.bias`"],
    ]
    assert "| (1, 0) | 1.0 | nan | inf ULP |" in rows[1]
    assert "torch True, the implementation False" in rows[3]
    assert "`lr = tensor(0.5)`" in first and "`momentum = 0.5`" in first
    assert "`nesterov = False`" in first and "`foreach = None`" in first
    assert "Found after 12 programs (1.2 s)" in first
    assert "3. `step()` ← diverges here" in first
    assert "Reproduce: `python repro_1.py`" in first
    assert (
        "The implementation's step overwrote `.grad` of `0.weight`; torch leaves it "
        "unchanged." in second
    )
    assert "0. `step_closure(batch=7)` ← diverges here" in second
    assert "`lr = 0.1`" in second and "`nesterov = True`" in second
    assert "`python repro_2.py`" in second and "--case 2" in second


def test_markdown_says_when_torch_overwrote_the_grad() -> None:
    data = _failing()
    data["failures"][1]["first_divergence"]["overwritten"] = "torch"
    assert (
        "torch's step overwrote `.grad` of `0.weight`; the implementation leaves it "
        "unchanged." in report.markdown(data)
    )


def test_a_parameter_in_no_group_is_said_to_be() -> None:
    data = _failing()
    failure = data["failures"][1]
    failure["group_hyperparameters"] = None
    sentence = "was in no parameter group when this action ran."
    assert f"`0.weight` {sentence}" in report.markdown(data)
    assert f"<code>0.weight</code> {sentence}" in report.html(data)


def test_markdown_keeps_hostile_names_inside_code_and_tables_intact() -> None:
    data = _failing()
    failure = data["failures"][0]
    failure["other_divergences"][2]["parameter"] = "a|`b`"
    failure["other_divergences"][2]["detail"] = f"{HOSTILE}\nsecond line"
    text = report.markdown(data)
    assert "| `requires_grad` | `` a\\|`b` `` |" in text  # fence longer than the backticks
    assert "&lt;script>alert(1)&lt;/script> second line" in text


# --- HTML ----------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """The tags, each element's attributes, and the text under each table row / list item."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[tuple[str | None, str]] = []  # (class, text) of <tr> and <li>
        self._open: list[list[Any]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("tr", "li"):
            self._open.append([dict(attrs).get("class"), ""])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("tr", "li"):
            cls, text = self._open.pop()
            self.rows.append((cls, text))

    def handle_data(self, data: str) -> None:
        for entry in self._open:
            entry[1] += data

    def count(self, tag: str) -> int:
        return sum(1 for name, _ in self.tags if name == tag)


def test_html_reads_as_a_report() -> None:
    page = report.html(_failing())
    parsed = _Page(page)
    assert "diverges from torch.optim.SGD under the semantic contract</h1>" in page
    settings = page.split("<h2>Settings</h2>")[1].split("<h2>")[0]
    assert '{"' not in page and "{&quot;" not in page  # no raw JSON anywhere
    assert "<th>reference_path</th><td>for-loop</td>" in settings
    assert "<th>dtypes</th><td>float32, float64</td>" in settings
    assert "<th>config_file</th><td>/src/mypkg/pyproject.toml</td>" in settings
    assert "<th>torch</th><td>2.13.0+cpu</td>" in page.split("<h2>Environment</h2>")[1]
    texts = [text for _, text in parsed.rows]
    assert "maximize: maximize=True (gradient ascent) is never drawn (from --without)" in texts
    # the failing group's rows that carry a feature of the failure's key are highlighted
    highlighted = [text for cls, text in parsed.rows if cls == "feature"]
    assert highlighted == ["lrtensor(0.5)", "nesterovTrue"]
    # every differing tensor is a row
    for tensor, parameter in (
        ("param", "0.weight"),
        ("momentum_buffer", "0.weight"),
        ("param", "1.weight"),
        ("requires_grad", "0.bias"),
    ):
        assert any(text.startswith(tensor + parameter) for text in texts), (tensor, parameter)
    failing = [text for cls, text in parsed.rows if cls == "failing"]
    assert failing == ["step() (diverges here)", "step_closure(batch=7) (diverges here)"]
    assert "The implementation's step overwrote <code>.grad</code> of <code>0.weight</code>" in page
    # per failure: trajectory, error per action, error map; all inline
    images = [attrs for name, attrs in parsed.tags if name == "img"]
    assert len(images) == 6
    assert all(str(a["src"]).startswith("data:image/png;base64,") for a in images)
    assert images[0]["alt"] == (
        "param of 0.weight, element (1, 0), after each action: torch and the implementation"
    )
    assert parsed.count("link") == 0 and parsed.count("script") == 0


def test_html_of_a_passing_run_says_nothing_was_left_out() -> None:
    page = report.html(_passing())
    assert "<p>Nothing: every feature was checked.</p>" in page
    assert "<img" not in page and "conforms to torch.optim.SGD under the semantic contract" in page


def test_html_escapes_every_value() -> None:
    data = _failing()
    data["implementation"] = HOSTILE
    data["settings"]["optimizer"] = HOSTILE
    data["environment"]["torch"] = HOSTILE
    data["not_verified"][0]["description"] = HOSTILE
    failure = data["failures"][0]
    failure["key"]["features"] = [HOSTILE]
    failure["program"][0]["args"]["batch"] = HOSTILE
    failure["group_hyperparameters"][HOSTILE] = HOSTILE
    d = failure["first_divergence"]
    d.update(
        parameter=HOSTILE,
        action=HOSTILE,
        detail=HOSTILE,
        traceback=HOSTILE,
        reason=HOSTILE,
        overwritten="torch",
    )
    failure["other_divergences"][0]["parameter"] = HOSTILE
    failure["trajectory"]["parameter"] = HOSTILE
    page = report.html(data)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f"<pre>{report._escape(HOSTILE)}</pre>" in page  # the traceback
    parsed = _Page(page)
    assert parsed.count("script") == 0


def test_trajectory_plot_of_a_one_action_program_is_two_marked_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    figures: list[Any] = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "")
    failure = _failing()["failures"][1]
    title, _ = report._trajectory_plot(failure)
    (ax,) = figures[0].axes
    expected, actual = ax.get_lines()
    assert list(expected.get_ydata()) == [1.5] and list(actual.get_ydata()) == [2.25]
    assert expected.get_marker() not in (None, "None", "") and actual.get_marker() not in (
        None,
        "None",
        "",
    )
    assert ax.get_xlim() == (-0.5, 0.5)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 step_closure"]
    assert title == (
        "grad of 0.weight, element (0, 1), after each action: torch and the implementation"
    )


def test_trajectory_plot_names_the_values_it_cannot_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "_png", lambda fig: "")
    failure = _failing()["failures"][0]
    failure["trajectory"]["actual"] = [None, 0.0, "inf", "nan"]
    title, _ = report._trajectory_plot(failure)
    assert title.endswith("(not plotted: actual inf after action 2; actual nan after action 3)")


# --- JUnit, repro scripts, writing ---------------------------------------------------------------


def test_junit_fails_each_failing_dtype_and_skips_what_was_not_verified() -> None:
    suite = ET.fromstring(report.junit(_failing()))
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "2")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    failure = cases["sgd_conformance[float32]"].find("failure")
    assert failure is not None
    assert failure.get("message") == "param of 0.weight differs at action 3 step()"
    assert failure.text is not None and "repro_2.py: grad of 0.weight" in failure.text
    assert list(cases["sgd_conformance[float64]"]) == []
    skipped = cases["not verified: maximize"].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "maximize=True (gradient ascent) is never drawn (--without)"
    assert cases["not verified: tensor-lr"].find("skipped") is not None

    passing = ET.fromstring(report.junit(_passing()))
    assert (passing.get("tests"), passing.get("failures"), passing.get("skipped")) == (
        "2",
        "0",
        "0",
    )


def test_repro_script_replays_the_case_under_the_runs_options() -> None:
    data = _failing()
    data["settings"]["optimizer"] = 'mypkg.optim:"""\\' + HOSTILE  # any text stays literal
    failure = data["failures"][1]
    script = report.repro_script(data, failure)
    tree = ast.parse(script)  # valid Python whatever the names hold
    constants = {
        node.targets[0].id: json.loads(ast.literal_eval(node.value.args[0]))
        for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id in ("SETTINGS", "CASE")
    }
    assert constants == {"SETTINGS": data["settings"], "CASE": failure["case"]}
    assert "from conformance.options import RunOptions" in script
    assert "replay(Case.from_json(CASE), RunOptions.from_json(SETTINGS))" in script


def test_write_puts_every_file_in_one_directory(tmp_path: Path) -> None:
    data = _failing()
    target = report.write(data, tmp_path)
    assert sorted(p.name for p in target.iterdir()) == [
        "junit.xml",
        "report.html",
        "report.json",
        "report.md",
        "repro_1.py",
        "repro_2.py",
    ]
    assert json.loads((target / "report.json").read_text(encoding="utf-8")) == data
    assert (target / "report.md").read_text(encoding="utf-8") == report.markdown(data)


def test_renderers_read_the_json_alone_without_torch(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_failing()))
    code = (
        "import json, sys\nfrom conformance import report\n"
        f"data = json.loads(open({str(path)!r}).read())\n"
        "report.markdown(data); report.html(data); report.junit(data)\n"
        "[report.repro_script(data, f) for f in data['failures']]\n"
        "loaded = [m for m in ('torch', 'conformance.machine', 'conformance.runner') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(report.__file__).parent.parent,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _version_1() -> dict[str, Any]:
    data = _failing()
    data["schema_version"] = 1
    for name in ("contract", "not_verified"):
        del data[name]
    for failure in data["failures"]:
        for name in (
            "key",
            "found_after_programs",
            "found_after_seconds",
            "trajectory",
            "group_hyperparameters",
        ):
            del failure[name]
        for name in ("overwritten", "features"):
            del failure["first_divergence"][name]
        del failure["flaky"]
    return data


def test_a_version_1_report_still_renders() -> None:
    data = _version_1()
    text = report.markdown(data)
    assert "conforms" not in text and "Not verified" not in text and "### 2. " in text
    page = report.html(data)
    assert _Page(page).count("img") == 4  # no trajectories: error per action, error map
    assert ET.fromstring(report.junit(data)).get("skipped") == "0"


# --- additions within version 2: flaky failures, isolation settings ------------------------------


def _flaky() -> dict[str, Any]:
    failure = _tensor_lr_failure()
    failure.flaky = True
    return report.build(
        [_result("float32", [failure])],
        _settings(isolation="process", memory_limit=4096),
        CREATED,
        not_verified=[],
    )


def test_a_flaky_failure_is_reported_and_said_to_be_flaky() -> None:
    data = _flaky()
    jsonschema.validate(data, SCHEMA)
    assert data["failures"][0]["flaky"] is True and data["result"] == "fail"
    assert [f["flaky"] for f in _failing()["failures"]] == [False, False]  # no such attribute
    assert report.FLAKY == "flaky: did not show again on a re-run"
    assert report.FLAKY in report.markdown(data)
    assert report.FLAKY not in report.markdown(_failing())
    page = report.html(data)
    assert page.count(report.FLAKY) == 1
    assert ("p", {"class": "flaky"}) in _Page(page).tags
    failure = ET.fromstring(report.junit(data)).find("testcase/failure")
    assert failure is not None and report.FLAKY in (failure.get("message") or "")


def test_the_additions_are_optional_and_checked() -> None:
    older = _failing()  # a version 2 report from before the additions still validates
    for failure in older["failures"]:
        del failure["flaky"]
    jsonschema.validate(older, SCHEMA)
    for field_name, bad in (("isolation", "thread"), ("memory_limit", 0)):
        data = _flaky()
        data["settings"][field_name] = bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, SCHEMA)
    data = _flaky()
    data["failures"][0]["flaky"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA)


# --- what a replay reads -------------------------------------------------------------------------


def test_a_report_of_either_version_is_replayable() -> None:
    report.check_replayable(_failing())
    report.check_replayable(_version_1())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d.update(schema_version=7),
            "report schema_version 7 is newer than this conformance (2); upgrade sgd-conformance",
        ),
        (lambda d: d.update(schema_version="2"), "schema_version '2' is unknown"),
        (lambda d: d.pop("schema_version"), "it has no schema_version"),
        (
            lambda d: d["failures"][0]["case"]["setup"].update(dtype="float16"),
            "at $.failures[0].case.setup.dtype: 'float16' is not one of",
        ),
        (
            lambda d: d["failures"][1]["case"]["actions"].append({"kind": "explode", "args": {}}),
            "at $.failures[1].case.actions[1].kind: 'explode' is not one of",
        ),
        (lambda d: d.pop("failures"), "'failures' is a required property"),
    ],
)
def test_a_report_a_replay_cannot_read_is_named_in_one_line(
    change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    for data in (json.loads(json.dumps(_failing())), json.loads(json.dumps(_version_1()))):
        change(data)  # on the JSON as read back: the program and the case are two lists
        with pytest.raises(ValueError) as error:
            report.check_replayable(data)
        assert message in str(error.value) and "\n" not in str(error.value)
        if "newer" in message:
            assert str(error.value) == message


def test_check_replayable_of_a_list() -> None:
    with pytest.raises(ValueError, match="a JSON object expected, found an array"):
        report.check_replayable([_failing()])


# --- where a report can be written ---------------------------------------------------------------


def test_check_directory_creates_it_and_leaves_no_probe(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    report.check_directory(target)
    assert target.is_dir() and list(target.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        report.check_directory(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot create the directory"):
        report.check_directory(tmp_path / "file" / "sub")


def test_check_file_wants_a_writable_file_and_changes_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory, not a file"):
        report.check_file(tmp_path)
    existing = tmp_path / "junit.xml"
    existing.write_text("kept")
    report.check_file(existing)
    assert existing.read_text() == "kept"
    report.check_file(tmp_path / "new" / "junit.xml")
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "junit.xml").exists()
