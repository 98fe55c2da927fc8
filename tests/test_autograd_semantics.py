"""torch's autograd semantics, checked side by side: each program runs on torch 2.13 and on
refimpl, and the two must agree — values bitwise where the ops are exactly rounded, exceptions
by type and exact message. Where a test asserts a property (a .grad updated in place, a graph
freed) it asserts it of torch too, so the test documents torch's behaviour rather than a guess.
"""

from __future__ import annotations

import importlib.util
import itertools
import operator
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl

LIBS: tuple[ModuleType, ...] = (torch, refimpl)
REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=30, deadline=None)

Program = Callable[[ModuleType], Any]


def as_array(t: Any) -> np.ndarray:
    """A copy of a torch or refimpl tensor's values (None stays None)."""
    return np.array(t.detach().numpy(), copy=True)


def dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    """Bitwise equality: same dtype, shape and bits (NaN meets NaN, -0.0 differs from 0.0)."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.tobytes() == b.tobytes(), (a, b)


def outcome(program: Program, lib: ModuleType) -> tuple[str, Any]:
    """('ok', result) or ('raise', (exception type, message))."""
    try:
        return "ok", program(lib)
    except Exception as error:  # the exception itself is what is compared
        return "raise", (type(error), str(error))


def grad_of(t: Any) -> Any:
    """`t.grad` without torch's warning about reading a non-leaf's .grad."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return t.grad


def float32_arrays(
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, shape, elements=st.floats(-8, 8, width=32))


vectors = float32_arrays(hnp.array_shapes(min_dims=1, max_dims=1, min_side=1, max_side=6))


# Leaves accumulate ---------------------------------------------------------------------------


@FAST
@given(values=vectors)
def test_leaf_grad_is_stored_then_accumulated_in_place(values: np.ndarray) -> None:
    seen: dict[str, list[np.ndarray]] = {}
    for lib in LIBS:
        x = lib.tensor(values, requires_grad=True)
        assert x.grad is None
        (x * 3.0).sum().backward()
        first = x.grad
        after_first = as_array(first)
        (x * x).sum().backward()
        # Later backwards add into the same tensor: a reference taken earlier sees the update.
        assert x.grad is first, lib.__name__
        after_second = as_array(x.grad)
        assert_same(as_array(first), after_second)
        x.grad.zero_()
        assert x.grad is first
        x.grad = None
        (x * 2.0).sum().backward()
        assert x.grad is not first
        seen[lib.__name__] = [after_first, after_second, as_array(x.grad)]
    for a, b in zip(seen["torch"], seen["refimpl"], strict=True):
        assert_same(a, b)


# Paths by which the caller's gradient reaches the leaf unchanged (the same array, in refimpl).
# Not through a view op (reshape): there torch's AccumulateGrad steals the fresh view of the
# caller's gradient, so .grad aliases it — an accident of reference counts, left untested.
PASS_THROUGH: dict[str, Callable[[Any], Any]] = {
    "the leaf itself": lambda x: x,
    "clone": lambda x: x.clone(),
    "add 0": lambda x: x + 0.0,
}


@pytest.mark.parametrize("path", list(PASS_THROUGH))
@FAST
@given(values=vectors, data=st.data())
def test_first_backward_stores_a_copy_of_the_incoming_gradient(
    path: str, values: np.ndarray, data: st.DataObject
) -> None:
    seed = data.draw(float32_arrays(values.shape))
    for lib in LIBS:
        x = lib.tensor(values, requires_grad=True)
        gradient = lib.tensor(seed)
        PASS_THROUGH[path](x).backward(gradient)
        assert x.grad is not gradient
        assert_same(as_array(x.grad), seed)
        gradient.mul_(2.0)  # changing the caller's tensor afterwards leaves .grad alone
        assert_same(as_array(x.grad), seed)
        (x * 1.0).sum().backward()  # and accumulating into .grad leaves the caller's alone
        assert_same(as_array(gradient), seed * np.float32(2.0))


# Weight tying: a tensor used several times receives the sum, in torch's order ---------------

# Only exactly rounded ops (elementwise on equal shapes, reshape, permute), so that any
# difference comes from the order in which the engine adds the uses' gradients.
TYING: dict[str, Callable[[Any, Any, Any], Any]] = {
    "two uses": lambda w, x, y: (w * x + w * y).sum(),
    "w*x + w*y + w": lambda w, x, y: (w * x + w * y + w).sum(),
    "four uses, nested": lambda w, x, y: (w * x + (w * y) * x - w + w * w).sum(),
    "four uses, other order": lambda w, x, y: ((w * y) * x + w * x - w * w + w).sum(),
    "chain": lambda w, x, y: (((w * x + w) * y + w) * x + w).sum(),
    "tied non-leaf": lambda w, x, y: (lambda h: (h * y + h * x + h * h + w).sum())(w * x),
    "div and neg": lambda w, x, y: (w / x + y / w - w * w - (-w)).sum(),
    "through views": lambda w, x, y: (
        w.reshape(-1, 1) * x.reshape(-1, 1)
        + w.reshape(1, -1).permute(1, 0) * y.reshape(-1, 1)
        + w.reshape(-1, 1)
    ).sum(),
}


