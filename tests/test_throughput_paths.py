"""The harness's fast paths decide exactly what the slow ones decided: a traceback formatted
when asked for is the one `format_exc` gave, one SIGALRM handler per action still interrupts
every phase and restores what was there, comparisons of bitwise-equal arrays skip their
budgets without changing a verdict, a synchronisation skipped because the states are already
bitwise equal changes no divergence, torch's state observed once is torch's state, and
`Twins.worst` measures the error against its budget."""

from __future__ import annotations

import pickle
import signal
import time
import traceback
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance import implementations, machine, oracle
from conformance.implementations import (
    ActionTimeout,
    Outcome,
    RefimplImplementation,
    _run,
    alarms,
    deadline,
    implementation,
)
from conformance.machine import Twins, replay
from conformance.mutants import OPTIMIZER_MUTANTS, CorrectSGD
from conformance.options import RunOptions
from conformance.program import Action, Case, Group, Setup
from tests.test_machine import SPEC


def _setup(dtype: str = "float32", **defaults: Any) -> Setup:
    options = {"lr": 0.1, "momentum": 0.9, **defaults}
    return Setup(SPEC, dtype, options, (Group(tuple(SPEC.parameter_names())),))


PROGRAM = (
    Action("backward", {"batch": 1}),
    Action("step"),
    Action("zero_grad", {"set_to_none": True}),
    Action("backward", {"batch": 2}),
    Action("step"),
    Action("save_load", {"source": "reference"}),
    Action("backward_twice", {"batch": 3}),
    Action("step_closure", {"batch": 4}),
    Action("set_hyperparameter", {"group": 0, "name": "lr", "value": 0.5}),
    Action("step"),
)


def _mutant(name: str) -> str:
    return next(m.target for m in OPTIMIZER_MUTANTS if m.name == name)


# --- tracebacks ----------------------------------------------------------------------------------


def _fails(depth: int) -> None:
    if depth == 0:
        raise ValueError("Invalid learning rate: -1")
    _fails(depth - 1)


def test_traceback_is_formatted_when_asked_for_as_format_exc_gave_it() -> None:
    try:
        _fails(3)
    except ValueError:
        eager = traceback.format_exc()
    outcome = _run(lambda: _fails(3), None)
    assert outcome.error == ("ValueError", "Invalid learning rate: -1")
    assert outcome.traceback is not None
    # the same frames and lines, from _fails down (the eager one also has this test's frame)
    assert outcome.traceback.splitlines()[-8:] == eager.splitlines()[-8:]
    assert outcome.traceback == outcome.traceback  # formatted once, kept


def test_traceback_survives_pickling_as_text_and_a_re_raise_adds_no_frames() -> None:
    error = RuntimeError("kernel launch failed")

    def raise_it() -> None:
        raise error

    outcome = _run(raise_it, None)
    with pytest.raises(RuntimeError):  # the implementation raises the same object again
        _run_and_reraise(error)
    assert outcome.traceback is not None and "_run_and_reraise" not in outcome.traceback
    sent = pickle.loads(pickle.dumps(_run(raise_it, None)))
    assert sent.traceback is not None and "raise error" in sent.traceback
    assert sent.error == outcome.error and sent.error_mro == outcome.error_mro


def _run_and_reraise(error: BaseException) -> None:
    raise error


class _HostileStr(Exception):
    def __str__(self) -> str:
        raise SystemExit("no str for you")


def test_traceback_of_an_exception_whose_str_raises_still_formats() -> None:
    def raise_it() -> None:
        raise _HostileStr()

    outcome = _run(raise_it, None)
    assert outcome.error is not None and "whose str() raised" in outcome.error[1]
    assert outcome.traceback is not None and "_HostileStr" in outcome.traceback


def test_an_outcome_without_an_exception_has_no_traceback() -> None:
    assert Outcome().traceback is None
    assert _run(lambda: None, None).traceback is None


# --- deadlines -----------------------------------------------------------------------------------


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_deadlines_inside_alarms_interrupt_each_phase_and_the_handler_is_restored() -> None:
    def previous(signum: int, frame: Any) -> None:
        raise AssertionError("the previous handler must not see the harness's alarms")

    old = signal.signal(signal.SIGALRM, previous)
    try:
        with alarms():
            first = _run(lambda: _spin(5), 0.05)
            second = _run(lambda: None, 0.05)  # a phase that ends in time
            third = _run(lambda: _spin(5), 0.05)
        assert first.timed_out and third.timed_out and second.error is None
        assert first.error is not None and "no result after 0.05 s" in first.error[1]
        assert signal.getsignal(signal.SIGALRM) is previous
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        outside = _run(lambda: _spin(5), 0.05)  # a deadline on its own installs and restores
        assert outside.timed_out and signal.getsignal(signal.SIGALRM) is previous
    finally:
        signal.signal(signal.SIGALRM, old)


