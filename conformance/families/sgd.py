"""The SGD family: torch.optim.SGD, as the harness checks it.

Boundaries are drawn on purpose, because they are where two formulas agree or a branch flips:
lr 0 and large, momentum 1, dampening 1, maximize, nesterov (only where torch accepts it:
momentum > 0 and dampening 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from hypothesis import strategies as st

from conformance import oracle
from conformance.families import Before, Configuration, Hyperparameter, OptimizerFamily, StateKey

LR = st.sampled_from([0.0, 1e-3, 0.01, 0.1, 0.5, 1.0, 10.0]) | st.floats(0.0, 10.0)

HYPERPARAMETERS = (
    Hyperparameter("lr", 1e-3, LR),
    Hyperparameter(
        "momentum",
        0.0,
        st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]) | st.floats(0.0, 1.5),
        on=st.sampled_from([0.9, 0.5, 0.99, 1.0]) | st.floats(0.0, 1.5, exclude_min=True),
        feature="momentum",
    ),
    Hyperparameter(
        "dampening",
        0.0,
        st.sampled_from([0.0, 1.0, 0.1, 0.5]) | st.floats(0.0, 1.0),
        on=st.sampled_from([0.5, 1.0, 0.1]) | st.floats(0.0, 1.0, exclude_min=True),
        feature="dampening",
        absent="nonzero dampening is never drawn",
        needs="momentum",
    ),
    Hyperparameter(
        "weight_decay",
        0.0,
        st.sampled_from([0.0, 1e-4, 0.01, 0.5]) | st.floats(0.0, 2.0),
        on=st.sampled_from([0.01, 1e-4, 0.5]) | st.floats(0.0, 2.0, exclude_min=True),
        feature="weight-decay",
        absent="nonzero weight_decay is never drawn",
    ),
    Hyperparameter(
        "maximize",
        False,
        st.booleans(),
        on=st.just(True),
        feature="maximize",
        absent="maximize=True (gradient ascent) is never drawn",
    ),
    Hyperparameter(
        "nesterov",
        False,
        st.booleans(),
        on=st.just(True),
        feature="nesterov",
        absent="nesterov=True is never drawn",
        needs="momentum",
    ),
)


def valid(options: dict[str, Any]) -> dict[str, Any]:
    """nesterov only where torch's constructor accepts it (momentum > 0, dampening 0)."""
    if options.get("nesterov") and (
        options.get("momentum", 0) <= 0 or options.get("dampening", 0) != 0
    ):
        options = {**options, "nesterov": False}
    return options


def step_budget(before: Before, value: Callable[[str], Any]) -> dict[str, np.ndarray | None]:
    """`oracle.sgd_step_budget` for one parameter (nothing where its state is not one an SGD
    step has: loaded from the implementation's state dict, torch's result is to be matched
    exactly)."""
    param, grad = before["param"], before["grad"]
    assert param is not None and grad is not None
    momentum = value("momentum")
    buffer = before["momentum_buffer"] if momentum != 0 else None
    if grad.shape != param.shape or (buffer is not None and buffer.shape != grad.shape):
        return {"param": None, "momentum_buffer": None}
    theta, b = oracle.sgd_step_budget(
        param,
        grad,
        buffer,
        lr=value("lr"),
        momentum=momentum,
        dampening=value("dampening"),
        weight_decay=value("weight_decay"),
        nesterov=value("nesterov"),
        maximize=value("maximize"),
        first_step=buffer is None,
    )
    return {"param": theta, "momentum_buffer": b}


def writes_grad(value: Callable[[str], Any]) -> bool:
    """torch 2.13's foreach SGD step computes nesterov's g + μb in the gradient tensors
    themselves when it made no copy of them first (no maximize, no weight decay): `.grad` holds
    that value after the step. The only place this condition is written."""
    return (
        bool(value("nesterov"))
        and value("momentum") != 0
        and not value("maximize")
        and value("weight_decay") == 0
    )


