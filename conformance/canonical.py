"""The canonical configurations, replayed before any drawn program in every profile.

PyTorch tests its optimizers on a fixed table of classic configurations; most wrong optimizers
fail one of them within a few steps. Here each configuration of the run's family
(`OptimizerFamily.configurations`) runs the same short program on a small two-layer model
(`program`: every kind of action once, around steps with state), so
whatever the table can show shows in the first few dozen programs, whatever the seed. A
configuration that needs a feature the implementation declared absent is left out.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from conformance.models import Layer, ModelSpec, build, ops_of
from conformance.options import RunOptions
from conformance.program import Action, Case, Group, Setup

LR = 0.1

MODEL = ModelSpec(
    kind="mlp",
    input_shape=(3, 4),
    loss="mse",
    seed=20261130,
    layers=(Layer("linear", 5), Layer("tanh"), Layer("linear", 2)),
)
LATE = "2.bias"  # left out of the group, for add_param_group


def program(options: RunOptions) -> tuple[Action, ...]:
    """Every kind of action once, around steps with a buffer: the first, the second (after a new
    parameter group and a save and load), a step on zero gradients, a step on no gradients,
    torch's state loaded into it, a later step after an lr change and one with a closure;
    then a construction breaking each of torch's rules, and some at their edges. Actions
    that need a feature declared absent are left out."""
    has = options.has
    plan: list[tuple[str | None, Action]] = [
        (None, Action("backward", {"batch": 0})),
        (None, Action("step")),
        ("add-param-group", Action("add_param_group", {"params": [LATE], "options": {}})),
        (None, Action("zero_grad", {"set_to_none": True})),
        (None, Action("backward", {"batch": 1})),
        ("state-dict", Action("save_load", {"source": "self"})),
        (None, Action("step")),
        ("set-to-none-false", Action("zero_grad", {"set_to_none": False})),
        ("set-to-none-false", Action("step")),
        (None, Action("zero_grad", {"set_to_none": True})),
        (None, Action("step")),
        ("state-dict+cross-load", Action("save_load", {"source": "reference"})),
        (None, Action("backward", {"batch": 2})),
        (
            "set-hyperparameter",
            Action("set_hyperparameter", {"group": 0, "name": "lr", "value": LR / 2}),
        ),
        (None, Action("step")),
        ("closure", Action("step_closure", {"batch": 3})),
    ]
    actions = [action for needs, action in plan if needs is None or all(map(has, needs.split("+")))]
    if has("invalid-hyperparameters"):  # every rule of torch's validation, and its edges
        family = options.spec
        actions += [
            Action("construct", {"options": {"lr": LR, **change}})
            for needs, change in family.invalid + family.edges
            if all(map(has, needs))
        ]
    return tuple(actions)


# Drawn models that together run every op refimpl implements and hit every kink on their first
# batch in both dtypes (scripts/pick_canonical_models.py picked them; tests/test_canonical.py
# checks they still do): with the family's `example` arguments (SGD's momentum), a backward
# and a step each, so that each wrong
# derivative rule shows here too.
MODELS_FILE = Path(__file__).with_name("canonical_models.json")
MODELS = [
    ModelSpec.from_json(data)
    for data in json.loads(MODELS_FILE.read_text(encoding="utf-8"))["models"]
]


def reach(spec: ModelSpec) -> frozenset[str]:
    """What a model shows on its first batch, in both dtypes: the ops it runs, the kinks
    torch's forward hits, and each wrong derivative rule of the catalogue that changes a
    gradient refimpl computes ("mutant:<name>": a kink hit where the gradient goes on to a
    parameter, not just hit)."""
    from conformance import mutants

    def gradients(dtype: str) -> list[np.ndarray]:
        model = build(spec, dtype, "refimpl")
        model.loss(0).backward()
        return [p.grad.numpy().copy() for p in model.parameters.values() if p.grad is not None]

    found: list[set[str]] = []
    for dtype in ("float32", "float64"):
        model = build(spec, dtype, "torch")
        model.kinks = Counter()
        model.loss(0)
        found.append({kink for kink, count in model.kinks.items() if count})
        baseline = gradients(dtype)
        for mutant in mutants.AUTOGRAD_MUTANTS + mutants.THOROUGH_MUTANTS:
            with mutants.load(mutant.target)():
                changed = gradients(dtype)
            if len(changed) != len(baseline) or any(
                not np.array_equal(a, b, equal_nan=True)
                for a, b in zip(changed, baseline, strict=True)
            ):
                found[-1].add(f"mutant:{mutant.name}")
    return ops_of(spec) | (found[0] & found[1])


MODEL_PROGRAM = (
    Action("backward", {"batch": 0}),
    Action("step"),
    Action("zero_grad", {"set_to_none": True}),
    Action("backward", {"batch": 1}),
    Action("step"),
)


def cases(dtype: str, options: RunOptions) -> list[tuple[str, Case]]:
    """The canonical cases an implementation under `options` is checked on, in order: each
    configuration on the small model, then each of MODELS."""
    names = MODEL.parameter_names()
    group = Group(tuple(n for n in names if n != LATE or not options.has("add-param-group")))
    return [
        (name, Case(Setup(MODEL, dtype, kwargs, (group,), tensor_lr=tensor_lr), program(options)))
        for name, needs, kwargs, tensor_lr in options.spec.configurations
        if all(options.has(feature) for feature in needs)
    ] + [
        (
            f"model {i} ({spec.kind})",
            Case(
                Setup(
                    spec, dtype, dict(options.spec.example), (Group(tuple(spec.parameter_names())),)
                ),
                MODEL_PROGRAM,
            ),
        )
        for i, spec in enumerate(MODELS)
    ]