@pytest.mark.parametrize("name", list(TYING))
@FAST
@given(data=st.data())
def test_tied_weights_receive_the_sum_of_their_uses_bitwise(name: str, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 6))
    nonzero = st.floats(0.25, 4, width=32) | st.floats(-4, -0.25, width=32)
    arrays = [data.draw(hnp.arrays(np.float32, (n,), elements=nonzero)) for _ in range(3)]
    grads: dict[str, list[np.ndarray]] = {}
    for lib in LIBS:
        w, x, y = (lib.tensor(a, requires_grad=True) for a in arrays)
        TYING[name](w, x, y).backward()
        grads[lib.__name__] = [as_array(t.grad) for t in (w, x, y)]
    for a, b in zip(grads["torch"], grads["refimpl"], strict=True):
        assert_same(a, b)


# Leaves, non-leaves and retain_grad ----------------------------------------------------------


def test_leaf_and_non_leaf_attributes() -> None:
    for lib in LIBS:
        x = lib.tensor([1.0, -2.0, 3.0], requires_grad=True)
        c = lib.tensor([4.0, 5.0, 6.0])
        assert (x.is_leaf, x.requires_grad, x.grad_fn) == (True, True, None)
        assert (c.is_leaf, c.requires_grad, c.grad_fn) == (True, False, None)
        y = x * c
        assert (y.is_leaf, y.requires_grad) == (False, True)
        assert y.grad_fn is not None
        z = c * 2.0  # nothing requires grad: a leaf without history
        assert (z.is_leaf, z.requires_grad, z.grad_fn) == (True, False, None)
        assert not x.retains_grad and not y.retains_grad
        y.sum().backward()
        assert grad_of(y) is None  # a non-leaf keeps no .grad by default
        assert grad_of(z) is None and c.grad is None
        assert_same(as_array(x.grad), np.array([4.0, 5.0, 6.0], np.float32))


def test_retain_grad_keeps_and_accumulates_a_non_leaf_grad() -> None:
    seen: dict[str, list[np.ndarray]] = {}
    for lib in LIBS:
        x = lib.tensor([1.5, -2.0, 0.25], requires_grad=True)
        y = x * 3.0
        y.retain_grad()
        assert y.retains_grad
        x.retain_grad()  # a no-op on a leaf
        assert not x.retains_grad
        loss = (y * y).sum()
        loss.backward(retain_graph=True)
        first = grad_of(y)
        first_values = as_array(first)
        loss.backward()
        # The retained grad accumulates, but into a new tensor: torch's hook does grad + new,
        # so a reference to the first grad keeps the first values (unlike a leaf's .grad).
        assert grad_of(y) is not first
        assert_same(as_array(first), first_values)
        seen[lib.__name__] = [first_values, as_array(grad_of(y)), as_array(x.grad)]
    assert_same(seen["torch"][1], 2 * seen["torch"][0])
    for a, b in zip(seen["torch"], seen["refimpl"], strict=True):
        assert_same(a, b)


def test_retain_grad_on_the_root_stores_the_seed() -> None:
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2.0
        y.retain_grad()
        y.backward(lib.tensor([0.5, -1.0]))
        assert_same(as_array(grad_of(y)), np.array([0.5, -1.0], np.float32))


# Freed graphs and retain_graph ---------------------------------------------------------------

