"""The size of the terms a model's gradient sums: what its rounding error is measured against.

A gradient is a sum of products of local derivatives, and a local derivative may itself cancel:
tanh's 1 − y² is a difference of two numbers near 1 where tanh saturates, mse's 2(out − y)/n
where the output is close to its target. Two libraries whose tanh differs by one ULP then give
1 − y² that differ by 100 %, though each is within a few ULPs of its terms. So the error budget
of a gradient is taken in ULPs of its TERMS: the same backward pass with every term taken in
absolute value (|W| for a weight, 1 + y² for tanh's 1 − y², (|out| + |y|) for out − y, ...),
seeded with non-negative gradients so nothing cancels. This is the classical running error
bound of backward error analysis: an element's error is at most a few ULPs of this magnitude.

`conformance.models.gradient_magnitudes(spec, dtype, values, batch_seed)` returns, per
parameter, that magnitude (elementwise). torch computes it; the forward values are the real ones.

That bounds the backward pass's own rounding. The forward values it reads carry rounding too,
which cancellation can make large next to the values themselves (gelu's 1 + erf): `ForwardErrors`
below records, for every rounded forward value, what its rounding is bounded by, and
`conformance.models.forward_error_bounds` carries those bounds into the gradient to first order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from torch.nn import grad as nn_grad

# backward(g, inputs, y): one gradient per input, None for an input that takes none
Grads = tuple[torch.Tensor | None, ...]
Backward = Callable[[torch.Tensor, tuple[Any, ...], torch.Tensor], Grads]


class _Magnitude(torch.autograd.Function):
    """y = forward(*inputs); backward: the magnitude rule (non-negative gradients in, out)."""

    @staticmethod
    def forward(
        ctx: Any, forward: Callable[..., torch.Tensor], backward: Backward, *inputs: Any
    ) -> torch.Tensor:
        ctx.backward, ctx.inputs = (
            backward,
            tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in inputs),
        )
        out = ctx.out = forward(*ctx.inputs)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        grads = ctx.backward(g, ctx.inputs, ctx.out)
        return (
            None,
            None,
            *(
                None if gr is None or not isinstance(x, torch.Tensor) else gr.sum_to_size(x.shape)
                for gr, x in zip(grads, ctx.inputs, strict=True)
            ),
        )


def with_rule(
    forward: Callable[..., torch.Tensor], backward: Backward, *inputs: Any
) -> torch.Tensor:
    """forward(*inputs), whose backward pass is the magnitude rule `backward(g, inputs, y)`:
    non-negative gradients in, one per input out (None for an input that takes none)."""
    # torch's Function.apply is unannotated; _Magnitude.forward returns a tensor
    y: torch.Tensor = _Magnitude.apply(forward, backward, *inputs)  # type: ignore[no-untyped-call]
    return y


def _sigmoid_terms(y: torch.Tensor) -> torch.Tensor:
    return y + y * y  # σ' = σ − σ²


# Activations: y = f(x); backward g ↦ g · (the magnitude of f's derivative's terms).
_ACTIVATIONS: dict[
    str,
    tuple[
        Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ],
] = {
    "relu": (TF.relu, lambda x, y: (x > 0).to(x.dtype)),
    "leaky_relu": (
        lambda x: TF.leaky_relu(x, 0.01),
        lambda x, y: torch.where(x > 0, 1.0, 0.01).to(x.dtype),
    ),
    "tanh": (torch.tanh, lambda x, y: 1 + y * y),  # 1 − y²
    "sigmoid": (torch.sigmoid, lambda x, y: _sigmoid_terms(y)),
    "exp": (torch.exp, lambda x, y: y),
    "abs": (torch.abs, lambda x, y: torch.ones_like(x)),
    "gelu": (
        TF.gelu,
        lambda x, y: (
            0.5 * (1 + torch.erf(x.abs() / math.sqrt(2)))
            + x.abs() * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        ),
    ),  # Φ + xφ
    "gelu_tanh": (lambda x: TF.gelu(x, approximate="tanh"), lambda x, y: _gelu_tanh_terms(x)),
    "silu": (TF.silu, lambda x, y: _silu_terms(x)),
    "softplus": (lambda x: TF.softplus(x, 1.0, 20.0), lambda x, y: torch.sigmoid(x)),
}


def _gelu_tanh_terms(x: torch.Tensor) -> torch.Tensor:
    k, c = math.sqrt(2 / math.pi), 0.044715
    t = torch.tanh(k * (x + c * x**3))
    return 0.5 * (1 + t.abs()) + 0.5 * x.abs() * (1 + t * t) * k * (1 + 3 * c * x * x)


def _silu_terms(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s + x.abs() * (s + s * s)  # silu' = σ + xσ − xσ²


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    forward, terms = _ACTIVATIONS[name]
    return with_rule(forward, lambda g, inputs, y: (g * terms(inputs[0], y),), x)


def elu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """elu(x, alpha), whose derivative y + alpha (x <= 0) is taken as |y| + alpha."""
    return with_rule(
        lambda x: TF.elu(x, alpha),
        lambda g, i, y: (g * torch.where(i[0] > 0, 1.0, y.abs() + alpha),),
        x,
    )


def _linear_backward(g: torch.Tensor, inputs: tuple[Any, ...], y: torch.Tensor) -> Grads:
    x, w, b = inputs
    g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
    return (g @ w.abs(), g2.T @ x2.abs(), None if b is None else g2.sum(0))


def _conv_backward(dims: int, stride: int, padding: int) -> Backward:
    # torch.nn.grad's functions: (input or input_size, weight or weight_size, grad_output, ...)
    grad_input: Callable[..., torch.Tensor] = (
        nn_grad.conv1d_input if dims == 1 else nn_grad.conv2d_input
    )
    grad_weight: Callable[..., torch.Tensor] = (
        nn_grad.conv1d_weight if dims == 1 else nn_grad.conv2d_weight
    )

    def backward(g: torch.Tensor, inputs: tuple[Any, ...], y: torch.Tensor) -> Grads:
        x, w, b = inputs
        reduce = (0, 2) if dims == 1 else (0, 2, 3)
        # The padding as explicit zeros: each padding tap is a term |g| · 0, which is
        # inf · 0 = NaN (overflowed) where the gradient overflowed. The computed gradient is
        # then NaN or 0 by kernel: torch's float32 kernel for batches of 2 or more skips the
        # taps, its other kernels and refimpl multiply them.
        padded = TF.pad(x.abs(), (padding,) * (2 * dims))
        return (
            grad_input(x.shape, w.abs(), g, stride=stride, padding=padding),
            grad_weight(padded, w.shape, g, stride=stride, padding=0),
            None if b is None else g.sum(reduce),
        )

    return backward


def _layer_norm_backward(g: torch.Tensor, inputs: tuple[Any, ...], y: torch.Tensor) -> Grads:
    x, w, b = inputs
    mean = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5)
    xhat = (x - mean) * rstd
    gh = g * (w.abs() if w is not None else 1)
    dx = rstd * (
        gh + gh.mean(-1, keepdim=True) + xhat.abs() * (gh * xhat.abs()).mean(-1, keepdim=True)
    )
    return (dx, None if w is None else (g * xhat.abs()), None if b is None else g)


class MagnitudeFunctional:
    """The functional API conformance.models.forward uses, with magnitude backward rules."""

    wraps_activations = True  # the forward calls F.tanh / F.sigmoid, not Tensor.tanh

    def linear(self, x: Any, w: Any, b: Any = None) -> Any:
        return with_rule(TF.linear, _linear_backward, x, w, b)

    def conv1d(self, x: Any, w: Any, b: Any = None, stride: int = 1, padding: int = 0) -> Any:
        return with_rule(
            lambda x, w, b: TF.conv1d(x, w, b, stride=stride, padding=padding),
            _conv_backward(1, stride, padding),
            x,
            w,
            b,
        )

    def conv2d(self, x: Any, w: Any, b: Any = None, stride: int = 1, padding: int = 0) -> Any:
        return with_rule(
            lambda x, w, b: TF.conv2d(x, w, b, stride=stride, padding=padding),
            _conv_backward(2, stride, padding),
            x,
            w,
            b,
        )

    def layer_norm(self, x: Any, shape: Any, w: Any = None, b: Any = None) -> Any:
        return with_rule(
            lambda x, w, b: TF.layer_norm(x, shape, w, b), _layer_norm_backward, x, w, b
        )

    # no cancellation in these backward passes (sums of non-negative terms)
    embedding = staticmethod(TF.embedding)
    max_pool2d = staticmethod(TF.max_pool2d)
    avg_pool2d = staticmethod(TF.avg_pool2d)

    def relu(self, x: Any) -> Any:
        return activation("relu", x)

    def leaky_relu(self, x: Any, slope: float = 0.01) -> Any:
        return activation("leaky_relu", x)

    def gelu(self, x: Any, approximate: str = "none") -> Any:
        return activation("gelu_tanh" if approximate == "tanh" else "gelu", x)

    def elu(self, x: Any, alpha: float = 1.0) -> Any:
        return elu(x, alpha)

    def silu(self, x: Any) -> Any:
        return activation("silu", x)

    def softplus(self, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
        return activation("softplus", x)

    def tanh(self, x: Any) -> Any:
        return activation("tanh", x)

    def sigmoid(self, x: Any) -> Any:
        return activation("sigmoid", x)


def graph_op(name: str, args: list[Any], exponent: float = 2.0, alpha: float = 1.0) -> Any | None:
    """Magnitude versions of the graph ops (see models.GraphOp) whose backward can cancel;
    None: the standard op's backward is already a sum of non-negative terms (add, reductions),
    or conformance.models.scales has the op's rule."""
    if name == "elu":
        return elu(args[0], alpha)
    if name in _ACTIVATIONS:
        return activation(name, args[0])
    if name == "sub":
        return with_rule(torch.sub, lambda g, i, y: (g, g), *args)
    if name == "mul":
        return with_rule(torch.mul, lambda g, i, y: (g * i[1].abs(), g * i[0].abs()), *args)
    if name == "div":  # a / (b² + 1)
        return with_rule(
            lambda a, b: a / (b * b + 1),
            lambda g, i, y: (
                g / (i[1] * i[1] + 1),
                g * i[0].abs() * 2 * i[1].abs() / (i[1] * i[1] + 1) ** 2,
            ),
            *args,
        )
    if name == "matmul":
        return with_rule(torch.matmul, _matmul_backward, *args)
    if name == "pow":
        return with_rule(
            lambda x: x**exponent,
            lambda g, i, y: (g * abs(exponent) * i[0].abs() ** (exponent - 1),),
            args[0],
        )
    return None


