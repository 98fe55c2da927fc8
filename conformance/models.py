"""Small models as data (drawn by `conformance.strategies`), built twice: in torch and refimpl.

A `ModelSpec` is a frozen dataclass of ints, strings and tuples of small dataclasses, so it is
hashable, prints readably, shrinks well and round-trips through JSON (`to_json` / `from_json`).
Kinds:

* ``mlp``: Linear layers with activations (ReLU, LeakyReLU, Tanh, Sigmoid, GELU (exact or
  tanh), ELU (alpha), SiLU, Softplus), maybe a LayerNorm, ending in a Linear head.
* ``conv1d`` / ``conv2d``: convolutions (kernel, stride, padding) with activations, conv2d maybe
  max- or avg-pooled, then Flatten and a Linear head.
* ``embedding``: Embedding (maybe with padding_idx), maybe LayerNorm and an activation, Flatten,
  Linear head.
* ``graph``: a list of `GraphOp`s over named parameters and the input ``x``: broadcasting
  add / sub / mul / div, matmul, smooth unary ops (tanh, exp, sigmoid, pow, neg, sqrt, log,
  reciprocal), kinked ones (relu, abs, leaky_relu, elu, clamp), softmax / log_softmax, sum /
  mean / amax / max over a dim or all, and data movement (transpose, slicing, indexing,
  expand, clone, a dtype round trip, cat, stack); a parameter may feed several ops (weight
  tying), parameters may be left unused or feed only a dead branch (their grad stays None),
  and any may be frozen. Together with the layers and losses they run every op refimpl
  implements (`ALL_OPS`; `ops_of(spec)` says which a model runs).

Kinks (`KINKS`): where a derivative rule branches (relu, leaky_relu, elu, abs at 0, clamp at
its bounds, smooth_l1 / huber at beta / delta) or routes a tie (amax, max, max over a dim,
max_pool2d). The batches and initial values are drawn to land on them: exact zeros (a zero
sample, zero-initialised biases, graph biases ``b<i>`` added before a kinked op), few distinct
values (ties), targets beta off the initial output. `kinks_of(spec)` says which a model can
hit; `Model.kinks` counts the forwards that hit each one.

Losses: mse, l1, smooth_l1 (beta), huber (delta), cross_entropy (maybe label smoothing), nll
(after log_softmax), bce_with_logits, and "sum" (the output's sum, or its mean with reduction
"mean"); reduction "mean" or "sum", always a scalar.

`build(spec, dtype, lib)` gives a `Model` whose parameters (same names, same order, bit-identical
initial values on both sides) are drawn with numpy from ``spec.seed`` and the parameter's name;
`batch(spec, dtype, batch_seed)` draws the inputs and targets with numpy, identical for both
libraries. Both libraries run the same forward code through their functional APIs (refimpl
mirrors torch.nn.functional), so a difference in gradients is a difference of the libraries.

`ModelSpec.grad_ulp_budget(dtype)` is the gradient tolerance in ULPs of each gradient tensor's
largest magnitude (`grad_error_ulps`), built from the per-op budgets in `refimpl.ops.OPS`. Such a
norm-wise bound fails wherever the exact gradient is zero, or tiny next to the terms it sums:
the computed one is then rounding noise, different in each library. The models avoid that where
it is structural rather than chance:

* LayerNorm normalises at least 3 features, and only right after an embedding or the first
  Linear of at least 3 inputs (over 2 features, or after one live input, its gradient is the
  cancellation of much larger terms).
* L1-like losses (gradient ±1 or ±delta per output) take an odd batch, and tied input rows get
  tied targets (targets are drawn from each sample's bytes), so that signs cannot balance.
* Tie values hold no opposite pair (an odd function summed over ±a is exactly zero).
* Graphs take mse, bce_with_logits or sum (a row shift of logits is invisible to log_softmax),
  freeze parameters whose gradient is zero by construction (`zero_gradient_parameters`), and end
  before a value that is zero but for rounding (`cancelling_op`).
* Linear / conv weights are drawn at most 1/sqrt(fan_in) wide, so softmax and sigmoid rarely
  saturate (p - 1 then cancels).

What remains is chance: in batches of 1 to 4 a whole gradient tensor (a bias, a scalar) can sum
to much less than its terms, and more so as training converges. `gradient_scales` gives each
parameter the size of those terms; measuring in ULPs of max(max |grad|, scale) bounds the error
by what the terms allow (`grad_error_ulps(actual, expected, scale)`).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF

import refimpl
import refimpl.functional as RF
from conformance import magnitudes
from refimpl.nn import Parameter as RefParameter
from refimpl.ops import OPS

KINDS = ("mlp", "conv1d", "conv2d", "embedding", "graph")
LOSSES = ("mse", "l1", "smooth_l1", "huber", "cross_entropy", "nll", "bce_with_logits", "sum")
CLASS_LOSSES = ("cross_entropy", "nll")
L1_LIKE = ("l1", "smooth_l1", "huber")
# Graph models take no L1-like loss: its gradient is ±1 (or ±delta), so equal outputs (from tied
# inputs) with targets either side cancel exactly, and a gradient that is exactly zero is
# computed as rounding noise; layered models give tied input rows tied targets, but a graph's
# outputs do not follow the input's rows. Nor a class loss: log_softmax ignores a shift of a
# whole row of logits, and a parameter added alike to every logit of a row (through abs and
# relu as well, where their signs agree) has an exactly zero gradient there, again noise.
GRAPH_LOSSES = ("mse", "bce_with_logits", "sum")
REDUCTIONS = ("mean", "sum")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "elu", "silu",
               "softplus")
LAYER_OPS = ("linear", "conv1d", "conv2d", "embedding", "layer_norm", "flatten", "max_pool2d",
             "avg_pool2d", *ACTIVATIONS)
# sqrt, log, reciprocal: of a * a + 1 (as div divides by b * b + 1), defined and tame anywhere
SMOOTH_OPS = ("tanh", "exp", "sigmoid", "pow", "neg", "sqrt", "log", "reciprocal")
KINKED_OPS = ("relu", "abs", "leaky_relu", "elu", "clamp")  # see KINKS
UNARY_OPS = (*SMOOTH_OPS, *KINKED_OPS)
SOFTMAX_OPS = ("softmax", "log_softmax")  # over `dim`
BINARY_OPS = ("add", "sub", "mul", "div")  # div: a / (b * b + 1)
REDUCTION_OPS = ("sum", "mean", "amax", "max")  # max: over all (row "max") or a dim ("max_dim")
# data movement: a.T (2-D), a[1:], a[[n - 1, 0]], a.expand(2, *shape), a.clone(), a cast to
# float64 and back (a no-op in float64 models); cat((a, b)) and stack((a, b)) along dim 0
SHAPE_OPS = ("transpose", "getitem", "index", "expand", "clone", "cast")
JOIN_OPS = ("cat", "stack")
GRAPH_OPS = (*BINARY_OPS, "matmul", *UNARY_OPS, *SOFTMAX_OPS, *REDUCTION_OPS, *SHAPE_OPS,
             *JOIN_OPS)
# Where a derivative rule has a branch that differs between its two sides (or among tied
# inputs), named "<op>@<point>" or "<op>:tie": what `kinks_of` says a model can hit and
# `Model.kinks` counts. smooth_l1 and huber are C¹ at their boundary (both sides agree there),
# but a rule with the wrong boundary still shows only there.
KINKS = ("relu@0", "leaky_relu@0", "elu@0", "abs@0", "clamp@min", "clamp@max", "amax:tie",
         "max:tie", "max_dim:tie", "max_pool2d:tie", "smooth_l1@beta", "huber@delta")
# Every op refimpl implements, by its name there: the rows of refimpl.ops.OPS and the two
# composites of refimpl.functional (what `ops_of` returns is a subset).
ALL_OPS = (*OPS, "l1_loss", "cross_entropy")
DTYPES = ("float32", "float64")
LIBS = ("torch", "refimpl")

Shape = tuple[int, ...]


# Specs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer of a layered model; parameters are named ``f"{index}.weight"`` / ``.bias``.

    op: "linear" (out = out_features), "conv1d" / "conv2d" (out = out_channels, kernel, stride,
    padding), "embedding" (out = embedding_dim, padding_idx), "layer_norm" (over the last dim),
    "flatten" (from dim 1), "max_pool2d" / "avg_pool2d" (kernel, stride = kernel) or an
    activation from ACTIVATIONS ("gelu_tanh" is GELU(approximate="tanh"); elu takes `alpha`).
    """

    op: str
    out: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    bias: bool = True
    padding_idx: int | None = None
    alpha: float = 1.0


