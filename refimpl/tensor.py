"""`Tensor`: a numpy array plus the autograd bookkeeping torch keeps beside it.

Every differentiable operation goes through `apply`, which casts the inputs to torch's result
type, runs the row's forward from `refimpl.ops.OPS` and, when grad mode is on and an input
requires grad, records a `Node` so that `backward()` can run the row's derivatives.
"""

from __future__ import annotations

import builtins
import contextvars
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, cast, overload

import numpy as np
from numpy.lib import NumpyVersion

from refimpl import autograd
from refimpl.autograd import Node, _grad_mode
from refimpl.ops import OPS, Op

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int64 = np.dtype(np.int64)
bool_ = np.dtype(np.bool_)

Scalar = builtins.bool | int | float


_CATEGORY = {"b": 0, "i": 1, "u": 1, "f": 2}


def _category(dtype: np.dtype) -> int:
    return _CATEGORY[dtype.kind]


def _promote(a: np.dtype | None, b: np.dtype | None) -> np.dtype | None:
    """torch.promote_types restricted to bool < int64 < float32 < float64."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b, key=lambda d: (_category(d), d.itemsize))


def result_type(*operands: Any) -> np.dtype:
    """torch's result type: dimensioned tensors outrank 0-dim ones, which outrank Python scalars,
    unless a lower-ranked operand is of a higher category (a float scalar makes an int tensor
    float32, the default dtype)."""
    # Fast path: dimensioned floating tensors of one dtype, maybe with Python scalars.
    common = None
    for x in operands:
        if isinstance(x, Tensor):
            if not x.data.ndim or (common is not None and common != x.data.dtype):
                break
            common = x.data.dtype
        elif not isinstance(x, (int, float)):
            break
    else:
        if common is not None and common.kind == "f":
            return common
    dim_result = zero_result = wrapped_result = None
    for x in operands:
        if isinstance(x, Tensor):
            if x.data.ndim:
                dim_result = _promote(dim_result, x.data.dtype)
            else:
                zero_result = _promote(zero_result, x.data.dtype)
        elif isinstance(x, builtins.bool):
            wrapped_result = _promote(wrapped_result, bool_)
        elif isinstance(x, int):
            wrapped_result = _promote(wrapped_result, int64)
        elif isinstance(x, float):
            wrapped_result = _promote(wrapped_result, float32)

    def combine(higher: np.dtype | None, lower: np.dtype | None) -> np.dtype | None:
        if higher is None:
            return lower
        if lower is None or _category(higher) == 2:
            return higher
        if higher == bool_ or _category(lower) == 2:
            return _promote(higher, lower)
        return higher

    dtype = combine(dim_result, combine(zero_result, wrapped_result))
    assert dtype is not None, "result_type needs at least one operand"
    return dtype


def _as_array(x: Any, dtype: np.dtype) -> Any:
    if isinstance(x, Tensor):
        return x.data if x.data.dtype == dtype else x.data.astype(dtype)
    return x


class _QuietContext(threading.local):
    """Per thread, a copy of the context in which numpy ignores every floating-point error.
    numpy >= 2 keeps its error settings in context variables (documented under "Floating point
    error handling"), so `np.seterr` run inside a `contextvars.Context` changes that context
    alone. A context can be entered by one thread at a time, hence one per thread. The forwards
    read no other context variable, so the copy's other values (those of the thread's first op)
    do not matter."""

    def __init__(self) -> None:
        self.context = contextvars.copy_context()
        self.context.run(np.seterr, all="ignore")


# Before numpy 2 the settings were per thread, not per context: seterr would change the thread's.
_quiet = _QuietContext() if NumpyVersion(np.__version__) >= "2.0.0" else None


def _quietly(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`function(*args, **kwargs)` as under `np.errstate(all="ignore")`: torch never warns about
    inf or NaN. np.errstate rebuilds its settings at each entry (~1 µs, as long as a small op
    takes: with it a training iteration of bench_autograd's 4-8-3 MLP took ~10 µs more CPU, ~11%
    of its ~89 µs; this context is built once per thread and entered per call, which costs what
    setting numpy's private context variable did). `function` (a row's numpy forward) must not
    call `_quietly` again: a context cannot be entered twice."""
    if _quiet is None:
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)
    return _quiet.context.run(function, *args, **kwargs)


