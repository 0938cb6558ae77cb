"""Triton kernels and launchers of Int8Linear's GPU paths: the ``triton``
backend of :mod:`eitp_kernels.ops.int8_linear` (launchers
``int8_weight_only_linear`` and ``int8_linear_rescale``, the ops
``eitp_triton::<launcher>``).

Weight-only int8 linear:

    out[i, j] = (sum_k x[i, k] * float(w[j, k])) * scale[j] + bias[j]

for a few rows (m <= 16): one program per BLOCK_N output columns and all m
rows (``_blocks``); it reads its (BLOCK_N, k) slab of int8 codes once, converts each
BLOCK_K tile to float32 in registers, multiplies it by the (m, BLOCK_K)
activation tile (loaded in x's dtype, converted to float32) as a broadcast
product summed over k, and applies the per-channel scale and the bias in the
epilogue. Bytes: n * k (codes) + m * k * |x| + 4 n (scales) + n |bias| + m n |out|
(an fp32 GEMV reads 4 n k: the codes are 4x fewer).

Rescale (the int8 path's epilogue for more rows, after torch._int_mm):

    out[i, j] = float32(acc[i, j] - zero_point * code_sums[j]) * row_scale[i] * weight_scale[j] + bias[j]

one elementwise pass over the int32 product (4 bytes read, |out| written per
element) instead of a conversion and three in-place passes.

Static cost model at 4096 x 4096 (``python -m eitp_kernels.bench.cost_model
--only triton --kernel "_weight_only|_rescale"``, sm_90; tests/test_cost_model.py
holds both kernels to its rules, an element being one weight code for the
weight-only product and one int32 of the product for the rescale): the weight-only hot
loop issues 3.0 instructions per loaded element at 1 row and 4.3 at 16 rows
(budget 9.7), both bounded by reading the codes: 4.9 us predicted on an H200;
the rescale 4.4 per element (budget 42.8). Not yet timed on a GPU.
"""
from __future__ import annotations

import torch

from eitp_kernels._triton import cdiv, launch, next_power_of_2, tl, triton_jit

MAX_ROWS = 16
# Elements of the (BLOCK_M, BLOCK_N, BLOCK_K) product each program holds per step (32 per thread at 4 warps).
_PRODUCT_BLOCK = 4096


@triton_jit
def _weight_only_kernel(
    x_ptr,  # (m, k) activations, contiguous, fp32/bf16/fp16
    w_ptr,  # (n, k) int8 codes, contiguous
    scale_ptr,  # (n,) float32 per-output-channel scales
    bias_ptr,  # (n,) bias in x's dtype (unused without HAS_BIAS)
    out_ptr,  # (m, n) output in x's dtype
    m,
    n,
    k,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,  # power of two >= m
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    col_in = cols < n
    row_in = rows < m
    # Products summed per lane across the loop, reduced over k once at the end (a reduction per
    # step would cost a shared-memory round and barriers per BLOCK_K codes).
    partial = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in tl.range(0, k, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_in = ks < k
        x = tl.load(x_ptr + rows[:, None] * k + ks[None, :], mask=row_in[:, None] & k_in[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * k + ks[None, :], mask=col_in[:, None] & k_in[None, :], other=0)
        partial += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    acc = tl.sum(partial, axis=2)
    scale = tl.load(scale_ptr + cols, mask=col_in, other=0.0)
    y = acc * scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_in, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * n + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=row_in[:, None] & col_in[None, :])


def _blocks(m: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): BLOCK_N 8 output columns per program (n / 8
    programs: 512 at n = 4096, several per multiprocessor) and BLOCK_K so that
    BLOCK_M * BLOCK_N * BLOCK_K = _PRODUCT_BLOCK (512 codes per weight row and
    step for one row, 32 for 16 rows)."""
    block_m = next_power_of_2(max(m, 1))
    block_n = 8
    return block_m, block_n, _PRODUCT_BLOCK // (block_m * block_n)


def int8_weight_only_linear(x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                            bias: torch.Tensor | None) -> torch.Tensor:
    """(m, n) in x's dtype: x (m, k) (m <= 16) times the dequantized (n, k) weight, plus bias."""
    x, weight_int8 = x.contiguous(), weight_int8.contiguous()
    m, k = x.shape
    n = weight_int8.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.copy_(bias.expand(m, n)) if bias is not None else out.zero_()
    scale = weight_scale.to(torch.float32).contiguous()
    has_bias = bias is not None
    bias_arg = bias.contiguous() if has_bias else scale
    block_m, block_n, block_k = _blocks(m)
    launch(_weight_only_kernel, (cdiv(n, block_n),), x, weight_int8, scale, bias_arg, out, m, n, k,
           HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


@triton_jit
def _rescale_kernel(
    acc_ptr,  # (m, n) int32 product of the codes, contiguous
    row_scale_ptr,  # (m,) float32 activation scales (PER_ROW), else (1,)
    weight_scale_ptr,  # (n,) float32 per-output-channel scales
    bias_ptr,  # (n,) bias (unused without HAS_BIAS)
    code_sums_ptr,  # (n,) int32 sum_k weight_int8[j, k] (unused unless AFFINE)
    zero_point_ptr,  # (1,) int32 activation zero point (unused unless AFFINE)
    out_ptr,  # (m, n) output in the layer's dtype
    n,
    col_blocks,  # cdiv(n, BLOCK)
    PER_ROW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    AFFINE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per (row, BLOCK columns): the row is a scalar (no per-element division).
    pid = tl.program_id(0)
    row = pid // col_blocks
    cols = (pid % col_blocks) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    offsets = row.to(tl.int64) * n + cols
    acc = tl.load(acc_ptr + offsets, mask=inside, other=0)
    if AFFINE:
        acc -= tl.load(zero_point_ptr) * tl.load(code_sums_ptr + cols, mask=inside, other=0)
    row_scale = tl.load(row_scale_ptr + row) if PER_ROW else tl.load(row_scale_ptr)
    y = acc.to(tl.float32) * row_scale * tl.load(weight_scale_ptr + cols, mask=inside, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=inside)


def int8_linear_rescale(acc: torch.Tensor, row_scale: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor | None, code_sums: torch.Tensor | None, zero_point: torch.Tensor | None,
                        dtype: torch.dtype) -> torch.Tensor:
    """(m, n) in ``dtype``: float32(acc - zero_point * code_sums) * row_scale * weight_scale + bias, one pass."""
    acc = acc.contiguous()
    m, n = acc.shape
    out = torch.empty((m, n), dtype=dtype, device=acc.device)
    if acc.numel() == 0:
        return out
    row_scale, weight_scale = row_scale.reshape(-1).contiguous(), weight_scale.contiguous()
    affine = zero_point is not None
    has_bias = bias is not None
    block = min(1024, next_power_of_2(n))
    col_blocks = cdiv(n, block)
    launch(_rescale_kernel, (m * col_blocks,), acc, row_scale, weight_scale,
           bias.contiguous() if has_bias else weight_scale, code_sums.contiguous() if affine else acc,
           zero_point.reshape(1).contiguous() if affine else acc, out, n, col_blocks,
           PER_ROW=row_scale.numel() == m and m > 1, HAS_BIAS=has_bias, AFFINE=affine, BLOCK=block)
    return out
