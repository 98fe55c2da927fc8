"""Hypothesis strategies for models: layer stacks (mlp, conv1d/2d, embedding) and op graphs,
each shrinking towards one Linear layer with mse. `conformance.strategies` builds setups from
them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from conformance.models import (
    ACTIVATIONS,
    BINARY_OPS,
    CLASS_LOSSES,
    GRAPH_LOSSES,
    JOIN_OPS,
    KINDS,
    KINKED_OPS,
    L1_LIKE,
    LOSSES,
    REDUCTION_OPS,
    REDUCTIONS,
    SHAPE_OPS,
    SMOOTH_OPS,
    SOFTMAX_OPS,
    GraphOp,
    Layer,
    ModelSpec,
    Param,
    Shape,
    cancelling_op,
    conv_out,
    graph_op_shape,
    zero_gradient_parameters,
)

__all__ = ["conv_specs", "embedding_specs", "graph_specs", "mlp_specs", "model_specs"]

# ReLU is drawn as often as all other activations together: it is what most models use, and
# its derivative at exactly 0 is a classic place for a wrong rule.
_ACTIVATION = st.one_of(st.just("relu"), st.sampled_from(ACTIVATIONS))
# elu's alpha is never 1 when drawn: at alpha 1 both sides of its derivative at 0 agree, and a
# rule taking the wrong side there would not show.
_ELU_ALPHAS = (0.5, 2.0)


def _activation_layer(draw: Any) -> Layer:
    name = draw(_ACTIVATION)
    return Layer(name, alpha=draw(st.sampled_from(_ELU_ALPHAS)) if name == "elu" else 1.0)


_SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def _loss_choice(draw: Any, losses: tuple[str, ...] = LOSSES) -> tuple[str, str, float]:
    loss = draw(st.sampled_from(losses))
    reduction = draw(st.sampled_from(REDUCTIONS))
    if loss in ("smooth_l1", "huber"):
        param = draw(st.sampled_from([1.0, 0.5, 2.0]))
    elif loss == "cross_entropy":
        param = draw(st.sampled_from([0.0, 0.1]))
    else:
        param = 1.0
    return loss, reduction, param


def _frozen(draw: Any, names: list[str], keep: list[str]) -> tuple[str, ...]:
    """A subset of `names` to freeze, leaving at least one of `keep` trainable."""
    if not names or not keep:
        return ()
    kept = draw(st.sampled_from(keep))
    chosen = (
        draw(
            st.lists(
                st.sampled_from([n for n in names if n != kept]),
                unique=True,
                max_size=max(len(names) - 1, 0),
            )
        )
        if len(names) > 1
        else []
    )
    return tuple(n for n in names if n in chosen)


@st.composite
def mlp_specs(draw: Any) -> ModelSpec:
    """Linear [-> LayerNorm] -> activation ... -> Linear head; shrinks to Linear(1, 1) + mse.

    LayerNorm comes only right after the first Linear, of at least 3 input features: deeper,
    dead units (relu) can leave it one live input, and LN(w * t) = sign(t) LN(w) but for eps,
    so the gradients through t are the near-cancellation of much larger terms."""
    n, features = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    layers: list[Layer] = []
    for i in range(draw(st.integers(0, 2))):
        width = draw(st.integers(1, 8))
        layers.append(Layer("linear", width, bias=_bias(draw)))
        if i == 0 and width >= 3 and features >= 3 and draw(st.booleans()):
            layers.append(Layer("layer_norm", bias=_bias(draw)))
        layers.append(_activation_layer(draw))
    return _layered(draw, "mlp", n, (features,), layers)


def _bias(draw: Any) -> bool:
    return not draw(st.booleans())  # shrinks to True


def _layered(
    draw: Any, kind: str, n: int, sample_shape: Shape, layers: list[Layer], vocab: int = 0
) -> ModelSpec:
    """Adds the Linear head and draws the loss, seed and frozen parameters, last (so that they
    shrink independently of the layers)."""
    head, head_bias = draw(st.integers(1, 3)), _bias(draw)
    loss, reduction, param = draw(_loss_choice())
    if loss in CLASS_LOSSES:
        head += 1
    if loss in L1_LIKE and n % 2 == 0:  # see _analysis
        n -= 1
    layers = [*layers, Layer("linear", head, bias=head_bias)]
    seed = draw(_SEEDS)
    spec = ModelSpec(
        kind=kind,
        input_shape=(n, *sample_shape),
        loss=loss,
        seed=seed,
        layers=tuple(layers),
        vocab=vocab,
        reduction=reduction,
        loss_param=param,
    )
    names = spec.parameter_names()
    frozen = _frozen(draw, names, names)
    return dataclasses.replace(spec, frozen=frozen) if frozen else spec


@st.composite
def conv_specs(draw: Any, dims: int) -> ModelSpec:
    """conv -> activation [-> pool] ... -> Flatten -> Linear head."""
    n, channels = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    size = draw(st.integers(3, 8 if dims == 1 else 5))
    spatial = (size,) * dims
    layers: list[Layer] = []
    for _ in range(draw(st.integers(1, 2))):
        kernel = draw(st.integers(1, 3))
        padding = draw(st.integers(0, 1))
        stride = draw(st.integers(1, 2))
        out = conv_out(spatial[0], kernel, stride, padding)
        if out < 1:
            break
        layers.append(
            Layer(
                f"conv{dims}d",
                draw(st.integers(1, 3)),
                kernel=kernel,
                stride=stride,
                padding=padding,
                bias=_bias(draw),
            )
        )
        spatial = (out,) * dims
        layers.append(_activation_layer(draw))
        if dims == 2 and min(spatial) >= 2 and draw(st.booleans()):
            layers.append(Layer(draw(st.sampled_from(["avg_pool2d", "max_pool2d"])), kernel=2))
            spatial = tuple(s // 2 for s in spatial)
    layers.append(Layer("flatten"))
    return _layered(draw, f"conv{dims}d", n, (channels, *(size,) * dims), layers)


@st.composite
def embedding_specs(draw: Any) -> ModelSpec:
    """Embedding [-> LayerNorm] [-> activation] -> Flatten -> Linear head."""
    n, length = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    vocab, dim = draw(st.integers(2, 8)), draw(st.integers(1, 5))
    padding_idx = draw(st.none() | st.integers(0, vocab - 1))
    layers = [Layer("embedding", dim, padding_idx=padding_idx)]
    if dim >= 3 and draw(st.booleans()):
        layers.append(Layer("layer_norm", bias=_bias(draw)))
    if draw(st.booleans()):
        layers.append(_activation_layer(draw))
    layers.append(Layer("flatten"))
    return _layered(draw, "embedding", n, (length,), layers, vocab)


@dataclass
class _Value:
    name: str
    shape: Shape
    bound: float  # a rough bound on |value|, to keep exp and pow finite and tame
    exact: bool  # computed bitwise alike by both libraries (no sums, no transcendental)
    grad: bool = True  # depends on a parameter: a gradient can flow through it


# A graph's next op: a family first, then one of its ops, so that the many ops that move data
# do not crowd out the arithmetic, and the kinked ops (see models.KINKS) come up in a fifth of
# the draws. Ties and bounds are judged on exact values only: where the libraries round a value
# differently, a tie in one is none in the other and the gradients go different ways.
_FAMILIES = (
    (*BINARY_OPS, "matmul"),
    (*SMOOTH_OPS, *SOFTMAX_OPS),
    KINKED_OPS,
    REDUCTION_OPS,
    (*SHAPE_OPS, *JOIN_OPS),
)
_EXACT_ONLY = ("clamp", "amax", "max")
_WANTS_GRAD = (*KINKED_OPS, "amax", "max")
# clamp's bounds (and their mirror images), hit by exact zeros and the tie values of batches
# (conformance.models.data._TIES)
_CLAMPS = ((0.0, None), (0.0, 1.25), (0.0, 0.5), (-1.0, 0.5))


_MAX_BOUND = 1e3
_MAX_SIZE = 64


def _broadcast_options(shape: Shape) -> list[Shape]:
    """Shapes of a new parameter that broadcasts against `shape`, simplest first."""
    options = [shape, shape[1:], ()]
    if len(shape) >= 1:
        options.append((1, *shape[1:]))
    if len(shape) >= 2:
        options.append((*shape[:-1], 1))
    return list(dict.fromkeys(options))


@st.composite
def graph_specs(draw: Any, max_ops: int = 8) -> ModelSpec:
    """A random op graph over parameters p0, p1, ... (biases b<i>, added before a kinked op)
    and the input x (see GraphOp)."""
    n, features = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    values = [_Value("x", (n, features), 4.0, True, grad=False)]
    params: list[Param] = []
    ops: list[GraphOp] = []

    def new_param(shape: Shape, bias: bool = False) -> _Value:
        p = Param(f"{'b' if bias else 'p'}{len(params)}", shape)
        params.append(p)
        value = _Value(p.name, shape, 2.5, True)
        values.append(value)
        return value

    def last_first() -> list[_Value]:
        # the latest op's value first, so graphs shrink to chains; then x and parameters
        computed = [v for v in values if v.name.startswith("v")]
        return computed[::-1] + [v for v in values if not v.name.startswith("v")]

    for _ in range(draw(st.integers(1, max_ops))):
        name = draw(st.sampled_from(draw(st.sampled_from(_FAMILIES))))
        pool = last_first()
        if name in _EXACT_ONLY:
            pool = [v for v in pool if v.exact]
        if name in (*REDUCTION_OPS, *SOFTMAX_OPS, "index", *JOIN_OPS):
            pool = [v for v in pool if v.shape]
        elif name == "matmul":
            pool = [v for v in pool if len(v.shape) in (1, 2)]
        elif name == "transpose":
            pool = [v for v in pool if len(v.shape) == 2]
        elif name == "getitem":
            pool = [v for v in pool if v.shape and v.shape[0] >= 2]
        elif name == "exp":
            pool = [v for v in pool if v.bound <= 6]
        elif name in ("pow", "sqrt", "log", "reciprocal"):
            pool = [v for v in pool if v.bound**2 <= _MAX_BOUND]
        if name in _WANTS_GRAD:
            pool = [v for v in pool if v.grad] or pool
        if not pool:
            continue
        # half the time the latest value, so that most ops lie on the output's path (a kink
        # counts only there); otherwise any value, which may start a dead branch
        a = (
            pool[0]
            if pool[0].name == f"v{len(ops) - 1}" and draw(st.booleans())
            else draw(st.sampled_from(pool))
        )
        if (
            name in _WANTS_GRAD
            and (not a.grad or draw(st.booleans()))
            and a.bound + 2.5 <= _MAX_BOUND
        ):
            # A kink shows where a gradient flows, and differently for each element: a + b
            # first, b a bias (zero at first in most models: models.initial_values) of a's
            # row or whole shape, so that a's zeros stay zeros and a tie's elements reach
            # different elements of b.
            b = new_param(
                draw(st.sampled_from(list(dict.fromkeys([a.shape[1:], a.shape])))), bias=True
            )
            ops.append(GraphOp("add", (a.name, b.name)))
            a = _Value(f"v{len(ops) - 1}", a.shape, a.bound + b.bound, a.exact)
            values.append(a)
        params_before = len(params)
        op, bound, exact = _draw_graph_op(draw, name, a, last_first, new_param)
        shape = graph_op_shape(op, [_shape_of(values, x) for x in op.args])
        if bound > _MAX_BOUND or math.prod(shape) > _MAX_SIZE:
            for made in params[params_before:]:  # parameters made for the skipped op
                values.remove(next(v for v in values if v.name == made.name))
            del params[params_before:]
            continue
        grad = any(v.grad for v in values if v.name in op.args)
        values.append(_Value(f"v{len(ops)}", shape, bound, exact, grad))
        ops.append(op)

    if ops:  # cut the graph before a value that is zero but for rounding
        cut = cancelling_op(
            ModelSpec(
                kind="graph",
                input_shape=(n, features),
                loss="sum",
                seed=0,
                params=tuple(params),
                ops=tuple(ops),
            )
        )
        if cut is not None:
            del ops[cut:]
            values = [v for v in values if not v.name.startswith("v") or int(v.name[1:]) < cut]
    out = next((v for v in reversed(values) if v.name.startswith("v")), values[0])
    if not ops or not (_reachable(ops, len(ops) - 1) & {p.name for p in params}):
        p = new_param(out.shape)
        ops.append(GraphOp("mul", (out.name, p.name)))
        out = _Value(f"v{len(ops) - 1}", out.shape, out.bound * 2.5, out.exact)
        values.append(out)
    for _ in range(draw(st.integers(0, 2))):  # unused parameters
        new_param(draw(st.sampled_from([(features,), (), (2, features)])))
    loss, reduction, param = draw(_loss_choice(GRAPH_LOSSES))
    seed = draw(_SEEDS)
    names = [p.name for p in params]

    def make(loss: str, frozen: set[str]) -> ModelSpec:
        return ModelSpec(
            kind="graph",
            input_shape=(n, features),
            loss=loss,
            seed=seed,
            params=tuple(params),
            ops=tuple(ops),
            reduction=reduction,
            loss_param=param,
            frozen=tuple(x for x in names if x in frozen),
        )

    # Parameters whose exact gradient is zero (paths that cancel) get rounding noise for a
    # gradient, different in each library: freeze them.
    # If that leaves nothing to train, multiply the output by a new parameter, with loss "sum".
    spec = make(loss, set())
    zeros = zero_gradient_parameters(spec)
    trainable = sorted(spec.used_parameters() - zeros)
    if not trainable:
        p = new_param(out.shape)
        ops.append(GraphOp("mul", (out.name, p.name)))
        names.append(p.name)
        spec = make("sum", set())
        # p's gradient is the output itself (maybe exactly zero, as after clamp(·, max=0) of
        # values >= 0: then zero in both libraries, not noise)
        zeros = zero_gradient_parameters(spec) - {p.name}
        trainable = sorted(spec.used_parameters() - zeros)
    frozen = set(_frozen(draw, names, trainable)) | zeros
    return make(spec.loss, frozen)


def _draw_graph_op(
    draw: Any, name: str, a: _Value, candidates: Any, new_param: Any
) -> tuple[GraphOp, float, bool]:
    """One op on `a` (and an existing value or a new parameter), its bound and exactness."""
    if name in BINARY_OPS:
        others = [v for v in candidates() if v is not a and _broadcasts(a.shape, v.shape)]
        pick = draw(st.integers(0, len(others)))
        if pick == 0:
            b = new_param(draw(st.sampled_from(_broadcast_options(a.shape))))
        else:
            b = others[pick - 1]
        first, second = (b, a) if draw(st.booleans()) else (a, b)
        bound = {
            "add": a.bound + b.bound,
            "sub": a.bound + b.bound,
            "mul": a.bound * b.bound,
            "div": first.bound,
        }[name]
        return GraphOp(name, (first.name, second.name)), bound, a.exact and b.exact
    if name == "matmul":
        if len(a.shape) == 2 and draw(st.booleans()):  # p @ a, with p new
            k = a.shape[0]
            b = new_param((draw(st.integers(1, 4)), k))
            first, second = b, a
        else:
            k = a.shape[-1]
            others = [v for v in candidates() if len(v.shape) in (1, 2) and v.shape[0] == k]
            pick = draw(st.integers(0, len(others)))
            if pick == 0:
                m = draw(st.integers(0, 4))
                b = new_param((k,) if m == 0 else (k, m))
            else:
                b = others[pick - 1]
            first, second = a, b
        return GraphOp("matmul", (first.name, second.name)), k * a.bound * b.bound, False
    if name in JOIN_OPS:  # cat / stack with a value of a matching shape, or a new parameter
        others = [
            v
            for v in candidates()
            if v.shape and (v.shape == a.shape if name == "stack" else v.shape[1:] == a.shape[1:])
        ]
        pick = draw(st.integers(0, len(others)))
        b = (
            others[pick - 1]
            if pick
            else new_param(a.shape if name == "stack" else (draw(st.integers(1, 2)), *a.shape[1:]))
        )
        first, second = (b, a) if draw(st.booleans()) else (a, b)
        return (
            GraphOp(name, (first.name, second.name)),
            max(a.bound, b.bound),
            a.exact and b.exact,
        )
    if name in (*REDUCTION_OPS, *SOFTMAX_OPS):
        dims = list(range(len(a.shape)))
        dim = draw(st.sampled_from(dims if name in SOFTMAX_OPS else [None, *dims]))
        if dim is not None and draw(st.booleans()):
            dim -= len(a.shape)
        if name in SOFTMAX_OPS:
            bound = 1.0 if name == "softmax" else 2 * a.bound + math.log(a.shape[dim])
            return GraphOp(name, (a.name,), dim=dim), bound, False
        op = GraphOp(name, (a.name,), dim=dim, keepdim=draw(st.booleans()))
        count = math.prod(a.shape) if dim is None else a.shape[dim]
        return op, a.bound * (count if name == "sum" else 1), name in _EXACT_ONLY and a.exact
    if name == "clamp":
        low, high = draw(st.sampled_from(_CLAMPS))
        if draw(st.booleans()):  # mirrored (+ 0.0: no -0.0 bound)
            low, high = (None if high is None else 0.0 - high), (None if low is None else 0.0 - low)
        bound = a.bound if low is None or high is None else max(abs(low), abs(high))
        return GraphOp(name, (a.name,), low=low, high=high), bound, a.exact
    if name == "elu":
        alpha = draw(st.sampled_from(_ELU_ALPHAS))
        return GraphOp(name, (a.name,), alpha=alpha), max(a.bound, alpha), False
    exponent = 2
    if name == "pow" and a.bound**3 <= _MAX_BOUND:
        exponent = draw(st.sampled_from([2, 3]))
    bound = {
        "tanh": 1.0,
        "sigmoid": 1.0,
        "exp": math.exp(min(a.bound, 700)),
        "pow": a.bound**exponent,
        "sqrt": math.sqrt(a.bound**2 + 1),
        "log": math.log(a.bound**2 + 1),
        "reciprocal": 1.0,
    }.get(name, a.bound)
    exact = a.exact and name in ("relu", "abs", "leaky_relu", "neg", *SHAPE_OPS)
    return GraphOp(name, (a.name,), exponent=exponent), bound, exact


def _broadcasts(a: Shape, b: Shape) -> bool:
    try:
        return math.prod(np.broadcast_shapes(a, b)) <= _MAX_SIZE
    except ValueError:
        return False


def _shape_of(values: list[_Value], name: str) -> Shape:
    return next(v.shape for v in values if v.name == name)


def _reachable(ops: list[GraphOp], index: int) -> set[str]:
    """Names of the parameters and x that value v<index> depends on."""
    seen: set[str] = set()
    stack = list(ops[index].args)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("v"):
            stack += ops[int(name[1:])].args
    return {s for s in seen if not s.startswith("v")}


def model_specs(kinds: tuple[str, ...] = KINDS) -> st.SearchStrategy[ModelSpec]:
    """Small models of the given kinds (1 to ~200 parameters); shrinks towards one Linear
    layer with mse."""
    table = {
        "mlp": mlp_specs(),
        "conv1d": conv_specs(1),
        "conv2d": conv_specs(2),
        "embedding": embedding_specs(),
        "graph": graph_specs(),
    }
    # op graphs are drawn three times as often: they are where most ops (exp, pow, div,
    # matmul, softmax, clamp, max, data movement, broadcasting, reductions, weight tying) and
    # kinks appear. (Three distinct strategies: one_of drops a strategy it already has.)
    weighted = [table[k] for k in kinds] + (
        [graph_specs(), graph_specs()] if "graph" in kinds else []
    )
    return st.one_of(*weighted)
