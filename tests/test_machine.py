"""The harness itself: cases round-trip through JSON and replay to the same divergence; a
faulty implementation (exceptions, hangs, wrong results) never crashes the harness; bad
`module:Class` names are configuration errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings

from conformance import strategies
from conformance.implementations import ImplementationError, implementation
from conformance.machine import Twins, replay, trajectory
from conformance.models import ModelSpec
from conformance.mutants import CorrectSGD
from conformance.options import RunOptions
from conformance.profiles import PROFILES
from conformance.program import Action, Case, Group, Setup
from conformance.runner import run


class RaisingSGD(CorrectSGD):
    def step(self, closure: Any = None) -> Any:
        raise RuntimeError("kernel launch failed")


class HangingSGD(CorrectSGD):
    def step(self, closure: Any = None) -> Any:
        while True:
            pass


class ExitingSGD(CorrectSGD):
    def step(self, closure: Any = None) -> Any:
        raise SystemExit(3)


NotAClass = 3


class NoLr:
    def __init__(self, params: Any) -> None:
        pass


FAULTY = __name__  # importable by a worker process as tests.test_machine


def _simplest_spec() -> ModelSpec:
    """The model Hypothesis tries first (its simplest draw)."""
    found: list[ModelSpec] = []

    @settings(max_examples=1, database=None, derandomize=True)
    @given(strategies.model_specs())
    def grab(spec: ModelSpec) -> None:
        found.append(spec)

    grab()
    return found[0]


SPEC = _simplest_spec()


def _setup(**defaults: Any) -> Setup:
    options = {"lr": 0.1, "momentum": 0.9, **defaults}
    return Setup(SPEC, "float64", options, (Group(tuple(SPEC.parameter_names())),))


STEP = (Action("backward", {"batch": 1}), Action("step"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("RaisingSGD", "RuntimeError: kernel launch failed"),
        (
            "HangingSGD",
            "ran past the timeout during step() and was interrupted: no result after 0.5 s",
        ),
        ("ExitingSGD", "SystemExit: 3"),
    ],
)
@pytest.mark.parametrize("isolation", ["none", "process"])
def test_faulty_implementation_is_a_reported_divergence(
    name: str, expected: str, isolation: str
) -> None:
    divergence = replay(
        Case(_setup(), STEP), RunOptions(f"{FAULTY}:{name}", timeout=0.5, isolation=isolation)
    )
    assert divergence is not None
    assert divergence.action_index == 1
    assert divergence.tensor == ("process" if name == "HangingSGD" else "exception")
    assert expected in divergence.detail
    assert divergence.traceback and "test_machine.py" in divergence.traceback  # user frames


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nocolon", "expected module:Class"),
        ("no_such_module_xyz:SGD", "cannot import 'no_such_module_xyz'"),
        (f"{FAULTY}:Missing", "has no attribute 'Missing'"),
        (f"{FAULTY}:NotAClass", "is not a class"),
        (f"{FAULTY}:NoLr", "does not construct like torch.optim.SGD"),
    ],
)
def test_bad_module_class_is_a_configuration_error(target: str, message: str) -> None:
    with pytest.raises(ImplementationError, match=message.replace("(", r"\(")):
        implementation(target)


def test_correct_optimizer_replays_clean_and_wrong_one_diverges_at_the_step() -> None:
    case = Case(_setup(), (*STEP, *STEP))
    assert replay(case, "conformance.mutants:CorrectSGD") is None
    assert replay(case, "refimpl") is None
    assert replay(case, _class_of("dampening-on-first-step")) is None  # dampening 0: no bug
    case = Case(_setup(dampening=0.5), (*STEP, *STEP))
    divergence = replay(case, _class_of("dampening-on-first-step"))
    assert divergence is not None and divergence.action_index == 1  # the first buffer
    first = SPEC.parameter_names()[0]
    assert (divergence.tensor, divergence.parameter) == ("momentum_buffer", first)
    assert divergence.mismatch is not None and divergence.mismatch.count > 0


def _class_of(name: str) -> str:
    from conformance.mutants import OPTIMIZER_MUTANTS

    return next(m.target for m in OPTIMIZER_MUTANTS if m.name == name)


def test_shrunk_failure_round_trips_through_json_and_replays_identically() -> None:
    result = run(_class_of("maximize-ignored"), settings=PROFILES["dev"], seed=3)
    assert result.divergence is not None and result.case is not None
    stored = json.loads(json.dumps(result.case.to_json()))
    case = Case.from_json(stored)
    assert case == result.case
    again = replay(case, _class_of("maximize-ignored"))
    assert again is not None
    assert again.to_json() == result.divergence.to_json()
    assert len(case.actions) <= 4  # shrunk to the few actions that matter


@settings(max_examples=25, deadline=None)
@given(setup=strategies.setups())
def test_setups_round_trip_through_json(setup: Setup) -> None:
    assert Setup.from_json(json.loads(json.dumps(setup.to_json()))) == setup


def test_twins_build_identical_starting_points() -> None:
    twins = Twins(_setup(), implementation("refimpl"), RunOptions("refimpl"))
    ref, side = twins.reference.observe(), twins.side.observe()
    for name in ref.params:
        assert ref.params[name].tobytes() == side.params[name].tobytes()
    assert ref.groups == side.groups


def test_trajectory_reports_drift() -> None:
    """Without synchronising, a correct torch-API optimizer stays bit-identical; refimpl drifts
    only as far as its gradients' rounding carries (reported, finite)."""
    setup = _setup(lr=0.01)
    assert trajectory(setup, "conformance.mutants:CorrectSGD", steps=10) == [0.0] * 10
    drift = trajectory(setup, "refimpl", steps=10)
    print("refimpl drift (max ULP per step):", drift)
    assert all(d < float("inf") for d in drift)


def test_torch_threads_restored_after_a_run() -> None:
    before = torch.get_num_threads()
    run("torch.optim:SGD", settings=PROFILES["dev"], seed=0)
    assert torch.get_num_threads() == before
