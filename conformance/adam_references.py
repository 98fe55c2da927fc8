"""Correct Adams and AdamWs written the way users write them: from the documentation, not from
torch's code.

The classes here were written from the `torch.optim.Adam` and `torch.optim.AdamW` docstrings'
pseudocode (also at https://pytorch.org/docs/stable/generated/torch.optim.Adam.html and
.../torch.optim.AdamW.html) and torch.optim.Optimizer's public documentation, using only public
torch APIs. Each comes in both families: `XAdam` is constructed like Adam (params, lr, betas,
eps, weight_decay, amsgrad, maximize), `XAdamW` like AdamW (weight_decay defaults to 1e-2 and is
decoupled). Each is correct, in its own style:

- `MinimalAdam`/`MinimalAdamW`: the loop of the PyTorch 1.x era that tutorials still copy
  (`mul_().add_()` for the first moment, `math.sqrt` of the bias correction); lr, betas, eps and
  weight_decay only (no amsgrad, no maximize, no validation), and a step count kept as a Python
  int. Not bitwise: judged in ULP mode.
- `BookkeepingAdam`/`BookkeepingAdamW`: a pure per-tensor update function (`adam_update`) in the
  ordering torch uses (`lerp` for the first moment, `√v / √(1 − β₂ᵗ) + ε`), and extra keys torch
  lacks (a name and a step count per group, the last step size per parameter). Bitwise.
- `ForeachAdam`/`ForeachAdamW`: torch's own Adam/AdamW with `foreach=True` forced (its
  multi-tensor path, which rejects a tensor lr). Bitwise with the for-loop path on CPU.
- `TwiceRoundedDocAdam`/`TwiceRoundedDocAdamW`: the pseudocode with ordinary operators
  (`beta1 * m + (1 - beta1) * g`, `m / (1 - beta1 ** t)`, `√(v / (1 − β₂ᵗ)) + ε`,
  `p - lr * m_hat / denom`): correct mathematics, rounded differently; judged in ULP mode.

The docs' algorithm, which every class follows (t counts the steps a parameter had a gradient):

    g ← −∇f(θ) if maximize else ∇f(θ)
    Adam:  if λ ≠ 0:  g ← g + λθ             AdamW:  θ ← θ − γλθ
    m ← β₁m + (1 − β₁)g;   v ← β₂v + (1 − β₂)g²
    m̂ ← m / (1 − β₁ᵗ)
    v̂ ← max(vmax, v) / (1 − β₂ᵗ) if amsgrad (vmax kept) else v / (1 − β₂ᵗ)
    θ ← θ − γ m̂ / (√v̂ + ε)

A learning rate given as a tensor is used as the docs' γ wherever it appears (no conversion).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

Params = Iterable[Tensor] | Iterable[dict[str, Any]]

__all__ = [
    "ADAMW_REFERENCES",
    "ADAM_REFERENCES",
    "STATE_KEYS",
    "ULP_ONLY",
    "BookkeepingAdam",
    "BookkeepingAdamW",
    "ForeachAdam",
    "ForeachAdamW",
    "MinimalAdam",
    "MinimalAdamW",
    "TwiceRoundedDocAdam",
    "TwiceRoundedDocAdamW",
    "adam_update",
    "check_hyperparameters",
    "checked_defaults",
    "run_closure",
]


def check_hyperparameters(
    lr: float | Tensor, betas: tuple[float, float], eps: float, weight_decay: float
) -> None:
    """What the docs imply is invalid, in our own words (the exception class is torch's:
    ValueError). A learning rate of 0, betas of 0 and an eps of 0 are valid."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(
            f"lr must be a number or a one-element tensor, got shape {tuple(lr.shape)}"
        )
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if len(betas) != 2 or not all(isinstance(beta, float) for beta in betas):
        raise ValueError(f"betas must be two floats, got {betas!r}")
    for index, beta in enumerate(betas):
        if not 0 <= beta < 1:
            raise ValueError(f"betas[{index}] must be in [0, 1), got {beta}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


def checked_defaults(
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
) -> dict[str, Any]:
    """The documented hyperparameters as a group's defaults, after `check_hyperparameters`."""
    check_hyperparameters(lr, betas, eps, weight_decay)
    return {
        "lr": lr,
        "betas": tuple(betas),
        "eps": eps,
        "weight_decay": weight_decay,
        "amsgrad": amsgrad,
        "maximize": maximize,
    }


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """The closure "reevaluates the model and returns the loss" (Optimizer.step's docs): it
    needs autograd, so it runs with gradients enabled even inside a no_grad step."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# --------------------------------------------------------------------------------------------
# 1. The loop tutorials copy
# --------------------------------------------------------------------------------------------


class MinimalAdam(torch.optim.Optimizer):
    """Adam as tutorials write it: one plain loop, the options most people use.

    Follows: the `torch.optim.Adam` math block without amsgrad and maximize (neither is
    accepted), the state the docs' m, v and t imply ("exp_avg", "exp_avg_sq", and "step" kept as
    a Python int), and Optimizer.step's closure. No validation. The first moment is updated as
    `m.mul_(β₁).add_(g, alpha=1 − β₁)` and the denominator uses `math.sqrt`, so it rounds
    otherwise than torch (ULP mode). A step count loaded from torch's state dict (a tensor)
    makes its bias corrections float32 tensors, so it does not take torch's state (`cross-load`
    is declared absent); torch takes its state (torch turns an int step into a tensor).
    """

    decoupled = False  # AdamW: weight decay shrinks θ instead of joining the gradient

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                if weight_decay != 0:
                    if self.decoupled:
                        p.mul_(1 - lr * weight_decay)
                    else:
                        grad = grad.add(p, alpha=weight_decay)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                step_size = lr / bias_correction1
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss


class MinimalAdamW(MinimalAdam):
    """MinimalAdam with the AdamW docs' decoupled weight decay (default 1e-2)."""

    decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)


