"""The oracle: does an actual array (from the implementation under test) match the expected one
(from torch)? It knows arrays, dtypes and error budgets, nothing about models or optimizers, and
needs numpy only.

`compare(expected, actual, mode, budget)` returns None on a match, else a `Mismatch` that
describes the first differing element (C order) and summarises the rest. Three modes:

* "exact": bit for bit. Signed zeros differ (-0.0 != +0.0); NaN matches any NaN.
* "ulp": |actual - expected| <= budget, elementwise, decided exactly (no rounding in the test
  itself). The budget is an array of allowed ABSOLUTE errors, produced by an error model:
  `sgd_step_budget` (a rigorous rounding-error bound for one SGD step), `adam_step_budget` (the
  same for one Adam/AdamW step) or `reduction_budget` (a norm-wise bound for results that sum
  many terms, e.g. gradients).
* "tolerance": torch.testing.assert_close with its default rtol/atol for the dtype and
  equal_nan=True: |actual - expected| <= atol + rtol*|expected|, evaluated as torch.isclose
  evaluates it (in the tensors' dtype), so it passes exactly when assert_close passes.

In every mode NaN and infinities must agree in position and sign (NaN vs NaN is equal whatever its
sign or payload; +inf vs -inf, or inf vs a finite number, differ), and a shape or dtype difference
is a mismatch. Arrays must be float32 or float64.

`judge` is `compare` with, besides the verdict, how close the error came to its budget (the
largest ratio of an element's error to what is allowed there); `identical` is the bitwise test
that lets a caller skip computing a budget no comparison will need.

Also here: the ULP measures (`ulp`, `ulp_distance`, `scaled_ulp_error`, `bitwise_equal`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

Mode = Literal["exact", "ulp", "tolerance"]

_INT: dict[np.dtype, type[np.int32] | type[np.int64]] = {
    np.dtype(np.float32): np.int32,
    np.dtype(np.float64): np.int64,
}
# precision p (significant bits, the implicit one included) and the smallest normal exponent
_FORMATS = {np.dtype(np.float32): (24, -126), np.dtype(np.float64): (53, -1022)}
# torch.testing.assert_close's defaults: dtype -> (rtol, atol)
TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float32): (1.3e-6, 1e-5),
    np.dtype(np.float64): (1e-7, 1e-7),
}


def _float_dtype(x: np.ndarray) -> np.dtype:
    if x.dtype not in _FORMATS:
        raise TypeError(f"the oracle compares float32 or float64 arrays, got {x.dtype}")
    return x.dtype


# --- ULP measures --------------------------------------------------------------------------------


def ulp(x: np.ndarray) -> np.ndarray:
    """The unit in the last place of |x| in x's dtype, as float64: 2^(e - p + 1) for
    2^e <= |x| < 2^(e+1), p the dtype's precision (24 or 53 bits); below the smallest normal
    (zero included) the subnormal spacing. Unlike np.spacing, the largest finite number has the
    ulp of its binade (2^104 in float32), not inf. ulp(±inf) = inf, ulp(NaN) = NaN."""
    x = np.asarray(x)
    precision, emin = _FORMATS[_float_dtype(x)]
    magnitude = np.abs(x).astype(np.float64)
    with np.errstate(invalid="ignore"):
        _, k = np.frexp(magnitude)  # |x| = m * 2^k with m in [0.5, 1): e = k - 1
        k = np.where(magnitude == 0, emin + 1, k)  # frexp(0) gives k = 0
        spacing = np.ldexp(1.0, np.maximum(k - 1, emin) - (precision - 1))
    spacing = np.where(np.isinf(magnitude), np.inf, spacing)
    return np.where(np.isnan(magnitude), np.nan, spacing)


def _ordered(x: np.ndarray) -> np.ndarray:
    """Maps floats to integers in the same order, so adjacent floats differ by one (±0 both map
    to 0)."""
    bits = x.view(_INT[x.dtype]).astype(np.int64)
    sign_bit = np.int64(np.iinfo(_INT[x.dtype]).min)
    return np.where(bits < 0, sign_bit - bits, bits)


def nonfinite_mismatch(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Positions where NaN / infinities differ between the two arrays: a NaN against a non-NaN,
    an infinity against a finite number, or infinities of opposite sign."""
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    inf_a, inf_e = np.isinf(actual), np.isinf(expected)
    mismatch: np.ndarray = (
        (nan_a != nan_e) | (inf_a != inf_e) | (inf_a & inf_e & (actual != expected))
    )
    return mismatch


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Elementwise count of representable steps between the two values, as float64 (±0 count as
    one value, so their distance is 0); NaN vs NaN is 0, and a NaN/infinity mismatch (see
    `nonfinite_mismatch`) is inf. Both arrays must have one float dtype."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.dtype != expected.dtype:
        raise TypeError(f"ulp_distance needs one dtype, got {actual.dtype} and {expected.dtype}")
    _float_dtype(actual)
    both_nan = np.isnan(actual) & np.isnan(expected)
    distance = np.abs(_ordered(actual) - _ordered(expected)).astype(np.float64)
    distance = np.where(both_nan, 0.0, distance)
    return np.where(nonfinite_mismatch(actual, expected), np.inf, distance)


