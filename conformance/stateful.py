"""The Hypothesis state machine that drives `conformance.machine.Twins`, and the coverage
of a run.

`ConformanceMachine` is the `RuleBasedStateMachine`: its rules are what users do (never a
feature the implementation declared absent), each recorded as an `Action`, so a failure
shrinks to a short `Case` that can be stored and replayed; everything optimizer-specific
comes from the run's family. `machine(...)` configures a subclass for one run's round.
A new action is one `@rule` here that records it and one branch of `Side.apply` that runs it
(`conformance.implementations`).
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis import target
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from conformance import models, strategies
from conformance.actions import ACTIONS, counts_as, reached
from conformance.implementations import implementation
from conformance.machine import Divergence, DivergenceFound, Twins
from conformance.options import RunOptions
from conformance.program import Action, Case, Setup

# How many times a round re-runs a program that crashed or hung its implementation's process
# (each costs a restart or a timeout) before shrinking stops re-running such programs.
MAX_INCIDENTS = 8


# --- coverage ------------------------------------------------------------------------------------


@dataclass
class Coverage:
    """What the generated programs exercised (for the report): the setups' models and ops,
    the kinks their forwards hit (torch's values exactly at a break point or a tie), the
    hyperparameter features and pairs of features in play at each step of a group, the
    actions, and the steps with optimizer state (SGD's momentum buffer, Adam's moments) by
    how many came before."""

    programs: int = 0  # drawn; the runner moves those re-run while shrinking to `shrinking`
    actions: int = 0
    shrinking: int = 0
    action_kinds: Counter[str] = field(default_factory=Counter)
    model_kinds: Counter[str] = field(default_factory=Counter)
    losses: Counter[str] = field(default_factory=Counter)
    dtypes: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)  # programs whose model uses each op
    kinks: Counter[str] = field(default_factory=Counter)  # forwards that hit each kink
    possible_kinks: set[str] = field(default_factory=set)  # kinks some model could hit
    step_features: Counter[str] = field(default_factory=Counter)  # a group's steps, by feature
    feature_pairs: Counter[str] = field(default_factory=Counter)
    buffered_steps: Counter[str] = field(default_factory=Counter)  # first, second, later
    reached: set[str] = field(default_factory=set)  # of the family's reach_needs()
    hyperparameters: set[str] = field(default_factory=set)
    group_layouts: set[str] = field(default_factory=set)

    def add_setup(self, setup: Setup) -> None:
        self.programs += 1
        self.model_kinds[setup.model.kind] += 1
        self.losses[setup.model.loss] += 1
        self.dtypes[setup.dtype] += 1
        self.ops.update(models.ops_of(setup.model))
        self.possible_kinks |= models.kinks_of(setup.model)
        for group in setup.groups:
            merged = {**setup.defaults, **group.options}
            self.hyperparameters.add(repr(sorted(merged.items())) + repr(setup.tensor_lr))
        self.group_layouts.add(repr([len(g.params) for g in setup.groups]))

    def add_action(self, action: Action, twins: Twins, buffered: dict[str, int]) -> None:
        """Counts an action about to run on `twins`; before a step, what each group steps
        with, from torch's groups and state (`buffered`: the steps each parameter has had
        with its buffer in this program)."""
        self.actions += 1
        self.action_kinds[action.kind] += 1
        self.reached |= reached(action.kind, action.args)
        if not ACTIONS[action.kind].steps:
            return
        optimizer, names, family = twins.reference.optimizer, twins.reference.names, twins.family
        kept = family.state[0].name  # what a step with state holds (SGD's buffer)
        for group in optimizer.param_groups:
            stepped = [
                p
                for p in group["params"]
                if p.grad is not None or (action.kind == "step_closure" and p.requires_grad)
            ]
            if not stepped:
                continue
            on = set(family.in_play(group.get, hasattr(group["lr"], "item")))
            self.step_features.update(on or {"plain"})
            self.feature_pairs.update(
                "+".join(pair) for pair in itertools.combinations(sorted(on), 2)
            )
            self.reached |= on - family.second_step
            if family.state_needs is not None and family.state_needs not in on:
                continue
            for p in stepped:
                name = names[id(p)]
                held = optimizer.state.get(p, {}).get(kept) is not None
                count = buffered.get(name, 2) if held else 0  # loaded state: "later"
                buffered[name] = count + 1
                self.buffered_steps[("first", "second")[count] if count < 2 else "later"] += 1
                if count >= 1:
                    self.reached |= family.second_step & (on | {family.state_needs})

    def unreached(self, options: RunOptions) -> dict[str, str]:
        """Each declared feature the programs never reached, with what it needs (a feature
        that cannot be declared absent, SGD's momentum, is always declared)."""
        family = options.spec
        declared: Callable[[str], bool] = lambda f: (
            f not in family.features
            or (options.has(f) and (f != "cross-load" or options.has("state-dict")))
        )  # no state dicts, none to move
        return {
            feature: need
            for feature, need in family.reach_needs().items()
            if declared(feature) and feature not in self.reached
        }

    def merge(self, other: Coverage) -> None:
        self.programs += other.programs
        self.actions += other.actions
        self.shrinking += other.shrinking
        for mine, theirs in (
            (self.action_kinds, other.action_kinds),
            (self.model_kinds, other.model_kinds),
            (self.losses, other.losses),
            (self.dtypes, other.dtypes),
            (self.ops, other.ops),
            (self.kinks, other.kinks),
            (self.step_features, other.step_features),
            (self.feature_pairs, other.feature_pairs),
            (self.buffered_steps, other.buffered_steps),
        ):
            mine.update(theirs)
        self.possible_kinks |= other.possible_kinks
        self.reached |= other.reached
        self.hyperparameters |= other.hyperparameters
        self.group_layouts |= other.group_layouts

    def to_json(self, options: RunOptions | None = None) -> dict[str, Any]:
        counts: Callable[[Counter[str]], dict[str, int]] = lambda counter: dict(
            sorted(counter.items())
        )
        data = {
            "programs": self.programs,
            "actions": self.actions,
            "programs_rerun_while_shrinking": self.shrinking,
            "action_kinds": counts(self.action_kinds),
            "model_kinds": counts(self.model_kinds),
            "losses": counts(self.losses),
            "dtypes": counts(self.dtypes),
            "ops": counts(self.ops),
            "kinks": {kink: self.kinks[kink] for kink in sorted(self.possible_kinks)},
            "step_features": counts(self.step_features),
            "feature_pairs": counts(self.feature_pairs),
            "buffered_steps": {k: self.buffered_steps[k] for k in ("first", "second", "later")},
            "distinct_hyperparameter_configurations": len(self.hyperparameters),
            "distinct_group_layouts": len(self.group_layouts),
        }
        if options is not None:
            data["unreached"] = self.unreached(options)
        return data


# --- the state machine ---------------------------------------------------------------------------


class ConformanceMachine(RuleBasedStateMachine):
    """Rules are what users do; after each, every observable must match torch (see Twins).
    A feature the options declare absent is never exercised. Configure a subclass with
    `machine(...)`."""

    options: ClassVar[RunOptions] = RunOptions()
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float64")
    coverage: ClassVar[Coverage]
    on_program: ClassVar[Callable[[Coverage], None] | None] = None  # progress reporting
    # keys of the failures already found: a program that hits one ends quietly
    known: ClassVar[tuple[dict[str, Any], ...]] = ()
    first_failure: ClassVar[tuple[int, float] | None] = None  # programs, perf_counter
    # the implementation's process lost (exit, signal, hang): how often in this round, and
    # the shortest case that showed it; past MAX_INCIDENTS, shrinking stops re-running it
    incidents: ClassVar[int] = 0
    incident: ClassVar[tuple[Divergence, Case] | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.twins: Twins | None = None
        self.done = False  # the program hit a known failure: its remaining actions are skipped
        self.buffered: dict[str, int] = {}  # steps each parameter had with its buffer

    def teardown(self) -> None:
        """Guides Hypothesis towards programs that come close to their error budget."""
        if self.twins is not None:
            target(self.twins.worst, label="ULP distance / budget")

    def _has(self, feature: str) -> bool:
        return type(self).options.has(feature)

    @initialize(data=st.data())
    def build(self, data: st.DataObject) -> None:
        cls = type(self)
        setup = data.draw(
            strategies.setups(cls.dtypes, cls.options.excluded, cls.options.spec), label="setup"
        )
        self.twins = Twins(setup, implementation(cls.options), cls.options)
        self.twins.reference.model.kinks = cls.coverage.kinks
        cls.coverage.add_setup(setup)
        if cls.on_program is not None:
            cls.on_program(cls.coverage)

    def _do(self, action: Action) -> None:
        assert self.twins is not None
        if self.done:
            return
        cls = type(self)
        if cls.incidents >= MAX_INCIDENTS and cls.incident is not None:
            # Each attempt to shrink a crash or a hang costs a restart or a timeout: past
            # the bound, a program fails as the shortest case seen at the same kind of
            # action, without running, so Hypothesis ends with that (genuine) case.
            incident, case = cls.incident
            if counts_as(action.kind) == incident.key["action"]:
                self._fail(incident, case)
            return
        cls.coverage.add_action(action, self.twins, self.buffered)
        divergence = self.twins.run(action)
        if divergence is None:
            return
        if cls.known:  # the first divergence no failure found so far explains
            divergence = self.twins.package(
                [d for d in self.twins.found if not any(d.explained_by(key) for key in cls.known)]
            )
        if divergence is None:
            self.done = True
            return
        if cls.first_failure is None:
            cls.first_failure = (cls.coverage.programs, time.perf_counter())
        case = self.twins.case
        if divergence.tensor == "process":
            cls.incidents += 1
            if cls.incident is None or len(case.actions) < len(cls.incident[1].actions):
                cls.incident = (divergence, case)
        self._fail(divergence, case)

    @staticmethod
    def _fail(divergence: Divergence, case: Case) -> None:
        raise failure_class(divergence.key)(divergence, case)

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

    @rule(data=st.data())
    def zero_grad(self, data: st.DataObject) -> None:
        set_to_none = (
            data.draw(st.booleans(), label="set_to_none")
            if self._has("set-to-none-false")
            else True
        )
        self._do(Action("zero_grad", {"set_to_none": set_to_none}))

    @rule()
    def step(self) -> None:
        self._do(Action("step"))

    @precondition(lambda self: self._has("closure"))
    @rule(batch=strategies.batch_seeds())
    def step_closure(self, batch: int) -> None:
        self._do(Action("step_closure", {"batch": batch}))

    @precondition(lambda self: self._has("set-hyperparameter"))
    @rule(data=st.data())
    def set_hyperparameter(self, data: st.DataObject) -> None:
        assert self.twins is not None
        groups = self.twins.reference.optimizer.param_groups
        index = data.draw(st.integers(0, len(groups) - 1), label="group")
        group = groups[index]
        name, value = data.draw(
            strategies.hyperparameter_change(
                {k: (float(v) if k == "lr" else v) for k, v in group.items() if k != "params"},
                type(self).options.excluded,
                type(self).options.spec,
            ),
            label="change",
        )
        self._do(Action("set_hyperparameter", {"group": index, "name": name, "value": value}))

    def _ungrouped(self) -> list[str]:
        assert self.twins is not None
        grouped = {id(p) for g in self.twins.reference.optimizer.param_groups for p in g["params"]}
        return [n for n, p in self.twins.reference.params.items() if id(p) not in grouped]

    @precondition(
        lambda self: (
            self.twins is not None and self._has("add-param-group") and bool(self._ungrouped())
        )
    )
    @rule(data=st.data())
    def add_param_group(self, data: st.DataObject) -> None:
        free = self._ungrouped()
        names = data.draw(st.lists(st.sampled_from(free), min_size=1, unique=True), label="params")
        options = data.draw(
            strategies.group_options(
                self._setup.defaults, type(self).options.excluded, type(self).options.spec
            ),
            label="options",
        )
        self._do(Action("add_param_group", {"params": names, "options": options}))

    @precondition(
        lambda self: (
            self.twins is not None
            and self._has("add-param-group")
            and self._has("invalid-hyperparameters")
        )
    )
    @rule(data=st.data())
    def add_flawed_param_group(self, data: st.DataObject) -> None:
        free = self._ungrouped()
        names = (
            data.draw(st.lists(st.sampled_from(free), unique=True), label="params") if free else []
        )
        flaw = data.draw(st.sampled_from(strategies.FLAWS), label="flaw")
        self._do(Action("add_param_group", {"params": names, "options": {}, "flaw": flaw}))

    @precondition(lambda self: self._has("invalid-hyperparameters"))
    @rule(data=st.data())
    def construct(self, data: st.DataObject) -> None:
        arguments = data.draw(
            strategies.constructions(type(self).options.excluded, type(self).options.spec),
            label="construct",
        )
        self._do(Action("construct", arguments))

    @rule(data=st.data(), freeze=st.booleans())
    def set_requires_grad(self, data: st.DataObject, freeze: bool) -> None:
        name = data.draw(st.sampled_from(self._setup.model.parameter_names()), label="param")
        self._do(Action("freeze" if freeze else "unfreeze", {"param": name}))

    @precondition(lambda self: self._has("state-dict"))
    @rule(data=st.data())
    def save_load(self, data: st.DataObject) -> None:
        sources = ["self", "reference", "implementation"] if self._has("cross-load") else ["self"]
        self._do(
            Action("save_load", {"source": data.draw(st.sampled_from(sources), label="source")})
        )


def failure_class(key: dict[str, Any]) -> type[DivergenceFound]:
    """One exception class per differing tensor, kind of difference and kind of action:
    Hypothesis tells failures
    apart by their exception's class, so each is shrunk on its own and a shrunk case keeps
    the tensor and action it was found with, while its hyperparameters shrink freely (to the
    features the failure needs)."""
    return _failure_class(key["tensor"], key["difference"], key["action"])


@functools.cache
def _failure_class(tensor: str, difference: str, action: str) -> type[DivergenceFound]:
    return type(f"Divergence[{tensor} {difference}@{action}]", (DivergenceFound,), {})


def machine(
    options: RunOptions | str = "refimpl",
    dtypes: tuple[str, ...] = ("float32", "float64"),
    known: tuple[dict[str, Any], ...] = (),
    round_: int = 0,
) -> type[ConformanceMachine]:
    """A state machine class checking `options.implementation` against torch; programs that
    hit a failure a `known` key explains end quietly. Each round of a run has its own entry
    in Hypothesis's example database."""
    options = options if isinstance(options, RunOptions) else RunOptions(options)
    implementation(options)  # fail early, with ImplementationError, on a bad module:Class
    settings_name = json.dumps(options.to_json(), sort_keys=True)
    name = f"Conformance[{settings_name}, {'+'.join(dtypes)}, round {round_}]"
    return type(
        name,
        (ConformanceMachine,),
        {
            "options": options,
            "dtypes": dtypes,
            "coverage": Coverage(),
            "known": known,
            "first_failure": None,
            "incidents": 0,
            "incident": None,
        },
    )
