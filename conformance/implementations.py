"""The implementations under test, behind one small interface, and the `Side` that runs a
program's actions on one of them.

An `Implementation` says whose autograd computes the gradients (`lib`: torch or refimpl), how to
construct its optimizer (like `torch.optim.SGD`) and how to move torch-format state dicts in
and out. Two exist: `refimpl` (refimpl's autograd and refimpl's SGD) and any optimizer class
constructed like torch.optim.SGD, named `module:Class` (torch's autograd; only the optimizer is
under test). The reference side is the latter with `torch.optim:SGD`. Another framework is one
more `Implementation` (and a `Lib` for its tensors), not a change elsewhere.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

import refimpl
import refimpl.optim
from conformance import models
from conformance.bridge import state_dict_to_refimpl, state_dict_to_torch, torch_capability
from conformance.oracle import Mode
from conformance.program import Action, Setup

# --- tensors of either library as numpy ----------------------------------------------------------


class Lib(Protocol):
    name: str

    def numpy(self, tensor: Any) -> np.ndarray: ...
    def assign(self, tensor: Any, value: np.ndarray) -> None: ...
    def tensor(self, value: np.ndarray) -> Any: ...
    def scalar(self, value: float) -> Any: ...
    def is_tensor(self, value: Any) -> bool: ...
    def grad_enabled(self) -> Any: ...


class TorchLib:
    name = "torch"

    def numpy(self, tensor: Any) -> np.ndarray:
        return tensor.detach().numpy().copy()

    def assign(self, tensor: Any, value: np.ndarray) -> None:
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.array(value, copy=True)))

    def tensor(self, value: np.ndarray) -> Any:
        return torch.from_numpy(np.array(value, copy=True))

    def scalar(self, value: float) -> Any:
        return torch.tensor(value, dtype=torch.float64)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def grad_enabled(self) -> Any:
        return torch.enable_grad()


class RefimplLib:
    name = "refimpl"

    def numpy(self, tensor: Any) -> np.ndarray:
        return np.array(tensor.data, copy=True)

    def assign(self, tensor: Any, value: np.ndarray) -> None:
        tensor.data[...] = value

    def tensor(self, value: np.ndarray) -> Any:
        return refimpl.tensor(np.array(value, copy=True))

    def scalar(self, value: float) -> Any:
        return refimpl.tensor(value, dtype=refimpl.float64)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, refimpl.Tensor)

    def grad_enabled(self) -> Any:
        return refimpl.enable_grad()


LIBS: dict[str, Lib] = {"torch": TorchLib(), "refimpl": RefimplLib()}


# --- implementations -----------------------------------------------------------------------------


class Implementation(Protocol):
    name: str  # "refimpl" or "module:Class"
    lib: str  # whose autograd computes the gradients
    default_mode: Mode  # how its optimizer's results are judged unless told otherwise

    def optimizer(self, params: Any, **kwargs: Any) -> Any: ...
    def load_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]: ...
    def to_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]: ...


class RefimplImplementation:
    """refimpl end to end: its autograd computes the grads, its SGD steps (rounding like this
    process's torch, so the optimizer's arithmetic is judged bit for bit)."""

    name = "refimpl"
    lib = "refimpl"
    default_mode: Mode = "exact"

    def optimizer(self, params: Any, **kwargs: Any) -> Any:
        return refimpl.optim.SGD(params, **kwargs, cpu_capability=torch_capability())

    def load_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return state_dict_to_refimpl(state_dict)

    def to_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return state_dict_to_torch(state_dict)


class ImplementationError(ValueError):
    """A `module:Class` that cannot be an implementation under test (the message says why)."""


class TorchOptimizerImplementation:
    """Any optimizer class constructed like torch.optim.SGD (torch's autograd computes the
    grads; the class keeps its momentum buffers in `state[p]["momentum_buffer"]`)."""

    lib = "torch"
    default_mode: Mode = "ulp"

    def __init__(self, target: str) -> None:
        self.name = target
        self.cls = load_class(target)

    def optimizer(self, params: Any, **kwargs: Any) -> Any:
        return self.cls(params, **kwargs)

    def load_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(state_dict)  # never share tensors with the other side

    def to_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(state_dict)


def load_class(target: str) -> type:
    """Imports `module:Class` and checks that it can be constructed like torch.optim.SGD."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ImplementationError(f"expected module:Class, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's to fix
        raise ImplementationError(f"cannot import {module_name!r}: {error}") from error
    cls = module
    for part in attribute.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise ImplementationError(f"{module_name!r} has no attribute {attribute!r}")
    if not isinstance(cls, type):
        raise ImplementationError(f"{target} is not a class")
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    except Exception as error:
        raise ImplementationError(
            f"{target} does not construct like torch.optim.SGD(params, lr=0.1, momentum=0.9): "
            f"{type(error).__name__}: {error}") from error
    try:
        inspect.signature(cls).bind([], lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0,
                                    nesterov=False, maximize=False)
    except TypeError as error:
        raise ImplementationError(f"{target} does not take SGD's arguments: {error}") from error
    return cls


def implementation(name: str) -> Implementation:
    """`refimpl` or `module:Class`."""
    return RefimplImplementation() if name == "refimpl" else TorchOptimizerImplementation(name)


