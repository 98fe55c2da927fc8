"""numpy kernels behind the larger rows of `refimpl.ops`: forwards and derivative rules.

Arguments arrive already validated and normalised by `refimpl.functional` (dims are
non-negative, pads are (before, after) pairs). Where torch's CPU kernel fixes an order of
operations or of accumulation, the kernel here follows it, and says so. A result annotated
`np.ndarray` may be the numpy scalar that a reduction to 0 dims gives: `refimpl.tensor.apply`
and the autograd engine make every result an array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Pairs = tuple[tuple[int, int], ...]


def axes(dim: Any, ndim: int) -> tuple[int, ...]:
    """The reduced axes: all for None, else the given ones made non-negative."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not dims:
        return tuple(range(ndim))
    return tuple(sorted(d % max(ndim, 1) for d in dims)) if ndim else ()


def reduced_count(shape: tuple[int, ...], dim: Any) -> int:
    return math.prod(shape[a] for a in axes(dim, len(shape)))


# Elementwise --------------------------------------------------------------------------------

_erf_object = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function through libm's erf in double precision, rounded to x's dtype."""
    return np.asarray(_erf_object(x.astype(np.float64)), dtype=np.float64).astype(x.dtype)


def clamp(x: np.ndarray, min: Any, max: Any) -> np.ndarray:
    # torch replaces only what lies strictly outside: NaN and a -0.0 on a 0.0 bound stay as they
    # are; with lo > hi every element becomes hi.
    out = x if min is None else np.where(x < min, min, x)
    return out if max is None else np.where(out > max, max, out)


def where(condition: np.ndarray, a: Any, b: Any) -> np.ndarray:
    out: np.ndarray = np.where(condition, a, b)
    return out


def relu(x: np.ndarray) -> np.ndarray:
    # clamp_min(x, 0): NaN stays NaN and -0.0 stays -0.0, as in torch.
    return np.where(x < 0, x.dtype.type(0), x)


def leaky_relu(x: np.ndarray, negative_slope: float) -> np.ndarray:
    return np.where(x > 0, x, x * negative_slope)


def elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x <= 0, np.expm1(x) * alpha, x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1 / (1 + np.exp(-x))
    return out


def silu(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / (1 + np.exp(-x))
    return out


def softplus(x: np.ndarray, beta: float, threshold: float) -> np.ndarray:
    scaled = x * beta
    return np.where(scaled > threshold, x, np.log1p(np.exp(scaled)) / beta)


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    t = x.dtype.type
    if approximate == "tanh":
        beta, kappa = t(math.sqrt(2) * (2 / math.sqrt(math.pi)) * 0.5), t(0.044715)
        tanh_form: np.ndarray = t(0.5) * x * (t(1) + np.tanh(beta * (x + kappa * (x * x * x))))
        return tanh_form
    erf_form: np.ndarray = x * t(0.5) * (t(1) + erf(x * t(math.sqrt(0.5))))
    return erf_form


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))
    return out


# Reductions ---------------------------------------------------------------------------------


def sum(x: np.ndarray, dim: Any, keepdim: bool) -> np.ndarray:
    out: np.ndarray = np.sum(x, axis=axes(dim, x.ndim), keepdims=keepdim)
    return out


def mean(x: np.ndarray, dim: Any, keepdim: bool) -> np.ndarray:
    out: np.ndarray = np.mean(x, axis=axes(dim, x.ndim), keepdims=keepdim)
    return out


def amax(x: np.ndarray, dim: Any, keepdim: bool) -> np.ndarray:
    out: np.ndarray = np.amax(x, axis=axes(dim, x.ndim), keepdims=keepdim)
    return out


def max_all(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.max(x)
    return out


def argmax_first(x: np.ndarray, dim: int) -> np.ndarray:
    """torch.max(x, dim)'s index: the first maximal element, or the first NaN."""
    return np.expand_dims(np.argmax(x, axis=dim), dim)


