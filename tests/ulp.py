"""ULP measures for the tests: the general ones live in `conformance.oracle` (re-exported here
so the tests keep importing them from one place); `first_difference` words the oracle's first
exact mismatch for an assertion message."""

from __future__ import annotations

import numpy as np

from conformance.oracle import bitwise_equal, compare, scaled_ulp_error, ulp, ulp_distance

__all__ = ["bitwise_equal", "first_difference", "scaled_ulp_error", "ulp", "ulp_distance"]


def first_difference(actual: np.ndarray, expected: np.ndarray) -> str:
    """Describes the first element whose bits differ (C order): index, both values and their ULP
    distance; or the shape/dtype difference; or "no difference"."""
    mismatch = compare(np.asarray(expected), np.asarray(actual), "exact")
    if mismatch is None:
        return "no difference"
    if mismatch.reason.startswith(("shape", "dtype")):
        return mismatch.reason
    return (
        f"at {mismatch.index}: refimpl {mismatch.actual!r} vs torch {mismatch.expected!r} "
        f"({mismatch.ulp_error:g} ulp, {mismatch.reason})"
    )
