"""The C++ kernels' division by a loop-invariant divisor (csrc/kernels/fast_divide.h: the reciprocal
once, then q0 = a*r, res = fma(-q0, d, a), q = fma(res, r, q0); divisors outside [2^-96, 2^96]
scaled by 2^+-64 first) gives the reference's int8 codes and histogram bins bit for bit, checked
where the division decides them: numerators next to the rounding ties of rint (codes) and next to
the bin edges of floor (bins), with divisors across the whole float32 range, subnormal and huge
ones included. The CPU build runs the same header as the CUDA kernels; the arithmetic itself
(equal to IEEE division in range) is proved in tests/test_fast_div.py.
"""
import numpy as np
import pytest
import torch

from eitp_kernels import _extension, reference

F32 = np.float32

if not _extension.load()[0]:
    pytest.skip("the extension is not built", allow_module_level=True)


def _divisors(rng, n):
    """float32 divisors with random significands and exponents over [2^-140, 2^120] (subnormal to huge)."""
    significand = 1.0 + rng.integers(0, 1 << 23, n) / float(1 << 23)
    exponent = rng.integers(-140, 121, n)
    exponent[:8] = [-140, -126, -97, -96, 96, 97, 120, 0]
    return (significand * np.exp2(exponent.astype(np.float64))).astype(F32)


def _neighbours(v, k):
    """v moved by k float32 steps (k may be negative), elementwise."""
    out = v.copy()
    direction = F32(np.inf) if k > 0 else F32(-np.inf)
    for _ in range(abs(k)):
        out = np.nextafter(out, direction).astype(F32)
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_codes_next_to_rounding_ties_match_the_reference(symmetric):
    rng = np.random.default_rng(0)
    rows, n = 1024, 96
    s = _divisors(rng, rows)
    tie = rng.integers(-140, 140, (rows, n)) + 0.5  # quotients k + 1/2: rint decides on the last bit
    with np.errstate(over="ignore"):
        x = (tie * s[:, None].astype(np.float64)).astype(F32)  # beyond the float range: +-inf
    x[:, 1::4] = _neighbours(x[:, 1::4], 1)
    x[:, 2::4] = _neighbours(x[:, 2::4], -1)
    x[:, :6] = [[np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0]]
    xt, st = torch.from_numpy(x), torch.from_numpy(s)
    zp = None if symmetric else torch.from_numpy(rng.integers(-128, 128, rows).astype(np.int32))
    got = torch.ops.eitp.quantize_int8_rows(xt, st, zp, symmetric)[0]
    want = reference.quantize_int8(xt, granularity="channel", axis=0, symmetric=symmetric, scale=st,
                                   zero_point=zp)[0]
    mismatch = (got != want).nonzero()
    assert mismatch.numel() == 0, f"{len(mismatch)} codes differ, e.g. x={x[tuple(mismatch[0])]!r} " \
                                  f"s={s[mismatch[0, 0]]!r}: {got[tuple(mismatch[0])]} != {want[tuple(mismatch[0])]}"


@pytest.mark.parametrize("explicit", [False, True])
def test_bins_next_to_bin_edges_match_the_reference(explicit):
    rng = np.random.default_rng(1)
    rows, bins, n = 512, 37, 128
    w = _divisors(rng, rows)
    lo = (rng.standard_normal(rows) * w * 8).astype(F32)
    hi = (lo.astype(np.float64) + w.astype(np.float64) * bins).astype(F32)
    keep = np.isfinite(hi) & (hi > lo)
    lo, hi = lo[keep], hi[keep]
    edge = rng.integers(0, bins + 1, (lo.size, n)).astype(np.float64)  # quotients next to integers: floor decides
    width = (hi.astype(np.float64) - lo) / bins
    x = (lo[:, None] + edge * width[:, None]).astype(F32)
    x[:, 1::4] = _neighbours(x[:, 1::4], 1)
    x[:, 2::4] = _neighbours(x[:, 2::4], -1)
    x[:, 3] = np.nan
    x[:, 5] = np.inf
    x[:, 7] = _neighbours(lo, -2)  # below an explicit range
    xt, lot, hit = torch.from_numpy(x), torch.from_numpy(lo), torch.from_numpy(hi)
    got = torch.ops.eitp.histogram_counts(xt, lot, hit, bins, explicit)
    want = reference.bin_counts(xt, lot.unsqueeze(1), hit.unsqueeze(1), bins, explicit)
    assert torch.equal(got, want.to(got.dtype))


def test_degenerate_bin_widths_bin_to_zero():
    # w == 0 (constant slice) and w infinite (hi - lo overflows): every counted value in bin 0
    x = torch.tensor([[1.0, 1.0, 1.0, float("nan")], [-3e38, 0.0, 3e38, float("inf")]])
    lo, hi = torch.tensor([1.0, -3e38]), torch.tensor([1.0, 3e38])
    got = torch.ops.eitp.histogram_counts(x, lo, hi, 4, False)
    want = reference.bin_counts(x, lo.unsqueeze(1), hi.unsqueeze(1), 4, False)
    assert torch.equal(got, want.to(got.dtype))
    assert got[:, 0].tolist() == [3, 3]
