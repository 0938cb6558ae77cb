"""The fp32 division by a reciprocal with one correction step (eitp_kernels._triton.div_fast)
equals IEEE division wherever its operands are in range.

The kernels divide by a divisor that is constant over their loop (a bin width, an int8 scale):
r = 1/d correctly rounded once per program, then q0 = a*r, res = fma(-q0, d, a), q = fma(res, r,
q0). Here the same float32 steps run in numpy (the fused multiply-add emulated exactly: the
product and the float64 sum's error are exact, the sum is rounded to odd in float64, then to
nearest in float32) and are compared with numpy's IEEE float32 division over every divisor
significand, numerators whose quotient lies next to a rounding midpoint, and exponents across
the range; then the Triton helpers run under the interpreter on the same kind of sample.
"""
from fractions import Fraction

import numpy as np
import pytest

from eitp_kernels._triton import div_fast, div_setup, tl, triton_jit

F32, F64 = np.float32, np.float64
DIV_MIN, DIV_MAX = 2.0**-96, 2.0**96  # eitp_kernels._triton.DIV_MIN / DIV_MAX
A_MIN, Q_MIN, Q_MAX = 2.0**-101, 2.0**-125, 2.0**125  # the numerator and quotient range of the proof


def fma32(x, y, z):
    """float32 x*y + z rounded once (arrays of float32)."""
    p = x.astype(F64) * y.astype(F64)
    z64 = z.astype(F64)
    s = p + z64
    t = s - p
    err = (p - (s - t)) + (z64 - t)
    bits = s.view(np.int64).copy()
    sticky = (err != 0) & ((bits & 1) == 0)
    up = (err > 0) == (s > 0)
    bits[sticky] += np.where(up[sticky], 1, -1)
    return bits.view(F64).astype(F32)


def fast_div(a, d):
    """The kernels' steps: r = RN(1/d), q0 = RN(a*r), res = fma(-q0, d, a), q = fma(res, r, q0)."""
    r = (F32(1.0) / d).astype(F32)
    q0 = (a * r).astype(F32)
    res = fma32(-q0, d, a)
    return fma32(res, r, q0)


def significands(rng, n):
    """n float32 values in [1, 2) with uniformly random significands."""
    return (1.0 + rng.integers(0, 1 << 23, n) / F64(1 << 23)).astype(F32)


def in_range(a, d):
    q = np.abs(a.astype(F64) / d.astype(F64))
    return (np.abs(a) >= A_MIN) & (q >= Q_MIN) & (q <= Q_MAX)


def assert_equal_division(a, d):
    with np.errstate(all="ignore"):
        got, want = fast_div(a, d), (a / d).astype(F32)
    bad = got != want
    assert not bad.any(), f"{bad.sum()} mismatches, e.g. a={a[bad][:4]!r} d={d[bad][:4]!r}: {got[bad][:4]} != {want[bad][:4]}"


