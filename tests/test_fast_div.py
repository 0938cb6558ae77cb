"""The fp32 division by a reciprocal with one correction step (eitp_kernels._triton.div_setup,
div_fast) equals IEEE division wherever its operands are in range.

The kernels divide by a divisor d that is constant over their loop (a bin width, an int8 scale).
Once per program: a power of two s with d * s in [1, 2), dn = d * s and r = 1/dn correctly
rounded (a linear guess, five Newton steps, the nearest of it and its neighbours); per element
q0 = a*r, res = fma(-q0, dn, a), q = fma(res, r, q0) on the scaled numerator a * s. A bin width
(hi - lo) / bins is rounded the same way (div_rn_by_count), subnormal widths included.
Here the same float32 steps run in numpy (the fused multiply-add emulated exactly: the product
and the float64 sum's error are exact, the sum is rounded to odd in float64, then to nearest in
float32) and are compared with numpy's IEEE float32 division over every divisor significand,
numerators whose quotient lies next to a rounding midpoint, and exponents across the range
(subnormal divisors included); then the Triton helpers run under the interpreter.
"""
from fractions import Fraction

import numpy as np
import pytest

from eitp_kernels._triton import DIV_MAX, DIV_MIN, div_constants, div_fast, div_rn_by_count, div_setup, tl, triton_jit

F32, F64 = np.float32, np.float64
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


def fast_div(a, d, r=None):
    """The correction step: q0 = RN(a*r), res = fma(-q0, d, a), q = fma(res, r, q0), r = RN(1/d)."""
    r = (F32(1.0) / d).astype(F32) if r is None else r
    q0 = (a * r).astype(F32)
    res = fma32(-q0, d, a)
    return fma32(res, r, q0)


def next_float(y, steps):
    """y moved by `steps` ulps (positive float32 y)."""
    return (y.view(np.int32) + np.int32(steps)).view(F32)


def reciprocal(m, fused=True, first_error=None):
    """div_setup's r = 1/m for positive normal float32 m (_triton._reciprocal): the significand
    m1, the guess 24/17 - 8/17 * m1 (one FMA on the GPU, ``fused``; two roundings under the
    interpreter), five Newton steps, the nearest of y and its neighbours, times 2^-j. With
    ``first_error``, the steps start instead from RN(1/m1) moved by that many ulps and only the
    last two run (the margin: five steps from the guess end far closer)."""
    one = np.ones_like(m)
    bits = m.view(np.int32)
    m1 = ((bits & 0x007FFFFF) | 0x3F800000).astype(np.int32).view(F32)
    if first_error is None:
        a, c = np.full_like(m1, F32(-8 / 17)), np.full_like(m1, F32(24 / 17))
        y = fma32(a, m1, c) if fused else (c + (a * m1).astype(F32)).astype(F32)
        steps = 5
    else:
        y, steps = next_float((one / m1).astype(F32), first_error), 2
    for _ in range(steps):
        y = fma32(fma32(-m1, y, one), y, y)
    for c in (next_float(y, 1), next_float(y, -1)):
        y = np.where(np.abs(fma32(-m1, c, one)) < np.abs(fma32(-m1, y, one)), c, y)
    return (y * ((254 - ((bits >> 23) & 0xFF)) << 23).astype(np.int32).view(F32)).astype(F32)


def setup(d, fused=True):
    """div_setup's (s, dn, r) for finite nonzero float32 d."""
    e = np.abs(d).view(np.int32) >> 23
    k = np.clip(127 - e, -126, 126)
    s = ((k + 127) << 23).astype(np.int32).view(F32)
    m = (np.abs(d) * s).astype(F32)
    r = reciprocal(m, fused)
    return s, np.where(d < 0, -m, m), np.where(d < 0, -r, r)


def scaled_div(a, d, fused=True):
    """The kernels' a / d: div_setup once, then div_fast on a * s."""
    s, dn, r = setup(d, fused)
    return fast_div((a * s).astype(F32), dn, r)


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
    assert not bad.any(), (f"{bad.sum()} mismatches, e.g. a={a[bad][:4]!r} d={d[bad][:4]!r}: "
                           f"{got[bad][:4]} != {want[bad][:4]}")


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