# Ops whose backward needs saved tensors (mul, exp, ...) and ops that need only shapes (add,
# sum, views): torch decides which programs survive a second backward, refimpl must agree.
SECOND_BACKWARD: dict[str, Callable[[ModuleType, Any], Any]] = {
    "mul": lambda lib, x: (x * x).sum(),
    "mul by a Python float": lambda lib, x: (x * 2.0).sum(),
    "div by a Python float": lambda lib, x: (x / 2.0).sum(),
    "pow 2": lambda lib, x: (x**2).sum(),
    "exp": lambda lib, x: x.exp().sum(),
    "relu": lambda lib, x: x.relu().sum(),
    "abs": lambda lib, x: x.abs().sum(),
    "clamp": lambda lib, x: x.clamp(0.0, 1.5).sum(),
    "amax": lambda lib, x: x.amax(),
    "where": lambda lib, x: lib.where(x > 1.0, x, 0.0).sum(),
    "advanced index": lambda lib, x: x[lib.tensor([0, 0, 1])].sum(),
    "add": lambda lib, x: (x + x).sum(),
    "add a Python float": lambda lib, x: (x + 2.0).sum(),
    "sub": lambda lib, x: (x - x).sum(),
    "neg": lambda lib, x: (-x).sum(),
    "sum": lambda lib, x: x.sum(),
    "mean": lambda lib, x: x.mean(),
    "reshape": lambda lib, x: x.reshape(2, 1).sum(),
    "permute": lambda lib, x: x.reshape(2, 1).permute(1, 0).sum(),
    "expand": lambda lib, x: x.expand(3, 2).sum(),
    "slice": lambda lib, x: x[1:].sum(),
    "cat": lambda lib, x: lib.cat([x, x]).sum(),
    "stack": lambda lib, x: lib.stack([x, x]).sum(),
    "clone": lambda lib, x: x.clone().sum(),
    "to float64": lambda lib, x: x.double().sum(),
}


@pytest.mark.parametrize("name", list(SECOND_BACKWARD))
def test_second_backward_without_retain_graph(name: str) -> None:
    def program(lib: ModuleType) -> np.ndarray:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        loss = SECOND_BACKWARD[name](lib, x)
        loss.backward()
        loss.backward()
        return as_array(x.grad)

    expected, actual = outcome(program, torch), outcome(program, refimpl)
    assert expected[0] == actual[0], (expected, actual)
    if expected[0] == "raise":
        assert expected[1] == actual[1]
    else:
        assert_same(expected[1], actual[1])


def test_freed_graph_message_is_torchs() -> None:
    def program(lib: ModuleType) -> None:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        loss = (x * x).sum()
        loss.backward()
        loss.backward()

    expected = outcome(program, torch)
    assert expected[0] == "raise" and expected[1][0] is RuntimeError
    assert expected[1][1].startswith("Trying to backward through the graph a second time")
    assert outcome(program, refimpl) == expected


@FAST
@given(values=vectors)
def test_retain_graph_allows_a_second_backward_and_grads_double(values: np.ndarray) -> None:
    seen: dict[str, list[Any]] = {}
    for lib in LIBS:
        x = lib.tensor(values, requires_grad=True)
        loss = (x * x * 1.5).sum()
        loss.backward(retain_graph=True)
        once = as_array(x.grad)
        loss.backward(retain_graph=True)
        twice = as_array(x.grad)
        assert_same(twice, once + once)
        loss.backward()  # the last one frees the graph
        thrice = as_array(x.grad)
        freed = outcome(lambda _lib, loss=loss: loss.backward(), lib)
        assert freed[0] == "raise"
        seen[lib.__name__] = [once, twice, thrice, freed[1]]
    for a, b in zip(seen["torch"][:3], seen["refimpl"][:3], strict=True):
        assert_same(a, b)
    assert seen["torch"][3] == seen["refimpl"][3]


# Grad mode -----------------------------------------------------------------------------------


def grad_mode_trace(lib: ModuleType) -> list[Any]:
    """Records is_grad_enabled() and requires_grad through every way of switching grad mode."""
    trace: list[Any] = []
    x = lib.tensor([1.0, 2.0], requires_grad=True)

    @lib.no_grad
    def bare_no_grad() -> tuple[bool, bool]:
        return lib.is_grad_enabled(), (x * 2.0).requires_grad

    @lib.no_grad()
    def called_no_grad() -> tuple[bool, bool]:
        return lib.is_grad_enabled(), (x * 2.0).requires_grad

    @lib.enable_grad
    def bare_enable_grad() -> tuple[bool, bool]:
        return lib.is_grad_enabled(), (x * 2.0).requires_grad

    @lib.enable_grad()
    def called_enable_grad() -> tuple[bool, bool]:
        return lib.is_grad_enabled(), (x * 2.0).requires_grad

    trace.append(("start", lib.is_grad_enabled()))
    with lib.no_grad():
        y = x * 2.0
        trace.append(
            ("no_grad", lib.is_grad_enabled(), y.requires_grad, y.grad_fn is None, y.is_leaf)
        )
        with lib.enable_grad():
            z = x * 2.0
            trace.append(("enable inside no_grad", lib.is_grad_enabled(), z.requires_grad))
            with lib.no_grad():
                trace.append(("no_grad inside that", lib.is_grad_enabled()))
            trace.append(("back to enable", lib.is_grad_enabled()))
        trace.append(("back to no_grad", lib.is_grad_enabled()))
        trace.append(("decorated enable_grad", bare_enable_grad(), called_enable_grad()))
        trace.append(("after decorated call", lib.is_grad_enabled()))
    trace.append(("after", lib.is_grad_enabled()))
    trace.append(("decorated no_grad", bare_no_grad(), called_no_grad()))
    trace.append(("after decorated call", lib.is_grad_enabled()))
    trace.append(("wraps", bare_no_grad.__name__, called_enable_grad.__name__))
    try:
        with lib.no_grad():
            raise ValueError("leaves the block")
    except ValueError:
        trace.append(("restored after an exception", lib.is_grad_enabled()))
    # A graph built with grad enabled can be backpropagated inside no_grad.
    loss = (x * x).sum()
    with lib.no_grad():
        loss.backward()
    trace.append(("backward inside no_grad", as_array(x.grad).tolist()))
    return trace


