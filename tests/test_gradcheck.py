"""refimpl's gradients against mathematics, without torch: a float64 central-difference check.

For every case of the table `CASES` (name -> a function that draws float64 inputs with
Hypothesis and returns them with the function to differentiate), the analytic gradient —
refimpl's backward of ``sum(out * cotangent)`` for a random cotangent — must match

    (f(x + h e_i) - f(x - h e_i)) / 2h,   f(x) = sum(out(x) * cotangent),   h = 1e-6,

element by element. Inputs are drawn away from the points where an op is not differentiable
(kinks of abs/relu/clamp/losses, ties of max/amax/max_pool), by more than the step h. The
check is of refimpl against its own forward, so it catches derivative rules that do not match
the function they differentiate; agreement with torch's values is tests/test_ops.py's business.

The error of a central difference with these steps: truncation ~h^2 f'''/6 ≲ 1e-9 on these
ranges, rounding ~eps·Σ|out·cotangent|/h. The tolerance is rtol 1e-6 plus an atol of
1e-8 scaled by the magnitude of the terms summed (`Σ|out·cotangent|`, at least 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl
import refimpl.functional as F
from refimpl import Tensor

H = 1e-6
RTOL = 1e-6
ATOL = 1e-8

Arrays = dict[str, np.ndarray]
Build = Callable[[dict[str, Tensor]], Tensor]


@dataclass(frozen=True)
class Drawn:
    """One drawn example: the differentiable float64 inputs and the function of them."""

    inputs: Arrays
    build: Build
    # Where torch's gradient is by definition not the derivative of the forward (embedding's
    # padding_idx row gets no gradient), this maps the numerical gradient to the expected one.
    convention: Callable[[Arrays], Arrays] = field(default=lambda grads: grads)


Case = Callable[[st.DataObject], Drawn]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    """Registers the decorated drawing function as the table's row `name`."""

    def register(draw: Case) -> Case:
        CASES[name] = draw
        return draw

    return register


# Drawing inputs ------------------------------------------------------------------------------


def floats(
    low: float = -2.0, high: float = 2.0, away: Sequence[float] = (), margin: float = 0.05
) -> st.SearchStrategy[float]:
    """Floats in [low, high] farther than `margin` from each point of `away`."""
    values = st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    if away:
        values = values.filter(lambda v: all(abs(v - p) > margin for p in away))
    return values


def array(
    data: st.DataObject,
    shape: tuple[int, ...],
    low: float = -2.0,
    high: float = 2.0,
    away: Sequence[float] = (),
    margin: float = 0.05,
) -> np.ndarray:
    return data.draw(hnp.arrays(np.float64, shape, elements=floats(low, high, away, margin)))


def distinct(data: st.DataObject, shape: tuple[int, ...], spacing: float = 0.05) -> np.ndarray:
    """Pairwise distinct values at least `spacing` apart: no ties for max-like ops."""
    k = max(40, 2 * math.prod(shape))
    grid = st.integers(-k, k).map(lambda i: i * spacing)
    return data.draw(hnp.arrays(np.float64, shape, elements=grid, unique=True))


def shape(
    data: st.DataObject, min_dims: int = 1, max_dims: int = 3, max_side: int = 4
) -> tuple[int, ...]:
    return data.draw(
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)
    )


def broadcast_pair(data: st.DataObject, max_dims: int = 3) -> tuple[tuple[int, ...], ...]:
    shapes = hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=0, max_dims=max_dims, min_side=1, max_side=3
    )
    return data.draw(shapes).input_shapes


def reduction_dims(data: st.DataObject, ndim: int) -> int | tuple[int, ...] | None:
    if ndim == 0:
        return data.draw(st.sampled_from([None, 0, -1]))
    one = st.integers(-ndim, ndim - 1)
    many = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)
    return data.draw(st.one_of(st.none(), one, many))


def reductions(data: st.DataObject) -> str:
    return data.draw(st.sampled_from(["none", "mean", "sum"]))


# Elementwise arithmetic ----------------------------------------------------------------------

BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow (tensor exponent)": lambda a, b: a**b,
}


