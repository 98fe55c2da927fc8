"""`Parameter`: the Tensor subclass that a Module registers when it is assigned as an attribute."""

from __future__ import annotations

from typing import Any

import numpy as np

from refimpl.tensor import Tensor, _to_array, float32


class Parameter(Tensor):
    """A leaf tensor that requires grad by default and registers itself on Modules.

    Built from a Tensor it shares that tensor's array (as torch's does) but none of its
    history; built from anything else (an ndarray, a list) it holds a copy.
    """

    __slots__ = ()

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            array = np.empty((0,), dtype=float32)
        elif isinstance(data, Tensor):
            array = data.data
        else:
            array = _to_array(data, None)
        super().__init__(np.empty((0,), dtype=float32))
        self.data = array
        self.requires_grad_(requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo: dict[int, Any]) -> Parameter:
        # As torch: a fresh copy of the values and the requires_grad flag; the grad is not copied.
        if id(self) not in memo:
            memo[id(self)] = type(self)(Tensor._wrap(self.data.copy()), self.requires_grad)
        copy: Parameter = memo[id(self)]
        return copy