def test_an_alarm_after_its_deadline_ended_is_ignored() -> None:
    with alarms():
        with deadline(10.0):
            pass
        implementations._expire(signal.SIGALRM, None)  # late: no ActionTimeout
        with pytest.raises(ActionTimeout), deadline(10.0):
            implementations._expire(signal.SIGALRM, None)


# --- implementations, cached ---------------------------------------------------------------------


def test_constructor_arguments_are_read_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fresh(CorrectSGD):
        pass

    calls: list[type] = []
    read = implementations._read_arguments
    monkeypatch.setattr(
        implementations, "_read_arguments", lambda cls: calls.append(cls) or read(cls)
    )
    for _ in range(3):
        assert implementations._arguments(Fresh) == read(Fresh)
    assert calls == [Fresh]
    refimpl_side = RefimplImplementation()
    assert refimpl_side.accepts("foreach") and refimpl_side.accepts("maximize")
    assert not refimpl_side.accepts("capturable") and not refimpl_side.accepts("kwargs")


# --- oracle: the bitwise fast path and the ratio -------------------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=8), st.data())
def test_judge_decides_as_the_elementwise_rules_do(
    values: list[float], data: st.DataObject
) -> None:
    """The verdict of `judge` (and `compare`) is the elementwise rule's, bytes equal or not,
    and its ratio is 0 exactly when nothing differs by a single ULP."""
    expected = np.array(values, dtype=np.float32)
    actual = expected.copy()
    flips = data.draw(st.lists(st.integers(0, len(values) - 1), max_size=3))
    for i in flips:
        actual[i] = np.nextafter(actual[i], np.float32(np.inf))
    budget = data.draw(st.sampled_from([0.0, 1e-3, np.inf]))
    for mode, allowed in (("exact", None), ("ulp", budget), ("tolerance", None)):
        mismatch, ratio = oracle.judge(expected, actual, mode, allowed)  # type: ignore[arg-type]
        nonfinite = oracle.nonfinite_mismatch(actual, expected)
        finite = np.isfinite(actual) & np.isfinite(expected)
        if mode == "exact":
            bits = actual.view(np.int32) != expected.view(np.int32)
            differs = nonfinite | (finite & bits)
        elif mode == "ulp":
            differs = nonfinite | (
                finite & ~oracle.within(expected, actual, np.full(expected.shape, budget))
            )
        else:
            differs = ~oracle._isclose(expected, actual)[0]
        assert (mismatch is not None) == bool(differs.any())
        assert 0.0 <= ratio <= oracle.RATIO_CAP
        if oracle.identical(expected, actual):
            assert ratio == 0.0 and mismatch is None
        if mismatch is not None and mode != "ulp":
            assert ratio >= 1.0 or mode == "tolerance"


def test_judge_ratio_is_the_error_over_its_budget() -> None:
    expected = np.array([1.0, 2.0, 3.0], dtype=np.float64)
    actual = expected + np.array([0.0, 1e-12, -3e-12])
    error = np.abs(actual - expected).max()  # 3e-12, as rounded
    assert oracle.judge(expected, actual, "ulp", 4e-12)[1] == error / 4e-12
    mismatch, ratio = oracle.judge(expected, actual, "ulp", 1e-12)
    assert mismatch is not None and ratio == pytest.approx(3.0, rel=1e-3)
    steps = np.nextafter(np.nextafter(expected, 9), 9)  # two ULPs up
    assert oracle.judge(expected, steps, "exact")[1] == 2.0
    assert oracle.judge(expected, steps, "ulp", 0.0)[1] == 2.0  # nothing allowed: ULPs
    assert oracle.judge(expected, steps, "ulp", np.inf)[1] == 0.0
    assert oracle.judge(np.array([0.0]), np.array([-0.0]), "exact")[1] == 1.0  # ±0: bits
    assert oracle.judge(np.array([1.0]), np.array([np.nan]), "ulp", 1.0)[1] == oracle.RATIO_CAP
    assert oracle.judge(np.array([1.0]), np.array([1e300]), "exact")[1] == oracle.RATIO_CAP
    assert oracle.judge(np.zeros(2), np.zeros(3), "exact")[1] == oracle.RATIO_CAP
    nan = np.array([np.nan, 1.0])
    assert oracle.judge(nan, nan.copy(), "exact") == (None, 0.0)


# --- the twins -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["torch.optim:SGD", "conformance.mutants:CorrectSGD"])
def test_worst_is_zero_while_everything_matches_bitwise(target: str) -> None:
    twins = Twins(
        _setup(),
        implementation(RunOptions(target, isolation="none")),
        RunOptions(target, isolation="none"),
    )
    for action in PROGRAM:
        assert twins.run(action) is None
    assert twins.worst == 0.0