def _binary(name: str) -> Case:
    def draw(data: st.DataObject) -> Drawn:
        sa, sb = broadcast_pair(data)
        a = array(data, sa, 0.3, 2.0) if name.startswith("pow") else array(data, sa)
        b = array(data, sb, away=(0.0,), margin=0.3) if name == "div" else array(data, sb)
        return Drawn({"a": a, "b": b}, lambda t: BINARY[name](t["a"], t["b"]))

    return draw


for _name in BINARY:
    CASES[_name] = _binary(_name)


@case("scalar arithmetic")
def _scalar_arithmetic(data: st.DataObject) -> Drawn:
    x = array(data, shape(data, min_dims=0), away=(0.0,), margin=0.3)
    s = data.draw(floats(-3, 3))
    form = data.draw(st.sampled_from(["x + s", "s - x", "x * s", "x / s", "s / x", "-x"]))
    s = s if abs(s) > 0.3 or form != "x / s" else 1.5
    forms: dict[str, Build] = {
        "x + s": lambda t: t["x"] + s,
        "s - x": lambda t: s - t["x"],
        "x * s": lambda t: t["x"] * s,
        "x / s": lambda t: t["x"] / s,
        "s / x": lambda t: s / t["x"],
        "-x": lambda t: -t["x"],
    }
    return Drawn({"x": x}, forms[form])


@case("pow (scalar exponent)")
def _pow_scalar(data: st.DataObject) -> Drawn:
    exponent = data.draw(st.sampled_from([2, 3, 0.5, -0.5, -1, -2, 1.7, -0.3, 0, 1]))
    x = array(data, shape(data, min_dims=0), 0.3, 2.0)
    return Drawn({"x": x}, lambda t: t["x"] ** exponent)


@case("pow (scalar base)")
def _rpow(data: st.DataObject) -> Drawn:
    base = data.draw(st.sampled_from([2.0, 0.5, 3.7, math.e]))
    x = array(data, shape(data, min_dims=0))
    return Drawn({"x": x}, lambda t: base ** t["x"])


# matmul ------------------------------------------------------------------------------------


@case("matmul")
def _matmul(data: st.DataObject) -> Drawn:
    n, k, m, b1, b2 = (data.draw(st.integers(1, 3)) for _ in range(5))
    shapes = {
        "1-D @ 1-D": ((k,), (k,)),
        "1-D @ 2-D": ((k,), (k, m)),
        "2-D @ 1-D": ((n, k), (k,)),
        "2-D @ 2-D": ((n, k), (k, m)),
        "batched @ 1-D": ((b1, n, k), (k,)),
        "1-D @ batched": ((k,), (b1, k, m)),
        "batched @ 2-D": ((b1, n, k), (k, m)),
        "batched broadcast": ((b1, 1, n, k), (b2, k, m)),
    }
    sa, sb = shapes[data.draw(st.sampled_from(list(shapes)))]
    return Drawn(
        {"a": array(data, sa), "b": array(data, sb)}, lambda t: refimpl.matmul(t["a"], t["b"])
    )


# Reductions ----------------------------------------------------------------------------------


def _sum_mean(method: str) -> Case:
    def draw(data: st.DataObject) -> Drawn:
        x = array(data, shape(data, min_dims=0))
        dim, keepdim = reduction_dims(data, x.ndim), data.draw(st.booleans())
        return Drawn({"x": x}, lambda t: getattr(t["x"], method)(dim, keepdim))

    return draw


CASES["sum"], CASES["mean"] = _sum_mean("sum"), _sum_mean("mean")


@case("amax")
def _amax(data: st.DataObject) -> Drawn:
    x = distinct(data, shape(data))
    dim = reduction_dims(data, x.ndim)
    keepdim = data.draw(st.booleans())
    return Drawn({"x": x}, lambda t: t["x"].amax(() if dim is None else dim, keepdim))


@case("max")
def _max(data: st.DataObject) -> Drawn:
    x = distinct(data, shape(data))
    dim = data.draw(st.none() | st.integers(-x.ndim, x.ndim - 1))
    keepdim = data.draw(st.booleans())
    if dim is None:
        return Drawn({"x": x}, lambda t: t["x"].max())
    return Drawn({"x": x}, lambda t: t["x"].max(dim, keepdim).values)


