"""Every Hypothesis strategy of the suite, small and composable: model specs (from
`conformance.models`), batches (by seed), hyperparameters over their full ranges with their
boundaries, parameter-group partitions with per-group overrides, and whole setups.

Boundaries are drawn on purpose, because they are where two formulas agree or a branch flips:
lr 0 and large, momentum 0, dampening 0 and 1, weight_decay 0, a 1-element tensor lr, maximize,
nesterov (only where torch accepts it: momentum > 0 and dampening 0). torch's `fused=True` is
not drawn: torch 2.13's fused SGD raises TypeError when a group's parameters get their first
gradient at different steps, which these programs do all the time.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

from conformance.models import ModelSpec, model_specs
from conformance.program import Group, Setup

__all__ = ["batch_seeds", "group_options", "groups", "hyperparameter_change",
           "hyperparameters", "model_specs", "setups"]

LR = st.sampled_from([0.0, 1e-3, 0.01, 0.1, 0.5, 1.0, 10.0]) | st.floats(0.0, 10.0)
MOMENTUM = st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]) | st.floats(0.0, 1.5)
DAMPENING = st.sampled_from([0.0, 1.0, 0.1, 0.5]) | st.floats(0.0, 1.0)
WEIGHT_DECAY = st.sampled_from([0.0, 1e-4, 0.01, 0.5]) | st.floats(0.0, 2.0)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "lr": LR, "momentum": MOMENTUM, "dampening": DAMPENING, "weight_decay": WEIGHT_DECAY,
    "maximize": st.booleans(), "nesterov": st.booleans(),
}


def batch_seeds() -> st.SearchStrategy[int]:
    """A batch is named by its seed (see `conformance.models.batch`); it shrinks to 0."""
    return st.integers(0, 2**16)


def _valid(options: dict[str, Any]) -> dict[str, Any]:
    """nesterov only where torch's constructor accepts it."""
    if options.get("nesterov") and (options.get("momentum", 0) <= 0
                                    or options.get("dampening", 0) != 0):
        options = {**options, "nesterov": False}
    return options


@st.composite
def hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    """SGD's constructor arguments (foreach drawn too: torch's for-loop and foreach paths)."""
    options = {name: draw(VALUES[name]) for name in
               ("lr", "momentum", "dampening", "weight_decay", "maximize")}
    options["nesterov"] = options["momentum"] > 0 and options["dampening"] == 0 and \
        draw(st.booleans())
    options["foreach"] = draw(st.sampled_from([None, False, True]))
    return options


@st.composite
def group_options(draw: st.DrawFn, defaults: dict[str, Any]) -> dict[str, Any]:
    """Per-group overrides of any hyperparameter, valid once merged with the defaults."""
    names = draw(st.lists(st.sampled_from(sorted(VALUES)), unique=True, max_size=3))
    options = {name: draw(VALUES[name]) for name in names}
    merged = _valid({**defaults, **options})
    return {k: merged[k] for k in options}


@st.composite
def groups(draw: st.DrawFn, names: list[str], defaults: dict[str, Any]) -> tuple[Group, ...]:
    """1-4 groups over a permutation of the parameters; some may be left out (for
    add_param_group later), but at least one parameter is grouped."""
    order = draw(st.permutations(names))
    kept = draw(st.integers(1, len(order))) if draw(st.booleans()) else len(order)
    order = order[:kept]
    count = draw(st.integers(1, min(4, len(order))))
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1), min_size=count - 1,
                               max_size=count - 1))) if count > 1 else []
    bounds = [0, *cuts, len(order)]
    return tuple(Group(tuple(order[a:b]), draw(group_options(defaults)))
                 for a, b in itertools.pairwise(bounds))


@st.composite
def setups(draw: st.DrawFn, dtypes: tuple[str, ...] = ("float32", "float64")) -> Setup:
    spec: ModelSpec = draw(model_specs())
    dtype = draw(st.sampled_from(dtypes))
    defaults = draw(hyperparameters())
    return Setup(spec, dtype, defaults, draw(groups(spec.parameter_names(), defaults)),
                 tensor_lr=draw(st.booleans()))


@st.composite
def hyperparameter_change(draw: st.DrawFn, group: dict[str, Any]) -> tuple[str, Any]:
    """What a scheduler (or a user) changes mid-run: lr most often; nesterov stays valid."""
    name = draw(st.sampled_from(["lr", "lr", "momentum", "dampening", "weight_decay",
                                 "maximize", "nesterov"]))
    value = draw(VALUES[name])
    merged = _valid({**group, name: value})
    if merged != {**group, name: value}:  # the change would make nesterov invalid
        name, value = "lr", draw(LR)
    return name, value
