"""torch.optim's Optimizer, SGD, Adam and AdamW over refimpl tensors, exact to the bit.

What `SGD.step()` does for each parameter that has a gradient (`sgd_update`, which follows
the pseudocode in torch's SGD documentation line by line):

    g ← -∇ if maximize else ∇
    g ← g + λ·θ                      if weight_decay λ ≠ 0
    b ← g (first step: no dampening) if momentum μ ≠ 0
      or μ·b + (1 − τ)·g             on later steps
    g ← g + μ·b if nesterov else b   if momentum μ ≠ 0
    θ ← θ − γ·g

and `Adam.step()` (`adam_update`, likewise; AdamW is Adam with decoupled weight decay):

    g ← -∇ if maximize else ∇
    θ ← θ·(1 − γλ)                   if decoupled (AdamW) and λ ≠ 0
    g ← g + λ·θ                      if not decoupled and λ ≠ 0
    m ← β₁·m + (1 − β₁)·g            (torch's lerp)
    v ← β₂·v + (1 − β₂)·g²
    v_max ← max(v_max, v)            if amsgrad (then v_max stands for v below)
    θ ← θ − γ/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

Parameters whose `.grad` is None are skipped entirely; a zero gradient is not skipped.
Every line is computed as torch's CPU kernels round it (`refimpl.rounding`: `add_scaled`,
`lerp`, `addcmul`, `addcdiv`): an `x + α·y` with one rounding (a fused multiply-add) on
AVX2/AVX512 builds, with two under ATEN_CPU_CAPABILITY=default. The optimizers take the CPU
capability of the torch they reproduce as `cpu_capability=`; left unset, it is the one torch's
dispatcher would pick on this machine (see `detected_capability`). The path flags select which
of torch's implementations is reproduced (for-loop, foreach=True, fused=True), each with its own
rounding where they differ: the fused kernels' scalar tails, the Python-double or tensor
arithmetic of Adam's bias corrections, lr and betas given as tensors. One operation is not
reproduced by default: the square root of torch's for-loop and foreach Adam (MKL's, not correctly
rounded); see `Adam` for the measured budget and the `sqrt` hook.

State dicts use torch's format: `state` keyed by parameter index, `param_groups` with `params`
as index lists; Adam's `step` is a 0-dim float32 tensor, as torch's. Like torch, `state_dict()`
returns the live state tensors (no copies) and `load_state_dict()` keeps a loaded tensor whose
dtype already matches its parameter (a tensor of another dtype is converted, which copies; a
`step` is kept as it is, or made float32 in a fused or capturable group): two optimizers loaded
from one state dict share their buffers unless the dict is deep-copied first.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from refimpl.autograd import enable_grad, no_grad
from refimpl.rounding import Rounding, add_scaled, addcdiv, addcmul, fma, lerp
from refimpl.tensor import Tensor

StateDict = dict[str, Any]

_TYPE_NAMES = {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}


def typename(value: Any) -> str:
    """torch.typename: `torch.FloatTensor` for a float32 tensor, the qualified class otherwise."""
    if isinstance(value, Tensor):
        return f"torch.{_TYPE_NAMES[value.dtype.name]}Tensor"
    module = type(value).__module__
    name = type(value).__qualname__
    return name if module in ("builtins", "__builtin__") else f"{module}.{name}"


CAPABILITIES = ("DEFAULT", "AVX2", "AVX512")


def rounding_for_capability(capability: str) -> Rounding:
    """How torch's CPU kernels round `x + α·y` at `torch.backends.cpu.get_cpu_capability()`:
    the AVX2 and AVX512 kernels fuse the multiply-add, the generic ones round twice."""
    return "separate" if _checked(capability) == "DEFAULT" else "fused"


# torch 2.13's fused SGD kernel works in 32-byte vectors (8 float32, 4 float64) at both AVX2 and
# AVX512 (measured: the elements past the last whole vector of a tensor round as its tail).
FUSED_KERNEL_VECTOR_BYTES = 32


def _checked(capability: str) -> str:
    name = capability.upper()
    if name not in CAPABILITIES:
        raise ValueError(
            f"unsupported torch CPU capability {capability!r}: expected one of {CAPABILITIES}"
        )
    return name


def detected_capability() -> str:
    """What torch's dispatcher picks on this machine: ATEN_CPU_CAPABILITY if set, else the best
    of AVX512 and AVX2 the CPU supports, else the generic kernels. A comparison with a running
    torch passes `torch.backends.cpu.get_cpu_capability()` instead (conformance.bridge)."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    if forced:
        return _checked(forced)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(next((line for line in cpuinfo if line.startswith("flags")), "").split())
    except OSError:
        flags = set()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "AVX512"
    return "AVX2" if {"avx2", "fma"} <= flags else "DEFAULT"


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


