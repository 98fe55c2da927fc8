"""`build(spec, dtype, lib)`: a spec's `Model` in torch or refimpl, with the same parameters
(names, order, bit-identical initial values) and the same batches in both."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as TF

import refimpl
import refimpl.functional as RF
from conformance.models.data import cached_batch, initial_values
from conformance.models.forward import apply_loss, graph_forward, layers_forward, loss_kinks
from conformance.models.spec import DTYPES, LIBS, ModelSpec
from refimpl.nn import Parameter as RefParameter


class _Backend(Protocol):
    """A library's side of `Model` (the classes `_Torch` and `_Refimpl` themselves)."""

    F: Any  # the library's functional module, as conformance.models.forward calls it

    def parameter(
        self, array: np.ndarray, requires_grad: bool
    ) -> torch.nn.Parameter | RefParameter: ...

    def tensor(self, array: np.ndarray) -> torch.Tensor | refimpl.Tensor: ...


class _Torch:
    F: ClassVar[Any] = TF

    @staticmethod
    def parameter(array: np.ndarray, requires_grad: bool) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.from_numpy(array.copy()), requires_grad=requires_grad)

    @staticmethod
    def tensor(array: np.ndarray) -> torch.Tensor:
        # The cached arrays are read-only; torch never writes into inputs, but warns about them.
        return torch.from_numpy(array.copy())


class _Refimpl:
    F: ClassVar[Any] = RF

    @staticmethod
    def parameter(array: np.ndarray, requires_grad: bool) -> RefParameter:
        return RefParameter(array.copy(), requires_grad=requires_grad)

    @staticmethod
    def tensor(array: np.ndarray) -> refimpl.Tensor:
        return refimpl.from_numpy(array)


_BACKENDS: dict[str, _Backend] = {"torch": _Torch, "refimpl": _Refimpl}


class Model:
    """A built model: `parameters` (name -> torch / refimpl Parameter, in spec order) and
    `loss(batch_seed)`, the scalar loss on that batch with its graph, ready for backward().

    `kinks`: None, or a Counter to which every forward adds 1 per kink (see KINKS) it hit at
    least once, judged on the values this library computed (a pre-activation exactly at the
    break point, an exact tie) where a gradient can flow (the input requires grad)."""

    kinks: Counter[str] | None = None

    def __init__(self, spec: ModelSpec, dtype: str, lib: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if lib not in _BACKENDS:
            raise ValueError(f"lib must be one of {LIBS}, got {lib!r}")
        self.spec = spec
        self.dtype = dtype
        self.lib = lib
        self._backend = _BACKENDS[lib]
        frozen = set(spec.frozen)
        self.parameters: dict[str, Any] = {
            name: self._backend.parameter(value, name not in frozen)
            for name, value in initial_values(spec, dtype).items()
        }
        self._inputs: dict[int, tuple[Any, Any]] = {}

    def __repr__(self) -> str:
        return f"Model({self.lib}, {self.dtype}, {self.spec.describe()})"

    def inputs(self, batch_seed: int) -> tuple[Any, Any]:
        """The batch as this library's tensors (x, y), cached per batch_seed."""
        cached = self._inputs.get(batch_seed)
        if cached is None:
            arrays = cached_batch(self.spec, self.dtype, batch_seed)
            cached = (self._backend.tensor(arrays["x"]), self._backend.tensor(arrays["y"]))
            if len(self._inputs) >= 16:
                self._inputs.clear()
            self._inputs[batch_seed] = cached
        return cached

    def output(self, x: Any) -> Any:
        """The model's output on input tensor x (before the loss)."""
        if self.kinks is None:
            return self._output(x, None)
        hits: set[str] = set()
        out = self._output(x, hits)
        self.kinks.update(hits)
        return out

    def _output(self, x: Any, hits: set[str] | None) -> Any:
        if self.spec.kind == "graph":
            return graph_forward(self.spec, self.parameters, x, hits=hits)
        return layers_forward(self.spec, self._backend.F, self.parameters, x, hits)

    def loss(self, batch_seed: int) -> Any:
        x, y = self.inputs(batch_seed)
        if self.kinks is None:
            return apply_loss(self.spec, self._backend.F, self._output(x, None), y)
        hits: set[str] = set()
        out = self._output(x, hits)
        loss_kinks(self.spec, out, y, hits)
        self.kinks.update(hits)
        return apply_loss(self.spec, self._backend.F, out, y)

    def grads(self) -> dict[str, np.ndarray | None]:
        """Each parameter's .grad as a numpy copy, or None."""
        return {
            name: None if p.grad is None else _numpy(p.grad) for name, p in self.parameters.items()
        }

    def values(self) -> dict[str, np.ndarray]:
        """Each parameter's current value as a numpy copy."""
        return {name: _numpy(p) for name, p in self.parameters.items()}


def _numpy(t: Any) -> np.ndarray:
    return np.array(t.detach().numpy(), copy=True)


def build(spec: ModelSpec, dtype: str, lib: str) -> Model:
    """The model of `spec` in `lib` ("torch" | "refimpl") and `dtype` ("float32" | "float64")."""
    return Model(spec, dtype, lib)
