"""conformance.oracle: every branch of `compare`, its summary fields, the ULP measures, and the
error models' two promises: a correct SGD step (fused or not) stays inside `sgd_step_budget`,
and a step wrong by one part in a million (float64) falls outside it."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.testing._comparison import default_tolerances

from conformance.oracle import (
    TOLERANCES,
    Mismatch,
    bitwise_equal,
    compare,
    reduction_budget,
    scaled_ulp_error,
    sgd_step_budget,
    ulp,
    ulp_distance,
)
from refimpl.optim import sgd_update
from refimpl.rounding import add_scaled

DTYPES = [np.float32, np.float64]
MODES = ["exact", "ulp", "tolerance"]
INF = math.inf


def budget_for(mode: str, value: float = 1.0) -> float | None:
    return value if mode == "ulp" else None


def nan_with_payload(dtype: type, payload: int, negative: bool) -> np.ndarray:
    """A quiet NaN with the given payload bits and sign."""
    if np.dtype(dtype) == np.float32:
        bits = np.uint32(0x7FC00000 | payload | (0x80000000 if negative else 0))
        return np.array([bits], np.uint32).view(np.float32)
    bits = np.uint64(0x7FF8000000000000 | payload | (0x8000000000000000 if negative else 0))
    return np.array([bits], np.uint64).view(np.float64)


# --- compare: shape, dtype, non-finite values ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_shape_mismatch_is_reported_without_an_element(mode: str) -> None:
    m = compare(np.zeros((2, 3)), np.zeros(3), mode, budget_for(mode))
    assert m is not None
    assert m.index == () and math.isnan(m.expected) and math.isnan(m.actual)
    assert m.reason == "shape (2, 3) != (3,)"
    assert m.count == 6 and m.budget is None and m.max_abs_error == INF


@pytest.mark.parametrize("mode", MODES)
def test_dtype_mismatch_is_reported_without_an_element(mode: str) -> None:
    m = compare(np.zeros(3, np.float32), np.zeros(3, np.float64), mode, budget_for(mode))
    assert m is not None and m.index == ()
    assert m.reason == "dtype float32 != float64"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_nan_position_differs_in_every_mode(mode: str, dtype: type) -> None:
    expected = np.array([1.0, np.nan, 3.0], dtype)
    actual = np.array([1.0, 2.0, np.nan], dtype)
    m = compare(expected, actual, mode, budget_for(mode, INF))  # even an infinite budget
    assert m is not None
    assert m.index == (1,) and m.reason == "NaN position" and m.count == 2
    assert m.abs_error == INF and m.ulp_error == INF


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_nan_matches_nan_whatever_its_sign_and_payload(mode: str, dtype: type) -> None:
    expected = np.concatenate([nan_with_payload(dtype, 1, False), np.array([2.0], dtype)])
    actual = np.concatenate([nan_with_payload(dtype, 5, True), np.array([2.0], dtype)])
    assert compare(expected, actual, mode, budget_for(mode, 0.0)) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_infinity_sign_differs_in_every_mode(mode: str, dtype: type) -> None:
    expected = np.array([np.inf, -np.inf, 1.0], dtype)
    actual = np.array([np.inf, np.inf, 1.0], dtype)
    m = compare(expected, actual, mode, budget_for(mode, INF))
    assert m is not None and m.index == (1,) and m.reason == "infinity sign" and m.count == 1
    assert compare(expected, expected.copy(), mode, budget_for(mode, 0.0)) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_infinity_against_a_finite_number_differs(mode: str, dtype: type) -> None:
    big = np.finfo(dtype).max
    m = compare(np.array([big], dtype), np.array([np.inf], dtype), mode, budget_for(mode, INF))
    assert m is not None and m.reason == "infinity position" and m.abs_error == INF


# --- compare: exact ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_distinguishes_signed_zeros_other_modes_do_not(dtype: type) -> None:
    expected, actual = np.array([0.0, 1.0], dtype), np.array([-0.0, 1.0], dtype)
    m = compare(expected, actual, "exact")
    assert m is not None and m.index == (0,) and m.reason == "signed zero"
    assert m.abs_error == 0.0 and m.budget is None
    assert compare(expected, actual, "ulp", 0.0) is None
    assert compare(expected, actual, "tolerance") is None


def test_exact_reports_the_first_difference_in_c_order_and_a_summary() -> None:
    expected = np.arange(6, dtype=np.float64).reshape(2, 3)
    actual = expected.copy()
    actual[1, 0] += 0.5  # later in C order, larger error
    actual[0, 2] = np.nextafter(actual[0, 2], np.inf)  # first in C order, 1 ULP
    m = compare(expected, actual, "exact")
    assert m is not None
    assert m.index == (0, 2) and m.expected == 2.0 and m.actual == actual[0, 2]
    assert m.reason == "bits differ" and m.ulp_error == 1.0
    assert m.abs_error == actual[0, 2] - 2.0
    assert m.count == 2 and m.max_abs_error == 0.5
    assert m.max_ulp_error == float(ulp_distance(actual[1, 0:1], expected[1, 0:1])[0])


def test_a_zero_dimensional_array_has_the_empty_index() -> None:
    m = compare(np.float32(1.0), np.float32(2.0), "exact")
    assert m is not None and m.index == () and m.reason == "bits differ" and m.count == 1


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_side=5))
    )
)
def test_exact_accepts_a_copy_and_rejects_any_changed_element(expected: np.ndarray) -> None:
    for mode in MODES:
        assert compare(expected, expected.copy(), mode, budget_for(mode, 0.0)) is None
    if expected.size == 0:
        return
    actual = expected.copy().reshape(-1)
    last = actual.size - 1
    actual[last] = 1.0 if np.isnan(actual[last]) else np.nextafter(actual[last], np.inf)
    if not np.isnan(expected.reshape(-1)[last]) and actual[last] == expected.reshape(-1)[last]:
        actual[last] = -actual[last]  # +-0 -> nextafter is subnormal; inf stays inf: flip sign
    m = compare(expected, actual.reshape(expected.shape), "exact")
    assert m is not None and m.count == 1
    assert np.ravel_multi_index(m.index, expected.shape) == last if expected.ndim else True


# --- compare: ulp --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_ulp_mode_passes_at_the_budget_and_fails_just_above(dtype: type) -> None:
    expected = np.array([1.0, 2.0, -4.0], dtype)
    actual = np.array([1.0, 2.0, -4.0], dtype)
    actual[2] = np.nextafter(np.nextafter(actual[2], -np.inf), -np.inf)  # 2 ULPs of 4
    error = float(abs(np.float64(actual[2]) - np.float64(expected[2])))
    assert compare(expected, actual, "ulp", error) is None
    assert compare(expected, actual, "ulp", np.array([0.0, 0.0, error])) is None
    below = float(np.nextafter(error, 0.0))
    m = compare(expected, actual, "ulp", np.array([1.0, 1.0, below]))
    assert m is not None and m.index == (2,) and m.budget == below
    assert m.ulp_error == 2.0 and m.abs_error == error and m.reason.startswith("exceeds budget")


@pytest.mark.parametrize(
    ("dtype", "big", "small"),
    [
        (np.float64, 2.0**60, 2.0**-60),
        (np.float32, 2.0**100, 2.0**-100),  # a - e is not exact in float64 either
    ],
)
def test_ulp_mode_decides_exactly_where_float64_subtraction_rounds(
    dtype: type, big: float, small: float
) -> None:
    expected, actual = np.array([-small], dtype), np.array([big], dtype)
    assert np.float64(big) - np.float64(-small) == big  # a naive test would round to the budget
    m = compare(expected, actual, "ulp", big)  # |a - e| = big + small > big
    assert m is not None and m.count == 1
    assert compare(expected, actual, "ulp", float(np.nextafter(big, INF))) is None
    # and in the other direction the edge is admitted
    assert compare(np.array([small], dtype), actual, "ulp", big) is None


def test_ulp_mode_needs_a_valid_budget() -> None:
    x = np.zeros(2)
    with pytest.raises(ValueError, match="needs a budget"):
        compare(x, x, "ulp")
    with pytest.raises(ValueError, match=">= 0"):
        compare(x, x, "ulp", -1.0)
    with pytest.raises(ValueError, match="not NaN"):
        compare(x, x, "ulp", np.array([0.0, np.nan]))
    for mode in ("exact", "tolerance"):
        with pytest.raises(ValueError, match="takes no budget"):
            compare(x, x, mode, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be"):
        compare(x, x, "bitwise")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float32 or float64"):
        compare(np.zeros(2, np.int64), np.zeros(2, np.int64), "exact")


# --- compare: tolerance, against torch.testing.assert_close --------------------------------------


def test_tolerances_are_torchs_defaults() -> None:
    for dtype, torch_dtype in [(np.float32, torch.float32), (np.float64, torch.float64)]:
        assert TOLERANCES[np.dtype(dtype)] == default_tolerances(torch_dtype)


@st.composite
def near_tolerance_pairs(draw: st.DrawFn, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(expected, actual) with many elements on, just inside or just outside the tolerance, and
    some NaN, infinities, signed zeros and arbitrary values."""
    width = 32 if dtype == np.float32 else 64
    n = draw(st.integers(1, 12))
    magnitudes = st.one_of(
        st.floats(-1e6, 1e6, width=width),
        st.sampled_from([0.0, -0.0, 1e-5, -1e-5, 1.0, np.inf, -np.inf, np.nan]),
    )
    expected = np.array(draw(st.lists(magnitudes, min_size=n, max_size=n)), dtype)
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    with np.errstate(all="ignore"):
        edge = expected + (dtype(atol) + np.abs(dtype(rtol) * expected)) * dtype(
            draw(st.sampled_from([1, -1]))
        )
    kinds = draw(
        st.lists(
            st.sampled_from(["edge", "inside", "outside", "same", "other", "nan", "-0"]),
            min_size=n,
            max_size=n,
        )
    )
    actual = expected.copy()
    for i, kind in enumerate(kinds):
        if kind == "edge":
            actual[i] = edge[i]
        elif kind in ("inside", "outside"):
            with np.errstate(invalid="ignore"):
                toward = expected[i] if kind == "inside" else np.sign(edge[i] - expected[i]) * INF
            actual[i] = np.nextafter(edge[i], dtype(toward))
        elif kind == "other":
            actual[i] = draw(magnitudes)
        elif kind == "nan":
            actual[i] = np.nan
        elif kind == "-0":
            actual[i] = -expected[i] if expected[i] == 0 else expected[i]
    return expected, actual


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DTYPES).flatmap(near_tolerance_pairs))
def test_tolerance_mode_agrees_with_assert_close(pair: tuple[np.ndarray, np.ndarray]) -> None:
    expected, actual = pair
    t_actual, t_expected = torch.from_numpy(actual), torch.from_numpy(expected)
    try:
        torch.testing.assert_close(t_actual, t_expected, equal_nan=True)
        passes = True
    except AssertionError:
        passes = False
    m = compare(expected, actual, "tolerance")
    assert (m is None) == passes, (expected, actual, m)
    if m is not None:
        rtol, atol = TOLERANCES[expected.dtype]
        close = torch.isclose(t_actual, t_expected, rtol=rtol, atol=atol, equal_nan=True).numpy()
        assert m.count == int((~close).sum())
        assert m.index == (int(np.flatnonzero(~close)[0]),)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tolerance_mode_agrees_with_isclose_element_by_element(dtype: type) -> None:
    """Many elements a few floats either side of the tolerance: the rounding of torch's
    atol + |rtol * expected| in the dtype decides some of them (float64 arithmetic would not)."""
    rng = np.random.default_rng(4)
    n = 200_000
    expected = (rng.standard_normal(n) * 10.0 ** rng.uniform(-7, 7, n)).astype(dtype)
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    actual = expected + (dtype(atol) + np.abs(dtype(rtol) * expected)) * rng.choice(
        np.array([1, -1], dtype), n
    )
    for _ in range(2):  # up to two floats either way
        toward = rng.choice(np.array([-INF, 0.0, INF], dtype), n)
        actual = np.where(toward == 0, actual, np.nextafter(actual, toward))
    close = torch.isclose(
        torch.from_numpy(actual), torch.from_numpy(expected), rtol=rtol, atol=atol, equal_nan=True
    ).numpy()
    assert 0.1 * n < close.sum() < 0.9 * n
    assert compare(expected[close], actual[close], "tolerance") is None
    m = compare(expected[~close], actual[~close], "tolerance")
    assert m is not None and m.count == (~close).sum()


