"""The twin runner and the Hypothesis state machine.

`Twins` holds two `Side`s built from one `Setup`: the reference (torch's autograd and
torch.optim.SGD) and the implementation under test. `Twins.run(action)` synchronises the
implementation from the reference (so every check is local and no budget grows with the number
of steps), applies the action to both (the implementation under a per-action timeout, its
exceptions caught), and compares everything observable: raised exceptions, the returned loss,
each parameter's grad (None exactly where torch has None), momentum buffer (presence and
values), value and requires_grad, and the groups' hyperparameters. The first difference becomes
a `Divergence`; `replay` runs a recorded `Case` the same way, outside Hypothesis.

`SGDMachine` is the `RuleBasedStateMachine`: its rules are what users do, each recorded as an
`Action`, so a failure shrinks to a short `Case` that can be stored and replayed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from conformance import models, oracle, strategies
from conformance.implementations import (
    REFERENCE,
    Implementation,
    Observation,
    Side,
    TorchOptimizerImplementation,
    implementation,
)
from conformance.oracle import Mismatch, Mode
from conformance.program import Action, Case, Setup

# --- outcome of one action on one side -----------------------------------------------------------


class ActionTimeout(BaseException):
    """The implementation under test ran past the per-action timeout."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raises ActionTimeout in this thread after `seconds` (SIGALRM; main thread only, where
    Hypothesis and pytest run; elsewhere no limit applies)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise ActionTimeout(f"no result after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    loss: np.ndarray | None = None
    error: tuple[str, str] | None = None  # exception type name, message
    traceback: str | None = None


def _run(call: Callable[[], np.ndarray | None], timeout: float | None) -> Outcome:
    try:
        with deadline(timeout):
            return Outcome(loss=call())
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # a faulty implementation must never crash the harness
        return Outcome(error=(type(error).__name__, str(error)),
                       traceback=traceback.format_exc())


# --- divergences ---------------------------------------------------------------------------------


@dataclass
class Divergence:
    """Where the implementation first differs from torch."""

    action_index: int
    action: str
    tensor: str  # grad | param | momentum_buffer | requires_grad | loss | param_groups | exception
    parameter: str | None = None
    group: int | None = None
    mismatch: Mismatch | None = None
    detail: str = ""  # for non-array differences: what each side had
    traceback: str | None = None
    others: list[dict[str, Any]] = field(default_factory=list)  # every other diverging tensor
    shape: list[int] | None = None  # the diverging tensor's shape, and its ULP error per
    ulp_errors: list[float] | None = None  # element (C order; the first 4,096), for the report

    def __str__(self) -> str:
        where = self.tensor + (f" of {self.parameter}" if self.parameter else "") + \
            (f" (group {self.group})" if self.group is not None else "")
        text = f"action {self.action_index} {self.action}: {where} differs"
        if self.mismatch is not None:
            m = self.mismatch
            text += (f" at {m.index}: expected {m.expected!r}, got {m.actual!r} "
                     f"(abs {m.abs_error:.3g}, {m.ulp_error:.3g} ULP; {m.reason}; "
                     f"{m.count} element(s) differ)")
        if self.detail:
            text += f": {self.detail}"
        if self.others:
            text += f"; {len(self.others)} other tensor(s) differ"
        if self.traceback:
            text += "\n" + self.traceback
        return text

    def to_json(self) -> dict[str, Any]:
        return {"action_index": self.action_index, "action": self.action,
                "tensor": self.tensor, "parameter": self.parameter, "group": self.group,
                "mismatch": None if self.mismatch is None else self.mismatch.to_dict(),
                "detail": self.detail, "traceback": self.traceback, "others": self.others,
                "shape": self.shape, "ulp_errors": self.ulp_errors}


class DivergenceFound(AssertionError):
    def __init__(self, divergence: Divergence, case: Case) -> None:
        super().__init__(str(divergence))
        self.divergence, self.case = divergence, case


# --- the twins -----------------------------------------------------------------------------------


class Twins:
    """The reference and the implementation under test, stepped through one program."""

    def __init__(self, setup: Setup, impl: Implementation, mode: Mode | None = None,
                 timeout: float | None = 10.0) -> None:
        self.setup, self.impl = setup, impl
        self.mode: Mode = mode or impl.default_mode
        self.timeout = timeout
        self.actions: list[Action] = []
        self._batch: tuple[dict[str, np.ndarray], int] | None = None
        self.reference = Side(TorchOptimizerImplementation(REFERENCE), setup)
        built = _run(lambda: self._build(), timeout)
        self.setup_error = built  # construction failures are reported by the first action

    def _build(self) -> None:
        self.side = Side(self.impl, self.setup)

    @property
    def case(self) -> Case:
        return Case(self.setup, tuple(self.actions))

    def run(self, action: Action) -> Divergence | None:
        """Applies `action` to both sides and returns the first difference, if any."""
        index = len(self.actions)
        self.actions.append(action)
        if self.setup_error.error is not None:
            return Divergence(index, str(action), "exception",
                              detail=f"constructing the optimizer raised "
                                     f"{self.setup_error.error[0]}: {self.setup_error.error[1]}",
                              traceback=self.setup_error.traceback)
        before = self.reference.observe()
        # what the error scales of refimpl's grads are computed from: the parameters before
        # the action and its batch (grads accumulated over earlier batches only add terms)
        batch = action.args.get("batch")
        self._batch = None if batch is None else (before.params, batch)
        synced = _run(lambda: self.side.synchronise(before), self.timeout)
        if synced.error is not None:
            return Divergence(index, str(action), "exception",
                              detail="synchronising the implementation's state raised "
                                     f"{synced.error[0]}: {synced.error[1]}",
                              traceback=synced.traceback)
        closure_checks: list[Divergence] = []
        pre_step = before
        if action.kind == "save_load":
            expected, actual = self._save_load(action.args["source"])
        elif action.kind == "step_closure":
            recorded: list[Observation] = []
            expected = _run(lambda: self.reference.apply(
                action, lambda side: recorded.append(side.observe())), None)
            if recorded:
                pre_step = recorded[-1]

            def check_closure(side: Side) -> None:
                # the closure's grads are checked, then replaced by torch's: the step that
                # follows is then judged on identical inputs
                if recorded:
                    found = self._compare_grads(index, action, recorded[-1], side.observe(),
                                                computed=True)
                    closure_checks.extend(found)
                    side.synchronise(recorded[-1], grads_only=True)

            actual = _run(lambda: self.side.apply(action, check_closure), self.timeout)
        else:
            expected = _run(lambda: self.reference.apply(action), None)
            actual = _run(lambda: self.side.apply(action), self.timeout)
        found = self._compare(index, action, expected, actual, pre_step)
        found = closure_checks + found
        if not found:
            return None
        first, rest = found[0], found[1:]
        self._attach_errors(first)
        first.others = [{"tensor": d.tensor, "parameter": d.parameter,
                         "mismatch": None if d.mismatch is None else d.mismatch.to_dict(),
                         "detail": d.detail} for d in rest]
        return first

    def _attach_errors(self, divergence: Divergence) -> None:
        """The diverging tensor's ULP error per element (where both sides have it)."""
        pair = self._tensor_pair(divergence.tensor, divergence.parameter)
        if pair is None or pair[0].shape != pair[1].shape or pair[0].dtype != pair[1].dtype:
            return
        errors = oracle.ulp_distance(pair[1], pair[0]).reshape(-1)[:4096]
        divergence.shape = list(pair[0].shape)
        divergence.ulp_errors = [float(e) if np.isfinite(e) else -1.0 for e in errors]

    def _tensor_pair(self, tensor: str, name: str | None
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        ref, side = self.reference.observe(), self.side.observe()
        table = {"param": (ref.params, side.params), "grad": (ref.grads, side.grads),
                 "momentum_buffer": (ref.buffers, side.buffers)}
        if tensor not in table or name is None:
            return None
        expected, actual = table[tensor][0].get(name), table[tensor][1].get(name)
        return None if expected is None or actual is None else (expected, actual)

    def error_profile(self) -> float:
        """After an action: the largest ULP distance between the two sides over every
        parameter, grad and buffer they both have (inf where NaN or infinities differ)."""
        ref, side = self.reference.observe(), self.side.observe()
        worst = 0.0
        for table_ref, table_side in ((ref.params, side.params), (ref.grads, side.grads),
                                      (ref.buffers, side.buffers)):
            for name, expected in table_ref.items():
                actual = table_side.get(name)
                if expected is None or actual is None or expected.shape != actual.shape:
                    continue
                worst = max(worst, float(oracle.ulp_distance(actual, expected).max(
                    initial=0.0)))
        return worst

    def _save_load(self, source: str) -> tuple[Outcome, Outcome]:
        ref, side = self.reference, self.side
        ref_state = ref.optimizer.state_dict()
        ref_fresh = ref.fresh_optimizer()
        own: dict[str, Any] = {}

        def load_side() -> None:
            state = side.optimizer.state_dict()
            own["state"] = state
            fresh = side.fresh_optimizer()
            fresh.load_state_dict(self.impl.load_torch_state(ref_state)
                                  if source == "reference" else state)
            side.optimizer = fresh

        actual = _run(load_side, self.timeout)

        def load_reference() -> None:
            if source == "implementation":
                if "state" not in own:
                    raise RuntimeError("the implementation's state_dict() failed")
                ref_fresh.load_state_dict(self.impl.to_torch_state(own["state"]))
            else:
                ref_fresh.load_state_dict(ref_state)
            ref.optimizer = ref_fresh

        expected = _run(load_reference, None)
        return expected, actual

    # --- comparisons ---

    def _compare(self, index: int, action: Action, expected: Outcome, actual: Outcome,
                 pre_step: Observation) -> list[Divergence]:
        found: list[Divergence] = []
        new = lambda tensor, **kw: Divergence(index, str(action), tensor, **kw)
        if expected.error != actual.error:
            found.append(new("exception", detail=f"torch raised {_fmt_error(expected.error)}, "
                                                 f"the implementation {_fmt_error(actual.error)}",
                             traceback=actual.traceback))
            return found  # the states after a different exception say nothing more
        if (expected.loss is None) != (actual.loss is None):
            found.append(new("loss", detail=f"torch returned {_fmt_loss(expected.loss)}, "
                                            f"the implementation {_fmt_loss(actual.loss)}"))
        elif expected.loss is not None and actual.loss is not None:
            mismatch = self._compare_values(expected.loss, actual.loss, computed=True)
            if mismatch is not None:
                found.append(new("loss", mismatch=mismatch))
        ref_obs, side_obs = self.reference.observe(), self.side.observe()
        ref_groups = _comparable_groups(ref_obs.groups)
        side_groups = _comparable_groups(side_obs.groups)
        if ref_groups != side_groups:
            found.append(new("param_groups", detail=_group_difference(ref_groups, side_groups)))
        stepped = action.kind in ("step", "step_closure")
        computed = action.kind in ("backward", "backward_twice", "step_closure")
        groups_of = {name: g for g in pre_step.groups for name in g["params"]}
        found.extend(self._compare_grads(index, action, ref_obs, side_obs, computed,
                                         stepped=stepped, groups=groups_of, pre=pre_step))
        for name in ref_obs.params:
            group_index = next((i for i, g in enumerate(ref_obs.groups)
                                if name in g["params"]), None)
            budgets = self._step_budgets(name, pre_step, groups_of.get(name)) \
                if stepped else (None, None)
            e_buf, a_buf = ref_obs.buffers[name], side_obs.buffers[name]
            if (e_buf is None) != (a_buf is None):
                found.append(new("momentum_buffer", parameter=name, group=group_index,
                                 detail=f"torch has {_presence(e_buf)}, the implementation "
                                        f"{_presence(a_buf)}"))
            elif e_buf is not None and a_buf is not None:
                mismatch = self._compare_step(e_buf, a_buf, budgets[1], stepped)
                if mismatch is not None:
                    found.append(new("momentum_buffer", parameter=name, group=group_index,
                                     mismatch=mismatch))
            mismatch = self._compare_step(ref_obs.params[name], side_obs.params[name],
                                          budgets[0], stepped)
            if mismatch is not None:
                found.append(new("param", parameter=name, group=group_index, mismatch=mismatch))
            if ref_obs.requires_grad[name] != side_obs.requires_grad[name]:
                found.append(new("requires_grad", parameter=name, group=group_index,
                                 detail=f"torch {ref_obs.requires_grad[name]}, the "
                                        f"implementation {side_obs.requires_grad[name]}"))
        return found

    def _compare_grads(self, index: int, action: Action, ref_obs: Observation,
                       side_obs: Observation, computed: bool, stepped: bool = False,
                       groups: dict[str, dict[str, Any]] | None = None,
                       pre: Observation | None = None) -> list[Divergence]:
        found = []
        for name, expected in ref_obs.grads.items():
            actual = side_obs.grads[name]
            if (expected is None) != (actual is None):
                found.append(Divergence(index, str(action), "grad", parameter=name,
                                        detail=f"torch has {_presence(expected)}, the "
                                               f"implementation {_presence(actual)}"))
            elif expected is not None and actual is not None:
                group = (groups or {}).get(name)
                if stepped and self.mode != "exact" and group is not None and pre is not None \
                        and _writes_grad(group):
                    # torch's foreach nesterov step wrote g + μb into .grad: judged as a step
                    mismatch = self._compare_step(expected, actual, self._grad_after_budget(
                        name, pre, group, ref_obs), True)
                else:
                    mismatch = self._compare_values(expected, actual, computed, name)
                if mismatch is not None:
                    found.append(Divergence(index, str(action), "grad", parameter=name,
                                            mismatch=mismatch))
        return found

    def _compare_values(self, expected: np.ndarray, actual: np.ndarray, computed: bool,
                        parameter: str | None = None) -> Mismatch | None:
        """Grads (of `parameter`) and losses (parameter None): bitwise when torch's autograd
        made both (or nothing was computed since synchronising); from refimpl's autograd,
        within the model's ULP budget, in ULPs of the tensor's largest magnitude or, where
        the result cancelled, of the terms it summed (`models.gradient_magnitudes`,
        `models.loss_scale`; computed only when the first check fails)."""
        if not computed or self.impl.lib == "torch":
            return oracle.compare(expected, actual, "exact")
        ulps = self.setup.model.grad_ulp_budget(self.setup.dtype)
        mismatch = oracle.compare(expected, actual, "ulp", oracle.reduction_budget(expected, ulps))
        if mismatch is None or self._batch is None:
            return mismatch
        values, batch = self._batch
        spec, dtype = self.setup.model, self.setup.dtype
        if parameter is None:
            with np.errstate(all="ignore"):
                scale = models.loss_scale(spec, dtype, values, batch)
                forward = models.loss_forward_error_bound(spec, dtype, values, batch)
            if not np.isfinite(scale) or not np.isfinite(forward):  # overflowed: see below
                return None
            return oracle.compare(expected, actual, "ulp",
                                  oracle.reduction_budget(expected, ulps, scale=scale) + forward)
        with np.errstate(all="ignore"):
            terms = models.gradient_magnitudes(spec, dtype, values, batch)[parameter]
            forward = models.forward_error_bounds(spec, dtype, values, batch)[parameter]
        # Where the terms themselves overflowed, inf − inf and 0 · inf make NaN or ±inf in
        # an order-dependent way (as rounding does for finite sums): nothing to compare there.
        overflowed = ~np.isfinite(terms) | ~np.isfinite(forward)
        expected, actual = np.where(overflowed, 0, expected), np.where(overflowed, 0, actual)
        with np.errstate(over="ignore", invalid="ignore"):
            budget = ulps * oracle.ulp(terms.astype(expected.dtype))
        budget = np.where(np.isnan(budget), np.inf, budget)  # terms overflowed: inf · 0
        # the backward pass's rounding, plus the forward values' carried into the gradient
        return oracle.compare(expected, actual, "ulp",
                              np.maximum(oracle.reduction_budget(expected, ulps), budget)
                              + np.where(overflowed, 0, forward))

    def _compare_step(self, expected: np.ndarray, actual: np.ndarray,
                      budget: np.ndarray | None, stepped: bool) -> Mismatch | None:
        """Parameters and buffers: after a step in the run's mode, otherwise bit for bit."""
        if not stepped or self.mode == "exact":
            return oracle.compare(expected, actual, "exact")
        if self.mode == "tolerance":
            return oracle.compare(expected, actual, "tolerance")
        return oracle.compare(expected, actual, "ulp",
                              0.0 if budget is None else budget)

    def _grad_after_budget(self, name: str, pre: Observation, group: dict[str, Any],
                           after: Observation) -> np.ndarray | None:
        buffer_budget = self._step_budgets(name, pre, group)[1]
        if buffer_budget is None or after.buffers[name] is None:
            return None
        return oracle.nesterov_grad_budget(after.grads[name], after.buffers[name],
                                           buffer_budget, _value(group, "momentum"))

    def _step_budgets(self, name: str, pre: Observation, group: dict[str, Any] | None
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The error model's budgets for one parameter's step (None: it must not move)."""
        grad = pre.grads[name]
        if self.mode != "ulp" or group is None or grad is None:
            return None, None
        value = lambda key: group[key][1] if isinstance(group[key], tuple) else group[key]
        momentum = value("momentum")
        buffer = pre.buffers[name] if momentum != 0 else None
        return oracle.sgd_step_budget(
            pre.params[name], grad, buffer, lr=value("lr"), momentum=momentum,
            dampening=value("dampening"), weight_decay=value("weight_decay"),
            nesterov=value("nesterov"), maximize=value("maximize"),
            first_step=buffer is None)


def _value(group: dict[str, Any], key: str) -> Any:
    """A group's hyperparameter as observed (a tensor is ("tensor", value))."""
    value = group[key]
    return value[1] if isinstance(value, tuple) else value


def _writes_grad(group: dict[str, Any]) -> bool:
    """torch 2.13's foreach nesterov path (no maximize, no weight decay) writes g + μb into
    .grad during the step."""
    return bool(group.get("foreach")) and bool(group["nesterov"]) and \
        _value(group, "momentum") != 0 and not group["maximize"] and \
        _value(group, "weight_decay") == 0


def _fmt_error(error: tuple[str, str] | None) -> str:
    return "nothing" if error is None else f"{error[0]}: {error[1]}"


def _fmt_loss(loss: np.ndarray | None) -> str:
    return "None" if loss is None else f"a loss ({loss.dtype})"


def _presence(value: np.ndarray | None) -> str:
    return "None" if value is None else f"a tensor of shape {tuple(value.shape)}"


def _comparable_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (repr(v) if isinstance(v, float) else v) for k, v in g.items()} for g in groups]


def _group_difference(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str:
    if len(expected) != len(actual):
        return f"torch has {len(expected)} groups, the implementation {len(actual)}"
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        for key in sorted(set(e) | set(a)):
            if e.get(key, "<missing>") != a.get(key, "<missing>"):
                return (f"group {i} {key}: torch {e.get(key, '<missing>')}, the implementation "
                        f"{a.get(key, '<missing>')}")
    return "groups differ"


def error_per_action(case: Case, impl: Implementation | str, mode: Mode | None = None,
                     timeout: float | None = 10.0) -> list[float]:
    """Replays a case and returns, after each action (synchronised before it, so each value is
    that action's own error), the largest ULP distance between the two sides; it stops after
    the first divergence. -1 marks an action whose error cannot be measured (an exception)."""
    impl = implementation(impl) if isinstance(impl, str) else impl
    twins = Twins(case.setup, impl, mode, timeout)
    profile = []
    for action in case.actions:
        divergence = twins.run(action)
        if twins.setup_error.error is not None:
            return [-1.0]
        try:
            error = twins.error_profile()
        except Exception:
            error = -1.0
        profile.append(error if np.isfinite(error) else -1.0)
        if divergence is not None:
            break
    return profile


def replay(case: Case, impl: Implementation | str, mode: Mode | None = None,
           timeout: float | None = 10.0) -> Divergence | None:
    """Runs a recorded case; returns its first divergence (None: it conforms)."""
    impl = implementation(impl) if isinstance(impl, str) else impl
    twins = Twins(case.setup, impl, mode, timeout)
    for action in case.actions:
        divergence = twins.run(action)
        if divergence is not None:
            return divergence
    return None


# --- coverage ------------------------------------------------------------------------------------


@dataclass
class Coverage:
    """What the generated programs exercised (for the report)."""

    programs: int = 0
    actions: int = 0
    action_kinds: Counter[str] = field(default_factory=Counter)
    model_kinds: Counter[str] = field(default_factory=Counter)
    losses: Counter[str] = field(default_factory=Counter)
    dtypes: Counter[str] = field(default_factory=Counter)
    hyperparameters: set[str] = field(default_factory=set)
    group_layouts: set[str] = field(default_factory=set)

    def add_setup(self, setup: Setup) -> None:
        self.programs += 1
        self.model_kinds[setup.model.kind] += 1
        self.losses[setup.model.loss] += 1
        self.dtypes[setup.dtype] += 1
        for group in setup.groups:
            merged = {**setup.defaults, **group.options}
            self.hyperparameters.add(repr(sorted(merged.items())) + repr(setup.tensor_lr))
        self.group_layouts.add(repr([len(g.params) for g in setup.groups]))

    def merge(self, other: Coverage) -> None:
        self.programs += other.programs
        self.actions += other.actions
        for mine, theirs in ((self.action_kinds, other.action_kinds),
                             (self.model_kinds, other.model_kinds),
                             (self.losses, other.losses), (self.dtypes, other.dtypes)):
            mine.update(theirs)
        self.hyperparameters |= other.hyperparameters
        self.group_layouts |= other.group_layouts

    def to_json(self) -> dict[str, Any]:
        return {"programs": self.programs, "actions": self.actions,
                "action_kinds": dict(sorted(self.action_kinds.items())),
                "model_kinds": dict(sorted(self.model_kinds.items())),
                "losses": dict(sorted(self.losses.items())),
                "dtypes": dict(sorted(self.dtypes.items())),
                "distinct_hyperparameter_configurations": len(self.hyperparameters),
                "distinct_group_layouts": len(self.group_layouts)}


# --- the state machine ---------------------------------------------------------------------------


class SGDMachine(RuleBasedStateMachine):
    """Rules are what users do; after each, every observable must match torch (see Twins).
    Configure a subclass with `machine(...)`."""

    implementation: ClassVar[str] = "refimpl"
    mode: ClassVar[Mode | None] = None
    timeout: ClassVar[float | None] = 10.0
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float64")
    coverage: ClassVar[Coverage]
    last_case: ClassVar[Case | None] = None
    on_program: ClassVar[Callable[[Coverage], None] | None] = None  # progress reporting

    def __init__(self) -> None:
        super().__init__()
        self.twins: Twins | None = None

    @initialize(data=st.data())
    def build(self, data: st.DataObject) -> None:
        setup = data.draw(strategies.setups(type(self).dtypes), label="setup")
        self.twins = Twins(setup, implementation(self.implementation), self.mode, self.timeout)
        type(self).coverage.add_setup(setup)
        if type(self).on_program is not None:
            type(self).on_program(type(self).coverage)

    def _do(self, action: Action) -> None:
        assert self.twins is not None
        cls = type(self)
        cls.coverage.actions += 1
        cls.coverage.action_kinds[action.kind] += 1
        divergence = self.twins.run(action)
        cls.last_case = self.twins.case
        if divergence is not None:
            raise DivergenceFound(divergence, self.twins.case)

    @property
    def _setup(self) -> Setup:
        assert self.twins is not None
        return self.twins.setup

    @rule(batch=strategies.batch_seeds())
    def backward(self, batch: int) -> None:
        self._do(Action("backward", {"batch": batch}))

    @rule(batch=strategies.batch_seeds())
    def backward_twice(self, batch: int) -> None:
        self._do(Action("backward_twice", {"batch": batch}))

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none: bool) -> None:
        self._do(Action("zero_grad", {"set_to_none": set_to_none}))

    @rule()
    def step(self) -> None:
        self._do(Action("step"))

    @rule(batch=strategies.batch_seeds())
    def step_closure(self, batch: int) -> None:
        self._do(Action("step_closure", {"batch": batch}))

    @rule(data=st.data())
    def set_hyperparameter(self, data: st.DataObject) -> None:
        assert self.twins is not None
        groups = self.twins.reference.optimizer.param_groups
        index = data.draw(st.integers(0, len(groups) - 1), label="group")
        group = groups[index]
        name, value = data.draw(strategies.hyperparameter_change(
            {k: (float(v) if k == "lr" else v) for k, v in group.items() if k != "params"}),
            label="change")
        self._do(Action("set_hyperparameter", {"group": index, "name": name, "value": value}))

    def _ungrouped(self) -> list[str]:
        assert self.twins is not None
        grouped = {id(p) for g in self.twins.reference.optimizer.param_groups
                   for p in g["params"]}
        return [n for n, p in self.twins.reference.params.items() if id(p) not in grouped]

    @precondition(lambda self: self.twins is not None and bool(self._ungrouped()))
    @rule(data=st.data())
    def add_param_group(self, data: st.DataObject) -> None:
        free = self._ungrouped()
        names = data.draw(st.lists(st.sampled_from(free), min_size=1, unique=True),
                          label="params")
        options = data.draw(strategies.group_options(self._setup.defaults), label="options")
        self._do(Action("add_param_group", {"params": names, "options": options}))

    @rule(data=st.data(), freeze=st.booleans())
    def set_requires_grad(self, data: st.DataObject, freeze: bool) -> None:
        name = data.draw(st.sampled_from(self._setup.model.parameter_names()), label="param")
        self._do(Action("freeze" if freeze else "unfreeze", {"param": name}))

    @rule(source=st.sampled_from(["self", "reference", "implementation"]))
    def save_load(self, source: str) -> None:
        self._do(Action("save_load", {"source": source}))


def machine(impl: str = "refimpl", mode: Mode | None = None, timeout: float | None = 10.0,
            dtypes: tuple[str, ...] = ("float32", "float64")) -> type[SGDMachine]:
    """A state machine class checking `impl` ("refimpl" or "module:Class") against torch."""
    implementation(impl)  # fail early, with ImplementationError, on a bad module:Class
    # the name keys Hypothesis's example database: one entry per implementation, mode, dtypes
    name = f"SGDConformance[{impl}, {mode or 'default'}, {'+'.join(dtypes)}]"
    return type(name, (SGDMachine,), {
        "implementation": impl, "mode": mode, "timeout": timeout, "dtypes": dtypes,
        "coverage": Coverage(), "last_case": None})


# --- trajectory ----------------------------------------------------------------------------------


def trajectory(setup: Setup, impl: Implementation | str, steps: int = 50) -> list[float]:
    """Trains both sides `steps` iterations (zero_grad, backward on batch i, step) WITHOUT
    synchronising and returns the drift: after each step, the largest ULP distance between any
    parameter of the two sides (inf once NaN or infinities differ). The local checks of `Twins`
    keep budgets from growing; this measures how far the differences carry over a run."""
    impl = implementation(impl) if isinstance(impl, str) else impl
    reference = Side(TorchOptimizerImplementation(REFERENCE), setup)
    side = Side(impl, setup)
    drift = []
    for batch in range(steps):
        for s in (reference, side):
            s.apply(Action("zero_grad", {"set_to_none": True}))
            s.apply(Action("backward", {"batch": batch}))
            s.apply(Action("step"))
        expected, actual = reference.observe(), side.observe()
        drift.append(max((float(oracle.ulp_distance(actual.params[n], expected.params[n])
                                .max(initial=0.0)) for n in expected.params), default=0.0))
    return drift
