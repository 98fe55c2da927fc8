"""refimpl: autograd, nn and optimizers (refimpl.optim: SGD, Adam, AdamW) reimplemented over
numpy, to be checked bit by bit against torch.

Importing refimpl never imports torch. The API mirrors torch's where refimpl covers it:

    import refimpl
    x = refimpl.tensor([1.0, -2.0], requires_grad=True)
    (x * x).sum().backward()      # x.grad == [2, -4]
"""

import builtins
from collections.abc import Callable, Sequence
from typing import overload

from refimpl.autograd import enable_grad, is_grad_enabled, no_grad
from refimpl.nn.init import manual_seed
from refimpl.tensor import (
    MaxResult,
    Tensor,
    arange,
    bool_,
    cat,
    clamp,
    float32,
    float64,
    from_numpy,
    full,
    int64,
    matmul,
    ones,
    ones_like,
    pow,
    result_type,
    stack,
    tensor,
    where,
    zeros,
    zeros_like,
)

bool = bool_  # shadows the builtin below: annotations say builtins.bool


def _unary(name: str) -> Callable[[Tensor], Tensor]:
    def function(x: Tensor) -> Tensor:
        result: Tensor = getattr(x, name)()
        return result

    function.__name__ = name
    function.__doc__ = f"torch.{name}"
    return function


exp = _unary("exp")
log = _unary("log")
sqrt = _unary("sqrt")
abs = _unary("abs")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
relu = _unary("relu")


def sum(
    x: Tensor, dim: int | Sequence[int] | None = None, keepdim: builtins.bool = False
) -> Tensor:
    return x.sum(dim, keepdim)


def mean(
    x: Tensor, dim: int | Sequence[int] | None = None, keepdim: builtins.bool = False
) -> Tensor:
    return x.mean(dim, keepdim)


def amax(x: Tensor, dim: int | Sequence[int] = (), keepdim: builtins.bool = False) -> Tensor:
    return x.amax(dim, keepdim)


@overload
def max(x: Tensor, dim: None = None, keepdim: builtins.bool = False) -> Tensor: ...
@overload
def max(x: Tensor, dim: int, keepdim: builtins.bool = False) -> MaxResult: ...
def max(x: Tensor, dim: int | None = None, keepdim: builtins.bool = False) -> Tensor | MaxResult:
    return x.max(dim, keepdim)


def reshape(x: Tensor, shape: int | tuple[int, ...] | list[int]) -> Tensor:
    return x.reshape(shape)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    return x.flatten(start_dim, end_dim)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    return x.transpose(dim0, dim1)


def permute(x: Tensor, dims: tuple[int, ...] | list[int]) -> Tensor:
    return x.permute(dims)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    return x.unsqueeze(dim)


def squeeze(x: Tensor, dim: int | Sequence[int] | None = None) -> Tensor:
    return x.squeeze(dim)


def softmax(x: Tensor, dim: int) -> Tensor:
    return x.softmax(dim)


def log_softmax(x: Tensor, dim: int) -> Tensor:
    return x.log_softmax(dim)


__all__ = [
    "Tensor",
    "abs",
    "amax",
    "arange",
    "bool",
    "cat",
    "clamp",
    "enable_grad",
    "exp",
    "flatten",
    "float32",
    "float64",
    "from_numpy",
    "full",
    "int64",
    "is_grad_enabled",
    "log",
    "log_softmax",
    "manual_seed",
    "matmul",
    "max",
    "mean",
    "no_grad",
    "ones",
    "ones_like",
    "permute",
    "pow",
    "relu",
    "reshape",
    "result_type",
    "sigmoid",
    "softmax",
    "sqrt",
    "squeeze",
    "stack",
    "sum",
    "tanh",
    "tensor",
    "transpose",
    "unsqueeze",
    "where",
    "zeros",
    "zeros_like",
]