def test_tolerance_mode_reports_the_allowed_error() -> None:
    expected = np.array([100.0, 100.0], np.float32)
    actual = np.array([100.0, 100.01], np.float32)
    m = compare(expected, actual, "tolerance")
    assert m is not None and m.index == (1,)
    assert m.budget == pytest.approx(1e-5 + 1.3e-6 * 100, rel=1e-6)
    assert m.reason.startswith("exceeds tolerance")


# --- Mismatch.to_dict ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "actual", "mode"),
    [
        (np.zeros(2), np.zeros(3), "exact"),
        (np.array([np.nan, 1.0]), np.array([1.0, 1.0]), "ulp"),
        (np.array([np.inf]), np.array([-np.inf]), "tolerance"),
        (np.array([[1.0, 2.0]], np.float32), np.array([[1.0, 4.0]], np.float32), "ulp"),
    ],
)
def test_to_dict_is_strict_json(expected: np.ndarray, actual: np.ndarray, mode: str) -> None:
    m = compare(expected, actual, mode, budget_for(mode))  # type: ignore[arg-type]
    assert isinstance(m, Mismatch)
    d = m.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["index"] == list(m.index) and d["reason"] == m.reason and d["count"] == m.count
    for key in (
        "expected",
        "actual",
        "abs_error",
        "ulp_error",
        "max_abs_error",
        "max_ulp_error",
        "budget",
    ):
        value = getattr(m, key)
        if value is None:
            assert d[key] is None
        elif math.isfinite(value):
            assert d[key] == value
        else:
            assert d[key] == ("nan" if math.isnan(value) else "inf" if value > 0 else "-inf")


