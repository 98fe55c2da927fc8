"""Wrong Adams and AdamWs that are not in `conformance.adam_mutants`: the realistic bugs a user
writing from the docs makes, kept out of the catalogue so that the suite's speed at finding them
measures the generators rather than a catalogue they were tuned on (as tests/outside_catalogue.py
does for SGD). Each is the docs' loop of `_Loop` (bitwise equal to torch.optim.Adam / AdamW on
CPU when nothing is overridden) with one thing wrong, said in its docstring; each is constructed
like torch.optim.Adam (family "adam") or torch.optim.AdamW (family "adamw").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from conformance.adam_references import checked_defaults, run_closure

Scalar = float | Tensor


class _Loop(torch.optim.Optimizer):
    """The docs' Adam loop (AdamW's where `decoupled`), with hooks where the bugs go."""

    decoupled = False

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, checked_defaults(lr, betas, eps, weight_decay, amsgrad, maximize))

    def state_of(self, p: Tensor, group: dict[str, Any], index: int) -> dict[str, Any]:
        return self.state[p]

    def init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p)

    def direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        assert p.grad is not None
        g = -p.grad if group["maximize"] else p.grad
        if group["weight_decay"] != 0 and not self.decoupled:
            g = g.add(p, alpha=group["weight_decay"])
        return g

    def decay(self, p: Tensor, group: dict[str, Any]) -> None:
        p.mul_(1 - group["lr"] * group["weight_decay"])

    def second_moment(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        if not group["amsgrad"]:
            return state["exp_avg_sq"]
        max_exp_avg_sq = state["max_exp_avg_sq"]
        torch.maximum(max_exp_avg_sq, state["exp_avg_sq"], out=max_exp_avg_sq)
        return max_exp_avg_sq

    def bias_corrections(self, beta1: float, beta2: float, step: Tensor) -> tuple[Scalar, Scalar]:
        t = step.item()
        return 1 - beta1**t, 1 - beta2**t

    def denominator(self, second: Tensor, bias_correction2: Scalar, eps: float) -> Tensor:
        return (second.sqrt() / bias_correction2**0.5).add_(eps)

    def step_size(self, lr: Scalar, bias_correction1: Scalar, bias_correction2: Scalar) -> Scalar:
        return lr / bias_correction1

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state_of(p, group, index)
                if len(state) == 0:
                    self.init_state(p, state, group)
                state["step"] += 1
                g = self.direction(p, group)
                if self.decoupled and group["weight_decay"] != 0:
                    self.decay(p, group)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(g, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                second = self.second_moment(p, state, group)
                bias_correction1, bias_correction2 = self.bias_corrections(
                    beta1, beta2, state["step"]
                )
                denom = self.denominator(second, bias_correction2, group["eps"])
                step_size = self.step_size(group["lr"], bias_correction1, bias_correction2)
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss


class _LoopW(_Loop):
    """The AdamW docs' loop: decoupled weight decay, 1e-2 by default."""

    decoupled = True

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


class Float32BiasCorrection(_Loop):
    """The bias corrections raise β to the state's step tensor (float32), so they and the step
    size are float32 numbers even for a float64 model."""

    def bias_corrections(self, beta1: float, beta2: float, step: Tensor) -> tuple[Scalar, Scalar]:
        return 1 - beta1**step, 1 - beta2**step


class EpsilonHat(_LoopW):
    """ε is added to √v before the bias correction, the step size folding in √(1 − β₂ᵗ) (the
    paper's "efficient" ordering, whose ε is not the docs' ε)."""

    def denominator(self, second: Tensor, bias_correction2: Scalar, eps: float) -> Tensor:
        return second.sqrt().add_(eps)

    def step_size(self, lr: Scalar, bias_correction1: Scalar, bias_correction2: Scalar) -> Scalar:
        return lr * bias_correction2**0.5 / bias_correction1


class StateByPosition(_Loop):
    """State is kept by a parameter's position in its group, so groups share moments."""

    def state_of(self, p: Tensor, group: dict[str, Any], index: int) -> dict[str, Any]:
        by_position: dict[int, dict[str, Any]] = self.__dict__.setdefault("by_position", {})
        shared = by_position.setdefault(index, {})
        exp_avg = shared.get("exp_avg")
        if exp_avg is not None and exp_avg.shape != p.shape:  # another group's parameter
            shared.clear()
        self.state[p] = shared
        return shared


class DecayWithFirstGroupLr(_LoopW):
    """Decoupled weight decay shrinks every group's parameters with the first group's lr."""

    def decay(self, p: Tensor, group: dict[str, Any]) -> None:
        p.mul_(1 - self.param_groups[0]["lr"] * group["weight_decay"])


class MaxNotPersisted(_LoopW):
    """amsgrad's running maximum lives in an attribute, not in the state: state_dict lacks it
    and load_state_dict starts it over at zero."""

    def init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super().init_state(p, state, {**group, "amsgrad": False})

    def second_moment(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        if not group["amsgrad"]:
            return state["exp_avg_sq"]
        maxima: dict[Tensor, Tensor] = self.__dict__.setdefault("maxima", {})
        max_exp_avg_sq = maxima.setdefault(p, torch.zeros_like(p))
        torch.maximum(max_exp_avg_sq, state["exp_avg_sq"], out=max_exp_avg_sq)
        return max_exp_avg_sq

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.__dict__.pop("maxima", None)


class MaximizeAfterDecay(_Loop):
    """maximize negates the gradient after the L2 term λθ was added, not before."""

    def direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        assert p.grad is not None
        g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
        return -g if group["maximize"] else g


OUTSIDE_ADAM: tuple[tuple[str, str, str], ...] = tuple(
    (name, f"{__name__}:{cls.__name__}", family)
    for name, cls, family in [
        ("float32-bias-correction", Float32BiasCorrection, "adam"),
        ("epsilon-hat", EpsilonHat, "adamw"),
        ("state-by-position", StateByPosition, "adam"),
        ("decay-with-first-group-lr", DecayWithFirstGroupLr, "adamw"),
        ("max-not-persisted", MaxNotPersisted, "adamw"),
        ("maximize-after-decay", MaximizeAfterDecay, "adam"),
    ]
)
"""(name, "module:Class" target, family): the torch optimizer each is checked against is
torch.optim.Adam for "adam", torch.optim.AdamW for "adamw"."""
