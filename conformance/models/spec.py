"""What a model is, as data: `ModelSpec` (a layer stack or an op graph over named parameters,
its loss, the seed of its initial values), frozen, hashable and JSON round-trippable; the
shapes, parameters and `refimpl.ops.OPS` rows it implies (checked on construction); its
gradient ULP budget; and which ops (`ops_of`) and kinks (`kinks_of`) it can exercise."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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
ACTIVATIONS = (
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "gelu",
    "gelu_tanh",
    "elu",
    "silu",
    "softplus",
)
LAYER_OPS = (
    "linear",
    "conv1d",
    "conv2d",
    "embedding",
    "layer_norm",
    "flatten",
    "max_pool2d",
    "avg_pool2d",
    *ACTIVATIONS,
)
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
GRAPH_OPS = (*BINARY_OPS, "matmul", *UNARY_OPS, *SOFTMAX_OPS, *REDUCTION_OPS, *SHAPE_OPS, *JOIN_OPS)
# Where a derivative rule has a branch that differs between its two sides (or among tied
# inputs), named "<op>@<point>" or "<op>:tie": what `kinks_of` says a model can hit and
# `Model.kinks` counts. smooth_l1 and huber are C¹ at their boundary (both sides agree there),
# but a rule with the wrong boundary still shows only there.
KINKS = (
    "relu@0",
    "leaky_relu@0",
    "elu@0",
    "abs@0",
    "clamp@min",
    "clamp@max",
    "amax:tie",
    "max:tie",
    "max_dim:tie",
    "max_pool2d:tie",
    "smooth_l1@beta",
    "huber@delta",
)
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
    """A model, its loss and the seed of its initial parameters; frozen and hashable, and
    JSON round-trippable (`to_json` / `from_json`). Constructing one checks that it describes
    a valid model (ValueError otherwise).

    kind: "mlp" (Linear layers, activations, LayerNorm), "conv1d" / "conv2d" (convolutions,
    pooling, Flatten, Linear), "embedding" (an Embedding first): a stack of `layers`; or
    "graph": `ops` (see GraphOp) over `params` and the input "x", the last op's value the
    output. `frozen` parameters do not require grad.

    input_shape includes the batch dim: (N, F) for mlp and graph, (N, C, L) for conv1d,
    (N, C, H, W) for conv2d, (N, L) token indices below `vocab` for embedding. loss: one of
    LOSSES ("nll" after a log_softmax; "sum" the output's sum, or its mean with reduction
    "mean"), always a scalar; loss_param is smooth_l1's beta, huber's delta or cross_entropy's
    label smoothing (ignored otherwise).
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
    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (dicts, lists, str, int, float, bool, None)."""
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "loss": self.loss,
            "seed": self.seed,
            "layers": [
                {
                    "op": x.op,
                    "out": x.out,
                    "kernel": x.kernel,
                    "stride": x.stride,
                    "padding": x.padding,
                    "bias": x.bias,
                    "padding_idx": x.padding_idx,
                    "alpha": x.alpha,
                }
                for x in self.layers
            ],
            "params": [{"name": p.name, "shape": list(p.shape)} for p in self.params],
            "ops": [
                {
                    "op": o.op,
                    "args": list(o.args),
                    "dim": o.dim,
                    "keepdim": o.keepdim,
                    "exponent": o.exponent,
                    "alpha": o.alpha,
                    "low": o.low,
                    "high": o.high,
                }
                for o in self.ops
            ],
            "vocab": self.vocab,
            "reduction": self.reduction,
            "loss_param": self.loss_param,
            "frozen": list(self.frozen),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            kind=str(data["kind"]),
            input_shape=tuple(int(n) for n in data["input_shape"]),
            loss=str(data["loss"]),
            seed=int(data["seed"]),
            layers=tuple(
                Layer(
                    op=x["op"],
                    out=int(x.get("out", 0)),
                    kernel=int(x.get("kernel", 1)),
                    stride=int(x.get("stride", 1)),
                    padding=int(x.get("padding", 0)),
                    bias=bool(x.get("bias", True)),
                    padding_idx=x.get("padding_idx"),
                    alpha=float(x.get("alpha", 1.0)),
                )
                for x in data.get("layers", ())
            ),
            params=tuple(
                Param(p["name"], tuple(int(n) for n in p["shape"])) for p in data.get("params", ())
            ),
            ops=tuple(
                GraphOp(
                    op=o["op"],
                    args=tuple(o["args"]),
                    dim=o.get("dim"),
                    keepdim=bool(o.get("keepdim", False)),
                    exponent=int(o.get("exponent", 2)),
                    alpha=float(o.get("alpha", 1.0)),
                    low=_float_or_none(o.get("low")),
                    high=_float_or_none(o.get("high")),
                )
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
        """The gradient tolerance in ULPs (of each tensor's max |torch grad|, or of the terms
        it sums: see conformance.machine):

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
        return (
            f"{self.kind} x{list(self.input_shape)}: {body} | {self.loss}/{self.reduction}"
            f"({self.loss_param:g}) seed={self.seed}{frozen}"
        )


