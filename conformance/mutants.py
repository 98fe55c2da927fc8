"""The self-check catalogue: wrong implementations the conformance suite must catch, and correct
ones it must pass.

Optimizer mutants are `torch.optim.Optimizer` subclasses built exactly like `torch.optim.SGD`
(same signature, defaults, validation, `param_groups`, `state[p]["momentum_buffer"]`). Each is
`CorrectSGD` with one small method overridden, and that method holds exactly one bug (marked
`# BUG:`). `CorrectSGD` itself is torch's for-loop algorithm written out plainly, with the same
torch ops in the same order, so it is bitwise equal to `torch.optim.SGD` on CPU (the default
for-loop path; it runs that algorithm whatever `foreach`/`fused` say). `TwiceRoundedSGD` is
correct mathematics rounded differently: every `x + α·y` is computed as `x + (α*y)`, two
roundings where torch's AVX2/AVX512 kernels fuse the multiply-add into one, so it is within a few
ULP of torch but not bitwise equal (at the DEFAULT capability torch rounds twice too and the two
agree).

Autograd mutants are functions returning a context manager that swaps one derivative rule of a
row of `refimpl.ops.OPS` for a wrong one and restores the row on exit, exceptions included.
A node keeps the row it was recorded with, so the forward must run inside the context.

    from conformance.mutants import OPTIMIZER_MUTANTS, AUTOGRAD_MUTANTS, load
    for mutant in OPTIMIZER_MUTANTS:
        optimizer = load(mutant.target)(params, lr=0.1, momentum=0.9)
    for mutant in AUTOGRAD_MUTANTS:
        with load(mutant.target)():
            loss = model(x).sum(); loss.backward()   # wrong gradients
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from conformance.families import load as load  # mutants.load, as before
from conformance.families.sgd import torch_writes_grad
from refimpl.ops import OPS, _expand_reduced

# --------------------------------------------------------------------------------------------
# The correct optimizers
# --------------------------------------------------------------------------------------------


def _grad_for_differentiable(step: Callable[..., Any]) -> Callable[..., Any]:
    """As torch's optimizers step: without autograd unless the optimizer was built with
    differentiable=True (torch's own decorator for this is private)."""

    @functools.wraps(step)
    def stepped(self: Optimizer, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            return step(self, *args, **kwargs)

    return stepped


def _scalar(value: Any) -> Any:
    """A one-element tensor lr with dimensions as a 0-dim tensor, as torch reads it."""
    return value.squeeze() if isinstance(value, Tensor) and value.dim() != 0 else value


class CorrectSGD(Optimizer):
    """torch.optim.SGD's for-loop algorithm written from scratch; bitwise equal to torch on CPU."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._validate(lr, momentum, dampening, weight_decay, nesterov)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self.constructed = True  # add_param_group calls from here on are the user's

    def _validate(
        self,
        lr: float | Tensor,
        momentum: float,
        dampening: float,
        weight_decay: float | Tensor,
        nesterov: bool,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    @_grad_for_differentiable  # no_grad unless differentiable=True, as torch's step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        # As torch: gather the parameters with a gradient and their buffers first, then update
        # (a parameter listed twice steps twice, each time from the buffer gathered before).
        params = [p for p in group["params"] if self._has_grad(p)]
        uses_momentum = group["momentum"] != 0
        buffers = [self.state[p].get("momentum_buffer") if uses_momentum else None for p in params]
        for i, p in enumerate(params):
            buffers[i] = self._update(p, self._grad(p), buffers[i], group)
        if uses_momentum:
            for p, buf in zip(params, buffers, strict=True):
                self._store(p, buf)

    def _update(
        self, p: Tensor, grad: Tensor, buf: Tensor | None, group: dict[str, Any]
    ) -> Tensor | None:
        """One parameter's step, in place; returns its momentum buffer (torch's loop body)."""
        g = self._signed(grad, group["maximize"])
        if group["weight_decay"] != 0:
            g = self._decayed(g, p, group["weight_decay"])
        if group["momentum"] != 0:
            buf = self._momentum(buf, g, group["momentum"], group["dampening"])
            g = self._nesterov(g, buf, group["momentum"]) if group["nesterov"] else buf
            if group["foreach"] and g is not grad and torch_writes_grad(group):
                grad.copy_(g)  # torch 2.13's foreach path adds μb into .grad itself
        self._descend(p, g, self._lr(group))
        return buf

    # The pieces the mutants override ---------------------------------------------------------

    def _has_grad(self, p: Tensor) -> bool:
        return p.grad is not None

    def _grad(self, p: Tensor) -> Tensor:
        grad = p.grad
        assert grad is not None  # asked only for the parameters that _has_grad
        return grad

    def _store(self, p: Tensor, buf: Tensor | None) -> None:
        self.state[p]["momentum_buffer"] = buf

    def _lr(self, group: dict[str, Any]) -> float | Tensor:
        lr: float | Tensor = _scalar(group["lr"])
        return lr

    def _signed(self, grad: Tensor, maximize: bool) -> Tensor:
        return -grad if maximize else grad

    def _decayed(self, g: Tensor, p: Tensor, weight_decay: float | Tensor) -> Tensor:
        if isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            return g.addcmul_(p.clone(), weight_decay)  # torch's differentiable path
        # torch accepts a tensor for alpha, as torch.optim.SGD passes it; its stubs say a Number
        return g.add(p, alpha=weight_decay)  # type: ignore[arg-type]  # g + λθ

    def _momentum(self, buf: Tensor | None, g: Tensor, momentum: float, dampening: float) -> Tensor:
        if buf is None:
            return g.detach().clone()  # b₁ = g₁: the first step is not dampened
        return buf.mul_(momentum).add_(g, alpha=1 - dampening)  # μb + (1 − τ)g

    def _nesterov(self, g: Tensor, buf: Tensor, momentum: float) -> Tensor:
        return g.add(buf, alpha=momentum)  # g + μb

    def _descend(self, p: Tensor, g: Tensor, lr: float | Tensor) -> None:
        if isinstance(lr, Tensor) and lr.requires_grad:
            p.addcmul_(g, lr, value=-1)
        else:
            p.add_(g, alpha=-lr)  # type: ignore[arg-type]  # θ − γg; a tensor alpha, as above


class TwiceRoundedSGD(CorrectSGD):
    """Correct SGD computing every x + α·y as x + (α*y): two roundings where torch fuses one."""

    def _decayed(self, g: Tensor, p: Tensor, weight_decay: float | Tensor) -> Tensor:
        return g + weight_decay * p

    def _momentum(self, buf: Tensor | None, g: Tensor, momentum: float, dampening: float) -> Tensor:
        if buf is None:
            return g.detach().clone()
        return buf.mul_(momentum).add_((1 - dampening) * g)

    def _nesterov(self, g: Tensor, buf: Tensor, momentum: float) -> Tensor:
        return g + momentum * buf

    def _descend(self, p: Tensor, g: Tensor, lr: float | Tensor) -> None:
        p.add_(-lr * g)


# --------------------------------------------------------------------------------------------
# Optimizer mutants: CorrectSGD with one bug each
# --------------------------------------------------------------------------------------------


class DampeningOnFirstStep(CorrectSGD):
    """The first momentum buffer is (1 − dampening)·g instead of g; exposed by momentum with
    nonzero dampening."""

    def _momentum(self, buf: Tensor | None, g: Tensor, momentum: float, dampening: float) -> Tensor:
        if buf is None:
            return (1 - dampening) * g.detach()  # BUG: torch does not dampen the first step
        return buf.mul_(momentum).add_(g, alpha=1 - dampening)


class UndecayedFirstBuffer(CorrectSGD):
    """The first momentum buffer is taken from the gradient before weight decay is added;
    exposed by momentum with weight decay over two steps."""

    def _update(
        self, p: Tensor, grad: Tensor, buf: Tensor | None, group: dict[str, Any]
    ) -> Tensor | None:
        raw = self._signed(grad, group["maximize"])
        g = raw
        if group["weight_decay"] != 0:
            g = self._decayed(g, p, group["weight_decay"])
        if group["momentum"] != 0:
            if buf is None:
                buf = raw.detach().clone()  # BUG: should start from g, the decayed gradient
            else:
                buf = self._momentum(buf, g, group["momentum"], group["dampening"])
            g = self._nesterov(g, buf, group["momentum"]) if group["nesterov"] else buf
        self._descend(p, g, self._lr(group))
        return buf


class DecayAfterMomentum(CorrectSGD):
    """Weight decay is added to the update after momentum instead of to the gradient before it;
    exposed by momentum with weight decay from the second step on."""

    def _update(
        self, p: Tensor, grad: Tensor, buf: Tensor | None, group: dict[str, Any]
    ) -> Tensor | None:
        g = self._signed(grad, group["maximize"])
        if group["momentum"] != 0:
            buf = self._momentum(buf, g, group["momentum"], group["dampening"])
            g = self._nesterov(g, buf, group["momentum"]) if group["nesterov"] else buf
        if group["weight_decay"] != 0:
            g = self._decayed(g, p, group["weight_decay"])  # BUG: belongs before the momentum
        self._descend(p, g, self._lr(group))
        return buf


class DecayUsesGrad(CorrectSGD):
    """Weight decay adds λ·g instead of λ·θ; exposed by any nonzero weight decay."""

    def _decayed(self, g: Tensor, p: Tensor, weight_decay: float | Tensor) -> Tensor:
        # a tensor alpha, as in CorrectSGD._decayed
        # BUG: the decay term is λθ, not λg
        return g.add(g, alpha=weight_decay)  # type: ignore[arg-type]


class NesterovIgnored(CorrectSGD):
    """nesterov=True steps along the buffer as plain momentum does; exposed by nesterov."""

    def _nesterov(self, g: Tensor, buf: Tensor, momentum: float) -> Tensor:
        return buf  # BUG: Nesterov steps along g + μb


class NesterovWithoutMomentumFactor(CorrectSGD):
    """Nesterov steps along g + b instead of g + μ·b; exposed by nesterov."""

    def _nesterov(self, g: Tensor, buf: Tensor, momentum: float) -> Tensor:
        return g.add(buf)  # BUG: alpha=momentum forgotten


class MaximizeIgnored(CorrectSGD):
    """maximize=True still descends the gradient; exposed by any maximize run."""

    def _signed(self, grad: Tensor, maximize: bool) -> Tensor:
        return grad  # BUG: maximize should negate the gradient


class MaximizeFlipsUpdate(CorrectSGD):
    """maximize is done by stepping uphill (−lr) instead of negating the gradient, which flips
    the weight-decay term too; exposed by maximize with weight decay."""

    def _signed(self, grad: Tensor, maximize: bool) -> Tensor:
        return grad

    def _lr(self, group: dict[str, Any]) -> float | Tensor:
        lr = super()._lr(group)
        return -lr if group["maximize"] else lr  # BUG: also flips the sign of λθ


class DampeningAsFactor(CorrectSGD):
    """The momentum update adds τ·g instead of (1 − τ)·g; exposed by momentum over two steps
    (with any dampening but 0.5)."""

    def _momentum(self, buf: Tensor | None, g: Tensor, momentum: float, dampening: float) -> Tensor:
        if buf is None:
            return g.detach().clone()
        return buf.mul_(momentum).add_(g, alpha=dampening)  # BUG: alpha=1 - dampening


class NoneGradAsZero(CorrectSGD):
    """Parameters whose .grad is None are stepped as if it were zero (weight decay and momentum
    still move them, and they get state); exposed by a parameter without gradient."""

    def _has_grad(self, p: Tensor) -> bool:
        return True  # BUG: torch skips parameters whose grad is None

    def _grad(self, p: Tensor) -> Tensor:
        return p.grad if p.grad is not None else torch.zeros_like(p)


class SkipsZeroGrad(CorrectSGD):
    """Parameters whose gradient is all zeros are skipped, so weight decay and momentum do not
    move them; exposed by an all-zero gradient with weight decay or momentum."""

    def _has_grad(self, p: Tensor) -> bool:
        return p.grad is not None and bool(p.grad.any())  # BUG: a zero gradient still steps


class DecayModifiesGrad(CorrectSGD):
    """Weight decay is added to p.grad in place, so .grad changes (torch never writes it);
    exposed by weight decay without maximize."""

    def _decayed(self, g: Tensor, p: Tensor, weight_decay: float | Tensor) -> Tensor:
        # a tensor alpha, as in CorrectSGD._decayed
        # BUG: in place on the caller's gradient
        return g.add_(p, alpha=weight_decay)  # type: ignore[arg-type]


class BufferAliasesGrad(CorrectSGD):
    """The first momentum buffer is p.grad itself (no clone), so later buffer updates corrupt
    .grad and later accumulation corrupts the buffer; exposed by momentum without weight decay or
    maximize over two steps."""

    def _momentum(self, buf: Tensor | None, g: Tensor, momentum: float, dampening: float) -> Tensor:
        if buf is None:
            return g  # BUG: must be g.detach().clone()
        return buf.mul_(momentum).add_(g, alpha=1 - dampening)


class LrReadOnce(CorrectSGD):
    """The learning rate is read once at construction, so later changes to param_groups' lr (and
    schedulers, and other groups' lr) are ignored; exposed by changing lr between steps."""

    def _lr(self, group: dict[str, Any]) -> float | Tensor:
        # BUG: should read group["lr"] at every step
        lr: float | Tensor = _scalar(self.defaults["lr"])
        return lr


class LrOffByOnePpm(CorrectSGD):
    """The step uses lr·(1 + 10⁻⁶); exposed by float64 parameters (and often float32)."""

    def _lr(self, group: dict[str, Any]) -> float | Tensor:
        return super()._lr(group) * (1 + 1e-6)  # BUG: a stray factor


class Float32Compute(CorrectSGD):
    """The update is computed in float32 and cast back even for float64 parameters; exposed by
    float64 parameters."""

    def _update(
        self, p: Tensor, grad: Tensor, buf: Tensor | None, group: dict[str, Any]
    ) -> Tensor | None:
        # BUG: .float() loses float64's precision (torch computes in the parameter's dtype)
        p32 = p.detach().float()
        buf32 = super()._update(p32, grad.float(), None if buf is None else buf.float(), group)
        p.copy_(p32)
        return None if buf32 is None else buf32.to(p.dtype)


class LoadStateDropsState(CorrectSGD):
    """load_state_dict forgets the loaded state, so momentum buffers restart after a save and
    load; exposed by momentum with a state-dict round trip between steps."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.state.clear()  # BUG: the loaded momentum buffers are thrown away


class StateDictReversed(CorrectSGD):
    """state_dict numbers the parameters' state from the last parameter, so each buffer is saved
    under another parameter's index; exposed by momentum and a state-dict round trip."""

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        count = sum(len(group["params"]) for group in state_dict["param_groups"])
        # BUG: state must be keyed by the parameter's own index
        state_dict["state"] = {count - 1 - i: s for i, s in state_dict["state"].items()}
        return state_dict


class ClosureLossDropped(CorrectSGD):
    """step(closure) runs the closure but returns None instead of its loss; exposed by any
    step with a closure."""

    @_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is not None:
            with torch.enable_grad():
                closure()  # BUG: the loss should be returned
        for group in self.param_groups:
            self._step_group(group)
        return None


class ClosureUnderNoGrad(CorrectSGD):
    """step(closure) runs the closure under the step's no_grad, so a closure that calls
    backward() fails; exposed by any step with such a closure."""

    @_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            loss = closure()  # BUG: needs `with torch.enable_grad():`
        for group in self.param_groups:
            self._step_group(group)
        return loss


class ZeroGradKeepsZeros(CorrectSGD):
    """zero_grad() defaults to set_to_none=False, leaving zero tensors instead of None; exposed by
    zero_grad() with no argument (and a later step with weight decay or momentum)."""

    def zero_grad(self, set_to_none: bool = False) -> None:  # BUG: torch's default is True
        super().zero_grad(set_to_none)


class MomentumNotPersisted(CorrectSGD):
    """The momentum buffer is never written back to the state, so every step is a first step;
    exposed by momentum over two steps."""

    def _store(self, p: Tensor, buf: Tensor | None) -> None:
        pass  # BUG: should set self.state[p]["momentum_buffer"] = buf


class AcceptsInvalidConfig(CorrectSGD):
    """The constructor accepts nesterov with nonzero dampening, which torch rejects with
    ValueError (a hand-written check that forgets half of the rule); exposed by constructing
    SGD(nesterov=True, momentum>0, dampening≠0)."""

    def _validate(
        self,
        lr: float | Tensor,
        momentum: float,
        dampening: float,
        weight_decay: float | Tensor,
        nesterov: bool,
    ) -> None:
        super()._validate(lr, momentum, 0, weight_decay, nesterov)  # BUG: dampening unchecked


class RejectsZeroLr(CorrectSGD):
    """The constructor raises ValueError for lr == 0, which torch accepts (a frozen run, the
    start of a warm-up schedule); exposed by constructing SGD(lr=0)."""

    def _validate(
        self,
        lr: float | Tensor,
        momentum: float,
        dampening: float,
        weight_decay: float | Tensor,
        nesterov: bool,
    ) -> None:
        super()._validate(lr, momentum, dampening, weight_decay, nesterov)
        if lr == 0:  # BUG: torch only rejects lr < 0
            raise ValueError(f"Invalid learning rate: {lr}")


class AddParamGroupNoDefaults(CorrectSGD):
    """A group added by add_param_group after construction keeps only the keys it was given:
    the hyperparameters it leaves out are not filled from the defaults (the constructor's
    groups are), so its step fails with KeyError and its param_groups entry lacks them;
    exposed by add_param_group with a group that omits a hyperparameter."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "constructed", False):
            super().add_param_group(param_group)
            return
        defaults, self.defaults = self.defaults, {}  # BUG: missing keys must come from these
        try:
            super().add_param_group(param_group)  # torch's checks, without the filling
        finally:
            self.defaults = defaults


class BufferStoredNotRead(CorrectSGD):
    """The momentum buffer is written to the state every step but never read back: each step
    starts a fresh buffer b = g, so momentum never accumulates (the state looks right, its
    values do not); exposed by momentum over two steps of one parameter."""

    def _momentum(self, buf: Tensor | None, g: Tensor, momentum: float, dampening: float) -> Tensor:
        return super()._momentum(None, g, momentum, dampening)  # BUG: ignores the stored buf


# --------------------------------------------------------------------------------------------
# Autograd mutants: one wrong derivative rule in refimpl.ops.OPS, for the duration of a `with`
# --------------------------------------------------------------------------------------------


@contextmanager
def patched_rule(op_name: str, index: int, rule: Callable[..., Any]) -> Iterator[None]:
    """Replaces derivative `index` of the row `OPS[op_name]` by `rule` inside the `with`; the
    original row object is put back on exit, exceptions included."""
    original = OPS[op_name]
    rules = list(original.derivatives)
    rules[index] = rule
    OPS[op_name] = dataclasses.replace(original, derivatives=tuple(rules))
    try:
        yield
    finally:
        OPS[op_name] = original


def relu_grad_at_zero() -> AbstractContextManager[None]:
    """relu's derivative passes the gradient where x >= 0, so inputs exactly 0 get g instead of
    torch's 0; exposed by relu of exact zeros."""
    return patched_rule("relu", 0, lambda g, y, x: np.where(x >= 0, g, g.dtype.type(0)))


def tanh_grad_linear() -> AbstractContextManager[None]:
    """tanh's derivative is 1 − y instead of 1 − y²; exposed by any tanh."""
    return patched_rule("tanh", 0, lambda g, y, x: g * (1 - y))


def sigmoid_grad_plus() -> AbstractContextManager[None]:
    """sigmoid's derivative is y(1 + y) instead of y(1 − y); exposed by any sigmoid."""
    return patched_rule("sigmoid", 0, lambda g, y, x: g * (y * (1 + y)))


def mul_grad_swapped() -> AbstractContextManager[None]:
    """The gradient of a in a·b is g·a instead of g·b; exposed by a product of two different
    tensors."""
    return patched_rule("mul", 0, lambda g, y, a, b: g * a)


def mean_grad_not_divided() -> AbstractContextManager[None]:
    """mean's derivative forgets to divide by the element count (it is sum's); exposed by a mean
    over more than one element."""
    return patched_rule(
        "mean", 0, lambda g, y, x, dim, keepdim: _expand_reduced(g, x.shape, dim, keepdim)
    )


def mse_grad_not_doubled() -> AbstractContextManager[None]:
    """mse_loss's derivative forgets the 2 of d(x - t)²/dx; exposed by any model trained on
    mse with an output off its target."""
    return patched_rule("mse_loss", 0, lambda g, y, x, t, reduction: _mse_half(g, x, t, reduction))


def _mse_half(g: np.ndarray, x: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    scale = 1.0 / x.size if reduction == "mean" else 1.0
    grad: np.ndarray = (scale * (x - t) * g).astype(x.dtype)  # BUG: the 2 is missing
    return grad


def linear_bias_grad_mean() -> AbstractContextManager[None]:
    """linear's bias gradient averages over the batch instead of summing; exposed by linear with
    a bias and a batch of more than one row."""
    return patched_rule("linear", 2, lambda g, y, x, w, b: g.reshape(-1, g.shape[-1]).mean(axis=0))


def log_softmax_grad_no_softmax() -> AbstractContextManager[None]:
    """log_softmax's derivative subtracts sum(g) without the softmax factor exp(y); exposed by
    log_softmax (and cross-entropy) of non-uniform logits."""
    return patched_rule("log_softmax", 0, lambda g, y, x, dim: g - g.sum(axis=dim, keepdims=True))


def exp_grad_identity() -> AbstractContextManager[None]:
    """exp's derivative returns the incoming gradient unchanged instead of g·exp(x); exposed by
    exp of anything but 0."""
    return patched_rule("exp", 0, lambda g, y, x: g)


# Kinks (conformance.models.KINKS): a rule that is right on both sides but takes the wrong one
# at the break point, or routes a tie's gradient otherwise than torch. None for smooth_l1 and
# huber: both sides of their derivative agree at beta / delta, bit for bit. None for
# max_pool2d's ties either: in these models a window's tied maxima come from equal input
# patches, whose gradients are the same whichever element of the window takes it.


def elu_grad_at_zero_right_side() -> AbstractContextManager[None]:
    """elu's derivative at exactly 0 is taken from the right (1) instead of torch's left
    (alpha · exp(0) = alpha); exposed by elu with alpha ≠ 1 of an exact zero."""
    return patched_rule("elu", 0, lambda g, y, x, alpha: np.where(x < 0, g * alpha * np.exp(x), g))


def leaky_relu_grad_at_zero() -> AbstractContextManager[None]:
    """leaky_relu's derivative passes the whole gradient at exactly 0 instead of torch's
    negative_slope share; exposed by leaky_relu of an exact zero."""
    return patched_rule(
        "leaky_relu", 0, lambda g, y, x, negative_slope: np.where(x >= 0, g, g * negative_slope)
    )


def abs_grad_sign_at_zero() -> AbstractContextManager[None]:
    """abs's derivative takes sign(0) = 1 instead of torch's 0; exposed by abs of an exact
    zero (or l1_loss of an output equal to its target)."""
    return patched_rule("abs", 0, lambda g, y, x: g * np.where(x >= 0, 1, -1).astype(x.dtype))


def clamp_grad_zero_at_bound() -> AbstractContextManager[None]:
    """clamp's derivative is 0 at a value exactly on a bound instead of passing the gradient
    as torch does; exposed by clamp of a value equal to its min or max."""

    def rule(g: np.ndarray, y: Any, x: np.ndarray, min: Any, max: Any) -> np.ndarray:
        inside = np.ones(x.shape, dtype=bool)
        if min is not None:
            inside &= x > min  # BUG: torch's mask is x >= min
        if max is not None:
            inside &= x < max  # BUG: and x <= max
        return np.where(inside, g, g.dtype.type(0))

    return patched_rule("clamp", 0, rule)


def amax_grad_not_shared() -> AbstractContextManager[None]:
    """amax gives every tied maximum the whole gradient instead of an even share; exposed by
    amax over tied maxima."""

    def rule(g: np.ndarray, y: np.ndarray, x: np.ndarray, dim: Any, keepdim: bool) -> np.ndarray:
        grad: np.ndarray
        if x.ndim == 0:
            grad = g + g.dtype.type(0)
        else:
            mask = (x == _expand_reduced(y, x.shape, dim, keepdim)).astype(x.dtype)
            grad = _expand_reduced(g, x.shape, dim, keepdim) * mask  # BUG: not divided by count
        return grad

    return patched_rule("amax", 0, rule)


def max_grad_first_tie() -> AbstractContextManager[None]:
    """max() over all elements gives the whole gradient to the first maximum instead of
    sharing it evenly among tied maxima as torch does; exposed by max of tied maxima."""

    def rule(g: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        grad = np.zeros(x.shape, dtype=g.dtype)
        grad.flat[int(np.argmax(x))] = g  # BUG: torch shares g among all maxima
        return grad

    return patched_rule("max", 0, rule)


def max_dim_grad_shared() -> AbstractContextManager[None]:
    """max(dim)'s gradient is shared evenly among tied maxima instead of going to the index it
    returned (the first), as torch does; exposed by max over a dim with tied maxima."""

    def rule(g: np.ndarray, y: np.ndarray, x: np.ndarray, dim: int, keepdim: bool) -> np.ndarray:
        mask = (x == _expand_reduced(y, x.shape, dim, keepdim)).astype(x.dtype)
        count = mask.sum(axis=dim, keepdims=True)
        # BUG: shared among the tied maxima, not given to the index
        grad: np.ndarray = _expand_reduced(g, x.shape, dim, keepdim) / count * mask
        return grad

    return patched_rule("max_dim", 0, rule)


def softmax_grad_sum_without_y() -> AbstractContextManager[None]:
    """softmax's derivative subtracts y · sum(g) instead of y · sum(g · y); exposed by softmax
    whose upstream gradient is not constant along the dim."""
    return patched_rule(
        "softmax", 0, lambda g, y, x, dim: g * y - y * g.sum(axis=dim, keepdims=True)
    )


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    name: str  # short kebab-case id, e.g. "dampening-on-first-step"
    kind: Literal["optimizer", "autograd"]
    description: str  # one sentence: the bug and which programs expose it
    target: str  # "conformance.mutants:Name": an optimizer class, or a context-manager factory


def _mutant(name: str, kind: Literal["optimizer", "autograd"], obj: Any) -> Mutant:
    description = " ".join(inspect.cleandoc(obj.__doc__).split())
    return Mutant(name, kind, description, f"{__name__}:{obj.__name__}")


OPTIMIZER_MUTANTS: tuple[Mutant, ...] = tuple(
    _mutant(name, "optimizer", cls)
    for name, cls in [
        ("dampening-on-first-step", DampeningOnFirstStep),
        ("first-buffer-without-weight-decay", UndecayedFirstBuffer),
        ("weight-decay-after-momentum", DecayAfterMomentum),
        ("weight-decay-uses-grad", DecayUsesGrad),
        ("nesterov-ignored", NesterovIgnored),
        ("nesterov-without-momentum-factor", NesterovWithoutMomentumFactor),
        ("maximize-ignored", MaximizeIgnored),
        ("maximize-flips-update", MaximizeFlipsUpdate),
        ("dampening-as-factor", DampeningAsFactor),
        ("none-grad-as-zero", NoneGradAsZero),
        ("skips-zero-grad", SkipsZeroGrad),
        ("weight-decay-modifies-grad", DecayModifiesGrad),
        ("buffer-aliases-grad", BufferAliasesGrad),
        ("lr-read-once", LrReadOnce),
        ("lr-off-by-one-ppm", LrOffByOnePpm),
        ("float32-compute", Float32Compute),
        ("load-state-drops-state", LoadStateDropsState),
        ("state-dict-reversed", StateDictReversed),
        ("closure-loss-dropped", ClosureLossDropped),
        ("closure-under-no-grad", ClosureUnderNoGrad),
        ("zero-grad-keeps-zeros", ZeroGradKeepsZeros),
        ("momentum-not-persisted", MomentumNotPersisted),
        ("accepts-invalid-config", AcceptsInvalidConfig),
        ("rejects-zero-lr", RejectsZeroLr),
        ("add-param-group-no-defaults", AddParamGroupNoDefaults),
        ("buffer-stored-not-read", BufferStoredNotRead),
    ]
)

AUTOGRAD_MUTANTS: tuple[Mutant, ...] = tuple(
    _mutant(name, "autograd", factory)
    for name, factory in [
        ("relu-grad-at-zero", relu_grad_at_zero),
        ("tanh-grad-linear", tanh_grad_linear),
        ("sigmoid-grad-plus", sigmoid_grad_plus),
        ("mul-grad-swapped", mul_grad_swapped),
        ("mean-grad-not-divided", mean_grad_not_divided),
        ("mse-grad-not-doubled", mse_grad_not_doubled),
        ("linear-bias-grad-mean", linear_bias_grad_mean),
        ("log-softmax-grad-no-softmax", log_softmax_grad_no_softmax),
        ("elu-grad-at-zero-right-side", elu_grad_at_zero_right_side),
        ("leaky-relu-grad-at-zero", leaky_relu_grad_at_zero),
        ("abs-grad-sign-at-zero", abs_grad_sign_at_zero),
        ("clamp-grad-zero-at-bound", clamp_grad_zero_at_bound),
        ("amax-grad-not-shared", amax_grad_not_shared),
        ("max-grad-first-tie", max_grad_first_tie),
        ("max-dim-grad-shared", max_dim_grad_shared),
        ("softmax-grad-sum-without-y", softmax_grad_sum_without_y),
    ]
)

# Once caught by drawn programs only now and then (exp appears only in op graphs, about 6% of
# drawn models); a canonical model shows it now (conformance.canonical), so every profile
# catches it whatever the seed, and the kill-matrix test requires it like the others.
THOROUGH_MUTANTS: tuple[Mutant, ...] = (
    _mutant("exp-grad-identity", "autograd", exp_grad_identity),
)

# Optimizers the suite must pass: TwiceRoundedSGD only in its ULP mode (it fails `exact` wherever
# torch fuses the multiply-add, i.e. at the AVX2 and AVX512 capabilities).
CORRECT_OPTIMIZERS: tuple[str, ...] = (
    "torch.optim:SGD",
    "conformance.mutants:CorrectSGD",
    "conformance.mutants:TwiceRoundedSGD",
)
