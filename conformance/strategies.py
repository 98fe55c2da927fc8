"""The Hypothesis strategies of a case, small and composable: model specs (from
`conformance.spec_strategies`), batches (by seed), hyperparameters over their full ranges with their
boundaries, parameter-group partitions with per-group overrides, and whole setups.

Hyperparameters are the family's (`conformance.families`: each with its strategies, boundaries
included), drawn swarm-style (`features`): which features are on first, then values for those
only, each feature off left out or passed as its default; and a 1-element tensor lr. A feature
an implementation declares absent is never drawn. torch's code path (for-loop, foreach, fused)
is not drawn: it is the run's chosen reference path.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

from conformance.families import OptimizerFamily
from conformance.families.sgd import SGD
from conformance.models import ModelSpec
from conformance.program import Group, Setup
from conformance.spec_strategies import (
    conv_specs,
    embedding_specs,
    graph_specs,
    mlp_specs,
    model_specs,
)

__all__ = [
    "batch_seeds",
    "constructions",
    "conv_specs",
    "embedding_specs",
    "features",
    "graph_specs",
    "group_options",
    "groups",
    "hyperparameter_change",
    "hyperparameters",
    "mlp_specs",
    "model_specs",
    "setups",
]


def batch_seeds() -> st.SearchStrategy[int]:
    """A batch is named by its seed (see `conformance.models.batch`); it shrinks to 0."""
    return st.integers(0, 2**16)


@st.composite
def features(
    draw: st.DrawFn, without: frozenset[str] = frozenset(), family: OptimizerFamily = SGD
) -> frozenset[str]:
    """The swarm: which of the family's optional hyperparameters a program turns on (never
    one declared absent; one that needs another only with it, and of those, one at most:
    SGD's dampening and nesterov, which torch rejects together)."""
    drawn = [h for h in family.drawn(without) if h.on is not None]
    on = {h.feature for h in drawn if h.needs is None and draw(st.booleans())}
    for parent in [h.feature for h in drawn if h.needs is None]:
        dependent = [h.feature for h in drawn if h.needs == parent]
        if parent in on and dependent and draw(st.booleans()):
            on.add(draw(st.sampled_from(dependent)))
    return frozenset(f for f in on if f is not None)


# Swarm testing: a feature is first drawn on or off, and only an "on" feature draws a value
# (never its default). Off, it is left out of the call or passed as its default. So each
# combination of features (momentum with weight decay and nesterov, say) is as likely as any
# other, instead of the rare product of independent draws, and a failure shrinks to the features
# it needs: "off" is the simplest draw.
@st.composite
def hyperparameters(
    draw: st.DrawFn, without: frozenset[str] = frozenset(), family: OptimizerFamily = SGD
) -> dict[str, Any]:
    """The constructor's arguments, valid for torch: lr, then the swarm's features with
    values, the others left out or passed as their defaults (a feature whose "off" is not
    the default, AdamW's weight decay, is passed off)."""
    on = draw(features(without, family))
    options: dict[str, Any] = {}
    for h in family.drawn(without):
        if h.name == "lr":
            options[h.name] = draw(h.values)
        elif h.on is None:
            if draw(st.booleans()):
                options[h.name] = draw(h.values)
        elif h.feature in on:
            options[h.name] = draw(h.on)
        elif h.off_value != h.default or draw(st.booleans()):
            options[h.name] = h.off_value
    return options


@st.composite
def group_options(
    draw: st.DrawFn,
    defaults: dict[str, Any],
    without: frozenset[str] = frozenset(),
    family: OptimizerFamily = SGD,
) -> dict[str, Any]:
    """Per-group overrides of any hyperparameter, valid once merged with the defaults."""
    drawn = {h.name: h for h in family.drawn(without)}
    names = draw(st.lists(st.sampled_from(sorted(drawn)), unique=True, max_size=3))
    options = {name: draw(drawn[name].values) for name in names}
    merged = family.valid({**defaults, **options})
    return {k: merged[k] for k in options}


@st.composite
def groups(
    draw: st.DrawFn,
    names: list[str],
    defaults: dict[str, Any],
    without: frozenset[str] = frozenset(),
    family: OptimizerFamily = SGD,
) -> tuple[Group, ...]:
    """1-4 groups over a permutation of the parameters; some may be left out (for
    add_param_group later), but at least one parameter is grouped."""
    order = draw(st.permutations(names))
    kept = draw(st.integers(1, len(order))) if draw(st.booleans()) else len(order)
    order = order[:kept]
    count = draw(st.integers(1, min(4, len(order))))
    cuts = (
        sorted(
            draw(st.sets(st.integers(1, len(order) - 1), min_size=count - 1, max_size=count - 1))
        )
        if count > 1
        else []
    )
    bounds = [0, *cuts, len(order)]
    return tuple(
        Group(tuple(order[a:b]), draw(group_options(defaults, without, family)))
        for a, b in itertools.pairwise(bounds)
    )


@st.composite
def setups(
    draw: st.DrawFn,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    without: frozenset[str] = frozenset(),
    family: OptimizerFamily = SGD,
) -> Setup:
    spec: ModelSpec = draw(model_specs())
    dtype = draw(st.sampled_from(dtypes))
    defaults = draw(hyperparameters(without, family))
    return Setup(
        spec,
        dtype,
        defaults,
        draw(groups(spec.parameter_names(), defaults, without, family)),
        tensor_lr="tensor-lr" not in without and draw(st.booleans()),
    )


@st.composite
def hyperparameter_change(
    draw: st.DrawFn,
    group: dict[str, Any],
    without: frozenset[str] = frozenset(),
    family: OptimizerFamily = SGD,
) -> tuple[str, Any]:
    """What a scheduler (or a user) changes mid-run: lr most often; a change torch's
    constructor would reject together with the group's other values (SGD's nesterov without
    momentum) is an lr change instead."""
    drawn = {h.name: h for h in family.drawn(without) if h.changeable}
    name = draw(st.sampled_from(["lr", *drawn]))
    value = draw(drawn[name].values)
    merged = family.valid({**group, name: value})
    if merged != {**group, name: value}:
        name, value = "lr", draw(drawn["lr"].values)
    return name, value


FLAWS = ("duplicate", "non-leaf", "non-tensor")


@st.composite
def constructions(
    draw: st.DrawFn, without: frozenset[str] = frozenset(), family: OptimizerFamily = SGD
) -> dict[str, Any]:
    """The arguments of a `construct` action: hyperparameters torch rejects (the family's
    `invalid` rows), valid ones at their edges, or valid ones with a parameter list torch
    rejects (a `flaw`)."""
    base = draw(hyperparameters(without, family))
    kind = draw(st.sampled_from(["invalid", "edge", "flaw"]))
    if kind == "flaw":
        return {"options": base, "flaw": draw(st.sampled_from(FLAWS))}
    table = family.invalid if kind == "invalid" else family.edges
    changes = draw(st.sampled_from([c for needs, c in table if not set(needs) & without]))
    options = {**base, **changes}
    if kind == "edge":
        options = family.valid(options)
    return {"options": options}
