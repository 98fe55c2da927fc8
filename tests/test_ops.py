"""Every op against torch 2.13: forward and gradients, float32 and float64, on drawn inputs.

One table of cases drives the tests. A case names the table rows of `refimpl.ops` it exercises;
when all of them are bitwise rows (ulp == 0) the case must match torch bit for bit, otherwise the
largest ULP error (see tests/ulp.py) must stay within the rows' declared budget. The largest
error seen per case and dtype is collected and printed at the end of the session (ULP_TABLE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refimpl
import refimpl.functional as refimpl_F
from refimpl.ops import OPS
from tests import strategies as S
from tests.ulp import bitwise_equal, first_difference, scaled_ulp_error

TORCH = SimpleNamespace(m=torch, F=torch_F, name="torch")
REFIMPL = SimpleNamespace(m=refimpl, F=refimpl_F, name="refimpl")
DTYPES = [np.float32, np.float64]

Draw = Callable[[st.DataObject, np.dtype], tuple[list[np.ndarray], dict[str, Any]]]

# (case, dtype, "forward" | "grad") -> largest error seen, in ULPs.
ULP_TABLE: dict[tuple[str, str, str], float] = {}


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[..., Any]  # fn(lib, *tensors, **kwargs) with lib = TORCH or REFIMPL
    draw: Draw
    rows: tuple[str, ...] = field(default=())
    broadcasts: bool = False  # inputs broadcast: a gradient may be summed over expanded dims
    # The error model's magnitudes (forward, per-input grads) where the default, the terms'
    # magnitude measured by the |inputs| twin, does not bound the error.
    magnitude: Callable[..., tuple[float, list[float]]] | None = None

    @property
    def budget(self) -> int:
        """Errors add along a composition: a composite's budget is the sum of its rows'."""
        return sum(OPS[r].ulp for r in self.rows)

    @property
    def sums(self) -> bool:
        return any(OPS[r].sums for r in self.rows)


# Input drawers --------------------------------------------------------------------------------


def unary(elements: Callable[[np.dtype], st.SearchStrategy] = S.values, **shape_kw: Any) -> Draw:
    def draw(data: st.DataObject, dtype: np.dtype):
        shape = data.draw(S.shapes(**shape_kw))
        return [data.draw(S.arrays(dtype, shape, elements(dtype)))], {}

    return draw


def binary(elements_b: Callable[[np.dtype], st.SearchStrategy] = S.values) -> Draw:
    def draw(data: st.DataObject, dtype: np.dtype):
        shape_a, shape_b = data.draw(S.broadcastable_pair())
        a = data.draw(S.arrays(dtype, shape_a))
        b = data.draw(S.arrays(dtype, shape_b, elements_b(dtype)))
        return [a, b], {}

    return draw


def with_kwargs(base: Draw, **strategies: Callable[[st.DataObject, list[np.ndarray]], Any]) -> Draw:
    def draw(data: st.DataObject, dtype: np.dtype):
        arrays, kwargs = base(data, dtype)
        for key, strategy in strategies.items():
            kwargs[key] = strategy(data, arrays)
        return arrays, kwargs

    return draw


def reduction_dims(data: st.DataObject, arrays: list[np.ndarray]) -> Any:
    return data.draw(S.dims_of(arrays[0].ndim))


def one_dim(data: st.DataObject, arrays: list[np.ndarray]) -> int:
    ndim = arrays[0].ndim
    return data.draw(st.integers(-max(ndim, 1), max(ndim, 1) - 1))


def flag(data: st.DataObject, arrays: list[np.ndarray]) -> bool:
    return data.draw(st.booleans())


def matmul_shapes(data: st.DataObject, dtype: np.dtype):
    n, k, m = (data.draw(st.integers(1, 4)) for _ in range(3))
    batch_a, batch_b = data.draw(S.broadcastable_pair(max_dims=2))
    kind = data.draw(st.sampled_from(["vv", "mv", "vm", "mm", "batched"]))
    shape_a, shape_b = {
        "vv": ((k,), (k,)),
        "mv": ((n, k), (k,)),
        "vm": ((k,), (k, m)),
        "mm": ((n, k), (k, m)),
        "batched": ((*batch_a, n, k), (*batch_b, k, m)),
    }[kind]
    return [data.draw(S.arrays(dtype, shape_a)), data.draw(S.arrays(dtype, shape_b))], {}


def nonempty(min_dims: int = 1) -> Draw:
    return unary(min_dims=min_dims, min_side=1)


def reduction_with_dims(data: st.DataObject, dtype: np.dtype):
    arrays, _ = unary(min_side=1)(data, dtype)
    return arrays, {"dim": reduction_dims(data, arrays), "keepdim": data.draw(st.booleans())}


def sum_mean_dims(data: st.DataObject, dtype: np.dtype):
    arrays, _ = unary()(data, dtype)
    return arrays, {"dim": reduction_dims(data, arrays), "keepdim": data.draw(st.booleans())}


def max_over_dim(data: st.DataObject, dtype: np.dtype):
    arrays, _ = nonempty()(data, dtype)
    return arrays, {"dim": one_dim(data, arrays), "keepdim": data.draw(st.booleans())}


def reshape_target(data: st.DataObject, dtype: np.dtype):
    arrays, _ = unary()(data, dtype)
    size = arrays[0].size
    divisors = [d for d in range(1, size + 1) if size % d == 0] or [1]
    first = data.draw(st.sampled_from(divisors))
    return arrays, {"shape": (first, -1) if size else (0, 3)}


def permutation(data: st.DataObject, dtype: np.dtype):
    arrays, _ = unary()(data, dtype)
    return arrays, {"dims": tuple(data.draw(st.permutations(range(arrays[0].ndim))))}


def expand_target(data: st.DataObject, dtype: np.dtype):
    shape = data.draw(S.shapes(max_dims=3, min_side=1, max_side=3))
    source = tuple(data.draw(st.sampled_from([1, n])) for n in shape)
    lead = data.draw(st.integers(0, len(source)))
    return [data.draw(S.arrays(dtype, source[lead:]))], {"shape": shape}


def basic_index(data: st.DataObject, dtype: np.dtype):
    arrays, _ = nonempty()(data, dtype)
    key = []
    for n in arrays[0].shape[: data.draw(st.integers(1, arrays[0].ndim))]:
        key.append(
            data.draw(
                st.one_of(
                    st.integers(-n, n - 1),
                    st.builds(
                        slice,
                        st.integers(-n, n) | st.none(),
                        st.integers(-n, n) | st.none(),
                        st.integers(1, 3) | st.none(),
                    ),
                )
            )
        )
    return arrays, {"key": tuple(key)}


def advanced_index(data: st.DataObject, dtype: np.dtype):
    arrays, _ = nonempty()(data, dtype)
    n = arrays[0].shape[0]
    index = np.array(data.draw(st.lists(st.integers(-n, n - 1), min_size=0, max_size=6)), np.int64)
    return [*arrays, index], {}


def concat_parts(data: st.DataObject, dtype: np.dtype):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3))
    dim = data.draw(st.integers(0, len(shape) - 1))
    parts = []
    for _ in range(data.draw(st.integers(1, 3))):
        part_shape = list(shape)
        part_shape[dim] = data.draw(st.integers(0, 3))
        parts.append(data.draw(S.arrays(dtype, tuple(part_shape))))
    return parts, {"dim": dim}


def stack_parts(data: st.DataObject, dtype: np.dtype):
    shape = data.draw(S.shapes(max_dims=2))
    parts = [data.draw(S.arrays(dtype, shape)) for _ in range(data.draw(st.integers(1, 3)))]
    return parts, {"dim": data.draw(st.integers(0, len(shape)))}


def clamp_bounds(data: st.DataObject, dtype: np.dtype):
    arrays, _ = unary()(data, dtype)
    low = data.draw(st.sampled_from([None, -1.0, 0.0, -0.5, 0.5]))
    high = data.draw(st.sampled_from([None, 1.0, 0.5, 2.0, -1.0]))
    if low is None and high is None:
        low = 0.0
    return arrays, {"min": low, "max": high}


def three_way(data: st.DataObject, dtype: np.dtype):
    shape = data.draw(S.shapes())
    return [data.draw(S.arrays(dtype, shape)) for _ in range(2)], {}


def linear_inputs(data: st.DataObject, dtype: np.dtype):
    batch = data.draw(S.shapes(max_dims=2, max_side=3))
    fan_in, fan_out = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    arrays = [
        data.draw(S.arrays(dtype, (*batch, fan_in))),
        data.draw(S.arrays(dtype, (fan_out, fan_in))),
    ]
    if data.draw(st.booleans()):
        arrays.append(data.draw(S.arrays(dtype, (fan_out,))))
    return arrays, {}


def conv_inputs(spatial: int) -> Draw:
    def draw(data: st.DataObject, dtype: np.dtype):
        groups = data.draw(st.integers(1, 2))
        c_in, c_out = groups * data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 2))
        kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(spatial))
        dilation = data.draw(st.integers(1, 2))
        padding = data.draw(st.integers(0, 2))
        stride = data.draw(st.integers(1, 2))
        size = tuple(
            data.draw(st.integers(max(1, dilation * (k - 1) + 1 - 2 * padding), 5)) for k in kernel
        )
        batch = (data.draw(st.integers(1, 2)),) if data.draw(st.booleans()) else ()
        arrays = [
            data.draw(S.arrays(dtype, (*batch, c_in, *size))),
            data.draw(S.arrays(dtype, (c_out, c_in // groups, *kernel))),
        ]
        kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        if data.draw(st.booleans()):
            arrays.append(data.draw(S.arrays(dtype, (c_out,))))
        return arrays, kwargs

    return draw


def pool_inputs(average: bool) -> Draw:
    def draw(data: st.DataObject, dtype: np.dtype):
        kernel = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
        stride = data.draw(st.sampled_from([None, 1, 2, (1, 2)]))
        padding = data.draw(st.integers(0, min(kernel) // 2))
        dilation = 1 if average else data.draw(st.integers(1, 2))
        extent = [dilation * (k - 1) + 1 for k in kernel]
        # Every window must reach the input: torch 2.13 returns an out-of-range index (and
        # corrupts memory in backward) for a dilated window that lies wholly in the padding.
        size = tuple(data.draw(st.integers(max(1, e - padding), 5)) for e in extent)
        batch = (data.draw(st.integers(1, 2)),) if data.draw(st.booleans()) else ()
        x = data.draw(S.arrays(dtype, (*batch, data.draw(st.integers(1, 2)), *size)))
        kwargs: dict[str, Any] = {
            "kernel_size": kernel,
            "stride": stride,
            "padding": padding,
            "ceil_mode": data.draw(st.booleans()),
        }
        if average:
            kwargs["count_include_pad"] = data.draw(st.booleans())
            kwargs["divisor_override"] = data.draw(st.sampled_from([None, 1, 3]))
        else:
            kwargs["dilation"] = dilation
        return [x], kwargs

    return draw


def layer_norm_inputs(data: st.DataObject, dtype: np.dtype):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3, min_side=1))
    k = data.draw(st.integers(1, len(shape)))
    arrays = [data.draw(S.arrays(dtype, shape))]
    if data.draw(st.booleans()):
        arrays += [data.draw(S.arrays(dtype, shape[-k:])), data.draw(S.arrays(dtype, shape[-k:]))]
    return arrays, {"normalized_shape": shape[-k:], "eps": data.draw(st.sampled_from([1e-5, 0.1]))}


def layer_norm_magnitude(
    arrays: list[np.ndarray], kwargs: dict[str, Any], cotangent: np.ndarray
) -> tuple[float, list[float]]:
    """Normalising amplifies the rounding of x - mean by rstd (up to 1/sqrt(eps)), and the
    gradient of x once more: the error scales with rstd, not with the result."""
    x = arrays[0].astype(np.float64)
    n = int(np.prod(kwargs["normalized_shape"]))
    dims = tuple(range(x.ndim - len(kwargs["normalized_shape"]), x.ndim))
    rstd = float((1 / np.sqrt(x.var(axis=dims) + kwargs["eps"])).max(initial=0.0))
    top = lambda a: float(np.abs(a).max(initial=0.0))
    w = max(1.0, top(arrays[1])) if len(arrays) > 1 else 1.0
    b = top(arrays[2]) if len(arrays) > 2 else 0.0
    g, rows = top(cotangent), x.size // max(n, 1)
    forward = top(x) * rstd * w + b
    grad_x = g * w * rstd * (1 + n + rstd * top(x) * np.sqrt(n))
    grad_w = g * rstd * top(x) * rows
    return forward, [grad_x, grad_w, g * rows][: len(arrays)]


def gelu_magnitude(
    arrays: list[np.ndarray], kwargs: dict[str, Any], cotangent: np.ndarray
) -> tuple[float, list[float]]:
    """gelu sums 0.5x and 0.5x·erf (or tanh); its derivative multiplies the cancelling
    1 - tanh² by x·√(2/π)·(1 + 3κx²): the error scales with those terms."""
    x = float(np.abs(arrays[0]).max(initial=0.0))
    g = float(np.abs(cotangent).max(initial=0.0))
    return x, [g * (1 + x * 0.8 * (1 + 3 * 0.044715 * x * x))]


def classification_magnitude(case_name: str) -> Callable[..., tuple[float, list[float]]]:
    """Class weights scale every term of the loss and of its gradient."""

    def magnitude(
        arrays: list[np.ndarray], kwargs: dict[str, Any], cotangent: np.ndarray
    ) -> tuple[float, list[float]]:
        case = next(c for c in CASES if c.name == case_name)
        forward, grads = _magnitude(case, arrays, kwargs, cotangent)
        weight = float(np.abs(arrays[2]).max(initial=1.0)) if len(arrays) > 2 else 1.0
        g = float(np.abs(cotangent).max(initial=0.0)) * max(1.0, weight) * 2
        return forward, [max(grads[0], g), *grads[1:]]

    return magnitude


def bce_magnitude(
    arrays: list[np.ndarray], kwargs: dict[str, Any], cotangent: np.ndarray
) -> tuple[float, list[float]]:
    """The gradient sigmoid(x) - t cancels; weights scale both of its terms."""
    case = next(c for c in CASES if c.name == "bce_with_logits")
    forward, grads = _magnitude(case, arrays, kwargs, cotangent)
    top = lambda a: float(np.abs(a).max(initial=1.0)) if a is not None else 1.0
    scale = top(cotangent) * top(kwargs.get("weight_array")) * top(kwargs.get("pos_weight_array"))
    if kwargs["reduction"] == "mean":
        scale /= max(arrays[0].size, 1)
    return forward, [max(grads[0], 2 * scale), *grads[1:]]


def embedding_inputs(data: st.DataObject, dtype: np.dtype):
    rows, width = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    index_shape = data.draw(S.shapes(max_dims=2))
    index = data.draw(S.arrays(np.int64, index_shape, st.integers(0, rows - 1)))
    padding = data.draw(st.sampled_from([None, 0, rows - 1, -1]))
    return [index, data.draw(S.arrays(dtype, (rows, width)))], {"padding_idx": padding}


def pointwise_loss(**extra: st.SearchStrategy) -> Draw:
    def draw(data: st.DataObject, dtype: np.dtype):
        shape = data.draw(S.shapes())
        kwargs = {"reduction": data.draw(st.sampled_from(["mean", "sum", "none"]))}
        kwargs.update({k: data.draw(v) for k, v in extra.items()})
        return [data.draw(S.arrays(dtype, shape)) for _ in range(2)], kwargs

    return draw


def classification(weighted: bool = True) -> Draw:
    def draw(data: st.DataObject, dtype: np.dtype):
        classes = data.draw(st.integers(1, 4))
        layout = data.draw(st.sampled_from(["unbatched", "batched", "spatial"]))
        batch = {
            "unbatched": (),
            "batched": (data.draw(st.integers(0, 4)),),
            "spatial": (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))),
        }[layout]
        x_shape = (classes,) if not batch else (batch[0], classes, *batch[1:])
        ignore = data.draw(st.sampled_from([-100, 0, 1]))
        labels = st.integers(0, classes - 1) | st.just(ignore)
        target = data.draw(S.arrays(np.int64, batch, labels))
        if not batch and target.shape == () and target == -100:
            target = np.asarray(0)
        arrays = [data.draw(S.arrays(dtype, x_shape)), target]
        kwargs: dict[str, Any] = {
            "reduction": data.draw(st.sampled_from(["mean", "sum", "none"])),
            "ignore_index": ignore,
        }
        if weighted and data.draw(st.booleans()):
            arrays.append(data.draw(S.arrays(dtype, (classes,), S.positive_values(dtype))))
        return arrays, kwargs

    return draw


def bce_inputs(data: st.DataObject, dtype: np.dtype):
    shape = data.draw(S.shapes(min_dims=1))
    unit = st.sampled_from([0.0, 1.0, 0.5, 0.25])
    arrays = [data.draw(S.arrays(dtype, shape)), data.draw(S.arrays(dtype, shape, unit))]
    weight = data.draw(st.sampled_from(["none", "weight", "pos_weight", "both"]))
    kwargs = {"reduction": data.draw(st.sampled_from(["mean", "sum", "none"]))}
    positive = S.positive_values(dtype)
    if weight in ("weight", "both"):
        kwargs["weight_array"] = data.draw(S.arrays(dtype, shape, positive))
    if weight in ("pos_weight", "both"):
        kwargs["pos_weight_array"] = data.draw(S.arrays(dtype, shape[-1:], positive))
    return arrays, kwargs


def _bce(
    L: Any, x: Any, t: Any, reduction: str, weight_array: Any = None, pos_weight_array: Any = None
) -> Any:
    def constant(a: Any) -> Any:
        return None if a is None else L.m.tensor(a)

    return L.F.binary_cross_entropy_with_logits(
        x,
        t,
        weight=constant(weight_array),
        reduction=reduction,
        pos_weight=constant(pos_weight_array),
    )


def _classify(loss: str) -> Callable[..., Any]:
    def fn(L: Any, x: Any, target: Any, weight: Any = None, **kwargs: Any) -> Any:
        if weight is not None:
            weight = weight.detach()
        return getattr(L.F, loss)(x, target, weight=weight, **kwargs)

    return fn


def _pick(elements: Callable[[np.dtype], st.SearchStrategy]) -> Callable:
    return elements


positive = _pick(S.positive_values)

CASES = [
    Case("add", lambda L, a, b: a + b, binary(), ("add",), broadcasts=True),
    Case("sub", lambda L, a, b: a - b, binary(), ("sub",), broadcasts=True),
    Case("mul", lambda L, a, b: a * b, binary(), ("mul",), broadcasts=True),
    Case("div", lambda L, a, b: a / b, binary(), ("div",), broadcasts=True),
    Case("add_scalar", lambda L, a: a + 0.1, unary(), ("add",)),
    Case("rsub_scalar", lambda L, a: 2.5 - a, unary(), ("sub",)),
    Case("mul_scalar", lambda L, a: a * 0.1, unary(), ("mul",)),
    Case("rdiv_scalar", lambda L, a: 3.0 / a, unary(), ("div",)),
    Case("neg", lambda L, a: -a, unary(), ("neg",)),
    Case("pow_tensor", lambda L, a, b: a.abs() ** b, binary(), ("pow", "abs")),
    Case("pow_2", lambda L, a: a**2, unary(), ("pow",)),
    Case("pow_3", lambda L, a: a**3, unary(), ("pow",)),
    Case("pow_half", lambda L, a: a**0.5, unary(positive), ("pow",)),
    Case("pow_1.7", lambda L, a: a**1.7, unary(positive), ("pow",)),
    Case("pow_-1", lambda L, a: a**-1, unary(), ("pow",)),
    Case("rpow", lambda L, a: 2.0**a, unary(), ("pow",)),
    Case("sqrt", lambda L, a: a.sqrt(), unary(positive), ("sqrt",)),
    Case("abs", lambda L, a: a.abs(), unary(), ("abs",)),
    Case("clamp", lambda L, a, **k: a.clamp(**k), clamp_bounds, ("clamp",)),
    Case("where", lambda L, a, b: L.m.where(a > b, a, b), three_way, ("where",)),
    Case("exp", lambda L, a: a.exp(), unary(), ("exp",)),
    Case("log", lambda L, a: a.log(), unary(positive), ("log",)),
    Case("tanh", lambda L, a: a.tanh(), unary(), ("tanh",)),
    Case("sigmoid", lambda L, a: a.sigmoid(), unary(), ("sigmoid",)),
    Case("relu", lambda L, a: L.F.relu(a), unary(), ("relu",)),
    Case("leaky_relu", lambda L, a: L.F.leaky_relu(a, 0.2), unary(), ("leaky_relu",)),
    Case("elu", lambda L, a: L.F.elu(a, 0.7), unary(), ("elu",)),
    Case("gelu", lambda L, a: L.F.gelu(a), unary(), ("gelu",), magnitude=gelu_magnitude),
    Case(
        "gelu_tanh",
        lambda L, a: L.F.gelu(a, approximate="tanh"),
        unary(),
        ("gelu",),
        magnitude=gelu_magnitude,
    ),
    Case(
        "softplus", lambda L, a: L.F.softplus(a, beta=2.0, threshold=10.0), unary(), ("softplus",)
    ),
    Case("silu", lambda L, a: L.F.silu(a), unary(), ("silu",)),
    Case(
        "softmax",
        lambda L, a, dim: L.F.softmax(a, dim=dim),
        with_kwargs(unary(), dim=one_dim),
        ("softmax",),
    ),
    Case(
        "log_softmax",
        lambda L, a, dim: L.F.log_softmax(a, dim=dim),
        with_kwargs(unary(), dim=one_dim),
        ("log_softmax",),
    ),
    Case(
        "sum", lambda L, a, dim, keepdim: a.sum(dim=dim, keepdim=keepdim), sum_mean_dims, ("sum",)
    ),
    Case(
        "mean",
        lambda L, a, dim, keepdim: a.mean(dim=dim, keepdim=keepdim),
        sum_mean_dims,
        ("mean",),
    ),
    Case(
        "amax",
        lambda L, a, dim, keepdim: a.amax(dim=() if dim is None else dim, keepdim=keepdim),
        reduction_with_dims,
        ("amax",),
    ),
    Case("max", lambda L, a: a.max(), nonempty(0), ("max",)),
    Case(
        "max_dim",
        lambda L, a, dim, keepdim: a.max(dim=dim, keepdim=keepdim).values,
        max_over_dim,
        ("max_dim",),
    ),
    Case("matmul", lambda L, a, b: a @ b, matmul_shapes, ("matmul",)),
    Case("linear", lambda L, x, w, b=None: L.F.linear(x, w, b), linear_inputs, ("linear",)),
    Case("reshape", lambda L, a, shape: a.reshape(shape), reshape_target, ("reshape",)),
    Case("flatten", lambda L, a: a.flatten(), unary(), ("reshape",)),
    Case("unsqueeze_squeeze", lambda L, a: a.unsqueeze(0).squeeze(), unary(), ("reshape",)),
    Case("permute", lambda L, a, dims: a.permute(dims), permutation, ("permute",)),
    Case("transpose", lambda L, a: a.transpose(0, -1), nonempty(), ("permute",)),
    Case(
        "expand", lambda L, a, shape: a.expand(shape), expand_target, ("expand",), broadcasts=True
    ),
    Case("getitem", lambda L, a, key: a[key], basic_index, ("getitem",)),
    Case("index", lambda L, a, i: a[i], advanced_index, ("index",)),
    Case("cat", lambda L, *parts, dim: L.m.cat(parts, dim=dim), concat_parts, ("cat",)),
    Case("stack", lambda L, *parts, dim: L.m.stack(parts, dim=dim), stack_parts, ("stack",)),
    Case(
        "conv1d",
        lambda L, x, w, b=None, **k: L.F.conv1d(x, w, b, **k),
        conv_inputs(1),
        ("convolution",),
    ),
    Case(
        "conv2d",
        lambda L, x, w, b=None, **k: L.F.conv2d(x, w, b, **k),
        conv_inputs(2),
        ("convolution",),
    ),
    Case(
        "max_pool2d", lambda L, x, **k: L.F.max_pool2d(x, **k), pool_inputs(False), ("max_pool2d",)
    ),
    Case(
        "avg_pool2d", lambda L, x, **k: L.F.avg_pool2d(x, **k), pool_inputs(True), ("avg_pool2d",)
    ),
    Case(
        "layer_norm",
        lambda L, x, w=None, b=None, **k: L.F.layer_norm(x, weight=w, bias=b, **k),
        layer_norm_inputs,
        ("layer_norm",),
        magnitude=layer_norm_magnitude,
    ),
    Case(
        "embedding", lambda L, i, w, **k: L.F.embedding(i, w, **k), embedding_inputs, ("embedding",)
    ),
    Case("mse_loss", lambda L, x, t, **k: L.F.mse_loss(x, t, **k), pointwise_loss(), ("mse_loss",)),
    Case(
        "l1_loss",
        lambda L, x, t, **k: L.F.l1_loss(x, t, **k),
        pointwise_loss(),
        ("abs", "mean", "sub"),
    ),
    Case(
        "smooth_l1_loss",
        lambda L, x, t, **k: L.F.smooth_l1_loss(x, t, **k),
        pointwise_loss(beta=st.sampled_from([1.0, 0.5, 2.0, 0.0])),
        ("smooth_l1_loss",),
    ),
    Case(
        "huber_loss",
        lambda L, x, t, **k: L.F.huber_loss(x, t, **k),
        pointwise_loss(delta=st.sampled_from([1.0, 0.5, 2.0])),
        ("huber_loss",),
    ),
    Case("nll_loss", _classify("nll_loss"), classification(), ("nll_loss",)),
    Case(
        "cross_entropy",
        _classify("cross_entropy"),
        classification(),
        ("log_softmax", "nll_loss"),
        magnitude=classification_magnitude("cross_entropy"),
    ),
    Case(
        "cross_entropy_smoothing",
        lambda L, x, t, weight=None, **k: _classify("cross_entropy")(
            L, x, t, weight, label_smoothing=0.25, **k
        ),
        classification(),
        ("log_softmax", "nll_loss", "sum", "sum", "mul", "where", "add"),
        magnitude=classification_magnitude("cross_entropy_smoothing"),
    ),
    Case(
        "bce_with_logits",
        _bce,
        bce_inputs,
        ("binary_cross_entropy_with_logits",),
        magnitude=bce_magnitude,
    ),
]


def _to_library(lib: Any, array: np.ndarray, grad: bool) -> Any:
    t = lib.m.tensor(array) if lib is TORCH else refimpl.tensor(array)
    if array.dtype == np.int64 and lib is TORCH:
        t = torch.from_numpy(array.copy())
    return t.requires_grad_(True) if grad and array.dtype.kind == "f" else t


def _run(
    case: Case,
    lib: Any,
    arrays: list[np.ndarray],
    kwargs: dict[str, Any],
    cotangent: np.ndarray | None,
):
    tensors = [_to_library(lib, a, True) for a in arrays]
    out = case.fn(lib, *tensors, **kwargs)
    grads: list[np.ndarray | None] = []
    if cotangent is not None and out.requires_grad:
        seed = lib.m.tensor(cotangent) if lib is TORCH else refimpl.tensor(cotangent)
        out.backward(seed)
        for t in tensors:
            g = t.grad
            grads.append(None if g is None else (g.numpy() if lib is TORCH else g.data))
    value = out.detach().numpy() if lib is TORCH else out.data
    return np.asarray(value), grads


def _magnitude(
    case: Case, arrays: list[np.ndarray], kwargs: dict[str, Any], cotangent: np.ndarray
) -> tuple[float, list[float]]:
    """The size of the terms each result sums: torch in float64 on |inputs| and |cotangent|."""
    twins = [np.abs(a).astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    try:
        value, grads = _run(case, TORCH, twins, kwargs, np.abs(cotangent).astype(np.float64))
    except Exception:  # an input that only makes sense with its sign (e.g. weights): no twin
        return 0.0, [0.0] * len(arrays)

    def top(a: np.ndarray | None) -> float:
        finite = np.abs(a[np.isfinite(a)]) if a is not None and a.size else np.zeros(1)
        return float(finite.max(initial=0.0))

    return top(value), [top(g) for g in grads] or [0.0] * len(arrays)


def _compare(
    case: Case,
    dtype: np.dtype,
    what: str,
    actual: np.ndarray,
    expected: np.ndarray,
    scale: float,
    summed: bool = False,
) -> None:
    """`summed`: a gradient that broadcasting summed back to its input's shape, which adds
    the "sum" row's rounding to the case's own."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
    key = (case.name, np.dtype(dtype).name, what.split("[")[0])
    budget = max(case.budget, OPS["sum"].ulp) if summed else case.budget
    if budget == 0:
        error = 0.0 if bitwise_equal(actual, expected) else float("inf")
        ULP_TABLE[key] = max(ULP_TABLE.get(key, 0.0), error)
        assert error == 0.0, f"{case.name} {what} not bitwise: {first_difference(actual, expected)}"
        return
    error = scaled_ulp_error(actual, expected, scale)
    ULP_TABLE[key] = max(ULP_TABLE.get(key, 0.0), error)
    assert error <= budget, (
        f"{case.name} {what}: {error:.3g} ulp > budget {budget}; "
        f"{first_difference(actual, expected)}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_torch(case: Case, dtype: np.dtype, data: st.DataObject) -> None:
    arrays, kwargs = case.draw(data, np.dtype(dtype))
    try:
        expected, _ = _run(case, TORCH, arrays, kwargs, None)
    except (RuntimeError, IndexError, ValueError) as error:
        with pytest.raises(type(error)):
            _run(case, REFIMPL, arrays, kwargs, None)
        return
    width = 32 if np.dtype(dtype) == np.float32 else 64
    cotangent = (
        data.draw(S.arrays(expected.dtype, expected.shape, st.floats(-4, 4, width=width)))
        if expected.dtype.kind == "f"
        else None
    )
    expected, expected_grads = _run(case, TORCH, arrays, kwargs, cotangent)
    actual, actual_grads = _run(case, REFIMPL, arrays, kwargs, cotangent)
    summed = [case.broadcasts and a.shape != expected.shape for a in arrays]
    scale, grad_scales = (0.0, [0.0] * len(arrays))
    if (case.budget or any(summed)) and cotangent is not None:
        model = case.magnitude or partial(_magnitude, case)
        scale, grad_scales = model(arrays, kwargs, cotangent)
    _compare(case, dtype, "forward", actual, expected, scale if case.sums else 0.0)
    assert len(actual_grads) == len(expected_grads)
    for i, (a, e) in enumerate(zip(actual_grads, expected_grads, strict=True)):
        assert (a is None) == (e is None), f"grad[{i}]: refimpl {a is None} vs torch {e is None}"
        if a is not None:
            top = float(np.abs(cotangent).max(initial=0.0))
            _compare(case, dtype, f"grad[{i}]", a, e, max(grad_scales[i], top), summed=summed[i])
