"""Correct SGDs written the way users write them: from the documentation, not from torch's code.

The suite's own correct optimizers (`conformance.mutants.CorrectSGD`, `TwiceRoundedSGD`) copy
torch's internals (its private helpers, its foreach side effects), so a self-check run on them
never meets what a real user's optimizer looks like. The classes here were written from the
torch.optim.SGD docstring's pseudocode (`torch.optim.SGD.__doc__`, also at
https://pytorch.org/docs/stable/generated/torch.optim.SGD.html) and torch.optim.Optimizer's
public documentation, using only public torch APIs. Each is constructed like SGD (params, lr,
momentum, dampening, weight_decay, nesterov, maximize) and each is correct, in its own style:

- `MinimalSGD`: the plain for-loop a tutorial writes; only the six hyperparameters in its
  groups, its own error wording.
- `BookkeepingSGD`: a functional per-tensor update helper, and extra keys torch lacks (a step
  count and a name per group, a step count per parameter in the state).
- `ForeachSGD`: torch's own SGD with `foreach=True` forced (its foreach side effects included).
- `TwiceRoundedDocSGD`: every `x + a*y` as `x + (a * y)`, two roundings where torch fuses one.
- `conformance.compiled_reference.CompiledStepSGD`: the update compiled with `torch.compile`
  (in a module of its own: importing it compiles; see its docstring for the cost, and
  `COMPILE_SKIP_REASON` for when it cannot be built).

The docs' algorithm, which every class follows (t counts the steps a parameter had a gradient):

    g ← -∇f(θ) if maximize else ∇f(θ)
    if λ ≠ 0:  g ← g + λθ
    if μ ≠ 0:  b ← g if t = 1 else μb + (1 − τ)g;  g ← g + μb if nesterov else b
    θ ← θ − γg

A learning rate given as a tensor is turned into a Python float (`float(lr)`) before use, as a
reader of "lr (float, Tensor)" would: the update is then computed in the parameter's dtype, which
is what torch does (a float32 parameter with a float64 tensor lr gets float32 arithmetic; checked
bitwise against torch for the for-loop style, see tests/test_references.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

Params = Iterable[Tensor] | Iterable[dict[str, Any]]

__all__ = [
    "REFERENCES",
    "BookkeepingSGD",
    "ForeachSGD",
    "MinimalSGD",
    "TwiceRoundedDocSGD",
]


def _check_hyperparameters(
    lr: float | Tensor, momentum: float, dampening: float, weight_decay: float, nesterov: bool
) -> None:
    """What the docs imply is invalid, in our own words (the exception class is torch's:
    ValueError). A learning rate of 0, momentum 0 and dampening 1 are valid; dampening has no
    documented range, so any value is accepted, as torch does."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(
            f"lr must be a number or a one-element tensor, got shape {tuple(lr.shape)}"
        )
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"nesterov needs momentum > 0 and dampening == 0, got "
            f"momentum={momentum}, dampening={dampening}"
        )


def _run_closure(closure: Callable[[], Any] | None) -> Any:
    """The closure "reevaluates the model and returns the loss" (Optimizer.step's docs): it
    needs autograd, so it runs with gradients enabled even inside a no_grad step."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# --------------------------------------------------------------------------------------------
# 1. The for-loop a tutorial writes
# --------------------------------------------------------------------------------------------


class MinimalSGD(torch.optim.Optimizer):
    """SGD as the docstring's pseudocode reads, line by line, in one plain loop.

    Follows: the `torch.optim.SGD` math block (maximize, weight decay, the momentum buffer that
    starts as g at t = 1 and is dampened from t = 2 on, nesterov, θ − γg) and its note "the
    initial value of the momentum buffer is set to the gradient value at the first step";
    Optimizer.step's "closure: a closure that reevaluates the model and returns the loss".
    Groups hold only the six documented hyperparameters (no foreach/fused/differentiable);
    state holds only "momentum_buffer", and only where momentum is used. Errors are ValueError
    in our own wording.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check_hyperparameters(lr, momentum, dampening, weight_decay, nesterov)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr = group["lr"]
            if isinstance(lr, Tensor):
                lr = lr.item()
            momentum, dampening = group["momentum"], group["dampening"]
            weight_decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = -p.grad if group["maximize"] else p.grad
                if weight_decay != 0:
                    d_p = d_p.add(p, alpha=weight_decay)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.clone(d_p).detach()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(d_p, alpha=-lr)
        return loss


# --------------------------------------------------------------------------------------------
# 2. A functional update helper, and bookkeeping torch does not keep
# --------------------------------------------------------------------------------------------


