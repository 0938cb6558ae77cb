"""Optional import of Triton.

Triton is a Linux-only dependency; where it is missing the ops still work on
their other backends. Kernels are decorated with ``triton_jit`` so the op
modules import without Triton.
"""
from __future__ import annotations

import functools
import os
import threading

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR = None
except ImportError as error:  # pragma: no cover - exercised only where triton is absent
    import types

    triton = None

    class _Constexpr:
        """Stands in for ``tl.constexpr``: the kernel modules wrap constants in it at import."""

        def __init__(self, value=None):
            self.value = value

    # Only what the kernel modules evaluate at import (annotations are not evaluated).
    tl = types.SimpleNamespace(constexpr=_Constexpr)
    TRITON_IMPORT_ERROR = error


def triton_jit(fn):
    """``triton.jit`` where Triton is installed, otherwise the plain function (never launched)."""
    return triton.jit(fn) if triton is not None else fn


def acc_tl(dtype):
    """The Triton accumulation dtype for tensors of ``dtype``: ``tl.float64`` for
    float64, ``tl.float32`` otherwise (``_layout.compute_dtype``)."""
    import torch

    return tl.float64 if dtype == torch.float64 else tl.float32


@triton_jit
def exact_div(a, b, IS_F64: tl.constexpr):
    """a / b correctly rounded, a and b of one float dtype (float64 when IS_F64,
    else float32): Triton's fp32 ``/`` compiles to the approximate
    ``div.full.f32``, and the other backends divide exactly."""
    if IS_F64:
        out = a / b
    else:
        out = tl.math.div_rn(a, b)
    return out


# Division by a loop-invariant fp32 divisor d without a per-element slow path. Once per program
# (div_setup): a power of two s with |d * s| in [1, 2) (subnormal d: [2^-23, 1)), dn = d * s, and
# r = 1/dn correctly rounded, by FMAs (no division call). Per element (div_fast) the numerator is
# scaled too (a * s, exact: callers keep it finite) and q0 = a*r, res = fma(-q0, dn, a) (exact),
# q = fma(res, r, q0): three instructions instead of the ~11 of a correctly rounded division with
# its slow-path call. tests/test_fast_div.py proves q == IEEE a / d (every divisor significand,
# numerators next to the quotient's rounding midpoints, every exponent) wherever
# 2^-101 <= |a * s| and 2^-125 <= |a / d| <= 2^125; below those, |a / d| < 2^-5 and |q| < 2^-4
# (the same floor, the same round half to even).
# The interpreter computes tl.fma as a * b + c, rounded twice: there the fused multiply-add is
# emulated exactly in float64 (below), so the interpreted kernels take the same float32 steps.
# The divisor range of the correction step's proof (tests/test_fast_div.py); div_setup's dn is in
# [2^-23, 4), far inside.
DIV_MIN = 2.0**-96
DIV_MAX = 2.0**96
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"))


@triton_jit
def fma_rn(x, y, z):
    """fp32 x * y + z rounded once (PTX fma.rn.f32; exact emulation under the interpreter:
    x*y and the float64 sum's error are exact, the sum is rounded to odd in float64, then to
    nearest in float32, which rounds the exact value correctly)."""
    if _INTERPRETED:
        zero = tl.zeros([], tl.float64)  # widens a float32 tensor or a Python float exactly
        p = (zero + x) * (zero + y)
        z64 = zero + z
        t = p + z64
        u = t - p
        err = (p - (t - u)) + (z64 - u)  # p + z == t + err exactly
        bits = t.to(tl.int64, bitcast=True)
        sticky = (err != 0) & ((bits & 1) == 0)
        bits = tl.where(sticky, tl.where((err > 0) == (t > 0), bits + 1, bits - 1), bits)
        out = bits.to(tl.float64, bitcast=True).to(tl.float32)
    else:
        out = tl.fma(x, y, z)
    return out


@triton_jit
def _closer_reciprocal(m, y, c):
    """Of the positive floats y and c, the one nearer 1/m (|1 - m*y| is exact by FMA)."""
    return tl.where(tl.abs(fma_rn(-m, c, 1.0)) < tl.abs(fma_rn(-m, y, 1.0)), c, y)