def max_dim(x: np.ndarray, dim: int, keepdim: bool) -> np.ndarray:
    values = np.take_along_axis(x, argmax_first(x, dim), axis=dim)
    return values if keepdim else np.squeeze(values, dim)


def _row_max(x: np.ndarray, dim: int) -> np.ndarray:
    # the method skips np.amax's wrapper
    out: np.ndarray = x.max(axis=dim, keepdims=True, initial=-np.inf)
    return out


def softmax(x: np.ndarray, dim: int) -> np.ndarray:
    e = np.exp(x - _row_max(x, dim))
    out: np.ndarray = e / e.sum(axis=dim, keepdims=True)
    return out


def log_softmax(x: np.ndarray, dim: int) -> np.ndarray:
    shifted = x - _row_max(x, dim)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    return out


# Linear -------------------------------------------------------------------------------------


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y: np.ndarray = np.matmul(x, w.T)
    if b is None:
        return y
    if b.dtype != y.dtype or b.shape != y.shape[-1:]:
        promoted: np.ndarray = y + b
        return promoted
    y += b  # y is the product's fresh array: adding in place saves an output-sized temporary
    return y


def linear_grad_input(g: np.ndarray, y: Any, x: np.ndarray, w: np.ndarray, b: Any) -> np.ndarray:
    gx: np.ndarray = np.matmul(g, w)
    return gx


def linear_grad_weight(g: np.ndarray, y: Any, x: np.ndarray, w: np.ndarray, b: Any) -> np.ndarray:
    gw: np.ndarray = np.matmul(g.reshape(-1, g.shape[-1]).T, x.reshape(-1, x.shape[-1]))
    return gw


def linear_grad_bias(g: np.ndarray, y: Any, x: np.ndarray, w: np.ndarray, b: Any) -> np.ndarray:
    gb: np.ndarray = g.reshape(-1, g.shape[-1]).sum(axis=0)
    return gb


# Convolution (1-D is lifted to 2-D with a height of one) ------------------------------------


def _lift(
    x: np.ndarray, w: np.ndarray, stride: tuple[int, ...], padding: Pairs, dilation: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], Pairs, tuple[int, ...]]:
    if x.ndim == 3:
        return x[:, :, None], w[:, :, None], (1, *stride), ((0, 0), *padding), (1, *dilation)
    return x, w, stride, padding, dilation


