"""torch.optim's Optimizer and SGD over refimpl tensors, exact to the bit.

What `optimizer.step()` does for each parameter that has a gradient (`sgd_update`, which follows
the pseudocode in torch's SGD documentation line by line):

    g ← -∇ if maximize else ∇
    g ← g + λ·θ                      if weight_decay λ ≠ 0
    b ← g (first step: no dampening) if momentum μ ≠ 0
      or μ·b + (1 − τ)·g             on later steps
    g ← g + μ·b if nesterov else b   if momentum μ ≠ 0
    θ ← θ − γ·g

Parameters whose `.grad` is None are skipped entirely; a zero gradient is not skipped.
Every `x + α·y` is computed as torch's CPU kernel rounds it (`refimpl.rounding.add_scaled`):
with one rounding (a fused multiply-add) on AVX2/AVX512 builds, with two under
ATEN_CPU_CAPABILITY=default. SGD takes the CPU capability of the torch it reproduces as
`cpu_capability=`; left unset, it is the one torch's dispatcher would pick on this machine
(see `detected_capability`).

State dicts use torch's format: `state` keyed by parameter index, `param_groups` with `params`
as index lists. Like torch, `state_dict()` returns the live momentum buffers (no copies) and
`load_state_dict()` keeps a loaded buffer whose dtype already matches its parameter (a buffer
of another dtype is converted, which copies): two optimizers loaded from one state dict share
their buffers unless the dict is deep-copied first.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import numpy as np

from refimpl.autograd import enable_grad, no_grad
from refimpl.rounding import Rounding, add_scaled
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
        param_group["params"] = [p[1] if isinstance(p, tuple) else p
                                 for p in param_group["params"]]
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

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        raise NotImplementedError

    def state_dict(self) -> StateDict:
        """torch's format; the state's tensors are the live ones, not copies."""
        index: dict[int, int] = {}
        start = 0

        def pack(group: dict[str, Any]) -> dict[str, Any]:
            nonlocal start
            packed = {k: v for k, v in group.items() if k != "params"}
            index.update({id(p): i for i, p in enumerate(group["params"], start)
                          if id(p) not in index})
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
        if any(len(g["params"]) != len(s["params"])
               for g, s in zip(groups, saved_groups, strict=True)):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups), strict=True))
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                state[id_map[key]] = _cast(id_map[key], value)
            else:
                state[key] = value

        def update_group(group: dict[str, Any], new_group: dict[str, Any]) -> dict[str, Any]:
            new_group["params"] = group["params"]
            if "param_names" in group and "param_names" not in new_group:
                new_group["param_names"] = group["param_names"]
            return new_group

        self.param_groups = [update_group(g, ng)
                             for g, ng in zip(groups, saved_groups, strict=True)]
        self.state = state


def _cast(param: Tensor, value: Any) -> Any:
    """torch's Optimizer._cast: tensors take the parameter's dtype (kept as they are when it
    already matches), containers are rebuilt, anything else is kept."""
    if isinstance(value, Tensor):
        if param.is_floating_point() and value.dtype != param.dtype:
            return value.to(param.dtype).detach()
        return value
    if isinstance(value, dict):
        return {k: _cast(param, v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return type(value)(_cast(param, v) for v in value)  # type: ignore[call-arg]
    return value


def sgd_update(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None, *,
               lr: float, momentum: float, dampening: float, weight_decay: float,
               nesterov: bool, maximize: bool, rounding: Rounding,
               fused_tail: np.ndarray | None = None) -> np.ndarray | None:
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
                momentum_buffer[...] = _momentum(momentum_buffer, g, momentum, dampening,
                                                 rounding, fused_tail)  # μb + (1 − τ)g
            g = add_scaled(g, momentum_buffer, momentum, rounding) if nesterov \
                else momentum_buffer
        param[...] = add_scaled(param, g, -lr, rounding)  # θ − γg
    return momentum_buffer


def _momentum(buffer: np.ndarray, g: np.ndarray, momentum: float, dampening: float,
              rounding: Rounding, fused_tail: np.ndarray | None) -> np.ndarray:
    """μb + (1 − τ)g. torch's fused kernel (`fused=True`) rounds it as
    fma(1 − τ, g, μ·b) over whole SIMD vectors, but as fma(b, μ, (1 − τ)·g) in the scalar tail
    of each tensor (the compiler's contraction of the tail's expression); the for-loop and
    foreach paths round it as the vector body does."""
    body = add_scaled(buffer * momentum, g, 1 - dampening, rounding)
    if fused_tail is None or rounding == "separate" or not fused_tail.size:
        return body
    damped = g.reshape(-1)[fused_tail] * (1 - dampening)
    body.reshape(-1)[fused_tail] = add_scaled(damped, buffer.reshape(-1)[fused_tail], momentum,
                                              rounding)
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
        key = (round_, p.dtype, buffers[i] is None,
               i if p.data.size >= BATCH_BELOW else None)
        batches.setdefault(key, []).append(i)
    return [batches[key] for key in sorted(batches, key=lambda k: k[0])]  # stable within rounds


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else value


class SGD(Optimizer):
    """torch.optim.SGD (see the module docstring). `cpu_capability` ("AVX512", "AVX2" or
    "DEFAULT", as `torch.backends.cpu.get_cpu_capability()` names it) is refimpl's addition:
    the torch whose rounding to reproduce; by default the one torch would pick here."""

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 cpu_capability: str | None = None) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr, "momentum": momentum, "dampening": dampening,
            "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
            "foreach": foreach, "differentiable": differentiable, "fused": fused,
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

    def _step_batch(self, group: dict[str, Any], params: list[Tensor],
                    buffers: list[Tensor | None], batch: list[int]) -> None:
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
            tail = np.concatenate([start + _fused_tail(n, p.data.dtype)
                                   for start, n, p in zip([0, *splits], sizes, ps, strict=True)])
        param = gather([p.data for p in ps])
        buffer = sgd_update(
            param, gather([p.grad.data for p in ps]),  # type: ignore[union-attr]
            None if old[0] is None else gather([b.data for b in old]),  # type: ignore[union-attr]
            lr=_scalar(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=_scalar(group["weight_decay"]), nesterov=group["nesterov"],
            maximize=group["maximize"], rounding=self.rounding, fused_tail=tail)
        if group["foreach"] and group["nesterov"] and group["momentum"] != 0 and \
                not group["maximize"] and _scalar(group["weight_decay"]) == 0:
            # torch 2.13's foreach path adds μ·b into the gradient tensors themselves when it
            # made no copy of them (no maximize, no weight decay): .grad ends as g + μ·b
            for p, b in zip(ps, np.split(buffer.reshape(-1), splits), strict=True):
                g = p.grad.data  # type: ignore[union-attr]
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
            elif flat:
                buffers[i].data[...] = value  # type: ignore[union-attr]