def test_fma_emulation_rounds_correctly():
    rng = np.random.default_rng(0)
    n = 3000
    x, y, z = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).astype(F32).reshape(3, -1)
    # products that nearly cancel the addend: the sum's low bits decide the rounding
    z[: n // 6] = -(x[: n // 6].astype(F64) * y[: n // 6]).astype(F32)
    got = fma32(x, y, z)
    for xi, yi, zi, gi in zip(x, y, z, got):
        exact = Fraction(float(xi)) * Fraction(float(yi)) + Fraction(float(zi))
        below, above = np.nextafter(gi, F32(-np.inf)), np.nextafter(gi, F32(np.inf))
        dist = abs(Fraction(float(gi)) - exact)
        assert dist <= abs(Fraction(float(below)) - exact) and dist <= abs(Fraction(float(above)) - exact)


def test_every_divisor_significand():
    # d runs over all 2^23 significands of [1, 2); a random significand each, then a numerator
    # whose quotient sits next to a midpoint between two floats (a = RN(m * d), m a midpoint).
    rng = np.random.default_rng(1)
    d = (1.0 + np.arange(1 << 23, dtype=F64) / (1 << 23)).astype(F32)
    assert_equal_division(significands(rng, d.size), d)
    mid = (rng.integers(1 << 23, 1 << 24, d.size) + 0.5) * 2.0**-23
    a = (mid * d).astype(F32)
    a = np.where(a >= 2, a / F32(2), a).astype(F32)
    assert_equal_division(a, d)


def test_exponents_across_the_range():
    rng = np.random.default_rng(2)
    n = 1 << 21
    d = significands(rng, n) * np.exp2(rng.integers(-96, 96, n)).astype(F32) * rng.choice([-1, 1], n).astype(F32)
    a = significands(rng, n) * np.exp2(rng.integers(-101, 128, n)).astype(F32) * rng.choice([-1, 1], n).astype(F32)
    keep = in_range(a, d)
    assert keep.mean() > 0.6
    assert_equal_division(a[keep], d[keep])


def test_edge_operands():
    edge_d = np.array([DIV_MIN, DIV_MAX, 1.0, -1.0, 3.0, 1.9999999, 1.0000001, 0.1, 127.0, 255.0, 7.0 / 4096,
                       np.nextafter(F32(DIV_MAX), F32(0)), np.nextafter(F32(DIV_MIN), F32(1))], dtype=F32)
    edge_a = np.array([0.0, A_MIN, 1.0, -1.0, 0.5, 1.5, 2.5, 3.4e38, 1e-30, 126.5, 127.5, -127.5, 2**24, 2**24 + 2,
                       np.nextafter(F32(1), F32(2)), np.nextafter(F32(1), F32(0))], dtype=F32)
    a, d = (x.ravel() for x in np.meshgrid(edge_a, edge_d))
    keep = in_range(a, d) | (a == 0)
    assert_equal_division(a[keep], d[keep])
    # a zero numerator: a zero quotient (its sign may differ: -0 / d gives +0)
    zero = fast_div(np.array([0.0, -0.0], F32), np.array([3.0, 3.0], F32))
    assert (zero == 0).all()


def test_tiny_numerators_and_quotients_stay_below_a_sixteenth():
    # Outside the proved range (|a| < 2^-101 or |a/d| < 2^-125) with the divisor in range, the
    # quotient is below 2^-5: floor gives 0 and round-half-even gives 0, as for IEEE division.
    rng = np.random.default_rng(3)
    n = 1 << 20
    d = significands(rng, n) * np.exp2(rng.integers(-96, 96, n)).astype(F32)
    a = (significands(rng, n).astype(F64) * np.exp2(rng.integers(-149, -101, n).astype(F64))).astype(F32)
    a = np.where(rng.random(n) < 0.5, a, (d.astype(F64) * 2.0 ** -126 * rng.random(n)).astype(F32))
    with np.errstate(all="ignore"):
        got, want = fast_div(a, d), (a / d).astype(F32)
    assert (np.abs(want) < 2.0**-5).all() and (np.abs(got) < 2.0**-4).all()


@pytest.mark.slow
def test_every_divisor_significand_many_numerators():
    rng = np.random.default_rng(4)
    d = (1.0 + np.arange(1 << 23, dtype=F64) / (1 << 23)).astype(F32)
    for _ in range(8):
        assert_equal_division(significands(rng, d.size), d)
        mid = (rng.integers(1 << 23, 1 << 24, d.size) + 0.5) * 2.0**-23
        a = (mid * d).astype(F32)
        assert_equal_division(np.where(a >= 2, a / F32(2), a).astype(F32), d)


# ---- the Triton helpers, under the interpreter


@triton_jit
def _divide_rows_kernel(a_ptr, d_ptr, q_ptr, fast_ptr, n, BLOCK: tl.constexpr):
    # row i of a divided by d[i]: the reciprocal once per program, then div_fast
    row = tl.program_id(0)
    d = tl.load(d_ptr + row)
    r, fast = div_setup(d)
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + row * n + offs, mask=offs < n, other=1.0)
    tl.store(q_ptr + row * n + offs, div_fast(a, d, r), mask=offs < n)
    tl.store(fast_ptr + row, fast.to(tl.int32))


@pytest.mark.triton_interpret
def test_triton_helpers_match_ieee_division():
    import torch

    rng = np.random.default_rng(5)
    rows, n = 512, 1024
    d = significands(rng, rows) * np.exp2(rng.integers(-100, 100, rows)).astype(F32)
    d[:4] = [DIV_MIN, DIV_MAX, 2.0**-97, 2.0**97]
    a = (significands(rng, (rows, n)) * np.exp2(rng.integers(-20, 20, (rows, n))) * d[:, None]).astype(F32)
    a[:, : n // 2] = ((rng.integers(1 << 23, 1 << 24, (rows, n // 2)) + 0.5) * 2.0**-23 * d[:, None]).astype(F32)
    q = torch.empty((rows, n), dtype=torch.float32)
    fast = torch.empty(rows, dtype=torch.int32)
    _divide_rows_kernel[(rows,)](torch.from_numpy(a), torch.from_numpy(d), q, fast, n, BLOCK=n)
    expect_fast = (np.abs(d) >= DIV_MIN) & (np.abs(d) <= DIV_MAX)
    assert (fast.numpy().astype(bool) == expect_fast).all()
    dd = np.broadcast_to(d[:, None], a.shape).astype(F32)
    keep = expect_fast[:, None] & in_range(a, dd)
    assert keep.mean() > 0.9
    with np.errstate(all="ignore"):
        assert (q.numpy()[keep] == (a / dd)[keep]).all()
        assert (q.numpy()[keep] == fast_div(a, dd)[keep]).all()
