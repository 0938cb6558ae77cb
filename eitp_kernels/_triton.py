"""Optional import of Triton.

Triton is a Linux-only dependency; where it is missing the ops still work on
their other backends. Kernels are decorated with ``triton_jit`` so the op
modules import without Triton.
"""
from __future__ import annotations

import os

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


# Division by a loop-invariant fp32 divisor d: the reciprocal r = 1/d (correctly rounded) once
# per program, then per element q0 = a*r, res = fma(-q0, d, a) (exact), q = fma(res, r, q0): three
# instructions instead of the ~11 of a correctly rounded division with its slow-path call.
# Proved equal to IEEE a / d by tests/test_fast_div.py (every divisor significand, numerators near
# the quotient's rounding midpoints, exponents across the range) for DIV_MIN <= |d| <= DIV_MAX and
# 2^-101 <= |a|, 2^-125 <= |a / d| <= 2^125; a smaller |a| or |a / d| gives |a / d| < 2^-5 and a
# result of magnitude below 2^-4 (what a floor or a round of the quotient does not tell apart).
DIV_MIN = tl.constexpr(2.0**-96)
DIV_MAX = tl.constexpr(2.0**96)
# The interpreter computes tl.fma as a * b + c, rounded twice: there the fused multiply-add is
# emulated exactly in float64 (below), so the interpreted kernels take the same float32 steps.
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"))


@triton_jit
def fma_rn(x, y, z):
    """fp32 x * y + z rounded once (PTX fma.rn.f32; exact emulation under the interpreter:
    x*y and the float64 sum's error are exact, the sum is rounded to odd in float64, then to
    nearest in float32, which rounds the exact value correctly)."""
    if _INTERPRETED:
        p = x.to(tl.float64) * y.to(tl.float64)
        z64 = z.to(tl.float64)
        s = p + z64
        t = s - p
        err = (p - (s - t)) + (z64 - t)  # p + z == s + err exactly
        bits = s.to(tl.int64, bitcast=True)
        sticky = (err != 0) & ((bits & 1) == 0)
        bits = tl.where(sticky, tl.where((err > 0) == (s > 0), bits + 1, bits - 1), bits)
        out = bits.to(tl.float64, bitcast=True).to(tl.float32)
    else:
        out = tl.fma(x, y, z)
    return out


@triton_jit
def div_setup(d):
    """(r, fast) for dividing by the fp32 scalar d: r = 1/d correctly rounded, and whether
    :func:`div_fast` equals IEEE division by d (DIV_MIN <= |d| <= DIV_MAX). Once per program."""
    r = tl.math.div_rn(tl.full([], 1.0, tl.float32), d)
    ad = tl.abs(d)
    return r, (ad >= DIV_MIN) & (ad <= DIV_MAX)


@triton_jit
def div_fast(a, d, r):
    """a / d for fp32 a and the fp32 scalars d and r = 1/d from :func:`div_setup` (fast true):
    one correction step (three instructions). Equal to IEEE division in the range given above
    (a zero quotient may differ in sign); inf or NaN a gives NaN."""
    q0 = a * r
    res = fma_rn(-q0, d, a)
    return fma_rn(res, r, q0)


# CUDA's launch limits: gridDim.x < 2^31, gridDim.y and gridDim.z <= 65535.
# Every launcher flattens its work items onto axis 0; launch() checks all three.
MAX_GRID = (2**31 - 1, 65535, 65535)

# Callables ``observer(kernel, grid, args, meta) -> bool`` told of every launch
# before it happens; one returning True takes the launch over (nothing runs).
# Tests use them to record the launches the launchers make (grids for huge
# shapes, kernel specialisations to compile ahead of time).
launch_observers: list = []


def check_grid(kernel_name: str, grid) -> tuple:
    """The grid as a tuple, or ValueError when an axis is past CUDA's limit. Symbolic sizes
    (torch.compile with dynamic shapes) pass unchecked: comparing them would specialise them."""
    grid = tuple(grid)
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        if isinstance(size, int) and size > limit:
            raise ValueError(f"{kernel_name}: launch grid {grid} has {size} programs on axis {axis}; CUDA allows at "
                             f"most {limit} (the input is too large for one launch of this kernel)")
    return grid


def launch(kernel, grid, *args, **meta):
    """``kernel[grid](*args, **meta)`` on the device of its first tensor argument.

    Triton launches on the *current* CUDA device; a tensor on another device
    would be an illegal address there, so the launch runs under
    ``torch.cuda.device(tensor.device)`` (the CUDA backend's CUDAGuard).
    Every launch is inside a Triton op (eitp_kernels._registration): a JIT
    kernel goes through ``torch.library.wrap_triton``, so that torch.compile,
    tracing a ``triton_op``, records the kernel (outside tracing it is the
    kernel itself); an interpreted kernel, or a test's stand-in, runs as given.
    """
    import torch

    name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")
    grid = check_grid(name, grid)
    for observer in launch_observers:
        if observer(kernel, grid, args, meta):
            return
    is_jit = triton is not None and isinstance(kernel, triton.runtime.jit.JITFunction)
    runner = torch.library.wrap_triton(kernel) if is_jit else kernel
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            runner[grid](*args, **meta)
    else:
        runner[grid](*args, **meta)