@triton_jit
def _reciprocal(m):
    """1/m correctly rounded for a positive normal fp32 scalar m, by FMAs only (no division:
    neither a call nor the approximate div.full.f32). m = m1 * 2^j with m1 in [1, 2); from
    24/17 - 8/17 * m1 (within 1/17), three Newton steps y + y * (1 - m1*y) reach a few ulps,
    two more and the nearest of y and its two neighbours give RN(1/m1) (the steps alone miss
    the significand 1.11...1); RN(1/m) = RN(1/m1) * 2^-j (normal here)."""
    bits = m.to(tl.int32, bitcast=True)
    m1 = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    y = 1.411764705882353 - 0.47058823529411764 * m1
    for _ in tl.static_range(5):
        y = fma_rn(fma_rn(-m1, y, 1.0), y, y)
    ybits = y.to(tl.int32, bitcast=True)
    y = _closer_reciprocal(m1, y, (ybits + 1).to(tl.float32, bitcast=True))
    y = _closer_reciprocal(m1, y, (ybits - 1).to(tl.float32, bitcast=True))
    # 2^-j: the exponent field of 1/2^j is 254 minus that of m
    return y * ((254 - ((bits >> 23) & 0xFF)) << 23).to(tl.float32, bitcast=True)


@triton_jit
def div_setup(d):
    """(s, dn, r) for dividing by the fp32 scalar d: the power of two s, dn = d * s and
    r = 1/dn correctly rounded (:func:`_reciprocal`); a / d == div_fast(a * s, dn, r) (see
    above). Once per program. d = 0, +-inf or NaN gives (0, 1, 1): a quotient 0 for finite a
    (IEEE for d = +-inf)."""
    ad = tl.abs(d)
    usable = (ad > 0) & (ad < float("inf"))
    e = ad.to(tl.int32, bitcast=True) >> 23  # the biased exponent
    k = tl.minimum(tl.maximum(127 - e, -126), 126)
    s = ((k + 127) << 23).to(tl.float32, bitcast=True)
    m = tl.where(usable, ad * s, 1.0)
    y = _reciprocal(m)
    negative = d < 0
    return (tl.where(usable, s, 0.0), tl.where(negative, -m, m), tl.where(negative, -y, y))


@triton_jit
def div_fast(a, dn, r):
    """a / dn for fp32 a (already scaled by s) and the fp32 scalars dn, r from :func:`div_setup`:
    one correction step (three instructions). Infinite or NaN a gives NaN."""
    q0 = a * r
    res = fma_rn(-q0, dn, a)
    return fma_rn(res, r, q0)


# Host-side twins of triton.cdiv and triton.next_power_of_2 for the launchers: Triton's are
# constexpr functions, whose call wraps and unwraps every argument (1.9 us a call against
# 0.03 us here, timeit on this machine; the Triton histogram launcher made five such calls).
# The same arithmetic, so symbolic sizes (torch.compile, dynamic shapes) trace alike.
def cdiv(x, y):
    """ceil(x / y) for positive integers."""
    return (x + y - 1) // y


def next_power_of_2(n):
    """The smallest power of 2 >= n (n >= 1)."""
    n -= 1
    n |= n >> 1
    n |= n >> 2
    n |= n >> 4
    n |= n >> 8
    n |= n >> 16
    n |= n >> 32
    return n + 1


# Once per divisor (a number of bins): numpy's scalar arithmetic is 5 us a call.
@functools.lru_cache(maxsize=64)
def div_constants(d: float) -> tuple[float, float, float]:
    """:func:`div_setup`'s (s, dn, r) for a divisor known on the host (float32 d, finite, nonzero),
    to pass to a kernel as arguments: s a power of two, dn = d * s in [1, 2) (the float32
    exponent range allows), r = 1/dn correctly rounded (numpy's IEEE float32 division)."""
    import numpy as np

    d32 = np.float32(d)
    if not (np.isfinite(d32) and d32 != 0):
        raise ValueError(f"div_constants: the divisor must be finite and nonzero, got {d!r}")
    k = min(max(-int(np.frexp(d32)[1]) + 1, -126), 126)
    s = np.float32(2.0**k)
    dn = np.float32(d32 * s)
    return float(s), float(dn), float(np.float32(1) / dn)


# div_rn_by_count: 2^-26 (the scaled quotient under which the result is subnormal), 2^100 and 2^-100
# (the scaling of a tiny numerator), 2^49 (with 2^100: 2^149, a subnormal's unit), 2^-75 * 2^-74.
_TINY = tl.constexpr(2.0**-64)