def _windows(
    xp: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> np.ndarray:
    """(N, C, H, W) → the view (N, C, OH, OW, KH, KW) of every kernel window."""
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    view = sliding_window_view(xp, extent, axis=(2, 3))
    return view[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]


# The 2-D (stride, padding, dilation, weight shape) of a convolution lifted by `_lift`.
Lifted = tuple[tuple[int, ...], Pairs, tuple[int, ...], tuple[int, ...]]


def _columns(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, ...],
    padding: Pairs,
    dilation: tuple[int, ...],
    groups: int,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int], tuple[int, ...], Lifted]:
    """The input's windows as columns (N, G, OH·OW, C/G·KH·KW), the weights (G, O/G, C/G·KH·KW),
    the output's (N, OH, OW), the padded input's shape and the lifted geometry."""
    x4, w4, stride, padding, dilation = _lift(x, w, stride, padding, dilation)
    xp = np.pad(x4, ((0, 0), (0, 0), *padding))
    win = _windows(xp, w4.shape[2:], stride, dilation)
    n, c, oh, ow, kh, kw = win.shape
    cols = win.reshape(n, groups, c // groups, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
    cols = cols.reshape(n, groups, oh * ow, (c // groups) * kh * kw)
    weights = w4.reshape(groups, w4.shape[0] // groups, -1)  # (G, O/G, C/G·KH·KW)
    return cols, weights, (n, oh, ow), xp.shape, (stride, padding, dilation, w4.shape)


def convolution(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, ...],
    padding: Pairs,
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    cols, weights, (n, oh, ow), _, _ = _columns(x, w, stride, padding, dilation, groups)
    out: np.ndarray = np.matmul(cols, weights.transpose(0, 2, 1))  # (N, G, OH·OW, O/G)
    out = out.transpose(0, 1, 3, 2).reshape(n, w.shape[0], oh, ow)
    if b is not None:
        out = out + b[:, None, None]
    return out.reshape(out.shape[:2] + (ow,)) if x.ndim == 3 else out


def _grouped_output_grad(g: np.ndarray, groups: int) -> np.ndarray:
    g4 = g[:, :, None] if g.ndim == 3 else g
    n, o, oh, ow = g4.shape
    return g4.reshape(n, groups, o // groups, oh * ow).transpose(0, 1, 3, 2)  # (N, G, P, O/G)


def convolution_grad_input(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    w: np.ndarray,
    b: Any,
    stride: tuple[int, ...],
    padding: Pairs,
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    _, weights, (n, oh, ow), padded, (stride, pads, dilation, w4shape) = _columns(
        x, w, stride, padding, dilation, groups
    )
    gcols = np.matmul(_grouped_output_grad(g, groups), weights)  # (N, G, P, C/G·KH·KW)
    kh, kw = w4shape[2:]
    cg = w4shape[1]
    gcols = gcols.reshape(n, groups, oh, ow, cg, kh, kw).transpose(0, 1, 4, 2, 3, 5, 6)
    gcols = gcols.reshape(n, groups * cg, oh, ow, kh, kw)
    gxp = np.zeros(padded, dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
            cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (ow - 1) + 1, stride[1])
            gxp[:, :, rows, cols] += gcols[..., i, j]
    (top, _), (left, _) = pads
    gx = gxp[
        :,
        :,
        top : top + padded[2] - pads[0][0] - pads[0][1],
        left : left + padded[3] - pads[1][0] - pads[1][1],
    ]
    return gx.reshape(x.shape)


def convolution_grad_weight(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    w: np.ndarray,
    b: Any,
    stride: tuple[int, ...],
    padding: Pairs,
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    cols, _, (n, oh, ow), _, _ = _columns(x, w, stride, padding, dilation, groups)
    go = _grouped_output_grad(g, groups)  # (N, G, P, O/G)
    k = cols.shape[-1]
    cols2 = cols.transpose(1, 3, 0, 2).reshape(groups, k, n * oh * ow)
    go2 = go.transpose(1, 0, 2, 3).reshape(groups, n * oh * ow, -1)
    gw = np.matmul(cols2, go2).transpose(0, 2, 1)  # (G, O/G, K)
    out: np.ndarray = gw.reshape(w.shape)
    return out


def convolution_grad_bias(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    w: np.ndarray,
    b: Any,
    stride: tuple[int, ...],
    padding: Pairs,
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    gb: np.ndarray = g.sum(axis=(0, *range(2, g.ndim)))
    return gb


# Pooling (on (N, C, H, W); functional lifts the unbatched (C, H, W)) --------------------------


def pool_output_size(
    size: int, kernel: int, pad: int, stride: int, dilation: int, ceil_mode: bool
) -> int:
    """torch's pooling_output_shape."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_geometry(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    ceil_mode: bool,
) -> tuple[tuple[int, ...], Pairs]:
    """The output's (OH, OW) and the (before, after) padding of each spatial dim."""
    outs = tuple(
        pool_output_size(x.shape[2 + i], kernel[i], padding[i], stride[i], dilation[i], ceil_mode)
        for i in range(2)
    )
    pads = tuple(
        (
            padding[i],
            max(
                padding[i],
                (outs[i] - 1) * stride[i]
                + dilation[i] * (kernel[i] - 1)
                + 1
                - x.shape[2 + i]
                - padding[i],
            ),
        )
        for i in range(2)
    )
    return outs, pads


def _max_pool_index(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    ceil_mode: bool,
) -> tuple[np.ndarray, tuple[int, ...], Pairs]:
    """Per output, the flat index (in the padded plane) of the element torch selects."""
    outs, pads = _pool_geometry(x, kernel, stride, padding, dilation, ceil_mode)
    xp = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=-np.inf)
    win = _windows(xp, kernel, stride, dilation)[:, :, : outs[0], : outs[1]]
    flat = win.reshape(*win.shape[:4], -1)
    # torch keeps the first maximum, but a NaN replaces the current pick whenever it is seen,
    # so the last NaN of a window wins.
    choice = np.argmax(flat, axis=-1)
    nan = np.isnan(flat)
    last_nan = flat.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
    choice = np.where(nan.any(axis=-1), last_nan, choice)
    ki, kj = np.divmod(choice, kernel[1])
    oi = np.arange(outs[0])[:, None] * stride[0]
    oj = np.arange(outs[1])[None, :] * stride[1]
    rows, cols = oi + ki * dilation[0], oj + kj * dilation[1]
    return rows * xp.shape[3] + cols, xp.shape, pads


def max_pool2d(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    ceil_mode: bool,
) -> np.ndarray:
    index, _padded, _ = _max_pool_index(x, kernel, stride, padding, dilation, ceil_mode)
    xp = np.pad(
        x,
        ((0, 0), (0, 0), *_pool_geometry(x, kernel, stride, padding, dilation, ceil_mode)[1]),
        constant_values=-np.inf,
    )
    planes = xp.reshape(x.shape[0], x.shape[1], -1)
    return np.take_along_axis(planes, index.reshape(*index.shape[:2], -1), axis=2).reshape(
        index.shape
    )


def max_pool2d_grad(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    ceil_mode: bool,
) -> np.ndarray:
    index, padded, pads = _max_pool_index(x, kernel, stride, padding, dilation, ceil_mode)
    n, c = x.shape[:2]
    gxp = np.zeros((n * c, padded[2] * padded[3]), dtype=g.dtype)
    # torch adds each output's gradient to its input in output order; np.add.at does the same.
    planes = np.arange(n * c)[:, None]
    np.add.at(gxp, (planes, index.reshape(n * c, -1)), g.reshape(n * c, -1))
    gxp = gxp.reshape(n, c, padded[2], padded[3])
    (top, _), (left, _) = pads
    return gxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]


def _avg_divisors(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    outs: tuple[int, ...],
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    """torch's divide_factor per output position, shape (OH, OW)."""
    sizes: list[np.ndarray] = []
    for i in range(2):
        start = np.arange(outs[i]) * stride[i] - padding[i]
        end = np.minimum(start + kernel[i], x.shape[2 + i] + padding[i])
        full = end - start
        clipped = np.minimum(end, x.shape[2 + i]) - np.maximum(start, 0)
        sizes.append(full if count_include_pad else clipped)
    if divisor_override:
        return np.full(outs, divisor_override)
    divisors: np.ndarray = sizes[0][:, None] * sizes[1][None, :]
    return divisors


def avg_pool2d(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    outs, pads = _pool_geometry(x, kernel, stride, padding, (1, 1), ceil_mode)
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    win = _windows(xp, kernel, stride, (1, 1))[:, :, : outs[0], : outs[1]]
    # torch sums each window element by element in row-major order, starting from zero.
    total = np.zeros(win.shape[:4], dtype=x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            total += win[..., i, j]
    divisor = _avg_divisors(x, kernel, stride, padding, outs, count_include_pad, divisor_override)
    out: np.ndarray = total / divisor.astype(x.dtype)
    return out


def avg_pool2d_grad(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    outs, pads = _pool_geometry(x, kernel, stride, padding, (1, 1), ceil_mode)
    divisor = _avg_divisors(x, kernel, stride, padding, outs, count_include_pad, divisor_override)
    share = g / divisor.astype(g.dtype)
    padded = (x.shape[2] + pads[0][0] + pads[0][1], x.shape[3] + pads[1][0] + pads[1][1])
    gxp = np.zeros((*x.shape[:2], *padded), dtype=g.dtype)
    # torch visits outputs in row-major order; an input element meets them in reverse kernel
    # order, so walking the kernel backwards adds the shares in torch's order.
    for i in reversed(range(kernel[0])):
        for j in reversed(range(kernel[1])):
            rows = slice(i, i + stride[0] * (outs[0] - 1) + 1, stride[0])
            cols = slice(j, j + stride[1] * (outs[1] - 1) + 1, stride[1])
            gxp[:, :, rows, cols] += share
    return gxp[:, :, pads[0][0] : pads[0][0] + x.shape[2], pads[1][0] : pads[1][0] + x.shape[3]]


# Normalisation and embedding ----------------------------------------------------------------


def _moments(
    x: np.ndarray, ndim: int, eps: float
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """The normalised dims (the last `ndim`), the mean over them and 1 / sqrt(var + eps)."""
    dims = tuple(range(x.ndim - ndim, x.ndim))
    mu = x.mean(axis=dims, keepdims=True)
    var = ((x - mu) * (x - mu)).mean(axis=dims, keepdims=True)
    return dims, mu, 1 / np.sqrt(var + eps)


def layer_norm(
    x: np.ndarray,
    w: np.ndarray | None,
    b: np.ndarray | None,
    normalized_shape: tuple[int, ...],
    eps: float,
) -> np.ndarray:
    _, mu, rstd = _moments(x, len(normalized_shape), eps)
    # torch's CPU kernel: (x * rstd + (-rstd * mean)) * gamma + beta
    y: np.ndarray = x * rstd + (-rstd * mu)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def layer_norm_grad_input(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    w: np.ndarray | None,
    b: Any,
    normalized_shape: tuple[int, ...],
    eps: float,
) -> np.ndarray:
    dims, mu, rstd = _moments(x, len(normalized_shape), eps)
    n = math.prod(normalized_shape)
    gw = g if w is None else g * w
    ds = (gw * x).sum(axis=dims, keepdims=True)
    db = gw.sum(axis=dims, keepdims=True)
    scale = 1 / x.dtype.type(n) if n else x.dtype.type(0)
    bb = (db * mu - ds) * rstd * rstd * rstd * scale
    c = -bb * mu - db * rstd * scale
    gx: np.ndarray = rstd * gw + bb * x + c
    return gx


def layer_norm_grad_weight(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    w: Any,
    b: Any,
    normalized_shape: tuple[int, ...],
    eps: float,
) -> np.ndarray:
    _dims, mu, rstd = _moments(x, len(normalized_shape), eps)
    lead = tuple(range(x.ndim - len(normalized_shape)))
    gw: np.ndarray = (g * ((x - mu) * rstd)).sum(axis=lead)
    return gw


def layer_norm_grad_bias(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    w: Any,
    b: Any,
    normalized_shape: tuple[int, ...],
    eps: float,
) -> np.ndarray:
    gb: np.ndarray = g.sum(axis=tuple(range(x.ndim - len(normalized_shape))))
    return gb


def embedding(indices: np.ndarray, weight: np.ndarray, padding_idx: int | None) -> np.ndarray:
    rows: np.ndarray = weight[indices]
    return rows


def embedding_grad_weight(
    g: np.ndarray, y: Any, indices: np.ndarray, weight: np.ndarray, padding_idx: int | None
) -> np.ndarray:
    grad = np.zeros(weight.shape, dtype=g.dtype)
    np.add.at(grad, indices.reshape(-1), g.reshape(-1, weight.shape[1]))
    if padding_idx is not None:
        grad[padding_idx] = 0
    return grad


# Losses -------------------------------------------------------------------------------------


def reduce(loss: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return loss
    reduced: np.ndarray = loss.sum() if reduction == "sum" else loss.mean()
    return reduced


def mse_loss(x: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    d = x - t
    return reduce(d * d, reduction)


def smooth_l1_loss(x: np.ndarray, t: np.ndarray, reduction: str, beta: float) -> np.ndarray:
    z = np.abs(x - t)
    return reduce(np.where(z < beta, 0.5 * z * z / beta, z - 0.5 * beta), reduction)


def huber_loss(x: np.ndarray, t: np.ndarray, reduction: str, delta: float) -> np.ndarray:
    z = np.abs(x - t)
    return reduce(np.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta)), reduction)


def _nll_targets(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: the target class (0 where ignored), its weight (0 where ignored), the mask."""
    t = target if x.ndim > 1 else target.reshape(1)
    keep = t != ignore_index
    safe = np.where(keep, t, 0)
    # Without weights, 1 where kept and 0 where ignored.
    w = keep.astype(x.dtype) if weight is None else np.where(keep, weight[safe], x.dtype.type(0))
    return safe, w, keep


def nll_loss(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore_index: int, reduction: str
) -> np.ndarray:
    safe, w, keep = _nll_targets(x, target, weight, ignore_index)
    if x.ndim == 2:  # (N, C): a plain gather, much cheaper than moveaxis + take_along_axis
        picked = x[np.arange(x.shape[0]), safe]
    else:  # classes moved last; a 1-D input is one sample
        classes_last = np.moveaxis(x, 1, -1) if x.ndim > 1 else x[None]
        picked = np.take_along_axis(classes_last, safe[..., None], axis=-1)[..., 0]
    losses: np.ndarray = np.where(keep, -(picked * w), x.dtype.type(0))
    if reduction == "none":
        return losses if x.ndim > 1 else losses.reshape(())
    if reduction == "sum":
        total: np.ndarray = losses.sum()
        return total
    mean: np.ndarray = losses.sum() / w.sum()  # w has the losses' shape
    return mean


def nll_loss_grad(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    ignore_index: int,
    reduction: str,
) -> np.ndarray:
    safe, w, keep = _nll_targets(x, target, weight, ignore_index)
    if reduction == "mean":
        g = g / w.sum()
    share = np.where(
        keep, -(g if reduction != "none" or x.ndim > 1 else g.reshape(1)) * w, x.dtype.type(0)
    )
    if x.ndim == 2:  # (N, C): a plain scatter, as in nll_loss
        grad = np.zeros(x.shape, dtype=x.dtype)
        grad[np.arange(x.shape[0]), safe] = share
        return grad
    classes_last = np.zeros((*safe.shape, x.shape[1 if x.ndim > 1 else 0]), dtype=x.dtype)
    np.put_along_axis(
        classes_last, safe[..., None], np.broadcast_to(share, safe.shape)[..., None], axis=-1
    )
    out: np.ndarray = np.moveaxis(classes_last, -1, 1) if x.ndim > 1 else classes_last[0]
    return out


def bce_with_logits(
    x: np.ndarray,
    t: np.ndarray,
    weight: np.ndarray | None,
    pos_weight: np.ndarray | None,
    reduction: str,
) -> np.ndarray:
    log_sig = log_sigmoid(x)
    if pos_weight is not None:
        log_sig = log_sig * ((pos_weight - 1) * t + 1)
    loss = (1 - t) * x - log_sig
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


def bce_with_logits_grad_input(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    t: np.ndarray,
    weight: np.ndarray | None,
    pos_weight: np.ndarray | None,
    reduction: str,
) -> np.ndarray:
    if pos_weight is not None:
        pt = pos_weight * t
        grad = (pt + 1 - t) * sigmoid(x) - pt
    else:
        grad = sigmoid(x) - t
    grad = grad * g
    if weight is not None:
        grad = grad * weight
    out: np.ndarray = grad / x.dtype.type(x.size) if reduction == "mean" else grad
    return out


def bce_with_logits_grad_target(
    g: np.ndarray,
    y: Any,
    x: np.ndarray,
    t: np.ndarray,
    weight: np.ndarray | None,
    pos_weight: np.ndarray | None,
    reduction: str,
) -> np.ndarray:
    if pos_weight is not None:
        grad = (log_sigmoid(-x) - log_sigmoid(x) * pos_weight) * g
    else:
        grad = -x * g
    if weight is not None:
        grad = grad * weight
    out: np.ndarray = grad / t.dtype.type(t.size) if reduction == "mean" else grad
    return out
