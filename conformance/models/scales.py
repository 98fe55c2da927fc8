"""What the error of a model's gradients and loss is measured against, computed with torch: the
terms each gradient sums (`gradient_magnitudes`, by conformance.magnitudes' rules), how far the
forward values' rounding carries into a gradient or the loss (`forward_error_bounds`,
`loss_forward_error_bound`), `loss_scale`; where no budget can hold (`cancelling_op`,
`zero_gradient_parameters`: the strategies cut a graph there, or freeze the parameter); and
the cruder measure `gradient_scales` / `grad_error_ulps` (used by tests only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF

from conformance import magnitudes
from conformance.models.data import cached_batch, initial_values, seeded_rng
from conformance.models.forward import apply_graph_op, apply_loss, graph_forward, layers_forward
from conformance.models.spec import (
    DTYPES,
    JOIN_OPS,
    SHAPE_OPS,
    GraphOp,
    ModelSpec,
    graph_rows,
)
from refimpl.ops import OPS

# The terms a gradient sums --------------------------------------------------------------------


# The magnitude rules (see conformance.magnitudes) of the graph ops whose standard backward
# changes signs or cancels, beyond those of `magnitudes.graph_op`: g ↦ g · |each term of the
# derivative| (g >= 0). The other graph ops route g unchanged, scaled by a non-negative factor
# or summed (clamp, max, data movement).
_MagnitudeRule = Callable[[GraphOp, torch.Tensor, tuple[Any, ...], torch.Tensor], tuple[Any, ...]]
_MAGNITUDE_RULES: dict[str, _MagnitudeRule] = {
    "neg": lambda op, g, i, y: (g,),
    "sqrt": lambda op, g, i, y: (g * i[0].abs() / y,),  # a / sqrt(a² + 1)
    "log": lambda op, g, i, y: (g * 2 * i[0].abs() / (i[0] * i[0] + 1),),
    "reciprocal": lambda op, g, i, y: (g * 2 * i[0].abs() * y * y,),
    "softmax": lambda op, g, i, y: (g * y + y * (g * y).sum(op.dim, keepdim=True),),
    "log_softmax": lambda op, g, i, y: (g + y.exp() * g.sum(op.dim, keepdim=True),),
}


def _magnitude_graph_op(op: GraphOp, args: list[Any]) -> Any:
    """Graph op `op` of `args`, its backward replaced by its magnitude rule where it has one."""
    rule = _MAGNITUDE_RULES.get(op.op)
    if rule is not None:
        return magnitudes.with_rule(
            lambda *a: apply_graph_op(op, list(a)), lambda g, i, y: rule(op, g, i, y), *args
        )
    v = magnitudes.graph_op(op.op, args, op.exponent, op.alpha)
    return apply_graph_op(op, args) if v is None else v


def gradient_magnitudes(
    spec: ModelSpec, dtype: str, values: dict[str, np.ndarray], batch_seed: int
) -> dict[str, np.ndarray]:
    """Per parameter, elementwise, the magnitude of the terms its gradient sums (see
    conformance.magnitudes): the backward pass with every term in absolute value, computed
    with torch at parameter `values` on the batch. Unused parameters get zeros."""
    params = {
        k: torch.from_numpy(np.array(v, dtype=dtype)).requires_grad_(True)
        for k, v in values.items()
    }
    arrays = cached_batch(spec, dtype, batch_seed)
    x = torch.from_numpy(arrays["x"].copy())
    y = torch.from_numpy(arrays["y"].copy())
    with torch.enable_grad():
        out = (
            graph_forward(spec, params, x, _magnitude_graph_op)
            if spec.kind == "graph"
            else layers_forward(spec, magnitudes.MagnitudeFunctional(), params, x)
        )
        if not out.requires_grad:
            return {k: np.zeros_like(v) for k, v in values.items()}
        (standard,) = torch.autograd.grad(apply_loss(spec, TF, out, y), out, retain_graph=True)
        seed = magnitudes.loss_seed(
            spec.loss,
            spec.reduction,
            out.detach(),
            y.to(out.dtype) if y.is_floating_point() else torch.zeros_like(out),
            standard,
            spec.loss_param,
        )
        grads = torch.autograd.grad(
            out, list(params.values()), grad_outputs=seed, allow_unused=True
        )
    return {
        k: np.zeros_like(values[k]) if g is None else g.detach().numpy()
        for k, g in zip(params, grads, strict=True)
    }


# Forward rounding carried into the gradient ---------------------------------------------------


# Graph ops whose result is exact (no rounding: relu, abs, amax, clamp, max, neg, moving data)
# and those rounded against more than their own size (see conformance.magnitudes.ForwardErrors).
_EXACT_GRAPH_OPS = ("relu", "abs", "amax", "clamp", "max", "neg", *SHAPE_OPS, *JOIN_OPS)


def _error_graph_op(errors: magnitudes.ForwardErrors, op: GraphOp, args: list[Any]) -> Any:
    """Graph op `op` of `args`, perturbed by its rounding (`ForwardErrors.rounded`)."""
    value = apply_graph_op(op, args)
    if op.op in _EXACT_GRAPH_OPS:
        return value
    if op.op == "log_softmax":  # shifted - logsumexp cancels
        assert op.dim is not None  # a valid spec's softmax ops have one
        return errors.log_softmax(args[0], op.dim)
    if op.op == "softmax":  # exp(shifted) / sum: a few roundings of its own size
        return errors.rounded(value, value.abs(), ("softmax",), args[0].shape[op.dim])
    if op.op == "log":  # log(u) near u = 1 is off by ε · u · (1 / u) = ε, not ε · |log u|
        return errors.rounded(value, value.abs() + 1, graph_rows(op))
    return errors.graph_op(op.op, args, value, op.dim, op.keepdim, graph_rows(op))


def forward_error_bounds(
    spec: ModelSpec, dtype: str, values: dict[str, np.ndarray], batch_seed: int
) -> dict[str, np.ndarray]:
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
        rows = torch.autograd.grad(
            flat,
            errors.perturbations,
            grad_outputs=torch.eye(flat.numel(), dtype=flat.dtype),
            is_grads_batched=True,
            allow_unused=True,
        )
    total = _reach(errors, rows, flat.numel(), dtype)
    for name, part in zip(names, total.split([g.numel() for g in grads]), strict=True):
        bounds[name] = part.numpy().reshape(bounds[name].shape)
    return bounds


def loss_forward_error_bound(
    spec: ModelSpec, dtype: str, values: dict[str, np.ndarray], batch_seed: int
) -> float:
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


def _perturbed_loss(
    spec: ModelSpec, dtype: str, values: dict[str, np.ndarray], batch_seed: int
) -> tuple[dict[str, torch.Tensor], magnitudes.ForwardErrors, torch.Tensor]:
    """The loss at `values` on the batch, in float64, with a zero perturbation added to every
    rounded forward value (`magnitudes.ForwardErrors`); parameters require grad."""
    params = {
        k: torch.from_numpy(np.array(v, dtype=np.float64)).requires_grad_(True)
        for k, v in values.items()
    }
    arrays = cached_batch(spec, dtype, batch_seed)
    x, y = (
        torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a.copy())
        for a in (arrays["x"], arrays["y"])
    )
    errors = magnitudes.ForwardErrors()
    out = (
        graph_forward(spec, params, x, lambda op, args: _error_graph_op(errors, op, args))
        if spec.kind == "graph"
        else layers_forward(spec, errors, params, x)
    )
    return params, errors, apply_loss(spec, errors, out, y)


def _reach(errors: magnitudes.ForwardErrors, rows: Any, count: int, dtype: str) -> torch.Tensor:
    """ε · Σ_i k_i · |row_i| · T_i for `count` results, given each one's derivative row_i
    with respect to perturbation i (leading dim `count`; None: it does not reach them)."""
    total = torch.zeros(count, dtype=torch.float64)
    for row, terms, ops, length in zip(
        rows, errors.terms, errors.rows, errors.lengths, strict=True
    ):
        if row is not None:
            longer = 1 + math.log2(max(length, 1))
            k = sum(max(OPS[r].ulp, 1) * (longer if OPS[r].sums else 1) for r in ops)
            total += k * (row.abs() * terms).reshape(count, -1).sum(1)
    return total.detach() * float(np.finfo(dtype).eps)


# Where no budget holds ------------------------------------------------------------------------


def cancelling_op(spec: ModelSpec, trials: int = 2) -> int | None:
    """The index of the first graph op whose value is exactly zero but for rounding (as in
    mean(x - mean(x))), or None: each library rounds it differently, and whatever it feeds
    inherits noise instead of a value. Found in float64 torch at `trials` random points: an
    add, sub, sum, mean or matmul result below 1e-10 of its operands' size."""
    if spec.kind != "graph":
        return None
    flagged: dict[int, int] = {}
    for trial in range(trials):
        rng = seeded_rng(spec.seed, trial, 0xCA7C)
        values: dict[str, Any] = {
            k: torch.from_numpy(v)
            for k, v in initial_values(spec, "float64", seed=int(rng.integers(2**32))).items()
        }
        values["x"] = torch.from_numpy(rng.standard_normal(spec.input_shape))
        for i, op in enumerate(spec.ops):
            v = apply_graph_op(op, [values[a] for a in op.args])
            values[f"v{i}"] = v
            if op.op in ("add", "sub", "sum", "mean", "matmul"):
                size = max(
                    float(values[a].abs().max()) if values[a].numel() else 0.0 for a in op.args
                )
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
        rng = seeded_rng(spec.seed, trial, 0x2E50)
        values = initial_values(spec, "float32", seed=int(rng.integers(2**32)))
        batch_seed = int(rng.integers(2**32))
        arrays = cached_batch(spec, "float32", batch_seed)
        grads = {}
        for dtype in DTYPES:
            params = {
                k: torch.from_numpy(v.astype(dtype)).requires_grad_(k in used)
                for k, v in values.items()
            }
            x, y = (
                torch.from_numpy(a.astype(dtype) if a.dtype.kind == "f" else a.copy())
                for a in (arrays["x"], arrays["y"])
            )
            out = (
                graph_forward(spec, params, x)
                if spec.kind == "graph"
                else layers_forward(spec, TF, params, x)
            )
            loss = apply_loss(spec, TF, out, y)
            wanted = [k for k in params if k in used]
            grads[dtype] = dict(
                zip(
                    wanted,
                    torch.autograd.grad(loss, [params[k] for k in wanted], allow_unused=True),
                    strict=True,
                )
            )
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