def sgd_update(
    param: Tensor,
    grad: Tensor,
    buf: Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> tuple[Tensor, Tensor | None]:
    """The docs' loop body for one tensor, without side effects: returns (θ_t, b_t), new tensors
    (b_t is None when μ = 0). `buf` is b_{t−1}, None at t = 1."""
    g = torch.neg(grad) if maximize else grad
    if weight_decay != 0:
        g = torch.add(g, param, alpha=weight_decay)
    new_buf = None
    if momentum != 0:
        if buf is None:
            new_buf = torch.clone(g)
        else:
            new_buf = torch.add(torch.mul(buf, momentum), g, alpha=1 - dampening)
        g = torch.add(g, new_buf, alpha=momentum) if nesterov else new_buf
    return torch.add(param, g, alpha=-lr), new_buf


class BookkeepingSGD(torch.optim.Optimizer):
    """The docs' SGD through a pure function (`sgd_update`), with bookkeeping torch lacks.

    Follows: the `torch.optim.SGD` math block, one tensor at a time; the momentum buffer is a
    new tensor every step (the docs say b_t ← …, not "update b in place"). Extra keys that a
    checker must not hold against it: each param group carries "name" and "step_count" (the
    number of step() calls), and each parameter's state carries "step" (how many steps it has
    taken with a gradient; the docs' t), even when momentum is 0 and there is no buffer. Groups
    and state loaded from torch's state dict, which lack these keys, are accepted.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check_hyperparameters(lr, momentum, dampening, weight_decay, nesterov)
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
                "maximize": maximize,
                "step_count": 0,
            },
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Names each group after its position, unless it was given a name."""
        param_group.setdefault("name", f"group{len(self.param_groups)}")
        super().add_param_group(param_group)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _run_closure(closure)
        with torch.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        group["step_count"] = group.get("step_count", 0) + 1
        hyper = {
            "lr": float(group["lr"]),
            "momentum": group["momentum"],
            "dampening": group["dampening"],
            "weight_decay": group["weight_decay"],
            "nesterov": group["nesterov"],
            "maximize": group["maximize"],
        }
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            state["step"] = state.get("step", 0) + 1
            buf = state.get("momentum_buffer") if hyper["momentum"] != 0 else None
            new_param, new_buf = sgd_update(param, param.grad, buf, **hyper)
            param.copy_(new_param)
            if new_buf is not None:
                state["momentum_buffer"] = new_buf


# --------------------------------------------------------------------------------------------
# 3. torch's own foreach path
# --------------------------------------------------------------------------------------------


class ForeachSGD(torch.optim.SGD):
    """torch.optim.SGD with its foreach (multi-tensor) implementation always on.

    Follows: the SGD docstring's `foreach` argument ("whether foreach implementation of
    optimizer is used"), which a user may set. torch's foreach path has side effects its
    for-loop path lacks (torch 2.13: for nesterov without maximize or weight decay it writes
    g + μb into each parameter's .grad during step()); a checker must not hold those against a
    user who merely chose foreach. The constructor takes SGD's six hyperparameters only; groups
    added later and state dicts loaded later keep foreach on.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=True,
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group["foreach"] = True
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["foreach"] = True


# --------------------------------------------------------------------------------------------
# 4. The docs' formulas with plain multiplies: two roundings per x + a*y
# --------------------------------------------------------------------------------------------


class TwiceRoundedDocSGD(torch.optim.Optimizer):
    """The pseudocode transcribed with ordinary operators: `g + weight_decay * p`,
    `momentum * buf + (1 - dampening) * g`, `g + momentum * buf`, `p - lr * g`.

    Follows: the `torch.optim.SGD` math block literally ("g_t ← −∇f" for maximize, so the
    gradient is negated; b_1 = g_1). Every product is rounded before its sum, where torch's
    AVX2/AVX512 kernels round a fused multiply-add once, so its results are within a few ULP
    of torch's but not bit for bit (at `ATEN_CPU_CAPABILITY=default` torch rounds twice as
    well). Scalars are Python floats, so a float32 parameter is updated in float32. The buffer
    is updated in place (`buf.copy_(...)`), as the state dict's live buffers are in torch.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check_hyperparameters(lr, momentum, dampening, weight_decay, nesterov)
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
                "maximize": maximize,
            },
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, mu, tau = float(group["lr"]), group["momentum"], group["dampening"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                if wd != 0:
                    g = g + wd * p
                if mu != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state or state["momentum_buffer"] is None:
                        state["momentum_buffer"] = g.clone()
                    else:
                        buf = state["momentum_buffer"]
                        buf.copy_(mu * buf + (1 - tau) * g)
                    buf = state["momentum_buffer"]
                    g = g + mu * buf if group["nesterov"] else buf
                p.copy_(p - lr * g)
        return loss


REFERENCES: dict[str, frozenset[str]] = {
    **{
        f"{__name__}:{cls.__name__}": frozenset()
        for cls in (MinimalSGD, BookkeepingSGD, ForeachSGD, TwiceRoundedDocSGD)
    },
    "conformance.compiled_reference:CompiledStepSGD": frozenset(),
}
"""Every correct reference, as "module:Class" targets, each with the features it declares
absent (none: each does all of SGD). CompiledStepSGD lives in its own module, since importing
it compiles: included even where COMPILE_SKIP_REASON says it cannot be built."""
