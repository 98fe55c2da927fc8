"""The twin runner: the reference and the implementation side by side.

`Twins` holds two `Side`s built from one `Setup`: the reference (torch's autograd and
the family's torch optimizer on the chosen code path) and the implementation under test.
`Twins.run(action)`
synchronises the implementation from the reference (so every check is local and no budget
grows with the number of steps), applies the action to both (the implementation under a
per-action timeout, its exceptions caught), and compares everything observable, as the run's
contract defines (`conformance.options`): raised exceptions, the returned loss, each
parameter's grad (None exactly where torch has None), optimizer state (each of the family's
state keys: presence and values), value and requires_grad, and the groups' hyperparameters.
Each difference is a `Divergence` (the first is returned, the others attached); `replay`
runs a recorded `Case` the same way, outside Hypothesis, and `history` records it action by
action for the report. The Hypothesis state machine that drives the twins is
`conformance.stateful`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from conformance import models, oracle
from conformance.actions import ACTIONS, counts_as
from conformance.implementations import (
    Implementation,
    Observation,
    Outcome,
    Side,
    _run,
    implementation,
    reference,
)
from conformance.isolation import IsolatedImplementation, Lost, RemoteSide
from conformance.options import PATH_FLAGS, RunOptions
from conformance.oracle import Mismatch, Mode
from conformance.program import Action, Case, Setup

# --- outcome of one action on one side -----------------------------------------------------------


def same_error(expected: Outcome, actual: Outcome, strict: bool) -> bool:
    """Both raised or neither did; strict: the same class and message, semantic: the
    implementation's exception is an instance of torch's class (the message is only shown)."""
    if expected.error is None or actual.error is None:
        return expected.error is None and actual.error is None
    if strict:
        return expected.error == actual.error
    return bool(expected.error_mro) and expected.error_mro[0] in actual.error_mro


# --- divergences ---------------------------------------------------------------------------------


@dataclass
class Divergence:
    """Where the implementation first differs from torch."""

    action_index: int
    action: str
    tensor: str  # grad | param | a state key (momentum_buffer, exp_avg, ...) | requires_grad |
    # loss | param_groups | exception | process (the implementation exited, died, hung or ran
    # out of memory)
    parameter: str | None = None
    group: int | None = None
    mismatch: Mismatch | None = None
    detail: str = ""  # for non-array differences: what each side had
    traceback: str | None = None
    others: list[dict[str, Any]] = field(default_factory=list)  # every other diverging tensor
    shape: list[int] | None = None  # the diverging tensor's shape, and its ULP error per
    ulp_errors: list[float] | None = None  # element (C order; the first 4,096), for the report
    overwritten: str | None = None  # a grad a step changed: "implementation" or "torch"
    features: list[str] = field(default_factory=list)  # the hyperparameter features in play
    kind: str = ""  # the action's kind

    @property
    def key(self) -> dict[str, Any]:
        """What distinct failures are told apart by: the differing tensor and how it differs
        (its values, its presence, or a state such as an exception), the kind of action
        (a step with or without closure is a step, one backward or two a backward) and the
        hyperparameter features in play (for param_groups: the differing key, whatever the
        action)."""
        action = (
            "any" if self.tensor == "param_groups" else counts_as(self.kind)
        )  # a group's state, whatever showed it
        difference = (
            "values"
            if self.mismatch is not None
            else "state"
            if self.tensor in _NOT_ARRAYS
            else "presence"
        )
        return {
            "tensor": self.tensor,
            "difference": difference,
            "action": action,
            "features": list(self.features),
        }

    def explained_by(self, known: dict[str, Any]) -> bool:
        """Whether a failure already found (its shrunk key) accounts for this one: the same
        tensor and kind of action, with at least the features the shrunk failure needed."""
        key = self.key
        return all(key[k] == known[k] for k in ("tensor", "difference", "action")) and set(
            known["features"]
        ) <= set(key["features"])

    def __str__(self) -> str:
        where = (
            self.tensor
            + (f" of {self.parameter}" if self.parameter else "")
            + (f" (group {self.group})" if self.group is not None else "")
        )
        text = f"action {self.action_index} {self.action}: {where} differs"
        if self.tensor == "process":  # the detail says what happened to it
            text = f"action {self.action_index} {self.action}"
        if self.mismatch is not None and self.mismatch.reason.startswith(("shape ", "dtype ")):
            text += f": {self.mismatch.reason}"  # no element to show
        elif self.mismatch is not None:
            m = self.mismatch
            text += (
                f" at {m.index}: expected {m.expected!r}, got {m.actual!r} "
                f"(abs {m.abs_error:.3g}, {m.ulp_error:.3g} ULP; {m.reason}; "
                f"{m.count} element(s) differ)"
            )
        if self.detail:
            text += f": {self.detail}"
        if self.others:
            text += f"; {len(self.others)} other tensor(s) differ"
        if self.traceback:
            text += "\n" + self.traceback
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "action_index": self.action_index,
            "action": self.action,
            "tensor": self.tensor,
            "parameter": self.parameter,
            "group": self.group,
            "mismatch": None if self.mismatch is None else self.mismatch.to_dict(),
            "detail": self.detail,
            "traceback": self.traceback,
            "others": self.others,
            "shape": self.shape,
            "ulp_errors": self.ulp_errors,
            "overwritten": self.overwritten,
            "features": self.features,
        }


class DivergenceFound(AssertionError):
    def __init__(self, divergence: Divergence, case: Case) -> None:
        super().__init__(str(divergence))
        self.divergence, self.case = divergence, case


# --- the twins -----------------------------------------------------------------------------------


class Twins:
    """The reference and the implementation under test, stepped through one program, judged
    under `options` (contract, mode, reference path, declared surface).

    `seconds` says where this program's time went: "build" (both sides built), "run" (all of
    `run`), "reference" (torch's side doing the actions) and "implementation" (the
    implementation doing them, measured where it runs: in a worker process, at the same
    time as torch's side). `created`, when set, is called with every Twins built (a
    benchmark records the programs a run executes).

    `worst` is how close the implementation has come to failing since the Twins was built:
    the largest ratio, over every float comparison made (losses, grads, closure grads,
    parameters, momentum buffers), of an element's observed error to the error allowed
    there (`oracle.judge`: |actual - expected| over the budget, in ULPs of one value; where
    nothing is allowed, as under the exact mode of the strict contract, the ULP distance
    itself). 0.0 while everything matched bitwise; above 1 a comparison failed; finite,
    capped at `oracle.RATIO_CAP` (1e6). For Hypothesis's `target()`; it costs nothing where
    values match bitwise and a division where they do not."""

    created: ClassVar[Callable[[Twins], None] | None] = None

    def __init__(
        self, setup: Setup, impl: Implementation | IsolatedImplementation, options: RunOptions
    ) -> None:
        start = time.perf_counter()
        self.seconds = {"build": 0.0, "run": 0.0, "reference": 0.0, "implementation": 0.0}
        self.worst = 0.0  # see `worst` in the class docstring
        self.setup, self.impl, self.options = setup, impl, options
        self.family = options.spec
        self.mode: Mode = options.mode or impl.default_mode
        self.strict = options.strict
        self.timeout = options.timeout
        self.actions: list[Action] = []
        self.found: list[Divergence] = []  # every divergence of the last action
        self._batch: tuple[dict[str, np.ndarray], int] | None = None
        flags = PATH_FLAGS[options.reference_path]
        self.side_obs: Observation | None = None  # the implementation after the last action
        # torch's side after the last action, where it was observed (for the comparison): its
        # state until the next action, so that action's starting point, not observed again
        self._after: Observation | None = None
        # the implementation's state as last observed is bitwise torch's: synchronising it
        # would change nothing, and is skipped (in a worker process, torch's state is not sent)
        self._in_sync = False
        self.lost: str | None = None  # its worker process was lost: what happened
        self.side: Side | RemoteSide
        self.reference: Side
        self.setup_error: Outcome  # what constructing the implementation's optimizer raised
        if isinstance(impl, IsolatedImplementation):
            self.side = impl.side(setup, flags)
            finish = self.side.begin_build(self.timeout)  # the worker builds while torch's
            try:  # side is built here
                self.reference = Side(reference(options), setup, flags)
            finally:  # the worker's answer is taken even where torch's side failed
                try:
                    self.setup_error = finish()
                except Lost as lost:
                    self.setup_error, self.lost = Outcome(), str(lost)
        else:
            self.reference = Side(reference(options), setup, flags)
            self.setup_error = _run(lambda: self._build(impl, flags), self.timeout)
        self.seconds["build"] = time.perf_counter() - start
        if Twins.created is not None:
            Twins.created(self)

    def _build(self, impl: Implementation, flags: dict[str, bool]) -> None:
        self.side = Side(impl, self.setup, flags)

    @property
    def case(self) -> Case:
        return Case(self.setup, tuple(self.actions))

    def run(self, action: Action) -> Divergence | None:
        """Applies `action` to both sides and returns the first difference, if any."""
        start = time.perf_counter()
        try:
            return self._run(action)
        finally:
            self.seconds["run"] += time.perf_counter() - start

    def _run(self, action: Action) -> Divergence | None:
        index = len(self.actions)
        self.actions.append(action)
        if self.lost is not None:
            return Divergence(index, str(action), "process", detail=self.lost, kind=action.kind)
        if self.setup_error.error is not None:
            return Divergence(
                index,
                str(action),
                "exception",
                detail=f"constructing the optimizer raised "
                f"{self.setup_error.error[0]}: {self.setup_error.error[1]}"
                " (torch constructs it)",
                traceback=self.setup_error.traceback,
                kind="construct",
            )
        before = self._after if self._after is not None else self.reference.observe()
        self._after = None  # until this action's result is observed
        sync_from = None if self._in_sync else before
        self._in_sync = False  # until this action's states are seen equal
        # what the error scales of refimpl's grads are computed from: the parameters before
        # the action and its batch (grads accumulated over earlier batches only add terms)
        batch = action.args.get("batch")
        self._batch = None if batch is None else (before.params, batch)
        pre_step = before
        closure_grads: Observation | None = None
        ref_state: dict[str, Any] | None = None
        referencing = time.perf_counter()
        if action.kind == "save_load":
            ref_state = self.reference.optimizer.state_dict()
            ref_fresh = self.reference.fresh_optimizer()
        elif action.kind == "step_closure":
            recorded: list[Observation] = []
            expected = _run(
                lambda: self.reference.apply(action, lambda side: recorded.append(side.observe())),
                None,
            )
            if recorded:  # the closure's grads are checked, then replaced by torch's: the
                pre_step = closure_grads = recorded[-1]  # step is judged on torch's inputs
        self.seconds["reference"] += time.perf_counter() - referencing
        try:
            if action.kind in ("save_load", "step_closure"):
                step = self.side.act(
                    sync_from,
                    action,
                    self.timeout,
                    closure_grads,
                    ref_state if action.args.get("source") == "reference" else None,
                    self.reference.optimizer.defaults if action.kind == "save_load" else None,
                )
            else:  # a worker process acts while torch does
                finish = self.side.begin(sync_from, action, self.timeout)
                referencing = time.perf_counter()
                expected = _run(lambda: self.reference.apply(action), None)
                self.seconds["reference"] += time.perf_counter() - referencing
                step = finish()
        except Lost as lost:
            self.lost = str(lost)
            return self._process(index, action, str(lost))
        self.seconds["implementation"] += step.applied
        if step.synced.error is not None:
            return self._process(index, action, step.synced) or Divergence(
                index,
                str(action),
                "exception",
                detail="synchronising the implementation's state raised "
                f"{step.synced.error[0]}: {step.synced.error[1]}",
                traceback=step.synced.traceback,
                kind=action.kind,
            )
        if action.kind == "save_load":
            referencing = time.perf_counter()
            expected = self._load_reference(action.args["source"], ref_state, ref_fresh, step.state)
            self.seconds["reference"] += time.perf_counter() - referencing
        timed_out = self._process(index, action, step.outcome)
        if timed_out is not None:
            return timed_out
        if step.after is None:
            error = step.observed.error or ("?", "")
            return Divergence(
                index,
                str(action),
                "exception",
                kind=action.kind,
                detail=f"observing the implementation's state (parameters, "
                f"grads, param_groups, state) raised {error[0]}: "
                f"{error[1]}",
                traceback=step.observed.traceback,
            )
        self.side_obs = step.after
        self._after = self.reference.observe()
        groups_of = {name: g for g in pre_step.groups for name in g["params"]}
        closure_checks = [
            d
            for seen in step.closure
            if closure_grads is not None
            for d in self._compare_grads(index, action, closure_grads, seen, computed=True)
        ]
        found = closure_checks + self._compare(
            index, action, expected, step.outcome, pre_step, self._after, groups_of
        )
        self._in_sync = _same_state(self._after, step.after)
        for divergence in found:
            divergence.kind = action.kind
            if divergence.tensor != "param_groups":  # those name the differing key instead
                divergence.features = self._features(groups_of.get(divergence.parameter or ""))
        self.found = found
        return self.package(found)

    def _process(self, index: int, action: Action, what: str | Outcome) -> Divergence | None:
        """A divergence naming what happened to the implementation's process (lost: `what`
        says how) or to its action (an Outcome that ran past the timeout, or in a worker
        process ran out of memory); None otherwise."""
        if isinstance(what, Outcome):
            error = what.error or ("", "")
            if what.timed_out:
                detail = (
                    f"the implementation ran past the timeout during {action} and was "
                    f"interrupted: {error[1]}"
                )
            elif error[0] == "MemoryError" and isinstance(self.impl, IsolatedImplementation):
                detail = (
                    f"the implementation ran out of memory during {action} (its process "
                    f"may add {self.options.memory_limit} MiB of address space: "
                    f"--memory-limit): MemoryError: {error[1]}"
                )
            else:
                return None
            divergence = Divergence(
                index,
                str(action),
                "process",
                detail=detail,
                traceback=what.traceback,
                kind=action.kind,
            )
        else:
            divergence = Divergence(index, str(action), "process", detail=what, kind=action.kind)
        self.found = [divergence]
        return divergence

    def _load_reference(
        self,
        source: str,
        ref_state: dict[str, Any] | None,
        ref_fresh: Any,
        side_state: dict[str, Any] | None,
    ) -> Outcome:
        """torch's half of a state-dict round trip: a fresh torch optimizer loads its own
        state dict or (source "implementation") the implementation's, in torch's format."""

        def load() -> None:
            if source == "implementation":
                if side_state is None:
                    raise RuntimeError("the implementation's state_dict() failed")
                ref_fresh.load_state_dict(side_state)
            else:
                ref_fresh.load_state_dict(ref_state)
            self.reference.optimizer = ref_fresh

        return _run(load, None)

    def package(self, found: list[Divergence]) -> Divergence | None:
        """The first of an action's divergences, with the others attached to it."""
        if not found:
            return None
        first, rest = found[0], found[1:]
        self._attach_errors(first)
        first.others = [
            {
                "tensor": d.tensor,
                "parameter": d.parameter,
                "mismatch": None if d.mismatch is None else d.mismatch.to_dict(),
                "detail": d.detail,
                "overwritten": d.overwritten,
            }
            for d in rest
        ]
        return first

    def _features(self, group: dict[str, Any] | None) -> list[str]:
        """The hyperparameter features of a parameter's group that were in play."""
        if group is None:
            return []
        return self.family.in_play(
            lambda key: _value(group, key) if key in group else None, self.setup.tensor_lr
        )

    def _attach_errors(self, divergence: Divergence) -> None:
        """The diverging tensor's ULP error per element (where both sides have it)."""
        pair = self._tensor_pair(divergence.tensor, divergence.parameter)
        if pair is None or pair[0].shape != pair[1].shape or pair[0].dtype != pair[1].dtype:
            return
        errors = oracle.ulp_distance(pair[1], pair[0]).reshape(-1)[:4096]
        divergence.shape = list(pair[0].shape)
        divergence.ulp_errors = [float(e) if np.isfinite(e) else -1.0 for e in errors]

    def _reference_now(self) -> Observation:
        """torch's side as it is now."""
        return self._after if self._after is not None else self.reference.observe()

    def _tensor_pair(self, tensor: str, name: str | None) -> tuple[np.ndarray, np.ndarray] | None:
        ref, side = self._reference_now(), self.side_obs
        if side is None:
            return None
        table: dict[
            str, tuple[Mapping[str, np.ndarray | None], Mapping[str, np.ndarray | None]]
        ] = {
            "param": (ref.params, side.params),
            "grad": (ref.grads, side.grads),
            **{key: (ref.state[key], side.state[key]) for key in ref.state},
        }
        if tensor not in table or name is None:
            return None
        expected, actual = table[tensor][0].get(name), table[tensor][1].get(name)
        return None if expected is None or actual is None else (expected, actual)

    def error_profile(self) -> float:
        """After an action: the largest ULP distance between the two sides over every
        parameter, grad and buffer they both have (inf where NaN or infinities differ)."""
        ref, side = self._reference_now(), self.side_obs
        if side is None:
            return float("inf")
        worst = 0.0
        for table_ref, table_side in _tables(ref, side):
            for name, expected in table_ref.items():
                actual = table_side.get(name)
                if expected is None or actual is None or expected.shape != actual.shape:
                    continue
                worst = max(worst, float(oracle.ulp_distance(actual, expected).max(initial=0.0)))
        return worst

    # --- comparisons ---

    def _judge(
        self,
        expected: np.ndarray,
        actual: np.ndarray,
        mode: Mode,
        budget: np.ndarray | float | None = None,
    ) -> Mismatch | None:
        """`oracle.compare`, keeping the error's largest ratio to its budget in `worst`."""
        mismatch, ratio = oracle.judge(expected, actual, mode, budget)
        if ratio > self.worst:
            self.worst = ratio
        return mismatch

    def _compare(
        self,
        index: int,
        action: Action,
        expected: Outcome,
        actual: Outcome,
        pre_step: Observation,
        ref_obs: Observation,
        groups_of: dict[str, dict[str, Any]],
    ) -> list[Divergence]:
        """Everything observable after the action: torch's outcome `expected` and state
        `ref_obs` against the implementation's; `pre_step` is torch's state the action
        started from (for a step with closure, with the closure's grads) and `groups_of`
        each parameter's group in it."""
        found: list[Divergence] = []
        new: Callable[..., Divergence] = lambda tensor, **kw: Divergence(
            index, str(action), tensor, **kw
        )
        if not same_error(expected, actual, self.strict):
            found.append(
                new(
                    "exception",
                    detail=f"torch raised {_fmt_error(expected.error)}, "
                    f"the implementation {_fmt_error(actual.error)}",
                    traceback=actual.traceback,
                )
            )
            return found  # the states after a different exception say nothing more
        if actual.returned is not None:
            found.append(
                new(
                    "loss",
                    detail=f"torch returned {_fmt_loss(expected.loss)}, "
                    f"the implementation {actual.returned}",
                )
            )
        elif (expected.loss is None) != (actual.loss is None):
            found.append(
                new(
                    "loss",
                    detail=f"torch returned {_fmt_loss(expected.loss)}, "
                    f"the implementation {_fmt_loss(actual.loss)}",
                )
            )
        elif expected.loss is not None and actual.loss is not None:
            mismatch = self._compare_values(expected.loss, actual.loss, computed=True)
            if mismatch is not None:
                found.append(new("loss", mismatch=mismatch))
        side_obs = self.side_obs
        assert side_obs is not None
        key, difference = self._group_difference(ref_obs.groups, side_obs.groups)
        if difference:
            found.append(new("param_groups", detail=difference, features=[key]))
        stepped, computed = ACTIONS[action.kind].steps, ACTIONS[action.kind].computes
        found.extend(
            self._compare_grads(
                index,
                action,
                ref_obs,
                side_obs,
                computed,
                stepped=stepped,
                groups=groups_of,
                pre=pre_step,
            )
        )
        group_index: dict[str, int] = {}  # each parameter's first group in torch's
        for i, g in enumerate(ref_obs.groups):
            for name in g["params"]:
                group_index.setdefault(name, i)
        for name in ref_obs.params:
            found.extend(
                self._compare_parameter(
                    new,
                    name,
                    group_index.get(name),
                    ref_obs,
                    side_obs,
                    pre_step,
                    groups_of.get(name),
                    stepped,
                )
            )
        return found

    def _compare_parameter(
        self,
        new: Callable[..., Divergence],
        name: str,
        group_index: int | None,
        ref_obs: Observation,
        side_obs: Observation,
        pre_step: Observation,
        group: dict[str, Any] | None,
        stepped: bool,
    ) -> list[Divergence]:
        """One parameter's optimizer state, value and requires_grad. The step's budgets are
        computed only where a value is not bitwise torch's (most are)."""
        found: list[Divergence] = []
        budgets: list[dict[str, np.ndarray | None]] = []

        def budget(key: str) -> np.ndarray | None:
            if not budgets:
                budgets.append(
                    self._step_budgets(name, pre_step, group)
                    if stepped and self.mode == "ulp"
                    else {}
                )
            return budgets[0].get(key)

        for key in ref_obs.state:
            expected, actual = ref_obs.state[key][name], side_obs.state[key][name]
            if (expected is None) != (actual is None):
                found.append(
                    new(
                        key,
                        parameter=name,
                        group=group_index,
                        detail=f"torch has {_presence(expected)}, the implementation "
                        f"{_presence(actual)}",
                    )
                )
            elif expected is not None and actual is not None:
                if self.family.comparison(key) == "count":
                    mismatch = self._compare_count(expected, actual)
                else:
                    mismatch = self._compare_step(
                        expected, actual, functools.partial(budget, key), stepped
                    )
                if mismatch is not None:
                    found.append(new(key, parameter=name, group=group_index, mismatch=mismatch))
        mismatch = self._compare_step(
            ref_obs.params[name], side_obs.params[name], lambda: budget("param"), stepped
        )
        if mismatch is not None:
            found.append(new("param", parameter=name, group=group_index, mismatch=mismatch))
        if ref_obs.requires_grad[name] != side_obs.requires_grad[name]:
            found.append(
                new(
                    "requires_grad",
                    parameter=name,
                    group=group_index,
                    detail=f"torch {ref_obs.requires_grad[name]}, the "
                    f"implementation {side_obs.requires_grad[name]}",
                )
            )
        return found

    def _compare_count(self, expected: np.ndarray, actual: np.ndarray) -> Mismatch | None:
        """A count (Adam's `step`): strict, as torch stores it (dtype and shape too);
        semantic, by value (an int or a tensor of any dtype holding the same number)."""
        if self.strict or actual.size != 1 or expected.size != 1:
            return self._judge(expected, actual, "exact")
        want, got = np.asarray(expected, np.float64).reshape(()), np.asarray(actual).reshape(())
        if got.dtype.kind not in "biuf":
            return self._judge(expected, actual, "exact")
        return self._judge(want, got.astype(np.float64), "exact")

    def _group_difference(
        self, expected: list[dict[str, Any]], actual: list[dict[str, Any]]
    ) -> tuple[str, str]:
        """The first key in which the implementation's param_groups differ from torch's, and
        how (("", "") where they agree). Strict: every
        key and value. Semantic: torch's hyperparameters (those the programs use) present and
        equal, by value (a tensor lr may be held as a number); torch's implementation flags
        only where the implementation was given them and stores them; other keys are the
        implementation's own."""
        if len(expected) != len(actual):
            return "groups", f"torch has {len(expected)} groups, the implementation {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            if self.strict:
                keys = sorted(set(e) | set(a))
            else:
                flags = [
                    k for k in self.family.implementation_flags if k in a and k in self.side.flags
                ]
                keys = ["params", *self.options.required_group_keys(), *flags]
            for key in keys:
                want, got = e.get(key, _MISSING), a.get(key, _MISSING)
                if want is got or (
                    type(want) is type(got) and type(want) in _EXACT_TYPES and want == got
                ):
                    continue  # the same under either contract (a shortcut: most values)
                if not _same_value(want, got, self.strict):
                    return key, (
                        f"group {i} {key}: torch {_show(want)}, the implementation {_show(got)}"
                    )
        return "", ""

    def _compare_grads(
        self,
        index: int,
        action: Action,
        ref_obs: Observation,
        side_obs: Observation,
        computed: bool,
        stepped: bool = False,
        groups: dict[str, dict[str, Any]] | None = None,
        pre: Observation | None = None,
    ) -> list[Divergence]:
        found = []
        for name, expected in ref_obs.grads.items():
            actual = side_obs.grads[name]
            if (expected is None) != (actual is None):
                found.append(
                    Divergence(
                        index,
                        str(action),
                        "grad",
                        parameter=name,
                        detail=f"torch has {_presence(expected)}, the "
                        f"implementation {_presence(actual)}",
                    )
                )
                continue
            if expected is None or actual is None:
                continue
            group = (groups or {}).get(name)
            writes = self.family.writes_grad
            if (
                stepped
                and group is not None
                and pre is not None
                and writes is not None
                and writes(functools.partial(_value, group))
            ):
                mismatch = self._grad_written(name, pre, group, ref_obs, actual)
            else:
                mismatch = self._compare_values(expected, actual, computed, name)
            if mismatch is not None:
                before = pre.grads.get(name) if stepped and pre is not None else None
                overwritten = None
                if before is not None and before.shape == actual.shape:
                    torch_kept = oracle.bitwise_equal(expected, before)
                    side_kept = oracle.bitwise_equal(actual, before)
                    overwritten = (
                        "implementation"
                        if torch_kept and not side_kept
                        else "torch"
                        if side_kept and not torch_kept
                        else None
                    )
                found.append(
                    Divergence(
                        index,
                        str(action),
                        "grad",
                        parameter=name,
                        mismatch=mismatch,
                        overwritten=overwritten,
                    )
                )
        return found

    def _grad_written(
        self,
        name: str,
        pre: Observation,
        group: dict[str, Any],
        ref_obs: Observation,
        actual: np.ndarray,
    ) -> Mismatch | None:
        """`.grad` after a step that torch's reference path may write into (SGD's foreach
        nesterov step writes g + μb, its for-loop path leaves it alone: the family's
        `writes_grad`). Strict: as the reference path did (the written value judged as a
        step). Semantic: either is conforming: untouched, or the written value within the
        step's error model."""
        expected, before = ref_obs.grads[name], pre.grads[name]
        assert expected is not None and before is not None
        written = not oracle.bitwise_equal(expected, before)
        if self.strict and not written:
            return self._judge(expected, actual, "exact")
        if (
            not self.strict
            and actual.shape == before.shape
            and oracle.bitwise_equal(actual, before)
        ):
            return None
        after = {key: ref_obs.state[key][name] for key in ref_obs.state}
        if (
            any(value is None for value in after.values()) or self.family.written_grad is None
        ):  # torch's step did not run: nothing to accept
            return self._judge(expected, actual, "exact")
        if written and self.mode == "exact":
            return self._judge(expected, actual, "exact")
        value = lambda key: _value(group, key)
        computed, budget = self.family.written_grad(
            before, after, self._step_budgets(name, pre, group), value
        )
        if not written:  # the value torch's other path would have written, from its inputs
            expected = computed
        if oracle.identical(expected, actual):  # no budget needed
            return None
        return self._judge(expected, actual, "ulp", budget)

    def _compare_values(
        self, expected: np.ndarray, actual: np.ndarray, computed: bool, parameter: str | None = None
    ) -> Mismatch | None:
        """Grads (of `parameter`) and losses (parameter None): bitwise when torch's autograd
        made both (or nothing was computed since synchronising); from refimpl's autograd,
        within the model's ULP budget, in ULPs of the tensor's largest magnitude or, where
        the result cancelled, of the terms it summed (`models.gradient_magnitudes`,
        `models.loss_scale`; computed only when the first check fails). In tolerance mode,
        computed values are judged with assert_close's tolerances (a compiled closure's
        gradients may differ from eager ones by a rounding)."""
        if computed and self.mode == "tolerance":
            return self._judge(expected, actual, "tolerance")
        if not computed or self.impl.lib == "torch":
            return self._judge(expected, actual, "exact")
        if oracle.identical(expected, actual):  # no budget needed
            return None
        ulps = self.setup.model.grad_ulp_budget(self.setup.dtype)
        mismatch, ratio = oracle.judge(
            expected, actual, "ulp", oracle.reduction_budget(expected, ulps)
        )
        if mismatch is None or self._batch is None:
            self.worst = max(self.worst, ratio)
            return mismatch
        # the finer budget below decides (and measures) instead
        values, batch = self._batch
        spec, dtype = self.setup.model, self.setup.dtype
        if parameter is None:
            with np.errstate(all="ignore"):
                scale = models.loss_scale(spec, dtype, values, batch)
                loss_forward = models.loss_forward_error_bound(spec, dtype, values, batch)
            if not np.isfinite(scale) or not np.isfinite(loss_forward):  # overflowed: see below
                return None
            return self._judge(
                expected,
                actual,
                "ulp",
                oracle.reduction_budget(expected, ulps, scale=scale) + loss_forward,
            )
        with np.errstate(all="ignore"):
            terms = models.gradient_magnitudes(spec, dtype, values, batch)[parameter]
            forward = models.forward_error_bounds(spec, dtype, values, batch)[parameter]
        # Where the terms themselves overflowed, inf − inf and 0 · inf make NaN or ±inf in
        # an order-dependent way (as rounding does for finite sums): nothing to compare there.
        # The same holds where finite terms overflowed on the way (an intermediate of a layer
        # norm's backward): both sides non-finite, one NaN and the other ±inf.
        nan_against_inf = (np.isnan(expected) & np.isinf(actual)) | (
            np.isinf(expected) & np.isnan(actual)
        )
        overflowed = ~np.isfinite(terms) | ~np.isfinite(forward) | nan_against_inf
        expected, actual = np.where(overflowed, 0, expected), np.where(overflowed, 0, actual)
        with np.errstate(over="ignore", invalid="ignore"):
            budget = ulps * oracle.ulp(terms.astype(expected.dtype))
        budget = np.where(np.isnan(budget), np.inf, budget)  # terms overflowed: inf · 0
        # the backward pass's rounding, plus the forward values' carried into the gradient
        return self._judge(
            expected,
            actual,
            "ulp",
            np.maximum(oracle.reduction_budget(expected, ulps), budget)
            + np.where(overflowed, 0, forward),
        )

    def _compare_step(
        self,
        expected: np.ndarray,
        actual: np.ndarray,
        budget: Callable[[], np.ndarray | None],
        stepped: bool,
    ) -> Mismatch | None:
        """Parameters and buffers: after a step in the run's mode (`budget()`: the error
        model's, asked for only where the values are not bitwise torch's), otherwise bit for
        bit."""
        if not stepped or self.mode == "exact":
            return self._judge(expected, actual, "exact")
        if self.mode == "tolerance":
            return self._judge(expected, actual, "tolerance")
        if oracle.identical(expected, actual):
            return None
        allowed = budget()
        if allowed is not None and expected.shape == actual.shape:
            # Where the step's inputs or intermediates are not finite (the budget is inf),
            # whether inf − inf or 0·inf comes up depends on the order of operations: torch's
            # lerp makes NaN of an infinite gradient where β·m + (1 − β)·g gives inf. NaN
            # against ±inf is not a divergence there, as for gradients; the rest must agree.
            unbounded = np.broadcast_to(~np.isfinite(allowed), expected.shape)
            with np.errstate(invalid="ignore"):
                order = unbounded & (
                    (np.isnan(expected) & np.isinf(actual))
                    | (np.isinf(expected) & np.isnan(actual))
                )
            if order.any():
                expected, actual = np.where(order, 0, expected), np.where(order, 0, actual)
        return self._judge(expected, actual, "ulp", 0.0 if allowed is None else allowed)

    def _step_budgets(
        self, name: str, pre: Observation, group: dict[str, Any] | None
    ) -> dict[str, np.ndarray | None]:
        """The error model's budgets for one parameter's step (keys "param" and the state
        keys), from torch's group and state before it (None: it must not move)."""
        grad = pre.grads[name]
        if group is None or grad is None:
            return {}
        before = {
            "param": pre.params[name],
            "grad": grad,
            **{key: pre.state[key][name] for key in pre.state},
        }
        return self.family.step_budget(before, lambda key: _value(group, key))


