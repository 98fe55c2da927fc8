"""Where torch and refimpl meet: tensors and optimizer state dicts converted both ways, and the
CPU capability (hence the rounding) of the torch in this process.

State dicts keep torch's format on both sides (`state` keyed by parameter index, `param_groups`
with index lists), so converting one is converting its tensors: each becomes a copy on the other
side with the same dtype, shape and bits. Everything else (hyperparameters, indices) is copied
as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

import refimpl


def torch_capability() -> str:
    """The CPU capability this process's torch dispatches to: what refimpl's SGD reproduces
    (`refimpl.optim.SGD(..., cpu_capability=torch_capability())`)."""
    return torch.backends.cpu.get_cpu_capability()


def torch_sqrt(x: np.ndarray) -> np.ndarray:
    """torch's CPU `sqrt`, for refimpl's Adam and AdamW (`sqrt=`): their for-loop and foreach
    paths take it from MKL, whose vectorised square root is not correctly rounded (1 ULP off in
    17% of float32 inputs here) and which numpy cannot reproduce. Measured with numpy's own
    sqrt instead, the parameters stay within 4 ULP (`refimpl.optim.Adam`); everything else of
    the step is refimpl's arithmetic."""
    return torch.from_numpy(np.ascontiguousarray(x)).sqrt().numpy().reshape(np.shape(x))


def to_refimpl(tensor: torch.Tensor) -> refimpl.Tensor:
    return refimpl.tensor(tensor.detach().cpu().numpy().copy())


def to_torch(tensor: refimpl.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.array(tensor.detach().numpy(), copy=True))


_T = TypeVar("_T")


def _convert(value: Any, tensor_type: type[_T], convert: Callable[[_T], Any]) -> Any:
    if isinstance(value, tensor_type):
        return convert(value)
    if isinstance(value, dict):
        return {k: _convert(v, tensor_type, convert) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_convert(v, tensor_type, convert) for v in value)
    return value


def state_dict_to_refimpl(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A torch optimizer's state dict, loadable by `refimpl.optim.SGD.load_state_dict`."""
    converted: dict[str, Any] = _convert(state_dict, torch.Tensor, to_refimpl)
    return converted


def state_dict_to_torch(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A refimpl optimizer's state dict, loadable by `torch.optim.SGD.load_state_dict`."""
    converted: dict[str, Any] = _convert(state_dict, refimpl.Tensor, to_torch)
    return converted
