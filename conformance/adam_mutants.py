"""The Adam/AdamW self-check catalogue: wrong Adams the conformance suite must catch, and correct
ones it must pass.

`CorrectAdam` and `CorrectAdamW` are `torch.optim.Optimizer` subclasses constructed exactly like
`torch.optim.Adam` / `torch.optim.AdamW` in torch 2.13 (same signature, defaults, validation and
messages, `param_groups` keys, and state keys `step` — a 0-dim float tensor on the CPU —,
`exp_avg`, `exp_avg_sq` and, with amsgrad, `max_exp_avg_sq`). Their step is torch's for-loop
algorithm (`torch.optim.adam._single_tensor_adam`, the default path on CPU) written out plainly
with the same torch ops in the same order, so they are bitwise equal to torch there, for float32
and float64, with amsgrad, maximize, weight decay (coupled or decoupled), tensor learning rates
and tensor betas. They run that algorithm whatever `foreach`/`fused`/`capturable`/`differentiable`
say (torch's fused path rounds differently, its capturable and differentiable branch computes
the step otherwise; its foreach path agrees bit for bit on CPU); `differentiable` turns autograd
on during the step, as torch's does. Only public torch APIs are used.

Each mutant is `CorrectAdam` (or `CorrectAdamW`) with one small method overridden, and that
method holds exactly one bug (marked `# BUG:`). A mutant of both families is written once on
`CorrectAdam`; its AdamW twin (`NameW`) inherits the bug and takes `CorrectAdamW`'s constructor.

    from conformance.adam_mutants import ADAM_MUTANTS, ADAMW_MUTANTS
    from conformance.mutants import load
    for mutant in ADAMW_MUTANTS:
        optimizer = load(mutant.target)(params, lr=1e-2, weight_decay=0.1, amsgrad=True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from conformance.mutants import Mutant

Scalar = float | Tensor
Moments = tuple[Tensor, Tensor, Tensor | None, Tensor]  # exp_avg, exp_avg_sq, max, step


def _scalar(x: Any) -> Any:
    """A 1-element tensor hyperparameter as a 0-dim tensor, anything else unchanged (what
    torch's optimizers do to lr and betas before using them)."""
    return x.squeeze() if isinstance(x, Tensor) and x.dim() != 0 else x


def _scalar_dtype(fused: bool | None = None) -> torch.dtype:
    """The dtype of state["step"]: float32, or float64 under a float64 default dtype (always
    float32 for fused)."""
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# The correct optimizers
# --------------------------------------------------------------------------------------------


class CorrectAdam(Optimizer):
    """torch.optim.Adam's for-loop algorithm written from scratch; bitwise equal to torch on
    CPU."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self._validate(lr, betas, eps, weight_decay, foreach, capturable)
        defaults = {
            "lr": lr,
            "betas": tuple(map(_scalar, betas)),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            self._step_supports_amp_scaling = True  # torch's flag for GradScaler, as Adam sets
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def _validate(
        self,
        lr: float | Tensor,
        betas: tuple[Any, ...],
        eps: float,
        weight_decay: float,
        foreach: bool | None,
        capturable: bool,
    ) -> None:
        """torch.optim.Adam's checks, in its order, with its messages."""
        if isinstance(lr, Tensor):
            if foreach and not capturable:
                raise ValueError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not (
            all(isinstance(b, float) for b in betas[:2])
            or all(isinstance(b, Tensor) for b in betas[:2])
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        for index, beta in enumerate(betas[:2]):
            if isinstance(beta, Tensor):
                if not capturable and foreach:
                    raise ValueError(
                        f"betas[{index}] as a Tensor is not supported for "
                        "capturable=False and foreach=True"
                    )
                if beta.numel() != 1:
                    raise ValueError(f"Tensor betas[{index}] must be 1-element")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            fused = group.setdefault("fused", None)
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    step_val = float(p_state["step"])  # a number (older or foreign state)
                    if group["capturable"] or group["fused"]:
                        p_state["step"] = torch.tensor(
                            step_val, dtype=_scalar_dtype(fused), device=p.device
                        )
                    else:
                        p_state["step"] = torch.tensor(step_val, dtype=_scalar_dtype())

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        # As torch's step: autograd off unless differentiable=True; the closure runs with it on.
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        # As torch: gather every parameter with a gradient and its state first (creating the
        # state lazily, raising torch's errors before any parameter of the group moves), then
        # update them one by one.
        params: list[Tensor] = []
        grads: list[Tensor] = []
        moments: list[Moments] = []
        for p in group["params"]:
            if not self._has_grad(p):
                continue
            params.append(p)
            grad = self._grad(p)
            if grad.is_sparse:
                raise RuntimeError(
                    "Adam does not support sparse gradients, please consider SparseAdam instead"
                )
            grads.append(grad)
            state = self.state[p]
            if len(state) == 0:
                self._init_state(p, state, group)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            max_exp_avg_sq = state["max_exp_avg_sq"] if group["amsgrad"] else None
            if group["differentiable"] and state["step"].requires_grad:
                raise RuntimeError(
                    "`requires_grad` is not supported for `step` in differentiable mode"
                )
            if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
                raise RuntimeError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            moments.append((exp_avg, exp_avg_sq, max_exp_avg_sq, state["step"]))
        for p, grad, moment in zip(params, grads, moments, strict=True):
            self._update(p, grad, moment, group)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._zero_step(p, group)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, p: Tensor, grad: Tensor, moments: Moments, group: dict[str, Any]) -> None:
        """One parameter's step, in place (torch's loop body)."""
        exp_avg, exp_avg_sq, max_exp_avg_sq, step_t = moments
        beta1, beta2 = (_scalar(beta) for beta in self._betas(group))
        lr = _scalar(group["lr"])
        g = self._signed(grad, group["maximize"])
        step = self._advance(step_t)
        if group["weight_decay"] != 0:
            g = self._decay(p, g, group["weight_decay"], lr, group["decoupled_weight_decay"])
        if torch.is_complex(p):  # complex parameters step as pairs of reals, as in torch
            g, exp_avg, exp_avg_sq = (torch.view_as_real(t) for t in (g, exp_avg, exp_avg_sq))
            if max_exp_avg_sq is not None:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
            p = torch.view_as_real(p)
        # A tensor beta1 weighs the lerp in the parameter's dtype (torch casts it once per
        # device and dtype; the cast is the same every time).
        device_beta1 = (
            beta1.to(device=p.device, dtype=p.dtype) if isinstance(beta1, Tensor) else beta1
        )
        self._first_moment(exp_avg, g, device_beta1)
        self._second_moment(exp_avg_sq, g, beta2)
        bias_correction1, bias_correction2 = self._bias_corrections(beta1, beta2, step)
        step_size = self._step_size(lr, bias_correction1)
        if max_exp_avg_sq is not None:
            denom = self._amsgrad_denominator(
                max_exp_avg_sq, exp_avg_sq, bias_correction2, group["eps"]
            )
        else:
            denom = self._denominator(exp_avg_sq, bias_correction2, group["eps"])
        self._descend(p, exp_avg, denom, step_size)

    # The pieces the mutants override ---------------------------------------------------------

    def _has_grad(self, p: Tensor) -> bool:
        return p.grad is not None

    def _grad(self, p: Tensor) -> Tensor:
        assert p.grad is not None
        return p.grad

    def _zero_step(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """A new step counter at 0: on the CPU in the scalar dtype, unless capturable or fused
        (then on the parameter's device)."""
        if group["capturable"] or group["fused"]:
            return torch.zeros((), dtype=_scalar_dtype(group["fused"]), device=p.device)
        return torch.tensor(0.0, dtype=_scalar_dtype(), device="cpu")

    def _betas(self, group: dict[str, Any]) -> tuple[Scalar, Scalar]:
        beta1, beta2 = group["betas"]
        return beta1, beta2

    def _signed(self, grad: Tensor, maximize: bool) -> Tensor:
        return -grad if maximize else grad

    def _advance(self, step_t: Tensor) -> float:
        """Counts this step; returns t, the step number the bias corrections use."""
        step_t += 1
        return step_t.item()

    def _decay(
        self, p: Tensor, g: Tensor, weight_decay: Scalar, lr: Scalar, decoupled: bool
    ) -> Tensor:
        if decoupled:
            p.mul_(1 - lr * weight_decay)  # θ ← θ(1 − γλ)
            return g
        # torch's Adam passes tensors for alpha and value too; its stubs say a Number
        return g.add(p, alpha=weight_decay)  # type: ignore[arg-type]  # g + λθ

    def _first_moment(self, exp_avg: Tensor, g: Tensor, beta1: Scalar) -> None:
        exp_avg.lerp_(g, 1 - beta1)  # m ← β₁m + (1 − β₁)g

    def _second_moment(self, exp_avg_sq: Tensor, g: Tensor, beta2: Scalar) -> None:
        # v ← β₂v + (1 − β₂)g²; a tensor value, as in _decay
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # type: ignore[arg-type]

    def _bias_corrections(self, beta1: Scalar, beta2: Scalar, step: float) -> tuple[Scalar, Scalar]:
        return 1 - beta1**step, 1 - beta2**step

    def _step_size(self, lr: Scalar, bias_correction1: Scalar) -> Scalar:
        return lr / bias_correction1

    def _denominator(self, exp_avg_sq: Tensor, bias_correction2: Scalar, eps: float) -> Tensor:
        return (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)  # √v / √(1 − β₂ᵗ) + ε

    def _amsgrad_denominator(
        self, max_exp_avg_sq: Tensor, exp_avg_sq: Tensor, bias_correction2: Scalar, eps: float
    ) -> Tensor:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)  # vmax ← max(vmax, v)
        return self._denominator(max_exp_avg_sq, bias_correction2, eps)

    def _descend(self, p: Tensor, exp_avg: Tensor, denom: Tensor, step_size: Scalar) -> None:
        # θ − (γ / (1 − β₁ᵗ))·m / denom; a tensor value, as in _decay
        p.addcdiv_(exp_avg, denom, value=-step_size)  # type: ignore[arg-type]


class CorrectAdamW(CorrectAdam):
    """torch.optim.AdamW: CorrectAdam with decoupled weight decay (default 1e-2), constructed
    like torch's AdamW; bitwise equal to torch on CPU."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True  # as torch: loaded state stays AdamW


# --------------------------------------------------------------------------------------------
# Mutants of both families: CorrectAdam with one bug each (the AdamW twins are below)
# --------------------------------------------------------------------------------------------


class BiasCorrectionOffByOne(CorrectAdam):
    """The bias corrections use t + 1 instead of the step number t, as if the counter started at
    one; exposed by any step."""

    def _bias_corrections(self, beta1: Scalar, beta2: Scalar, step: float) -> tuple[Scalar, Scalar]:
        return 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)  # BUG: t, not t + 1


class EpsInsideSqrt(CorrectAdam):
    """The denominator is √(v̂ + ε) instead of √v̂ + ε; exposed by any step (most where v̂ is
    small)."""

    def _denominator(self, exp_avg_sq: Tensor, bias_correction2: Scalar, eps: float) -> Tensor:
        return (exp_avg_sq / bias_correction2).add_(eps).sqrt()  # BUG: ε belongs outside √


class AmsgradMaxOfBiasCorrected(CorrectAdam):
    """amsgrad keeps the running maximum of the bias-corrected v̂ instead of v (and divides by
    its root without correcting it again); exposed by amsgrad over two steps or more."""

    def _amsgrad_denominator(
        self, max_exp_avg_sq: Tensor, exp_avg_sq: Tensor, bias_correction2: Scalar, eps: float
    ) -> Tensor:
        # BUG: torch keeps max(vmax, v) and bias-corrects it at each step
        torch.maximum(max_exp_avg_sq, exp_avg_sq / bias_correction2, out=max_exp_avg_sq)
        return max_exp_avg_sq.sqrt().add_(eps)


class StepSharedAcrossParameters(CorrectAdam):
    """Every parameter's state holds the same step tensor, so one counter advances once per
    parameter stepped and the second parameter of the first step bias-corrects with t = 2;
    exposed by two or more parameters with gradients."""

    def _zero_step(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        new = super()._zero_step(p, group)
        # BUG: one counter per parameter
        shared: Tensor = self.__dict__.setdefault("shared_step", new)
        return shared


class LoadStateResetsStep(CorrectAdam):
    """load_state_dict restores the moments but restarts every step counter at 0, so the bias
    corrections start over; exposed by a state-dict round trip (or a load from torch) between
    steps."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():
            state["step"] = torch.zeros_like(state["step"])  # BUG: the loaded step is lost


class StateDictDropsStep(CorrectAdam):
    """state_dict leaves each parameter's step out of the saved state, so loading it (here or
    into torch) fails with KeyError; exposed by state_dict after a step."""

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        for index, state in state_dict["state"].items():
            state_dict["state"][index] = {
                k: v for k, v in state.items() if k != "step"
            }  # BUG: torch saves the step count
        return state_dict


class BetasSwapped(CorrectAdam):
    """β₁ and β₂ are used the other way round (the first moment averages with β₂, the second
    with β₁); exposed by any step with β₁ ≠ β₂."""

    def _betas(self, group: dict[str, Any]) -> tuple[Scalar, Scalar]:
        beta1, beta2 = group["betas"]
        return beta2, beta1  # BUG: (β₁, β₂) swapped


class MaximizeIgnored(CorrectAdam):
    """maximize=True still descends the gradient; exposed by any maximize run."""

    def _signed(self, grad: Tensor, maximize: bool) -> Tensor:
        return grad  # BUG: maximize should negate the gradient


class AmsgradIgnored(CorrectAdam):
    """amsgrad=True divides by √v̂ as plain Adam does and never updates max_exp_avg_sq; exposed
    by amsgrad once v shrinks (or by the saved max_exp_avg_sq)."""

    def _amsgrad_denominator(
        self, max_exp_avg_sq: Tensor, exp_avg_sq: Tensor, bias_correction2: Scalar, eps: float
    ) -> Tensor:
        return self._denominator(exp_avg_sq, bias_correction2, eps)  # BUG: max(vmax, v) unused


class StepSizeNotBiasCorrected(CorrectAdam):
    """The step size is lr instead of lr / (1 − β₁ᵗ), so early steps are ten times too small
    with β₁ = 0.9; exposed by any step with β₁ > 0."""

    def _step_size(self, lr: Scalar, bias_correction1: Scalar) -> Scalar:
        return lr  # BUG: lr / bias_correction1


class BiasCorrection2NotRooted(CorrectAdam):
    """√v is divided by 1 − β₂ᵗ instead of its square root; exposed by any step with β₂ > 0."""

    def _denominator(self, exp_avg_sq: Tensor, bias_correction2: Scalar, eps: float) -> Tensor:
        return (exp_avg_sq.sqrt() / bias_correction2).add_(eps)  # BUG: bias_correction2**0.5


class SecondMomentOfAbsGrad(CorrectAdam):
    """The second moment averages |g| instead of g²; exposed by any gradient whose magnitude is
    not 0 or 1."""

    def _second_moment(self, exp_avg_sq: Tensor, g: Tensor, beta2: Scalar) -> None:
        # a tensor alpha, as in CorrectAdam._decay
        # BUG: g², not |g|
        exp_avg_sq.mul_(beta2).add_(g.abs(), alpha=1 - beta2)  # type: ignore[arg-type]


class FirstMomentLerpWeightBeta1(CorrectAdam):
    """The first moment is lerp(m, g, β₁) = (1 − β₁)m + β₁g, lerp's weight taken for the
    decay; exposed by any step with β₁ ≠ 0.5."""

    def _first_moment(self, exp_avg: Tensor, g: Tensor, beta1: Scalar) -> None:
        exp_avg.lerp_(g, beta1)  # BUG: lerp's weight is the new value's share, 1 − β₁


# --------------------------------------------------------------------------------------------
# Mutants of one family
# --------------------------------------------------------------------------------------------


class WeightDecayDecoupled(CorrectAdam):
    """Adam's weight decay shrinks θ by (1 − γλ) as AdamW does instead of adding λθ to the
    gradient; exposed by Adam with nonzero weight decay."""

    def _decay(
        self, p: Tensor, g: Tensor, weight_decay: Scalar, lr: Scalar, decoupled: bool
    ) -> Tensor:
        p.mul_(1 - lr * weight_decay)  # BUG: Adam's decay is L2, g + λθ, through the moments
        return g


class WeightDecayCoupled(CorrectAdamW):
    """AdamW's weight decay adds λθ to the gradient (Adam's L2) instead of shrinking θ by
    (1 − γλ); exposed by AdamW with nonzero weight decay (its default)."""

    def _decay(
        self, p: Tensor, g: Tensor, weight_decay: Scalar, lr: Scalar, decoupled: bool
    ) -> Tensor:
        # a tensor alpha, as in CorrectAdam._decay
        # BUG: AdamW decays θ itself, not the gradient
        return g.add(p, alpha=weight_decay)  # type: ignore[arg-type]


class WeightDecayWithoutLr(CorrectAdamW):
    """AdamW shrinks θ by (1 − λ) instead of (1 − γλ), the learning rate left out of the decay;
    exposed by AdamW with nonzero weight decay and lr ≠ 1."""

    def _decay(
        self, p: Tensor, g: Tensor, weight_decay: Scalar, lr: Scalar, decoupled: bool
    ) -> Tensor:
        p.mul_(1 - weight_decay)  # BUG: the decay is scaled by the learning rate
        return g


# --------------------------------------------------------------------------------------------
# The AdamW twins: the same bug, AdamW's constructor (docstrings inherited)
# --------------------------------------------------------------------------------------------


class BiasCorrectionOffByOneW(BiasCorrectionOffByOne, CorrectAdamW):
    pass


class EpsInsideSqrtW(EpsInsideSqrt, CorrectAdamW):
    pass


class AmsgradMaxOfBiasCorrectedW(AmsgradMaxOfBiasCorrected, CorrectAdamW):
    pass


class StepSharedAcrossParametersW(StepSharedAcrossParameters, CorrectAdamW):
    pass


class LoadStateResetsStepW(LoadStateResetsStep, CorrectAdamW):
    pass


class StateDictDropsStepW(StateDictDropsStep, CorrectAdamW):
    pass


class BetasSwappedW(BetasSwapped, CorrectAdamW):
    pass


class MaximizeIgnoredW(MaximizeIgnored, CorrectAdamW):
    pass


class AmsgradIgnoredW(AmsgradIgnored, CorrectAdamW):
    pass


class StepSizeNotBiasCorrectedW(StepSizeNotBiasCorrected, CorrectAdamW):
    pass


class BiasCorrection2NotRootedW(BiasCorrection2NotRooted, CorrectAdamW):
    pass


class SecondMomentOfAbsGradW(SecondMomentOfAbsGrad, CorrectAdamW):
    pass


class FirstMomentLerpWeightBeta1W(FirstMomentLerpWeightBeta1, CorrectAdamW):
    pass


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------


def _mutant(name: str, cls: type) -> Mutant:
    doc = inspect.getdoc(cls)  # inherited by the AdamW twins
    assert doc is not None, cls
    return Mutant(name, "optimizer", " ".join(doc.split()), f"{__name__}:{cls.__name__}")


_BOTH: tuple[tuple[str, type, type], ...] = (
    ("bias-correction-off-by-one", BiasCorrectionOffByOne, BiasCorrectionOffByOneW),
    ("eps-inside-sqrt", EpsInsideSqrt, EpsInsideSqrtW),
    ("amsgrad-max-of-bias-corrected", AmsgradMaxOfBiasCorrected, AmsgradMaxOfBiasCorrectedW),
    ("step-shared-across-parameters", StepSharedAcrossParameters, StepSharedAcrossParametersW),
    ("load-state-resets-step", LoadStateResetsStep, LoadStateResetsStepW),
    ("state-dict-drops-step", StateDictDropsStep, StateDictDropsStepW),
    ("betas-swapped", BetasSwapped, BetasSwappedW),
    ("maximize-ignored", MaximizeIgnored, MaximizeIgnoredW),
    ("amsgrad-ignored", AmsgradIgnored, AmsgradIgnoredW),
    ("step-size-not-bias-corrected", StepSizeNotBiasCorrected, StepSizeNotBiasCorrectedW),
    ("bias-correction2-not-rooted", BiasCorrection2NotRooted, BiasCorrection2NotRootedW),
    ("second-moment-of-abs-grad", SecondMomentOfAbsGrad, SecondMomentOfAbsGradW),
    ("first-moment-lerp-weight-beta1", FirstMomentLerpWeightBeta1, FirstMomentLerpWeightBeta1W),
)

ADAM_MUTANTS: tuple[Mutant, ...] = (
    *(_mutant(name, adam) for name, adam, _ in _BOTH),
    _mutant("weight-decay-decoupled", WeightDecayDecoupled),
)

ADAMW_MUTANTS: tuple[Mutant, ...] = (
    *(_mutant(name, adamw) for name, _, adamw in _BOTH),
    _mutant("weight-decay-coupled", WeightDecayCoupled),
    _mutant("weight-decay-without-lr", WeightDecayWithoutLr),
)

# Optimizers the suite must pass, bitwise (the documentation-written ones are in
# conformance.adam_references).
ADAM_CORRECT: tuple[str, ...] = ("torch.optim:Adam", f"{__name__}:CorrectAdam")
ADAMW_CORRECT: tuple[str, ...] = ("torch.optim:AdamW", f"{__name__}:CorrectAdamW")