@triton_jit
def div_rn_by_count(x, count, s, dn, r):
    """x / count correctly rounded, for an fp32 scalar x and a positive integer count <= 2^24
    (a number of bins) with :func:`div_constants` (s, dn, r) of count: no division call.

    |x| >= 2^-64: div_fast. Smaller |x| is scaled by 2^100 first (exact); the result is scaled
    back when it is normal, and when it is subnormal, rounded to the nearest multiple of 2^-149
    (ties to even) from the exact remainder of |x| * 2^149 / count (an integer below 2^47
    divided by count <= 2^24: the FMA remainder is exact). Zero, infinite and NaN x give x * r
    (0, +-inf, NaN: IEEE's x / count)."""
    ax = tl.abs(x)
    tiny = ax < _TINY
    big = tl.where(tiny, ax * 1.2676506002282294e30, ax)  # 2^100
    q = div_fast(big * s, dn, r)
    w = tl.where(tiny, q * 7.888609052210118e-31, q)  # 2^-100: exact for a normal result
    # subnormal result: n = round_half_even(ax * 2^149 / count), w = n * 2^-149
    y = big * 562949953421312.0  # 2^49
    n = tl.floor(div_fast(y * s, dn, r))
    rem = fma_rn(-n, count, y)
    n = tl.where(rem < 0, n - 1.0, n)
    rem = tl.where(rem < 0, rem + count, rem)
    odd = n - 2.0 * tl.floor(n * 0.5) != 0
    n = tl.where((2.0 * rem > count) | ((2.0 * rem == count) & odd), n + 1.0, n)
    w = tl.where(tiny & (q < 1.4901161193847656e-08), n * 2.6469779601696886e-23 * 5.293955920339377e-23, w)
    usable = (ax > 0) & (ax < float("inf"))
    return tl.where(usable, tl.where(x < 0, -w, w), x * r)


# CUDA's launch limits: gridDim.x < 2^31, gridDim.y and gridDim.z <= 65535.
# Every launcher flattens its work items onto axis 0; launch() checks all three.
MAX_GRID = (2**31 - 1, 65535, 65535)

# Callables ``observer(kernel, grid, args, meta) -> bool`` told of every launch
# before it happens; one returning True takes the launch over (nothing runs).
# Tests use them to record the launches the launchers make (grids for huge
# shapes, kernel specialisations to compile ahead of time).
launch_observers: list = []


def kernel_name(kernel) -> str:
    """A kernel's name (a JIT function's, or a stand-in's ``__name__``)."""
    return getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")


def check_grid(kernel, grid) -> tuple:
    """The grid as a tuple, or ValueError (naming ``kernel``: a kernel or its name) when an axis
    is past CUDA's limit. Symbolic sizes (torch.compile with dynamic shapes) pass unchecked:
    comparing them would specialise them."""
    if type(grid) is tuple and len(grid) == 1 and type(grid[0]) is int and grid[0] <= MAX_GRID[0]:
        return grid  # the launchers' usual grid, checked without the loop
    grid = tuple(grid)
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        if isinstance(size, int) and size > limit:
            name = kernel if isinstance(kernel, str) else kernel_name(kernel)
            raise ValueError(f"{name}: launch grid {grid} has {size} programs on axis {axis}; CUDA allows at "
                             f"most {limit} (the input is too large for one launch of this kernel)")
    return grid


class _DirectLaunches(threading.local):
    on = False  # inside run_direct on this thread


_direct = _DirectLaunches()


def run_direct(launcher, args: tuple):
    """``launcher(*args)`` called outside its Triton op, in plain eager mode
    (``_backends.op_caller`` decides when: no tracing, no modes, no gradient):
    its JIT kernels launch as they are, as inside the op's eager body, without
    the custom-op dispatch around it."""
    if _direct.on:
        return launcher(*args)
    _direct.on = True
    try:
        return launcher(*args)
    finally:
        _direct.on = False


def launch(kernel, grid, *args, **meta):
    """``kernel[grid](*args, **meta)`` on the device of its first tensor argument.

    Triton launches on the *current* CUDA device; a tensor on another device
    would be an illegal address there, so the launch runs under
    ``torch.cuda.device(tensor.device)`` (the CUDA backend's CUDAGuard).
    Every launch is inside a Triton op (eitp_kernels._registration) or its
    launcher called directly in plain eager mode (:func:`run_direct`): a JIT
    kernel goes through ``torch.library.wrap_triton``, so that torch.compile,
    tracing a ``triton_op``, records the kernel (outside tracing it is the
    kernel itself; under run_direct the kernel is launched as it is); an
    interpreted kernel, or a test's stand-in, runs as given.
    """
    import torch

    grid = check_grid(kernel, grid)
    for observer in launch_observers:
        if observer(kernel, grid, args, meta):
            return
    runner = kernel
    if not _direct.on and triton is not None and isinstance(kernel, triton.runtime.jit.JITFunction):
        runner = torch.library.wrap_triton(kernel)
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            runner[grid](*args, **meta)
    else:
        runner[grid](*args, **meta)