def test_to_dict_spells_the_non_finite_values() -> None:
    m = compare(np.zeros(2), np.zeros(3), "exact")
    assert m is not None
    d = m.to_dict()
    assert d["expected"] == "nan" and d["abs_error"] == "inf" and d["budget"] is None
    m = compare(np.array([-np.inf]), np.array([np.inf]), "exact")
    assert m is not None and m.to_dict()["expected"] == "-inf"


# --- ULP measures --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda dt: hnp.arrays(
            dt,
            st.integers(1, 8),
            elements=st.floats(
                width=32 if dt == np.float32 else 64, allow_nan=False, allow_infinity=False
            ),
        )
    )
)
def test_ulp_is_the_spacing_of_the_magnitude(x: np.ndarray) -> None:
    x = x[np.abs(x) < np.finfo(x.dtype).max]
    assert np.array_equal(ulp(x), np.spacing(np.abs(x)).astype(np.float64))


@pytest.mark.parametrize(("dtype", "top"), [(np.float32, 2.0**104), (np.float64, 2.0**971)])
def test_ulp_at_the_ends_of_the_range(dtype: type, top: float) -> None:
    tiny = float(np.finfo(dtype).smallest_subnormal)
    x = np.array([0.0, -0.0, tiny, np.finfo(dtype).max, -np.inf, np.nan, 1.0], dtype)
    got = ulp(x)
    assert list(got[:4]) == [tiny, tiny, tiny, top]
    assert got[4] == INF and np.isnan(got[5]) and got[6] == float(np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ulp_distance_counts_representable_steps(dtype: type) -> None:
    one = dtype(1.0)
    a = np.array([np.nextafter(one, dtype(2)), -0.0, np.nan, np.nan, np.inf, 0.0], dtype)
    e = np.array(
        [
            np.nextafter(one, dtype(0)),
            0.0,
            -np.nan,
            1.0,
            -np.inf,
            -dtype(np.finfo(dtype).smallest_subnormal),
        ],
        dtype,
    )
    assert list(ulp_distance(a, e)) == [2.0, 0.0, 0.0, INF, INF, 1.0]
    with pytest.raises(TypeError, match="one dtype"):
        ulp_distance(np.zeros(1, np.float32), np.zeros(1))


def test_bitwise_equal() -> None:
    a = np.concatenate([nan_with_payload(np.float64, 3, True), [1.0]])
    b = np.concatenate([nan_with_payload(np.float64, 9, False), [1.0]])
    assert bitwise_equal(a, b)
    assert not bitwise_equal(np.array([0.0]), np.array([-0.0]))
    assert not bitwise_equal(np.zeros(2), np.zeros(3))
    assert not bitwise_equal(np.zeros(2), np.zeros(2, np.float32))
    assert not bitwise_equal(np.array([np.nan]), np.array([1.0]))


def test_scaled_ulp_error() -> None:
    e = np.array([1.0, 0.0], np.float32)
    a = np.array([1.0 + 2 * 2.0**-23, 2.0**-22], np.float32)
    assert scaled_ulp_error(a, e, 1.0) == 2.0  # the zero counts in ULPs of the scale 1
    assert scaled_ulp_error(a, e, 0.0) == 2.0**127  # ... or of its own magnitude
    big = np.finfo(np.float32).max
    assert scaled_ulp_error(np.array([np.nextafter(big, 0)]), np.array([big]), 0.0) == 1.0
    assert scaled_ulp_error(np.array([np.nan]), np.array([1.0]), 1.0) == INF
    assert scaled_ulp_error(np.zeros(0), np.zeros(0), 1.0) == 0.0


# --- reduction_budget ----------------------------------------------------------------------------


def test_reduction_budget_is_normwise() -> None:
    e = np.array([[1e-6, -3.0], [np.inf, np.nan]], np.float32)
    budget = reduction_budget(e, 4)
    assert budget.shape == e.shape
    assert np.all(budget == 4 * 2.0**-22)  # ULPs of 3, the largest finite magnitude, everywhere
    actual = e + np.float32(4 * 2.0**-22) * np.array([[1, -1], [0, 0]], np.float32)
    assert compare(e, actual, "ulp", budget) is None  # the tiny element may move by 4 ULP of 3
    assert compare(e, actual, "ulp", reduction_budget(e, 3)) is not None
    assert np.all(reduction_budget(e, 1, scale=100.0) == 2.0**-17)  # ULP of 100 in float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduction_budget_of_zero_and_empty_tensors(dtype: type) -> None:
    tiny = float(np.finfo(dtype).smallest_subnormal)
    assert np.all(reduction_budget(np.zeros(3, dtype), 8) == 8 * tiny)
    assert np.all(reduction_budget(np.array([np.nan, -np.inf], dtype), 2) == 2 * tiny)
    assert reduction_budget(np.zeros((0, 2), dtype), 8).shape == (0, 2)
    with pytest.raises(ValueError):
        reduction_budget(np.zeros(3, dtype), -1)


# --- sgd_step_budget -----------------------------------------------------------------------------


@st.composite
def hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    """The whole valid range, boundaries included: lr [0, 10], momentum [0, 3], dampening [0, 1],
    weight_decay [0, 5]; nesterov only where torch allows it."""

    def ranged(high: float) -> st.SearchStrategy[float]:
        return st.one_of(st.sampled_from([0.0, high, 1.0, 0.5]), st.floats(0.0, high))

    momentum, dampening = draw(ranged(3.0)), draw(ranged(1.0))
    return {
        "lr": draw(ranged(10.0)),
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": draw(ranged(5.0)),
        "nesterov": momentum > 0 and dampening == 0 and draw(st.booleans()),
        "maximize": draw(st.booleans()),
    }


@st.composite
def step_inputs(
    draw: st.DrawFn,
    dtype: type,
    random_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(param, grad, buffer): Hypothesis-drawn elements (zeros, subnormals, wide exponents) then
    `random_size` elements with random signs and log-uniform magnitudes. |x| <= 2^100 (float32) or
    1e300 keeps every intermediate of a step finite."""
    width = 32 if dtype == np.float32 else 64
    bound, lowest = (2.0**100, -45) if dtype == np.float32 else (1e300, -323)
    n = draw(st.integers(0, 16))
    elements = st.floats(-bound, bound, width=width)
    drawn = [np.array(draw(st.lists(elements, min_size=n, max_size=n)), dtype) for _ in range(3)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    exponents = rng.uniform(lowest, math.log10(bound), (3, random_size))
    scale = rng.choice([1.0, -1.0], (3, random_size)) * 10.0**exponents
    return tuple(np.concatenate([d, s.astype(dtype)]) for d, s in zip(drawn, scale, strict=True))


def step_by_hand(
    param: np.ndarray,
    grad: np.ndarray,
    buffer: np.ndarray | None,
    hp: dict[str, Any],
    rounding: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """torch's SGD step, with every `x + α·y` rounded once (fma) or twice."""
    g = -grad if hp["maximize"] else grad
    if hp["weight_decay"] != 0:
        g = add_scaled(g, param, hp["weight_decay"], rounding)  # type: ignore[arg-type]
    if hp["momentum"] != 0:
        if buffer is None:
            buffer = g.copy()
        else:
            buffer = add_scaled(buffer * hp["momentum"], g, 1 - hp["dampening"], rounding)  # type: ignore[arg-type]
        g = add_scaled(g, buffer, hp["momentum"], rounding) if hp["nesterov"] else buffer  # type: ignore[arg-type]
    return add_scaled(param, g, -hp["lr"], rounding), buffer  # type: ignore[arg-type]


def budgets(
    param: np.ndarray,
    grad: np.ndarray,
    buffer: np.ndarray | None,
    hp: dict[str, Any],
    first_step: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    return sgd_step_budget(
        param,
        grad,
        None if first_step or hp["momentum"] == 0 else buffer,
        first_step=first_step,
        **hp,
    )


def assert_within(expected: np.ndarray, actual: np.ndarray, budget: np.ndarray | None) -> None:
    assert budget is not None
    m = compare(expected, actual, "ulp", budget)
    assert m is None, str(m)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda dt: st.tuples(step_inputs(dt), hyperparameters(), st.booleans())
    )
)
def test_one_or_two_roundings_stay_within_the_step_budget(case: Any) -> None:
    (param, grad, buffer), hp, first_step = case
    old = None if first_step or hp["momentum"] == 0 else buffer
    param_budget, buffer_budget = budgets(param, grad, buffer, hp, first_step)
    fused = step_by_hand(param, grad, old, hp, "fused")
    separate = step_by_hand(param, grad, old, hp, "separate")
    assert_within(fused[0], separate[0], param_budget)
    assert_within(separate[0], fused[0], param_budget)
    if hp["momentum"] == 0:
        assert buffer_budget is None
    else:
        assert_within(fused[1], separate[1], buffer_budget)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda dt: st.tuples(step_inputs(dt), hyperparameters(), st.booleans())
    )
)
def test_refimpl_rounding_models_stay_within_the_step_budget(case: Any) -> None:
    """refimpl's sgd_update: fused, separate, and the fused kernel's tail (which contracts
    μ·b + (1 − τ)·g the other way round) are all within budget of each other."""
    (param, grad, buffer), hp, first_step = case
    old = None if first_step or hp["momentum"] == 0 else buffer
    param_budget, buffer_budget = budgets(param, grad, buffer, hp, first_step)
    results = []
    for rounding, tail in [("fused", None), ("separate", None), ("fused", np.arange(param.size))]:
        p = param.copy()
        b = sgd_update(
            p, grad, None if old is None else old.copy(), rounding=rounding, fused_tail=tail, **hp
        )
        results.append((p, b))
    for p, b in results[1:]:
        assert_within(results[0][0], p, param_budget)
        if hp["momentum"] != 0:
            assert_within(results[0][1], b, buffer_budget)  # type: ignore[arg-type]


