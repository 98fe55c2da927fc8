"""Rounding models for torch's CPU `add(other, alpha=...)`: one rounding (FMA) or two; and the
kernels built on it that the optimizers use (`lerp`, `addcmul`, `addcdiv`), rounded as torch's
CPU kernels round them.

numpy has no fused multiply-add, so `fma` emulates one, exactly and vectorised, in blocks that
stay in cache (the optimizer calls it on up to 10^7 elements):

* float32: the product of two float32 is exact in float64. The float64 sum, rounded to
  float32, is wrong only when it lies exactly on a float32 rounding boundary (a bit pattern
  test); those few are redone with the float64 sum rounded to odd, and round-to-odd to 53 bits
  followed by rounding to 24 bits rounds correctly.
* float64: with uh = RN(a*b) and th + tl = c + uh exactly (Knuth's TwoSum), th is the answer
  when |tl| plus a bound on |a*b - uh| stays inside half of th's gap to its neighbours: a few
  passes settle most elements when |a*b| << |c| (a parameter update). Elsewhere ul = a*b - uh
  by Dekker's product (Veltkamp's split), w = RN(tl + ul) and z = RN(th + w), which is right
  unless th + w is exactly a rounding boundary; those few are redone as RN(th + RO(tl + ul))
  (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
  rounding to odd", IEEE TC 2008).
* b = ±2^k (alpha = 1 above all): a*b is exact, so numpy's a*b + c already rounds once.

Elements outside the ranges where these algorithms are proved (overflow, products so small
that Dekker's pieces underflow, infinities and NaN) go to an exact path: IEEE rules for the
special values, `fractions.Fraction` arithmetic for finite ones; they are rare in practice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Literal

import numpy as np

Rounding = Literal["fused", "separate"]
# The factor b of a*b + c in the helpers below: a flat array of the operands' dtype, or a scalar
# (a Python float or a numpy one).
Factor = np.ndarray | float | np.floating

# precision, emin, emax of the two formats
_FORMATS = {np.dtype(np.float32): (24, -126, 127), np.dtype(np.float64): (53, -1022, 1023)}
_CHUNK = 1 << 16  # elements per block: the float64 work buffers stay in cache
_EMPTY = np.empty(0, np.intp)
_U64 = np.uint64
_EXPONENT = _U64(0x7FF0000000000000)
# float32 through float64: s is a float32 rounding boundary (midpoint) of the normal range when
# its low 29 bits are 1000...0; below 2^-126 (float32's subnormals) the boundary sits higher
_MID29 = _U64(1 << 28)
_SUB32 = _U64((int(np.float64(2.0**-126).view(_U64)) << 1) - 1)  # see _fma32
_INT64_MIN = np.iinfo(np.int64).min
_MIN_NORMAL32 = np.float32(2.0**-126)
# float64: Veltkamp's split into two 26-bit halves, and the bounds on |a|, |b| and |a*b| that
# keep every piece of Dekker's product exact (no underflow of al*bl, no overflow of the split;
# the margins are deliberate). Above them a piece overflows and the result is not finite.
_SPLITTER = float(2**27 + 1)
_LO_A, _HI_A, _LO_P = 2.0**-1000, 2.0**995, 2.0**-965


def fma(a: np.ndarray | np.floating, b: Factor, c: np.ndarray | np.floating) -> np.ndarray:
    """a*b + c rounded once, elementwise, in the arrays' dtype (float32 or float64); IEEE semantics
    incl. signed zeros, subnormals, inf and NaN (inf*0 + c = NaN, etc.), round-to-nearest-even.

    a, c (and b when it is an array) must share one dtype; they broadcast. A scalar b (Python
    float or 0-dim) is first rounded to that dtype. Returns a new array.
    """
    a, c = np.asarray(a), np.asarray(c)
    dtype = a.dtype
    if dtype not in _FORMATS or c.dtype != dtype:
        raise TypeError(
            f"fma needs float32 or float64 arrays of one dtype, got {a.dtype}, {c.dtype}"
        )
    factor: np.ndarray | np.floating  # b in the dtype: a numpy scalar, or a flat array
    if np.ndim(b) == 0:
        with np.errstate(all="ignore"):
            factor = dtype.type(b)
        shape = np.broadcast_shapes(a.shape, c.shape)
    else:
        b = np.asarray(b)
        if b.dtype != dtype:
            raise TypeError(f"fma needs b of dtype {dtype}, got {b.dtype}")
        shape = np.broadcast_shapes(a.shape, b.shape, c.shape)
        factor = _flat(b, shape)
    a, c = _flat(a, shape), _flat(c, shape)
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    with np.errstate(all="ignore"):
        if not isinstance(factor, np.ndarray) and (factor == 0 or not np.isfinite(factor)):
            # the product is exactly a signed zero, an infinity or NaN: one rounding, in the add
            np.multiply(a, factor, out=flat)
            flat += c
        elif not isinstance(factor, np.ndarray) and abs(math.frexp(factor)[0]) == 0.5:
            _exact_product(a, factor, c, flat)  # b = ±2^k
        elif dtype == np.float32:
            _fma32(a, factor, c, flat)
        elif isinstance(factor, np.float64):  # a scalar (the dtype is float64 here)
            _fma64_filtered(a, factor, c, flat)
        else:
            _fma64(a, factor, c, flat)
    return out


def add_scaled(
    a: np.ndarray, b: np.ndarray, alpha: float | np.floating, rounding: Rounding
) -> np.ndarray:
    """torch's `a.add(b, alpha=alpha)` on CPU for a's dtype: alpha is first rounded to the dtype
    (float32: np.float32(alpha), as torch does for a Python scalar), then 'fused': fma(alpha, b, a);
    'separate': a + (alpha*b) rounded twice (ATEN_CPU_CAPABILITY=default)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype not in _FORMATS or b.dtype != a.dtype:
        raise TypeError(
            f"add_scaled needs float32 or float64 arrays of one dtype, got {a.dtype}, {b.dtype}"
        )
    with np.errstate(all="ignore"):
        scale = a.dtype.type(alpha)
        if rounding == "fused":
            return fma(b, scale, a)
        if rounding == "separate":
            return np.asarray(a + scale * b)
    raise ValueError(f"rounding must be 'fused' or 'separate', got {rounding!r}")