GRAD_BUDGET_SCALE = {"float32": 32.0, "float64": 256.0}
GRAD_BUDGET_CAP = {"float32": 2.0**12, "float64": 2.0**17}


def _op_text(o: GraphOp) -> str:
    extra = {
        "pow": f", {o.exponent}",
        "elu": f", alpha={o.alpha:g}",
        "clamp": f", {o.low}, {o.high}",
    }.get(o.op, "")
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
        return (
            f"{layer.op}({layer.out}, k={layer.kernel}, s={layer.stride}, p={layer.padding}"
            f"{'' if layer.bias else ', nobias'})"
        )
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


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@functools.lru_cache(maxsize=8192)
def _analysis(spec: ModelSpec) -> _Analysis:
    _check(spec.kind in KINDS, f"kind must be one of {KINDS}, got {spec.kind!r}")
    _check(spec.loss in LOSSES, f"loss must be one of {LOSSES}, got {spec.loss!r}")
    _check(spec.reduction in REDUCTIONS, f"reduction must be one of {REDUCTIONS}")
    _check(
        all(isinstance(n, int) and n >= 1 for n in spec.input_shape) and len(spec.input_shape) >= 1,
        f"bad input_shape {spec.input_shape}",
    )
    _check(isinstance(spec.seed, int) and spec.seed >= 0, "seed must be a non-negative int")
    if spec.kind == "graph":
        _check(spec.loss in GRAPH_LOSSES, f"graph models take a loss in {GRAPH_LOSSES}")
        shapes, out, used, names, longest = _analyse_graph(spec)
    else:
        shapes, out, names, longest = _analyse_layers(spec)
        used = frozenset(shapes)
    _check(
        len(set(spec.frozen)) == len(spec.frozen) and all(name in shapes for name in spec.frozen),
        f"frozen {spec.frozen} must name distinct parameters of {list(shapes)}",
    )
    names = list(names)
    n = spec.input_shape[0]
    loss = spec.loss
    if loss in CLASS_LOSSES:
        _check(
            len(out) == 2 and out[0] == n and out[1] >= 2,
            f"{loss} needs an (N, C >= 2) output, got {out}",
        )
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
        _check(
            spec.vocab >= 1 and spec.layers[0].op == "embedding",
            "an embedding model starts with an embedding layer and has a vocab",
        )
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
            _check(
                len(shape) == 2 + dims
                and layer.out >= 1
                and layer.kernel >= 1
                and layer.stride >= 1
                and layer.padding >= 0,
                f"bad {op} on {shape}",
            )
            sizes = tuple(conv_out(s, layer.kernel, layer.stride, layer.padding) for s in shape[2:])
            _check(min(sizes) >= 1, f"{op} output too small for input {shape}")
            shapes[f"{i}.weight"] = (layer.out, shape[1], *(layer.kernel,) * dims)
            if layer.bias:
                shapes[f"{i}.bias"] = (layer.out,)
            longest = max(longest, shape[1] * layer.kernel**dims, n * math.prod(sizes))
            shape = (n, layer.out, *sizes)
            names.append("convolution")
        elif op == "embedding":
            _check(len(shape) == 2 and layer.out >= 1, "embedding takes (N, L) indices")
            _check(
                layer.padding_idx is None or 0 <= layer.padding_idx < spec.vocab,
                "padding_idx must lie in [0, vocab)",
            )
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
            _check(
                len(shape) == 4 and layer.kernel >= 1 and min(shape[2:]) >= layer.kernel,
                f"{op} needs (N, C, H, W) input at least {layer.kernel} wide",
            )
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
    "div": ("mul", "add", "div"),
    "sqrt": ("mul", "add", "sqrt"),
    "log": ("mul", "add", "log"),
    "reciprocal": ("mul", "add", "reciprocal", "mul"),  # 1 / t is t.reciprocal() * 1
    "transpose": ("permute",),
    "getitem": ("getitem",),
    "cast": ("to_dtype", "to_dtype"),
}


def graph_rows(op: GraphOp) -> tuple[str, ...]:
    """The `refimpl.ops.OPS` rows that graph op runs (cast: in float32 models only)."""
    if op.op == "max":
        rows: tuple[str, ...] = ("max",) if op.dim is None else ("max_dim",)
    else:
        rows = _GRAPH_OP_ROWS.get(op.op, (op.op,))
    if op.op in REDUCTION_OPS and op.dim is None and op.keepdim:
        rows += ("reshape",)  # back to the input's number of dims
    return rows