def test_worst_measures_refimpl_grads_within_their_budget() -> None:
    twins = Twins(_setup(), implementation("refimpl"), RunOptions("refimpl"))
    for action in PROGRAM:
        assert twins.run(action) is None
    assert 0.0 <= twins.worst <= 1.0


def test_worst_exceeds_one_at_a_divergence_and_stays_capped() -> None:
    options = RunOptions(_mutant("lr-off-by-one-ppm"), isolation="none")
    twins = Twins(_setup("float64"), implementation(options), options)
    divergences = [twins.run(action) for action in PROGRAM[:2]]
    assert divergences[0] is None and divergences[1] is not None
    assert 1.0 < twins.worst <= oracle.RATIO_CAP


def test_torch_observed_once_per_action_is_torch_as_it_is() -> None:
    twins = Twins(_setup(), implementation("refimpl"), RunOptions("refimpl"))
    for action in PROGRAM:
        twins.run(action)
        kept, now = twins._reference_now(), twins.reference.observe()
        tables = [
            (now.params, kept.params),
            (now.grads, kept.grads),
            *((now.state[key], kept.state[key]) for key in now.state),
        ]
        for observed, remembered in tables:
            for name, value in observed.items():
                other = remembered[name]
                assert (value is None and other is None) or oracle.identical(value, other)
        assert kept.groups == now.groups and kept.requires_grad == now.requires_grad


def test_synchronisation_is_skipped_only_where_the_states_are_bitwise_equal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch.optim:SGD against itself is bitwise equal after every action: no action after the
    first synchronises; an SGD that rounds twice differs from torch's fused rounding after
    some step, and the action after it is synchronised."""
    sent: list[bool] = []
    act = implementations.Side.act

    def spy(self: Any, before: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(before is not None)
        return act(self, before, *args, **kwargs)

    monkeypatch.setattr(implementations.Side, "act", spy)
    options = RunOptions("torch.optim:SGD", isolation="none")
    twins = Twins(_setup(), implementation(options), options)
    for action in PROGRAM:
        assert twins.run(action) is None
    assert sent == [True] + [False] * (len(PROGRAM) - 1)
    sent.clear()
    options = RunOptions("conformance.mutants:TwiceRoundedSGD", isolation="none")
    twins = Twins(_setup(weight_decay=0.25, dampening=0.3), implementation(options), options)
    for action in PROGRAM:
        assert twins.run(action) is None
    assert sent[0] and any(sent[1:])  # the first action, and one after a step that differed


@pytest.mark.parametrize(
    "target",
    ["refimpl", "conformance.mutants:CorrectSGD", *(m.target for m in OPTIMIZER_MUTANTS[:12])],
)
def test_skipping_synchronisation_changes_no_divergence(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each program, replayed with the skip and with every action synchronised, ends in the
    same divergence (or none)."""
    cases = [
        Case(_setup(dampening=0.5, weight_decay=0.01), PROGRAM),
        Case(_setup(nesterov=True, maximize=True), PROGRAM),
        Case(_setup(momentum=0.0), PROGRAM),
    ]
    options = RunOptions(target, isolation="none")
    fast = [replay(case, options) for case in cases]
    monkeypatch.setattr(machine, "_same_state", lambda expected, actual: False)
    slow = [replay(case, options) for case in cases]
    assert [None if d is None else d.to_json() for d in fast] == [
        None if d is None else d.to_json() for d in slow
    ]


def test_budgets_are_computed_only_for_values_that_are_not_bitwise_torchs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    computed: list[str] = []
    budgets = Twins._step_budgets

    def spy(self: Twins, name: str, *args: Any) -> Any:
        computed.append(name)
        return budgets(self, name, *args)

    monkeypatch.setattr(Twins, "_step_budgets", spy)
    options = RunOptions("conformance.mutants:CorrectSGD", isolation="none", mode="ulp")
    assert replay(Case(_setup(), PROGRAM), options) is None
    assert computed == []  # a torch-API optimizer is bitwise torch's
    options = RunOptions("conformance.mutants:TwiceRoundedSGD", isolation="none", mode="ulp")
    assert replay(Case(_setup(weight_decay=0.25, dampening=0.3), PROGRAM), options) is None
    assert computed  # two roundings differ from torch's fused one: judged within budget


def test_created_hook_and_seconds() -> None:
    built: list[Twins] = []
    Twins.created = built.append
    try:
        replay(Case(_setup(), PROGRAM[:2]), "refimpl")
    finally:
        Twins.created = None
    assert len(built) == 1
    seconds = built[0].seconds
    assert set(seconds) == {"build", "run", "reference", "implementation"}
    assert seconds["run"] >= seconds["reference"] > 0 and seconds["implementation"] > 0