def _matmul_backward(g: torch.Tensor, inputs: tuple[Any, ...], y: torch.Tensor) -> Grads:
    a, b = inputs
    a1, b1 = a.abs(), b.abs()
    if a.ndim == 1 and b.ndim == 1:
        return g * b1, g * a1
    if a.ndim == 1:
        return b1 @ g, torch.outer(a1, g) if b.ndim == 2 else a1[:, None] * g[..., None, :]
    if b.ndim == 1:
        return torch.outer(g, b1) if a.ndim == 2 else g[..., None] * b1, (
            a1 * g[..., None]
        ).reshape(-1, a.shape[-1]).sum(0)
    return g @ b1.transpose(-1, -2), a1.transpose(-1, -2) @ g


def loss_seed(
    loss: str,
    reduction: str,
    out: torch.Tensor,
    y: torch.Tensor,
    standard: torch.Tensor,
    loss_param: float,
) -> torch.Tensor:
    """The magnitude of d loss / d out's terms (non-negative), from the real gradient."""
    n = 1.0
    if reduction == "mean":
        n = out.shape[0] if loss in ("cross_entropy", "nll") else out.numel()
    if loss == "mse":
        return 2 * (out.abs() + y.abs()) / n  # 2(out − y)/n
    if loss in ("smooth_l1", "huber"):
        slope = 1 / loss_param if loss == "smooth_l1" else 1.0
        return standard.abs() + slope * (out.abs() + y.abs()) / n
    if loss in ("cross_entropy", "nll"):
        return standard.abs() + (torch.softmax(out, 1) + 1) / n  # p − target
    if loss == "bce_with_logits":
        return (torch.sigmoid(out) + y.abs()) / n  # σ(out) − y
    return standard.abs()  # l1 (±1/n), sum, mean


