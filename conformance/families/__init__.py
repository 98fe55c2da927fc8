"""Optimizer families: everything the harness knows about one torch optimizer, in one place.

An `OptimizerFamily` declares the torch class that is the reference and the refimpl class that
reproduces it; its hyperparameters (each with the strategies that draw it, its default and the
`--without` feature that removes it) and the validity rule torch's constructor enforces; the
state it keeps per parameter and how each entry is compared; the error model of one step
(the ULP budgets an implementation that rounds differently is allowed); the invalid and edge
constructions torch's validation is checked with; the classic configurations replayed first
in every run; and the correct references and mutants its self-check runs. The harness reads
only the family: a new hyperparameter is one `Hyperparameter` in its family's module, and a
new family is one module here plus its entry in `FAMILIES` (see README, "Add a family").

The features every family shares (actions a user may never call) are `ACTION_FEATURES`;
a family adds those of its hyperparameters and "tensor-lr".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # the CLI reads FAMILY_NAMES before it knows the [conformance] extra is there
    from hypothesis import strategies as st

# What an implementation may declare it does not do (`--without`) whatever its family, each
# with what is then left unchecked.
ACTION_FEATURES: dict[str, str] = {
    "closure": "step(closure) is never called",
    "add-param-group": "add_param_group is never called",
    "set-hyperparameter": "a group's hyperparameters are never changed between steps",
    "state-dict": "state_dict() and load_state_dict() are never called",
    "cross-load": "state dicts are never moved between torch and the implementation",
    "set-to-none-false": "zero_grad(set_to_none=False) is never called",
    "invalid-hyperparameters": "invalid hyperparameters and parameters are never passed "
    "(validation is not checked)",
}
# What a run must reach before the verdict on each action feature means anything.
ACTION_NEEDS: dict[str, str] = {
    "closure": "step(closure)",
    "add-param-group": "add_param_group",
    "set-hyperparameter": "a hyperparameter changed",
    "state-dict": "a state-dict round trip",
    "cross-load": "a state dict moved across",
    "set-to-none-false": "zero_grad(set_to_none=False)",
    "invalid-hyperparameters": "a construction with invalid arguments",
}
TENSOR_LR = "a learning rate given as a 1-element tensor is never drawn"
_DEFAULT: Any = object()


@dataclass(frozen=True)
class Hyperparameter:
    """One constructor argument of the family's optimizer.

    `values` draws any value torch accepts (boundaries included): group overrides and
    mid-run changes. Swarm testing (`conformance.strategies.features`) first draws which
    features a program turns on: a hyperparameter with `on` is a feature, drawn from `on`
    (never its default) when on and left out or passed as `default` when off; one without
    `on` (lr, betas) is drawn from `values` in every program. `feature` names it in failure
    keys, coverage and `--without` (where `absent` says what is then left unchecked; None:
    it cannot be declared absent). `needs` is the feature that must be on for this one to
    be (dampening needs momentum)."""

    name: str
    default: Any
    values: st.SearchStrategy[Any]
    on: st.SearchStrategy[Any] | None = None
    feature: str | None = None
    absent: str | None = None
    needs: str | None = None
    off: Any = _DEFAULT  # the value that turns the feature off, where not the default
    # (AdamW decays by default: off, weight_decay=0 is passed)
    # False: never changed between steps (turning Adam's amsgrad on over state kept without
    # it is no use torch supports: its step raises KeyError, an artifact, not a contract)
    changeable: bool = True

    @property
    def off_value(self) -> Any:
        return self.default if self.off is _DEFAULT else self.off

    def is_on(self, value: Any) -> bool:
        """Whether a group's value turns the feature on (a value other than `off`)."""
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "tensor":
            value = value[1]
        return value is not None and bool(value != self.off_value)


Comparison = Literal["step", "count"]


@dataclass(frozen=True)
class StateKey:
    """An entry of `optimizer.state[p]`: "step" values move in a step and are judged under the
    run's mode (bitwise, or within the step's error model); a "count" (Adam's `step`) is
    compared by value (strict: as torch stores it, dtype included)."""

    name: str
    comparison: Comparison = "step"


# (features needed, constructor arguments): a row of torch's validation, or a valid edge.
Construction = tuple[tuple[str, ...], dict[str, Any]]
# (name, features needed, constructor arguments, tensor lr): a classic configuration.
Configuration = tuple[str, tuple[str, ...], dict[str, Any], bool]
# The values one step starts from: "param", "grad" and each state key (None: not held).
Before = Mapping[str, np.ndarray | None]