def test_no_grad_and_enable_grad_match_torch() -> None:
    expected = grad_mode_trace(torch)
    assert expected[1] == ("no_grad", False, False, True, True)
    assert grad_mode_trace(refimpl) == expected


def test_in_place_on_a_leaf_is_allowed_under_no_grad() -> None:
    seen = {}
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        with lib.no_grad():
            x.mul_(3.0)
            x.add_(1.0)
            x.sub_(0.5)
        assert (x.is_leaf, x.requires_grad, x.grad_fn) == (True, True, None)
        (x * x).sum().backward()
        seen[lib.__name__] = (as_array(x), as_array(x.grad))
        with lib.no_grad():
            x.zero_()
        assert_same(as_array(x), np.zeros(2, np.float32))
    for a, b in zip(seen["torch"], seen["refimpl"], strict=True):
        assert_same(a, b)


# Misuse: torch's exception type and exact message ---------------------------------------------


def _leaf(lib: ModuleType) -> Any:
    return lib.tensor([1.0, 2.0], requires_grad=True)


def _freed_graph(lib: ModuleType) -> None:
    x = _leaf(lib)
    loss = (x * x).sum()
    loss.backward()
    loss.backward()


MISUSE: dict[str, Program] = {
    "backward through a freed graph": _freed_graph,
    "implicit gradient for a non-scalar output": lambda lib: (_leaf(lib) * 2.0).backward(),
    "backward of a tensor that does not require grad": lambda lib: (
        lib.tensor([1.0, 2.0]).sum().backward()
    ),
    "add_ on a leaf that requires grad": lambda lib: _leaf(lib).add_(1.0),
    "sub_ on a leaf that requires grad": lambda lib: _leaf(lib).sub_(1.0),
    "mul_ on a leaf that requires grad": lambda lib: _leaf(lib).mul_(2.0),
    "div_ on a leaf that requires grad": lambda lib: _leaf(lib).div_(2.0),
    "zero_ on a leaf that requires grad": lambda lib: _leaf(lib).zero_(),
    "gradient of the wrong shape": lambda lib: (_leaf(lib) * 2.0).backward(lib.ones(3)),
    "gradient of the wrong rank": lambda lib: (_leaf(lib) * 2.0).backward(lib.ones(2, 1)),
    "requires_grad=True on an int64 tensor": lambda lib: lib.tensor([1, 2], requires_grad=True),
    "requires_grad=True on a bool tensor": lambda lib: lib.tensor([True], requires_grad=True),
    "zeros(int64, requires_grad=True)": lambda lib: lib.zeros(
        2, dtype=lib.int64, requires_grad=True
    ),
    "requires_grad_() on an int64 tensor": lambda lib: lib.tensor([1, 2]).requires_grad_(),
    "requires_grad_(False) on a non-leaf": lambda lib: (_leaf(lib) * 2.0).requires_grad_(False),
    "retain_grad on a tensor without grad": lambda lib: lib.tensor([1.0]).retain_grad(),
    "item() on a multi-element tensor": lambda lib: lib.tensor([1.0, 2.0]).item(),
    "numpy() on a tensor that requires grad": lambda lib: _leaf(lib).numpy(),
    "bool() of a multi-element tensor": lambda lib: bool(lib.tensor([1.0, 2.0])),
    "float() of a multi-element tensor": lambda lib: float(lib.tensor([1.0, 2.0])),
    "int() of a multi-element tensor": lambda lib: int(lib.tensor([1, 2])),
}


@pytest.mark.parametrize("name", list(MISUSE))
def test_misuse_raises_torchs_exception(name: str) -> None:
    expected = outcome(MISUSE[name], torch)
    assert expected[0] == "raise", f"torch accepts {name!r}"
    assert outcome(MISUSE[name], refimpl) == expected


# Type promotion ------------------------------------------------------------------------------