# Forward errors --------------------------------------------------------------------------------


def _gelu_terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * x.abs() * (1 + torch.erf(x / math.sqrt(2)).abs())  # x · 0.5 · (1 + erf)


def _gelu_tanh_sum_terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k, c = math.sqrt(2 / math.pi), 0.044715
    return 0.5 * x.abs() * (1 + torch.tanh(k * (x + c * x**3)).abs())  # 0.5x · (1 + tanh)


def _own_size(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y.abs()


# What each activation's result is rounded against: its own size where the formula is accurate
# relative to its result (exp, tanh, 1 / (1 + exp(-x)), expm1, log1p), the terms of the sum
# 1 + erf or 1 + tanh in gelu (which cancels where x is large and negative); None where the
# result is exact (relu, abs).
_ROUNDING_TERMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] = {
    "relu": None,
    "abs": None,
    "leaky_relu": _own_size,
    "tanh": _own_size,
    "sigmoid": _own_size,
    "exp": _own_size,
    "elu": _own_size,
    "silu": _own_size,
    "softplus": _own_size,
    "gelu": _gelu_terms,
    "gelu_tanh": _gelu_tanh_sum_terms,
}


class ForwardErrors:
    """The functional API conformance.models.forward uses, where every rounded result v_i gets a
    perturbation ε_i (a zero tensor that requires grad) added, and records the magnitude T_i
    of the terms v_i rounds and the `refimpl.ops.OPS` rows that compute it.

    Why: the backward pass reads forward values, and a forward value can be far less accurate
    than its own size. gelu(x) = x · 0.5 · (1 + erf(x/√2)) at x = -3.8 is 1e-4 of the terms of
    1 + erf, so both libraries compute it to about 1 ULP of |x| (what tests/test_ops.py checks:
    OPS' budgets are in ULPs of the terms) but only to 10⁴ ULPs of itself, and a weight's
    gradient, upstream gradient × gelu(x), inherits those 10⁴ ULPs. The magnitude backward
    pass above bounds the backward pass's own rounding, in ULPs of |gelu(x)| × |upstream|,
    and cannot see that.

    The bound: the gradient g is a function of the forward values v_i it reads, directly (a
    weight's gradient is upstream × activation, softmax − onehot is exp(log_softmax)) and
    through every value downstream of them. Given the same parameters and batch, the two
    libraries' results of op i differ by its own rounding δ_i on top of what reaches it from
    upstream, with |δ_i| <= k_i · ulp(T_i) <= k_i · ε · T_i: k_i is the op's OPS budget (at
    least 1: a correctly rounded op may round the other way once its inputs differ), times
    1 + log2 n where each result sums n terms that the libraries may add in another order
    (as in `ModelSpec.grad_ulp_budget`), ε the dtype's machine epsilon. To first order, then,

        |Δg| <= ε · Σ_i k_i · |∂g/∂v_i| · T_i     (elementwise over g),

    where ∂g/∂v_i is the derivative with the ε_i's as inputs, so it counts every path from
    v_i to g. `conformance.models.forward_error_bounds` computes it exactly (a Jacobian, by
    double backward) in float64. The perturbations change no value (v + 0 = v). The bound is
    first order: it holds where the model is smooth at the scale of the rounding, not where a
    rounding flips a branch (relu at 0, a max between ties).
    """

    wraps_activations = True

    def __init__(self) -> None:
        self.perturbations: list[torch.Tensor] = []
        self.terms: list[torch.Tensor] = []
        self.rows: list[tuple[str, ...]] = []
        self.lengths: list[int] = []

    def rounded(
        self,
        value: torch.Tensor,
        terms: torch.Tensor | None,
        rows: tuple[str, ...],
        length: int = 1,
    ) -> torch.Tensor:
        """value + ε; records T = terms (None: value is exact), the OPS rows that compute
        value and how many terms each of its elements sums."""
        if terms is None:
            return value
        epsilon = torch.zeros_like(value, requires_grad=True)
        self.perturbations.append(epsilon)
        self.terms.append(terms.detach().expand_as(value))
        self.rows.append(rows)
        self.lengths.append(length)
        return value + epsilon

    # sums of products: rounded against the sum of |products|
    def linear(self, x: Any, w: Any, b: Any = None) -> Any:
        return self.rounded(
            TF.linear(x, w, b),
            TF.linear(x.abs(), w.abs(), None if b is None else b.abs()),
            ("linear",),
            w.shape[1] + (b is not None),
        )

    def conv1d(self, x: Any, w: Any, b: Any = None, stride: int = 1, padding: int = 0) -> Any:
        return self.rounded(
            TF.conv1d(x, w, b, stride=stride, padding=padding),
            TF.conv1d(
                x.abs(), w.abs(), None if b is None else b.abs(), stride=stride, padding=padding
            ),
            ("convolution",),
            w[0].numel() + (b is not None),
        )

    def conv2d(self, x: Any, w: Any, b: Any = None, stride: int = 1, padding: int = 0) -> Any:
        return self.rounded(
            TF.conv2d(x, w, b, stride=stride, padding=padding),
            TF.conv2d(
                x.abs(), w.abs(), None if b is None else b.abs(), stride=stride, padding=padding
            ),
            ("convolution",),
            w[0].numel() + (b is not None),
        )

    def layer_norm(self, x: Any, shape: Any, w: Any = None, b: Any = None) -> Any:
        # (x - mean) * rstd * w + b: x - mean cancels, against |x| + mean |x| (the mean's own
        # error, and rstd's through the variance), which rstd and w then scale
        rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        terms = (x.abs() + x.abs().mean(-1, keepdim=True)) * rstd
        terms = terms * (1 if w is None else w.abs()) + (0 if b is None else b.abs())
        return self.rounded(TF.layer_norm(x, shape, w, b), terms, ("layer_norm",), x.shape[-1])

    def avg_pool2d(self, x: Any, kernel: int) -> Any:
        return self.rounded(
            TF.avg_pool2d(x, kernel),
            TF.avg_pool2d(x.abs(), kernel),
            ("avg_pool2d",),
            kernel * kernel,
        )

    # exact: a gather, a comparison
    embedding = staticmethod(TF.embedding)
    max_pool2d = staticmethod(TF.max_pool2d)

    def activation(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = _ROUNDING_TERMS[name]
        gelu = name in ("gelu", "gelu_tanh")  # sums 1 and erf (or tanh)
        return self.rounded(
            y,
            None if terms is None else terms(x, y),
            ("gelu",) if gelu else (name,),
            2 if gelu else 1,
        )

    def relu(self, x: Any) -> Any:
        return self.activation("relu", x, TF.relu(x))

    def leaky_relu(self, x: Any, slope: float = 0.01) -> Any:
        return self.activation("leaky_relu", x, TF.leaky_relu(x, slope))

    def gelu(self, x: Any, approximate: str = "none") -> Any:
        return self.activation(
            "gelu_tanh" if approximate == "tanh" else "gelu", x, TF.gelu(x, approximate=approximate)
        )

    def elu(self, x: Any, alpha: float = 1.0) -> Any:
        return self.activation("elu", x, TF.elu(x, alpha))

    def silu(self, x: Any) -> Any:
        return self.activation("silu", x, TF.silu(x))

    def softplus(self, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
        return self.activation("softplus", x, TF.softplus(x, beta, threshold))

    def tanh(self, x: Any) -> Any:
        return self.activation("tanh", x, torch.tanh(x))

    def sigmoid(self, x: Any) -> Any:
        return self.activation("sigmoid", x, torch.sigmoid(x))

    # Losses: of their forward values, only log_softmax's is read by a backward pass (as
    # exp(log p) = p); the others' gradients are computed from the output and target alone.
    def log_softmax(self, x: Any, dim: int) -> Any:
        shifted = x - x.amax(dim, keepdim=True).detach()
        terms = shifted.abs() + torch.logsumexp(shifted, dim, keepdim=True)  # shifted - lse
        return self.rounded(TF.log_softmax(x, dim), terms, ("log_softmax",), x.shape[dim])

    def cross_entropy(
        self, x: Any, y: Any, reduction: str = "mean", label_smoothing: float = 0.0
    ) -> Any:
        """torch's cross_entropy, spelled out around the log_softmax it runs."""
        log_p = self.log_softmax(x, 1)
        loss = TF.nll_loss(log_p, y, reduction=reduction)
        if label_smoothing == 0:
            return loss
        smooth = -log_p.mean(1)
        smooth = smooth.mean() if reduction == "mean" else smooth.sum()
        return (1 - label_smoothing) * loss + label_smoothing * smooth

    def graph_op(
        self,
        name: str,
        args: list[torch.Tensor],
        value: torch.Tensor,
        dim: int | None,
        keepdim: bool,
        rows: tuple[str, ...],
    ) -> torch.Tensor:
        """value, graph op `name` of args (see models.GraphOp), perturbed."""
        if name in ("relu", "abs", "amax"):
            return value
        length = 1
        if name in ("add", "sub"):
            terms = args[0].abs() + args[1].abs()
        elif name == "matmul":
            terms, length = args[0].abs() @ args[1].abs(), args[0].shape[-1]
        elif name in ("sum", "mean"):
            reduce = getattr(args[0].abs(), name)
            terms = (reduce() if dim is None else reduce(dim, keepdim)).reshape(value.shape)
            length = args[0].numel() // max(value.numel(), 1)
        else:  # mul, div, tanh, exp, sigmoid, pow: a few roundings relative to the result
            terms = value.abs()
        return self.rounded(value, terms, rows, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(TF, name)  # nll_loss and the losses whose results no backward reads
