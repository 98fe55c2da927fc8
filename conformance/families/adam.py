"""The Adam and AdamW families: torch.optim.Adam and torch.optim.AdamW, as the harness checks
them. They differ in the weight decay alone (Adam adds λ·θ to the gradient; AdamW decays the
parameter, θ·(1 − γλ), and decays by default), and in nothing the harness draws otherwise.

Boundaries are drawn on purpose: betas 0 (no averaging) and close to 1 (bias corrections far
from 1 for many steps), eps 0 and large, lr 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from conformance import oracle
from conformance.families import Before, Configuration, Hyperparameter, OptimizerFamily, StateKey

LR = st.sampled_from([1e-3, 0.0, 0.01, 0.1, 1.0]) | st.floats(0.0, 1.0)
BETA = st.floats(0.0, 1.0, exclude_max=True)
BETAS = st.sampled_from(
    [(0.9, 0.999), (0.0, 0.0), (0.5, 0.9), (0.9, 0.99), (0.99, 0.9999), (0.0, 0.999), (0.9, 0.0)]
) | st.tuples(BETA, BETA)
EPS = st.sampled_from([1e-8, 0.0, 1e-3, 1e-16, 1.0]) | st.floats(0.0, 1.0)


def hyperparameters(decay_default: float) -> tuple[Hyperparameter, ...]:
    return (
        Hyperparameter("lr", 1e-3, LR),
        Hyperparameter("betas", (0.9, 0.999), BETAS),
        Hyperparameter("eps", 1e-8, EPS),
        Hyperparameter(
            "weight_decay",
            decay_default,
            st.sampled_from([0.0, 1e-2, 1e-4, 0.5]) | st.floats(0.0, 2.0),
            on=st.sampled_from([1e-2, 1e-4, 0.5]) | st.floats(0.0, 2.0, exclude_min=True),
            feature="weight-decay",
            off=0.0,
            absent="nonzero weight_decay is never drawn (weight_decay=0 is passed)",
        ),
        Hyperparameter(
            "amsgrad",
            False,
            st.booleans(),
            on=st.just(True),
            feature="amsgrad",
            absent="amsgrad=True is never drawn",
            changeable=False,
        ),
        Hyperparameter(
            "maximize",
            False,
            st.booleans(),
            on=st.just(True),
            feature="maximize",
            absent="maximize=True (gradient ascent) is never drawn",
        ),
    )


def valid(options: dict[str, Any]) -> dict[str, Any]:
    """Every combination of valid values is valid."""
    return options


def step_budget(
    decoupled: bool,
) -> Callable[[Before, Callable[[str], Any]], dict[str, np.ndarray | None]]:
    def budget(before: Before, value: Callable[[str], Any]) -> dict[str, np.ndarray | None]:
        """`oracle.adam_step_budget` for one parameter (nothing where its state is not one an
        Adam step has: loaded from the implementation's state dict, torch's result is to be
        matched exactly)."""
        param, grad, count = before["param"], before["grad"], before["step"]
        assert param is not None and grad is not None
        held = [before[k] for k in ("exp_avg", "exp_avg_sq")]
        max_sq = before["max_exp_avg_sq"] if value("amsgrad") else None
        arrays = [a for a in (*held, max_sq) if a is not None]
        if (
            grad.shape != param.shape
            or any(a.shape != param.shape for a in arrays)
            or (count is None) != (held[0] is None)
        ):
            return {"param": None, "exp_avg": None, "exp_avg_sq": None, "max_exp_avg_sq": None}
        beta1, beta2 = value("betas")
        return dict(
            oracle.adam_step_budget(
                param,
                grad,
                held[0],
                held[1],
                max_sq,
                step=1 if count is None else int(float(np.asarray(count).reshape(-1)[0])) + 1,
                lr=value("lr"),
                beta1=beta1,
                beta2=beta2,
                eps=value("eps"),
                weight_decay=value("weight_decay"),
                amsgrad=bool(value("amsgrad")),
                maximize=bool(value("maximize")),
                decoupled=decoupled,
            )
        )

    return budget


LR0, BETAS0, DECAY0 = 0.01, (0.9, 0.999), 0.1


def configurations(decay_default: float) -> tuple[Configuration, ...]:
    """Plain and amsgrad, each alone, with weight decay, maximized, with both; then a tensor
    lr with amsgrad and weight decay. Without weight decay, AdamW (which decays by default) is
    passed weight_decay=0 and Adam nothing."""
    table = []
    for base, needs in (("plain", ()), ("amsgrad", ("amsgrad",))):
        for decay in (False, True):
            for maximize in (False, True):
                name = "+".join([base] + ["weight_decay"] * decay + ["maximize"] * maximize)
                off = {} if decay_default == 0 else {"weight_decay": 0.0}  # AdamW decays
                table.append(
                    (
                        name,
                        needs + ("weight-decay",) * decay + ("maximize",) * maximize,
                        {
                            "lr": LR0,
                            "betas": BETAS0,
                            **({"weight_decay": DECAY0} if decay else off),
                            **({"amsgrad": True} if needs else {}),
                            **({"maximize": True} if maximize else {}),
                        },
                        False,
                    )
                )
    table.append(
        (
            "amsgrad+weight_decay+tensor_lr",
            ("amsgrad", "weight-decay", "tensor-lr"),
            {"lr": LR0, "amsgrad": True, "weight_decay": DECAY0},
            True,
        )
    )
    return tuple(table)


INVALID = (
    ((), {"lr": -0.1}),
    ((), {"lr": -1e-9}),
    ((), {"eps": -1e-8}),
    ((), {"betas": (1.0, 0.999)}),
    ((), {"betas": (-0.1, 0.999)}),
    ((), {"betas": (0.9, 1.0)}),
    ((), {"betas": (0.9, -1e-3)}),
    (("weight-decay",), {"weight_decay": -1e-3}),
    (("tensor-lr",), {"lr": [0.1, 0.1]}),  # a tensor lr of two elements
)
EDGES = (
    ((), {"lr": 0.0}),
    ((), {"eps": 0.0}),
    ((), {"betas": (0.0, 0.0)}),
    (("weight-decay",), {"weight_decay": 0.0}),
)

ADAM = OptimizerFamily(
    name="adam",
    torch_class="torch.optim:Adam",
    refimpl_class="refimpl.optim:Adam",
    hyperparameters=hyperparameters(0.0),
    state=(
        StateKey("exp_avg"),
        StateKey("exp_avg_sq"),
        StateKey("max_exp_avg_sq"),
        StateKey("step", "count"),
    ),
    valid=valid,
    step_budget=step_budget(decoupled=False),
    invalid=INVALID,
    edges=EDGES,
    configurations=configurations(0.0),
    example={"lr": 0.1, "betas": (0.9, 0.999)},
    implementation_flags=(
        "foreach",
        "fused",
        "differentiable",
        "capturable",
        "decoupled_weight_decay",
    ),
    second_step=frozenset({"amsgrad"}),
    needs={"amsgrad": "a second step with amsgrad"},
    unsupported={
        "foreach": {
            "tensor-lr": "torch's foreach path rejects a tensor lr "
            "(ValueError), so none is drawn on it"
        }
    },
    correct="conformance.adam_mutants:ADAM_CORRECT",
    references="conformance.adam_references:ADAM_REFERENCES",
    mutants="conformance.adam_mutants:ADAM_MUTANTS",
)
ADAMW = replace(
    ADAM,
    name="adamw",
    torch_class="torch.optim:AdamW",
    refimpl_class="refimpl.optim:AdamW",
    hyperparameters=hyperparameters(1e-2),
    step_budget=step_budget(decoupled=True),
    configurations=configurations(1e-2),
    correct="conformance.adam_mutants:ADAMW_CORRECT",
    references="conformance.adam_references:ADAMW_REFERENCES",
    mutants="conformance.adam_mutants:ADAMW_MUTANTS",
)
