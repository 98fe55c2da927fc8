"""torch.nn.functional's API over the rows of `refimpl.ops`.

Each function checks and normalises its arguments as torch does (same exception types and
messages for the common mistakes), then applies one row. `l1_loss` and `cross_entropy` are
composites in torch too, and are written here from the rows they are made of.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from refimpl.kernels import pool_output_size
from refimpl.ops import OPS
from refimpl.tensor import Tensor, _floating, apply, where

IntOrPair = int | Sequence[int]


def _pair(value: IntOrPair, n: int = 2) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    return values * n if len(values) == 1 else values


def _check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction")


# Activations -----------------------------------------------------------------------------------


def relu(x: Tensor) -> Tensor:
    return apply(OPS["relu"], x)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return apply(OPS["leaky_relu"], x, negative_slope=negative_slope)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    return apply(OPS["elu"], x, alpha=alpha)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    return apply(OPS["gelu"], x, approximate=approximate)


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return apply(OPS["softplus"], x, beta=beta, threshold=threshold)


def silu(x: Tensor) -> Tensor:
    return apply(OPS["silu"], x)


def softmax(x: Tensor, dim: int) -> Tensor:
    return x.softmax(dim)


def log_softmax(x: Tensor, dim: int) -> Tensor:
    return x.log_softmax(dim)


# Layers --------------------------------------------------------------------------------------


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if x.shape[-1:] != weight.shape[-1:]:
        rows = int(np.prod(x.shape[:-1])) if x.ndim > 1 else 1
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows}x{x.shape[-1] if x.ndim else 1} "
            f"and {weight.shape[-1]}x{weight.shape[0]})"
        )
    return apply(OPS["linear"], x, weight, bias)


def _convolution(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: IntOrPair,
    padding: IntOrPair | str,
    dilation: IntOrPair,
    groups: int,
    n: int,
) -> Tensor:
    name = f"conv{n}d"
    if x.ndim not in (n + 1, n + 2):
        raise RuntimeError(
            f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to {name}, but got "
            f"input of size: [{', '.join(map(str, x.shape))}]"
        )
    batched = x.ndim == n + 2
    if not batched:
        x = x.unsqueeze(0)
    strides, dilations = _pair(stride, n), _pair(dilation, n)
    kernel = weight.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * n
        elif padding == "same":
            if any(s != 1 for s in strides):
                raise ValueError("padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for d, k in zip(dilations, kernel, strict=True)]
            pads = tuple((t // 2, t - t // 2) for t in total)
        else:
            raise ValueError(
                f"Invalid padding string '{padding}', should be one of {{'valid', 'same'}}"
            )
    else:
        pads = tuple((p, p) for p in _pair(padding, n))
    if x.shape[1] != weight.shape[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size [{', '.join(map(str, weight.shape))}], "
            f"expected input[{', '.join(map(str, x.shape))}] to have "
            f"{weight.shape[1] * groups} channels, but got {x.shape[1]} channels instead"
        )
    if weight.shape[0] % groups:
        raise RuntimeError("Given groups, weight must be divisible by groups")
    out = apply(
        OPS["convolution"],
        x,
        weight,
        bias,
        stride=strides,
        padding=pads,
        dilation=dilations,
        groups=groups,
    )
    return out if batched else out.squeeze(0)


def conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    return _convolution(x, weight, bias, stride, padding, dilation, groups, 1)


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    return _convolution(x, weight, bias, stride, padding, dilation, groups, 2)


PoolArgs = tuple[Tensor, bool, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _pool_args(
    x: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    dilation: IntOrPair,
    ceil_mode: bool,
) -> PoolArgs:
    """Batched (N, C, H, W) input, whether it was batched, kernel, stride, padding, dilation."""
    if x.ndim not in (3, 4):
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    kernel = _pair(kernel_size)
    strides = _pair(stride) if stride not in (None, ()) else kernel
    pads, dilations = _pair(padding), _pair(dilation)
    for p, k, d in zip(pads, kernel, dilations, strict=True):
        if p > (d * (k - 1) + 1) // 2:
            raise RuntimeError(
                f"pad should be at most half of effective kernel size, but got pad={p}, "
                f"kernel_size={k} and dilation={d}"
            )
    batched = x.ndim == 4
    x4 = x if batched else x.unsqueeze(0)
    outs = [
        pool_output_size(x4.shape[2 + i], kernel[i], pads[i], strides[i], dilations[i], ceil_mode)
        for i in range(2)
    ]
    if min(outs) < 1:
        c, h, w = x4.shape[1:]
        raise RuntimeError(
            f"Given input size: ({c}x{h}x{w}). Calculated output size: "
            f"({c}x{outs[0]}x{outs[1]}). Output size is too small"
        )
    return x4, batched, kernel, strides, pads, dilations


def max_pool2d(
    x: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> Tensor:
    x4, batched, kernel, strides, pads, dilations = _pool_args(
        x, kernel_size, stride, padding, dilation, ceil_mode
    )
    out = apply(
        OPS["max_pool2d"],
        x4,
        kernel=kernel,
        stride=strides,
        padding=pads,
        dilation=dilations,
        ceil_mode=ceil_mode,
    )
    return out if batched else out.squeeze(0)


def avg_pool2d(
    x: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    x4, batched, kernel, strides, pads, _ = _pool_args(
        x, kernel_size, stride, padding, 1, ceil_mode
    )
    out = apply(
        OPS["avg_pool2d"],
        x4,
        kernel=kernel,
        stride=strides,
        padding=pads,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
    )
    return out if batched else out.squeeze(0)


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    shape = _pair(normalized_shape, 1)
    if tuple(x.shape[x.ndim - len(shape) :]) != shape or x.ndim < len(shape):
        raise RuntimeError(
            f"Given normalized_shape=[{', '.join(map(str, shape))}], expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size"
            f"[{', '.join(map(str, x.shape))}]"
        )
    return apply(OPS["layer_norm"], x, weight, bias, normalized_shape=shape, eps=eps)


def embedding(indices: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    if indices.dtype.kind not in "iu":
        raise RuntimeError(
            "Expected tensor for argument #1 'indices' to have one of the following scalar "
            "types: Long, Int; but got torch.FloatTensor instead (while checking arguments for "
            "embedding)"
        )
    rows = weight.shape[0]
    if padding_idx is not None:
        if not -rows <= padding_idx < rows:
            raise AssertionError("Padding_idx must be within num_embeddings")
        padding_idx %= rows
    if indices.numel() and (indices.data.min() < 0 or indices.data.max() >= rows):
        raise IndexError("index out of range in self")
    return apply(OPS["embedding"], indices, weight, padding_idx=padding_idx)


# Losses --------------------------------------------------------------------------------------


def _pointwise_loss(name: str, x: Tensor, target: Tensor, reduction: str, **params: Any) -> Tensor:
    _check_reduction(reduction)
    if target.shape != x.shape:
        warnings.warn(
            f"Using a target size ({_size(target.shape)}) that is different to the input size "
            f"({_size(x.shape)}). This will likely lead to incorrect results due to "
            "broadcasting. Please ensure they have the same size.",
            stacklevel=3,
        )
        shape = np.broadcast_shapes(x.shape, target.shape)
        x, target = x.expand(*shape), target.expand(*shape)
    return apply(OPS[name], x, target, reduction=reduction, **params)


def _size(shape: tuple[int, ...]) -> str:
    return "torch.Size([" + ", ".join(map(str, shape)) + "])"


def mse_loss(x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    return _pointwise_loss("mse_loss", x, target, reduction)


def smooth_l1_loss(x: Tensor, target: Tensor, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    if beta == 0.0:  # as torch.nn.functional does: then the derivative at 0 is abs's, 0
        return l1_loss(x, target, reduction)
    return _pointwise_loss("smooth_l1_loss", x, target, reduction, beta=beta)


def huber_loss(x: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    return _pointwise_loss("huber_loss", x, target, reduction, delta=delta)


def l1_loss(x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """A composite in torch too: |input - target|, then the reduction."""
    _check_reduction(reduction)
    loss = (x - target).abs()
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _check_targets(x: Tensor, target: Tensor) -> None:
    if x.ndim >= 2 and target.shape[:1] != x.shape[:1]:
        raise ValueError(
            f"Expected input batch_size ({x.shape[0]}) to match target batch_size "
            f"({target.shape[0] if target.ndim else 1})."
        )
    if target.dtype.kind not in "iu":
        raise RuntimeError(f"expected scalar type Long but found {_type_name(target)}")


def _type_name(t: Tensor) -> str:
    return {"float32": "Float", "float64": "Double", "bool": "Bool"}.get(t.dtype.name, "Long")


def nll_loss(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    _check_reduction(reduction)
    _check_targets(x, target)
    classes = x.shape[1] if x.ndim > 1 else x.shape[0]
    if weight is not None and weight.shape != (classes,):
        raise RuntimeError(
            f"weight tensor should be defined either for all {classes} classes or no classes "
            f"but got weight tensor of shape: [{', '.join(map(str, weight.shape))}]"
        )
    t = target.data
    if t.size and (t.min() < 0 or t.max() >= classes):  # cheap test first: the usual case passes
        bad = (t != ignore_index) & ((t < 0) | (t >= classes))
        if bad.any():
            raise IndexError(f"Target {int(t[bad].flat[0])} is out of bounds.")
    return apply(OPS["nll_loss"], x, target, weight, ignore_index=ignore_index, reduction=reduction)


def cross_entropy(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """log_softmax over the class dim, nll_loss, and torch's label-smoothing term."""
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    class_dim = 1 if x.ndim > 1 else 0
    logp = _floating(x).log_softmax(class_dim)
    nll = nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing <= 0.0:
        return nll
    classes = x.shape[class_dim]
    smooth = -(logp if weight is None else logp * _class_view(weight, x.ndim)).sum(class_dim)
    ignored = target == ignore_index
    smooth = where(ignored, 0.0, smooth)
    if reduction == "mean":
        if weight is None:
            total = smooth.sum() / int((~ignored).data.sum())
        else:
            kept = target.data[~ignored.data]
            total = smooth.sum() / Tensor._wrap(weight.data[kept].sum())
    elif reduction == "sum":
        total = smooth.sum()
    else:
        total = smooth
    return (1 - label_smoothing) * nll + total * (label_smoothing / classes)


def _class_view(weight: Tensor, ndim: int) -> Tensor:
    return weight.reshape((weight.shape[0],) + (1,) * (ndim - 2)) if ndim > 1 else weight


def binary_cross_entropy_with_logits(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    _check_reduction(reduction)
    if target.shape != x.shape:
        raise ValueError(
            f"Target size ({_size(target.shape)}) must be the same as input size ({_size(x.shape)})"
        )
    return apply(
        OPS["binary_cross_entropy_with_logits"], x, target, weight, pos_weight, reduction=reduction
    )


__all__ = [
    "avg_pool2d",
    "binary_cross_entropy_with_logits",
    "conv1d",
    "conv2d",
    "cross_entropy",
    "elu",
    "embedding",
    "gelu",
    "huber_loss",
    "l1_loss",
    "layer_norm",
    "leaky_relu",
    "linear",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "relu",
    "sigmoid",
    "silu",
    "smooth_l1_loss",
    "softmax",
    "softplus",
    "tanh",
]