def scaled_ulp_error(actual: np.ndarray, expected: np.ndarray, scale: float) -> float:
    """Largest |actual - expected| in ULPs of max(|expected|, scale), over all elements: the
    error model of results that sum many terms, whose error is bounded by the magnitude of the
    terms (`scale`), not of the (possibly cancelled) result. inf on a NaN/infinity mismatch;
    positions where both are the same non-finite value count as 0."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.size == 0:
        return 0.0
    if nonfinite_mismatch(actual, expected).any():
        return float("inf")
    finite = np.isfinite(expected)
    if not finite.any():
        return 0.0
    a, e = actual[finite].astype(np.float64), expected[finite].astype(np.float64)
    magnitude = np.minimum(np.maximum(np.abs(e), scale), np.finfo(expected.dtype).max)
    return float(np.max(np.abs(a - e) / ulp(magnitude.astype(expected.dtype))))


def bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Same shape, dtype and bits everywhere (signed zeros distinguished), any NaN matching any
    NaN."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if (nan_a != nan_e).any():
        return False
    ints = _INT[_float_dtype(actual)]
    return bool(np.array_equal(actual.view(ints)[~nan_a], expected.view(ints)[~nan_e]))


# --- compare -------------------------------------------------------------------------------------


def _json_float(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


@dataclass(frozen=True)
class Mismatch:
    """The first differing element of one tensor (C order), plus a summary of all of them.

    For a shape or dtype difference there are no elements to compare: index is (), expected and
    actual are NaN, every error field is inf, count is max(expected.size, actual.size, 1) and
    budget is None.
    """

    index: tuple[int, ...]  # first differing element, C order
    expected: float
    actual: float
    abs_error: float  # |actual - expected| in float64 at index; inf for a NaN/infinity mismatch
    ulp_error: float  # ulp_distance at index; inf for a NaN/infinity mismatch
    count: int  # how many elements differ (under the mode's rule)
    max_abs_error: float  # over ALL elements (matching non-finite pairs count 0)
    max_ulp_error: float  # over ALL elements (matching non-finite pairs count 0)
    budget: float | None  # allowed |actual - expected| at index ("ulp", "tolerance"); None: exact
    reason: str  # one line: "bits differ", "NaN position", "exceeds budget: ...", ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (json.dumps(..., allow_nan=False) works): index becomes a list, and the
        non-finite floats become the strings "inf", "-inf" and "nan"; budget None stays None."""
        out: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "index":
                out["index"] = [int(i) for i in value]
            elif isinstance(value, float):
                out[field.name] = _json_float(value)
            else:
                out[field.name] = value
        return out

    def __str__(self) -> str:
        return (
            f"at {self.index}: expected {self.expected!r}, actual {self.actual!r} "
            f"({self.reason}; {self.count} element(s) differ, max {self.max_ulp_error:g} "
            f"ULP, max abs {self.max_abs_error:g})"
        )


def _abs_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """|actual - expected| in float64 (rounded: for reporting), inf on a NaN/infinity mismatch,
    0 where both hold the same non-finite value."""
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    finite = np.isfinite(actual) & np.isfinite(expected)
    error = np.where(finite, error, 0.0)
    return np.where(nonfinite_mismatch(actual, expected), np.inf, error)


def within(expected: np.ndarray, actual: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """|actual - expected| <= budget elementwise, decided exactly for finite values (float32 or
    float64 arrays, budget float64). With d = fl(a - e) and t = (a - e) - d exactly (Knuth's
    TwoSum), |a - e| <= b holds iff |d| < b, or |d| == b and t does not point away from zero
    (b is a float64, so any |d| < b is at most b's predecessor and |t| <= half a gap). An
    infinite budget admits every finite pair. Non-finite pairs are not decided here."""
    return _within(expected, actual, budget)[0]


def _within(
    expected: np.ndarray, actual: np.ndarray, budget: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`within`, and |d| (the rounded |actual - expected|, float64) it was decided from."""
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        d = a - e
        z = d - a
        t = (a - (d - z)) + (-e - z)
        magnitude = np.abs(d)
        on_edge = (magnitude == budget) & (t * np.sign(d) <= 0)
    return (magnitude < budget) | on_edge | np.isinf(budget), magnitude


def identical(expected: np.ndarray, actual: np.ndarray) -> bool:
    """Same shape, dtype and bytes: a match in every mode of `compare`, with no error at all
    (a cheap first test, before any budget is computed)."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    return (
        expected.shape == actual.shape
        and expected.dtype == actual.dtype
        and expected.tobytes() == actual.tobytes()
    )


# The largest ratio `judge` reports (a NaN or infinity out of place, or a zero budget exceeded
# by more than this many ULPs).
RATIO_CAP = 1e6


def _ratio(ratios: np.ndarray) -> float:
    """The largest of `ratios` (NaN-free), capped at RATIO_CAP; 0 for none."""
    return min(float(ratios.max(initial=0.0)), RATIO_CAP)


def _isclose(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch.isclose(actual, expected, rtol, atol, equal_nan=True) for the dtype's default
    tolerances, in torch's arithmetic: allowed = atol + |rtol * expected| and |actual - expected|
    are computed in the dtype (the scalars rounded to it first). Returns (close, allowed)."""
    dtype = expected.dtype
    rtol, atol = TOLERANCES[dtype]
    with np.errstate(invalid="ignore", over="ignore"):
        allowed = dtype.type(atol) + np.abs(dtype.type(rtol) * expected)
        error = np.abs(actual - expected)
        close = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
        close |= np.isfinite(error) & (error <= allowed)
    return close, allowed


def _nonfinite_reason(expected: float, actual: float) -> str:
    if math.isnan(expected) != math.isnan(actual):
        return "NaN position"
    if math.isinf(expected) and math.isinf(actual):
        return "infinity sign"
    return "infinity position"


def compare(
    expected: np.ndarray, actual: np.ndarray, mode: Mode, budget: np.ndarray | float | None = None
) -> Mismatch | None:
    """None when `actual` matches `expected` under `mode`, else the first mismatch (C order).

    Error model per mode:
    * "exact": no error; bits must agree (signed zeros distinguished, any NaN equals any NaN).
      `budget` must be None.
    * "ulp": |actual - expected| <= budget, elementwise and exactly (the test does not round):
      `budget` holds allowed ABSOLUTE errors (float64, broadcastable to the shape, >= 0, no NaN),
      normally from an error model (`sgd_step_budget`, `adam_step_budget`, `reduction_budget`).
      ±0 are equal here.
    * "tolerance": torch.testing.assert_close(actual, expected, equal_nan=True) with the dtype's
      default tolerances (TOLERANCES; |actual - expected| <= atol + rtol*|expected|, in torch's
      float arithmetic). `budget` must be None.
    In every mode NaN and infinities must agree in position and sign. Shape and dtype must be
    equal (a difference is a Mismatch); arrays must be float32 or float64 (else TypeError).
    """
    return judge(expected, actual, mode, budget)[0]


def judge(
    expected: np.ndarray, actual: np.ndarray, mode: Mode, budget: np.ndarray | float | None = None
) -> tuple[Mismatch | None, float]:
    """`compare`, and how close the error came to what is allowed: the largest ratio, over
    the elements, of the observed error to the element's allowed error ("ulp": |actual -
    expected| over the budget; "tolerance": over atol + rtol*|expected|; both measured in one
    unit, so the ratio is also the error in ULPs over the budget in ULPs of the same value),
    and in mode "exact", or where the budget is 0, the ULP distance itself (in mode "exact"
    at least 1 where bits differ: ±0 are 0 ULP apart). 0.0 where the arrays are bitwise
    identical; a NaN or infinity out of place, a shape or a dtype
    difference count RATIO_CAP, and every ratio is capped there (finite). Computed from what
    the comparison has: arrays that match bit for bit cost one byte comparison."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if mode not in ("exact", "ulp", "tolerance"):
        raise ValueError(f"mode must be 'exact', 'ulp' or 'tolerance', got {mode!r}")
    if mode == "ulp":
        if budget is None:
            raise ValueError("mode 'ulp' needs a budget (allowed absolute errors)")
        budget = np.asarray(budget, dtype=np.float64)
        if np.isnan(budget).any() or (budget < 0).any():
            raise ValueError("a budget must be >= 0 and not NaN")
    elif budget is not None:
        raise ValueError(f"mode {mode!r} takes no budget")

    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        what = (
            ("shape", expected.shape, actual.shape)
            if expected.shape != actual.shape
            else ("dtype", expected.dtype, actual.dtype)
        )
        return Mismatch(
            index=(),
            expected=math.nan,
            actual=math.nan,
            abs_error=math.inf,
            ulp_error=math.inf,
            count=max(expected.size, actual.size, 1),
            max_abs_error=math.inf,
            max_ulp_error=math.inf,
            budget=None,
            reason=f"{what[0]} {what[1]} != {what[2]}",
        ), RATIO_CAP
    dtype = _float_dtype(expected)
    if expected.tobytes() == actual.tobytes():
        return None, 0.0

    nonfinite_bad = nonfinite_mismatch(actual, expected)
    finite = np.isfinite(actual) & np.isfinite(expected)
    allowed: np.ndarray | None = None
    ratios: np.ndarray | None = None  # per element, where finite (exact: from ulp_errors)
    if mode == "exact":
        ints = _INT[dtype]
        differs = nonfinite_bad | (finite & (actual.view(ints) != expected.view(ints)))
    elif mode == "ulp":
        assert budget is not None  # checked above
        allowed = np.broadcast_to(budget, expected.shape)
        ok, magnitude = _within(expected, actual, allowed)
        differs = nonfinite_bad | (finite & ~ok)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratios = np.where(finite & (magnitude > 0), magnitude / allowed, 0.0)
        zero = finite & (allowed == 0) & (magnitude > 0)
        if zero.any():  # nothing was allowed: the ULP distance itself
            ratios = np.where(zero, ulp_distance(actual, expected), ratios)
    else:
        close, allowed = _isclose(expected, actual)
        differs = ~close
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            ratios = np.where(finite & (error > 0), error / allowed, 0.0)
    if nonfinite_bad.any():
        ratio = RATIO_CAP
    elif ratios is not None:
        ratio = _ratio(np.nan_to_num(ratios, nan=0.0, posinf=RATIO_CAP))
    else:
        ratio = 0.0  # exact: a mismatch below sets it
    if not differs.any():
        return None, ratio

    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(differs)), differs.shape))
    abs_errors = _abs_error(actual, expected)
    ulp_errors = ulp_distance(actual, expected)
    e, a = float(expected[index]), float(actual[index])
    abs_error, ulp_error = float(abs_errors[index]), float(ulp_errors[index])
    budget_here = None if allowed is None else float(allowed[index])
    if nonfinite_bad[index]:
        reason = _nonfinite_reason(e, a)
    elif mode == "exact":
        reason = "signed zero" if e == a == 0 else "bits differ"
    elif mode == "ulp":
        reason = f"exceeds budget: |actual - expected| = {abs_error:.6g} > {budget_here:.6g}"
    else:
        rtol, atol = TOLERANCES[dtype]
        reason = (
            f"exceeds tolerance: |actual - expected| = {abs_error:.6g} > "
            f"atol + rtol*|expected| = {budget_here:.6g} (rtol {rtol:g}, atol {atol:g})"
        )
    if mode == "exact":  # nothing is allowed: the ULP distance, at least 1 (±0 are 0 apart)
        ratio = max(_ratio(np.minimum(ulp_errors, RATIO_CAP)), 1.0)
    return Mismatch(
        index=index,
        expected=e,
        actual=a,
        abs_error=abs_error,
        ulp_error=ulp_error,
        count=int(np.count_nonzero(differs)),
        max_abs_error=float(abs_errors.max()),
        max_ulp_error=float(ulp_errors.max()),
        budget=budget_here,
        reason=reason,
    ), ratio


