"""The coverage a report carries (conformance.stateful.Coverage): what a declared feature needs
and no program reached is said; a run reaches every declared feature, every op and every kink
(the canonical cases alone see to it, whatever the seed)."""

from __future__ import annotations

import pytest

from conformance import models, report
from conformance.families import get
from conformance.options import RunOptions
from conformance.profiles import PROFILES
from conformance.runner import run
from conformance.stateful import Coverage

FEATURES = get("sgd").features
NEEDS = get("sgd").reach_needs()


def test_nothing_reached_lists_every_declared_feature_and_no_undeclared_one() -> None:
    options = RunOptions("refimpl", without=frozenset({"closure", "maximize"}))
    unreached = Coverage().unreached(options)
    assert set(unreached) == {"momentum", *FEATURES} - {"closure", "maximize"}
    assert all(unreached[name] == NEEDS[name] for name in unreached)


@pytest.mark.parametrize("without", [frozenset(), frozenset({"nesterov", "state-dict"})])
def test_a_dev_run_reaches_every_declared_feature_op_and_kink(without: frozenset[str]) -> None:
    result = run("refimpl", dtypes=("float32",), settings=PROFILES["dev"], seed=5, without=without)
    coverage = result.coverage.to_json(result.options)
    assert coverage["unreached"] == {}
    assert set(coverage["ops"]) == set(models.ALL_OPS)
    assert all(coverage["kinks"][kink] > 0 for kink in models.KINKS)
    assert all(coverage["buffered_steps"][k] > 0 for k in ("first", "second", "later"))
    assert "momentum+weight-decay" in coverage["feature_pairs"]
    if "nesterov" in without:
        assert "nesterov" not in coverage["step_features"]


def test_the_markdown_report_says_what_was_not_reached() -> None:
    coverage = Coverage()
    coverage.reached = {"momentum", *FEATURES} - {"cross-load"}
    data = coverage.to_json(RunOptions("refimpl"))
    assert data["unreached"] == {"cross-load": NEEDS["cross-load"]}
    lines = "\n".join(report._markdown_coverage(data))
    assert "Not reached" in lines and "`cross-load`" in lines