def apply(op: Op, *inputs: Any, **params: Any) -> Tensor:
    """Runs one table row on tensors (and Python scalars) and records it for backward."""
    if op.promotes:
        dtype = result_type(*inputs)
        arrays = tuple([_as_array(x, dtype) for x in inputs])
    else:
        arrays = tuple([x.data if isinstance(x, Tensor) else x for x in inputs])
    try:
        output = np.asarray(_quietly(op.forward, arrays, params))
    except ValueError as error:
        raise _broadcast_error(arrays) or error from None
    result = Tensor._wrap(output)
    if _grad_mode.enabled:
        needs = tuple([x if isinstance(x, Tensor) and x.requires_grad else None for x in inputs])
        if any([t is not None for t in needs]):
            result.requires_grad = True
            result.grad_fn = Node(op, needs, arrays, output, params)
    return result


def _broadcast_error(arrays: tuple[Any, ...]) -> RuntimeError | None:
    """torch's message for operands that do not broadcast, or None if they do."""
    shapes = [a.shape for a in arrays if isinstance(a, np.ndarray)]
    if len(shapes) < 2:
        return None
    a, b = shapes[0], shapes[1]
    for i in range(1, min(len(a), len(b)) + 1):
        if a[-i] != b[-i] and 1 not in (a[-i], b[-i]):
            return RuntimeError(
                f"The size of tensor a ({a[-i]}) must match the size of tensor b ({b[-i]}) "
                f"at non-singleton dimension {max(len(a), len(b)) - i}"
            )
    return None


def _check_requires_grad(dtype: np.dtype, factory: builtins.bool = False) -> None:
    # torch words it differently for factories (`tensor(..., requires_grad=True)`) and for
    # `requires_grad_()`.
    if dtype.kind != "f":
        raise RuntimeError(
            "Only Tensors of floating point and complex dtype can require gradients"
            if factory
            else "only Tensors of floating point dtype can require gradients"
        )