# --- error models for mode "ulp" -----------------------------------------------------------------


def reduction_budget(expected: np.ndarray, ulps: float, *, scale: float = 0.0) -> np.ndarray:
    """Norm-wise budget for results that sum many terms (gradients, matmuls, reductions):
    every element may be off by `ulps` ULPs of the tensor's largest magnitude,

        budget = ulps * ulp(max(max |expected|, scale))    for every element,

    because a backward pass sums many terms in an order the implementation chooses, so its error
    is bounded relative to the size of the terms (of the order of the tensor's largest element),
    not of each (possibly cancelled, tiny) element. Non-finite elements are left out of the max.
    `scale` is an optional floor for that magnitude (the size of the terms, when known); with
    it 0 and an all-zero or empty tensor, the magnitude is 0 and the budget is `ulps` subnormal
    spacings: zero must be reproduced as (practically) zero. Returns a float64 array of
    expected's shape."""
    expected = np.asarray(expected)
    dtype = _float_dtype(expected)
    if not ulps >= 0 or not scale >= 0:
        raise ValueError(f"ulps and scale must be >= 0, got {ulps!r}, {scale!r}")
    values = np.abs(expected[np.isfinite(expected)])
    largest = max(float(values.max()) if values.size else 0.0, float(scale))
    largest = min(largest, float(np.finfo(dtype).max))
    return np.full(expected.shape, ulps * float(ulp(np.asarray(largest, dtype=dtype))))


@dataclass(frozen=True)
class _Bounded:
    """An intermediate of the step: its value computed from the reference's inputs (float64) and
    a bound on the distance of ANY correct implementation's value from the exact one."""

    value: np.ndarray
    error: np.ndarray


@dataclass(frozen=True)
class _Format:
    u: float  # unit roundoff: a rounding to nearest moves a normal result by <= u*|result|
    eta: float  # half the smallest subnormal: the most a result in the subnormal range moves
    tiny: float  # the budget's floor: the smallest subnormal (float64: 16 of them, see _format)
    # results larger than this may round to an infinity (inf: not checked; `_linear` ignores it)
    huge: float = math.inf


