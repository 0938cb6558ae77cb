"""Triton kernels and launcher of finite min/max: the ``triton`` backend of
:mod:`eitp_kernels.ops.finite_minmax` (launcher ``finite_minmax``, the op
``eitp_triton::finite_minmax``). Per-chunk partials, folded by one small
torch reduction; ``_finite_minmax_span`` is also the range step of the
many-tensor histogram (:mod:`eitp_kernels.triton.entropy`).
"""
from __future__ import annotations

import torch

from eitp_kernels import _layout
from eitp_kernels._triton import acc_tl, launch, tl, triton, triton_jit


@triton_jit
def _finite_minmax_span(x_ptr, begin, end, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Finite (min, max) of x[begin, end) as two ACC scalars; (+inf, -inf) when none is finite."""
    lo = tl.full([BLOCK], float("inf"), ACC)
    hi = tl.full([BLOCK], float("-inf"), ACC)
    for start in tl.range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        in_span = offsets < end
        v = tl.load(x_ptr + offsets, mask=in_span, other=0.0).to(ACC)
        keep = in_span & (v - v == 0)  # finite: inf - inf and nan - nan are nan
        lo = tl.minimum(lo, tl.where(keep, v, float("inf")))
        hi = tl.maximum(hi, tl.where(keep, v, float("-inf")))
    return tl.min(lo, axis=0), tl.max(hi, axis=0)


@triton_jit
def _finite_minmax_partials_kernel(
    x_ptr,  # (rows, row_length), contiguous, any float dtype
    lo_ptr,  # (rows, chunks) partial minima, accumulation dtype
    hi_ptr,  # (rows, chunks) partial maxima
    row_length,
    chunks,
    ACC: tl.constexpr,  # accumulation dtype: tl.float32 or tl.float64
    CHUNK: tl.constexpr,  # elements per program
    BLOCK: tl.constexpr,
):
    # One flat axis of rows x chunks: CUDA's grid axes 1 and 2 stop at 65535.
    pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    row = pid // chunks
    chunk = pid % chunks
    begin = chunk * CHUNK
    end = tl.minimum(begin + CHUNK, row_length)
    lo, hi = _finite_minmax_span(x_ptr + row * row_length, begin, end, ACC, BLOCK)
    tl.store(lo_ptr + row * chunks + chunk, lo)
    tl.store(hi_ptr + row * chunks + chunk, hi)


def finite_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), each (rows,), of a contiguous (rows, row_length) x."""
    rows, row_length = x.shape
    block, chunk = 1024, 16384
    chunks = max(1, triton.cdiv(row_length, chunk))
    acc = _layout.compute_dtype(x.dtype)
    lo = torch.empty((rows, chunks), dtype=acc, device=x.device)
    hi = torch.empty_like(lo)
    if rows > 0:
        launch(_finite_minmax_partials_kernel, (rows * chunks,), x, lo, hi, row_length, chunks,
               ACC=acc_tl(acc), CHUNK=chunk, BLOCK=block)
    return lo.amin(dim=1), hi.amax(dim=1)