def lerp(
    start: np.ndarray,
    end: np.ndarray,
    weight: float | np.floating,
    rounding: Rounding,
    scalar_tail: np.ndarray | None = None,
) -> np.ndarray:
    """torch's `start.lerp(end, weight)` on CPU for a scalar weight (first rounded to the dtype,
    as torch rounds a Python scalar or casts a 0-dim tensor). torch's kernel (ATen's lerp_vec and
    its scalar twin) picks one of two formulas by the weight, with d = end − start rounded:

        |w| < 0.5:  start + w·d
        otherwise:  end − (1 − w)·d

    'fused' (AVX2/AVX512): each as one fma, 'separate' (ATEN_CPU_CAPABILITY=default): the
    product rounded, then the sum. The vector body computes the second as end + (w − 1)·d, the
    scalar code (the flat indices `scalar_tail`) as end − d·(1 − w): the same value, except for
    the sign of a zero result when w = 1 (the product is +0·d in one, −(d·+0) in the other)."""
    start, end = np.asarray(start), np.asarray(end)
    w = start.dtype.type(weight)
    with np.errstate(all="ignore"):
        d = end - start
        if abs(w) < 0.5:
            return add_scaled(start, d, w, rounding)
        result = add_scaled(end, d, w - start.dtype.type(1), rounding)
        if scalar_tail is not None and scalar_tail.size and w == 1:
            flat_d, flat_end = d.reshape(-1)[scalar_tail], end.reshape(-1)[scalar_tail]
            result.reshape(-1)[scalar_tail] = add_scaled(flat_end, -flat_d, 1 - w, rounding)
        return result


