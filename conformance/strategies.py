"""The Hypothesis strategies of a case, small and composable: model specs (from
`conformance.spec_strategies`), batches (by seed), hyperparameters over their full ranges with their
boundaries, parameter-group partitions with per-group overrides, and whole setups.

Hyperparameters are drawn swarm-style (`features`): which features are on first, then values
for those only. Boundaries are drawn on purpose, because they are where two formulas agree or
a branch flips: lr 0 and large, momentum 1, dampening 1, a 1-element tensor lr, maximize,
nesterov (only where torch accepts it: momentum > 0 and dampening 0), and each feature off,
left out or passed as its default. A feature an
implementation declares absent (`conformance.options.FEATURES`) is never drawn. torch's code
path (for-loop, foreach, fused) is not drawn: it is the run's chosen reference path.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

from conformance.models import ModelSpec
from conformance.options import ARGUMENT_OF
from conformance.program import Group, Setup
from conformance.spec_strategies import (
    conv_specs,
    embedding_specs,
    graph_specs,
    mlp_specs,
    model_specs,
)

__all__ = ["batch_seeds", "constructions", "conv_specs", "embedding_specs", "features",
           "graph_specs", "group_options", "groups", "hyperparameter_change", "hyperparameters",
           "mlp_specs", "model_specs", "setups"]

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


def _names(without: frozenset[str]) -> list[str]:
    """The hyperparameters drawn: lr and momentum always, the others unless declared absent
    (then they are never passed, and torch runs with its default)."""
    absent = {ARGUMENT_OF[f] for f in without if f in ARGUMENT_OF}
    return [n for n in VALUES if n not in absent]


# Swarm testing: a feature is first drawn on or off, and only an "on" feature draws a value
# (never its default). Off, it is left out of the call or passed as its default. So each
# combination of features (momentum with weight decay and nesterov, say) is as likely as any
# other, instead of the rare product of independent draws, and a failure shrinks to the features
# it needs: "off" is the simplest draw.
ON: dict[str, st.SearchStrategy[Any]] = {
    "momentum": st.sampled_from([0.9, 0.5, 0.99, 1.0]) | st.floats(0.0, 1.5, exclude_min=True),
    "dampening": st.sampled_from([0.5, 1.0, 0.1]) | st.floats(0.0, 1.0, exclude_min=True),
    "weight_decay": st.sampled_from([0.01, 1e-4, 0.5]) | st.floats(0.0, 2.0, exclude_min=True),
    "maximize": st.just(True), "nesterov": st.just(True),
}
OFF: dict[str, Any] = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                       "maximize": False, "nesterov": False}


@st.composite
def features(draw: st.DrawFn, without: frozenset[str] = frozenset()) -> frozenset[str]:
    """The swarm: which of SGD's optional hyperparameters a program turns on (never one
    declared absent; dampening and nesterov only with momentum, and not both: torch rejects
    nesterov with dampening)."""
    names = [n for n in _names(without) if n != "lr"]
    on = {n for n in names if n not in ("dampening", "nesterov") and draw(st.booleans())}
    if "momentum" in on:
        dependent = [n for n in ("dampening", "nesterov") if n in names]
        if dependent and draw(st.booleans()):
            on.add(draw(st.sampled_from(dependent)))
    return frozenset(on)


@st.composite
def hyperparameters(draw: st.DrawFn, without: frozenset[str] = frozenset()) -> dict[str, Any]:
    """SGD's constructor arguments, valid for torch: lr, then the swarm's features with
    values, the others left out or at their defaults."""
    on = draw(features(without))
    options: dict[str, Any] = {"lr": draw(LR)}
    for name in _names(without):
        if name in on:
            options[name] = draw(ON[name])
        elif name != "lr" and draw(st.booleans()):
            options[name] = OFF[name]
    return options


@st.composite
def group_options(draw: st.DrawFn, defaults: dict[str, Any],
                  without: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Per-group overrides of any hyperparameter, valid once merged with the defaults."""
    names = draw(st.lists(st.sampled_from(sorted(_names(without))), unique=True, max_size=3))
    options = {name: draw(VALUES[name]) for name in names}
    merged = _valid({**defaults, **options})
    return {k: merged[k] for k in options}


@st.composite
def groups(draw: st.DrawFn, names: list[str], defaults: dict[str, Any],
           without: frozenset[str] = frozenset()) -> tuple[Group, ...]:
    """1-4 groups over a permutation of the parameters; some may be left out (for
    add_param_group later), but at least one parameter is grouped."""
    order = draw(st.permutations(names))
    kept = draw(st.integers(1, len(order))) if draw(st.booleans()) else len(order)
    order = order[:kept]
    count = draw(st.integers(1, min(4, len(order))))
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1), min_size=count - 1,
                               max_size=count - 1))) if count > 1 else []
    bounds = [0, *cuts, len(order)]
    return tuple(Group(tuple(order[a:b]), draw(group_options(defaults, without)))
                 for a, b in itertools.pairwise(bounds))


@st.composite
def setups(draw: st.DrawFn, dtypes: tuple[str, ...] = ("float32", "float64"),
           without: frozenset[str] = frozenset()) -> Setup:
    spec: ModelSpec = draw(model_specs())
    dtype = draw(st.sampled_from(dtypes))
    defaults = draw(hyperparameters(without))
    return Setup(spec, dtype, defaults, draw(groups(spec.parameter_names(), defaults, without)),
                 tensor_lr="tensor-lr" not in without and draw(st.booleans()))


@st.composite
def hyperparameter_change(draw: st.DrawFn, group: dict[str, Any],
                          without: frozenset[str] = frozenset()) -> tuple[str, Any]:
    """What a scheduler (or a user) changes mid-run: lr most often; nesterov stays valid."""
    name = draw(st.sampled_from(["lr", *_names(without)]))
    value = draw(VALUES[name])
    merged = _valid({**group, name: value})
    if merged != {**group, name: value}:  # the change would make nesterov invalid
        name, value = "lr", draw(LR)
    return name, value


# Hyperparameters torch rejects (ValueError), each with the features it needs.
INVALID: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    ((), {"lr": -0.1}),
    ((), {"lr": -1e-9}),
    ((), {"momentum": -0.5}),
    (("weight-decay",), {"weight_decay": -1e-3}),
    (("nesterov",), {"nesterov": True, "momentum": 0.0}),
    (("nesterov", "dampening"), {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
    (("tensor-lr",), {"lr": [0.1, 0.1]}),  # a tensor lr of two elements
]
# Valid values at the edges, which an optimizer must accept.
EDGES: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    ((), {"lr": 0.0}),
    ((), {"momentum": 0.0}),
    (("dampening",), {"momentum": 0.9, "dampening": 1.0}),
    (("weight-decay",), {"weight_decay": 0.0}),
]
FLAWS = ("duplicate", "non-leaf", "non-tensor")


@st.composite
def constructions(draw: st.DrawFn, without: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The arguments of a `construct` action: hyperparameters torch rejects, valid ones at
    their edges, or valid ones with a parameter list torch rejects (a `flaw`)."""
    base = draw(hyperparameters(without))
    kind = draw(st.sampled_from(["invalid", "edge", "flaw"]))
    if kind == "flaw":
        return {"options": base, "flaw": draw(st.sampled_from(FLAWS))}
    table = INVALID if kind == "invalid" else EDGES
    changes = draw(st.sampled_from([c for needs, c in table if not set(needs) & without]))
    options = {**base, **changes}
    if "nesterov" in options and kind == "edge":
        options = _valid(options)
    return {"options": options}