# Shapes and indexing -------------------------------------------------------------------------


@case("reshape")
def _reshape(data: st.DataObject) -> Drawn:
    x = array(data, shape(data, min_dims=0))
    target = data.draw(st.permutations(x.shape)) if x.ndim else []
    target = [*target, 1] if data.draw(st.booleans()) else target
    if target and data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    return Drawn({"x": x}, lambda t: t["x"].reshape(*target) if target else t["x"].reshape(()))


@case("permute")
def _permute(data: st.DataObject) -> Drawn:
    x = array(data, shape(data))
    order = data.draw(st.permutations(range(x.ndim)))
    return Drawn({"x": x}, lambda t: t["x"].permute(*order))


@case("transpose, flatten, squeeze, unsqueeze")
def _views(data: st.DataObject) -> Drawn:
    x = array(data, shape(data, max_side=2))
    d0, d1 = (data.draw(st.integers(-x.ndim, x.ndim - 1)) for _ in range(2))
    u = data.draw(st.integers(-x.ndim - 1, x.ndim))
    return Drawn(
        {"x": x}, lambda t: t["x"].transpose(d0, d1).unsqueeze(u).squeeze().flatten() * 1.0
    )


@case("expand")
def _expand(data: st.DataObject) -> Drawn:
    x = array(data, shape(data, max_side=3))
    sizes = [
        data.draw(st.integers(1, 3)) if n == 1 else data.draw(st.sampled_from([n, -1]))
        for n in x.shape
    ]
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    return Drawn({"x": x}, lambda t: t["x"].expand(*lead, *sizes))