def addcmul(
    a: np.ndarray, t1: np.ndarray, t2: np.ndarray, value: float | np.floating, rounding: Rounding
) -> np.ndarray:
    """torch's `a.addcmul(t1, t2, value=value)` on CPU: a + (value·t1)·t2 with value rounded to the
    dtype and value·t1 rounded first (the kernel's `self + scalar * t1 * t2`); 'fused': the rest
    is fma(value·t1, t2, a) (the compiler contracts it, body and tail alike), 'separate': rounded
    twice more."""
    a = np.asarray(a)
    with np.errstate(all="ignore"):
        product = a.dtype.type(value) * np.asarray(t1)
        if rounding == "fused":
            return fma(product, np.asarray(t2), a)
        if rounding == "separate":
            return np.asarray(a + product * t2)
    raise ValueError(f"rounding must be 'fused' or 'separate', got {rounding!r}")


def addcdiv(a: np.ndarray, t1: np.ndarray, t2: np.ndarray, value: float) -> np.ndarray:
    """torch's `a.addcdiv(t1, t2, value=value)` on CPU: a + (value·t1)/t2, every operation
    rounded (a division sits between the product and the sum, so no capability fuses anything
    here), in the dtype the three promote to (numpy's promotion of arrays is torch's of
    tensors of one dimensionality), value rounded to it first."""
    dtype = np.result_type(a, t1, t2)
    with np.errstate(all="ignore"):
        return np.asarray(a + (dtype.type(value) * np.asarray(t1)) / t2)


def _flat(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """x broadcast to shape, as a contiguous 1-D array (a view when x already is one)."""
    if x.shape != shape:
        x = np.broadcast_to(x, shape)
    return np.ascontiguousarray(x).reshape(-1)


def _blocks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, _CHUNK):
        yield start, min(start + _CHUNK, n)


def _nonfinite(z: np.ndarray) -> np.ndarray:
    """Indices of infinities and NaN in z (one reduction when there are none)."""
    if math.isfinite(np.add.reduce(z)):  # a sum that overflows only costs the full test
        return _EMPTY
    return np.flatnonzero(~np.isfinite(z))


def _tiny(x: np.ndarray, lo: float, work: np.ndarray) -> np.ndarray:
    """Indices of the elements with 0 < |x| < lo (x float64; work: a uint64 buffer like x)."""
    # (bits << 1) - 2 drops the sign and sends zero around to the top (unsigned)
    np.left_shift(x.view(_U64), _U64(1), out=work)
    work -= _U64(2)
    limit = (_U64(np.float64(lo).view(_U64)) << _U64(1)) - _U64(2)
    if work.min() >= limit:
        return _EMPTY
    return np.flatnonzero(work < limit)