@dataclass(frozen=True)
class Param:
    """A parameter of a graph model."""

    name: str
    shape: Shape

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True)
class GraphOp:
    """One op of a graph model; its value is named ``f"v{index}"``.

    args name earlier values: "x" (the input), a parameter's name, or "v<j>" with j < index.
    op: add, sub, mul, div (a / (b * b + 1)), matmul (a @ b); tanh, exp, sigmoid, pow
    (a ** exponent), neg, sqrt / log / reciprocal (of a * a + 1); relu, abs, leaky_relu (slope
    0.01), elu (`alpha`), clamp (`low`, `high`: either may be None); softmax, log_softmax over
    `dim`; sum, mean, amax, max over `dim` (None: all dims) with `keepdim`; the SHAPE_OPS and
    JOIN_OPS (cat, stack) that move data.
    """

    op: str
    args: tuple[str, ...]
    dim: int | None = None
    keepdim: bool = False
    exponent: int = 2
    alpha: float = 1.0
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))


@dataclass(frozen=True)
class ModelSpec:
    """A model, its loss and the seed of its initial parameters; see the module docstring.

    input_shape includes the batch dim: (N, F) for mlp and graph, (N, C, L) for conv1d,
    (N, C, H, W) for conv2d, (N, L) token indices below `vocab` for embedding. loss_param is
    smooth_l1's beta, huber's delta or cross_entropy's label smoothing (ignored otherwise).
    """

    kind: str
    input_shape: Shape
    loss: str
    seed: int
    layers: tuple[Layer, ...] = ()
    params: tuple[Param, ...] = ()
    ops: tuple[GraphOp, ...] = ()
    vocab: int = 0
    reduction: str = "mean"
    loss_param: float = 1.0
    frozen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("input_shape", "layers", "params", "ops", "frozen"):  # lists -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _analysis(self)  # raises ValueError for a spec that does not describe a valid model

    # JSON -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Plain JSON types only (dicts, lists, str, int, float, bool, None)."""
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "loss": self.loss,
            "seed": self.seed,
            "layers": [
                {"op": x.op, "out": x.out, "kernel": x.kernel, "stride": x.stride,
                 "padding": x.padding, "bias": x.bias, "padding_idx": x.padding_idx,
                 "alpha": x.alpha}
                for x in self.layers
            ],
            "params": [{"name": p.name, "shape": list(p.shape)} for p in self.params],
            "ops": [
                {"op": o.op, "args": list(o.args), "dim": o.dim, "keepdim": o.keepdim,
                 "exponent": o.exponent, "alpha": o.alpha, "low": o.low, "high": o.high}
                for o in self.ops
            ],
            "vocab": self.vocab,
            "reduction": self.reduction,
            "loss_param": self.loss_param,
            "frozen": list(self.frozen),
        }

    @classmethod
    def from_json(cls, data: dict) -> ModelSpec:
        return cls(
            kind=str(data["kind"]),
            input_shape=tuple(int(n) for n in data["input_shape"]),
            loss=str(data["loss"]),
            seed=int(data["seed"]),
            layers=tuple(
                Layer(op=x["op"], out=int(x.get("out", 0)), kernel=int(x.get("kernel", 1)),
                      stride=int(x.get("stride", 1)), padding=int(x.get("padding", 0)),
                      bias=bool(x.get("bias", True)), padding_idx=x.get("padding_idx"),
                      alpha=float(x.get("alpha", 1.0)))
                for x in data.get("layers", ())
            ),
            params=tuple(Param(p["name"], tuple(int(n) for n in p["shape"]))
                         for p in data.get("params", ())),
            ops=tuple(
                GraphOp(op=o["op"], args=tuple(o["args"]), dim=o.get("dim"),
                        keepdim=bool(o.get("keepdim", False)), exponent=int(o.get("exponent", 2)),
                        alpha=float(o.get("alpha", 1.0)), low=_float_or_none(o.get("low")),
                        high=_float_or_none(o.get("high")))
                for o in data.get("ops", ())
            ),
            vocab=int(data.get("vocab", 0)),
            reduction=str(data.get("reduction", "mean")),
            loss_param=float(data.get("loss_param", 1.0)),
            frozen=tuple(data.get("frozen", ())),
        )

    # Derived facts ----------------------------------------------------------------------------
    def parameter_names(self) -> list[str]:
        """All parameters in order, frozen and unused ones included."""
        return list(_analysis(self).param_shapes)

    def parameter_shapes(self) -> dict[str, Shape]:
        return dict(_analysis(self).param_shapes)

    def output_shape(self) -> Shape:
        """The shape of the model's output (what the loss takes)."""
        return _analysis(self).output_shape

    def used_parameters(self) -> frozenset[str]:
        """Parameters the loss depends on (frozen ones included): the others' grads stay None."""
        return _analysis(self).used

    def expects_grad(self, name: str) -> bool:
        """Whether backward gives `name` a gradient (a tensor, maybe of zeros) rather than None."""
        return name in self.used_parameters() and name not in self.frozen

    def op_names(self) -> tuple[str, ...]:
        """The `refimpl.ops.OPS` rows the forward runs, once per use, in order."""
        return _analysis(self).op_names

    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in _analysis(self).param_shapes.values())

    def grad_ulp_budget(self, dtype: str) -> float:
        """The gradient tolerance in ULPs of each tensor's max |torch grad| (`grad_error_ulps`):

            min(GRAD_BUDGET_SCALE[dtype] * sum(max(OPS[op].ulp, 1) for each op the forward
                runs) * (1 + log2(longest sum)), GRAD_BUDGET_CAP[dtype])

        Every op's error may reach every gradient through the backward chain, so the op
        budgets add up; summing n terms in another order costs about log2(n) roundings more
        (pairwise), where n is the longest sum in the model (a reduction, a matmul's inner
        dim, a bias's batch sum, a broadcast parameter's summed-back gradient). The scale is
        margin for the cases where a whole gradient tensor cancels to much less than its terms
        (chance, in batches of 1 to 4), calibrated in tests/test_models.py; float32's tails
        are heavier (torch's float32 kernels vectorise and approximate more).
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        a = _analysis(self)
        ops = sum(max(OPS[name].ulp, 1) for name in a.op_names)
        budget = GRAD_BUDGET_SCALE[dtype] * ops * (1 + math.log2(max(a.longest_sum, 1)))
        return float(min(budget, GRAD_BUDGET_CAP[dtype]))

    def describe(self) -> str:
        """A one-line summary, for messages."""
        if self.kind == "graph":
            body = "; ".join(f"v{i}={_op_text(o)}" for i, o in enumerate(self.ops))
            params = ", ".join(f"{p.name}{list(p.shape)}" for p in self.params)
            body = f"params {params}: {body}"
        else:
            body = " > ".join(_layer_text(x) for x in self.layers)
        frozen = f", frozen={list(self.frozen)}" if self.frozen else ""
        return (f"{self.kind} x{list(self.input_shape)}: {body} | {self.loss}/{self.reduction}"
                f"({self.loss_param:g}) seed={self.seed}{frozen}")


GRAD_BUDGET_SCALE = {"float32": 32.0, "float64": 256.0}
GRAD_BUDGET_CAP = {"float32": 2.0**12, "float64": 2.0**17}


def _op_text(o: GraphOp) -> str:
    extra = {"pow": f", {o.exponent}", "elu": f", alpha={o.alpha:g}",
             "clamp": f", {o.low}, {o.high}"}.get(o.op, "")
    if o.op in REDUCTION_OPS:
        extra = f", dim={o.dim}, keepdim={o.keepdim}"
    elif o.op in SOFTMAX_OPS:
        extra = f", dim={o.dim}"
    return f"{o.op}({', '.join(o.args)}{extra})"


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _layer_text(layer: Layer) -> str:
    if layer.op in ("linear", "embedding"):
        extra = "" if layer.padding_idx is None else f", pad={layer.padding_idx}"
        return f"{layer.op}({layer.out}{'' if layer.bias else ', nobias'}{extra})"
    if layer.op in ("conv1d", "conv2d"):
        return (f"{layer.op}({layer.out}, k={layer.kernel}, s={layer.stride}, p={layer.padding}"
                f"{'' if layer.bias else ', nobias'})")
    if layer.op in ("max_pool2d", "avg_pool2d"):
        return f"{layer.op}({layer.kernel})"
    return f"elu({layer.alpha:g})" if layer.op == "elu" else layer.op


# Analysis: shapes, parameters, ops -------------------------------------------------------------


@dataclass(frozen=True)
class _Analysis:
    param_shapes: dict[str, Shape]
    output_shape: Shape
    used: frozenset[str]
    op_names: tuple[str, ...]
    longest_sum: int


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@functools.lru_cache(maxsize=8192)
def _analysis(spec: ModelSpec) -> _Analysis:
    _check(spec.kind in KINDS, f"kind must be one of {KINDS}, got {spec.kind!r}")
    _check(spec.loss in LOSSES, f"loss must be one of {LOSSES}, got {spec.loss!r}")
    _check(spec.reduction in REDUCTIONS, f"reduction must be one of {REDUCTIONS}")
    _check(all(isinstance(n, int) and n >= 1 for n in spec.input_shape)
           and len(spec.input_shape) >= 1, f"bad input_shape {spec.input_shape}")
    _check(isinstance(spec.seed, int) and spec.seed >= 0, "seed must be a non-negative int")
    if spec.kind == "graph":
        _check(spec.loss in GRAPH_LOSSES, f"graph models take a loss in {GRAPH_LOSSES}")
        shapes, out, used, names, longest = _analyse_graph(spec)
    else:
        shapes, out, names, longest = _analyse_layers(spec)
        used = frozenset(shapes)
    _check(len(set(spec.frozen)) == len(spec.frozen)
           and all(name in shapes for name in spec.frozen),
           f"frozen {spec.frozen} must name distinct parameters of {list(shapes)}")
    names = list(names)
    n = spec.input_shape[0]
    loss = spec.loss
    if loss in CLASS_LOSSES:
        _check(len(out) == 2 and out[0] == n and out[1] >= 2,
               f"{loss} needs an (N, C >= 2) output, got {out}")
        names += ["log_softmax", "nll_loss"]
        if loss == "cross_entropy" and spec.loss_param > 0:
            _check(spec.loss_param <= 1, "label smoothing must lie in [0, 1]")
            names += ["sum", "neg", "where", "sum", "mul", "mul", "add"]
            if spec.reduction == "mean":
                names.append("div")
    if loss in L1_LIKE:
        # Their gradient is ±1 (or ±beta, ±delta) per output: over an even batch the signs can
        # balance, and a gradient that sums them (a bias's) is exactly zero, computed as noise.
        _check(n % 2 == 1, f"{loss} needs an odd batch size")
    if loss in ("smooth_l1", "huber"):
        _check(spec.loss_param > 0, "beta / delta must be positive")
        names.append(f"{loss}_loss")
    elif loss == "mse":
        names.append("mse_loss")
    elif loss == "l1":
        names += ["sub", "abs", spec.reduction]
    elif loss == "bce_with_logits":
        names.append("binary_cross_entropy_with_logits")
    else:
        names.append(spec.reduction)
    longest = max(longest, math.prod(out), n)
    return _Analysis(shapes, out, used, tuple(names), longest)


def _analyse_layers(spec: ModelSpec) -> tuple[dict[str, Shape], Shape, list[str], int]:
    _check(not spec.params and not spec.ops, "only graph models have params and ops")
    _check(len(spec.layers) >= 1, "a layered model needs layers")
    shapes: dict[str, Shape] = {}
    names: list[str] = []
    longest = 1
    shape = spec.input_shape
    n = shape[0]
    rank_one = False  # the features are a linear map of one number: layer_norm would drop it
    expected_rank = {"mlp": 2, "conv1d": 3, "conv2d": 4, "embedding": 2}[spec.kind]
    _check(len(shape) == expected_rank, f"{spec.kind} input must have {expected_rank} dims")
    if spec.kind == "embedding":
        _check(spec.vocab >= 1 and spec.layers[0].op == "embedding",
               "an embedding model starts with an embedding layer and has a vocab")
    for i, layer in enumerate(spec.layers):
        op = layer.op
        _check(op in LAYER_OPS, f"unknown layer {op!r}")
        _check(op != "embedding" or i == 0, "only the first layer may be an embedding")
        if op == "linear":
            _check(len(shape) == 2 and layer.out >= 1, f"linear needs (N, F) input, got {shape}")
            shapes[f"{i}.weight"] = (layer.out, shape[1])
            if layer.bias:
                shapes[f"{i}.bias"] = (layer.out,)
            longest = max(longest, shape[1], n)
            rank_one = shape[1] == 1
            shape = (n, layer.out)
            names.append("linear")
        elif op in ("conv1d", "conv2d"):
            dims = 1 if op == "conv1d" else 2
            _check(len(shape) == 2 + dims and layer.out >= 1 and layer.kernel >= 1
                   and layer.stride >= 1 and layer.padding >= 0, f"bad {op} on {shape}")
            sizes = tuple(_conv_out(s, layer.kernel, layer.stride, layer.padding)
                          for s in shape[2:])
            _check(min(sizes) >= 1, f"{op} output too small for input {shape}")
            shapes[f"{i}.weight"] = (layer.out, shape[1], *(layer.kernel,) * dims)
            if layer.bias:
                shapes[f"{i}.bias"] = (layer.out,)
            longest = max(longest, shape[1] * layer.kernel**dims, n * math.prod(sizes))
            shape = (n, layer.out, *sizes)
            names.append("convolution")
        elif op == "embedding":
            _check(len(shape) == 2 and layer.out >= 1, "embedding takes (N, L) indices")
            _check(layer.padding_idx is None or 0 <= layer.padding_idx < spec.vocab,
                   "padding_idx must lie in [0, vocab)")
            shapes[f"{i}.weight"] = (spec.vocab, layer.out)
            longest = max(longest, math.prod(shape))
            shape = (*shape, layer.out)
            names.append("embedding")
        elif op == "layer_norm":
            # Over two elements the output is ±1 but for eps, and its gradient is nothing but
            # the cancellation of much larger terms: no ULP budget holds there.
            _check(len(shape) >= 2 and shape[-1] >= 3, "layer_norm needs >= 3 features")
            # Nor after Linear(1, k): LN(w * t) is sign(t) LN(w) but for eps, so gradients
            # through t are the near-cancellation of much larger terms.
            _check(not rank_one, "layer_norm right after a Linear with one input feature")
            shapes[f"{i}.weight"] = (shape[-1],)
            if layer.bias:
                shapes[f"{i}.bias"] = (shape[-1],)
            longest = max(longest, shape[-1], math.prod(shape[:-1]))
            names.append("layer_norm")
        elif op == "flatten":
            shape = (n, math.prod(shape[1:]))
            names.append("reshape")
        elif op in ("max_pool2d", "avg_pool2d"):
            _check(len(shape) == 4 and layer.kernel >= 1 and min(shape[2:]) >= layer.kernel,
                   f"{op} needs (N, C, H, W) input at least {layer.kernel} wide")
            shape = (*shape[:2], *(s // layer.kernel for s in shape[2:]))
            longest = max(longest, layer.kernel**2)
            names.append(op)
        else:
            names.append("gelu" if op == "gelu_tanh" else op)
        if op not in ("linear", "layer_norm"):
            rank_one = False
    return shapes, shape, names, longest


# The OPS rows of a graph op, where they are not just the op's own name.
_GRAPH_OP_ROWS: dict[str, tuple[str, ...]] = {
    "div": ("mul", "add", "div"), "sqrt": ("mul", "add", "sqrt"), "log": ("mul", "add", "log"),
    "reciprocal": ("mul", "add", "reciprocal", "mul"),  # 1 / t is t.reciprocal() * 1
    "transpose": ("permute",), "getitem": ("getitem",), "cast": ("to_dtype", "to_dtype"),
}


def _graph_rows(op: GraphOp) -> tuple[str, ...]:
    """The `refimpl.ops.OPS` rows that graph op runs (cast: in float32 models only)."""
    if op.op == "max":
        rows: tuple[str, ...] = ("max",) if op.dim is None else ("max_dim",)
    else:
        rows = _GRAPH_OP_ROWS.get(op.op, (op.op,))
    if op.op in REDUCTION_OPS and op.dim is None and op.keepdim:
        rows += ("reshape",)  # back to the input's number of dims
    return rows


def _graph_op_shape(op: GraphOp, shapes: list[Shape]) -> Shape:
    """The result's shape; raises ValueError where torch would refuse the op."""
    name = op.op
    _check(name in GRAPH_OPS, f"unknown graph op {name!r}")
    arity = 2 if name in (*BINARY_OPS, "matmul", *JOIN_OPS) else 1
    _check(len(shapes) == arity, f"{name} takes {arity} args, got {len(shapes)}")
    if name in BINARY_OPS:
        try:
            return tuple(np.broadcast_shapes(*shapes))
        except ValueError:
            raise ValueError(f"{name}: shapes {shapes} do not broadcast") from None
    if name == "matmul":
        a, b = shapes
        _check(len(a) in (1, 2) and len(b) in (1, 2) and a[-1] == b[0],
               f"matmul: shapes {a} and {b} do not multiply")
        return a[:-1] + b[1:]
    if name in JOIN_OPS:
        a, b = shapes
        _check(len(a) >= 1 and (a == b if name == "stack" else a[1:] == b[1:]),
               f"{name}: shapes {a} and {b} do not join along dim 0")
        return (2, *a) if name == "stack" else (a[0] + b[0], *a[1:])
    (a,) = shapes
    if name == "pow":
        _check(op.exponent in (2, 3), "pow's exponent must be 2 or 3")
    if name == "clamp":
        _check((op.low, op.high) != (None, None)
               and (op.low is None or op.high is None or op.low <= op.high),
               f"clamp needs low <= high, at least one given: {op.low}, {op.high}")
    if name in SOFTMAX_OPS:
        _check(op.dim is not None and -len(a) <= op.dim < len(a), f"{name}: bad dim {op.dim}")
    if name == "transpose":
        _check(len(a) == 2, f"transpose takes a 2-D value, got {a}")
        return a[::-1]
    if name == "getitem":
        _check(len(a) >= 1 and a[0] >= 2, f"a[1:] needs at least 2 rows, got {a}")
        return (a[0] - 1, *a[1:])
    if name == "index":
        _check(len(a) >= 1, "a[[n - 1, 0]] needs at least one dim")
        return (2, *a[1:])
    if name == "expand":
        return (2, *a)
    if name in REDUCTION_OPS:
        _check(len(a) >= 1, f"{name} needs at least one dim")
        if op.dim is None:
            return (1,) * len(a) if op.keepdim else ()
        _check(-len(a) <= op.dim < len(a), f"{name}: dim {op.dim} out of range for {a}")
        d = op.dim % len(a)
        return a[:d] + ((1,) if op.keepdim else ()) + a[d + 1:]
    return a