@dataclass(frozen=True)
class OptimizerFamily:
    """Everything optimizer-specific the harness needs (see the module docstring)."""

    name: str  # "sgd": what --family takes
    torch_class: str  # "torch.optim:SGD": the reference
    refimpl_class: str  # "refimpl.optim:SGD": what `--optimizer refimpl` runs
    hyperparameters: tuple[Hyperparameter, ...]
    state: tuple[StateKey, ...]  # the first is the one the coverage counts steps with
    # (name, value) -> a valid merged group: torch's constructor's cross-argument rules
    valid: Callable[[dict[str, Any]], dict[str, Any]]
    # allowed absolute errors of one step (keys "param" and the step state keys; None: must
    # not move), from torch's values before it and the group's hyperparameters
    step_budget: Callable[[Before, Callable[[str], Any]], dict[str, np.ndarray | None]]
    invalid: tuple[Construction, ...]  # rows of torch's validation (ValueError)
    edges: tuple[Construction, ...]  # valid values at the edges
    configurations: tuple[Configuration, ...]  # replayed first in every run
    # a small valid construction: the up-front check that a class constructs like torch's
    example: dict[str, Any] = field(default_factory=lambda: {"lr": 0.1})
    # group keys that only pick torch's code path (compared, under the semantic contract,
    # only where the implementation was given them and stores them)
    implementation_flags: tuple[str, ...] = ("foreach", "fused", "differentiable", "capturable")
    # the state a step holds once a feature is on (SGD's buffer needs momentum); None: always
    state_needs: str | None = None
    # features torch rejects on a reference path, never drawn there: path -> {feature: why}
    unsupported: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # features whose effect first shows at the second step with state (dampening)
    second_step: frozenset[str] = frozenset()
    # what reaching each feature needs, where not "a step with <feature>"
    needs: dict[str, str] = field(default_factory=dict)
    # a step that writes into `.grad` on torch's reference path, and the value it writes
    # with its budget: (grad before, state after, step budgets, group value) -> (value,
    # budget). SGD's foreach nesterov; None for families whose steps never touch `.grad`.
    writes_grad: Callable[[Callable[[str], Any]], bool] | None = None
    written_grad: (
        Callable[
            [np.ndarray, Before, Mapping[str, np.ndarray | None], Callable[[str], Any]],
            tuple[np.ndarray, np.ndarray],
        ]
        | None
    ) = None
    # The self-check, as "module:NAME" targets loaded when asked for (they import torch):
    correct: str = ""  # a tuple of torch-derived optimizers that must pass
    references: str = ""  # a dict: optimizer written from the docs -> features it lacks
    mutants: str = ""  # a tuple of conformance.mutants.Mutant: wrong optimizers to kill

    @property
    def torch_name(self) -> str:
        """torch.optim.SGD, as reports and messages name it."""
        return self.torch_class.replace(":", ".")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hyperparameters)

    def hyperparameter(self, name: str) -> Hyperparameter:
        return next(h for h in self.hyperparameters if h.name == name)

    @property
    def features(self) -> dict[str, str]:
        """Every feature `--without` takes for this family, with what is left unchecked."""
        own = {
            h.feature: h.absent
            for h in self.hyperparameters
            if h.feature is not None and h.absent is not None
        }
        return {**own, "tensor-lr": TENSOR_LR, **ACTION_FEATURES}

    def argument_of(self, feature: str) -> str | None:
        """The constructor argument a declared-absent feature removes, if it is one."""
        return next(
            (h.name for h in self.hyperparameters if h.feature == feature and h.absent is not None),
            None,
        )

    def drawn(self, without: frozenset[str]) -> list[Hyperparameter]:
        """The hyperparameters programs pass: all but those declared absent."""
        return [h for h in self.hyperparameters if h.absent is None or h.feature not in without]

    def dependents(self, name: str) -> tuple[str, ...]:
        """The hyperparameters that need `name`'s feature (dropped with it)."""
        feature = self.hyperparameter(name).feature
        return tuple(
            h.name for h in self.hyperparameters if feature is not None and h.needs == feature
        )

    def in_play(self, value: Callable[[str], Any], tensor_lr: bool) -> list[str]:
        """The features on in a group (`value(name)`: its value, None where it has none)."""
        on = {
            h.feature
            for h in self.hyperparameters
            if h.feature is not None and h.is_on(value(h.name))
        }
        on -= {h.feature for h in self.hyperparameters if h.needs and h.needs not in on}
        features = [h.feature for h in self.hyperparameters if h.feature in on]
        return [*features, *(["tensor-lr"] if tensor_lr else [])]

    def reach_needs(self) -> dict[str, str]:
        """What a run must reach before each feature's verdict means anything."""
        steps = {
            h.feature: f"a step with {h.feature}"
            for h in self.hyperparameters
            if h.feature is not None
        }
        return {**steps, "tensor-lr": "a step with a tensor lr", **self.needs, **ACTION_NEEDS}

    def correct_optimizers(self) -> tuple[str, ...]:
        return tuple(load(self.correct)) if self.correct else ()

    def reference_optimizers(self) -> dict[str, frozenset[str]]:
        return dict(load(self.references)) if self.references else {}

    def mutant_optimizers(self) -> tuple[Any, ...]:
        return tuple(load(self.mutants)) if self.mutants else ()

    def comparison(self, key: str) -> Comparison:
        return next(s.comparison for s in self.state if s.name == key)


def load(target: str) -> Any:
    """The object named by "package.module:Name" (Name may be dotted: "module:Class.attr")."""
    module_name, sep, qualname = target.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"expected 'module:Name', got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _families() -> dict[str, OptimizerFamily]:
    from conformance.families import adam, sgd

    return {"sgd": sgd.SGD, "adam": adam.ADAM, "adamw": adam.ADAMW}


FAMILY_NAMES = ("sgd", "adam", "adamw")


def get(name: str) -> OptimizerFamily:
    """The family `--family` names; ValueError for another name."""
    if name not in FAMILY_NAMES:
        raise ValueError(f"unknown family {name!r}; choose from {', '.join(FAMILY_NAMES)}")
    return _families()[name]