def _format(dtype: np.dtype) -> _Format:
    """The bound is evaluated in float64. For float32 every term is exact enough there; for
    float64 half a subnormal is not representable and float64's own subnormal arithmetic
    rounds by up to half a spacing per operation, so η is taken as a whole spacing and the
    floor as 16 spacings (more than the bound's operations can lose)."""
    precision, _ = _FORMATS[dtype]
    tiny = float(np.finfo(dtype).smallest_subnormal)
    if dtype == np.float64:
        return _Format(u=2.0**-precision, eta=tiny, tiny=16 * tiny)
    return _Format(u=2.0**-precision, eta=tiny / 2, tiny=tiny)


def _exact(x: np.ndarray | float) -> _Bounded:
    value = np.asarray(x, dtype=np.float64)
    return _Bounded(value, np.zeros_like(value))


def _linear(terms: list[tuple[float, _Bounded]], fmt: _Format) -> _Bounded:
    """r = Σ αᵢ·yᵢ, as a correct implementation may compute it: each scalar αᵢ maybe rounded to the
    dtype, each product αᵢ·yᵢ rounded or kept exact inside an fma, and the sum rounded once.
    Relative to the exact r, with Mᵢ = |yᵢ| + eᵢ bounding the operand an implementation holds:

        err(r) <= Σ |αᵢ|·eᵢ                         (errors carried in)
                + Σ (u·|αᵢ| + η)·Mᵢ                  (αᵢ rounded to the dtype)
                + Σ (u·|αᵢ|·Mᵢ + η)                  (αᵢ·yᵢ rounded)
                + u·(|r| + all the above) + η         (the sum rounded)

    where the scalar and product terms vanish for αᵢ = ±1 or 0 (exact), η is half the smallest
    subnormal (a rounding in the subnormal range moves by at most η, not u·|result|), and the
    factor (1 + 8u) covers the second-order terms (the rounding of a rounding error, the float64
    evaluation of |r| here)."""
    u, eta = fmt.u, fmt.eta
    with np.errstate(invalid="ignore", over="ignore"):
        value = sum((alpha * y.value for alpha, y in terms), start=np.float64(0.0))
        carried = sum((abs(alpha) * y.error for alpha, y in terms), start=np.float64(0.0))
        rounded_scalars = sum(
            (
                ((u * abs(alpha) + eta) * (np.abs(y.value) + y.error))
                for alpha, y in terms
                if abs(alpha) not in (0.0, 1.0)
            ),
            start=np.float64(0.0),
        )
        rounded_products = sum(
            (
                (u * abs(alpha) * (np.abs(y.value) + y.error) + eta)
                for alpha, y in terms
                if abs(alpha) not in (0.0, 1.0)
            ),
            start=np.float64(0.0),
        )
        before_sum = carried + rounded_scalars + rounded_products
        rounded_sum = u * (np.abs(value) + before_sum) + eta
        error = (before_sum + rounded_sum) * (1 + 8 * u)
    return _Bounded(np.asarray(value), np.asarray(error))


def _axpy(x: _Bounded, alpha: float, y: _Bounded, fmt: _Format) -> _Bounded:
    """r = x + α·y (torch's x.add(y, alpha=α)): one rounding (fma) or two."""
    return _linear([(1.0, x), (alpha, y)], fmt)


def _allowed(x: _Bounded, fmt: _Format) -> np.ndarray:
    """The budget between two correct implementations: each lies within x.error of the exact
    value, so they lie within 2·x.error of each other; plus a floor of one subnormal spacing.
    Where the bound is not finite-valued (NaN from inf - inf), anything is allowed (inf)."""
    allowed = 2 * x.error + fmt.tiny
    return np.where(np.isnan(allowed), np.inf, allowed)


# --- bounded arithmetic for the Adam step --------------------------------------------------------
#
# Each primitive takes intermediates x = (x.value, x.error) with the invariant of `_Bounded`:
# |x̃ − x| <= x.error for ANY correct implementation's x̃ and the exact x, and the float64 value
# itself is one such x̃ (|x.value − x| <= x.error). Two magnitudes follow from it:
# |x| <= |x.value| + x.error and |x̃| <= |x.value| + 2·x.error (`_hi` takes the larger).
# A result's bound is the error carried from the operands plus one rounding of the result,
# u·|r̃| + η, where u is the dtype's unit roundoff (float32: plus 2^-52, so that a result computed
# in float64 and then rounded to float32, two roundings, is covered too) and η the most a
# rounding in the subnormal range moves. Every primitive multiplies its bound by _SAFE, for the
# float64 evaluation of the bound itself (a few dozen roundings of relative 2^-53, all of
# non-negative terms), and gives inf where a value is not finite, the bound is NaN, or the
# result may exceed the dtype's largest finite number (it may then round to an infinity).

_SAFE = 1 + 2.0**-40


def _adam_format(dtype: np.dtype) -> _Format:
    """`_format` for the Adam model: float32's u also covers double rounding through float64
    (|fl32(fl64(x)) − x| <= (2^-24 + 2^-53·(1 + 2^-24))·|x| <= (2^-24 + 2^-52)·|x|); float64's η is
    8 subnormal spacings, because the bound's own float64 arithmetic may lose half a spacing per
    operation in that range (about a dozen per primitive); `huge` is the dtype's largest finite
    number."""
    base = _format(dtype)
    huge = float(np.finfo(dtype).max)
    if dtype == np.float32:
        return _Format(u=base.u + 2.0**-52, eta=base.eta, tiny=base.tiny, huge=huge)
    return _Format(u=base.u, eta=8 * base.eta, tiny=base.tiny, huge=huge)


def _hi(x: _Bounded) -> np.ndarray:
    """A bound on |x| and on |x̃| for any correct implementation's x̃: |x.value| + 2·x.error."""
    with np.errstate(invalid="ignore", over="ignore"):
        bound: np.ndarray = np.abs(x.value) + 2 * x.error
    return bound


def _exactly_zero(x: _Bounded) -> np.ndarray:
    """Where every correct implementation holds exactly 0 (a zero with no error)."""
    zero: np.ndarray = (x.value == 0) & (x.error == 0)
    return zero


def _result(
    value: np.ndarray,
    carried: np.ndarray,
    magnitude: np.ndarray,
    fmt: _Format,
    *,
    ulps: float = 0.5,
    exact: np.ndarray | bool = False,
) -> _Bounded:
    """An operation's result: the error carried from its operands, plus its rounding to the
    dtype, at most `ulps` units in the last place of a result of at most `magnitude`: an ulp is
    at most 2u·|r| for a normal r and 2η in the subnormal range, so the rounding adds
    2·ulps·(u·magnitude + η) (0.5 ulp: a correctly rounded operation, u·|r| + η). Where `exact`,
    no rounding (every implementation gets the exact result). inf where the value is not finite,
    the bound is NaN, or `magnitude` exceeds the dtype's largest finite number."""
    with np.errstate(invalid="ignore", over="ignore"):
        rounding = np.where(exact, 0.0, 2 * ulps * (fmt.u * magnitude + fmt.eta))
        error = (carried + rounding) * _SAFE
        bad = ~np.isfinite(value) | np.isnan(error) | (~np.asarray(exact) & (magnitude > fmt.huge))
        error = np.where(bad, np.inf, error)
    return _Bounded(np.asarray(value, dtype=np.float64), np.asarray(error, dtype=np.float64))