def _same_state(expected: Observation, actual: Observation) -> bool:
    """Whether the implementation's parameters, grads and state are torch's, bit for bit and
    present where torch's are (what synchronising would set)."""
    if expected.params.keys() != actual.params.keys():
        return False
    for table_e, table_a in _tables(expected, actual):
        for name, e in table_e.items():
            a = table_a.get(name)
            if (e is None) != (a is None) or (
                e is not None and a is not None and not oracle.identical(e, a)
            ):
                return False
    return True


def _tables(
    expected: Observation, actual: Observation
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The arrays of both sides, table by table: parameters, grads, each state key."""
    return [
        (expected.params, actual.params),
        (expected.grads, actual.grads),
        *((expected.state[key], actual.state[key]) for key in expected.state),
    ]


def _value(group: dict[str, Any], key: str) -> Any:
    """A group's hyperparameter as observed (a tensor is ("tensor", value))."""
    value = group[key]
    return (
        value[1] if isinstance(value, tuple) and len(value) == 2 and value[0] == "tensor" else value
    )


def _fmt_error(error: tuple[str, str] | None) -> str:
    return "nothing" if error is None else f"{error[0]}: {error[1]}"


def _fmt_loss(loss: np.ndarray | None) -> str:
    return "None" if loss is None else f"a loss ({loss.dtype})"


def _presence(value: np.ndarray | None) -> str:
    return "None" if value is None else f"a tensor of shape {tuple(value.shape)}"


_MISSING = object()
# what a divergence names that is not an array with a presence (grad, a state key)
_NOT_ARRAYS = frozenset({"param", "requires_grad", "loss", "param_groups", "exception", "process"})
# group values that `_same_value` compares by == under either contract, so == decides where
# both have the type (not a float: strict tells -0.0 by its repr; not a tuple: semantic reads
# ("tensor", x) as x)
_EXACT_TYPES = frozenset({bool, int, str, type(None), list})


def _show(value: Any) -> str:
    if value is _MISSING:
        return "<missing>"
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "tensor":
        return f"tensor({value[1]!r})"
    return repr(value)


def _same_value(expected: Any, actual: Any, strict: bool) -> bool:
    """Group values: strict, as observed (a float by its repr, so -0.0 != 0.0; a tensor lr only
    as a tensor); semantic, numbers by value (a tensor lr may be held as a number, betas as a
    list)."""
    if expected is _MISSING or actual is _MISSING:
        return expected is actual
    if strict:
        show: Callable[[Any], Any] = lambda v: repr(v) if isinstance(v, float) else v
        return bool(show(expected) == show(actual))
    number: Callable[[Any], Any] = lambda v: (
        v[1] if isinstance(v, tuple) and len(v) == 2 and v[0] == "tensor" else v
    )
    expected, actual = number(expected), number(actual)
    if type(expected) in (tuple, list) and type(actual) in (tuple, list):  # betas, by value
        return len(expected) == len(actual) and all(
            _same_value(e, a, strict) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, float) or isinstance(actual, float):
        try:
            return float(expected) == float(actual) or (
                np.isnan(float(expected)) and np.isnan(float(actual))
            )
        except (TypeError, ValueError):
            return False
    try:
        return bool(expected == actual)
    except Exception:  # a value whose comparison raises is not torch's value
        return False


def _options(
    target: Implementation | IsolatedImplementation | str | RunOptions, options: RunOptions | None
) -> tuple[Implementation | IsolatedImplementation, RunOptions]:
    """The implementation and the options of a replay."""
    if isinstance(target, RunOptions):
        return implementation(target), target
    options = options or RunOptions(target if isinstance(target, str) else target.name)
    return (implementation(options) if isinstance(target, str) else target), options


def replay(
    case: Case,
    target: Implementation | IsolatedImplementation | str | RunOptions,
    options: RunOptions | None = None,
    known: Sequence[dict[str, Any]] = (),
) -> Divergence | None:
    """Runs a recorded case; returns its first divergence (None: it conforms) that no
    failure already found (`known`, their keys) explains."""
    impl, options = _options(target, options)
    twins = Twins(case.setup, impl, options)
    for action in case.actions:
        divergence = twins.run(action)
        if divergence is not None and known:
            divergence = twins.package(
                [d for d in twins.found if not any(d.explained_by(key) for key in known)]
            )
        if divergence is not None:
            return divergence
    return None


@dataclass
class History:
    """A replayed case, action by action, up to its first divergence."""

    divergence: Divergence | None
    error_per_action: list[float]  # the largest ULP distance after each action; -1: unknown
    trajectory: dict[str, Any] | None  # the diverging element on both sides after each action


def history(
    case: Case,
    target: Implementation | IsolatedImplementation | str | RunOptions,
    options: RunOptions | None = None,
    element: Divergence | None = None,
) -> History:
    """Replays a case (synchronised before each action, so each error is that action's own)
    and records the largest ULP distance after each action and the values of `element`'s
    tensor element (a recorded divergence; default: the replay's own) on both sides."""
    impl, options = _options(target, options)
    twins = Twins(case.setup, impl, options)
    errors: list[float] = []
    seen: list[tuple[Observation | None, Observation | None]] = []
    divergence = None
    for action in case.actions:
        divergence = twins.run(action)
        if twins.setup_error.error is not None:
            return History(divergence, [-1.0], None)
        try:
            error = twins.error_profile()
            seen.append((twins._reference_now(), twins.side_obs))
        except Exception:  # whatever the implementation holds, the report is written
            error = -1.0
            seen.append((None, None))
        errors.append(error if np.isfinite(error) else -1.0)
        if divergence is not None:
            break
    return History(divergence, errors, _trajectory(element or divergence, seen))


def _trajectory(
    divergence: Divergence | None, seen: list[tuple[Observation | None, Observation | None]]
) -> dict[str, Any] | None:
    if divergence is None or divergence.parameter is None or divergence.mismatch is None:
        return None
    tensor = divergence.tensor
    if tensor in _NOT_ARRAYS - {"param"}:
        return None
    index = tuple(divergence.mismatch.index)
    parameter = divergence.parameter

    def element(observation: Observation | None) -> float | str | None:
        if observation is None:
            return None
        table = (
            observation.params
            if tensor == "param"
            else observation.grads
            if tensor == "grad"
            else observation.state.get(tensor, {})
        )
        array = table.get(parameter)
        if (
            array is None
            or array.ndim != len(index)
            or any(i >= n for i, n in zip(index, array.shape, strict=True))
        ):
            return None
        value = float(array[index])
        return value if np.isfinite(value) else str(value)

    return {
        "tensor": divergence.tensor,
        "parameter": divergence.parameter,
        "index": list(index),
        "expected": [element(r) for r, _ in seen],
        "actual": [element(s) for _, s in seen],
    }


# --- trajectory ----------------------------------------------------------------------------------


def trajectory(
    setup: Setup, impl: Implementation | str, steps: int = 50, family: str = "sgd"
) -> list[float]:
    """Trains both sides `steps` iterations (zero_grad, backward on batch i, step) WITHOUT
    synchronising and returns the drift: after each step, the largest ULP distance between any
    parameter of the two sides (inf once NaN or infinities differ). The local checks of `Twins`
    keep budgets from growing; this measures how far the differences carry over a run. The
    implementation runs in this process."""
    options = RunOptions(
        impl if isinstance(impl, str) else impl.name, family=family, isolation="none"
    )
    if isinstance(impl, str):
        built = implementation(options)
        assert not isinstance(built, IsolatedImplementation)  # isolation="none": in this process
        impl = built
    flags = PATH_FLAGS["for-loop"]
    torch_side = Side(reference(options), setup, flags)
    side = Side(impl, setup, flags)
    drift = []
    for batch in range(steps):
        for s in (torch_side, side):
            s.apply(Action("zero_grad", {"set_to_none": True}))
            s.apply(Action("backward", {"batch": batch}))
            s.apply(Action("step"))
        expected, actual = torch_side.observe(), side.observe()
        drift.append(
            max(
                (
                    float(
                        oracle.ulp_distance(actual.params[n], expected.params[n]).max(initial=0.0)
                    )
                    for n in expected.params
                ),
                default=0.0,
            )
        )
    return drift