def _analyse_graph(spec: ModelSpec):
    _check(not spec.layers, "graph models have no layers")
    _check(len(spec.ops) >= 1, "a graph model needs at least one op")
    shapes: dict[str, Shape] = {}
    for p in spec.params:
        _check(p.name not in shapes and p.name != "x" and not p.name.startswith("v"),
               f"bad or duplicate parameter name {p.name!r}")
        _check(all(isinstance(s, int) and s >= 1 for s in p.shape), f"bad shape {p.shape}")
        shapes[p.name] = p.shape
    values: dict[str, Shape] = {"x": spec.input_shape, **shapes}
    deps: dict[str, frozenset[str]] = {"x": frozenset(), **{k: frozenset([k]) for k in shapes}}
    names: list[str] = []
    longest = 1
    for i, op in enumerate(spec.ops):
        _check(all(a in values for a in op.args), f"v{i}: unknown args {op.args}")
        arg_shapes = [values[a] for a in op.args]
        out = _graph_op_shape(op, arg_shapes)
        _check(math.prod(out) <= 256, f"v{i} is too large: {out}")
        values[f"v{i}"] = out
        deps[f"v{i}"] = frozenset().union(*(deps[a] for a in op.args))
        names += _graph_rows(op)
        if op.op in REDUCTION_OPS:
            longest = max(longest, math.prod(arg_shapes[0]) // max(math.prod(out), 1))
        elif op.op in SOFTMAX_OPS:
            longest = max(longest, arg_shapes[0][op.dim])
        elif op.op == "matmul":
            longest = max(longest, arg_shapes[0][-1])
        for s in arg_shapes:  # a broadcast input's grad is summed
            longest = max(longest, math.prod(out) // math.prod(s))
    last = f"v{len(spec.ops) - 1}"
    return shapes, values[last], deps[last], names, longest


# Initial values and batches --------------------------------------------------------------------


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([w % 2**64 for w in words])


def initial_values(spec: ModelSpec, dtype: str, seed: int | None = None
                   ) -> dict[str, np.ndarray]:
    """The initial parameters: normal × 0.5 (× min(1, 2 / sqrt(fan_in)) for Linear and conv
    weights) from (seed, name), sometimes with exact zeros; biases (a graph's "b<i>") all
    zero in a quarter of the draws (a graph's: in half). `seed` defaults to spec.seed."""
    out = {}
    for name, shape in spec.parameter_shapes().items():
        rng = _rng(spec.seed if seed is None else seed, zlib.crc32(name.encode()), 0x9A7A)
        scale = 0.5
        if spec.kind != "graph" and name.endswith(".weight") and len(shape) >= 2:
            # Linear / conv weights: at most 1/sqrt(fan_in), so that wide layers do not
            # saturate softmax or sigmoid (whose gradient p - 1 then cancels).
            scale = min(scale, 1 / math.sqrt(math.prod(shape[1:])))
        values = np.array(rng.standard_normal(shape) * scale)
        draw = rng.random()
        if draw < 0.25:
            values[rng.random(shape) < 0.3] = 0.0
        elif draw < (0.5 if spec.kind != "graph" else 0.75) and \
                (name.endswith(".bias") if spec.kind != "graph" else name.startswith("b")):
            values[...] = 0.0  # zero-initialised, as biases often are
        out[name] = np.array(values, dtype=dtype)
    return out


# Few distinct values, for ties. No two are opposite: odd functions (tanh, x itself) of a
# symmetric set sum to exactly zero, a gradient the libraries compute as different noise.
_TIES = np.array([-1.5, -1.0, -0.25, 0.0, 0.5, 1.25, 2.0])


def _floats(rng: np.random.Generator, shape: Shape, mode: int) -> np.ndarray:
    """mode 0: normal values; 1: with exact zeros (both signs; the last of several samples all
    zero); 2: few distinct values (ties);
    3: repeats (elements and rows copied from others)."""
    values = np.array(rng.standard_normal(shape))
    if mode == 1:
        zeros = rng.random(shape) < 0.35
        values[zeros] = np.copysign(0.0, rng.standard_normal(shape))[zeros]
        if len(shape) >= 2 and shape[0] > 1:
            values[-1] = 0.0  # an all-zero sample (padding): layers see exactly their bias
    elif mode == 2:
        values = np.array(rng.choice(_TIES, size=shape))
    elif mode == 3:
        flat = values.reshape(-1)
        flat[rng.random(flat.size) < 0.4] = flat[rng.integers(flat.size)]
        if len(shape) >= 1 and shape[0] > 1:
            values[rng.integers(1, shape[0])] = values[0]
    return values


@functools.lru_cache(maxsize=1024)
def _batch(spec: ModelSpec, dtype: str, batch_seed: int) -> dict[str, np.ndarray]:
    rng = _rng(spec.seed, batch_seed, 0xBA7C)
    mode = int(rng.integers(4))
    if spec.kind == "graph":  # zeros and ties a third of the time each, for the kinked ops
        mode = (0, 1, 1, 2, 2, 3)[int(rng.integers(6))]
    if spec.kind == "embedding":
        x = rng.integers(0, spec.vocab, size=spec.input_shape).astype(np.int64)
    else:
        x = np.array(_floats(rng, spec.input_shape, mode), dtype=dtype)
    out = spec.output_shape()
    if spec.kind == "graph":
        y = _targets(spec, rng, out, 0, dtype)
    else:
        # Each sample's target is drawn from its input's bytes: tied input rows (equal outputs)
        # get tied targets, so their loss gradients add up instead of cancelling exactly.
        target_mode = int(rng.integers(3))
        rows = [_targets(spec, _rng(spec.seed, batch_seed, zlib.crc32((row + 0).tobytes())),
                         out[1:], target_mode, dtype) for row in x]
        y = np.stack(rows)
        if spec.loss in ("smooth_l1", "huber") and rng.random() < 0.25:
            y = _on_boundary(spec, dtype, rng, x, y)
    for array in (x, y):
        array.flags.writeable = False
    return {"x": x, "y": y}


def _on_boundary(spec: ModelSpec, dtype: str, rng: np.random.Generator, x: np.ndarray,
                 y: np.ndarray) -> np.ndarray:
    """y with one target moved to where the initial model's output (torch's) minus it is
    exactly ±beta (±delta), so the first forward sits on smooth_l1's (huber's) boundary; in
    every row whose input ties with that row's, so that tied rows keep tied targets."""
    params = {k: torch.from_numpy(v) for k, v in initial_values(spec, dtype).items()}
    with torch.no_grad():
        out = _layers_forward(spec, TF, params, torch.from_numpy(x.copy())).numpy()
    i, j = int(rng.integers(out.shape[0])), int(rng.integers(out.shape[1]))
    for sign in (rng.choice([-1.0, 1.0]), 1.0, -1.0):
        target = out[i, j] - out.dtype.type(sign * spec.loss_param)
        if out[i, j] - target == sign * spec.loss_param:
            y = y.copy()
            tied = [r for r in range(len(x)) if (x[r] + 0).tobytes() == (x[i] + 0).tobytes()]
            y[tied, j] = target
            break
    return y


def _targets(spec: ModelSpec, rng: np.random.Generator, shape: Shape, mode: int, dtype: str
             ) -> np.ndarray:
    if spec.loss in CLASS_LOSSES:
        classes = spec.output_shape()[1]
        return np.array(rng.integers(0, classes, size=shape[:-1] if spec.kind == "graph"
                                     else ()), dtype=np.int64)
    if spec.loss == "bce_with_logits":
        return np.array(rng.integers(0, 2, size=shape), dtype=dtype)
    return np.array(_floats(rng, shape, mode), dtype=dtype)


def batch(spec: ModelSpec, dtype: str, batch_seed: int) -> dict[str, np.ndarray]:
    """The inputs "x" and targets "y" for `batch_seed`: deterministic, fresh writable copies.
    "y" is int64 class indices for cross_entropy / nll, {0, 1} floats for bce_with_logits,
    floats otherwise ("sum" ignores it); "x" is int64 token indices for embedding models."""
    return {k: v.copy() for k, v in _batch(spec, dtype, batch_seed).items()}


# Building -------------------------------------------------------------------------------------


class _Torch:
    name = "torch"
    F: Any = TF

    @staticmethod
    def parameter(array: np.ndarray, requires_grad: bool) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.from_numpy(array.copy()), requires_grad=requires_grad)

    @staticmethod
    def tensor(array: np.ndarray) -> torch.Tensor:
        # The cached arrays are read-only; torch never writes into inputs, but warns about them.
        return torch.from_numpy(array.copy())


class _Refimpl:
    name = "refimpl"
    F: Any = RF

    @staticmethod
    def parameter(array: np.ndarray, requires_grad: bool) -> RefParameter:
        return RefParameter(array.copy(), requires_grad=requires_grad)

    @staticmethod
    def tensor(array: np.ndarray) -> refimpl.Tensor:
        return refimpl.from_numpy(array)


_BACKENDS = {"torch": _Torch, "refimpl": _Refimpl}


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
            arrays = _batch(self.spec, self.dtype, batch_seed)
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
            return _graph_forward(self.spec, self.parameters, x, hits=hits)
        return _layers_forward(self.spec, self._backend.F, self.parameters, x, hits)

    def loss(self, batch_seed: int) -> Any:
        x, y = self.inputs(batch_seed)
        if self.kinks is None:
            return _loss(self.spec, self._backend.F, self._output(x, None), y)
        hits: set[str] = set()
        out = self._output(x, hits)
        _loss_kinks(self.spec, out, y, hits)
        self.kinks.update(hits)
        return _loss(self.spec, self._backend.F, out, y)

    def grads(self) -> dict[str, np.ndarray | None]:
        """Each parameter's .grad as a numpy copy, or None."""
        return {name: None if p.grad is None else _numpy(p.grad)
                for name, p in self.parameters.items()}

    def values(self) -> dict[str, np.ndarray]:
        """Each parameter's current value as a numpy copy."""
        return {name: _numpy(p) for name, p in self.parameters.items()}


def _numpy(t: Any) -> np.ndarray:
    return np.array(t.detach().numpy(), copy=True)


def build(spec: ModelSpec, dtype: str, lib: str) -> Model:
    """The model of `spec` in `lib` ("torch" | "refimpl") and `dtype` ("float32" | "float64")."""
    return Model(spec, dtype, lib)


# Kinks ----------------------------------------------------------------------------------------


def ops_of(spec: ModelSpec) -> frozenset[str]:
    """The ops (names from ALL_OPS: refimpl.ops.OPS rows, l1_loss, cross_entropy) the model's
    forward and loss run; a cast graph op runs to_dtype in float32 models only."""
    names = spec.op_names()
    if spec.loss in CLASS_LOSSES:  # nll_loss reduces itself: the budget counts one more row
        names = names[:-1]
    composite = {"l1": "l1_loss", "cross_entropy": "cross_entropy"}.get(spec.loss)
    return frozenset(names) | ({composite} if composite else set())


def kinks_of(spec: ModelSpec) -> frozenset[str]:
    """The KINKS the model can hit where a gradient flows (see `Model.kinks`): its pooling,
    its L1-like loss, its activations right after a layer with a bias or an embedding, and
    the kinked ops on the output's path of a graph whose input depends on a parameter."""
    found: set[str] = set()
    if spec.kind == "graph":
        depends, live = {p.name for p in spec.params}, _live_ops(spec)
        for i, op in enumerate(spec.ops):
            if not depends.intersection(op.args):
                continue
            depends.add(f"v{i}")
            if i not in live:
                continue
            if op.op in ("relu", "abs", "leaky_relu", "elu"):
                found.add(f"{op.op}@0")
            elif op.op == "clamp":
                found |= {k for k, b in (("clamp@min", op.low), ("clamp@max", op.high))
                          if b is not None}
            elif op.op in ("amax", "max"):
                found.add("max_dim:tie" if op.op == "max" and op.dim is not None
                          else f"{op.op}:tie")
    for i, layer in enumerate(spec.layers):
        if layer.op in ("relu", "leaky_relu", "elu") and _biased(spec, i - 1):
            found.add(f"{layer.op}@0")
        elif layer.op == "max_pool2d":
            found.add("max_pool2d:tie")
    loss = {"l1": "abs@0", "smooth_l1": "smooth_l1@beta", "huber": "huber@delta"}
    if spec.loss in loss:
        found.add(loss[spec.loss])
    return frozenset(found)


@functools.lru_cache(maxsize=1024)
def _live_ops(spec: ModelSpec) -> frozenset[int]:
    """The indices of the graph ops the output depends on."""
    live, stack = set(), [len(spec.ops) - 1]
    while stack:
        i = stack.pop()
        if i not in live:
            live.add(i)
            stack += [int(a[1:]) for a in spec.ops[i].args if a.startswith("v")]
    return frozenset(live)


def _biased(spec: ModelSpec, i: int) -> bool:
    """Whether layer i adds a bias (or is an embedding): a zero it outputs has a parameter
    of its own, whose gradient is the next activation's derivative there. (Without one, the
    zero of an all-zero sample or of a relu's zeros passes nothing back.)"""
    return i >= 0 and (spec.layers[i].op == "embedding" or
                       f"{i}.bias" in spec.parameter_shapes())


def _flowing(t: Any) -> np.ndarray | None:
    """t's values (numpy, no copy) if a gradient can flow through t, else None."""
    if not getattr(t, "requires_grad", False):
        return None
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.data


def _ties(a: np.ndarray, dim: int | None) -> bool:
    """Whether the maximum over `dim` (None: all) is taken by two elements or more."""
    if dim is None:
        return int((a == a.max()).sum()) > 1
    return bool(((a == a.max(axis=dim, keepdims=True)).sum(axis=dim) > 1).any())


def _layer_kinks(spec: ModelSpec, i: int, h: Any, hits: set[str]) -> None:
    """The kinks layer i hits on its input h."""
    op = spec.layers[i].op
    if op not in ("relu", "leaky_relu", "elu", "max_pool2d") or \
            (op != "max_pool2d" and not _biased(spec, i - 1)):
        return
    a = _flowing(h)
    if a is None:
        return
    if op != "max_pool2d":
        if not a.all():  # an element exactly ±0
            hits.add(f"{op}@0")
        return
    k = spec.layers[i].kernel
    n, c, rows, cols = a.shape
    windows = a[:, :, :rows // k * k, :cols // k * k].reshape(n, c, rows // k, k, cols // k, k)
    top = windows.max(axis=(3, 5), keepdims=True)
    tied = (windows == top).sum(axis=(3, 5)) > 1
    if i > 0 and spec.layers[i - 1].op == "relu":  # relu's zeros pass no gradient back
        tied &= top[:, :, :, 0, :, 0] > 0
    if tied.any():
        hits.add("max_pool2d:tie")


def _graph_kinks(op: GraphOp, args: list[Any], hits: set[str]) -> None:
    """The kinks graph op `op` hits on its `args`."""
    name = op.op
    if name not in ("relu", "abs", "leaky_relu", "elu", "clamp", "amax", "max"):
        return
    a = _flowing(args[0])
    if a is None:
        return
    if name == "clamp":
        for kink, bound in (("clamp@min", op.low), ("clamp@max", op.high)):
            if bound is not None and (a == bound).any():
                hits.add(kink)
    elif name in ("amax", "max"):
        if _ties(a, op.dim):
            hits.add("max_dim:tie" if name == "max" and op.dim is not None else f"{name}:tie")
    elif not a.all():
        hits.add(f"{name}@0")


def _loss_kinks(spec: ModelSpec, out: Any, y: Any, hits: set[str]) -> None:
    """The kinks the loss hits: l1's abs at a zero residual, smooth_l1 and huber at
    |out - y| = beta / delta."""
    if spec.loss not in L1_LIKE:
        return
    a = _flowing(out)
    if a is None:
        return
    residual = np.abs(a - (y.numpy() if isinstance(y, torch.Tensor) else y.data))
    if spec.loss == "l1" and not residual.all():
        hits.add("abs@0")
    elif spec.loss != "l1" and (residual == spec.loss_param).any():
        hits.add("smooth_l1@beta" if spec.loss == "smooth_l1" else "huber@delta")


def _activation(F: Any, name: str, h: Any, alpha: float = 1.0) -> Any:
    if name == "relu":
        return F.relu(h)
    if name == "leaky_relu":
        return F.leaky_relu(h, 0.01)
    if name == "tanh":
        return F.tanh(h) if hasattr(F, "wraps_activations") else h.tanh()
    if name == "sigmoid":
        return F.sigmoid(h) if hasattr(F, "wraps_activations") else h.sigmoid()
    if name == "gelu":
        return F.gelu(h)
    if name == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if name == "elu":
        return F.elu(h, alpha)
    if name == "silu":
        return F.silu(h)
    if name == "softplus":
        return F.softplus(h, 1.0, 20.0)
    raise ValueError(f"unknown activation {name!r}")


def _layers_forward(spec: ModelSpec, F: Any, params: dict[str, Any], h: Any,
                    hits: set[str] | None = None) -> Any:
    """The output of a layered model; the kinks its layers hit are added to `hits`."""
    for i, layer in enumerate(spec.layers):
        op = layer.op
        if hits is not None:
            _layer_kinks(spec, i, h, hits)
        w, b = params.get(f"{i}.weight"), params.get(f"{i}.bias")
        if op == "linear":
            h = F.linear(h, w, b)
        elif op == "conv1d":
            h = F.conv1d(h, w, b, stride=layer.stride, padding=layer.padding)
        elif op == "conv2d":
            h = F.conv2d(h, w, b, stride=layer.stride, padding=layer.padding)
        elif op == "embedding":
            h = F.embedding(h, w, padding_idx=layer.padding_idx)
        elif op == "layer_norm":
            h = F.layer_norm(h, (h.shape[-1],), w, b)
        elif op == "flatten":
            h = h.flatten(1)
        elif op == "max_pool2d":
            h = F.max_pool2d(h, layer.kernel)
        elif op == "avg_pool2d":
            h = F.avg_pool2d(h, layer.kernel)
        else:
            h = _activation(F, op, h, layer.alpha)
    return h


def _graph_forward(spec: ModelSpec, params: dict[str, Any], x: Any,
                   apply: Callable[[GraphOp, list[Any]], Any] | None = None,
                   hits: set[str] | None = None) -> Any:
    """The graph's output; `apply(op, args)` computes each op (default `_apply_graph_op`);
    the kinks its ops hit are added to `hits`."""
    values = {"x": x, **params}
    v = x
    live = _live_ops(spec) if hits is not None else frozenset()
    for i, op in enumerate(spec.ops):
        args = [values[a] for a in op.args]
        if hits is not None and i in live:
            _graph_kinks(op, args, hits)
        v = _apply_graph_op(op, args) if apply is None else apply(op, args)
        values[f"v{i}"] = v
    return v


def _magnitude_graph_op(op: GraphOp, args: list[Any]) -> Any:
    rule = _MAGNITUDE_RULES.get(op.op)
    if rule is not None:
        return magnitudes._apply(lambda *a: _apply_graph_op(op, list(a)),
                                 lambda g, i, y: rule(op, g, i, y), *args)
    v = magnitudes.graph_op(op.op, args, op.exponent)
    return _apply_graph_op(op, args) if v is None else v


# The magnitude rules (see conformance.magnitudes) of the graph ops whose standard backward
# changes signs or cancels: g ↦ g · |each term of the derivative| (g >= 0). Those not here
# route g unchanged, scaled by a non-negative factor or summed (clamp, max, data movement).
_MagnitudeRule = Callable[[GraphOp, torch.Tensor, tuple[Any, ...], torch.Tensor], tuple[Any, ...]]
_MAGNITUDE_RULES: dict[str, _MagnitudeRule] = {
    "neg": lambda op, g, i, y: (g,),
    "elu": lambda op, g, i, y: (g * torch.where(i[0] > 0, 1.0, y.abs() + op.alpha),),
    "sqrt": lambda op, g, i, y: (g * i[0].abs() / y,),  # a / sqrt(a² + 1)
    "log": lambda op, g, i, y: (g * 2 * i[0].abs() / (i[0] * i[0] + 1),),
    "reciprocal": lambda op, g, i, y: (g * 2 * i[0].abs() * y * y,),
    "softmax": lambda op, g, i, y: (g * y + y * (g * y).sum(op.dim, keepdim=True),),
    "log_softmax": lambda op, g, i, y: (g + y.exp() * g.sum(op.dim, keepdim=True),),
}


class _Magnitudes(magnitudes.MagnitudeFunctional):
    """MagnitudeFunctional, with elu's alpha."""

    def elu(self, x: Any, alpha: float = 1.0) -> Any:
        return magnitudes._apply(lambda x: TF.elu(x, alpha), lambda g, i, y: (
            g * torch.where(i[0] > 0, 1.0, y.abs() + alpha),), x)


# Graph ops whose result is exact (no rounding: relu, abs, amax, clamp, max, neg, moving data)
# and those rounded against more than their own size (see conformance.magnitudes.ForwardErrors).
_EXACT_GRAPH_OPS = ("relu", "abs", "amax", "clamp", "max", "neg", *SHAPE_OPS, *JOIN_OPS)


def _error_graph_op(errors: magnitudes.ForwardErrors, op: GraphOp, args: list[Any]) -> Any:
    """Graph op `op` of `args`, perturbed by its rounding (`ForwardErrors.rounded`)."""
    value = _apply_graph_op(op, args)
    if op.op in _EXACT_GRAPH_OPS:
        return value
    if op.op == "log_softmax":  # shifted - logsumexp cancels
        return errors.log_softmax(args[0], op.dim)
    if op.op == "softmax":  # exp(shifted) / sum: a few roundings of its own size
        return errors.rounded(value, value.abs(), ("softmax",), args[0].shape[op.dim])
    if op.op == "log":  # log(u) near u = 1 is off by ε · u · (1 / u) = ε, not ε · |log u|
        return errors.rounded(value, value.abs() + 1, _graph_rows(op))
    return errors.graph_op(op.op, args, value, op.dim, op.keepdim, _graph_rows(op))


def gradient_magnitudes(spec: ModelSpec, dtype: str, values: dict[str, np.ndarray],
                        batch_seed: int) -> dict[str, np.ndarray]:
    """Per parameter, elementwise, the magnitude of the terms its gradient sums (see
    conformance.magnitudes): the backward pass with every term in absolute value, computed
    with torch at parameter `values` on the batch. Unused parameters get zeros."""
    params = {k: torch.from_numpy(np.array(v, dtype=dtype)).requires_grad_(True)
              for k, v in values.items()}
    arrays = _batch(spec, dtype, batch_seed)
    x = torch.from_numpy(arrays["x"].copy())
    y = torch.from_numpy(arrays["y"].copy())
    with torch.enable_grad():
        out = (_graph_forward(spec, params, x, _magnitude_graph_op) if spec.kind == "graph"
               else _layers_forward(spec, _Magnitudes(), params, x))
        if not out.requires_grad:
            return {k: np.zeros_like(v) for k, v in values.items()}
        (standard,) = torch.autograd.grad(_loss(spec, TF, out, y), out, retain_graph=True)
        seed = magnitudes.loss_seed(spec.loss, spec.reduction, out.detach(),
                                    y.to(out.dtype) if y.is_floating_point() else
                                    torch.zeros_like(out), standard, spec.loss_param)
        grads = torch.autograd.grad(out, list(params.values()), grad_outputs=seed,
                                    allow_unused=True)
    return {k: np.zeros_like(values[k]) if g is None else g.detach().numpy()
            for k, g in zip(params, grads, strict=True)}


def forward_error_bounds(spec: ModelSpec, dtype: str, values: dict[str, np.ndarray],
                         batch_seed: int) -> dict[str, np.ndarray]:
    """Per parameter, elementwise, a first-order bound on how far the forward values' rounding
    moves its gradient g between two libraries (see conformance.magnitudes.ForwardErrors):

        ε · Σ_i k_i · |∂g/∂v_i| · T_i    over the forward's rounded values v_i,

    T_i the terms v_i rounds, k_i = Σ max(OPS[row].ulp, 1) · (1 + log2 n if the row sums)
    over the rows computing v_i, n the terms each element of v_i sums, ε `dtype`'s machine
    epsilon. The Jacobian is exact, by double backward through a zero perturbation added to
    each v_i (one row per gradient element, batched), in float64 at parameter `values`
    (`dtype`'s numbers) on the batch. Unused parameters get zeros; float64 arrays."""
    bounds = {k: np.zeros(np.shape(v)) for k, v in values.items()}
    with torch.enable_grad():
        params, errors, loss = _perturbed_loss(spec, dtype, values, batch_seed)
        if not loss.requires_grad:
            return bounds
        names = [k for k in params if k in spec.used_parameters()]
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        if not flat.requires_grad:  # no gradient reads a rounded value (a linear model)
            return bounds
        rows = torch.autograd.grad(flat, errors.perturbations,
                                   grad_outputs=torch.eye(flat.numel(), dtype=flat.dtype),
                                   is_grads_batched=True, allow_unused=True)
    total = _reach(errors, rows, flat.numel(), dtype)
    for name, part in zip(names, total.split([g.numel() for g in grads]), strict=True):
        bounds[name] = part.numpy().reshape(bounds[name].shape)
    return bounds


def loss_forward_error_bound(spec: ModelSpec, dtype: str, values: dict[str, np.ndarray],
                             batch_seed: int) -> float:
    """`forward_error_bounds` for the loss L itself: ε · Σ_i k_i · |∂L/∂v_i| · T_i, how far
    the rounding of the values before the loss moves it (first order; one backward pass). An
    output that cancels (large weights, an output of 2e5 from terms of 1e11) is off by far
    more than its own ULPs, and the loss with it."""
    with torch.enable_grad():
        _, errors, loss = _perturbed_loss(spec, dtype, values, batch_seed)
        if not loss.requires_grad or not errors.perturbations:
            return 0.0
        rows = torch.autograd.grad(loss, errors.perturbations, allow_unused=True)
    return float(_reach(errors, [None if r is None else r[None] for r in rows], 1, dtype)[0])


def _perturbed_loss(spec: ModelSpec, dtype: str, values: dict[str, np.ndarray],
                    batch_seed: int) -> tuple[dict[str, torch.Tensor],
                                              magnitudes.ForwardErrors, torch.Tensor]:
    """The loss at `values` on the batch, in float64, with a zero perturbation added to every
    rounded forward value (`magnitudes.ForwardErrors`); parameters require grad."""
    params = {k: torch.from_numpy(np.array(v, dtype=np.float64)).requires_grad_(True)
              for k, v in values.items()}
    arrays = _batch(spec, dtype, batch_seed)
    x, y = (torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a.copy())
            for a in (arrays["x"], arrays["y"]))
    errors = magnitudes.ForwardErrors()
    out = (_graph_forward(spec, params, x, lambda op, args: _error_graph_op(errors, op, args))
           if spec.kind == "graph" else _layers_forward(spec, errors, params, x))
    return params, errors, _loss(spec, errors, out, y)


def _reach(errors: magnitudes.ForwardErrors, rows: Any, count: int, dtype: str
           ) -> torch.Tensor:
    """ε · Σ_i k_i · |row_i| · T_i for `count` results, given each one's derivative row_i
    with respect to perturbation i (leading dim `count`; None: it does not reach them)."""
    total = torch.zeros(count, dtype=torch.float64)
    for row, terms, ops, length in zip(rows, errors.terms, errors.rows, errors.lengths,
                                       strict=True):
        if row is not None:
            longer = 1 + math.log2(max(length, 1))
            k = sum(max(OPS[r].ulp, 1) * (longer if OPS[r].sums else 1) for r in ops)
            total += k * (row.abs() * terms).reshape(count, -1).sum(1)
    return total.detach() * float(np.finfo(dtype).eps)


def _apply_graph_op(op: GraphOp, args: list[Any]) -> Any:
    """Graph op `op` of torch or refimpl tensors `args` (see GraphOp)."""
    name, a = op.op, args[0]
    if name == "add":
        return a + args[1]
    if name == "sub":
        return a - args[1]
    if name == "mul":
        return a * args[1]
    if name == "div":
        return a / (args[1] * args[1] + 1)
    if name == "matmul":
        return a @ args[1]
    if name == "pow":
        return a ** op.exponent
    if name in ("tanh", "exp", "sigmoid", "relu", "abs", "clone"):
        return getattr(a, name)()
    if name in ("sqrt", "log"):
        return getattr(a * a + 1, name)()
    if name == "reciprocal":
        return 1 / (a * a + 1)
    if name == "neg":
        return -a
    F: Any = TF if isinstance(a, torch.Tensor) else RF
    if name == "leaky_relu":
        return F.leaky_relu(a, 0.01)
    if name == "elu":
        return F.elu(a, op.alpha)
    if name == "clamp":
        return a.clamp(op.low, op.high)
    if name in SOFTMAX_OPS:
        return getattr(a, name)(op.dim)
    if name == "transpose":
        return a.T
    if name == "getitem":
        return a[1:]
    if name == "index":
        return a[[a.shape[0] - 1, 0]]
    if name == "expand":
        return a.expand(2, *a.shape)
    if name == "cast":  # float32 -> float64 -> float32, both exact; float64 models: a no-op
        return a.double().float() if str(a.dtype).endswith("float32") else a
    if name in JOIN_OPS:
        return getattr(torch if F is TF else refimpl, name)((a, args[1]), 0)
    reduce = getattr(a, name)
    if name == "max" and op.dim is not None:
        return reduce(op.dim, op.keepdim).values
    v = reduce() if op.dim is None else reduce(op.dim, op.keepdim)
    return v.reshape((1,) * a.ndim) if op.dim is None and op.keepdim else v


def _loss(spec: ModelSpec, F: Any, out: Any, y: Any) -> Any:
    r = spec.reduction
    loss = spec.loss
    if loss == "mse":
        return F.mse_loss(out, y, reduction=r)
    if loss == "l1":
        return F.l1_loss(out, y, reduction=r)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(out, y, reduction=r, beta=spec.loss_param)
    if loss == "huber":
        return F.huber_loss(out, y, reduction=r, delta=spec.loss_param)
    if loss == "cross_entropy":
        return F.cross_entropy(out, y, reduction=r, label_smoothing=spec.loss_param)
    if loss == "nll":
        return F.nll_loss(F.log_softmax(out, dim=1), y, reduction=r)
    if loss == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(out, y, reduction=r)
    return out.sum() if r == "sum" else out.mean()


def cancelling_op(spec: ModelSpec, trials: int = 2) -> int | None:
    """The index of the first graph op whose value is exactly zero but for rounding (as in
    mean(x - mean(x))), or None: each library rounds it differently, and whatever it feeds
    inherits noise instead of a value. Found in float64 torch at `trials` random points: an
    add, sub, sum, mean or matmul result below 1e-10 of its operands' size."""
    if spec.kind != "graph":
        return None
    flagged: dict[int, int] = {}
    for trial in range(trials):
        rng = _rng(spec.seed, trial, 0xCA7C)
        values: dict[str, Any] = {k: torch.from_numpy(v) for k, v in initial_values(
            spec, "float64", seed=int(rng.integers(2**32))).items()}
        values["x"] = torch.from_numpy(rng.standard_normal(spec.input_shape))
        for i, op in enumerate(spec.ops):
            v = _apply_graph_op(op, [values[a] for a in op.args])
            values[f"v{i}"] = v
            if op.op in ("add", "sub", "sum", "mean", "matmul"):
                size = max(float(values[a].abs().max()) if values[a].numel() else 0.0
                           for a in op.args)
                if size > 0 and float(v.abs().max()) <= 1e-10 * size:
                    flagged[i] = flagged.get(i, 0) + 1
    hits = [i for i, count in flagged.items() if count == trials]
    return min(hits) if hits else None


def zero_gradient_parameters(spec: ModelSpec, trials: int = 2) -> frozenset[str]:
    """Used parameters whose exact gradient is zero whatever the values, found numerically.

    Such a gradient (paths to the output that cancel, as through x + p - mean(x + p); or a
    loss that ignores what the parameter does) is computed as rounding noise, different in
    each library, which no ULP budget of the gradient's own size can hold. Found in torch at
    `trials` random points: where the float32 gradient is off the float64 one (at the same,
    float32-valued point) by more than 1e-2 of the float64 one's size, or both are exactly
    zero while its terms (`gradient_magnitudes`) are not (a cancellation that came out exact
    at that point, as Σ (1 - n·softmax) over the softmax's dim may), every time.
    """
    hits: dict[str, int] = {}
    used = spec.used_parameters()
    for trial in range(trials):
        rng = _rng(spec.seed, trial, 0x2E50)
        values = initial_values(spec, "float32", seed=int(rng.integers(2**32)))
        batch_seed = int(rng.integers(2**32))
        arrays = _batch(spec, "float32", batch_seed)
        grads = {}
        for dtype in DTYPES:
            params = {k: torch.from_numpy(v.astype(dtype)).requires_grad_(k in used)
                      for k, v in values.items()}
            x, y = (torch.from_numpy(a.astype(dtype) if a.dtype.kind == "f" else a.copy())
                    for a in (arrays["x"], arrays["y"]))
            out = (_graph_forward(spec, params, x) if spec.kind == "graph"
                   else _layers_forward(spec, TF, params, x))
            loss = _loss(spec, TF, out, y)
            wanted = [k for k in params if k in used]
            grads[dtype] = dict(zip(wanted, torch.autograd.grad(
                loss, [params[k] for k in wanted], allow_unused=True), strict=True))
        terms: dict[str, np.ndarray] | None = None
        for name, g64 in grads["float64"].items():
            g32 = grads["float32"][name]
            if g64 is None or g32 is None:
                continue
            error, size = float((g32.double() - g64).abs().max()), float(g64.abs().max())
            if error > 0 and error > 1e-2 * size:
                hits[name] = hits.get(name, 0) + 1
            elif size == 0:  # a cancellation that came out exact here, or no terms at all
                if terms is None:
                    with np.errstate(all="ignore"):
                        terms = gradient_magnitudes(spec, "float32", values, batch_seed)
                if float(np.max(terms[name], initial=0.0)) > 0:
                    hits[name] = hits.get(name, 0) + 1
    return frozenset(k for k, v in hits.items() if v == trials)


SCALE_FLOOR = 2.0**-6


def gradient_scales(spec: ModelSpec, dtype: str, values: dict[str, np.ndarray],
                    batch_seed: int, floor: float = SCALE_FLOOR) -> dict[str, float]:
    """Per parameter, a magnitude to measure its gradient's error against, at least its terms':
    max |gradient| when the loss's gradient with respect to the output is replaced by its
    absolute value, and at least `floor` times the largest of those over the model. Computed
    with torch at parameter `values` (name -> array); unused parameters get 0.

    A gradient sums signed terms (per sample, per class, per position) that can cancel: by
    chance in batches of 1 to 4, and more and more as training converges. The result is then
    rounding noise next to the terms, which two libraries compute differently, and no budget in
    ULPs of the result itself holds. Measuring in ULPs of max(max |grad|, scale)
    (`grad_error_ulps(actual, expected, scale)`) bounds the error by what the terms allow.
    A wrong derivative rule still shows: its error is the size of the gradient itself.
    """
    params = {k: torch.from_numpy(np.array(v, dtype=dtype)).requires_grad_(True)
              for k, v in values.items()}
    arrays = _batch(spec, dtype, batch_seed)
    x = torch.from_numpy(arrays["x"].copy())
    with torch.enable_grad():
        out = (_graph_forward(spec, params, x) if spec.kind == "graph"
               else _layers_forward(spec, TF, params, x))
        if not out.requires_grad:
            return dict.fromkeys(params, 0.0)
        loss = _loss(spec, TF, out, torch.from_numpy(arrays["y"].copy()))
        (seed,) = torch.autograd.grad(loss, out, retain_graph=True)
        grads = torch.autograd.grad(out, list(params.values()), grad_outputs=seed.abs(),
                                    allow_unused=True)
    terms = {k: 0.0 if g is None or not g.numel() else float(g.abs().max())
             for k, g in zip(params, grads, strict=True)}
    least = floor * max(terms.values(), default=0.0)
    return {k: max(v, least) if k in spec.used_parameters() else 0.0 for k, v in terms.items()}


def loss_scale(spec: ModelSpec, dtype: str, values: dict[str, np.ndarray],
               batch_seed: int) -> float:
    """A magnitude to measure the loss's error against (`reduction_budget(..., scale=)`):
    max(|loss|, sum |d loss / d output * output|), the first-order effect of relative errors
    in the outputs. The second term matters where the loss is much smaller than that: mse with
    outputs close to their targets, "sum" over outputs of both signs. Computed with torch at
    parameter `values`."""
    params = {k: torch.from_numpy(np.array(v, dtype=dtype)) for k, v in values.items()}
    arrays = _batch(spec, dtype, batch_seed)
    x = torch.from_numpy(arrays["x"].copy())
    with torch.enable_grad():
        with torch.no_grad():
            out = (_graph_forward(spec, params, x) if spec.kind == "graph"
                   else _layers_forward(spec, TF, params, x))
        out.requires_grad_(True)
        loss = _loss(spec, TF, out, torch.from_numpy(arrays["y"].copy()))
        (grad,) = torch.autograd.grad(loss, out)
    return max(abs(float(loss.detach())), float((grad * out.detach()).abs().sum()))


# Comparing gradients -------------------------------------------------------------------------


def grad_error_ulps(actual: np.ndarray, expected: np.ndarray, scale: float = 0.0) -> float:
    """max |actual - expected| in ULPs of max(max |expected|, scale) (the norm-wise measure the
    budget is in: `reduction_budget(expected, ulps)` allows ulps × ulp(max |expected|) per
    element; `scale` may be `gradient_scales`'s). Infinite where NaN / infinities disagree;
    0 for two all-zero tensors."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return math.inf
    if actual.size == 0:
        return 0.0
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(e)
    if (np.isnan(a) != np.isnan(e)).any() or (a[~finite] != e[~finite]).any():
        return math.inf
    if not finite.any():
        return 0.0
    scale = max(float(np.max(np.abs(e[finite]))), scale)
    spacing = float(np.spacing(expected.dtype.type(scale)))
    spacing = max(spacing, float(np.finfo(expected.dtype).smallest_subnormal))
    diff = float(np.max(np.abs(a[finite] - e[finite])))
    return diff / spacing


__all__ = [
    "ACTIVATIONS",
    "CLASS_LOSSES",
    "DTYPES",
    "GRAD_BUDGET_CAP",
    "GRAD_BUDGET_SCALE",
    "GRAPH_LOSSES",
    "GRAPH_OPS",
    "KINDS",
    "LIBS",
    "LOSSES",
    "SCALE_FLOOR",
    "GraphOp",
    "Layer",
    "Model",
    "ModelSpec",
    "Param",
    "batch",
    "build",
    "cancelling_op",
    "forward_error_bounds",
    "grad_error_ulps",
    "gradient_magnitudes",
    "gradient_scales",
    "initial_values",
    "loss_forward_error_bound",
    "loss_scale",
    "zero_gradient_parameters",
]