def _two_sum_err(x: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """x + y - s exactly, for s = fl(x + y) (Knuth's TwoSum; needs no ordering)."""
    z = s - x
    err: np.ndarray = (x - (s - z)) + (y - z)
    return err


def _two_sum_err_into(
    x: np.ndarray, y: np.ndarray, s: np.ndarray, err: np.ndarray, tmp: np.ndarray
) -> None:
    """err = x + y - s exactly, for s = fl(x + y), into preallocated arrays."""
    np.subtract(s, x, out=tmp)
    np.subtract(s, tmp, out=err)
    np.subtract(x, err, out=err)
    np.subtract(y, tmp, out=tmp)
    err += tmp


def _round_to_odd(s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """RO(s + e) for s = fl(x + y) and e its exact error: s, or its odd neighbour toward e."""
    bits = s.view(_U64)
    step = (bits ^ e.view(_U64)) >> _U64(63)  # 1 where e points toward zero
    nudged = (bits - step) | _U64(1)
    rounded: np.ndarray = np.where((e != 0) & np.isfinite(s), nudged, bits).view(np.float64)
    return rounded


def _exact_product(a: np.ndarray, b: np.floating, c: np.ndarray, out: np.ndarray) -> None:
    """b = ±2^k: a*b is exact unless it overflows or, for |b| < 1, loses bits to underflow; then
    a*b + c rounds once."""
    slow: list[np.ndarray] = []
    size = min(a.size, _CHUNK)
    u_buf, ok_buf = np.empty(size, a.dtype), np.empty(size, bool)
    inverse = 1 / b
    for start, stop in _blocks(a.size):
        av, ov = a[start:stop], out[start:stop]
        np.multiply(av, b, out=ov)
        if abs(b) < 1:
            u, ok = u_buf[: stop - start], ok_buf[: stop - start]
            np.multiply(ov, inverse, out=u)
            np.equal(u, av, out=ok)
            if not ok.all():
                slow.append(start + np.flatnonzero(~ok))
        ov += c[start:stop]
        slow.append(start + _nonfinite(ov))
    _fix(a, b, c, out, exact=slow)


# --- float32 -------------------------------------------------------------------------------------


def _fma32(a: np.ndarray, b: np.ndarray | np.floating, c: np.ndarray, out: np.ndarray) -> None:
    """float32 fma through float64: exact product, one float64 rounding of the sum, then float32.

    The last rounding is wrong only when the float64 sum s is a float32 rounding boundary: in
    the normal range its low 29 bits are 1000...0 (s << 35 is then the int64 minimum, so one
    min() finds it); below 2^-126 the boundaries sit higher, and |float32(s)| <= 2^-126 there,
    so a min() of the float32 result screens the block before the exact test."""
    n = a.size
    size = min(n, _CHUNK)
    s_buf, t_buf, k_buf = np.empty(size), np.empty(size), np.empty(size, _U64)
    m_buf = np.empty(size, np.float32)
    redo: list[np.ndarray] = []
    for start, stop in _blocks(n):
        s, t, k = s_buf[: stop - start], t_buf[: stop - start], k_buf[: stop - start]
        magnitude, ov = m_buf[: stop - start], out[start:stop]
        s[:] = a[start:stop]
        if not isinstance(b, np.ndarray):  # a scalar
            s *= float(b)
        else:
            t[:] = b[start:stop]
            s *= t  # exact
        t[:] = c[start:stop]
        s += t  # rounded to 53 bits
        ov[:] = s  # rounded to 24 bits
        bits = s.view(_U64)
        np.left_shift(bits, _U64(35), out=k)
        if k.view(np.int64).min() == _INT64_MIN:
            redo.append(start + np.flatnonzero(k == _MID29 << _U64(35)))
        np.abs(ov, out=magnitude)
        if magnitude.min() <= _MIN_NORMAL32:
            np.left_shift(bits, _U64(1), out=k)  # |s| < 2^-126, nonzero (the sign dropped,
            k -= _U64(1)  # zero sent around to the top)
            redo.append(start + np.flatnonzero(k < _SUB32))
    if redo:
        idx = np.concatenate(redo)  # an index in both lists is redone twice, alike
        out[idx] = _fma32_odd(a[idx], b[idx] if isinstance(b, np.ndarray) else b, c[idx])


def _fma32_odd(a: np.ndarray, b: np.ndarray | np.floating, c: np.ndarray) -> np.ndarray:
    """float32 fma through the float64 sum rounded to odd: 53 >= 24 + 2 bits make the second
    rounding correct."""
    p = np.multiply(a, b, dtype=np.float64)
    q = c.astype(np.float64)
    s = p + q
    return _round_to_odd(s, _two_sum_err(p, q, s)).astype(np.float32)


# --- float64 -------------------------------------------------------------------------------------


def _fma64_filtered(a: np.ndarray, b: np.float64, c: np.ndarray, out: np.ndarray) -> None:
    """out = th = RN(c + RN(a*b)) where that is provably the fma; _fma64 for the rest.

    With d = a*b - uh, the test is |tl| + |d| < h, h = half of th's smaller gap. |d| <= 2^(e-53)
    for uh in [2^e, 2^(e+1)) and |d| <= 2^-1075 for a subnormal or zero uh, so Y = (uh with its
    mantissa cleared) * 2^-53 covers |d| up to the 2^-1075 it may round away. E = th (1 - 2^-52)
    2^-53 with its mantissa cleared is h, or h/2 (th at most one step above a power of two), or
    0 (th zero, subnormal or too small for E to be normal). RN(|tl| + Y) < E implies
    |tl| + Y < E (E is a float), then |tl| + Y <= E - 2^-1074 (all are multiples of it), and so
    |tl| + |d| < E <= h. NaN and infinities fail the test.
    """
    to_ulp, to_half_gap = 2.0**-53, (1 - 2.0**-52) * 2.0**-53
    size = min(a.size, _CHUNK)
    uh_buf, tl_buf, w1_buf, w2_buf = (np.empty(size) for _ in range(4))
    ok_buf = np.empty(size, bool)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start, stop in _blocks(a.size):
        m = stop - start
        av, cv, th = a[start:stop], c[start:stop], out[start:stop]
        uh, tl, w1, w2, ok = uh_buf[:m], tl_buf[:m], w1_buf[:m], w2_buf[:m], ok_buf[:m]
        np.multiply(av, b, out=uh)
        np.add(uh, cv, out=th)
        _two_sum_err_into(cv, uh, th, tl, w1)
        np.abs(tl, out=w1)
        np.bitwise_and(uh.view(_U64), _EXPONENT, out=w2.view(_U64))
        w2 *= to_ulp
        w1 += w2
        np.multiply(th, to_half_gap, out=w2)
        np.bitwise_and(w2.view(_U64), _EXPONENT, out=w2.view(_U64))
        np.less(w1, w2, out=ok)
        if ok.all():
            continue
        np.logical_not(ok, out=ok)
        fail = np.flatnonzero(ok)
        if 4 * fail.size > m:  # the product's error matters for most elements here: the rest
            _fma64(a[start:], b, c[start:], out[start:])  # goes to the full method directly
            break
        pending.append((start + fail, av[fail], cv[fail]))  # gathered while in cache
    if pending:
        idx, a_fail, c_fail = (np.concatenate(x) for x in zip(*pending, strict=True))
        redone = np.empty(idx.size)
        _fma64(a_fail, b, c_fail, redone)
        out[idx] = redone


def _split(x: Factor) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Veltkamp's split: hi + lo == x, each with at most 26 significant bits."""
    t = np.multiply(x, _SPLITTER)
    hi = t - (t - x)
    return hi, x - hi


def _fma64(a: np.ndarray, b: Factor, c: np.ndarray, out: np.ndarray) -> None:
    """float64 fma: Dekker's product, z = RN(th + RN(tl + ul)), and the ties of that last rounding
    redone with round-to-odd (see _tie_path)."""
    bh: np.ndarray | float  # Veltkamp's halves of b: once for a scalar, per block for an array
    bl: np.ndarray | float
    if not isinstance(b, np.ndarray):  # a scalar
        b = float(b)
        bh, bl = (float(x) for x in _split(b))
        # |a| >= lo keeps a normal and |a*b| >= _LO_P; no a is safe for an extreme b
        lo = max(_LO_A, _LO_P / abs(b)) if _LO_A <= abs(b) <= _HI_A else math.inf
    size = min(a.size, _CHUNK)
    uh_buf, th_buf, tl_buf, w1_buf, w2_buf = (np.empty(size) for _ in range(5))
    bh_buf, bl_buf = (np.empty(size if isinstance(b, np.ndarray) else 0) for _ in range(2))
    odd: list[np.ndarray] = []
    slow: list[np.ndarray] = []
    for start, stop in _blocks(a.size):
        m = stop - start
        av, cv, ov = a[start:stop], c[start:stop], out[start:stop]
        uh, th, tl, w1, w2 = uh_buf[:m], th_buf[:m], tl_buf[:m], w1_buf[:m], w2_buf[:m]
        bv = b[start:stop] if isinstance(b, np.ndarray) else b
        np.multiply(av, bv, out=uh)
        np.add(uh, cv, out=th)
        _two_sum_err_into(cv, uh, th, tl, w1)
        if isinstance(bv, np.ndarray):
            bh, bl = bh_buf[:m], bl_buf[:m]
            np.multiply(bv, _SPLITTER, out=bh)
            np.subtract(bh, bv, out=bl)
            np.subtract(bh, bl, out=bh)
            np.subtract(bv, bh, out=bl)
        ties, bad = _tie_path(av, bh, bl, uh, th, tl, ov, w1, w2)
        odd.append(start + ties)
        slow.append(start + bad)
        work = w2.view(_U64)
        if not isinstance(bv, np.ndarray):  # a scalar
            slow.append(start + _tiny(av, lo, work))
        else:
            slow.append(start + _tiny(av, _LO_A, work))
            slow.append(start + _tiny(bv, _LO_A, work))
            # a product below _LO_P, zero included, unless a or b is zero
            np.left_shift(uh.view(_U64), _U64(1), out=work)
            if work.min() < _U64(np.float64(_LO_P).view(_U64)) << _U64(1):
                small = (np.abs(uh) < _LO_P) & (av != 0) & (bv != 0)
                slow.append(start + np.flatnonzero(small))
    _fix(a, b, c, out, odd=odd, exact=slow)


def _tie_path(
    a: np.ndarray,
    bh: np.ndarray | float,
    bl: np.ndarray | float,
    uh: np.ndarray,
    th: np.ndarray,
    tl: np.ndarray,
    z: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """z = RN(th + RN(tl + ul)), ul = a*b - uh by Dekker's product. Overwrites tl, w1, w2.

    With w = RN(tl + ul) and f = tl + ul - w: when f = 0 the sum is exact and z is right. When
    f != 0, c + uh was not exact (else tl = 0 and w = ul), so |uh| < 2|th|, |w| < 2 ulp(th), and
    th + w lies on a grid 2^49 times finer than z's midpoints, with |f| below half its step:
    z is wrong only if th + w is a midpoint, where r = th + w - z (exact: Fast2Sum) is a power
    of two. Returns the indices of such r (to redo with round-to-odd) and of non-finite results
    (to redo exactly). The caller checks that Dekker's pieces were exact.
    """
    # split a: w1 = ah, w2 = al
    np.multiply(a, _SPLITTER, out=w1)
    np.subtract(w1, a, out=w2)
    np.subtract(w1, w2, out=w1)
    np.subtract(a, w1, out=w2)
    # ul = ((ah*bh - uh) + ah*bl + al*bh) + al*bl, each step exact, into z
    np.multiply(w1, bh, out=z)
    z -= uh
    w1 *= bl
    z += w1
    np.multiply(w2, bh, out=w1)
    z += w1
    w2 *= bl
    z += w2
    tl += z  # w
    np.add(th, tl, out=z)
    np.subtract(z, th, out=w1)
    np.subtract(tl, w1, out=w1)  # r
    k = w2.view(_U64)
    np.left_shift(w1.view(_U64), _U64(12), out=k)  # zero for r a power of two (or zero)
    ties = _EMPTY
    if k.min() == 0:
        ties = np.flatnonzero((k == 0) & (w1 != 0))
    if not th.all():  # z = th + w can be +0 where th = -0 is right
        np.copyto(z, th, where=(z == 0))
    return ties, _nonfinite(z)


def _ro64(a: np.ndarray, b: Factor, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boldo and Melquiond's emulated FMA, RN(th + RO(tl + ul)), on (few) elements.

    Returns the result and the mask of elements outside the proof's domain: a non-finite result,
    or a nonzero product whose factors or value are too small for Dekker's pieces to be exact.
    """
    uh = a * b
    th = uh + c
    tl = _two_sum_err(c, uh, th)
    ah, al = _split(a)
    bh, bl = _split(b)
    ul = ((ah * bh - uh) + ah * bl + al * bh) + al * bl
    w = tl + ul
    z = th + _round_to_odd(w, _two_sum_err(tl, ul, w))
    z = np.where(z == 0, th, z)  # an exact zero: th = RN(c + uh) has IEEE's sign
    abs_a, abs_b = np.abs(a), np.abs(b)
    bad = (
        (abs_a < _LO_A) | (abs_a > _HI_A) | (abs_b < _LO_A) | (abs_b > _HI_A) | (np.abs(uh) < _LO_P)
    )
    bad &= (a != 0) & (b != 0)
    bad |= ~np.isfinite(z)
    return z, bad


# --- exact path ----------------------------------------------------------------------------------


def _fix(
    a: np.ndarray,
    b: Factor,
    c: np.ndarray,
    out: np.ndarray,
    odd: Sequence[np.ndarray] = (),
    exact: Sequence[np.ndarray] = (),
) -> None:
    """Redoes elements (index arrays into the flat arrays): `odd` with the round-to-odd
    algorithm (float64), then `exact` and whatever `odd` leaves out of its domain exactly."""
    exact = list(exact)
    idx = np.concatenate(odd) if len(odd) else _EMPTY
    if idx.size:
        z, bad = _ro64(a[idx], b[idx] if isinstance(b, np.ndarray) else b, c[idx])
        out[idx] = z
        exact.append(idx[bad])
    idx = np.concatenate(exact) if exact else _EMPTY
    if idx.size:
        out[idx] = _exact(a[idx], b[idx] if isinstance(b, np.ndarray) else b, c[idx])


def _exact(a: np.ndarray, b: Factor, c: np.ndarray) -> np.ndarray:
    """fma by IEEE rules for special values and exact rational arithmetic for the rest."""
    dtype = a.dtype
    a, b, c = np.broadcast_arrays(a, np.asarray(b, dtype), c)
    finite_ab = np.isfinite(a) & np.isfinite(b)
    special = ~(finite_ab & np.isfinite(c))
    # an infinite or NaN operand: the product is exactly what a*b gives (inf, NaN), and with a
    # finite product an infinite or NaN c is the answer whatever the product's size
    out = np.where(finite_ab, c, a * b + c)
    precision, emin, emax = _FORMATS[dtype]
    for i in np.flatnonzero(~special):
        x, y, z = float(a[i]), float(b[i]), float(c[i])
        exact = Fraction(x) * Fraction(y) + Fraction(z)
        if exact == 0:
            if x == 0 or y == 0:  # a zero product: -0 only when it and c are both -0
                negative = (math.copysign(1, x) * math.copysign(1, y) < 0) and math.copysign(
                    1, z
                ) < 0
                out[i] = -0.0 if negative else 0.0
            else:  # exact cancellation rounds to +0
                out[i] = 0.0
        else:
            out[i] = _round_fraction(exact, precision, emin, emax)
    return out


def _round_fraction(q: Fraction, precision: int, emin: int, emax: int) -> float:
    """q rounded to nearest-even in a binary format (precision bits, exponents emin..emax);
    a nonzero q that rounds to zero keeps its sign, and overflow gives an infinity."""
    negative = q < 0
    n, d = abs(q.numerator), q.denominator
    e = n.bit_length() - d.bit_length()  # 2^e <= |q| < 2^(e+1) after the correction
    if (n << max(-e, 0)) < (d << max(e, 0)):
        e -= 1
    quantum = max(e, emin) - (precision - 1)
    num, den = (n << -quantum, d) if quantum < 0 else (n, d << quantum)
    m, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and m & 1):
        m += 1
    if m and m.bit_length() - 1 + quantum > emax:
        value = math.inf
    else:
        value = math.ldexp(m, quantum)
    return -value if negative else value