def test_reciprocal_is_correctly_rounded_for_every_significand():
    m = (1.0 + np.arange(1 << 23, dtype=F64) / (1 << 23)).astype(F32)
    assert (reciprocal(m) == (F32(1) / m).astype(F32)).all()
    # the neighbour pick is needed: Newton steps alone miss 1 / 1.11...1
    y = next_float((F32(1) / m[-1:]).astype(F32), 1)
    for _ in range(2):
        y = fma32(fma32(-m[-1:], y, np.ones(1, F32)), y, y)
    assert y[0] != F32(1) / m[-1]


def test_scaled_division_every_exponent():
    # divisors of every exponent, subnormal ones included; numerators with |a * s| >= 2^-101
    rng = np.random.default_rng(6)
    n = 1 << 21
    d = (significands(rng, n).astype(F64) * np.exp2(rng.integers(-149, 128, n).astype(F64))).astype(F32)
    d = np.where(d == 0, F32(1e-45), d) * rng.choice([-1, 1], n).astype(F32)
    s, _, _ = setup(d)
    q_exp = rng.integers(-24, 24, n).astype(F64)  # quotients near the kernels' (bins, codes)
    a = (significands(rng, n).astype(F64) * np.exp2(q_exp) * d.astype(F64)).astype(F32)
    with np.errstate(all="ignore"):
        keep = np.isfinite(a) & (np.abs(a.astype(F64) * s) >= A_MIN) & in_range(a, d)
        assert keep.mean() > 0.8
        got, want = scaled_div(a[keep], d[keep]), (a[keep] / d[keep]).astype(F32)
    bad = got != want
    assert not bad.any(), f"a={a[keep][bad][:4]!r} d={d[keep][bad][:4]!r}"
    with np.errstate(all="ignore"):
        assert (scaled_div(a[keep][:4096], d[keep][:4096], fused=False) == want[:4096]).all()


def by_count(x, count):
    """div_rn_by_count's steps (float32 x, a positive integer count <= 2^24): x / count."""
    s, dn, r = (F32(v) for v in div_constants(count))
    c = F32(count)
    ax = np.abs(x)
    tiny = ax < F32(2.0**-64)
    big = np.where(tiny, ax * F32(2.0**100), ax).astype(F32)
    q = fast_div((big * s).astype(F32), np.full_like(x, dn), np.full_like(x, r))
    w = np.where(tiny, q * F32(2.0**-100), q).astype(F32)
    y = (big * F32(2.0**49)).astype(F32)
    n = np.floor(fast_div((y * s).astype(F32), np.full_like(x, dn), np.full_like(x, r)))
    rem = fma32(-n, np.full_like(x, c), y)
    n = np.where(rem < 0, n - 1, n).astype(F32)
    rem = np.where(rem < 0, rem + c, rem).astype(F32)
    odd = n - 2 * np.floor(n * F32(0.5)) != 0
    n = np.where((2 * rem > c) | ((2 * rem == c) & odd), n + 1, n).astype(F32)
    w = np.where(tiny & (q < F32(2.0**-26)), (n * F32(2.0**-75)).astype(F32) * F32(2.0**-74), w).astype(F32)
    usable = (ax > 0) & (ax < np.inf)
    return np.where(usable, np.where(x < 0, -w, w), x * r).astype(F32)


COUNTS = [1, 2, 3, 7, 10, 100, 255, 256, 257, 1000, 4095, 4096, 5000, 65535, (1 << 24) - 1, 1 << 24]


def test_division_by_a_count_every_exponent():
    # a bin width (hi - lo) / bins: normal, tiny and subnormal widths, rounded once
    rng = np.random.default_rng(7)
    n = 1 << 18
    x = (significands(rng, n).astype(F64) * np.exp2(rng.integers(-149, 128, n).astype(F64))).astype(F32)
    x[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3e-45, F32(3.4028235e38)]
    for count in COUNTS + list(rng.integers(1, 1 << 24, 8)):
        with np.errstate(all="ignore"):
            got, want = by_count(x, int(count)), (x / F32(count)).astype(F32)
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        assert same.all(), f"count={count}: x={x[~same][:4]!r} got {got[~same][:4]} want {want[~same][:4]}"
        # subnormal quotients half-way between two multiples of 2^-149 (ties go to even)
        k = rng.integers(0, 1 << 22, 4096)
        ties = ((2 * k + 1).astype(F64) * 2.0**-150 * count).astype(F32)
        with np.errstate(all="ignore"):
            assert (by_count(ties, int(count)) == (ties / F32(count)).astype(F32)).all()