# --------------------------------------------------------------------------------------------
# 2. A pure update function, and bookkeeping torch does not keep
# --------------------------------------------------------------------------------------------


def adam_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    *,
    step: int,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The docs' loop body for one tensor at step t = `step`, without side effects: returns new
    tensors (θ_t, m_t, v_t, vmax_t); vmax is None without amsgrad.

    m ← β₁m + (1 − β₁)g is m + (1 − β₁)(g − m), i.e. `torch.lerp(m, g, 1 − β₁)`; √v̂ is
    √v / √(1 − β₂ᵗ), one scalar root instead of a tensor division under the root.
    """
    g = torch.neg(grad) if maximize else grad
    if weight_decay != 0:
        if decoupled:  # (a 0-dim param times a tensor lr would come out as lr's dtype)
            param = torch.mul(param, 1 - lr * weight_decay).to(param.dtype)
        else:
            g = torch.add(g, param, alpha=weight_decay)
    exp_avg = torch.lerp(exp_avg, g, 1 - beta1)
    exp_avg_sq = torch.addcmul(torch.mul(exp_avg_sq, beta2), g, g, value=1 - beta2)
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        max_exp_avg_sq = second = torch.maximum(max_exp_avg_sq, exp_avg_sq)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = torch.add(torch.div(torch.sqrt(second), bias_correction2**0.5), eps)
    step_size = float(lr / bias_correction1)  # addcdiv's value must be a number
    param = torch.addcdiv(param, exp_avg, denom, value=-step_size)
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq


class BookkeepingAdam(torch.optim.Optimizer):
    """The docs' Adam through a pure function (`adam_update`), with bookkeeping torch lacks.

    Follows: the `torch.optim.Adam` math block, one tensor at a time, every option (amsgrad,
    maximize, weight decay, a tensor lr). m, v and vmax are new tensors every step (the docs say
    m_t ← …, not "update m in place"). Extra keys a checker must not hold against it: each group
    carries "name" and "step_count" (the number of step() calls), and each parameter's state
    carries "last_step_size" (γ / (1 − β₁ᵗ) as a float). Its "step" is a 0-dim tensor as in
    torch's state dicts; state loaded from torch, which lacks the extra keys, is accepted.
    Errors are ValueError in our own wording.
    """

    decoupled = False

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = checked_defaults(lr, betas, eps, weight_decay, amsgrad, maximize)
        super().__init__(params, {**defaults, "step_count": 0})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Names each group after its position, unless it was given a name."""
        param_group.setdefault("name", f"group{len(self.param_groups)}")
        super().add_param_group(param_group)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        with torch.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        group["step_count"] = group.get("step_count", 0) + 1
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        if isinstance(lr, Tensor):
            lr = lr.reshape(())  # a one-element tensor, used as a scalar
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(param)
            t = int(state.get("step", 0)) + 1
            new_param, state["exp_avg"], state["exp_avg_sq"], new_max = adam_update(
                param,
                param.grad,
                state["exp_avg"],
                state["exp_avg_sq"],
                state["max_exp_avg_sq"] if group["amsgrad"] else None,
                step=t,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled=self.decoupled,
                maximize=group["maximize"],
            )
            param.copy_(new_param)
            if new_max is not None:
                state["max_exp_avg_sq"] = new_max
            state["step"] = torch.tensor(float(t))
            state["last_step_size"] = float(lr / (1 - beta1**t))


