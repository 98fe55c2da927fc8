"""Distances between floating-point arrays, in units in the last place (ULP).

Two measures, both NaN-aware (NaN must meet NaN, an infinity the same infinity):

* `ulp_distance`: how many representable numbers lie between two values (±0 count as one).
* `scaled_ulp_error`: |actual - expected| in ULPs of a magnitude `scale`; for results that sum
  many terms the error model bounds the error by the magnitude of the terms, not of the result
  (a sum that cancels to nearly zero is still only a few ULPs of its terms away).
"""

from __future__ import annotations

import numpy as np

_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _ordered(x: np.ndarray) -> np.ndarray:
    """Maps floats to integers in the same order, so adjacent floats differ by one."""
    bits = x.view(_INT[x.dtype]).astype(np.int64)
    sign_bit = np.int64(np.iinfo(_INT[x.dtype]).min)
    return np.where(bits < 0, sign_bit - bits, bits)


def _nonfinite_mismatch(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Positions where NaN / infinities differ between the two arrays."""
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    inf_a, inf_e = np.isinf(actual), np.isinf(expected)
    return (nan_a != nan_e) | (inf_a != inf_e) | (inf_a & inf_e & (actual != expected))


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Elementwise distance in ULPs; NaN vs NaN is 0, NaN vs a number is infinite."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    both_nan = np.isnan(actual) & np.isnan(expected)
    distance = np.abs(_ordered(actual) - _ordered(expected)).astype(np.float64)
    distance = np.where(both_nan, 0.0, distance)
    return np.where(_nonfinite_mismatch(actual, expected), np.inf, distance)


def scaled_ulp_error(actual: np.ndarray, expected: np.ndarray, scale: float) -> float:
    """Largest |actual - expected| in ULPs of max(|expected|, scale), over all elements."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.size == 0:
        return 0.0
    if _nonfinite_mismatch(actual, expected).any():
        return float("inf")
    finite = np.isfinite(expected)
    if not finite.any():
        return 0.0
    a, e = actual[finite].astype(np.float64), expected[finite].astype(np.float64)
    magnitude = np.minimum(np.maximum(np.abs(e), scale), np.finfo(expected.dtype).max)
    spacing = np.spacing(magnitude.astype(expected.dtype)).astype(np.float64)
    tiny = np.finfo(expected.dtype).smallest_subnormal
    return float(np.max(np.abs(a - e) / np.maximum(spacing, tiny)))


def bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Same bits everywhere (signed zeros distinguished), any NaN matching any NaN."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if (nan_a != nan_e).any():
        return False
    ints = _INT[actual.dtype]
    return bool(np.array_equal(actual.view(ints)[~nan_a], expected.view(ints)[~nan_e]))


def first_difference(actual: np.ndarray, expected: np.ndarray) -> str:
    """Describes the first differing element: index, both values and their ULP distance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != {expected.shape}"
    differs = ~((actual == expected) | (np.isnan(actual) & np.isnan(expected)))
    differs |= np.signbit(actual) != np.signbit(expected)
    if not differs.any():
        return "no difference"
    index = tuple(int(i) for i in np.argwhere(differs)[0])
    a, e = actual[index], expected[index]
    distance = ulp_distance(np.asarray(a), np.asarray(e))
    return f"at {index}: refimpl {a!r} vs torch {e!r} ({float(distance):g} ulp)"
