"""The canonical configurations, replayed before any drawn program in every profile.

PyTorch tests its optimizers on a fixed table of classic configurations; most wrong optimizers
fail one of them within a few steps. Here each configuration runs the same short program on a
small two-layer model (`program`: every kind of action once, around steps with a buffer), so
whatever the table can show shows in the first few dozen programs, whatever the seed. A
configuration that needs a feature the implementation declared absent is left out.
"""

from __future__ import annotations

from typing import Any

from conformance.models import Layer, ModelSpec
from conformance.options import RunOptions
from conformance.program import Action, Case, Group, Setup
from conformance.strategies import EDGES, INVALID

LR, MOMENTUM, DAMPENING, WEIGHT_DECAY = 0.1, 0.9, 0.3, 0.01

# name -> (features it needs, SGD's keyword arguments)
_BASE: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "plain": ((), {"lr": LR}),
    "momentum": ((), {"lr": LR, "momentum": MOMENTUM}),
    "dampening": (("dampening",), {"lr": LR, "momentum": MOMENTUM, "dampening": DAMPENING}),
    "nesterov": (("nesterov",), {"lr": LR, "momentum": MOMENTUM, "nesterov": True}),
}


def configurations() -> list[tuple[str, tuple[str, ...], dict[str, Any], bool]]:
    """(name, needed features, keyword arguments, tensor lr): each base configuration alone,
    with weight decay, maximized, with both; then a tensor lr with momentum and weight
    decay."""
    table = []
    for base, (needs, options) in _BASE.items():
        for decay in (False, True):
            for maximize in (False, True):
                name = "+".join([base] + ["weight_decay"] * decay + ["maximize"] * maximize)
                table.append((name, needs + ("weight-decay",) * decay + ("maximize",) * maximize,
                              {**options, **({"weight_decay": WEIGHT_DECAY} if decay else {}),
                               **({"maximize": True} if maximize else {})}, False))
    table.append(("momentum+weight_decay+tensor_lr", ("weight-decay", "tensor-lr"),
                  {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}, True))
    return table


MODEL = ModelSpec(kind="mlp", input_shape=(3, 4), loss="mse", seed=20261130,
                  layers=(Layer("linear", 5), Layer("tanh"), Layer("linear", 2)))
LATE = "2.bias"  # left out of the group, for add_param_group


def program(options: RunOptions) -> tuple[Action, ...]:
    """Every kind of action once, around steps with a buffer: the first, the second (after a new
    parameter group and a save and load), a step on zero gradients, a step on no gradients,
    a later step after an lr change and one with a closure; then a construction breaking
    each of torch's rules, and some at their edges. Actions that need a feature declared
    absent are left out."""
    has = options.has
    plan: list[tuple[str | None, Action]] = [
        (None, Action("backward", {"batch": 0})), (None, Action("step")),
        ("add-param-group", Action("add_param_group", {"params": [LATE], "options": {}})),
        (None, Action("zero_grad", {"set_to_none": True})),
        (None, Action("backward", {"batch": 1})),
        ("state-dict", Action("save_load", {"source": "self"})), (None, Action("step")),
        ("set-to-none-false", Action("zero_grad", {"set_to_none": False})),
        ("set-to-none-false", Action("step")),
        (None, Action("zero_grad", {"set_to_none": True})), (None, Action("step")),
        (None, Action("backward", {"batch": 2})),
        ("set-hyperparameter", Action("set_hyperparameter",
                                      {"group": 0, "name": "lr", "value": LR / 2})),
        (None, Action("step")), ("closure", Action("step_closure", {"batch": 3})),
    ]
    actions = [action for feature, action in plan if feature is None or has(feature)]
    if has("invalid-hyperparameters"):  # every rule of torch's validation, and its edges
        actions += [Action("construct", {"options": {"lr": LR, **change}})
                    for needs, change in INVALID + EDGES if all(map(has, needs))]
    return tuple(actions)


def cases(dtype: str, options: RunOptions) -> list[tuple[str, Case]]:
    """The canonical cases an implementation under `options` is checked on, in order."""
    names = MODEL.parameter_names()
    group = Group(tuple(n for n in names if n != LATE or not options.has("add-param-group")))
    return [(name, Case(Setup(MODEL, dtype, kwargs, (group,), tensor_lr=tensor_lr),
                        program(options)))
            for name, needs, kwargs, tensor_lr in configurations()
            if all(options.has(feature) for feature in needs)]