class BookkeepingAdamW(BookkeepingAdam):
    """BookkeepingAdam with the AdamW docs' decoupled weight decay (default 1e-2)."""

    decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


# --------------------------------------------------------------------------------------------
# 3. torch's own foreach path
# --------------------------------------------------------------------------------------------


class _ForeachAlways(torch.optim.Optimizer):
    """Keeps torch's foreach implementation on for groups added or loaded later too."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group["foreach"] = True
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["foreach"] = True


class ForeachAdam(_ForeachAlways, torch.optim.Adam):
    """torch.optim.Adam with its foreach (multi-tensor) implementation always on.

    Follows: the Adam docstring's `foreach` argument ("whether foreach implementation of
    optimizer is used"), which a user may set. The constructor takes Adam's documented
    hyperparameters only; groups added later and state dicts loaded later keep foreach on.
    torch rejects a tensor lr with foreach=True (capturable=False), so `tensor-lr` is declared
    absent.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=True,
        )


class ForeachAdamW(_ForeachAlways, torch.optim.AdamW):
    """torch.optim.AdamW with its foreach implementation always on (see ForeachAdam)."""

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=True,
        )


# --------------------------------------------------------------------------------------------
# 4. The docs' formulas with ordinary operators
# --------------------------------------------------------------------------------------------


class TwiceRoundedDocAdam(torch.optim.Optimizer):
    """The pseudocode transcribed with ordinary operators: `beta1 * m + (1 - beta1) * g`,
    `beta2 * v + (1 - beta2) * g * g`, `m / (1 - beta1 ** t)`, `v / (1 - beta2 ** t)`,
    `p - lr * m_hat / (v_hat.sqrt() + eps)` (AdamW: `p - lr * weight_decay * p` first).

    Follows: the `torch.optim.Adam` math block literally, every option. Every product and
    quotient is rounded on its own and the root is taken of v̂ rather than of v, so its results
    are within a few ULP of torch's but not bit for bit (ULP mode). The moments are updated in
    place (`copy_`), as the state dict's live tensors are in torch; "step" is a 0-dim tensor,
    read as an int for the bias corrections (β^t in Python floats).
    """

    decoupled = False

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, checked_defaults(lr, betas, eps, weight_decay, amsgrad, maximize))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = int(state["step"])
                if wd != 0:
                    if self.decoupled:
                        p.copy_(p - lr * wd * p)
                    else:
                        g = g + wd * p
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.copy_(beta1 * m + (1 - beta1) * g)
                v.copy_(beta2 * v + (1 - beta2) * g * g)
                if group["amsgrad"]:
                    v_max = state["max_exp_avg_sq"]
                    v_max.copy_(torch.maximum(v_max, v))
                    v = v_max
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                p.copy_(p - lr * m_hat / (v_hat.sqrt() + eps))
        return loss


class TwiceRoundedDocAdamW(TwiceRoundedDocAdam):
    """TwiceRoundedDocAdam with the AdamW docs' decoupled weight decay (default 1e-2)."""

    decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


# --------------------------------------------------------------------------------------------
# The lists
# --------------------------------------------------------------------------------------------


def _target(cls: type) -> str:
    return f"{__name__}:{cls.__name__}"


_MINIMAL_ABSENT = frozenset({"amsgrad", "maximize", "invalid-hyperparameters", "cross-load"})

ADAM_REFERENCES: dict[str, frozenset[str]] = {
    _target(MinimalAdam): _MINIMAL_ABSENT,
    _target(BookkeepingAdam): frozenset(),
    _target(ForeachAdam): frozenset({"tensor-lr"}),
    _target(TwiceRoundedDocAdam): frozenset(),
}
"""Every correct Adam reference, as a "module:Class" target, with the features (`--without`
names) it declares absent."""

ADAMW_REFERENCES: dict[str, frozenset[str]] = {
    _target(MinimalAdamW): _MINIMAL_ABSENT,
    _target(BookkeepingAdamW): frozenset(),
    _target(ForeachAdamW): frozenset({"tensor-lr"}),
    _target(TwiceRoundedDocAdamW): frozenset(),
}
"""Every correct AdamW reference, with the features it declares absent."""

ULP_ONLY: frozenset[str] = frozenset(
    _target(cls) for cls in (MinimalAdam, MinimalAdamW, TwiceRoundedDocAdam, TwiceRoundedDocAdamW)
)
"""The references that round otherwise than torch: to be judged in ULP mode, not `exact`."""

STATE_KEYS: dict[str, dict[str, str]] = {}
"""target → {torch's state key: the reference's}, for references that name their state
otherwise than torch (none do)."""