def graph_op_shape(op: GraphOp, shapes: list[Shape]) -> Shape:
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
        _check(
            len(a) in (1, 2) and len(b) in (1, 2) and a[-1] == b[0],
            f"matmul: shapes {a} and {b} do not multiply",
        )
        return a[:-1] + b[1:]
    if name in JOIN_OPS:
        a, b = shapes
        _check(
            len(a) >= 1 and (a == b if name == "stack" else a[1:] == b[1:]),
            f"{name}: shapes {a} and {b} do not join along dim 0",
        )
        return (2, *a) if name == "stack" else (a[0] + b[0], *a[1:])
    (a,) = shapes
    if name == "pow":
        _check(op.exponent in (2, 3), "pow's exponent must be 2 or 3")
    if name == "clamp":
        _check(
            (op.low, op.high) != (None, None)
            and (op.low is None or op.high is None or op.low <= op.high),
            f"clamp needs low <= high, at least one given: {op.low}, {op.high}",
        )
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
        return a[:d] + ((1,) if op.keepdim else ()) + a[d + 1 :]
    return a


def _analyse_graph(
    spec: ModelSpec,
) -> tuple[dict[str, Shape], Shape, frozenset[str], list[str], int]:
    _check(not spec.layers, "graph models have no layers")
    _check(len(spec.ops) >= 1, "a graph model needs at least one op")
    shapes: dict[str, Shape] = {}
    for p in spec.params:
        _check(
            p.name not in shapes and p.name != "x" and not p.name.startswith("v"),
            f"bad or duplicate parameter name {p.name!r}",
        )
        _check(all(isinstance(s, int) and s >= 1 for s in p.shape), f"bad shape {p.shape}")
        shapes[p.name] = p.shape
    values: dict[str, Shape] = {"x": spec.input_shape, **shapes}
    deps: dict[str, frozenset[str]] = {"x": frozenset(), **{k: frozenset([k]) for k in shapes}}
    names: list[str] = []
    longest = 1
    for i, op in enumerate(spec.ops):
        _check(all(a in values for a in op.args), f"v{i}: unknown args {op.args}")
        arg_shapes = [values[a] for a in op.args]
        out = graph_op_shape(op, arg_shapes)
        _check(math.prod(out) <= 256, f"v{i} is too large: {out}")
        values[f"v{i}"] = out
        deps[f"v{i}"] = frozenset().union(*(deps[a] for a in op.args))
        names += graph_rows(op)
        if op.op in REDUCTION_OPS:
            longest = max(longest, math.prod(arg_shapes[0]) // max(math.prod(out), 1))
        elif op.op in SOFTMAX_OPS:
            assert op.dim is not None  # graph_op_shape checked it
            longest = max(longest, arg_shapes[0][op.dim])
        elif op.op == "matmul":
            longest = max(longest, arg_shapes[0][-1])
        for s in arg_shapes:  # a broadcast input's grad is summed
            longest = max(longest, math.prod(out) // math.prod(s))
    last = f"v{len(spec.ops) - 1}"
    return shapes, values[last], deps[last], names, longest


# What a model exercises: ops and kinks --------------------------------------------------------


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
        depends, live = {p.name for p in spec.params}, live_ops(spec)
        for i, op in enumerate(spec.ops):
            if not depends.intersection(op.args):
                continue
            depends.add(f"v{i}")
            if i not in live:
                continue
            if op.op in ("relu", "abs", "leaky_relu", "elu"):
                found.add(f"{op.op}@0")
            elif op.op == "clamp":
                found |= {
                    k for k, b in (("clamp@min", op.low), ("clamp@max", op.high)) if b is not None
                }
            elif op.op in ("amax", "max"):
                found.add(
                    "max_dim:tie" if op.op == "max" and op.dim is not None else f"{op.op}:tie"
                )
    for i, layer in enumerate(spec.layers):
        if layer.op in ("relu", "leaky_relu", "elu") and adds_bias(spec, i - 1):
            found.add(f"{layer.op}@0")
        elif layer.op == "max_pool2d":
            found.add("max_pool2d:tie")
    loss = {"l1": "abs@0", "smooth_l1": "smooth_l1@beta", "huber": "huber@delta"}
    if spec.loss in loss:
        found.add(loss[spec.loss])
    return frozenset(found)


@functools.lru_cache(maxsize=1024)
def live_ops(spec: ModelSpec) -> frozenset[int]:
    """The indices of the graph ops the output depends on."""
    live, stack = set(), [len(spec.ops) - 1]
    while stack:
        i = stack.pop()
        if i not in live:
            live.add(i)
            stack += [int(a[1:]) for a in spec.ops[i].args if a.startswith("v")]
    return frozenset(live)


def adds_bias(spec: ModelSpec, i: int) -> bool:
    """Whether layer i adds a bias (or is an embedding): a zero it outputs has a parameter
    of its own, whose gradient is the next activation's derivative there. (Without one, the
    zero of an all-zero sample or of a relu's zeros passes nothing back.)"""
    return i >= 0 and (spec.layers[i].op == "embedding" or f"{i}.bias" in spec.parameter_shapes())