@pytest.mark.slow
@pytest.mark.parametrize("first_error", [None, -4, -3, -2, -1, 0, 1, 2, 3, 4])
def test_reciprocal_every_significand_unfused_and_from_any_close_start(first_error):
    m = (1.0 + np.arange(1 << 23, dtype=F64) / (1 << 23)).astype(F32)
    assert (reciprocal(m, fused=False, first_error=first_error) == (F32(1) / m).astype(F32)).all()


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
def _divide_rows_kernel(a_ptr, d_ptr, q_ptr, n, BLOCK: tl.constexpr):
    # row i of a divided by d[i]: div_setup once per program, then div_fast
    row = tl.program_id(0)
    s, dn, r = div_setup(tl.load(d_ptr + row))
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + row * n + offs, mask=offs < n, other=1.0)
    tl.store(q_ptr + row * n + offs, div_fast(a * s, dn, r), mask=offs < n)


@pytest.mark.triton_interpret
def test_triton_helpers_match_ieee_division():
    import torch

    rng = np.random.default_rng(5)
    rows, n = 128, 1024
    d = (significands(rng, rows).astype(F64) * np.exp2(rng.integers(-149, 128, rows).astype(F64))).astype(F32)
    d = np.where(d == 0, F32(1e-45), d)
    d[:6] = [float.fromhex("0x1.fffffep+0"), 1.0, 2.0**-149, float.fromhex("0x1.fffffep+127"), -3.0, 0.1]
    with np.errstate(over="ignore"):  # the largest divisors give some infinite numerators (not kept)
        a = (significands(rng, (rows, n)) * np.exp2(rng.integers(-20, 20, (rows, n))) * d[:, None]).astype(F32)
        a[:, : n // 2] = ((rng.integers(1 << 23, 1 << 24, (rows, n // 2)) + 0.5) * 2.0**-23 * d[:, None]).astype(F32)
    q = torch.empty((rows, n), dtype=torch.float32)
    _divide_rows_kernel[(rows,)](torch.from_numpy(a), torch.from_numpy(d), q, n, BLOCK=n)
    dd = np.broadcast_to(d[:, None], a.shape).astype(F32)
    s, _, _ = setup(dd)
    with np.errstate(all="ignore"):
        keep = np.isfinite(a) & (np.abs(a.astype(F64) * s) >= A_MIN) & in_range(a, dd)
        assert keep.mean() > 0.8
        assert (q.numpy()[keep] == (a / dd)[keep]).all()
        assert (q.numpy()[keep] == scaled_div(a, dd)[keep]).all()
    # zero, infinite and NaN divisors: quotient 0 for finite numerators
    special = torch.tensor([0.0, float("inf"), float("-inf"), float("nan")])
    q = torch.empty((4, 16))
    _divide_rows_kernel[(4,)](torch.ones(4, 16), special, q, 16, BLOCK=16)
    assert (q == 0).all()


@triton_jit
def _divide_by_count_kernel(x_ptr, out_ptr, count, s, dn, r, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, div_rn_by_count(x, tl.zeros([], tl.float32) + count, s, dn, r))


@pytest.mark.triton_interpret
def test_triton_division_by_a_count():
    import torch

    rng = np.random.default_rng(8)
    n = 1 << 14
    x = (significands(rng, n).astype(F64) * np.exp2(rng.integers(-149, 128, n).astype(F64))).astype(F32)
    x[:6] = [0.0, np.inf, -np.inf, np.nan, 1e-45, -2.5e-44]
    for count in (1, 7, 256, 4095, 1 << 24):
        out = torch.empty(n)
        _divide_by_count_kernel[(n // 1024,)](torch.from_numpy(x), out, count, *div_constants(count), BLOCK=1024)
        with np.errstate(all="ignore"):
            want = (x / F32(count)).astype(F32)
        got = out.numpy()
        assert ((got == want) | (np.isnan(got) & np.isnan(want))).all(), count