class Optimizer:
    """torch.optim.Optimizer: parameter groups, per-parameter state, zero_grad, state dicts."""

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                "dicts, but got " + typename(params)
            )
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)

    def __repr__(self) -> str:
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}\n"
            for key in sorted(group):
                if key != "params":
                    text += f"    {key}: {group[key]}\n"
        return text + ")"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group; options it lacks come from `defaults`. On any error the optimizer is
        left as it was (like torch, the given dict itself may have been normalised)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            param_group["params"] = list(params)
        names = [p[0] for p in param_group["params"] if isinstance(p, tuple)]
        param_group["params"] = [p[1] if isinstance(p, tuple) else p for p in param_group["params"]]
        if names:
            if len(names) != len(param_group["params"]):
                raise ValueError(
                    "all optimizer params should be with/without names. Some param names are "
                    "missing"
                )
            param_group["param_names"] = names
        for param in param_group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    + typename(param)
                )
            if not self.defaults.get("differentiable", None) and not (
                param.is_leaf or param.retains_grad
            ):
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(
                    "parameter group didn't specify a value of required optimization "
                    f"parameter {name}"
                )
            param_group.setdefault(name, default)
        params = param_group["params"]
        if len(params) != len({id(p) for p in params}):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; in future, "
                "this will cause an error; see github.com/pytorch/pytorch/issues/40967 for more "
                "information",
                stacklevel=3,
            )
        seen: set[int] = set()
        for group in self.param_groups:
            seen.update(id(p) for p in group["params"])
            if ("param_names" in param_group) != ("param_names" in group):
                which = "with names" if "param_names" in param_group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {which} to the optimizer"
                )
        if not seen.isdisjoint(id(p) for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears every `.grad`: to None (the default), or detached and zeroed in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """What `load_state_dict` ends with, as in torch: subclasses fill in what older state
        dicts lack (Adam: group options, a Python-number `step` made a tensor)."""
        self.__dict__.update(state)
        self.defaults.setdefault("differentiable", False)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        raise NotImplementedError

    def state_dict(self) -> StateDict:
        """torch's format; the state's tensors are the live ones, not copies."""
        index: dict[int, int] = {}
        start = 0

        def pack(group: dict[str, Any]) -> dict[str, Any]:
            nonlocal start
            packed = {k: v for k, v in group.items() if k != "params"}
            index.update(
                {id(p): i for i, p in enumerate(group["params"], start) if id(p) not in index}
            )
            packed["params"] = [index[id(p)] for p in group["params"]]
            start += len(packed["params"])
            return packed

        param_groups = [pack(g) for g in self.param_groups]
        state = {(index[id(k)] if isinstance(k, Tensor) else k): v for k, v in self.state.items()}
        return {"state": state, "param_groups": param_groups}

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Loads torch's format, validating it first: on any error nothing changes."""
        state_dict = state_dict.copy()
        groups = self.param_groups
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups, strict=True)
        ):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
                strict=True,
            )
        )
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                state[id_map[key]] = _cast(id_map[key], value, key, state_dict["param_groups"])
            else:
                state[key] = value

        def update_group(group: dict[str, Any], new_group: dict[str, Any]) -> dict[str, Any]:
            new_group["params"] = group["params"]
            if "param_names" in group and "param_names" not in new_group:
                new_group["param_names"] = group["param_names"]
            return new_group

        self.__setstate__(
            {
                "state": state,
                "param_groups": [
                    update_group(g, ng) for g, ng in zip(groups, saved_groups, strict=True)
                ],
            }
        )


