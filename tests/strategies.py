"""Hypothesis strategies for the op tests, each named for what it draws."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Values a generator meets on its first day: exact zeros of both signs, ties, the bounds used by
# clamp_bounds / loss_parameters (so |x - t| lands on them), and negative and large values.
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, 0.25, 1.5, -3.0]


def values(dtype: np.dtype, low: float = -30.0, high: float = 30.0) -> st.SearchStrategy[float]:
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.one_of(
        st.sampled_from([v for v in SPECIAL if low <= v <= high]),
        st.floats(low, high, width=width, allow_subnormal=False),
    )


def positive_values(dtype: np.dtype) -> st.SearchStrategy[float]:
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.one_of(
        st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]), st.floats(2.0**-10, 50.0, width=width)
    )


def arrays(
    dtype: np.dtype,
    shape: tuple[int, ...],
    elements: st.SearchStrategy | None = None,
) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(
        np.dtype(dtype), shape, elements=values(dtype) if elements is None else elements
    )


def shapes(
    min_dims: int = 0, max_dims: int = 3, min_side: int = 0, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


def broadcastable_pair(max_dims: int = 3) -> st.SearchStrategy[tuple[tuple[int, ...], ...]]:
    return hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=0, max_dims=max_dims, min_side=0, max_side=4
    ).map(lambda s: s.input_shapes)


def dims_of(ndim: int) -> st.SearchStrategy[int | tuple[int, ...] | None]:
    """A reduction's `dim`: None, one dim (maybe negative) or a tuple of distinct dims."""
    if ndim == 0:
        return st.sampled_from([None, 0, -1])
    one = st.integers(-ndim, ndim - 1)
    many = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)
    return st.one_of(st.none(), one, many)