DTYPES = ("float32", "float64", "int64", "bool")
VALUES: dict[str, list[Any]] = {
    "float32": [1.5, -2.25, 3.1],
    "float64": [1.1, -2.7, 3.3],
    "int64": [3, -2, 5],
    "bool": [True, False, True],
}
PYTHON_SCALARS: list[Any] = [True, False, 3, -2, 0.1, -2.5]


def _operand(kind: str) -> Callable[[ModuleType], Any]:
    """An operand of `kind`: 'dim <dtype>', '0-dim <dtype>' or a Python scalar's repr."""
    rank, _, dtype = kind.partition(" ")
    if rank == "dim":
        return lambda lib: lib.tensor(VALUES[dtype], dtype=getattr(lib, dtype))
    if rank == "0-dim":
        return lambda lib: lib.tensor(VALUES[dtype][1], dtype=getattr(lib, dtype))
    scalar = next(s for s in PYTHON_SCALARS if repr(s) == kind)
    return lambda lib: scalar


OPERANDS = [f"{rank} {d}" for d in DTYPES for rank in ("dim", "0-dim")] + [
    repr(s) for s in PYTHON_SCALARS
]
BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
}
PAIRS = [
    (a, b)
    for a, b in itertools.product(OPERANDS, repeat=2)
    if a.split(" ")[0] in ("dim", "0-dim") or b.split(" ")[0] in ("dim", "0-dim")
]


def _compare_results(expected: tuple[str, Any], actual: tuple[str, Any], values: bool) -> None:
    assert expected[0] == actual[0], (expected, actual)
    if expected[0] == "raise":
        assert expected[1] == actual[1]
        return
    assert dtype_name(actual[1]) == dtype_name(expected[1])
    assert tuple(actual[1].shape) == tuple(expected[1].shape)
    if values:
        assert_same(as_array(expected[1]), as_array(actual[1]))


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize(("left", "right"), PAIRS)
def test_binary_type_promotion_matches_torch(op: str, left: str, right: str) -> None:
    def program(lib: ModuleType) -> Any:
        return BINARY[op](_operand(left)(lib), _operand(right)(lib))

    # A Python number divided by a tensor is checked for values separately (see the xfail
    # below); the dtype must match here all the same.
    scalar_numerator = op == "div" and not left.startswith(("dim", "0-dim"))
    _compare_results(
        outcome(program, torch), outcome(program, refimpl), values=not scalar_numerator
    )


def test_python_number_divided_by_a_tensor_matches_torch_bitwise() -> None:
    # torch's Tensor.__rtruediv__ is reciprocal(tensor) * scalar, not a true division: the
    # rounding (and the gradient's, -g * (y * y)) differs from `scalar / tensor`.
    for dtype in ("float32", "float64", "int64"):
        for scalar in (3, 0.1):

            def program(lib: ModuleType, dtype: str = dtype, scalar: float = scalar) -> Any:
                x = lib.tensor(VALUES[dtype], dtype=getattr(lib, dtype))
                return scalar / x

            _compare_results(outcome(program, torch), outcome(program, refimpl), values=True)
    grads = []
    for lib in LIBS:
        x = lib.tensor([1.1, -2.7, 3.3, 0.3], dtype=lib.float32, requires_grad=True)
        (3.0 / x).sum().backward()
        grads.append(as_array(x.grad))
    assert_same(*grads)


WHERE_OPERANDS = [f"{rank} {d}" for d in DTYPES for rank in ("dim", "0-dim")] + ["True", "3", "0.1"]


@pytest.mark.parametrize("condition", ["dim", "0-dim"])
@pytest.mark.parametrize(("left", "right"), list(itertools.product(WHERE_OPERANDS, repeat=2)))
def test_where_type_promotion_matches_torch(condition: str, left: str, right: str) -> None:
    def program(lib: ModuleType) -> Any:
        c = lib.tensor([True, False, True] if condition == "dim" else False)
        return lib.where(c, _operand(left)(lib), _operand(right)(lib))

    _compare_results(outcome(program, torch), outcome(program, refimpl), values=True)


finite32 = st.floats(-1e6, 1e6, width=32, allow_subnormal=False)


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=5), elements=finite32),
    scalar=st.floats(-1e3, 1e3, allow_subnormal=False).filter(lambda s: abs(s) > 1e-3)
    | st.sampled_from([0.1, 0.2, 0.3, 1 / 3, 2.5, -0.7]),
    op=st.sampled_from(list(BINARY)),
)
def test_python_float_does_not_promote_float32_and_rounds_like_torch(
    values: np.ndarray, scalar: float, op: str
) -> None:
    results = [BINARY[op](lib.tensor(values), scalar) for lib in LIBS]
    assert dtype_name(results[0]) == dtype_name(results[1]) == "float32"
    assert_same(as_array(results[0]), as_array(results[1]))