REFERENCE = "torch.optim:SGD"


# --- one side of the comparison ------------------------------------------------------------------


@dataclass
class Observation:
    """Everything the oracle compares, as numpy arrays and plain values."""

    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray | None]
    buffers: dict[str, np.ndarray | None]
    requires_grad: dict[str, bool]
    groups: list[dict[str, Any]]  # hyperparameters; `params` as names; tensors as ("tensor", x)


class Side:
    """A model and an optimizer of one implementation, driven by actions."""

    def __init__(self, impl: Implementation, setup: Setup) -> None:
        self.impl, self.setup = impl, setup
        self.lib = LIBS[impl.lib]
        self.model = models.build(setup.model, setup.dtype, impl.lib)
        self.params: dict[str, Any] = dict(self.model.parameters)
        self.names = {id(p): name for name, p in self.params.items()}
        groups = [{"params": [self.params[n] for n in g.params], **self._options(g.options)}
                  for g in setup.groups]
        self.optimizer = impl.optimizer(groups, **self._options(setup.defaults))

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        out = dict(options)
        if self.setup.tensor_lr and "lr" in out:
            out["lr"] = self.lib.scalar(out["lr"])
        return out

    def _loss(self, batch: int) -> Any:
        return self.model.loss(batch)

    def apply(self, action: Action, closure_hook: Any = None) -> np.ndarray | None:
        """Runs one action; returns the loss it produced (as an array), if any.
        `closure_hook(side)` runs inside step's closure after backward (the harness checks and
        synchronises the closure's gradients there)."""
        a = action.args
        if action.kind in ("backward", "backward_twice"):
            loss = self._loss(a["batch"])
            if action.kind == "backward_twice":
                loss.backward(retain_graph=True)
            loss.backward()
            return self.lib.numpy(loss)
        if action.kind == "zero_grad":
            self.optimizer.zero_grad(set_to_none=a["set_to_none"])
            return None
        if action.kind == "step":
            self.optimizer.step()
            return None
        if action.kind == "step_closure":
            def closure() -> Any:
                self.optimizer.zero_grad()
                loss = self._loss(a["batch"])
                loss.backward()
                if closure_hook is not None:
                    closure_hook(self)
                return loss

            result = self.optimizer.step(closure)
            return None if result is None else self.lib.numpy(result)
        if action.kind == "set_hyperparameter":
            group = self.optimizer.param_groups[a["group"] % len(self.optimizer.param_groups)]
            value = a["value"]
            group[a["name"]] = self.lib.scalar(value) if a["name"] == "lr" and \
                self.setup.tensor_lr else value
            return None
        if action.kind == "add_param_group":
            self.optimizer.add_param_group(
                {"params": [self.params[n] for n in a["params"]], **self._options(a["options"])})
            return None
        if action.kind in ("freeze", "unfreeze"):
            self.params[a["param"]].requires_grad_(action.kind == "unfreeze")
            return None
        raise ValueError(f"{action.kind} is run by the twins, not one side")

    def fresh_optimizer(self) -> Any:
        """A new optimizer over the same parameter groups, built from the setup's defaults."""
        groups = [{"params": list(g["params"])} for g in self.optimizer.param_groups]
        return self.impl.optimizer(groups, **self._options(self.setup.defaults))

    def observe(self) -> Observation:
        params, grads, buffers, requires_grad = {}, {}, {}, {}
        for name, p in self.params.items():
            params[name] = self.lib.numpy(p)
            grads[name] = None if p.grad is None else self.lib.numpy(p.grad)
            requires_grad[name] = bool(p.requires_grad)
            state = self.optimizer.state.get(p) if p in self.optimizer.state else None
            buffer = (state or {}).get("momentum_buffer")
            buffers[name] = None if buffer is None else self.lib.numpy(buffer)
        groups = []
        for group in self.optimizer.param_groups:
            observed: dict[str, Any] = {}
            for key, value in group.items():
                if key == "params":
                    observed[key] = [self.names.get(id(p), "?") for p in value]
                elif self.lib.is_tensor(value):
                    observed[key] = ("tensor", float(self.lib.numpy(value).reshape(-1)[0]))
                else:
                    observed[key] = value
            groups.append(observed)
        return Observation(params, grads, buffers, requires_grad, groups)

    def synchronise(self, reference: Observation, grads_only: bool = False) -> None:
        """Sets parameters, grads and momentum buffers to the reference's values, in place
        where the tensors exist (so aliasing between them is kept, as a faulty implementation
        made it)."""
        for name, p in self.params.items():
            expected = reference.grads[name]
            if expected is None:
                p.grad = None
            elif p.grad is not None and tuple(p.grad.shape) == expected.shape:
                self.lib.assign(p.grad, expected)
            else:
                p.grad = self.lib.tensor(expected)
            if grads_only:
                continue
            self.lib.assign(p, reference.params[name])
            state = self.optimizer.state.get(p) if p in self.optimizer.state else None
            buffer = (state or {}).get("momentum_buffer")
            if buffer is not None and reference.buffers[name] is not None:
                self.lib.assign(buffer, reference.buffers[name])
