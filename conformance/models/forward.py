"""The forward pass both libraries run through their functional APIs (refimpl mirrors
torch.nn.functional): a layer stack, a graph's ops, the loss; and the kinks (`spec.KINKS`)
each forward hits, judged on the values that library computed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF

import refimpl
import refimpl.functional as RF
from conformance.models.spec import (
    JOIN_OPS,
    L1_LIKE,
    SOFTMAX_OPS,
    GraphOp,
    ModelSpec,
    adds_bias,
    live_ops,
)


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
    if op not in ("relu", "leaky_relu", "elu", "max_pool2d") or (
        op != "max_pool2d" and not adds_bias(spec, i - 1)
    ):
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
    windows = a[:, :, : rows // k * k, : cols // k * k].reshape(n, c, rows // k, k, cols // k, k)
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


def loss_kinks(spec: ModelSpec, out: Any, y: Any, hits: set[str]) -> None:
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
    """Activation `name` (see ACTIVATIONS) of h through functional API `F`."""
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


def layers_forward(
    spec: ModelSpec, F: Any, params: dict[str, Any], h: Any, hits: set[str] | None = None
) -> Any:
    """The output of a layered model on input h, through functional API `F` (torch's,
    refimpl's or one of conformance.magnitudes'); the kinks its layers hit are added to
    `hits`."""
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


def graph_forward(
    spec: ModelSpec,
    params: dict[str, Any],
    x: Any,
    apply: Callable[[GraphOp, list[Any]], Any] | None = None,
    hits: set[str] | None = None,
) -> Any:
    """The graph's output; `apply(op, args)` computes each op (default `apply_graph_op`);
    the kinks its ops hit are added to `hits`."""
    values = {"x": x, **params}
    v = x
    live = live_ops(spec) if hits is not None else frozenset()
    for i, op in enumerate(spec.ops):
        args = [values[a] for a in op.args]
        if hits is not None and i in live:
            _graph_kinks(op, args, hits)
        v = apply_graph_op(op, args) if apply is None else apply(op, args)
        values[f"v{i}"] = v
    return v


def apply_graph_op(op: GraphOp, args: list[Any]) -> Any:
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
        return a**op.exponent
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


def apply_loss(spec: ModelSpec, F: Any, out: Any, y: Any) -> Any:
    """The spec's loss of output `out` and targets `y`, through functional API `F`."""
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