def _cast(
    param: Tensor,
    value: Any,
    param_id: Any = None,
    param_groups: list[dict[str, Any]] | None = None,
    key: Any = None,
) -> Any:
    """torch's Optimizer._cast: tensors take the parameter's dtype (kept as they are when it
    already matches), except a `step`, which is kept as it is, or made float32 when the loaded
    group of its parameter is fused or capturable; containers are rebuilt, anything else is
    kept."""
    if isinstance(value, Tensor):
        if key == "step":
            group = next((g for g in param_groups or () if param_id in g["params"]), {})
            if group.get("fused", False) or group.get("capturable", False):
                return value.to(np.float32)
            return value
        if param.is_floating_point() and value.dtype != param.dtype:
            return value.to(param.dtype).detach()
        return value
    if isinstance(value, dict):
        return {k: _cast(param, v, param_id, param_groups, k) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        # type(value): a list, tuple, set... rebuilt from an iterable, as torch does
        return type(value)(
            _cast(param, v, param_id, param_groups)  # type: ignore[call-arg]
            for v in value
        )
    return value


def sgd_update(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    rounding: Rounding,
    fused_tail: np.ndarray | None = None,
) -> np.ndarray | None:
    """One parameter's step, in place on `param`; returns its momentum buffer (None without
    momentum). Each line is a line of torch's documented algorithm, rounded as torch rounds it.
    `fused_tail`: for torch's fused kernel, the flat indices of its scalar tail (see _momentum).
    Quiet about overflow and NaN, as torch is (an overflowed buffer times μ is inf, inf · 0
    NaN, in both)."""
    with np.errstate(all="ignore"):
        g = -grad if maximize else grad
        if weight_decay != 0:
            g = add_scaled(g, param, weight_decay, rounding)  # g + λθ
        if momentum != 0:
            if momentum_buffer is None:
                momentum_buffer = np.array(g, copy=True)  # b₁ = g₁: the first step is not damped
            else:
                momentum_buffer[...] = _momentum(
                    momentum_buffer, g, momentum, dampening, rounding, fused_tail
                )  # μb + (1 − τ)g
            g = add_scaled(g, momentum_buffer, momentum, rounding) if nesterov else momentum_buffer
        param[...] = add_scaled(param, g, -lr, rounding)  # θ − γg
    return momentum_buffer


def _momentum(
    buffer: np.ndarray,
    g: np.ndarray,
    momentum: float,
    dampening: float,
    rounding: Rounding,
    fused_tail: np.ndarray | None,
) -> np.ndarray:
    """μb + (1 − τ)g. torch's fused kernel (`fused=True`) rounds it as
    fma(1 − τ, g, μ·b) over whole SIMD vectors, but as fma(b, μ, (1 − τ)·g) in the scalar tail
    of each tensor (the compiler's contraction of the tail's expression); the for-loop and
    foreach paths round it as the vector body does."""
    body = add_scaled(buffer * momentum, g, 1 - dampening, rounding)
    if fused_tail is None or rounding == "separate" or not fused_tail.size:
        return body
    damped = g.reshape(-1)[fused_tail] * (1 - dampening)
    body.reshape(-1)[fused_tail] = add_scaled(
        damped, buffer.reshape(-1)[fused_tail], momentum, rounding
    )
    return body


def _fused_tail(size: int, dtype: np.dtype) -> np.ndarray:
    """The flat indices past the last whole vector of torch's fused kernel in a tensor."""
    lanes = FUSED_KERNEL_VECTOR_BYTES // dtype.itemsize
    return np.arange(size - size % lanes, size)


# Tensors smaller than this are stepped together, gathered into one flat array per batch: the
# exact rounding has a fixed cost per call (tens of numpy calls) that would otherwise dominate
# models with many small parameters. Larger ones are stepped where they lie (no copies).
BATCH_BELOW = 1 << 14


def _batches(params: list[Tensor], buffers: list[Tensor | None]) -> list[list[int]]:
    """Indices into `params`, in batches that can be stepped as one flat array: one dtype, all
    with a buffer or all without, no parameter twice. A parameter listed twice in a group is
    stepped twice, in order (its k-th entry goes into the k-th round), as torch's for-loop does."""
    seen: dict[int, int] = defaultdict(int)
    batches: dict[tuple[Any, ...], list[int]] = {}
    for i, p in enumerate(params):
        round_ = seen[id(p)]
        seen[id(p)] += 1
        key = (round_, p.dtype, buffers[i] is None, i if p.data.size >= BATCH_BELOW else None)
        batches.setdefault(key, []).append(i)
    return [batches[key] for key in sorted(batches, key=lambda k: k[0])]  # stable within rounds


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else value


class SGD(Optimizer):
    """torch.optim.SGD (see the module docstring). `cpu_capability` ("AVX512", "AVX2" or
    "DEFAULT", as `torch.backends.cpu.get_cpu_capability()` names it) is refimpl's addition:
    the torch whose rounding to reproduce; by default the one torch would pick here."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        cpu_capability: str | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
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
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)
        # The torch to reproduce: its CPU capability decides the rounding (and, for fused=True
        # groups, which elements the fused kernel treats as its scalar tail).
        self.cpu_capability = _checked(cpu_capability or detected_capability())
        self.rounding: Rounding = rounding_for_capability(self.cpu_capability)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if differentiable:
            raise NotImplementedError("refimpl's SGD does not differentiate through step()")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Runs `closure` (with grad enabled) if given, updates every parameter that has a
        gradient, and returns the closure's loss. Like torch, a group's momentum buffers are
        looked up before its update and stored after it."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                buffers: list[Tensor | None] = [None] * len(params)
                if group["momentum"] != 0:
                    buffers = [self.state[p].get("momentum_buffer") for p in params]
                for batch in _batches(params, buffers):
                    self._step_batch(group, params, buffers, batch)
                if group["momentum"] != 0:
                    for p, buffer in zip(params, buffers, strict=True):
                        self.state[p]["momentum_buffer"] = buffer
        return loss

    def _step_batch(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        buffers: list[Tensor | None],
        batch: list[int],
    ) -> None:
        """sgd_update on the batch's parameters: in place for one, else on their flat
        concatenation, scattered back afterwards. New buffers are stored into `buffers`."""
        ps = [params[i] for i in batch]
        old = [buffers[i] for i in batch]
        flat = len(batch) > 1
        sizes = [p.data.size for p in ps]
        splits = np.cumsum(sizes[:-1])

        def gather(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([a.reshape(-1) for a in arrays]) if flat else arrays[0]

        tail = None
        if group["fused"]:
            tail = np.concatenate(
                [
                    start + _fused_tail(n, p.data.dtype)
                    for start, n, p in zip([0, *splits], sizes, ps, strict=True)
                ]
            )
        param = gather([p.data for p in ps])
        buffer = sgd_update(
            # step batches only parameters with a .grad, and a batch's buffers all set or all None
            param,
            gather([p.grad.data for p in ps]),  # type: ignore[union-attr]
            None if old[0] is None else gather([b.data for b in old]),  # type: ignore[union-attr]
            lr=_scalar(group["lr"]),
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=_scalar(group["weight_decay"]),
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            rounding=self.rounding,
            fused_tail=tail,
        )
        if (
            group["foreach"]
            and group["nesterov"]
            and group["momentum"] != 0
            and not group["maximize"]
            and _scalar(group["weight_decay"]) == 0
        ):
            # torch 2.13's foreach path adds μ·b into the gradient tensors themselves when it
            # made no copy of them (no maximize, no weight decay): .grad ends as g + μ·b
            assert buffer is not None  # momentum != 0: sgd_update returned the buffer
            for p, b in zip(ps, np.split(buffer.reshape(-1), splits), strict=True):
                g = p.grad.data  # type: ignore[union-attr]  # step batches params with a .grad
                g[...] = add_scaled(g, b.reshape(g.shape), group["momentum"], self.rounding)
        for p, piece in zip(ps, np.split(param.reshape(-1), splits), strict=True):
            if flat:
                p.data[...] = piece.reshape(p.data.shape)
            p._version += 1
        if buffer is None:
            return
        for i, p, piece in zip(batch, ps, np.split(buffer.reshape(-1), splits), strict=True):
            value = piece.reshape(p.data.shape)
            if buffers[i] is None:
                buffers[i] = Tensor._wrap(value.copy() if flat else buffer)
            elif flat:  # buffers[i] is not None (mypy does not narrow an indexed item)
                buffers[i].data[...] = value  # type: ignore[union-attr]


# --- Adam and AdamW ------------------------------------------------------------------------------

Sqrt = Callable[[np.ndarray], np.ndarray]


class AdamScalars(NamedTuple):
    """The scalars of one Adam step, typed as torch's kernels receive them: a Python float where
    torch passes a Python number or a Scalar argument (rounded to the computation's dtype at the
    kernel, as numpy rounds a Python float meeting an array: NEP 50), a numpy scalar where torch
    passes a 0-dim tensor (`decay`, `beta2` and `bias_correction2_sqrt` when lr or the betas are
    tensors). `loop_scalars` and `fused_scalars` compute them as each torch path does."""

    weight_decay: float | None  # λ of g ← g + λθ (Adam's L2 penalty); None: no such line
    decay: float | np.floating | None  # 1 − γλ of θ ← θ(1 − γλ) (AdamW); None: no such line
    one_minus_beta1: float | np.floating  # 1 − β₁: lerp's weight
    beta2: float | np.floating
    one_minus_beta2: float
    step_size: float  # γ / (1 − β₁ᵗ)
    bias_correction2_sqrt: float | np.floating  # √(1 − β₂ᵗ)
    eps: float


def adam_update(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None,
    s: AdamScalars,
    *,
    maximize: bool,
    rounding: Rounding,
    fused: bool = False,
    sqrt: Sqrt = np.sqrt,
    scalar_tail: np.ndarray | None = None,
) -> None:
    """One step of one parameter (or of a flat batch of them), in place on `param` and the
    moments (`max_exp_avg_sq` is None without amsgrad). Each line is a line of torch's
    documented algorithm, rounded as torch's kernels round it: `rounding` is the CPU
    capability's (fma or two roundings), `fused` whether it is torch's fused kernel, `sqrt` the
    square root of the torch path (torch's for-loop and foreach paths call MKL's, see `Adam`),
    `scalar_tail` the flat indices that torch's kernels compute with their scalar code rather
    than their vectors (see `lerp` and `_second_moment`). An in-place line stores into the
    moment's or parameter's dtype, whatever dtype numpy computed it in. Quiet about overflow and
    NaN, as torch is."""
    with np.errstate(all="ignore"):
        g = -grad if maximize else grad
        if s.decay is not None:
            param *= s.decay  # θ ← θ(1 − γλ)
        if s.weight_decay is not None:
            g = add_scaled(g, param, s.weight_decay, rounding)  # g ← g + λθ
        exp_avg[...] = lerp(
            exp_avg,
            g,
            s.one_minus_beta1,
            rounding,  # m ← β₁m + (1 − β₁)g
            scalar_tail,
        )
        exp_avg_sq[...] = _second_moment(
            exp_avg_sq,
            g,
            s,
            rounding,  # v ← β₂v + (1 − β₂)g²
            scalar_tail if fused else None,
        )
        v = exp_avg_sq
        if max_exp_avg_sq is not None:  # v ← max(v_max, v)
            v = _maximum(max_exp_avg_sq, exp_avg_sq, scalar_tail if fused else None)
        denom = sqrt(v) / s.bias_correction2_sqrt + s.eps  # √v / √(1 − β₂ᵗ) + ε
        param[...] = addcdiv(param, exp_avg, denom, -s.step_size)  # θ − γ/(1 − β₁ᵗ) · m / denom


def _second_moment(
    v: np.ndarray, g: np.ndarray, s: AdamScalars, rounding: Rounding, fused_tail: np.ndarray | None
) -> np.ndarray:
    """β₂v + (1 − β₂)g². torch's `v.mul_(β₂).addcmul_(g, g, value=1 − β₂)` rounds it as
    fma((1 − β₂)·g, g, β₂·v), β₂·v stored in v's dtype, and so does the fused kernel's vector
    body; the fused kernel's scalar tail (the compiler's contraction of its expression) rounds
    it as fma(v, β₂, (1 − β₂)·g·g)."""
    body = addcmul(
        np.asarray(v * s.beta2).astype(v.dtype, copy=False), g, g, s.one_minus_beta2, rounding
    )
    if fused_tail is None or rounding == "separate" or not fused_tail.size:
        return body
    tail_g = g.reshape(-1)[fused_tail]
    square = (v.dtype.type(s.one_minus_beta2) * tail_g) * tail_g
    body.reshape(-1)[fused_tail] = add_scaled(square, v.reshape(-1)[fused_tail], s.beta2, rounding)
    return body


def _maximum(v_max: np.ndarray, v: np.ndarray, fused_tail: np.ndarray | None) -> np.ndarray:
    """max(v_max, v) into v_max: NaN if either is NaN, as torch.maximum and the fused kernel's
    vectors compute it; the fused kernel's scalar tail calls std::max(v_max, v), which keeps
    v_max when v is NaN."""
    kept = None if fused_tail is None else v_max.reshape(-1)[fused_tail]
    np.maximum(v_max, v, out=v_max)
    if kept is not None and kept.size:
        tail_v = v.reshape(-1)[fused_tail]
        v_max.reshape(-1)[fused_tail] = np.where(kept < tail_v, tail_v, kept)
    return v_max


# torch's elementwise CPU kernels (cpu_kernel_vec) step two 32-byte vectors at a time and the
# last size mod 64 bytes of a tensor go through their scalar code, at every capability
# (measured with lerp's sign of zero); a TensorIterator split over threads (32,768 elements or
# more) has such a tail at the end of each thread's chunk, which refimpl does not model.
LOOP_KERNEL_TAIL_BYTES = 64


def _tail(size: int, dtype: np.dtype, vector_bytes: int) -> np.ndarray:
    """The flat indices past the last whole `vector_bytes` of a tensor of `size` elements."""
    lanes = vector_bytes // dtype.itemsize
    return np.arange(size - size % lanes, size)


def _hyperparameter(value: Any) -> Any:
    """A hyperparameter as torch's step functions see it (`_to_scalar`): a Python number, or a
    one-element tensor, here its numpy scalar (numpy's rules for a Python number meeting a numpy
    scalar, NEP 50, are torch's for a Python number meeting a 0-dim tensor: the number is rounded
    to the tensor's dtype first; and two numpy scalars promote as two 0-dim tensors do)."""
    return value.data.reshape(())[()] if isinstance(value, Tensor) else value


def _pow(base: Any, exponent: float) -> Any:
    """`base ** exponent` in torch's Python code: C's pow for a Python float; for a tensor, torch's
    pow kernel: the base itself at 1, base·base and base·base·base at 2 and 3, otherwise pow in
    double rounded to the tensor's dtype."""
    if not isinstance(base, np.floating):
        return base**exponent
    if exponent == 0:
        return type(base)(1)
    if exponent == 1:
        return base
    if exponent == 2:
        return base * base
    if exponent == 3:
        return base * base * base
    return type(base)(math.pow(float(base), exponent))


def _true_divide(a: Any, b: Any) -> Any:
    """`a / b` in torch's Python code. A Python number over a tensor is the tensor's reciprocal
    times the number (torch's Tensor.__rtruediv__), not a division."""
    if isinstance(b, np.floating) and not isinstance(a, np.floating):
        return (1 / b) * a
    return a / b


def loop_scalars(
    group: dict[str, Any], step: float, dtype: np.dtype, zero_dim: bool, sqrt: Sqrt = np.sqrt
) -> AdamScalars:
    """The scalars as torch's for-loop and foreach paths compute them at step t: in Python
    doubles for Python numbers, in the tensor's dtype (with torch's tensor operations) where lr
    or the betas are tensors. A tensor β₁ is cast to the parameters' dtype before 1 − β₁; the
    other tensors are cast to it at the kernel, except for a 0-dim parameter (`zero_dim`), which
    torch computes with them in the dtype they promote to (float64 beside a float64 tensor)."""
    lr, eps, weight_decay = (_hyperparameter(group[k]) for k in ("lr", "eps", "weight_decay"))
    beta1, beta2 = (_hyperparameter(b) for b in group["betas"])

    def operand(value: Any) -> Any:  # a 0-dim tensor as the operand of a tensor operation
        return dtype.type(value) if isinstance(value, np.floating) and not zero_dim else value

    with np.errstate(all="ignore"):
        bias_correction1 = 1 - _pow(beta1, step)
        bias_correction2 = 1 - _pow(beta2, step)
        step_size = _true_divide(lr, bias_correction1)
        bias_correction2_sqrt = (
            bias_correction2**0.5
            if isinstance(bias_correction2, float)
            else sqrt(np.asarray(bias_correction2))[()]
        )  # a tensor's ** 0.5 is its sqrt()
        device_beta1 = dtype.type(beta1) if isinstance(beta1, np.floating) else beta1
        decoupled = group["decoupled_weight_decay"]
        return AdamScalars(
            weight_decay=float(weight_decay) if weight_decay != 0 and not decoupled else None,
            decay=operand(1 - lr * weight_decay) if weight_decay != 0 and decoupled else None,
            one_minus_beta1=1 - device_beta1,
            beta2=operand(beta2),
            one_minus_beta2=float(1 - beta2),
            step_size=float(step_size),
            bias_correction2_sqrt=operand(bias_correction2_sqrt),
            eps=float(eps),
        )


def fused_scalars(group: dict[str, Any], step: float, rounding: Rounding) -> AdamScalars:
    """The scalars as torch's fused CPU kernel computes them: every hyperparameter as a double
    (a tensor's value included), the bias corrections with C's pow and sqrt, and AdamW's
    1 − γλ contracted into one fused multiply-add where the kernel's build has one (AVX2,
    AVX512; measured: with two roundings a third of float64 decays differ by an ULP)."""
    lr, eps, weight_decay = (float(group[k]) for k in ("lr", "eps", "weight_decay"))
    beta1, beta2 = (float(b) for b in group["betas"])
    bias_correction1 = 1 - math.pow(beta1, step)
    bias_correction2 = 1 - math.pow(beta2, step)
    with np.errstate(all="ignore"):
        step_size = float(np.float64(lr) / bias_correction1)  # C's division, ±inf at zero
    decoupled = group["decoupled_weight_decay"]
    return AdamScalars(
        weight_decay=weight_decay if weight_decay != 0 and not decoupled else None,
        decay=(
            float(fma(np.float64(-lr), weight_decay, np.float64(1.0)))
            if rounding == "fused"
            else 1 - lr * weight_decay
        )
        if weight_decay != 0 and decoupled
        else None,
        one_minus_beta1=1 - beta1,
        beta2=beta2,
        one_minus_beta2=1 - beta2,
        step_size=step_size,
        bias_correction2_sqrt=math.sqrt(bias_correction2) if bias_correction2 >= 0 else math.nan,
        eps=eps,
    )


def _to_scalar(value: Any) -> Any:
    """torch.optim's _to_scalar: a one-element tensor with dimensions becomes 0-dim."""
    return value.squeeze() if isinstance(value, Tensor) and value.dim() != 0 else value


_CAPTURABLE_DEVICES = ["cuda", "xpu", "hpu", "privateuseone"]


class Adam(Optimizer):
    """torch.optim.Adam (and, with decoupled_weight_decay=True, AdamW), reproducing the rounding
    of the torch path its flags select: the for-loop (foreach False or None), foreach (True) or
    fused (fused=True) implementation, at the CPU capability `cpu_capability` (as for SGD).

    What `step()` does for each parameter that has a gradient (`adam_update`):

        g ← -∇ if maximize else ∇
        θ ← θ(1 − γλ)                       if decoupled_weight_decay (AdamW) and λ ≠ 0
        g ← g + λθ                          if not decoupled and λ ≠ 0
        m ← lerp(m, g, 1 − β₁)              = β₁m + (1 − β₁)g
        v ← β₂v + (1 − β₂)g²
        v_max ← max(v_max, v)               if amsgrad (then used for v below)
        θ ← θ − γ/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

    with t the parameter's own step count, `state["step"]`, a 0-dim float32 tensor as in torch.
    Parameters whose `.grad` is None are skipped entirely; a zero gradient is not.

    Bit for bit: the fused path, and the for-loop and foreach paths with one exception: the
    square root. torch's CPU `Tensor.sqrt()` calls MKL's vsSqrt/vdSqrt (HA mode), which is not
    correctly rounded (measured on this project's AMD EPYC, where MKL runs its generic SSE code
    built on rsqrtps: 1 ULP off in 17% of float32 and 1.2% of float64 inputs, errors up to 0.75
    ULP) and whose bits depend on the CPU MKL dispatches to. refimpl takes the square root as
    `sqrt` (refimpl's addition: an elementwise function on numpy arrays, used by the for-loop and
    foreach paths); left unset it is numpy's, correctly rounded, and then a step's θ may differ
    from torch's by at most 4 ULP of max(|θ'|, |θ_new − θ'|), θ' the parameter the update is
    added to (after AdamW's decay): measured over 10^8 elements of both dtypes, every
    hyperparameter drawn, both roundings (PARAM_ULP_BUDGET in tests/test_adam_bitwise.py); 3% of
    float32 and 0.2% of float64 elements differ at all. m, v, v_max and step stay bitwise as
    long as the parameters agree (θ feeds g only through Adam's L2 λ). Given torch's square root
    (`sqrt=` a function calling it), every path is bitwise.

    Not reproduced: a parameter listed twice in a group is stepped twice in sequence by the
    for-loop path and by the fused path (both as torch does), but torch's foreach path
    interleaves the two steps op by op, which refimpl does not. The sign of a zero m when
    1 − β₁ rounds to 1 depends on whether torch's kernel computes the element with its vectors
    or its scalar code; refimpl follows the scalar tail of each tensor, but not the extra tails
    at thread-chunk ends of tensors of 32,768 elements or more stepped on several threads.
    `differentiable=True` raises NotImplementedError; `capturable=True` raises torch's
    AssertionError at the first step (no CPU tensor is capturable), except on the fused path,
    which ignores it.
    """

    def __init__(
        self,
        params: Any,
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
        cpu_capability: str | None = None,
        sqrt: Sqrt | None = None,
    ) -> None:
        if isinstance(lr, Tensor):
            if foreach and not capturable:
                raise ValueError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:  # noqa: SIM300 (torch's comparison, torch's TypeError)
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:  # noqa: SIM300 (torch's comparison, torch's TypeError)
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:  # noqa: SIM300 (torch's comparison, torch's TypeError)
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not (
            (isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        for i, beta in enumerate(betas[:2]):
            if isinstance(beta, Tensor):
                if not capturable and foreach:
                    raise ValueError(
                        f"betas[{i}] as a Tensor is not supported for "
                        "capturable=False and foreach=True"
                    )
                if beta.numel() != 1:
                    raise ValueError(f"Tensor betas[{i}] must be 1-element")
        betas = tuple(map(_to_scalar, betas))
        defaults = {
            "lr": lr,
            "betas": betas,
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
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self.cpu_capability = _checked(cpu_capability or detected_capability())
        self.rounding: Rounding = rounding_for_capability(self.cpu_capability)
        self.sqrt: Sqrt = np.sqrt if sqrt is None else sqrt
        if differentiable:
            raise NotImplementedError(
                f"refimpl's {type(self).__name__} does not differentiate through step()"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("fused", None)
            for p in group["params"]:
                p_state: Any = self.state.get(p, [])
                if len(p_state) != 0 and not isinstance(p_state["step"], Tensor):
                    p_state["step"] = Tensor._wrap(np.array(float(p_state["step"]), np.float32))

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Runs `closure` (with grad enabled) if given, updates every parameter that has a
        gradient, and returns the closure's loss. State is created, and bad groups refused, in
        torch's order, so that a failing step leaves what torch's leaves."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                entries = self._init_group(group)
                if entries:
                    self._check_path(group, beta1, beta2)
                    self._update_group(group, entries)
        return loss

    def _init_group(self, group: dict[str, Any]) -> list[tuple[Tensor, dict[str, Any]]]:
        """torch's Adam._init_group: the parameters with a gradient and their state, created
        (zeros, step 0) where empty."""
        entries = []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if len(state) == 0:
                state["step"] = Tensor._wrap(np.zeros((), np.float32))
                state["exp_avg"] = Tensor._wrap(np.zeros_like(p.data))
                state["exp_avg_sq"] = Tensor._wrap(np.zeros_like(p.data))
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = Tensor._wrap(np.zeros_like(p.data))
            # looked up in torch's order: a state without them fails with torch's KeyError
            needed = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
            for name in needed:
                state[name]
            if group["foreach"] and isinstance(group["lr"], Tensor) and not group["capturable"]:
                raise RuntimeError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            state["step"]
            entries.append((p, state))
        return entries

    @staticmethod
    def _check_path(group: dict[str, Any], beta1: Any, beta2: Any) -> None:
        """What torch's chosen path refuses before it changes anything."""
        if group["fused"]:
            return  # the fused path ignores capturable
        devices = _CAPTURABLE_DEVICES
        if group["foreach"]:
            lr = group["lr"]
            if isinstance(lr, Tensor) and not group["capturable"]:
                raise RuntimeError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            for name, beta in (("beta1", beta1), ("beta2", beta2)):
                if isinstance(beta, Tensor) and not group["capturable"]:
                    raise ValueError(
                        f"{name} as a Tensor is not supported for capturable=False and foreach=True"
                    )
        else:
            devices = [*devices, "xla"]
        if group["capturable"]:
            raise AssertionError(
                "If capturable=True, params and state_steps must be on "
                f"supported devices: {devices}."
            )

    def _update_group(
        self, group: dict[str, Any], entries: list[tuple[Tensor, dict[str, Any]]]
    ) -> None:
        """adam_update over the group: the k-th listing of a parameter in the k-th round. The
        for-loop (and foreach) path counts a step just before using it; the fused path counts
        every step first, then runs its kernel on each listed tensor in turn."""
        fused = bool(group["fused"])
        if fused:
            for _, state in entries:
                state["step"].data += 1
        seen: dict[int, int] = defaultdict(int)
        rounds: dict[int, list[tuple[Tensor, dict[str, Any]]]] = defaultdict(list)
        for p, state in entries:
            rounds[seen[id(p)]].append((p, state))
            seen[id(p)] += 1
        for k in sorted(rounds):
            batches: dict[tuple[Any, ...], list[tuple[Tensor, dict[str, Any]]]] = {}
            for i, (p, state) in enumerate(rounds[k]):
                if not fused:
                    state["step"].data += 1
                step = float(np.float32(state["step"].data)) if fused else float(state["step"].data)
                # large tensors are stepped where they lie, and 0-dim ones alone (torch computes
                # them with 0-dim tensor hyperparameters in the dtype both promote to)
                alone = p.data.size >= BATCH_BELOW or p.data.ndim == 0
                key = (p.dtype, step, i if alone else None)
                batches.setdefault(key, []).append((p, state))
            for (dtype, step, _), batch in batches.items():
                scalars = (
                    fused_scalars(group, step, self.rounding)
                    if fused
                    else loop_scalars(group, step, dtype, batch[0][0].data.ndim == 0, self.sqrt)
                )
                self._step_batch(group, batch, scalars, fused)

    def _step_batch(
        self,
        group: dict[str, Any],
        batch: list[tuple[Tensor, dict[str, Any]]],
        scalars: AdamScalars,
        fused: bool,
    ) -> None:
        """adam_update on the batch's parameters: in place for one, else on their flat
        concatenation, scattered back afterwards."""
        ps = [p for p, _ in batch]
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        moments = [[state[name] for _, state in batch] for name in names]
        flat = len(batch) > 1
        sizes = [p.data.size for p in ps]
        splits = np.cumsum(sizes[:-1])

        def gather(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([a.reshape(-1) for a in arrays]) if flat else arrays[0]

        vector_bytes = FUSED_KERNEL_VECTOR_BYTES if fused else LOOP_KERNEL_TAIL_BYTES
        tail = np.concatenate(
            [
                start + _tail(n, p.data.dtype, vector_bytes)
                for start, n, p in zip([0, *splits], sizes, ps, strict=True)
            ]
        )
        param = gather([p.data for p in ps])
        arrays = [gather([t.data for t in tensors]) for tensors in moments]
        # step batches only parameters with a .grad
        adam_update(
            param,
            gather([p.grad.data for p in ps]),  # type: ignore[union-attr]
            arrays[0],
            arrays[1],
            arrays[2] if group["amsgrad"] else None,
            scalars,
            maximize=group["maximize"],
            rounding=self.rounding,
            fused=fused,
            sqrt=np.sqrt if fused else self.sqrt,
            scalar_tail=tail,
        )
        for tensors, array in zip([ps, *moments], [param, *arrays], strict=True):
            for t, piece in zip(tensors, np.split(array.reshape(-1), splits), strict=True):
                if flat:
                    t.data[...] = piece.reshape(t.data.shape)
                t._version += 1


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (θ ← θ(1 − γλ)), λ = 0.01 by default;
    `decoupled_weight_decay` stays True whatever a loaded state dict says, as in torch."""

    def __init__(
        self,
        params: Any,
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
        cpu_capability: str | None = None,
        sqrt: Sqrt | None = None,
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
            cpu_capability=cpu_capability,
            sqrt=sqrt,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