class Tensor:
    """An n-dimensional array that can record the operations applied to it."""

    __slots__ = ("__weakref__", "_version", "data", "grad", "grad_fn", "requires_grad")
    __array_ufunc__ = None  # numpy defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: builtins.bool = False) -> None:
        self.data = _to_array(data, None)
        self.grad: Tensor | None = None
        self.grad_fn: Node | None = None
        self._version = 0
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array: np.ndarray) -> Tensor:
        t = object.__new__(cls)
        t.data, t.grad, t.grad_fn, t._version, t.requires_grad = array, None, None, 0, False
        return t

    # Attributes ------------------------------------------------------------------------------
    @property
    def is_leaf(self) -> builtins.bool:
        return self.grad_fn is None

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def dim(self) -> int:
        return self.data.ndim

    def size(self, dim: int | None = None) -> Any:
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        length: int = self.data.shape[0]
        return length

    def item(self) -> Scalar:
        if self.data.size != 1:
            raise RuntimeError(
                f"a Tensor with {self.data.size} elements cannot be converted to Scalar"
            )
        value: Scalar = self.data.reshape(()).item()
        return value

    def tolist(self) -> Any:
        return self.data.tolist()

    def numpy(self) -> np.ndarray:
        if self.requires_grad:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. "
                "Use tensor.detach().numpy() instead."
            )
        return self.data

    def __float__(self) -> float:
        return float(self._python_scalar())

    def __int__(self) -> int:
        return int(self._python_scalar())

    def _python_scalar(self) -> Scalar:
        if self.data.size != 1:  # torch's message here is not item()'s
            raise ValueError("only one element tensors can be converted to Python scalars")
        return self.item()

    def __bool__(self) -> builtins.bool:
        if self.data.size != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return builtins.bool(self.data.reshape(()).item())

    def __format__(self, format_spec: str) -> str:
        # torch formats a plain 0-dim tensor as its Python number (as in f"{lr}").
        if self.data.ndim == 0 and type(self) is Tensor:
            return self.item().__format__(format_spec)
        return object.__format__(self, format_spec)

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self) -> Iterator[Tensor]:
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = ""
        if self.data.dtype not in (float32, int64, bool_):
            extra += f", dtype=refimpl.{self.data.dtype}"
        if self.grad_fn is not None:
            extra += f", grad_fn=<{self.grad_fn.name()}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # Autograd --------------------------------------------------------------------------------
    def backward(
        self,
        gradient: Tensor | None = None,
        retain_graph: builtins.bool | None = None,
        create_graph: builtins.bool = False,
    ) -> None:
        if create_graph:
            raise NotImplementedError("refimpl does not record higher-order gradients")
        seed = gradient.data if isinstance(gradient, Tensor) else gradient
        with np.errstate(all="ignore"):
            for leaf, grad, owned in autograd.run_backward(self, seed, retain_graph):
                _accumulate(cast(Tensor, leaf), grad, owned)  # a refimpl graph holds Tensors

    def requires_grad_(self, requires_grad: builtins.bool = True) -> Tensor:
        if self.grad_fn is not None:
            if not requires_grad:
                raise RuntimeError(
                    "you can only change requires_grad flags of leaf variables. If you want to "
                    "use a computed variable in a subgraph that doesn't require differentiation "
                    "use var_no_grad = var.detach()."
                )
            return self
        if requires_grad:
            _check_requires_grad(self.data.dtype)
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self.grad_fn is not None:
            self.grad_fn.retained = _RetainGrad(self)

    @property
    def retains_grad(self) -> builtins.bool:
        return self.grad_fn is not None and self.grad_fn.retained is not None

    def detach(self) -> Tensor:
        return Tensor._wrap(self.data)

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self.requires_grad = False
        return self

    def clone(self) -> Tensor:
        return apply(OPS["clone"], self)

    # In-place operations ---------------------------------------------------------------------
    def _check_inplace(self) -> None:
        if _grad_mode.enabled and self.requires_grad and self.grad_fn is None:
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation."
            )

    def _inplace(self, result: Tensor) -> Tensor:
        """Writes `result` into this tensor. A non-leaf under grad mode takes the result's
        history and a fresh array (the old one may be saved by the graph)."""
        if result.grad_fn is not None:
            self.data = result.data.astype(self.data.dtype, copy=False)
            if self.grad_fn is not None and self.grad_fn.retained is not None:
                # retain_grad follows the tensor to its new version, as in torch.
                result.grad_fn.retained, self.grad_fn.retained = self.grad_fn.retained, None
            self.grad_fn, self.requires_grad = result.grad_fn, True
        else:
            np.copyto(self.data, result.data, casting="same_kind")
        self._version += 1
        return self

    def _inplace_op(self, name: str, other: Any) -> Tensor:
        self._check_inplace()
        other = other if isinstance(other, (Tensor, builtins.bool, int, float)) else tensor(other)
        dtype = result_type(self, other)
        if self.data.dtype.kind != "f" and dtype.kind == "f":
            raise RuntimeError(
                f"result type Float can't be cast to the desired output type "
                f"{_torch_type_name(self.data.dtype)}"
            )
        op = OPS[name]
        records = _grad_mode.enabled and (
            self.requires_grad or (isinstance(other, Tensor) and other.requires_grad)
        )
        operand = _as_array(other, dtype)
        if (
            not records
            and isinstance(op.forward, np.ufunc)
            and dtype == self.data.dtype
            and getattr(operand, "shape", ()) in ((), self.data.shape)
        ):
            # Nothing to record (an optimizer step under no_grad): like torch's in-place kernel,
            # the same ufunc writes straight into this tensor's array, with no temporary.
            _quietly(op.forward, (self.data, operand), {"out": self.data})
            self._version += 1
            return self
        return self._inplace(apply(op, self, other))

    def add_(self, other: Any, *, alpha: Scalar = 1) -> Tensor:
        return self._inplace_op("add", other if alpha == 1 else other * alpha)

    def sub_(self, other: Any, *, alpha: Scalar = 1) -> Tensor:
        _check_sub(self, other)
        return self._inplace_op("sub", other if alpha == 1 else other * alpha)

    def mul_(self, other: Any) -> Tensor:
        return self._inplace_op("mul", other)

    def div_(self, other: Any) -> Tensor:
        return self._inplace_op("div", other)

    # `p -= lr * g` updates p in place, as in torch (without these Python would rebind p).
    def __iadd__(self, other: Any) -> Tensor:
        return self.add_(other)

    def __isub__(self, other: Any) -> Tensor:
        return self.sub_(other)

    def __imul__(self, other: Any) -> Tensor:
        return self.mul_(other)

    def __itruediv__(self, other: Any) -> Tensor:
        return self.div_(other)

    def zero_(self) -> Tensor:
        self._check_inplace()
        if self.grad_fn is not None and _grad_mode.enabled:
            return self._inplace(self * 0)
        self.data[...] = 0
        self._version += 1
        return self

    def fill_(self, value: Scalar) -> Tensor:
        self._check_inplace()
        self.data[...] = value
        self._version += 1
        return self

    def copy_(self, src: Any) -> Tensor:
        self._check_inplace()
        source = src.data if isinstance(src, Tensor) else np.asarray(src)
        np.copyto(self.data, np.broadcast_to(source, self.data.shape), casting="unsafe")
        self._version += 1
        return self

    # Arithmetic ------------------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return apply(OPS["add"], self, other)

    def __radd__(self, other: Any) -> Tensor:
        return apply(OPS["add"], other, self)

    def __sub__(self, other: Any) -> Tensor:
        _check_sub(self, other)
        return apply(OPS["sub"], self, other)

    def __rsub__(self, other: Any) -> Tensor:
        _check_sub(other, self)
        return apply(OPS["sub"], other, self)

    def __mul__(self, other: Any) -> Tensor:
        return apply(OPS["mul"], self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return apply(OPS["mul"], other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _true_divide(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _true_divide(other, self)

    def __neg__(self) -> Tensor:
        return apply(OPS["neg"], self)

    def __pow__(self, exponent: Any) -> Tensor:
        return pow(self, exponent)

    def __rpow__(self, base: Any) -> Tensor:
        return pow(base, self)

    def __matmul__(self, other: Tensor) -> Tensor:
        return matmul(self, other)

    def __rmatmul__(self, other: Tensor) -> Tensor:
        return matmul(other, self)

    def _compare(self, other: Any, ufunc: Any) -> Tensor:
        dtype = result_type(self, other)
        return Tensor._wrap(np.asarray(ufunc(_as_array(self, dtype), _as_array(other, dtype))))

    # == and != compare elementwise and return a Tensor, as torch's do, not object's bool
    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._compare(other, np.equal)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._compare(other, np.not_equal)

    def __lt__(self, other: Any) -> Tensor:
        return self._compare(other, np.less)

    def __le__(self, other: Any) -> Tensor:
        return self._compare(other, np.less_equal)

    def __gt__(self, other: Any) -> Tensor:
        return self._compare(other, np.greater)

    def __ge__(self, other: Any) -> Tensor:
        return self._compare(other, np.greater_equal)

    def __invert__(self) -> Tensor:
        if self.data.dtype != bool_:
            return Tensor._wrap(~self.data)
        return Tensor._wrap(np.logical_not(self.data))

    def __and__(self, other: Tensor) -> Tensor:
        return Tensor._wrap(self.data & _data(other))

    def __or__(self, other: Tensor) -> Tensor:
        return Tensor._wrap(self.data | _data(other))

    # Methods mirroring torch functions -------------------------------------------------------
    def add(self, other: Any) -> Tensor:
        total: Tensor = self + other
        return total

    def sub(self, other: Any) -> Tensor:
        difference: Tensor = self - other
        return difference

    def mul(self, other: Any) -> Tensor:
        product: Tensor = self * other
        return product

    def div(self, other: Any) -> Tensor:
        quotient: Tensor = self / other
        return quotient

    def neg(self) -> Tensor:
        return -self

    def pow(self, exponent: Any) -> Tensor:
        return pow(self, exponent)

    def matmul(self, other: Tensor) -> Tensor:
        return matmul(self, other)

    def mm(self, other: Tensor) -> Tensor:
        return matmul(self, other)

    def exp(self) -> Tensor:
        return _float_unary("exp", self)

    def log(self) -> Tensor:
        return _float_unary("log", self)

    def sqrt(self) -> Tensor:
        return _float_unary("sqrt", self)

    def abs(self) -> Tensor:
        return apply(OPS["abs"], self)

    def tanh(self) -> Tensor:
        return _float_unary("tanh", self)

    def sigmoid(self) -> Tensor:
        return _float_unary("sigmoid", self)

    def relu(self) -> Tensor:
        return apply(OPS["relu"], self)

    def clamp(self, min: Scalar | None = None, max: Scalar | None = None) -> Tensor:
        return clamp(self, min, max)

    def clamp_min(self, min: Scalar) -> Tensor:
        return clamp(self, min, None)

    def clamp_max(self, max: Scalar) -> Tensor:
        return clamp(self, None, max)

    def softmax(self, dim: int) -> Tensor:
        return apply(OPS["softmax"], _floating(self), dim=_dim(dim, self.ndim))

    def log_softmax(self, dim: int) -> Tensor:
        return apply(OPS["log_softmax"], _floating(self), dim=_dim(dim, self.ndim))

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: builtins.bool = False) -> Tensor:
        return apply(OPS["sum"], self, dim=_dims(dim, self.ndim), keepdim=keepdim)

    def mean(
        self, dim: int | Sequence[int] | None = None, keepdim: builtins.bool = False
    ) -> Tensor:
        if self.data.dtype.kind != "f":
            raise RuntimeError(
                "mean(): could not infer output dtype. Input dtype must be either a floating "
                f"point or complex dtype. Got: {_torch_type_name(self.data.dtype)}"
            )
        return apply(OPS["mean"], self, dim=_dims(dim, self.ndim), keepdim=keepdim)

    def amax(self, dim: int | Sequence[int] = (), keepdim: builtins.bool = False) -> Tensor:
        dims = _dims(dim, self.ndim)
        if self.ndim == 0 and dim not in ((), []):
            dims = (0,)  # an explicit dim on a 0-dim tensor: see the amax row's derivative
        _check_nonempty_reduction(self, dims, "amax")
        return apply(OPS["amax"], self, dim=dims, keepdim=keepdim)

    @overload
    def max(self, dim: None = None, keepdim: builtins.bool = False) -> Tensor: ...
    @overload
    def max(self, dim: int, keepdim: builtins.bool = False) -> MaxResult: ...
    def max(self, dim: int | None = None, keepdim: builtins.bool = False) -> Tensor | MaxResult:
        if dim is None:
            if self.data.size == 0:
                raise RuntimeError(
                    "max(): Expected reduction dim to be specified for input.numel() == 0. "
                    "Specify the reduction dim with the 'dim' argument."
                )
            return apply(OPS["max"], self)
        d = _dim(dim, self.ndim)
        _check_nonempty_reduction(self, (d,), "max")
        from refimpl.kernels import argmax_first

        values = apply(OPS["max_dim"], self, dim=d, keepdim=keepdim) if self.ndim else self.clone()
        index = argmax_first(self.data, d) if self.ndim else np.zeros((), np.int64)
        indices = Tensor._wrap(index if keepdim or not self.ndim else np.squeeze(index, d))
        return MaxResult(values, indices)

    def argmax(self, dim: int | None = None, keepdim: builtins.bool = False) -> Tensor:
        if dim is None:
            return Tensor._wrap(np.asarray(np.argmax(self.data)))
        return Tensor._wrap(np.asarray(np.argmax(self.data, axis=dim, keepdims=keepdim)))

    def reshape(self, *shape: Any) -> Tensor:
        target = _infer_shape(_shape_args(shape), self.data.size)
        return apply(OPS["reshape"], self, shape=target)

    view = reshape

    def view_as(self, other: Tensor) -> Tensor:
        return self.reshape(other.shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        if self.ndim == 0:
            return self.reshape(1)
        s, e = _dim(start_dim, self.ndim), _dim(end_dim, self.ndim)
        shape = self.shape[:s] + (int(np.prod(self.shape[s : e + 1])),) + self.shape[e + 1 :]
        return self.reshape(shape)

    def permute(self, *dims: Any) -> Tensor:
        order = tuple(_dim(d, self.ndim) for d in _shape_args(dims))
        if sorted(order) != list(range(self.ndim)):
            raise RuntimeError(
                "permute(sparse_coo): number of dimensions in the tensor input does not match "
                "the length of the desired ordering of dimensions i.e. input.dim() = "
                f"{self.ndim} is not equal to len(dims) = {len(order)}"
                if len(order) != self.ndim
                else "permute(): duplicate dims are not allowed."
            )
        return apply(OPS["permute"], self, dims=order)

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        if self.ndim == 0:
            _dim(dim0, 0), _dim(dim1, 0)
            return self.reshape(())
        order = list(range(self.ndim))
        a, b = _dim(dim0, self.ndim), _dim(dim1, self.ndim)
        order[a], order[b] = order[b], order[a]
        return apply(OPS["permute"], self, dims=tuple(order))

    def t(self) -> Tensor:
        if self.ndim > 2:
            raise RuntimeError(
                f"t() expects a tensor with <= 2 dimensions, but self is {self.ndim}D"
            )
        return self.transpose(0, 1) if self.ndim == 2 else self.reshape(self.shape)

    @property
    def T(self) -> Tensor:
        return self.permute(*reversed(range(self.ndim)))

    def unsqueeze(self, dim: int) -> Tensor:
        d = _dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def squeeze(self, dim: int | Sequence[int] | None = None) -> Tensor:
        if dim is None:
            dims = {i for i, n in enumerate(self.shape) if n == 1}
        else:
            dims = {d for d in _dims(dim, self.ndim) or () if self.ndim and self.shape[d] == 1}
        return self.reshape(tuple(n for i, n in enumerate(self.shape) if i not in dims))

    def expand(self, *sizes: Any) -> Tensor:
        shape = _shape_args(sizes)
        if len(shape) < self.ndim:
            raise RuntimeError(
                f"expand(torch.FloatTensor{{[{', '.join(map(str, self.shape))}]}}, "
                f"size=[{', '.join(map(str, shape))}]): the number of sizes provided "
                f"({len(shape)}) must be greater or equal to the number of dimensions in the "
                f"tensor ({self.ndim})"
            )
        lead = len(shape) - self.ndim
        full = tuple(self.shape[i - lead] if n == -1 else n for i, n in enumerate(shape))
        try:
            np.broadcast_shapes(self.shape, full)
        except ValueError:
            raise RuntimeError(
                f"The expanded size of the tensor ({full[-1]}) must match the existing size "
                f"({self.shape[-1]}) at non-singleton dimension {len(full) - 1}.  "
                f"Target sizes: [{', '.join(map(str, shape))}].  "
                f"Tensor sizes: [{', '.join(map(str, self.shape))}]"
            ) from None
        return apply(OPS["expand"], self, shape=full)

    def expand_as(self, other: Tensor) -> Tensor:
        return self.expand(*other.shape)

    def __getitem__(self, key: Any) -> Tensor:
        key = _index_key(key)
        parts = key if isinstance(key, tuple) else (key,)
        advanced = any(isinstance(k, np.ndarray) for k in parts)
        try:
            return apply(OPS["index" if advanced else "getitem"], self, key=key)
        except IndexError as error:
            raise IndexError(str(error)) from None

    def to(self, dtype: np.dtype | type) -> Tensor:
        dtype = np.dtype(dtype)
        if dtype == self.data.dtype:
            return self
        return apply(OPS["to_dtype"], self, dtype=dtype)

    def float(self) -> Tensor:
        return self.to(float32)

    def double(self) -> Tensor:
        return self.to(float64)

    def long(self) -> Tensor:
        return self.to(int64)

    def type_as(self, other: Tensor) -> Tensor:
        return self.to(other.dtype)

    def is_floating_point(self) -> builtins.bool:
        return self.data.dtype.kind == "f"


def _accumulate(tensor: Tensor, grad: np.ndarray, owned: builtins.bool) -> None:
    """torch's AccumulateGrad, for a leaf's gradient from `autograd.run_backward`: the first time
    store a new tensor (holding `grad` itself when the engine owns it and its dtype fits, else a
    copy); afterwards add in place, so that a reference to `.grad` taken earlier sees the sum."""
    if tensor.grad is None:
        keep_array = owned and grad.dtype == tensor.data.dtype
        tensor.grad = Tensor._wrap(
            grad if keep_array else np.array(grad, dtype=tensor.data.dtype, copy=True)
        )
    else:
        np.add(tensor.grad.data, grad, out=tensor.grad.data, casting="unsafe")
        tensor.grad._version += 1


class _RetainGrad:
    """retain_grad's hook on a node, called with the gradient the node receives. Unlike a leaf's,
    a non-leaf's .grad is replaced, not updated in place (torch: `grad = grad.clone()` the first
    time, `grad = grad + new` afterwards), and never keeps the engine's array."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = weakref.ref(tensor)

    def __call__(self, grad: np.ndarray) -> None:
        tensor = self.tensor()
        if tensor is None:
            return
        total = np.array(grad, copy=True) if tensor.grad is None else tensor.grad.data + grad
        tensor.grad = Tensor._wrap(total)


class MaxResult(NamedTuple):  # torch.return_types.max
    values: Tensor
    indices: Tensor


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _torch_type_name(dtype: np.dtype) -> str:
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dtype.name]


def _floating(x: Tensor) -> Tensor:
    return x if x.data.dtype.kind == "f" else x.to(float32)


def _float_unary(name: str, x: Tensor) -> Tensor:
    return apply(OPS[name], _floating(x))


def _is_bool(x: Any) -> builtins.bool:
    return isinstance(x, builtins.bool) or (isinstance(x, Tensor) and x.data.dtype == bool_)


def _check_sub(a: Any, b: Any) -> None:
    """torch's sub_check: no bool operand (a Python bool counts as a bool tensor)."""
    a_bool, b_bool = _is_bool(a), _is_bool(b)  # (a generator here costs ~1 us per `-`)
    if a_bool and b_bool:
        raise RuntimeError(
            "Subtraction, the `-` operator, with two bool tensors is not supported. "
            "Use the `^` or `logical_xor()` operator instead."
        )
    if a_bool or b_bool:
        raise RuntimeError(
            "Subtraction, the `-` operator, with a bool tensor is not supported. "
            "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead."
        )


def _true_divide(a: Any, b: Any) -> Tensor:
    # torch's `/` always divides in floating point: integer operands give float32.
    if result_type(a, b).kind != "f":
        a = a.to(float32) if isinstance(a, Tensor) else float(a)
    if not isinstance(a, Tensor):  # torch computes `scalar / t` as `t.reciprocal() * scalar`
        b = b if b.data.dtype.kind == "f" else b.to(result_type(a, b))
        scaled: Tensor = apply(OPS["reciprocal"], b) * a
        return scaled
    return apply(OPS["div"], a, b)


def _dim(dim: int, ndim: int) -> int:
    """Wraps a possibly negative dim, with torch's IndexError for one out of range."""
    low, high = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    if not low <= dim <= high:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{low}, {high}], but got {dim})"
        )
    return dim % ndim if ndim else 0


