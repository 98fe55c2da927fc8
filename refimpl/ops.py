"""The table of operations: one row per op, its forward and the derivative for each input.

Every row is read the same way (HIPS-autograd style, torch's ``derivatives.yaml`` in spirit):

    Op(name, forward, derivatives, ...)

* ``forward(*inputs, **params)`` computes the result from numpy arrays (or Python scalars).
* ``derivatives[i](g, y, *inputs, **params)`` is the vector-Jacobian product for input ``i``:
  the gradient flowing into that input, given the output gradient ``g`` and the output ``y``.
  It may return a gradient of the broadcast shape; the engine sums it back to the input's shape
  (``refimpl.autograd.unbroadcast``), so no row undoes broadcasting itself. Variadic rows
  (``cat``, ``stack``) take the input's position first: ``rule(i, g, y, *inputs, **params)``.
* The formulas follow torch 2.13's derivative rules term by term, in the same order of
  operations, because the order decides the rounding: where torch computes ``-g * ((a / b) / b)``
  so does this table. At points where the derivative is not defined the value is torch's (relu and
  abs at 0 give 0, clamp passes the gradient at its bounds, max ties share it evenly, ...).
* ``ulp`` is the budget: the largest distance to torch, in units in the last place, that the tests
  accept for forward and backward. 0 means bitwise. ``sums`` marks rows whose result sums terms
  that may cancel (reductions, matmul, ``1 + erf`` in gelu): their error is measured against the
  magnitude of the terms, not of the result (see ``tests/ulp.py``).
* ``saves`` is False for rows whose derivative needs only shapes: like torch, a second backward
  through them works even after the graph was freed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from refimpl import kernels as K

Rule = Callable[..., Any]


@dataclass(frozen=True)
class Op:
    name: str
    forward: Callable[..., np.ndarray]
    derivatives: tuple[Rule | None, ...]  # None: the input takes no gradient (a condition, indices)
    ulp: int = 0
    sums: bool = False  # the result sums terms that may cancel (see the docstring)
    saves: bool = True
    variadic: bool = False
    promotes: bool = False  # inputs are cast to torch's result type before the forward
    node_name: str = ""

    def __post_init__(self) -> None:
        if not self.node_name:
            camel = "".join(part.capitalize() for part in self.name.split("_"))
            object.__setattr__(self, "node_name", f"{camel}Backward0")


def _sign(x: np.ndarray) -> np.ndarray:
    """torch.sign: 0 at ±0 and at NaN (numpy's sign gives NaN there)."""
    sign: np.ndarray = (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)
    return sign


def _zeros(like: Any) -> np.ndarray:
    return np.zeros(like.shape, dtype=like.dtype)


def _expand_reduced(g: np.ndarray, shape: tuple[int, ...], dim: Any, keepdim: bool) -> np.ndarray:
    """Re-inserts the reduced axes of `g` so it broadcasts against an input of `shape`."""
    if not keepdim and dim is not None and len(shape) > 0:
        g = np.expand_dims(g, K.axes(dim, len(shape)))
    return np.broadcast_to(g, shape)


def _swap(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def _matmul_grad_a(g: np.ndarray, y: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    grad: np.ndarray
    if a.ndim == 1 and b.ndim == 1:
        grad = g * b
    elif a.ndim == 1:
        grad = np.matmul(b, g[..., None])[..., 0]
    elif b.ndim == 1:
        grad = g[..., None] * b
    else:
        grad = np.matmul(g, _swap(b))
    return grad


def _matmul_grad_b(g: np.ndarray, y: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    grad: np.ndarray
    if a.ndim == 1 and b.ndim == 1:
        grad = g * a
    elif a.ndim == 1:
        grad = a[:, None] * g[..., None, :]
    elif b.ndim == 1:
        grad = np.matmul(_swap(a), g[..., None])[..., 0]
    else:
        grad = np.matmul(_swap(a), g)
    return grad


def _pow_forward(x: Any, e: Any) -> np.ndarray:
    """torch.pow, with torch's exact shortcuts for the common scalar exponents."""
    power: np.ndarray
    if not (isinstance(e, (int, float)) and isinstance(x, np.ndarray) and x.dtype.kind == "f"):
        power = np.power(x, e)
    elif e == 2:
        power = x * x
    elif e == 3:
        power = x * x * x
    elif e == 0.5:
        power = np.sqrt(x)
    elif e == -0.5:
        power = 1 / np.sqrt(x)
    elif e == -1:
        power = 1 / x
    elif e == -2:
        power = 1 / (x * x)
    elif x.dtype == np.float32:  # numpy's powf strays 2 ulp; the rounded double does not
        power = np.power(x.astype(np.float64), e).astype(np.float32)
    else:
        power = np.power(x, e)
    return power


def _pow_grad_base(g: np.ndarray, y: Any, x: Any, e: Any) -> np.ndarray:
    grad: np.ndarray
    if isinstance(e, (int, float)):
        if e == 0:
            return np.zeros_like(x)
        grad = g * (e * _pow_forward(x, e - 1))
    else:
        grad = np.where(e == 0, g.dtype.type(0), g * (e * np.power(x, e - 1)))
    return grad


def _pow_grad_exponent(g: np.ndarray, y: np.ndarray, x: Any, e: np.ndarray) -> np.ndarray:
    grad: np.ndarray
    if isinstance(x, (int, float)):  # a Python base: torch takes the log in double precision
        log_x = math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)
        grad = g * np.where(e >= 0, g.dtype.type(0), y * log_x) if x == 0 else g * (y * log_x)
    else:
        grad = g * np.where((x == 0) & (e >= 0), g.dtype.type(0), y * np.log(x))
    return grad


def _softmax_grad(g: np.ndarray, y: np.ndarray, x: Any, dim: int) -> np.ndarray:
    gy = g * y
    grad: np.ndarray = gy - y * gy.sum(axis=dim, keepdims=True)
    return grad


def _log_softmax_grad(g: np.ndarray, y: np.ndarray, x: Any, dim: int) -> np.ndarray:
    grad: np.ndarray = g - np.exp(y) * g.sum(axis=dim, keepdims=True)
    return grad


def _getitem_grad(g: np.ndarray, y: Any, x: Any, key: Any) -> np.ndarray:
    grad = np.zeros(x.shape, dtype=g.dtype)
    grad[key] = g
    return grad


def _index_grad(g: np.ndarray, y: Any, x: np.ndarray, key: Any) -> np.ndarray:
    grad = np.zeros(x.shape, dtype=g.dtype)
    np.add.at(grad, key, g)
    return grad


def _cat_grad(i: int, g: np.ndarray, y: Any, *xs: Any, dim: int) -> np.ndarray:
    start = sum(x.shape[dim] for x in xs[:i])
    index = [slice(None)] * g.ndim
    index[dim] = slice(start, start + xs[i].shape[dim])
    return g[tuple(index)]


def _where_grad_a(g: np.ndarray, y: Any, c: np.ndarray, a: Any, b: Any) -> np.ndarray:
    return np.where(c, g, g.dtype.type(0))


def _where_grad_b(g: np.ndarray, y: Any, c: np.ndarray, a: Any, b: Any) -> np.ndarray:
    return np.where(c, g.dtype.type(0), g)


def _clamp_grad(g: np.ndarray, y: Any, x: np.ndarray, min: Any, max: Any) -> np.ndarray:
    if min is not None and max is not None:
        mask = (x >= min) & (x <= max)
    elif min is not None:
        mask = x >= min
    else:
        mask = x <= max
    return np.where(mask, g, g.dtype.type(0))


def _amax_grad(g: np.ndarray, y: np.ndarray, x: np.ndarray, dim: Any, keepdim: bool) -> np.ndarray:
    grad: np.ndarray
    if x.ndim == 0 and dim:  # torch restores a dim of size 1, then sums it away from +0.0
        grad = g + g.dtype.type(0)
    else:
        mask = (x == _expand_reduced(y, x.shape, dim, keepdim)).astype(x.dtype)
        count = mask.sum(axis=K.axes(dim, x.ndim), keepdims=True)
        grad = (_expand_reduced(g, x.shape, dim, keepdim) / count) * mask
    return grad


def _max_grad(g: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Evenly shared among the maxima, written into zeros (so the rest are +0.0)."""
    mask = np.isnan(x) if np.isnan(y) else x == y
    grad = np.zeros(x.shape, dtype=g.dtype)
    grad[mask] = g / g.dtype.type(mask.sum())
    return grad


def _max_dim_grad(g: np.ndarray, y: Any, x: np.ndarray, dim: int, keepdim: bool) -> np.ndarray:
    index = K.argmax_first(x, dim)
    grad = np.zeros(x.shape, dtype=g.dtype)
    g_kept = g if keepdim else np.expand_dims(g, dim)
    np.put_along_axis(grad, index, g_kept, axis=dim)
    return grad


def _gelu_grad(g: np.ndarray, y: Any, x: np.ndarray, approximate: str) -> np.ndarray:
    t = x.dtype.type
    if approximate == "tanh":
        beta, kappa = t(math.sqrt(2) * (2 / math.sqrt(math.pi)) * 0.5), t(0.044715)
        x_sq = x * x
        tanh_inner = np.tanh(beta * (x + kappa * (x_sq * x)))
        left, right = t(0.5) * x, t(1) + tanh_inner
        inner_derivative = beta * (t(1) + t(3) * kappa * x_sq)
        right_derivative = left * (t(1) - tanh_inner * tanh_inner) * inner_derivative
        tanh_grad: np.ndarray = g * (t(0.5) * right + right_derivative)
        return tanh_grad
    cdf = t(0.5) * (t(1) + K.erf(x * t(math.sqrt(0.5))))
    pdf = t((2 / math.sqrt(math.pi)) * math.sqrt(0.5) * 0.5) * np.exp(x * x * t(-0.5))
    erf_grad: np.ndarray = g * (cdf + x * pdf)
    return erf_grad


def _softplus_grad(
    g: np.ndarray, y: Any, x: np.ndarray, beta: float, threshold: float
) -> np.ndarray:
    z = np.exp(x * beta)
    grad: np.ndarray = np.where(x * beta > threshold, g, g * z / (z + 1))
    return grad


def _silu_grad(g: np.ndarray, y: Any, x: np.ndarray) -> np.ndarray:
    sigmoid = 1 / (1 + np.exp(-x))
    grad: np.ndarray = g * sigmoid * (1 + x * (1 - sigmoid))
    return grad


def _elu_grad(g: np.ndarray, y: Any, x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x <= 0, g * alpha * np.exp(x), g)


def _loss_norm(x: np.ndarray, reduction: str) -> float:
    if reduction != "mean":
        return 1.0
    return 1.0 / x.size if x.size else math.nan


def _reduced_grad(g: np.ndarray, reduction: str) -> np.ndarray:
    return g if reduction == "none" else g.reshape(())


def _mse_grad(g: np.ndarray, y: Any, x: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    grad: np.ndarray = 2 * _loss_norm(x, reduction) * (x - t) * _reduced_grad(g, reduction)
    return grad


def _smooth_l1_grad(
    g: np.ndarray, y: Any, x: np.ndarray, t: np.ndarray, reduction: str, beta: float
) -> np.ndarray:
    norm, d, gr = _loss_norm(x, reduction), x - t, _reduced_grad(g, reduction)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = norm * d * gr / beta
    return np.where(d <= -beta, -norm * gr, np.where(d >= beta, norm * gr, inside))


def _huber_grad(
    g: np.ndarray, y: Any, x: np.ndarray, t: np.ndarray, reduction: str, delta: float
) -> np.ndarray:
    norm, d, gr = _loss_norm(x, reduction), x - t, _reduced_grad(g, reduction)
    return np.where(
        d <= -delta, -norm * gr * delta, np.where(d >= delta, norm * gr * delta, norm * d * gr)
    )


def _swapped(rule: Rule) -> Rule:
    """The target's derivative: torch calls the input's rule with input and target swapped."""
    return lambda g, y, x, t, *rest, **kw: rule(g, y, t, x, *rest, **kw)


def _same(g: np.ndarray, *_: Any, **__: Any) -> np.ndarray:
    return g


def _expand_grad(g: np.ndarray, y: Any, x: Any, shape: tuple[int, ...]) -> np.ndarray:
    """torch's sum_to: the engine sums over expanded dims; a 0-dim input takes g.sum()."""
    return np.add.reduce(g, axis=None, initial=0) if x.ndim == 0 else g


def _reshape_back(g: np.ndarray, y: Any, x: Any, *_: Any, **__: Any) -> np.ndarray:
    return g.reshape(x.shape)


OPS: dict[str, Op] = {
    op.name: op
    for op in [
        # Elementwise arithmetic: exactly rounded in numpy and torch alike, hence bitwise.
        Op("add", np.add, (_same, _same), saves=False, promotes=True),
        Op("sub", np.subtract, (_same, lambda g, *_: -g), saves=False, promotes=True),
        Op("mul", np.multiply, (lambda g, y, a, b: g * b, lambda g, y, a, b: g * a), promotes=True),
        Op(
            "div",
            np.divide,
            (lambda g, y, a, b: g / b, lambda g, y, a, b: -g * ((a / b) / b)),
            promotes=True,
        ),
        Op("neg", np.negative, (lambda g, *_: -g,), saves=False),
        Op("reciprocal", lambda x: 1 / x, (lambda g, y, x: -g * (y * y),)),
        Op("pow", _pow_forward, (_pow_grad_base, _pow_grad_exponent), ulp=4, promotes=True),
        # torch 2.13's vectorised float32 sqrt is not correctly rounded (measured: about 17% of
        # values are one ulp off the exact root, which numpy returns); float64 is bitwise.
        Op("sqrt", np.sqrt, (lambda g, y, x: g / (2 * y),), ulp=1),
        Op("abs", np.abs, (lambda g, y, x: g * _sign(x),)),
        Op("clamp", K.clamp, (_clamp_grad,)),
        Op("where", K.where, (None, _where_grad_a, _where_grad_b)),
        Op(
            "to_dtype",
            lambda x, dtype: x.astype(dtype),
            (_same,),
            saves=False,
            node_name="ToCopyBackward0",
        ),
        Op("clone", np.copy, (_same,), saves=False),
        # Transcendental functions: numpy's libm and torch's vectorised ones differ by an ulp.
        Op("exp", np.exp, (lambda g, y, x: g * y,), ulp=2),
        Op("log", np.log, (lambda g, y, x: g / x,), ulp=2),
        Op("tanh", np.tanh, (lambda g, y, x: g * (1 - y * y),), ulp=4),
        Op("sigmoid", K.sigmoid, (lambda g, y, x: g * (y * (1 - y)),), ulp=4),
        # Activations.
        Op("relu", K.relu, (lambda g, y, x: np.where(y <= 0, g.dtype.type(0), g),)),
        Op(
            "leaky_relu",
            K.leaky_relu,
            (lambda g, y, x, negative_slope: np.where(x > 0, g, g * negative_slope),),
        ),
        Op("elu", K.elu, (_elu_grad,), ulp=4),
        Op("gelu", K.gelu, (_gelu_grad,), ulp=8, sums=True),
        Op("softplus", K.softplus, (_softplus_grad,), ulp=4),
        Op("silu", K.silu, (_silu_grad,), ulp=4),
        Op("softmax", K.softmax, (_softmax_grad,), ulp=6, sums=True),
        Op("log_softmax", K.log_softmax, (_log_softmax_grad,), ulp=6, sums=True),
        # Reductions: the summation order differs (numpy pairwise, torch cascaded/vectorised).
        Op(
            "sum",
            K.sum,
            (lambda g, y, x, dim, keepdim: _expand_reduced(g, x.shape, dim, keepdim),),
            ulp=2,
            sums=True,
            saves=False,
        ),
        Op(
            "mean",
            K.mean,
            (
                lambda g, y, x, dim, keepdim: (
                    _expand_reduced(g, x.shape, dim, keepdim) / K.reduced_count(x.shape, dim)
                ),
            ),
            ulp=2,
            sums=True,
            saves=False,
        ),
        # Bitwise but for the sign of a zero maximum among tied ±0: torch keeps whichever its
        # SIMD lanes meet first, which depends on the length; the ULP measure counts ±0 as equal.
        Op("amax", K.amax, (_amax_grad,), ulp=1),
        Op("max", K.max_all, (_max_grad,), ulp=1),
        Op("max_dim", K.max_dim, (_max_dim_grad,), node_name="MaxBackward0"),
        Op(
            "matmul",
            np.matmul,
            (_matmul_grad_a, _matmul_grad_b),
            ulp=4,
            sums=True,
            promotes=True,
            node_name="MmBackward0",
        ),
        Op(
            "linear",
            K.linear,
            (K.linear_grad_input, K.linear_grad_weight, K.linear_grad_bias),
            ulp=4,
            sums=True,
            node_name="AddmmBackward0",
        ),
        # Shape and indexing: pure data movement, bitwise.
        Op(
            "reshape",
            lambda x, shape: np.reshape(x, shape),
            (_reshape_back,),
            saves=False,
            node_name="ViewBackward0",
        ),
        Op(
            "permute",
            lambda x, dims: np.transpose(x, dims),
            (lambda g, y, x, dims: np.transpose(g, np.argsort(dims)),),
            saves=False,
        ),
        Op("expand", lambda x, shape: np.broadcast_to(x, shape), (_expand_grad,), saves=False),
        Op(
            "getitem",
            lambda x, key: x[key],
            (_getitem_grad,),
            saves=False,
            node_name="SliceBackward0",
        ),
        Op("index", lambda x, key: x[key], (_index_grad,), ulp=0),
        Op(
            "cat",
            lambda *xs, dim: np.concatenate(xs, axis=dim),
            (_cat_grad,),
            saves=False,
            variadic=True,
            promotes=True,
        ),
        Op(
            "stack",
            lambda *xs, dim: np.stack(xs, axis=dim),
            (lambda i, g, y, *xs, dim: np.take(g, i, axis=dim),),
            saves=False,
            variadic=True,
            promotes=True,
        ),
        # Neural-network layers.
        Op(
            "convolution",
            K.convolution,
            (K.convolution_grad_input, K.convolution_grad_weight, K.convolution_grad_bias),
            ulp=4,
            sums=True,
        ),
        Op(
            "max_pool2d",
            K.max_pool2d,
            (K.max_pool2d_grad,),
            node_name="MaxPool2DWithIndicesBackward0",
        ),
        Op("avg_pool2d", K.avg_pool2d, (K.avg_pool2d_grad,), ulp=2, sums=True),
        Op(
            "layer_norm",
            K.layer_norm,
            (K.layer_norm_grad_input, K.layer_norm_grad_weight, K.layer_norm_grad_bias),
            ulp=8,
            sums=True,
            node_name="NativeLayerNormBackward0",
        ),
        Op("embedding", K.embedding, (None, K.embedding_grad_weight)),
        # Losses with their own derivative in torch (l1_loss and cross_entropy are composites).
        Op("mse_loss", K.mse_loss, (_mse_grad, _swapped(_mse_grad)), ulp=2, sums=True),
        Op(
            "smooth_l1_loss",
            K.smooth_l1_loss,
            (_smooth_l1_grad, _swapped(_smooth_l1_grad)),
            ulp=2,
            sums=True,
        ),
        Op("huber_loss", K.huber_loss, (_huber_grad, _swapped(_huber_grad)), ulp=2, sums=True),
        Op("nll_loss", K.nll_loss, (K.nll_loss_grad,), ulp=2, sums=True),
        Op(
            "binary_cross_entropy_with_logits",
            K.bce_with_logits,
            (K.bce_with_logits_grad_input, K.bce_with_logits_grad_target),
            ulp=4,
            sums=True,
        ),
    ]
}