# Scales ---------------------------------------------------------------------------------------

SCALE_FLOOR = 2.0**-6


def gradient_scales(
    spec: ModelSpec,
    dtype: str,
    values: dict[str, np.ndarray],
    batch_seed: int,
    floor: float = SCALE_FLOOR,
) -> dict[str, float]:
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
    params = {
        k: torch.from_numpy(np.array(v, dtype=dtype)).requires_grad_(True)
        for k, v in values.items()
    }
    arrays = cached_batch(spec, dtype, batch_seed)
    x = torch.from_numpy(arrays["x"].copy())
    with torch.enable_grad():
        out = (
            graph_forward(spec, params, x)
            if spec.kind == "graph"
            else layers_forward(spec, TF, params, x)
        )
        if not out.requires_grad:
            return dict.fromkeys(params, 0.0)
        loss = apply_loss(spec, TF, out, torch.from_numpy(arrays["y"].copy()))
        (seed,) = torch.autograd.grad(loss, out, retain_graph=True)
        grads = torch.autograd.grad(
            out, list(params.values()), grad_outputs=seed.abs(), allow_unused=True
        )
    terms = {
        k: 0.0 if g is None or not g.numel() else float(g.abs().max())
        for k, g in zip(params, grads, strict=True)
    }
    least = floor * max(terms.values(), default=0.0)
    return {k: max(v, least) if k in spec.used_parameters() else 0.0 for k, v in terms.items()}


def loss_scale(
    spec: ModelSpec, dtype: str, values: dict[str, np.ndarray], batch_seed: int
) -> float:
    """A magnitude to measure the loss's error against (`reduction_budget(..., scale=)`):
    max(|loss|, sum |d loss / d output * output|), the first-order effect of relative errors
    in the outputs. The second term matters where the loss is much smaller than that: mse with
    outputs close to their targets, "sum" over outputs of both signs. Computed with torch at
    parameter `values`."""
    params = {k: torch.from_numpy(np.array(v, dtype=dtype)) for k, v in values.items()}
    arrays = cached_batch(spec, dtype, batch_seed)
    x = torch.from_numpy(arrays["x"].copy())
    with torch.enable_grad():
        with torch.no_grad():
            out = (
                graph_forward(spec, params, x)
                if spec.kind == "graph"
                else layers_forward(spec, TF, params, x)
            )
        out.requires_grad_(True)
        loss = apply_loss(spec, TF, out, torch.from_numpy(arrays["y"].copy()))
        (grad,) = torch.autograd.grad(loss, out)
    return max(abs(float(loss.detach())), float((grad * out.detach()).abs().sum()))


# Comparing gradients --------------------------------------------------------------------------


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
