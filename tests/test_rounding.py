"""refimpl.rounding against exact rational arithmetic and against torch's CPU `add(alpha=)`.

The reference for `fma` is `fractions.Fraction`: a*b + c computed exactly and rounded to the
dtype by `round_fraction_to`, an implementation independent of refimpl's (it searches the
floats around a guess instead of dividing out a quantum), with IEEE 754's rules for NaN,
infinities and the sign of zero. Inputs are drawn to reach every path of the emulation: signed
zeros, subnormals, infinities, NaN, huge and tiny magnitudes, sums that cancel exactly or
nearly, and sums that land on a rounding boundary of the double rounding (ties). A small block
size makes short arrays cross block boundaries.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl.rounding as rounding
from refimpl.rounding import add_scaled, fma
from tests.ulp import bitwise_equal, ulp_distance

DTYPES = [np.float32, np.float64]
_WIDTH = {np.float32: 32, np.float64: 64}


# --- exact reference ------------------------------------------------------------------------------


def round_fraction_to(dtype: type, q: Fraction) -> float:
    """q rounded to nearest, ties to even, in dtype (as a Python float): overflow gives an
    infinity, and a nonzero q that rounds to zero keeps its sign."""
    if q == 0:
        return 0.0
    sign = -1.0 if q < 0 else 1.0
    x = abs(q)
    largest = np.finfo(dtype).max
    below = np.nextafter(largest, dtype(0))
    # beyond max + half its gap, the nearest even neighbour is 2^(emax+1): an overflow
    if x >= Fraction(float(largest)) + (Fraction(float(largest)) - Fraction(float(below))) / 2:
        return sign * math.inf
    guess = dtype(float(x))  # correctly rounded to float64, then maybe rounded again
    candidates = {guess}
    for direction in (dtype(0), dtype(np.inf)):
        step = guess
        for _ in range(2):
            with np.errstate(over="ignore"):
                step = np.nextafter(step, direction)
            candidates.add(step)
    best = min(
        (v for v in candidates if np.isfinite(v)),
        key=lambda v: (abs(Fraction(float(v)) - x), _odd(v)),
    )
    return sign * float(best)


def _odd(v: np.floating) -> int:
    return int(np.asarray(v).view(np.uint32 if v.dtype == np.float32 else np.uint64)) & 1


def fma_reference(a: float, b: float, c: float, dtype: type) -> float:
    """a*b + c rounded once to dtype, by IEEE 754's rules."""
    if math.isnan(a) or math.isnan(b) or math.isnan(c):
        return math.nan
    if math.isinf(a) or math.isinf(b):
        if a == 0 or b == 0:
            return math.nan  # inf * 0
        product = math.copysign(math.inf, a) * math.copysign(1.0, b)
        return math.nan if math.isinf(c) and c != product else product
    if math.isinf(c):
        return c
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact != 0:
        return round_fraction_to(dtype, exact)
    if a == 0 or b == 0:  # a zero product: -0 + -0 is the only sum that stays -0
        negative_product = (math.copysign(1.0, a) < 0) != (math.copysign(1.0, b) < 0)
        return -0.0 if negative_product and math.copysign(1.0, c) < 0 else 0.0
    return 0.0  # x + (-x) = +0 when rounding to nearest