def test_float32_times_point_one_is_torchs_bits() -> None:
    values = np.arange(-50, 50, dtype=np.float32) * np.float32(0.37)
    expected = as_array(torch.tensor(values) * 0.1)
    actual = as_array(refimpl.tensor(values) * 0.1)
    assert_same(expected, actual)
    # …which is the float32 product, not the float64 one rounded to float32.
    assert_same(actual, values * np.float32(0.1))


# backward(gradient), detach, requires_grad_, zero_, clone --------------------------------------


@FAST
@given(data=st.data())
def test_backward_with_an_explicit_gradient(data: st.DataObject) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    x_values, y_values, seed = (data.draw(float32_arrays(shape)) for _ in range(3))
    gradient_dtype = data.draw(st.sampled_from(["float32", "float64"]))
    grads = []
    for lib in LIBS:
        x = lib.tensor(x_values, requires_grad=True)
        y = lib.tensor(y_values, requires_grad=True)
        out = (x * y - x).reshape(-1).reshape(shape)
        out.backward(lib.tensor(seed, dtype=getattr(lib, gradient_dtype)))
        grads.append([as_array(x.grad), as_array(y.grad)])
    for a, b in zip(*grads, strict=True):
        assert_same(a, b)


def test_detach_shares_data_and_cuts_the_graph() -> None:
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2.0
        d = y.detach()
        assert (d.requires_grad, d.grad_fn, d.is_leaf) == (False, None, True)
        assert y.grad_fn is not None  # the original keeps its history
        d.zero_()  # shares memory with y
        assert_same(as_array(y), np.zeros(2, np.float32))
        leaf_view = x.detach()
        leaf_view.add_(1.0)  # allowed: the detached tensor does not require grad
        assert_same(as_array(x), np.array([2.0, 3.0], np.float32))


def test_detach_in_place() -> None:
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2.0
        assert y.detach_() is y
        assert (y.requires_grad, y.grad_fn, y.is_leaf) == (False, None, True)
        assert x.detach_() is x
        assert (x.requires_grad, x.is_leaf) == (False, True)
        assert outcome(lambda lib, y=y: y.sum().backward(), lib)[0] == "raise"


def test_requires_grad_in_place() -> None:
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0])
        assert x.requires_grad_() is x and x.requires_grad and x.is_leaf
        assert x.requires_grad_(False) is x and not x.requires_grad
        x.requires_grad_(True)
        y = x * 3.0
        assert y.requires_grad_(True) is y  # allowed on a non-leaf when it asks for True
        y.sum().backward()
        assert_same(as_array(x.grad), np.array([3.0, 3.0], np.float32))


def test_zero_in_place() -> None:
    seen = []
    for lib in LIBS:
        c = lib.tensor([1.5, -2.0])
        assert c.zero_() is c
        assert_same(as_array(c), np.zeros(2, np.float32))
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2.0
        assert y.zero_() is y  # on a non-leaf: recorded, and it cuts the gradient of y's past
        assert y.requires_grad and not y.is_leaf
        y.add_(x * x)
        (y * 3.0).sum().backward()
        seen.append((as_array(y), as_array(x.grad)))
    assert_same(seen[0][1], np.array([6.0, 12.0], np.float32))  # d/dx 3x², not 3(2 + x²)'
    for a, b in zip(*seen, strict=True):
        assert_same(a, b)


# In-place ops on non-leaves ------------------------------------------------------------------

IN_PLACE: dict[str, Callable[[Any, Any], None]] = {
    "add_": lambda y, c: y.add_(c),
    "sub_": lambda y, c: y.sub_(c),
    "mul_": lambda y, c: y.mul_(c),
    "div_": lambda y, c: y.div_(c),
    "add_ a Python float": lambda y, c: y.add_(1.5),
    "mul_ a Python float": lambda y, c: y.mul_(-3.0),
    "chain": lambda y, c: y.mul_(c).add_(c).div_(2.0).sub_(c),
}