def _dims(dim: Any, ndim: int) -> tuple[int, ...] | None:
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    wrapped = tuple(_dim(d, ndim) for d in dims)
    if len(set(wrapped)) != len(wrapped):
        repeated = next(d for d in wrapped if wrapped.count(d) > 1)
        raise RuntimeError(f"dim {repeated} appears multiple times in the list of dims")
    return wrapped if ndim else ()


def _check_nonempty_reduction(x: Tensor, dims: tuple[int, ...] | None, name: str) -> None:
    reduced = dims if dims else range(x.ndim)
    for d in reduced:
        if x.ndim and x.shape[d] == 0:
            raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")
    if x.data.size == 0 and not x.ndim:
        raise IndexError(
            f"{name}(): Expected reduction dim to be specified for input.numel() == 0."
        )


def _shape_args(args: Sequence[Any]) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(int(n) for n in args[0])
    return tuple(int(n) for n in args)


def _invalid_shape(shape: tuple[int, ...], size: int) -> str:
    return f"shape '[{', '.join(map(str, shape))}]' is invalid for input of size {size}"


def _infer_shape(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    if shape.count(-1) > 1:
        raise RuntimeError("only one dimension can be inferred")
    known = int(np.prod([n for n in shape if n != -1]))
    if -1 in shape:
        if known == 0 or size % known:
            raise RuntimeError(_invalid_shape(shape, size))
        shape = tuple(size // known if n == -1 else n for n in shape)
    if int(np.prod(shape)) != size:
        raise RuntimeError(_invalid_shape(shape, size))
    return shape


def _index_key(key: Any) -> Any:
    def convert(k: Any) -> Any:
        if isinstance(k, Tensor):
            if k.data.dtype.kind not in "bi":
                raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
            return k.data
        if isinstance(k, list):
            return np.asarray(k)
        return k

    return tuple(convert(k) for k in key) if isinstance(key, tuple) else convert(key)


def _to_array(data: Any, dtype: np.dtype | None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray):
        array = data
        if dtype is None:
            kind = array.dtype.kind
            if kind == "f" and array.dtype.itemsize < 4:
                raise TypeError(f"refimpl does not support dtype {array.dtype}")
            dtype = {"f": array.dtype, "i": int64, "u": int64, "b": bool_}.get(kind)
            if dtype is None:
                raise TypeError(f"can't convert np.ndarray of type {array.dtype}")
        return np.array(array, dtype=dtype, copy=True)
    if dtype is None:
        flat = np.asarray(data)
        if flat.dtype.kind == "f":
            dtype = float32  # torch's default dtype
        elif flat.dtype.kind in "iu":
            dtype = int64
        elif flat.dtype.kind == "b":
            dtype = bool_
        else:
            raise TypeError(f"Could not infer dtype of {type(data).__name__}")
    return np.array(data, dtype=dtype)


# Creation ------------------------------------------------------------------------------------


def tensor(data: Any, dtype: Any = None, requires_grad: builtins.bool = False) -> Tensor:
    """A new leaf tensor holding a copy of `data` (lists infer float32 / int64 / bool)."""
    t = Tensor._wrap(_to_array(data, None if dtype is None else np.dtype(dtype)))
    if requires_grad:
        _check_requires_grad(t.data.dtype, factory=True)
        t.requires_grad_(True)
    return t


def zeros(*shape: Any, dtype: Any = None, requires_grad: builtins.bool = False) -> Tensor:
    return tensor(np.zeros(_shape_args(shape), dtype=dtype or float32), requires_grad=requires_grad)


def ones(*shape: Any, dtype: Any = None, requires_grad: builtins.bool = False) -> Tensor:
    return tensor(np.ones(_shape_args(shape), dtype=dtype or float32), requires_grad=requires_grad)


def full(
    shape: Sequence[int],
    fill_value: Scalar,
    dtype: Any = None,
    requires_grad: builtins.bool = False,
) -> Tensor:
    chosen = np.dtype(dtype) if dtype is not None else result_type(fill_value)
    return tensor(np.full(tuple(shape), fill_value, dtype=chosen), requires_grad=requires_grad)


def zeros_like(x: Tensor, dtype: Any = None, requires_grad: builtins.bool = False) -> Tensor:
    return tensor(np.zeros(x.shape, dtype=dtype or x.dtype), requires_grad=requires_grad)


def ones_like(x: Tensor, dtype: Any = None, requires_grad: builtins.bool = False) -> Tensor:
    return tensor(np.ones(x.shape, dtype=dtype or x.dtype), requires_grad=requires_grad)


def arange(start: Scalar, end: Scalar | None = None, step: Scalar = 1, dtype: Any = None) -> Tensor:
    if end is None:
        start, end = 0, start
    chosen = np.dtype(dtype) if dtype is not None else result_type(start, end, step)
    return Tensor._wrap(np.arange(start, end, step, dtype=chosen))


def from_numpy(array: np.ndarray) -> Tensor:
    """Shares memory with `array`, as torch.from_numpy does."""
    t = Tensor._wrap(array)
    t.data = array
    return t


# Functions -----------------------------------------------------------------------------------


def matmul(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError(
            f"both arguments to matmul need to be at least 1D, but they are {a.ndim}D and {b.ndim}D"
        )
    inner_a = a.shape[-1]
    inner_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if inner_a != inner_b:
        rows_a = a.shape[-2] if a.ndim > 1 else 1
        if a.ndim == 1 and b.ndim == 1:
            raise RuntimeError(
                f"inconsistent tensor size, expected tensor [{inner_a}] and src [{inner_b}] "
                "to have the same "
                f"number of elements, but got {inner_a} and {inner_b} elements respectively"
            )
        cols_b = b.shape[-1] if b.ndim > 1 else 1
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows_a}x{inner_a} and {inner_b}x{cols_b})"
        )
    return apply(OPS["matmul"], a, b)