def reference(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    dtype = a.dtype.type
    a, b, c = np.broadcast_arrays(a, b, c)
    values = [
        fma_reference(float(x), float(y), float(z), dtype)
        for x, y, z in zip(a.ravel(), b.ravel(), c.ravel(), strict=True)
    ]
    return np.array(values, dtype).reshape(a.shape)


def assert_bitwise(actual: np.ndarray, expected: np.ndarray, *inputs: np.ndarray) -> None:
    """Same bits (any NaN for NaN); else names the first differing element and its ULPs."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        actual.dtype,
        expected.dtype,
        actual.shape,
        expected.shape,
    )
    if bitwise_equal(actual, expected):
        return
    same = (actual == expected) & (np.signbit(actual) == np.signbit(expected))
    same |= np.isnan(actual) & np.isnan(expected)
    index = tuple(int(i) for i in np.argwhere(~same)[0])
    shown = ", ".join(_show(np.broadcast_to(x, actual.shape)[index]) for x in inputs)
    got, want = actual[index], expected[index]
    raise AssertionError(
        f"{int((~same).sum())} of {actual.size} elements differ; first at {index}: "
        f"inputs ({shown}) gave {_show(got)}, expected {_show(want)} "
        f"({float(ulp_distance(np.asarray(got), np.asarray(want))):g} ulp)"
    )


def _show(v: np.floating) -> str:
    return f"{float(v)!r} [{float(v).hex()}]"


@contextlib.contextmanager
def block_size(size: int | None) -> Iterator[None]:
    """Runs refimpl.rounding with `size` elements per block (None: the default)."""
    saved = rounding._CHUNK
    rounding._CHUNK = saved if size is None else size
    try:
        yield
    finally:
        rounding._CHUNK = saved


# --- strategies -----------------------------------------------------------------------------------


def specials(dtype: type) -> list[float]:
    info = np.finfo(dtype)
    values = [
        0.0,
        1.0,
        1.5,
        3.0,
        0.1,
        float(info.max),
        float(info.tiny),
        float(info.smallest_subnormal),
        float(info.smallest_subnormal) * 3,
        float(info.tiny) - float(info.smallest_subnormal),
        float(np.nextafter(dtype(1), dtype(2))),
        float(np.nextafter(dtype(1), dtype(0))),
        2.0 ** (info.maxexp - 1),
        2.0 ** (info.minexp // 2),
        2.0 ** (info.maxexp // 2),
        math.inf,
        math.nan,
    ]
    return values + [-v for v in values]


def scaled(dtype: type) -> st.SearchStrategy[float]:
    """A random mantissa at any exponent of dtype, subnormal ones included."""
    info = np.finfo(dtype)
    low = info.minexp - info.nmant
    return st.builds(
        lambda m, e, s: float(dtype(s * math.ldexp(m, e))),
        st.floats(1, 2, exclude_max=True),
        st.integers(low, info.maxexp - 1),
        st.sampled_from([1.0, -1.0]),
    )


def values(dtype: type) -> st.SearchStrategy[float]:
    width = _WIDTH[dtype]
    return st.one_of(
        st.sampled_from(specials(dtype)),
        st.floats(width=width),
        st.floats(-8, 8, width=width),
        scaled(dtype),
    )


def finite(dtype: type) -> st.SearchStrategy[float]:
    return values(dtype).filter(math.isfinite)


@st.composite
def cancelling(draw: st.DrawFn, dtype: type) -> tuple[float, float, float]:
    """c = -RN(a*b) moved by a few ulps: the sum cancels exactly or nearly."""
    a, b = draw(finite(dtype)), draw(finite(dtype))
    with np.errstate(all="ignore"):
        c = -(dtype(a) * dtype(b))
        for _ in range(draw(st.integers(0, 3))):
            c = np.nextafter(c, dtype(draw(st.sampled_from([np.inf, -np.inf]))))
    return a, b, float(c)


def _half_gap(c: np.floating, up: bool) -> float:
    """Half the gap from |c| to its neighbour away from zero (up) or toward zero."""
    x = abs(c)
    neighbour = np.nextafter(x, type(c)(np.inf if up else 0))
    return float(abs(Fraction(float(neighbour)) - Fraction(float(x))) / 2)


@st.composite
def ties(draw: st.DrawFn, dtype: type) -> tuple[float, float, float]:
    """a*b = h (1 - i^2 eps^2) or h (1 + eps/2 - O(eps^2)), h half the gap from c to a
    neighbour: c + a*b sits just off the midpoint, on either side, where rounding the product
    first lands exactly on it. Both factors are normal, even where h is not."""
    info = np.finfo(dtype)
    eps = float(info.eps)
    c = dtype(draw(finite(dtype).filter(lambda v: v != 0)))
    up = draw(st.booleans()) and abs(c) != info.max
    h = _half_gap(c, up)
    i = draw(st.integers(1, 2 ** (info.nmant // 2 - 1)))
    m1 = 1 + i * eps
    m2 = 1 - i * eps if draw(st.booleans()) else 1 - (2 * i - 1) * eps / 2
    exponent = math.frexp(h)[1] - 1  # h = 2^exponent
    ka = exponent // 2 + draw(st.integers(-8, 8))
    a, b = math.ldexp(m1, ka), math.ldexp(m2, exponent - ka)
    if draw(st.booleans()):
        a, b = b, a
    if up != (c > 0):  # the product points toward the chosen neighbour
        a = -a
    return float(dtype(a)), float(dtype(b)), float(c)


@st.composite
def small_products(draw: st.DrawFn, b: float, dtype: type) -> tuple[float, float]:
    """(a, c) with a*b near the underflow threshold, and c of its size."""
    info = np.finfo(dtype)
    if b == 0 or not math.isfinite(b):
        return 1.0, 1.0
    t = draw(st.integers(info.minexp - info.nmant - 2, info.minexp + 2 * info.nmant + 4))
    a = dtype(math.ldexp(draw(st.floats(1, 2)), t) / b)
    c = dtype(draw(scaled(dtype)) * 2.0 ** (t - draw(st.integers(-4, 60))))
    return float(a), float(c)


@st.composite
def ties_for(draw: st.DrawFn, b: float, dtype: type) -> tuple[float, float]:
    """(a, c) with RN(a*b) exactly half a gap of c: RN(c + RN(a*b)) is a tie."""
    c = dtype(draw(finite(dtype).filter(lambda v: v != 0)))
    up = draw(st.booleans()) and abs(c) != np.finfo(dtype).max
    target = dtype(_half_gap(c, up) * (1 if up == (c > 0) else -1))
    with np.errstate(all="ignore"):
        a = dtype(target / dtype(b)) if b != 0 else dtype(0)
        near = [a]
        for direction in (np.inf, -np.inf):
            x = a
            for _ in range(3):
                x = np.nextafter(x, dtype(direction))
                near.append(x)
        hits = [x for x in near if np.isfinite(x) and x * dtype(b) == target]
    return float(draw(st.sampled_from(hits)) if hits else a), float(c)


@st.composite
def extreme_factors(draw: st.DrawFn, dtype: type) -> tuple[float, float, float]:
    """A huge and a tiny (maybe subnormal) factor, or a product near the underflow threshold,
    where the pieces of Dekker's product leave the range where they are exact."""
    info = np.finfo(dtype)
    low = info.minexp - info.nmant
    t = draw(st.one_of(st.integers(-60, 60), st.integers(low - 2, info.minexp + 2 * info.nmant)))
    e = draw(st.integers(max(low, t - info.maxexp + 1), min(info.maxexp - 1, t - low)))
    m1, m2 = draw(st.floats(1, 2, exclude_max=True)), draw(st.floats(1, 2, exclude_max=True))
    a, b = float(dtype(math.ldexp(m1, e))), float(dtype(math.ldexp(m2, t - e)))
    c = draw(st.one_of(values(dtype), st.just(-a * b), scaled(dtype).map(lambda v: v * 2.0**t)))
    with np.errstate(over="ignore"):
        return a, b, float(dtype(c))


def triples(dtype: type) -> st.SearchStrategy[tuple[float, float, float]]:
    v = values(dtype)
    return st.one_of(st.tuples(v, v, v), cancelling(dtype), ties(dtype), extreme_factors(dtype))


def columns(dtype: type, rows: list[tuple[float, ...]]) -> list[np.ndarray]:
    return [np.array(column, dtype) for column in zip(*rows, strict=True)]


# --- fma against exact arithmetic --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [None, 8])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_fma_arrays_match_exact_arithmetic(
    dtype: type, block: int | None, data: st.DataObject
) -> None:
    rows = data.draw(st.lists(triples(dtype), min_size=1, max_size=40))
    a, b, c = columns(dtype, rows)
    with block_size(block):
        actual = fma(a, b, c)
    assert_bitwise(actual, reference(a, b, c), a, b, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [None, 8])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_fma_scalar_b_matches_exact_arithmetic(
    dtype: type, block: int | None, data: st.DataObject
) -> None:
    # a scalar b takes other paths: powers of two, the float64 test that keeps RN(c + RN(a*b)),
    # and for a b of the scale of the terms (alpha = 0.9), the full method throughout
    b = data.draw(
        st.one_of(st.sampled_from([0.5, -2.0, 1.0, 0.9, -0.01, 1e-5, 0.1, 3.0]), values(dtype)),
        label="b",
    )
    b = float(dtype(b))
    rows = data.draw(
        st.lists(
            st.one_of(
                st.tuples(values(dtype), values(dtype)),
                ties_for(b, dtype),
                cancelling(dtype).map(lambda t: (t[0], t[2])),
                small_products(b, dtype),
            ),
            min_size=1,
            max_size=48,
        )
    )
    a, c = columns(dtype, rows)
    if data.draw(st.booleans(), label="a*b + c mostly ~ c"):
        a = a * dtype(2.0**-20)  # most elements pass the float64 test; a few do not
    with block_size(block):
        actual = fma(a, b, c)
    assert_bitwise(actual, reference(a, np.array(b, dtype), c), a, np.array(b, dtype), c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fma_every_triple_of_special_values(dtype: type) -> None:
    grid = np.array(specials(dtype), dtype)
    a, b, c = (x.ravel() for x in np.meshgrid(grid, grid, grid, indexing="ij"))
    expected = reference(a, b, c)
    assert_bitwise(fma(a, b, c), expected, a, b, c)
    for k, scalar in enumerate(grid):  # the same products with b as a scalar
        row = np.arange(a.size).reshape(len(grid), len(grid), len(grid))[:, k, :].ravel()
        assert_bitwise(fma(a[row], scalar, c[row]), expected[row], a[row], b[row], c[row])


def tie_arrays(c: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `ties`: a, b with a*b just short of or just past half a gap of c."""
    dtype = c.dtype.type
    info = np.finfo(dtype)
    eps = float(info.eps)
    n = c.size
    up = (rng.random(n) < 0.5) & (np.abs(c) != info.max)
    neighbour = np.nextafter(np.abs(c), np.where(up, dtype(np.inf), dtype(0)))
    gap = np.abs(neighbour.astype(np.float64) - np.abs(c).astype(np.float64))
    exponent = np.frexp(gap)[1] - 2  # half the gap is 2^exponent (even below float64's range)
    i = rng.integers(1, 9, n) * rng.choice([1, 1, 16, 256], n)
    m1 = 1 + i * eps
    m2 = np.where(rng.random(n) < 0.5, 1 - i * eps, 1 - (2 * i - 1) * eps / 2)
    ka = exponent // 2
    a = np.ldexp(m1, ka) * np.where(up == (c > 0), 1, -1)
    return a.astype(dtype), np.ldexp(m2, exponent - ka).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fma_many_ties_in_long_arrays(dtype: type) -> None:
    """Thousands of near-midpoint sums, normal and subnormal, across several blocks."""
    rng = np.random.default_rng(7)
    info = np.finfo(dtype)
    normal = rng.standard_normal(2000) * np.exp2(rng.integers(-30, 30, 2000))
    subnormal = rng.integers(1, 2**info.nmant, 1000) * float(info.smallest_subnormal)
    c = np.concatenate([normal, subnormal * rng.choice([-1, 1], 1000)]).astype(dtype)
    a, b = tie_arrays(c, rng)
    with block_size(512):
        assert_bitwise(fma(a, b, c), reference(a, b, c), a, b, c)
        for scale in (dtype(1 - 5 * info.eps), dtype(0.9)):  # one b for all: ties_for
            target = (a.astype(np.float64) * b.astype(np.float64)).astype(dtype)
            x = (target / scale).astype(dtype)
            for _ in range(2):  # step x until RN(x * scale) lands on the half gap
                x = np.where(x * scale > target, np.nextafter(x, dtype(-np.inf)), x)
                x = np.where(x * scale < target, np.nextafter(x, dtype(np.inf)), x)
            assert_bitwise(fma(x, scale, c), reference(x, np.array(scale), c), x, scale, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [-0.01, 1e-5, 0.9, 1 / 3, -0.5, 1.0])
def test_fma_scalar_b_long_arrays(dtype: type, b: float) -> None:
    """Parameter-update shapes over many blocks: most elements keep RN(c + RN(a*b)) (float64),
    a few need the full method, and special values and ties are sprinkled in."""
    rng = np.random.default_rng(5)
    n = 4000
    a = rng.standard_normal(n).astype(dtype)
    c = rng.standard_normal(n).astype(dtype)
    grid = np.array(specials(dtype), dtype)
    pick = rng.random(n) < 0.02
    a[pick] = rng.choice(grid, pick.sum())
    pick = rng.random(n) < 0.02
    c[pick] = rng.choice(grid, pick.sum())
    scale = dtype(b)
    tie = rng.random(n) < 0.05  # sparse, or the rest goes to the full method at once
    ties_a, ties_b = tie_arrays(c[tie], rng)
    a[tie] = (ties_a * ties_b / scale).astype(dtype)  # RN(a*b) is half a gap of c, or nearly
    with block_size(256):
        assert_bitwise(fma(a, b, c), reference(a, np.array(scale), c), a, scale, c)


def test_fma_product_error_below_the_subnormals() -> None:
    """a*b = h (1 - 2^-104), h half of c's gap: c + a*b is a tie but for an error of the
    product too small to be a float64; in the tie path, Dekker's pieces would lose it."""
    exponents = np.arange(-1070, -900)
    c = np.ldexp(1 + 2.0**-52, exponents + 53)  # odd: a tie would round away from c
    a = np.ldexp(1 - 2.0**-52, exponents)  # h (1 - 2^-52) with h = 2^exponent
    b = 1 + 2.0**-52
    for sign in (1, -1):
        expected = reference(sign * a, np.array(b), c)
        assert_bitwise(fma(sign * a, b, c), expected, sign * a, b, c)
        assert_bitwise(fma(sign * a, np.full_like(a, b), c), expected, sign * a, b, c)


def test_fma_shapes_and_dtypes() -> None:
    a = np.arange(6, dtype=np.float64).reshape(3, 2) / 7
    c = np.array([0.25, -0.5])
    assert fma(a, 0.1, c).shape == (3, 2)
    assert fma(a, a, c).shape == (3, 2)
    zero_dim = fma(np.array(2.0), np.array(3.0), np.array(1.0))
    assert isinstance(zero_dim, np.ndarray) and zero_dim.shape == () and zero_dim == 7.0
    assert fma(np.empty((0, 3), np.float32), 2.5, np.empty(3, np.float32)).shape == (0, 3)
    # a Python float b is rounded to float32 first, as torch rounds its scalar
    x = np.array([3.0], np.float32)
    assert fma(x, 0.1, np.zeros(1, np.float32))[0] == np.float32(3) * np.float32(0.1)
    with pytest.raises(TypeError):
        fma(np.ones(2, np.float32), 1.0, np.ones(2))
    with pytest.raises(TypeError):
        fma(np.ones(2), np.ones(2, np.float32), np.ones(2))
    with pytest.raises(ValueError):
        add_scaled(np.ones(2), np.ones(2), 1.0, "fma")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(q=st.fractions(), scale=st.integers(-1200, 1100), dtype=st.sampled_from(DTYPES))
def test_exact_path_rounding_of_fractions(q: Fraction, scale: int, dtype: type) -> None:
    # the rare elements outside the algorithms' domain are rounded by refimpl's own routine
    q = q * Fraction(2) ** scale
    precision, emin, emax = rounding._FORMATS[np.dtype(dtype)]
    got = rounding._round_fraction(q, precision, emin, emax) if q else 0.0
    want = round_fraction_to(dtype, q)
    assert math.copysign(1, got) == math.copysign(1, want) and (got == want), (q, got, want)


# --- add_scaled against torch ------------------------------------------------------------------


def alphas(dtype: type) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from(
            [
                0.0,
                -0.0,
                1.0,
                -1.0,
                0.5,
                2.0,
                0.9,
                0.1,
                -0.01,
                -1e-3,
                1 - 0.9,
                1e-30,
                math.inf,
                math.nan,
            ]
        ),
        st.floats(-4, 4),
        st.floats(width=_WIDTH[dtype]),
        scaled(dtype),
    )


def torch_add(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    return torch.from_numpy(a).clone().add_(torch.from_numpy(b), alpha=alpha).numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_add_scaled_fused_matches_torch(dtype: type, data: st.DataObject) -> None:
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"), "torch does not fuse"
    n = data.draw(st.integers(0, 70), label="n")  # vector bodies and scalar tails
    a = data.draw(hnp.arrays(dtype, n, elements=values(dtype)), label="a")
    b = data.draw(hnp.arrays(dtype, n, elements=values(dtype)), label="b")
    alpha = data.draw(alphas(dtype), label="alpha")
    try:
        expected = torch_add(a, b, alpha)
    except RuntimeError:  # float32 and an alpha beyond its range: torch refuses it
        assume(False)
    assert_bitwise(add_scaled(a, b, alpha, "fused"), expected, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_scaled_fused_matches_torch_foreach_and_add(dtype: type) -> None:
    rng = np.random.default_rng(3)
    arrays = [
        (rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype))
        for n in (1, 17, 1000, 4099)
    ]
    for alpha in (-0.01, 0.9, 1 / 3):
        params = [torch.from_numpy(a).clone() for a, _ in arrays]
        torch._foreach_add_(params, [torch.from_numpy(b) for _, b in arrays], alpha=alpha)
        for (a, b), p in zip(arrays, params, strict=True):
            expected = add_scaled(a, b, alpha, "fused")
            assert_bitwise(p.numpy(), expected, a, b)
            sum_ = torch.add(torch.from_numpy(a), torch.from_numpy(b), alpha=alpha).numpy()
            assert_bitwise(sum_, expected, a, b)
            diff = torch.from_numpy(a).clone().sub_(torch.from_numpy(b), alpha=-alpha).numpy()
            assert_bitwise(diff, expected, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_add_scaled_separate_is_two_roundings(dtype: type, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 20), label="n")
    a = data.draw(hnp.arrays(dtype, n, elements=values(dtype)), label="a")
    b = data.draw(hnp.arrays(dtype, n, elements=values(dtype)), label="b")
    alpha = data.draw(alphas(dtype), label="alpha")
    with np.errstate(all="ignore"):
        expected = a + dtype(alpha) * b
    assert_bitwise(add_scaled(a, b, alpha, "separate"), expected, a, b)


_DEFAULT_CAPABILITY_SCRIPT = """
import json, sys
import numpy as np, torch
batch = np.load(sys.argv[1])
alphas = json.loads(sys.argv[3])
out = {"capability": np.array(torch.backends.cpu.get_cpu_capability())}
for name in batch.files:
    for k, alpha in enumerate(alphas):
        a, b = batch[name][0], batch[name][1]
        t = torch.from_numpy(a).clone().add_(torch.from_numpy(b), alpha=alpha)
        out[f"{name}/{k}"] = t.numpy()
np.savez(sys.argv[2], **out)
"""


def _batch(dtype: type, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Arrays (a, b) for the torch run: random, special values, near-ties, cancellations."""
    name = np.dtype(dtype).name
    out = {}
    grid = np.array(specials(dtype), dtype)
    for n in (1, 7, 16, 37, 256, 1001):
        a = rng.standard_normal(n).astype(dtype)
        b = (rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, n))).astype(dtype)
        out[f"{name}/randn{n}"] = np.stack([a, b])
        mix_a, mix_b = a.copy(), b.copy()
        pick = rng.random(n) < 0.3
        mix_a[pick] = rng.choice(grid, pick.sum())
        mix_b[pick[::-1]] = rng.choice(grid, pick.sum())
        out[f"{name}/special{n}"] = np.stack([mix_a, mix_b])
    c = rng.standard_normal(500).astype(dtype)
    a, b = tie_arrays(c, rng)
    out[f"{name}/ties"] = np.stack([c, a * b])  # b * alpha near half a gap of a, for alpha ~ 1
    out[f"{name}/cancel"] = np.stack([c, -c])
    return out


def test_add_scaled_separate_matches_torch_default_capability(tmp_path) -> None:
    """With ATEN_CPU_CAPABILITY=default torch multiplies, then adds: two roundings. One torch
    process runs the whole batch."""
    rng = np.random.default_rng(11)
    batch = {**_batch(np.float32, rng), **_batch(np.float64, rng)}
    alphas = [-0.01, 0.9, 0.1, -1e-3, 1.0, 2.0, 1 / 3, 1 - 2.0**-30, 0.0, -1e-30, math.inf]
    np.savez(tmp_path / "in.npz", **batch)
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run(
        [
            sys.executable,
            "-c",
            _DEFAULT_CAPABILITY_SCRIPT,
            str(tmp_path / "in.npz"),
            str(tmp_path / "out.npz"),
            json.dumps(alphas),
        ],
        env=env,
        check=True,
        timeout=120,
    )
    results = np.load(tmp_path / "out.npz")
    assert str(results["capability"]) == "DEFAULT"
    for name, (a, b) in batch.items():
        for k, alpha in enumerate(alphas):
            assert_bitwise(add_scaled(a, b, alpha, "separate"), results[f"{name}/{k}"], a, b)
            if name.endswith("randn1001") and alpha in (-0.01, 0.9, 0.1, 1 / 3):
                fused = add_scaled(a, b, alpha, "fused")  # the two models do differ here
                assert not bitwise_equal(fused, results[f"{name}/{k}"]), (name, alpha)