@pytest.mark.parametrize("name", list(IN_PLACE))
@FAST
@given(data=st.data())
def test_in_place_on_a_non_leaf_extends_its_history(name: str, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 5))
    nonzero = st.floats(0.25, 4, width=32) | st.floats(-4, -0.25, width=32)
    x_values, c_values = (
        data.draw(hnp.arrays(np.float32, (n,), elements=nonzero)) for _ in range(2)
    )
    seen = []
    for lib in LIBS:
        x = lib.tensor(x_values, requires_grad=True)
        c = lib.tensor(c_values, requires_grad=True)
        y = x * x
        before = y + 0.0  # an earlier consumer keeps y's old value and history
        IN_PLACE[name](y, c)
        assert not y.is_leaf and y.requires_grad
        (y * 2.0 + before).sum().backward()
        seen.append(
            [
                as_array(y),
                as_array(x.grad),
                as_array(c.grad) if c.grad is not None else None,
                y.grad_fn.name(),
            ]
        )
    assert seen[0][3] == seen[1][3]
    for a, b in zip(seen[0][:2], seen[1][:2], strict=True):
        assert_same(a, b)
    assert (seen[0][2] is None) == (seen[1][2] is None)
    if seen[0][2] is not None:
        assert_same(seen[0][2], seen[1][2])


def test_retain_grad_follows_an_in_place_op() -> None:
    seen = []
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2.0
        y.retain_grad()
        y.mul_(3.0)
        assert y.retains_grad
        (y * y).sum().backward()
        seen.append((as_array(grad_of(y)), as_array(x.grad)))
    for a, b in zip(*seen, strict=True):
        assert_same(a, b)


def test_detach_in_place_keeps_earlier_consumers_history() -> None:
    seen = []
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2.0
        z = y * 3.0
        y.detach_()
        z.sum().backward()  # z still reaches x through y's old history
        assert y.grad is None
        seen.append(as_array(x.grad))
    assert_same(*seen)


@FAST
@given(values=vectors)
def test_clone_copies_and_passes_the_gradient_back(values: np.ndarray) -> None:
    seen = []
    for lib in LIBS:
        x = lib.tensor(values, requires_grad=True)
        c = x.clone()
        assert (c.is_leaf, c.requires_grad) == (False, True) and c.grad_fn is not None
        (c * c * 2.0).sum().backward()
        with lib.no_grad():
            c.add_(1.0)  # a copy: the original is untouched
        assert_same(as_array(x), values)
        plain = lib.tensor(values).clone()
        assert (plain.requires_grad, plain.is_leaf) == (False, True)
        seen.append(as_array(x.grad))
    assert_same(*seen)


# Floating-point errors: torch neither warns nor raises ------------------------------------------


def _overflowing_program() -> list[np.ndarray]:
    x = refimpl.tensor([1.0, 0.0, -1.0], requires_grad=True)
    y = (x / 0.0) + (x * 1e38 * 1e38).log() + x.exp() * 1e38
    with refimpl.no_grad():
        z = x.detach().clone()
        z *= 1e38
        z *= 1e38
    y.sum().backward()
    return [y.data, z.data, x.grad.data]


def test_ops_neither_warn_nor_raise_and_leave_numpys_settings_alone() -> None:
    expected = [np.array(a, copy=True) for a in _overflowing_program()]
    in_thread: list[list[np.ndarray]] = []
    for handling in ("raise", "warn"):
        with np.errstate(all=handling), warnings.catch_warnings():
            warnings.simplefilter("error")
            before = np.geterr()
            for a, b in zip(_overflowing_program(), expected, strict=True):
                assert_same(a, b)
            assert np.geterr() == before
            thread = threading.Thread(target=lambda: in_thread.append(_overflowing_program()))
            thread.start()
            thread.join()
    assert len(in_thread) == 2
    for results in in_thread:
        for a, b in zip(results, expected, strict=True):
            assert_same(a, b)


# Gradients a leaf keeps without a copy alias nothing -------------------------------------------

# Programs where one array reaches several inputs unchanged (identity rules, views, casts, tied
# uses), so that a gradient kept by a leaf as its .grad could alias another leaf's, a retained
# .grad, a saved array, a tensor's values or the caller's gradient if the engine got it wrong.
ALIASING: dict[str, Callable[[ModuleType, Any, Any, Any], Any]] = {
    "two leaves through add": lambda lib, p, q, s: p + q,
    "two leaves through add, a fresh gradient": lambda lib, p, q, s: (p + q) * s,
    "a leaf twice": lambda lib, p, q, s: (p + p) + q,
    "sub": lambda lib, p, q, s: p - q,
    "clone then add": lambda lib, p, q, s: p.clone() + q.clone(),
    "through reshapes": lambda lib, p, q, s: (p.reshape(2, 2) + q.reshape(2, 2)).reshape(4),
    "through reshapes, a fresh gradient": lambda lib, p, q, s: (
        (p.reshape(2, 2) + q.reshape(2, 2)).reshape(4) * 1.0
    ),
    "a round trip in float64": lambda lib, p, q, s: p.double().float() + q,
    "mul by a constant tensor": lambda lib, p, q, s: p * s + q * s,
    "cat then slices": lambda lib, p, q, s: lib.cat([p, q])[:4] + lib.cat([q, p])[4:],
    "where": lambda lib, p, q, s: lib.where(s > 0, p, q) + p,
    "retained in between": lambda lib, p, q, s: _retained(p + q) + q,
}