def pow(base: Any, exponent: Any) -> Tensor:
    return apply(OPS["pow"], base, exponent)


def clamp(x: Tensor, min: Scalar | None = None, max: Scalar | None = None) -> Tensor:
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    t = x.data.dtype.type
    return apply(
        OPS["clamp"], x, min=None if min is None else t(min), max=None if max is None else t(max)
    )


def where(condition: Tensor, input: Any, other: Any) -> Tensor:
    if condition.data.dtype != bool_:
        raise RuntimeError(
            f"where expected condition to be a boolean tensor, but got a tensor with dtype "
            f"{_torch_type_name(condition.data.dtype)}"
        )
    # The condition selects; only `input` and `other` take part in type promotion.
    dtype = result_type(input, other)
    # Python scalars are cast too: numpy would make where(c, 1, 0.5) float64, torch float32.
    input, other = (
        x.to(dtype) if isinstance(x, Tensor) else np.asarray(x, dtype=dtype) for x in (input, other)
    )
    return apply(OPS["where"], condition, input, other)


def _joinable(tensors: Sequence[Tensor], name: str) -> None:
    if len(tensors) == 0:
        raise RuntimeError(f"{name}(): expected a non-empty list of Tensors")


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    _joinable(tensors, "torch.cat")
    ndim = max(t.ndim for t in tensors)
    d = _dim(dim, ndim)
    # torch still skips legacy empty 1-D tensors when the others have more dimensions.
    parts = [t for t in tensors if t.ndim == ndim or t.shape != (0,)]
    for i, t in enumerate(parts):
        if t.ndim != parts[0].ndim:
            raise RuntimeError(
                f"Tensors must have same number of dimensions: got {parts[0].ndim} and {t.ndim}"
            )
        for k in range(t.ndim):
            if k != d and t.shape[k] != parts[0].shape[k]:
                raise RuntimeError(
                    f"Sizes of tensors must match except in dimension {d}. Expected size "
                    f"{parts[0].shape[k]} but got size {t.shape[k]} for tensor number {i} in "
                    "the list."
                )
    return apply(OPS["cat"], *parts, dim=d)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    _joinable(tensors, "stack")
    d = _dim(dim, tensors[0].ndim + 1)
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise RuntimeError(
                f"stack expects each tensor to be equal size, but got "
                f"[{', '.join(map(str, tensors[0].shape))}] at entry 0 and "
                f"[{', '.join(map(str, t.shape))}] at entry {i}"
            )
    return apply(OPS["stack"], *tensors, dim=d)
