"""Triton kernels and launcher of finite min/max: the ``triton`` backend of
:mod:`eitp_kernels.ops.finite_minmax` (launcher ``finite_minmax``, the op
``eitp_triton::finite_minmax``). Per-chunk partials, folded by one small
kernel (none when a row is one chunk: two launches at most); ``_finite_minmax_span`` is also the range step of the
many-tensor histogram (:mod:`eitp_kernels.triton.entropy`).
"""
from __future__ import annotations

import torch

from eitp_kernels import _layout
from eitp_kernels._triton import acc_tl, cdiv, launch, next_power_of_2, tl, triton_jit


@triton_jit
def _finite_update(lo, hi, v):
    """lo, hi folded with the finite values of v (|v| < inf: NaN and +-inf are left out)."""
    keep = tl.abs(v) < float("inf")
    return tl.minimum(lo, tl.where(keep, v, float("inf"))), tl.maximum(hi, tl.where(keep, v, float("-inf")))


@triton_jit
def _finite_minmax_span(x_ptr, begin, end, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Finite (min, max) of x[begin, end) as two ACC scalars; (+inf, -inf) when none is finite.

    Whole blocks load without a mask (nothing to initialise, so every load of a block issues
    before the first is used); the partial block at the end loads NaN past the span."""
    lo = tl.full([BLOCK], float("inf"), ACC)
    hi = tl.full([BLOCK], float("-inf"), ACC)
    whole_end = begin + (end - begin) // BLOCK * BLOCK
    for start in tl.range(begin, whole_end, BLOCK):
        lo, hi = _finite_update(lo, hi, tl.load(x_ptr + start + tl.arange(0, BLOCK)).to(ACC))
    offsets = whole_end + tl.arange(0, BLOCK)
    lo, hi = _finite_update(lo, hi, tl.load(x_ptr + offsets, mask=offsets < end, other=float("nan")).to(ACC))
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


@triton_jit
def _finite_minmax_fold_kernel(
    part_lo_ptr,  # (rows, chunks) partial minima, accumulation dtype
    part_hi_ptr,  # (rows, chunks) partial maxima
    lo_ptr,  # (rows,) out
    hi_ptr,  # (rows,) out
    chunks,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per row: min/max of its partials (exact, in any order).
    row = tl.program_id(0).to(tl.int64)
    lo = tl.full([BLOCK], float("inf"), ACC)
    hi = tl.full([BLOCK], float("-inf"), ACC)
    for start in tl.range(0, chunks, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < chunks
        lo = tl.minimum(lo, tl.load(part_lo_ptr + row * chunks + offsets, mask=mask, other=float("inf")))
        hi = tl.maximum(hi, tl.load(part_hi_ptr + row * chunks + offsets, mask=mask, other=float("-inf")))
    tl.store(lo_ptr + row, tl.min(lo, axis=0))
    tl.store(hi_ptr + row, tl.max(hi, axis=0))


def finite_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), each (rows,), of a contiguous (rows, row_length) x."""
    rows, row_length = x.shape
    # 2048 elements a block: 16 a thread, all loads of a block issued before the first is used
    block, chunk = 2048, 16384
    chunks = max(1, cdiv(row_length, chunk))
    acc = _layout.compute_dtype(x.dtype)
    lo = torch.empty((rows, chunks), dtype=acc, device=x.device)
    hi = torch.empty_like(lo)
    if rows > 0:
        launch(_finite_minmax_partials_kernel, (rows * chunks,), x, lo, hi, row_length, chunks,
               ACC=acc_tl(acc), CHUNK=chunk, BLOCK=block)
    if chunks == 1:
        return lo.reshape(rows), hi.reshape(rows)
    row_lo = torch.empty((rows,), dtype=acc, device=x.device)
    row_hi = torch.empty_like(row_lo)
    if rows > 0:
        launch(_finite_minmax_fold_kernel, (rows,), lo, hi, row_lo, row_hi, chunks, ACC=acc_tl(acc),
               BLOCK=min(1024, next_power_of_2(chunks)))
    return row_lo, row_hi