def _merge(*alternatives: _Bounded) -> _Bounded:
    """One intermediate that implementations compute in different ways (different formulas,
    orders or precisions for the SAME exact value): any of them lies within the largest of
    their bounds. The value is the first alternative's (itself within its own bound)."""
    error = alternatives[0].error
    for other in alternatives[1:]:
        error = np.maximum(error, other.error)
    return _Bounded(alternatives[0].value, error)


def _neg(x: _Bounded) -> _Bounded:
    """−x: exact."""
    return _Bounded(-x.value, x.error)


def _leaf(x: float, dtype: np.dtype) -> _Bounded:
    """A Python float (a hyperparameter) as an implementation may hold it: itself, or rounded to
    the dtype. The error is that rounding's, |dtype(x) − x|, computed exactly (two neighbouring
    doubles; a float32 that is 0 or subnormal differs from x by a double too); inf if dtype(x)
    overflows."""
    with np.errstate(over="ignore"):
        held = float(dtype.type(x))
    error = abs(held - x) if math.isfinite(held) or not math.isfinite(x) else math.inf
    return _Bounded(np.asarray(x, dtype=np.float64), np.asarray(error, dtype=np.float64))


def _narrowed(x: _Bounded, fmt: _Format, narrow: bool) -> _Bounded:
    """x, computed in Python doubles, as the dtype holds it: one more rounding when the dtype is
    narrower than double (`narrow`), none for float64."""
    return _result(x.value, x.error, _hi(x), fmt) if narrow else x


def _either(double: _Bounded, in_dtype: _Bounded, fmt: _Format, narrow: bool) -> _Bounded:
    """A scalar an implementation computes either in Python doubles and rounds to the dtype, or
    in the dtype from scalars it already holds there."""
    return _merge(_narrowed(double, fmt, narrow), in_dtype)


def _add(a: _Bounded, b: _Bounded, fmt: _Format) -> _Bounded:
    """r = a + b (a difference: b negated with `_neg`, exactly). The exact r moves by at most
    |ã − a| + |b̃ − b| <= e_a + e_b (carried), and the rounding of r̃ adds u·|r̃| + η with
    |r̃| <= |r| + carried <= |r.value| + 2·carried (r.value, the float64 sum, is within carried
    of r up to a relative 2^-53, which _SAFE covers). Adding an exact zero is exact (x + 0 = x):
    no rounding there. An fma computing a·b + c is this with a·b not rounded, so `_add` of a
    rounded `_mul` covers it."""
    with np.errstate(invalid="ignore", over="ignore"):
        value = a.value + b.value
        carried = a.error + b.error
        magnitude = np.abs(value) + 2 * carried
    return _result(value, carried, magnitude, fmt, exact=_exactly_zero(a) | _exactly_zero(b))


def _mul(a: _Bounded, b: _Bounded, fmt: _Format) -> _Bounded:
    """r = a·b. With |ã − a| <= e_a, |b̃ − b| <= e_b:

        |ã·b̃ − a·b| <= |ã − a|·|b̃| + |a|·|b̃ − b|
                     <= e_a·(|b.value| + 2e_b) + (|a.value| + e_a)·e_b
                     =  e_a·|b.value| + e_b·|a.value| + 3·e_a·e_b           (carried)

    and the rounding adds u·|ã·b̃| + η <= u·_hi(a)·_hi(b) + η. A factor that is exactly zero
    makes the product exactly zero (when the other factor is finite)."""
    with np.errstate(invalid="ignore", over="ignore"):
        value = a.value * b.value
        carried = a.error * np.abs(b.value) + b.error * np.abs(a.value) + 3 * a.error * b.error
        magnitude = _hi(a) * _hi(b)
        zero = (_exactly_zero(a) & np.isfinite(_hi(b))) | (_exactly_zero(b) & np.isfinite(_hi(a)))
    return _result(
        np.where(zero, 0.0, value), np.where(zero, 0.0, carried), magnitude, fmt, exact=zero
    )


def _div(a: _Bounded, b: _Bounded, fmt: _Format) -> _Bounded:
    """r = a / b. The exact |b| >= lo1 = |b.value| − e_b and every |b̃| >= lo2 = |b.value| − 2e_b;
    where lo2 <= 0 the divisor may be zero (or change sign) and the bound is inf. Else

        |ã/b̃ − a/b| = |(ã − a)·b − a·(b̃ − b)| / (|b̃|·|b|)
                     <= e_a / lo2 + ((|a.value| + e_a) / lo1)·(e_b / lo2)        (carried)

    and the rounding adds u·|ã/b̃| + η <= u·_hi(a)/lo2 + η. An exactly zero dividend over a
    divisor bounded away from zero gives exactly zero. (The second term is evaluated as a
    quotient times a relative error: (|a|·e_b)/(lo1·lo2) underflows in float64 for a = 1e-297,
    e_b = 1e-36 where the term itself is 1e-272.)"""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lo1 = np.abs(b.value) - b.error
        lo2 = np.abs(b.value) - 2 * b.error
        safe = lo2 > 0
        value = a.value / np.where(b.value == 0, np.nan, b.value)
        carried = a.error / lo2 + ((np.abs(a.value) + a.error) / lo1) * (b.error / lo2)
        magnitude = _hi(a) / lo2
        zero = safe & _exactly_zero(a)
        carried = np.where(safe, np.where(zero, 0.0, carried), np.inf)
    return _result(
        np.where(zero, 0.0, value), carried, np.where(safe, magnitude, np.inf), fmt, exact=zero
    )