def exact_step(
    param: np.ndarray, grad: np.ndarray, buffer: np.ndarray | None, hp: dict[str, Any]
) -> tuple[list[Fraction], list[Fraction] | None]:
    """The step in exact rational arithmetic (scalars as the Python floats they are)."""
    lr, mu, wd = Fraction(hp["lr"]), Fraction(hp["momentum"]), Fraction(hp["weight_decay"])
    damp = Fraction(1 - hp["dampening"])
    thetas, bufs = [], []
    for i in range(param.size):
        theta, g = Fraction(float(param[i])), Fraction(float(grad[i]))
        g = -g if hp["maximize"] else g
        g = g + wd * theta
        if mu != 0:
            b = g if buffer is None else mu * Fraction(float(buffer[i])) + damp * g
            g = g + mu * b if hp["nesterov"] else b
            bufs.append(b)
        thetas.append(theta - lr * g)
    return thetas, bufs if mu != 0 else None


def assert_half_budget(computed: np.ndarray, exact: list[Fraction], budget: np.ndarray) -> None:
    for i, (c, x) in enumerate(zip(computed, exact, strict=True)):
        assert abs(Fraction(float(c)) - x) <= Fraction(float(budget[i])) / 2, i


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda dt: st.tuples(step_inputs(dt, random_size=16), hyperparameters(), st.booleans())
    )
)
def test_each_rounding_is_within_half_the_budget_of_the_exact_step(case: Any) -> None:
    """The model's claim itself: any correct computation lies within budget/2 of the exact
    result, so two of them lie within the budget of each other."""
    (param, grad, buffer), hp, first_step = case
    old = None if first_step or hp["momentum"] == 0 else buffer
    param_budget, buffer_budget = budgets(param, grad, buffer, hp, first_step)
    thetas, bufs = exact_step(param, grad, old, hp)
    for rounding in ("fused", "separate"):
        theta, b = step_by_hand(param, grad, old, hp, rounding)
        assert_half_budget(theta, thetas, param_budget)
        if bufs is not None:
            assert_half_budget(b, bufs, buffer_budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("lr", [1e-44, 3e-45, 7e-46, 1.5e-40])
def test_scalars_that_round_to_float32_subnormals_stay_within_the_budget(lr: float) -> None:
    """float32(lr) is far from lr here (a relative error up to 1/2, not u): the model bounds the
    scalar's rounding by u·|α| + η, and the exact step stays within half the budget."""
    rng = np.random.default_rng(5)
    grad = (rng.standard_normal(64) * 1e30).astype(np.float32)
    param = (rng.standard_normal(64) * np.abs(lr * grad.astype(np.float64))).astype(np.float32)
    hp = {
        "lr": lr,
        "momentum": 0.0,
        "dampening": 0.0,
        "weight_decay": lr,
        "nesterov": False,
        "maximize": False,
    }
    budget, _ = sgd_step_budget(param, grad, None, first_step=True, **hp)
    thetas, _ = exact_step(param, grad, None, hp)
    for rounding in ("fused", "separate"):
        theta, _ = step_by_hand(param, grad, None, hp, rounding)
        assert_half_budget(theta, thetas, budget)


TYPICAL = [
    {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "maximize": False},
    {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-4, "nesterov": False, "maximize": True},
    {"momentum": 0.9, "dampening": 0.0, "weight_decay": 5e-4, "nesterov": True, "maximize": False},
]


@pytest.mark.parametrize("first_step", [True, False])
@pytest.mark.parametrize("hp", TYPICAL)
def test_a_step_wrong_by_one_part_in_a_million_fails_in_float64(
    hp: dict[str, Any], first_step: bool
) -> None:
    rng = np.random.default_rng(0)
    param, grad, buffer = rng.standard_normal((3, 1000))
    old = None if first_step or hp["momentum"] == 0 else buffer
    param_budget, _ = sgd_step_budget(param, grad, old, lr=0.1, first_step=first_step, **hp)
    right, _ = step_by_hand(param, grad, old, {**hp, "lr": 0.1}, "fused")
    other, _ = step_by_hand(param, grad, old, {**hp, "lr": 0.1}, "separate")
    wrong, _ = step_by_hand(param, grad, old, {**hp, "lr": 0.1 * (1 + 1e-6)}, "fused")
    assert not bitwise_equal(right, other)  # the budget has something to admit
    assert compare(right, other, "ulp", param_budget) is None
    m = compare(right, wrong, "ulp", param_budget)
    assert m is not None and m.count >= 990


def test_a_wrong_momentum_fails_the_buffer_budget() -> None:
    rng = np.random.default_rng(1)
    param, grad, buffer = rng.standard_normal((3, 1000))
    hp = {
        "lr": 0.1,
        "momentum": 0.9,
        "dampening": 0.1,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
    }
    _, buffer_budget = sgd_step_budget(param, grad, buffer, first_step=False, **hp)
    _, right = step_by_hand(param, grad, buffer, hp, "fused")
    _, wrong = step_by_hand(param, grad, buffer, {**hp, "momentum": 0.9 * (1 + 1e-6)}, "fused")
    m = compare(right, wrong, "ulp", buffer_budget)  # type: ignore[arg-type]
    assert m is not None and m.count >= 990


def test_float32_budget_rejects_a_step_wrong_by_one_part_in_ten_thousand() -> None:
    rng = np.random.default_rng(2)
    param, grad = rng.standard_normal((2, 1000)).astype(np.float32)
    hp = {
        "momentum": 0.0,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
    }
    budget, _ = sgd_step_budget(param, grad, None, lr=0.1, first_step=True, **hp)
    right, _ = step_by_hand(param, grad, None, {**hp, "lr": 0.1}, "fused")
    wrong, _ = step_by_hand(param, grad, None, {**hp, "lr": 0.1 * (1 + 1e-4)}, "fused")
    m = compare(right, wrong, "ulp", budget)
    assert m is not None and m.count >= 900


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_step_budget_is_a_few_roundings_of_the_terms(dtype: type) -> None:
    """Not loose: for θ' = θ - γg the budget is 2(u|γg| (scalar) + u|γg| (product) + u|θ'|
    (sum)) up to second order, within 16u(|θ| + |γg|) plus the floor."""
    rng = np.random.default_rng(3)
    param, grad = rng.standard_normal((2, 100)).astype(dtype)
    budget, buffer_budget = sgd_step_budget(
        param,
        grad,
        None,
        lr=0.1,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        maximize=False,
        first_step=True,
    )
    u = 2.0**-24 if dtype == np.float32 else 2.0**-53
    p, g = param.astype(np.float64), grad.astype(np.float64)
    terms = np.abs(0.1 * g)
    assert buffer_budget is None
    assert np.all(budget >= 2 * u * (2 * terms + np.abs(p - 0.1 * g)))
    assert np.all(
        budget <= 16 * u * (np.abs(p) + terms) + float(np.finfo(dtype).smallest_subnormal) * 8
    )


def test_step_budget_checks_its_inputs_and_handles_non_finite_values() -> None:
    hp = {
        "lr": 0.1,
        "momentum": 0.9,
        "dampening": 0.0,
        "weight_decay": 0.1,
        "nesterov": True,
        "maximize": False,
    }
    x = np.array([1.0, np.inf, np.nan, 2.0])
    with pytest.raises(ValueError, match="first step"):
        sgd_step_budget(x, x, x, first_step=True, **hp)
    with pytest.raises(ValueError, match="first step"):
        sgd_step_budget(x, x, None, first_step=False, **hp)
    with pytest.raises(TypeError, match="one dtype"):
        sgd_step_budget(x, x.astype(np.float32), None, first_step=True, **hp)
    param_budget, buffer_budget = sgd_step_budget(x, np.ones(4), x, first_step=False, **hp)
    assert buffer_budget is not None
    for budget in (param_budget, buffer_budget):
        assert not np.isnan(budget).any() and np.isinf(budget[1:3]).all()
        assert np.isfinite(budget[[0, 3]]).all()