def _basic_key(data: st.DataObject, dims: tuple[int, ...]) -> tuple[object, ...]:
    key: list[object] = []
    for n in dims:
        kind = data.draw(st.sampled_from(["int", "slice", "all"]))
        if kind == "int":
            key.append(data.draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            start = data.draw(st.none() | st.integers(-n, n))
            stop = data.draw(st.none() | st.integers(-n, n))
            key.append(slice(start, stop, data.draw(st.none() | st.integers(1, 3))))
        else:
            key.append(slice(None))
    if data.draw(st.booleans()):
        key.insert(data.draw(st.integers(0, len(key))), None)
    return tuple(key)


@case("getitem")
def _getitem(data: st.DataObject) -> Drawn:
    x = array(data, shape(data))
    key = _basic_key(data, x.shape[: data.draw(st.integers(1, x.ndim))])
    return Drawn({"x": x}, lambda t: t["x"][key])


@case("advanced index")
def _advanced_index(data: st.DataObject) -> Drawn:
    x = array(data, shape(data, max_side=3))
    n = x.shape[0]
    index = data.draw(
        hnp.arrays(
            np.int64,
            data.draw(hnp.array_shapes(max_dims=2, max_side=4)),
            elements=st.integers(-n, n - 1),
        )
    )  # repeats included
    form = data.draw(st.sampled_from(["x[i]", "x[i, j]", "x[:, j]", "x[mask]"]))
    if form == "x[mask]":
        mask = data.draw(hnp.arrays(np.bool_, x.shape))
        return Drawn({"x": x}, lambda t: t["x"][refimpl.tensor(mask)])
    if form == "x[i]" or x.ndim == 1:
        return Drawn({"x": x}, lambda t: t["x"][refimpl.tensor(index)])
    m = x.shape[1]
    second = data.draw(hnp.arrays(np.int64, index.shape, elements=st.integers(-m, m - 1)))
    if form == "x[i, j]":
        return Drawn({"x": x}, lambda t: t["x"][refimpl.tensor(index), refimpl.tensor(second)])
    return Drawn({"x": x}, lambda t: t["x"][:, refimpl.tensor(second)])


@case("cat")
def _cat(data: st.DataObject) -> Drawn:
    base = shape(data)
    dim = data.draw(st.integers(-len(base), len(base) - 1))
    inputs = {}
    for i in range(data.draw(st.integers(1, 3))):
        s = list(base)
        s[dim] = data.draw(st.integers(1, 3))
        inputs[f"x{i}"] = array(data, tuple(s))
    return Drawn(inputs, lambda t: refimpl.cat(list(t.values()), dim))


@case("stack")
def _stack(data: st.DataObject) -> Drawn:
    base = shape(data, min_dims=0)
    dim = data.draw(st.integers(-len(base) - 1, len(base)))
    inputs = {f"x{i}": array(data, base) for i in range(data.draw(st.integers(1, 3)))}
    return Drawn(inputs, lambda t: refimpl.stack(list(t.values()), dim))


@case("where")
def _where(data: st.DataObject) -> Drawn:
    sa, sb = broadcast_pair(data)
    sc = np.broadcast_shapes(sa, sb)[data.draw(st.integers(0, 1)) :]
    condition = data.draw(hnp.arrays(np.bool_, sc))
    other = data.draw(st.sampled_from(["tensor", "scalar"]))
    inputs = {"a": array(data, sa)}
    if other == "scalar":
        return Drawn(inputs, lambda t: refimpl.where(refimpl.tensor(condition), t["a"], 0.5))
    inputs["b"] = array(data, sb)
    return Drawn(inputs, lambda t: refimpl.where(refimpl.tensor(condition), t["a"], t["b"]))


# Elementwise functions and activations --------------------------------------------------------


def _unary(
    function: Callable[[Tensor], Tensor],
    low: float = -3.0,
    high: float = 3.0,
    away: Sequence[float] = (),
) -> Case:
    def draw(data: st.DataObject) -> Drawn:
        x = array(data, shape(data, min_dims=0), low, high, away)
        return Drawn({"x": x}, lambda t: function(t["x"]))

    return draw


CASES.update(
    {
        "exp": _unary(refimpl.exp),
        "log": _unary(refimpl.log, 0.1, 4.0),
        "sqrt": _unary(refimpl.sqrt, 0.1, 4.0),
        "abs": _unary(refimpl.abs, away=(0.0,)),
        "clamp(min, max)": _unary(lambda x: x.clamp(-0.5, 0.7), away=(-0.5, 0.7)),
        "clamp(min)": _unary(lambda x: x.clamp(min=-0.5), away=(-0.5,)),
        "clamp(max)": _unary(lambda x: x.clamp(max=0.7), away=(0.7,)),
        "tanh": _unary(refimpl.tanh),
        "sigmoid": _unary(refimpl.sigmoid, -6.0, 6.0),
        "relu": _unary(F.relu, away=(0.0,)),
        "gelu": _unary(F.gelu, -4.0, 4.0),
        "gelu (tanh)": _unary(lambda x: F.gelu(x, approximate="tanh"), -4.0, 4.0),
        "silu": _unary(F.silu, -6.0, 6.0),
    }
)


@case("leaky_relu")
def _leaky_relu(data: st.DataObject) -> Drawn:
    slope = data.draw(st.sampled_from([0.01, 0.2, 1.5, -0.3]))
    return _unary(lambda x: F.leaky_relu(x, slope), away=(0.0,))(data)


@case("elu")
def _elu(data: st.DataObject) -> Drawn:
    alpha = data.draw(st.sampled_from([1.0, 0.5, 2.0]))
    return _unary(lambda x: F.elu(x, alpha), away=(0.0,))(data)


@case("softplus")
def _softplus(data: st.DataObject) -> Drawn:
    beta = data.draw(st.sampled_from([1.0, 0.5, 2.0]))
    threshold = data.draw(st.sampled_from([20.0, 1.5]))
    # Above beta * x = threshold torch switches to the identity: a (small) jump, kept away.
    return _unary(lambda x: F.softplus(x, beta, threshold), -4.0, 4.0, away=(threshold / beta,))(
        data
    )


def _softmax(function: Callable[[Tensor, int], Tensor]) -> Case:
    def draw(data: st.DataObject) -> Drawn:
        x = array(data, shape(data), -4.0, 4.0)
        dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
        return Drawn({"x": x}, lambda t: function(t["x"], dim))

    return draw


CASES["softmax"], CASES["log_softmax"] = _softmax(F.softmax), _softmax(F.log_softmax)


# Layers --------------------------------------------------------------------------------------


@case("linear")
def _linear(data: st.DataObject) -> Drawn:
    lead = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    inputs = {"x": array(data, (*lead, n_in)), "w": array(data, (n_out, n_in))}
    if data.draw(st.booleans()):
        inputs["b"] = array(data, (n_out,))
    return Drawn(inputs, lambda t: F.linear(t["x"], t["w"], t.get("b")))


def _conv(n: int) -> Case:
    def draw(data: st.DataObject) -> Drawn:
        groups = data.draw(st.integers(1, 2))
        c_in, c_out = groups * data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 2))
        kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(n))
        stride = tuple(data.draw(st.integers(1, 2)) for _ in range(n))
        dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(n))
        padding: tuple[int, ...] | str = data.draw(
            st.sampled_from(["same", "valid"]) | st.tuples(*[st.integers(0, 2)] * n)
        )
        if padding == "same":
            stride = (1,) * n
        pads = (0,) * n if isinstance(padding, str) else padding
        size = tuple(
            max(1, d * (k - 1) + 1 - 2 * p) + data.draw(st.integers(0, 3))
            for k, d, p in zip(kernel, dilation, pads, strict=True)
        )
        batch = data.draw(st.sampled_from([(), (1,), (2,)]))
        inputs = {
            "x": array(data, (*batch, c_in, *size)),
            "w": array(data, (c_out, c_in // groups, *kernel)),
        }
        if data.draw(st.booleans()):
            inputs["b"] = array(data, (c_out,))
        function = F.conv1d if n == 1 else F.conv2d
        return Drawn(
            inputs,
            lambda t: function(t["x"], t["w"], t.get("b"), stride, padding, dilation, groups),
        )

    return draw


CASES["conv1d"] = _conv(1)
CASES["conv2d"] = _conv(2)


def _pool_geometry(data: st.DataObject, dilated: bool) -> tuple[Any, ...]:
    """kernel, stride (None: the kernel), padding, dilation and input size of a pooling."""
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(2))
    dilation = tuple(data.draw(st.integers(1, 2)) if dilated else 1 for _ in range(2))
    stride = data.draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    padding = tuple(data.draw(st.integers(0, e // 2)) for e in effective)
    # At least one effective kernel wide: every window then holds an element of the input.
    size = tuple(e + data.draw(st.integers(0, 3)) for e in effective)
    return kernel, stride, padding, dilation, size


@case("max_pool2d")
def _max_pool2d(data: st.DataObject) -> Drawn:
    kernel, stride, padding, dilation, size = _pool_geometry(data, dilated=True)
    ceil_mode = data.draw(st.booleans())
    batch = data.draw(st.sampled_from([(), (2,)]))
    x = distinct(data, (*batch, data.draw(st.integers(1, 2)), *size))
    return Drawn(
        {"x": x}, lambda t: F.max_pool2d(t["x"], kernel, stride, padding, dilation, ceil_mode)
    )


@case("avg_pool2d")
def _avg_pool2d(data: st.DataObject) -> Drawn:
    kernel, stride, padding, _, size = _pool_geometry(data, dilated=False)
    ceil_mode, count_include_pad = data.draw(st.booleans()), data.draw(st.booleans())
    divisor = data.draw(st.sampled_from([None, None, 1, 3]))
    batch = data.draw(st.sampled_from([(), (2,)]))
    x = array(data, (*batch, data.draw(st.integers(1, 2)), *size))
    return Drawn(
        {"x": x},
        lambda t: F.avg_pool2d(
            t["x"], kernel, stride, padding, ceil_mode, count_include_pad, divisor
        ),
    )


def _layer_norm(affine: bool) -> Case:
    def draw(data: st.DataObject) -> Drawn:
        normalized = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=2, max_side=3))
        lead = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
        # Spread-out values: a near-constant row has a huge 1/std and third derivative.
        inputs = {"x": distinct(data, (*lead, *normalized), spacing=0.1)}
        if affine:
            parameters = data.draw(st.sampled_from(["weight", "bias", "weight and bias"]))
            if "weight" in parameters:
                inputs["w"] = array(data, normalized)
            if "bias" in parameters:
                inputs["b"] = array(data, normalized)
        eps = data.draw(st.sampled_from([1e-5, 0.1]))
        return Drawn(
            inputs, lambda t: F.layer_norm(t["x"], normalized, t.get("w"), t.get("b"), eps)
        )

    return draw


CASES["layer_norm"], CASES["layer_norm (affine)"] = _layer_norm(False), _layer_norm(True)


@case("embedding")
def _embedding(data: st.DataObject) -> Drawn:
    rows, width = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    indices = data.draw(
        hnp.arrays(
            np.int64, hnp.array_shapes(max_dims=2, max_side=4), elements=st.integers(0, rows - 1)
        )
    )
    padding_idx = data.draw(st.none() | st.integers(-rows, rows - 1))

    def convention(grads: Arrays) -> Arrays:
        # torch: the padding row's embedding is used in the forward but gets no gradient.
        if padding_idx is not None:
            grads["w"][padding_idx] = 0.0
        return grads

    return Drawn(
        {"w": array(data, (rows, width))},
        lambda t: F.embedding(refimpl.tensor(indices), t["w"], padding_idx),
        convention,
    )


# Losses --------------------------------------------------------------------------------------


def _pointwise_loss(name: str) -> Case:
    def draw(data: st.DataObject) -> Drawn:
        s = shape(data, min_dims=0)
        reduction = reductions(data)
        parameter = data.draw(st.sampled_from([1.0, 0.5, 2.0]))
        kinks = {
            "mse_loss": (),
            "l1_loss": (0.0,),
            "smooth_l1_loss": (-parameter, parameter),
            "huber_loss": (-parameter, parameter),
        }[name]
        target = array(data, s)
        difference = array(data, s, -3.0, 3.0, away=kinks)
        function: Callable[..., Tensor] = getattr(F, name)
        extra = {"smooth_l1_loss": {"beta": parameter}, "huber_loss": {"delta": parameter}}
        kwargs = extra.get(name, {})
        # Both the input and the target are differentiable.
        return Drawn(
            {"x": target + difference, "t": target},
            lambda t: function(t["x"], t["t"], reduction=reduction, **kwargs),
        )

    return draw


for _name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"):
    CASES[_name] = _pointwise_loss(_name)


ClassTargets = tuple[tuple[int, ...], np.ndarray, int, np.ndarray | None]


def _class_targets(data: st.DataObject) -> ClassTargets:
    """(input shape, targets, ignore_index, class weight) for nll_loss / cross_entropy."""
    classes = data.draw(st.integers(1, 4))
    layout = data.draw(st.sampled_from(["(C,)", "(N, C)", "(N, C, d)"]))
    n, d = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    input_shape, target_shape = {
        "(C,)": ((classes,), ()),
        "(N, C)": ((n, classes), (n,)),
        "(N, C, d)": ((n, classes, d), (n, d)),
    }[layout]
    targets = data.draw(hnp.arrays(np.int64, target_shape, elements=st.integers(0, classes - 1)))
    # Targets equal to ignore_index are ignored: some may be, never all (a mean over nothing).
    ignore_index = data.draw(st.sampled_from([-100, 0, classes - 1]))
    if np.all(targets == ignore_index):
        ignore_index = -100
    weight = None
    if data.draw(st.booleans()):
        weight = data.draw(hnp.arrays(np.float64, (classes,), elements=floats(0.2, 3.0)))
    return input_shape, targets, ignore_index, weight


@case("nll_loss")
def _nll_loss(data: st.DataObject) -> Drawn:
    input_shape, targets, ignore_index, weight = _class_targets(data)
    reduction = reductions(data)
    w = None if weight is None else refimpl.tensor(weight)
    return Drawn(
        {"x": array(data, input_shape)},
        lambda t: F.nll_loss(t["x"], refimpl.tensor(targets), w, ignore_index, reduction),
    )


@case("cross_entropy")
def _cross_entropy(data: st.DataObject) -> Drawn:
    input_shape, targets, ignore_index, weight = _class_targets(data)
    reduction = reductions(data)
    smoothing = data.draw(st.sampled_from([0.0, 0.1, 0.35, 1.0]))
    w = None if weight is None else refimpl.tensor(weight)
    return Drawn(
        {"x": array(data, input_shape, -4.0, 4.0)},
        lambda t: F.cross_entropy(
            t["x"], refimpl.tensor(targets), w, ignore_index, reduction, smoothing
        ),
    )


@case("binary_cross_entropy_with_logits")
def _bce_with_logits(data: st.DataObject) -> Drawn:
    s = shape(data, min_dims=0)
    inputs = {"x": array(data, s, -5.0, 5.0), "t": array(data, s, 0.0, 1.0)}
    positive = hnp.arrays(np.float64, s[-1:], elements=floats(0.2, 3.0))
    weight = data.draw(st.none() | hnp.arrays(np.float64, s, elements=floats(0.2, 3.0)) | positive)
    pos_weight = data.draw(st.none() | positive)
    reduction = reductions(data)
    w = None if weight is None else refimpl.tensor(weight)
    pw = None if pos_weight is None else refimpl.tensor(pos_weight)
    return Drawn(
        inputs, lambda t: F.binary_cross_entropy_with_logits(t["x"], t["t"], w, reduction, pw)
    )


# The check -------------------------------------------------------------------------------------


def _leaves(arrays: Arrays, requires_grad: bool) -> dict[str, Tensor]:
    return {
        k: refimpl.tensor(v, dtype=refimpl.float64, requires_grad=requires_grad)
        for k, v in arrays.items()
    }


def _objective(drawn: Drawn, arrays: Arrays, cotangent: np.ndarray) -> float:
    with refimpl.no_grad():
        out = drawn.build(_leaves(arrays, requires_grad=False)).numpy()
    return float(np.sum(out * cotangent))


def numerical_gradient(drawn: Drawn, cotangent: np.ndarray) -> Arrays:
    arrays = {k: np.array(v, dtype=np.float64) for k, v in drawn.inputs.items()}  # copies
    grads: Arrays = {}
    for name, x in arrays.items():
        grad = np.zeros_like(x)
        flat, grad_flat = x.reshape(-1), grad.reshape(-1)  # views: writes go to x
        assert np.shares_memory(flat, x) and np.shares_memory(grad_flat, grad)
        for i in range(flat.size):
            original = flat[i]
            flat[i] = original + H
            plus = _objective(drawn, arrays, cotangent)
            flat[i] = original - H
            minus = _objective(drawn, arrays, cotangent)
            flat[i] = original
            grad_flat[i] = (plus - minus) / (2 * H)
        grads[name] = grad
    return drawn.convention(grads)


@pytest.mark.parametrize("name", list(CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_gradient_matches_central_difference(name: str, data: st.DataObject) -> None:
    drawn = CASES[name](data)
    leaves = _leaves(drawn.inputs, requires_grad=True)
    out = drawn.build(leaves)
    assert out.dtype == refimpl.float64, "a float64 computation must stay float64"
    cotangent = data.draw(
        hnp.arrays(np.float64, out.shape, elements=floats(-1.0, 1.0)), label="cotangent"
    )
    (out * refimpl.tensor(cotangent)).sum().backward()

    with refimpl.no_grad():
        terms = np.abs(out.detach().numpy() * cotangent).sum()
    atol = ATOL * max(1.0, float(terms))
    expected = numerical_gradient(drawn, cotangent)
    for key, leaf in leaves.items():
        assert leaf.grad is not None, f"no gradient reached input {key!r}"
        analytic = leaf.grad.numpy()
        assert analytic.dtype == np.float64 and analytic.shape == leaf.shape, key
        np.testing.assert_allclose(
            analytic, expected[key], rtol=RTOL, atol=atol, err_msg=f"d/d{key}"
        )