def _sqrt(x: _Bounded, fmt: _Format, *, ulps: float = 0.5) -> _Bounded:
    """r = √x for x >= 0 (the exact x and every implementation's x̃; a negative value is inf).
    For x, x̃ >= 0 with |x̃ − x| <= e:

        |√x̃ − √x| = |x̃ − x| / (√x̃ + √x) <= e / (√max(x.value − e, 0) + √max(x.value − 2e, 0))
        |√x̃ − √x| <= √|x̃ − x| <= √e                       (carried: the smaller of the two)

    the second for x near zero, where the first is unbounded. The rounding adds at most `ulps`
    ulps of |√x̃| <= √_hi(x): half an ulp for IEEE sqrt (torch.sqrt, np.sqrt), more for a scalar's
    square root taken as x ** 0.5 (libm's pow)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        value = np.sqrt(np.maximum(x.value, 0.0))
        spread = np.sqrt(np.maximum(x.value - x.error, 0.0)) + np.sqrt(
            np.maximum(x.value - 2 * x.error, 0.0)
        )
        carried = np.minimum(np.sqrt(x.error), np.where(spread > 0, x.error / spread, np.inf))
        carried = np.where(x.value < 0, np.inf, carried)
        magnitude = np.sqrt(_hi(x))
    return _result(value, carried, magnitude, fmt, ulps=ulps)


def _maximum(a: _Bounded, b: _Bounded) -> _Bounded:
    """r = max(a, b): exact (no rounding), and 1-Lipschitz in each operand,
    |max(ã, b̃) − max(a, b)| <= max(|ã − a|, |b̃ − b|) <= max(e_a, e_b)."""
    with np.errstate(invalid="ignore"):
        value = np.maximum(a.value, b.value)
        error = np.where(np.isfinite(value), np.maximum(a.error, b.error), np.inf)
    return _Bounded(value, error)


def _pow(b: _Bounded, t: int, fmt: _Format, *, ulps: float) -> _Bounded:
    """r = b^t for b >= 0 and an integer t >= 1 (a bias correction's β^t). By the mean value
    theorem, for b, b̃ in [0, c] with c = _hi(b):

        |b̃^t − b^t| <= t·c^(t−1)·|b̃ − b| <= t·c^(t−1)·e_b                    (carried)

    and pow itself (libm's, or torch's/numpy's in the dtype: not correctly rounded) is allowed
    `ulps` ulps of its result (<= c^t). Exact when b is an exact zero."""
    if t < 1:
        raise ValueError(f"the exponent must be >= 1, got {t}")
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        value = np.power(b.value, float(t))
        c = _hi(b)
        carried = t * np.power(c, float(t - 1)) * b.error
        zero = _exactly_zero(b)
        carried = np.where(b.value < 0, np.inf, np.where(zero, 0.0, carried))
    return _result(
        np.where(zero, 0.0, value), carried, np.power(c, float(t)), fmt, ulps=ulps, exact=zero
    )


def sgd_step_budget(
    param: np.ndarray,
    grad: np.ndarray,
    buffer: np.ndarray | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Allowed absolute errors of one torch.optim.SGD step: (for the parameter after the step,
    for the momentum buffer after the step, None when momentum == 0).

    Inputs are the reference side's values BEFORE the step (arrays of one dtype, float32 or
    float64; `buffer` None on the first step or when momentum == 0). The step, per element,
    as torch computes it (γ = lr, μ = momentum, τ = dampening, λ = weight_decay):

        g  = -grad if maximize else grad              (exact)
        g  = g + λ·θ                                   if λ != 0
        b  = g  (first step)  or  μ·b + (1 - τ)·g      if μ != 0
        g  = g + μ·b  if nesterov  else  b             if μ != 0
        θ' = θ - γ·g

    Error model: every `x + α·y` may be computed with one rounding (fma) or two (α·y rounded,
    then the sum), and every scalar may first be rounded to the dtype (1 - τ is taken as Python
    computes it, in double). `_linear` bounds the distance of any such computation from the
    exact value, step by step (errors carried forward), with the unit roundoff u = 2^-24
    (float32) or 2^-53 (float64); the intermediate magnitudes come from the reference's values
    in float64. The reference and the implementation are each within that bound E of the exact
    result, so the budget is 2·E plus one subnormal spacing. It admits any correct rounding
    order and rejects, in float64, a step wrong by one part in a million. Where an input or an
    intermediate is not finite the budget is inf (compare still demands the non-finite values
    agree)."""
    param, grad = np.asarray(param), np.asarray(grad)
    dtype = _float_dtype(param)
    if grad.dtype != dtype or (buffer is not None and np.asarray(buffer).dtype != dtype):
        raise TypeError("param, grad and buffer must share one dtype")
    if momentum != 0 and first_step != (buffer is None):
        raise ValueError("with momentum, the first step has no buffer and later steps have one")
    fmt = _format(dtype)

    theta = _exact(param)
    g = _exact(-grad if maximize else grad)
    if weight_decay != 0:
        g = _axpy(g, weight_decay, theta, fmt)
    b: _Bounded | None = None
    if momentum != 0:
        if buffer is None:  # the first step: b = g, a copy
            b = g
        else:
            b = _linear([(momentum, _exact(buffer)), (1 - dampening, g)], fmt)
        g = _axpy(g, momentum, b, fmt) if nesterov else b
    theta = _axpy(theta, -lr, g, fmt)
    return _allowed(theta, fmt), None if b is None else _allowed(b, fmt)


def nesterov_grad_budget(
    grad_after: np.ndarray, buffer_after: np.ndarray, buffer_budget: np.ndarray, momentum: float
) -> np.ndarray:
    """Allowed error of `.grad` after a step of torch's foreach path with nesterov (no
    maximize, no weight decay), which writes g + μ·b into the gradient itself: the buffer's
    error carried (|μ|·budget(b)) plus both sides' roundings of the sum (one or two each, u
    of the terms), as in `sgd_step_budget`."""
    dtype = _float_dtype(np.asarray(grad_after))
    fmt = _format(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        terms = np.abs(momentum * np.asarray(buffer_after, np.float64)) + np.abs(
            np.asarray(grad_after, np.float64)
        )
        allowed = (
            abs(momentum) * buffer_budget
            + 4 * fmt.u * terms * (1 + 8 * fmt.u)
            + 4 * fmt.eta
            + fmt.tiny
        )
    return np.where(np.isnan(allowed), np.inf, allowed)


# How many ulps a pow (β^t, and a scalar's x ** 0.5) may be off: libm's, numpy's and torch's
# are within one; a few are allowed.
_POW_ULPS = 4.0


def adam_step_budget(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray | None,
    exp_avg_sq: np.ndarray | None,
    max_exp_avg_sq: np.ndarray | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
) -> dict[str, np.ndarray]:
    """Allowed absolute errors of one torch.optim.Adam (`decoupled` False) or AdamW (True) step:
    {"param", "exp_avg", "exp_avg_sq"} and, with amsgrad, "max_exp_avg_sq", each for the value
    after the step.

    Inputs are the reference side's values BEFORE the step (arrays of one shape and dtype,
    float32 or float64); the moments are None on the first step, meaning zeros
    (max_exp_avg_sq None also when not amsgrad); `step` is t, the count after this step's
    increment (1 on the first step). The step, per element (γ = lr, λ = weight_decay):

        g  = -grad if maximize else grad                     (exact)
        θ  = θ·(1 − γλ)                      if decoupled and λ != 0
        g  = g + λ·θ                         if not decoupled and λ != 0
        m  = β1·m + (1 − β1)·g
        v  = β2·v + (1 − β2)·g²
        vmax = max(vmax, v)                  if amsgrad (on v, not v̂); w = vmax or v
        θ' = θ − γ·(m / (1 − β1^t)) / (√(w / (1 − β2^t)) + ε)

    Error model: the exact step (scalars the Python floats they are) against ANY of the ways a
    correct implementation may compute it in the dtype, each operation rounded to nearest or
    kept exact (an fma), or computed in float64 and rounded (float32):
    * every scalar used as given or rounded to the dtype; 1 − β, 1 − β^t, √(1 − β2^t), their
      reciprocals, γ/(1 − β1^t), γλ and 1 − γλ computed in Python doubles (then rounded) or in
      the dtype from the scalars as it holds them (torch does so with Tensor betas); β^t is a
      pow allowed 4 ulps in either, and so is a scalar's square root (x ** 0.5);
    * m as β1·m + (1 − β1)·g or as lerp(m, g, w = 1 − β1): m + w·(g − m) for any w, and
      g − (1 − w)·(g − m) where torch's lerp uses it (w >= 0.5; for a small w it cancels);
      v likewise, with g² as g·g or g**2, or as addcmul's ((1 − β2)·g)·g;
    * amsgrad's max on v (not on v̂): exact;
    * the denominator as √(w/bc2) + ε, √w/√bc2 + ε (torch) or √w·(1/√bc2) + ε;
    * the update as (γ/bc1)·m/denom (torch; the product or the quotient first) or γ·m̂/denom
      with m̂ = m/bc1 or m·(1/bc1) (the product or the quotient first);
    * AdamW's decay as θ·(1 − γλ), θ − (γλ)·θ or θ − γ·(λθ) before the update, subtracted after
      it, or θ − γ·(m̂/denom + λθ).
    Each intermediate carries a float64 value and a bound on its distance from the exact value,
    propagated by the primitives above (`_add`, `_mul`, `_div`, `_sqrt`, `_maximum`, `_pow`, each
    deriving its bound); `_merge` takes the largest bound over the ways of computing one
    intermediate. The reference and the implementation are each within that bound E of the
    exact result, so the budget is 2·E plus one subnormal spacing (16 in float64), as
    `sgd_step_budget`'s. Not admitted: β^t accumulated by multiplication across steps, the bias
    corrections computed in float32 for float64 parameters (torch's capturable and
    differentiable paths keep `step` in a float32 tensor), a max over v̂, ε inside the root.

    The budget is inf where an input or an intermediate is not finite or may overflow the dtype
    in some correct order (g² of a float32 gradient above ~1.8e19, say), and where the
    denominator's bound includes zero (ε = 0 and v tiny): compare still demands non-finite
    values agree. In float32 it grows with the error of 1 − β computed from float32(β):
    1 − float32(0.999) is off by 1.3e-8 (a relative 1.3e-5 of 1 − β2, and of 1 − β2^t at t = 1;
    the update, a small part of θ', sees half of it); for β within 2^-25 of 1 the bias
    correction may be zero in float32, and the param's budget is inf.

    Measured (tests/test_oracle_adam.py, `budget_ulps`: θ, g ~ N(0, 1), moments from a history
    of N(0, 1) gradients, lr 1e-3, betas (0.9, 0.999), eps 1e-8; Adam, AdamW with λ = 1e-2 and
    Adam with amsgrad at t = 1, 10, 100, 1000), the budget in ulps of the result, median / 99th
    percentile: float32 param 3.3 / 144, exp_avg 7.6 / 207, exp_avg_sq 8.1 / 426; float64
    param 3.2 / 136, exp_avg 3.6 / 89, exp_avg_sq 3.0 / 5.8. (The 99th percentiles are
    cancellations, |θ'| << |θ| or m' near zero: the bound is relative to the terms.) On such
    values it rejects in float64 every typical bug tried (bias correction one step late, ε
    inside the square root, γ·(1 + 1e-6), coupled instead of decoupled decay, β1 and β2
    swapped); in float32 all but γ·(1 + 1e-6) and ε's place, which move θ' by a hundredth of an
    ulp or less (the test states the shares).
    """
    param, grad = np.asarray(param), np.asarray(grad)
    dtype = _float_dtype(param)
    state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": max_exp_avg_sq}
    arrays = {k: np.asarray(v) for k, v in state.items() if v is not None}
    if grad.dtype != dtype or any(a.dtype != dtype for a in arrays.values()):
        raise TypeError("param, grad and the moments must share one dtype")
    if grad.shape != param.shape or any(a.shape != param.shape for a in arrays.values()):
        raise ValueError("param, grad and the moments must share one shape")
    if (exp_avg is None) != (exp_avg_sq is None):
        raise ValueError("exp_avg and exp_avg_sq are both None (the first step) or neither")
    if max_exp_avg_sq is not None and not amsgrad:
        raise ValueError("max_exp_avg_sq is only kept with amsgrad")
    if amsgrad and exp_avg is not None and max_exp_avg_sq is None:
        raise ValueError("with amsgrad, a step after the first needs max_exp_avg_sq")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step is the count after the increment, an integer >= 1: {step!r}")
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
    if not all(math.isfinite(x) for x in hyper.values()):
        raise ValueError(f"hyperparameters must be finite: {hyper}")
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1) or eps < 0:
        raise ValueError(f"betas must lie in [0, 1) and eps be >= 0: {hyper}")
    t = int(step)
    fmt, f64 = _adam_format(dtype), _adam_format(np.dtype(np.float64))
    narrow = dtype != np.float64
    zeros = np.zeros(param.shape)

    # scalars: (double, held) — computed in Python doubles, and as the dtype may hold it
    one = _exact(np.float64(1.0))

    def leaf(x: float) -> tuple[_Bounded, _Bounded]:
        return _exact(np.float64(x)), _leaf(x, dtype)

    def complement(x: tuple[_Bounded, _Bounded]) -> tuple[_Bounded, _Bounded]:  # 1 − x
        double = _add(one, _neg(x[0]), f64)
        return double, _either(double, _add(one, _neg(x[1]), fmt), fmt, narrow)

    def power(x: tuple[_Bounded, _Bounded]) -> tuple[_Bounded, _Bounded]:  # x^t
        double = _pow(x[0], t, f64, ulps=_POW_ULPS)
        return double, _either(double, _pow(x[1], t, fmt, ulps=_POW_ULPS), fmt, narrow)

    def root(x: tuple[_Bounded, _Bounded]) -> tuple[_Bounded, _Bounded]:  # √x, as x ** 0.5
        double = _sqrt(x[0], f64, ulps=_POW_ULPS)
        return double, _either(double, _sqrt(x[1], fmt, ulps=_POW_ULPS), fmt, narrow)

    def reciprocal(x: tuple[_Bounded, _Bounded]) -> tuple[_Bounded, _Bounded]:  # 1 / x
        double = _div(one, x[0], f64)
        return double, _either(double, _div(one, x[1], fmt), fmt, narrow)

    lr_, b1, b2, wd = leaf(lr), leaf(beta1), leaf(beta2), leaf(weight_decay)
    eps_held = _leaf(eps, dtype)
    w1, w2 = complement(b1), complement(b2)  # 1 − β
    bc1, bc2 = complement(power(b1)), complement(power(b2))  # 1 − β^t
    sqrt_bc2 = root(bc2)
    inv_bc1, inv_sqrt_bc2 = reciprocal(bc1), reciprocal(sqrt_bc2)
    step_size_double = _merge(_div(lr_[0], bc1[0], f64), _mul(lr_[0], inv_bc1[0], f64))
    step_size = _either(
        step_size_double,
        _merge(_div(lr_[1], bc1[1], fmt), _mul(lr_[1], inv_bc1[1], fmt)),
        fmt,
        narrow,
    )
    lr_wd_double = _mul(lr_[0], wd[0], f64)
    lr_wd = (lr_wd_double, _either(lr_wd_double, _mul(lr_[1], wd[1], fmt), fmt, narrow))
    keep = complement(lr_wd)[1]  # 1 − γλ
    # torch's lerp computes 1 − w in the dtype from the w it holds; a user may write β itself
    lerp_b1 = _merge(b1[1], _add(one, _neg(w1[1]), fmt))
    lerp_b2 = _merge(b2[1], _add(one, _neg(w2[1]), fmt))

    # tensors
    theta = _exact(param)
    g = _exact(-grad if maximize else grad)
    m = _exact(zeros if exp_avg is None else exp_avg)
    v = _exact(zeros if exp_avg_sq is None else exp_avg_sq)
    if weight_decay != 0 and not decoupled:
        g = _add(g, _mul(wd[1], theta, fmt), fmt)

    def running_average(
        old: _Bounded,
        new: _Bounded,
        beta: float,
        held: _Bounded,
        weight: _Bounded,
        one_minus_weight: _Bounded,
        *products: _Bounded,
    ) -> _Bounded:
        """β·old + (1 − β)·new, as a linear combination (with `products`, other ways of
        computing (1 − β)·new) or as lerp(old, new, w = 1 − β): old + w·(new − old) (for any
        w, as one writes it by hand), and new − (1 − w)·(new − old) where torch's lerp uses it,
        for w >= 0.5 (for a small w it cancels: new − 0.999·(new − old) loses |new|/|result|
        ulps, which no correct implementation does)."""
        decayed = _mul(held, old, fmt)
        difference = _add(new, _neg(old), fmt)
        ways = [
            _add(decayed, _mul(weight, new, fmt), fmt),
            *(_add(decayed, p, fmt) for p in products),
            _add(old, _mul(weight, difference, fmt), fmt),
        ]
        if 1 - beta >= 0.5 - 2.0**-20:  # torch decides on the weight it holds: near 0.5, both
            ways.append(_add(new, _neg(_mul(one_minus_weight, difference, fmt)), fmt))
        return _merge(*ways)

    m_new = running_average(m, g, beta1, b1[1], w1[1], lerp_b1)
    g_squared = _mul(g, g, fmt)
    v_new = running_average(
        v, g_squared, beta2, b2[1], w2[1], lerp_b2, _mul(_mul(w2[1], g, fmt), g, fmt)
    )  # addcmul: ((1 − β2)·g)·g
    out = {"exp_avg": m_new, "exp_avg_sq": v_new}
    w = v_new
    if amsgrad:
        w = _maximum(_exact(zeros if max_exp_avg_sq is None else max_exp_avg_sq), v_new)
        out["max_exp_avg_sq"] = w

    root_w = _sqrt(w, fmt)
    scaled_root = _merge(
        _div(root_w, sqrt_bc2[1], fmt),
        _sqrt(_div(w, bc2[1], fmt), fmt),
        _mul(root_w, inv_sqrt_bc2[1], fmt),
    )  # √(w / bc2)
    denom = _add(scaled_root, eps_held, fmt)
    m_hat = _merge(_div(m_new, bc1[1], fmt), _mul(m_new, inv_bc1[1], fmt))
    quotient = _div(m_hat, denom, fmt)  # m̂ / denom
    scaled_m = _merge(
        _mul(step_size, m_new, fmt),
        _mul(lr_[1], m_hat, fmt),
        _div(_mul(lr_[1], m_new, fmt), bc1[1], fmt),
    )  # γ·m / bc1
    update = _merge(
        _div(scaled_m, denom, fmt),
        _mul(step_size, _div(m_new, denom, fmt), fmt),
        _mul(lr_[1], quotient, fmt),
    )
    if weight_decay != 0 and decoupled:
        decay = _merge(_mul(lr_wd[1], theta, fmt), _mul(lr_[1], _mul(wd[1], theta, fmt), fmt))
        decayed = _merge(_mul(theta, keep, fmt), _add(theta, _neg(decay), fmt))
        paper = _mul(lr_[1], _add(quotient, _mul(wd[1], theta, fmt), fmt), fmt)
        theta_new = _merge(
            _add(decayed, _neg(update), fmt),
            _add(_add(theta, _neg(update), fmt), _neg(decay), fmt),
            _add(theta, _neg(paper), fmt),
        )
    else:
        theta_new = _add(theta, _neg(update), fmt)
    out["param"] = theta_new
    order = ["param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    return {name: _allowed(out[name], fmt) for name in order if name in out}