def torch_writes_grad(group: Mapping[str, Any]) -> bool:
    """`writes_grad` of a group as torch holds it or as observed (a tensor as ("tensor", x))."""
    return writes_grad(
        lambda key: (
            group[key][1]
            if isinstance(group[key], tuple) and group[key][:1] == ("tensor",)
            else group[key]
        )
    )


def written_grad(
    before: np.ndarray,
    after: Before,
    budgets: Mapping[str, np.ndarray | None],
    value: Callable[[str], Any],
) -> tuple[np.ndarray, np.ndarray]:
    """What torch's foreach nesterov step writes into `.grad` (g + μ·b, from the gradient
    before the step and the buffer after it) and the error allowed there."""
    momentum, buffer = value("momentum"), after["momentum_buffer"]
    assert buffer is not None and budgets["momentum_buffer"] is not None
    with np.errstate(all="ignore"):
        expected = (before.astype(np.float64) + momentum * buffer.astype(np.float64)).astype(
            before.dtype
        )
    return expected, oracle.nesterov_grad_budget(
        expected, buffer, budgets["momentum_buffer"], momentum
    )


LR0, MOMENTUM0, DAMPENING0, WEIGHT_DECAY0 = 0.1, 0.9, 0.3, 0.01
_BASE: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "plain": ((), {"lr": LR0}),
    "momentum": ((), {"lr": LR0, "momentum": MOMENTUM0}),
    "dampening": (("dampening",), {"lr": LR0, "momentum": MOMENTUM0, "dampening": DAMPENING0}),
    "nesterov": (("nesterov",), {"lr": LR0, "momentum": MOMENTUM0, "nesterov": True}),
}


def configurations() -> tuple[Configuration, ...]:
    """PyTorch's classic configurations: each base configuration alone, with weight decay,
    maximized, with both; then a tensor lr with momentum and weight decay."""
    table = []
    for base, (needs, options) in _BASE.items():
        for decay in (False, True):
            for maximize in (False, True):
                name = "+".join([base] + ["weight_decay"] * decay + ["maximize"] * maximize)
                table.append(
                    (
                        name,
                        needs + ("weight-decay",) * decay + ("maximize",) * maximize,
                        {
                            **options,
                            **({"weight_decay": WEIGHT_DECAY0} if decay else {}),
                            **({"maximize": True} if maximize else {}),
                        },
                        False,
                    )
                )
    table.append(
        (
            "momentum+weight_decay+tensor_lr",
            ("weight-decay", "tensor-lr"),
            {"lr": LR0, "momentum": MOMENTUM0, "weight_decay": WEIGHT_DECAY0},
            True,
        )
    )
    return tuple(table)


SGD = OptimizerFamily(
    name="sgd",
    torch_class="torch.optim:SGD",
    refimpl_class="refimpl.optim:SGD",
    hyperparameters=HYPERPARAMETERS,
    state=(StateKey("momentum_buffer"),),
    valid=valid,
    step_budget=step_budget,
    invalid=(
        ((), {"lr": -0.1}),
        ((), {"lr": -1e-9}),
        ((), {"momentum": -0.5}),
        (("weight-decay",), {"weight_decay": -1e-3}),
        (("nesterov",), {"nesterov": True, "momentum": 0.0}),
        (("nesterov", "dampening"), {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
        (("tensor-lr",), {"lr": [0.1, 0.1]}),  # a tensor lr of two elements
    ),
    edges=(
        ((), {"lr": 0.0}),
        ((), {"momentum": 0.0}),
        (("dampening",), {"momentum": 0.9, "dampening": 1.0}),
        (("weight-decay",), {"weight_decay": 0.0}),
    ),
    configurations=configurations(),
    example={"lr": 0.1, "momentum": 0.9},
    state_needs="momentum",
    second_step=frozenset({"momentum", "dampening"}),
    needs={
        "momentum": "a second step with a momentum buffer",
        "dampening": "a second step with dampening",
    },
    writes_grad=writes_grad,
    written_grad=written_grad,
    correct="conformance.mutants:CORRECT_OPTIMIZERS",
    references="conformance.references:REFERENCES",
    mutants="conformance.mutants:OPTIMIZER_MUTANTS",
)