def _retained(t: Any) -> Any:
    t.retain_grad()
    return t


@pytest.mark.parametrize("name", list(ALIASING))
@pytest.mark.parametrize("seeded", [False, True], ids=["scalar", "caller's gradient"])
def test_leaf_grads_alias_nothing(name: str, seeded: bool) -> None:
    """One backward gives torch's gradients; a second adds the same again into each .grad and
    changes nothing else. Not compared with torch after the second: where torch's
    AccumulateGrad steals a view (through reshapes), two leaves' .grad, or a .grad and the
    caller's gradient, share memory, and accumulating into one changes the other."""
    rng = np.random.default_rng(7)
    p_values, q_values, s_values, seed_values = (
        rng.standard_normal(4).astype(np.float32) for _ in range(4)
    )
    first: dict[str, list[np.ndarray]] = {}
    for lib in LIBS:
        p = lib.tensor(p_values, requires_grad=True)
        q = lib.tensor(q_values, requires_grad=True)
        s = lib.tensor(s_values)
        seed = lib.tensor(seed_values)
        for backward in range(2):
            out = ALIASING[name](lib, p, q, s)
            (out.backward(seed) if seeded else out.sum().backward())
            if backward == 0:
                first[lib.__name__] = [as_array(p.grad), as_array(q.grad)]
    for a, b in zip(first["torch"], first["refimpl"], strict=True):
        assert_same(a, b)
    held = [p.grad.data, q.grad.data, p.data, q.data, s.data, seed.data]
    for i, a in enumerate(held):
        for b in held[i + 1 :]:
            assert not np.shares_memory(a, b)
    for g, once in zip((p.grad, q.grad), first["refimpl"], strict=True):
        assert_same(g.data, once + once)
    for t, values in ((p, p_values), (q, q_values), (s, s_values), (seed, seed_values)):
        assert_same(t.data, values)


def _rows_returning_held_arrays() -> dict[str, Any]:
    """Table rows (refimpl.ops.Op) whose derivative returns an array others hold."""
    from refimpl.ops import Op

    last: list[np.ndarray] = []

    def fresh_then_again(g: np.ndarray, *_: Any, **__: Any) -> np.ndarray:
        last[:] = [g * 2.0]
        return last[0]

    return {
        "a saved input": Op(
            "returns_input", np.multiply, (lambda g, y, a, b, **_: b, lambda g, y, a, b, **_: a)
        ),
        "the output": Op(
            "returns_output", np.multiply, (lambda g, y, a, b, **_: y, lambda g, y, a, b, **_: y)
        ),
        "a parameter": Op(
            "returns_parameter",
            lambda a, b, w: a * b,
            (lambda g, y, a, b, w: w, lambda g, y, a, b, w: w * 1.0),
        ),
        "one fresh array for both inputs": Op(
            "returns_one_array", np.multiply, (fresh_then_again, lambda *_, **__: last[0])
        ),
    }


@pytest.mark.parametrize("name", list(_rows_returning_held_arrays()))
def test_a_leaf_copies_an_array_a_rule_was_given_or_gave_another_input(name: str) -> None:
    from refimpl.tensor import apply

    row = _rows_returning_held_arrays()[name]
    p = refimpl.tensor([1.0, 2.0], requires_grad=True)
    q = refimpl.tensor([3.0, 4.0], requires_grad=True)
    params = {"w": np.array([5.0, 6.0], np.float32)} if name == "a parameter" else {}
    out = apply(row, p, q, **params)
    (out * 1.0).backward(refimpl.tensor([1.0, 1.0]))
    held = [p.grad.data, q.grad.data, p.data, q.data, out.data, *params.values()]
    for i, a in enumerate(held):
        for b in held[i + 1 :]:
            assert not np.shares_memory(a, b)


# refimpl is numpy-only -------------------------------------------------------------------------


def test_the_engine_imports_no_tensor_module() -> None:
    """autograd knows tensors only through a Protocol: refimpl.tensor imports it, never the
    reverse (not even lazily or for type checking)."""
    import ast

    tree = ast.parse((REPO / "refimpl" / "autograd.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported <= {
        "__future__",
        "functools",
        "heapq",
        "itertools",
        "threading",
        "collections.abc",
        "typing",
        "numpy",
        "refimpl.ops",
    }, imported


def test_importing_refimpl_never_imports_torch() -> None:
    modules = ["refimpl", "refimpl.functional"]
    if importlib.util.find_spec("refimpl.nn") is not None:
        modules.append("refimpl.nn")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
