"""Triton kernels and launchers of int8 quantize, dequantize and fake-quant:
the ``triton`` backend of :mod:`eitp_kernels.ops.quant`, which validates,
dispatches and registers them as custom ops. Same arithmetic as
``eitp_kernels.reference`` (true division, round half to even).

Launchers, one per op ``eitp_triton::<name>`` with the arguments of its
compiled twin ``eitp::<name>`` (on the (rows, row_length) view in which each
row shares one scale): ``quantize_int8_rows``, ``fake_quant_int8_rows``,
``dequantize_int8_rows``, ``fake_quant_int8_rows_backward``.
"""
from __future__ import annotations

import torch

from eitp_kernels import _layout
from eitp_kernels._triton import (cdiv, div_constants, div_fast, div_rn_by_count, div_setup, exact_div, launch,
                                  next_power_of_2, tl, triton_jit)


@triton_jit
def _round_half_even(v):
    # floor + the exact fraction v - floor(v); ties go to the even neighbour.
    # Infinities keep their value (the fraction is NaN, both tests fail).
    f = tl.floor(v)
    d = v - f
    half = f * 0.5
    odd = tl.floor(half) != half
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)


@triton_jit
def _to_acc(v, IS_F64: tl.constexpr):
    if IS_F64:
        out = v.to(tl.float64)
    else:
        out = v.to(tl.float32)
    return out


@triton_jit
def _cast_rne(v, DTYPE: tl.constexpr):
    # Round-to-nearest-even downcast. bfloat16 by hand: the interpreter
    # truncates float32 -> bfloat16 (GPUs round to nearest even, as here).
    if DTYPE == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(nan, (bits >> 16) | 0x40, rounded)
        out = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = v.to(DTYPE)
    return out


_FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
# Rows of _TILE_MIN_ROW < length <= _TILE_MAX_ROW elements are quantized by _quant_row_tile_kernel,
# the whole row in registers (_TILE_PER_THREAD elements a thread, up to 16 warps): read once
# instead of twice. sm_90 (python -m eitp_kernels.bench.cost_model): 4096 fp32 a row (4 warps),
# 56 registers, quantize 24.5 instructions per element (budget 42.6), fake-quant 23.0 (66.9), all
# loads issued before the first use; 16384 a row (16 warps), 62 registers (32 a thread: 64 would
# take 108). Shorter rows spread the once-per-row scale over too few elements a thread: rows of
# 128 (4 a thread) issue 223 instructions a thread for quantize, over 0.8 of the budget (181.7),
# so rows up to 256 keep _quant_rows_kernel (its second read of a row comes from L1).
_TILE_MIN_ROW = 256
_TILE_MAX_ROW = 16384
_TILE_PER_THREAD = 32


@triton_jit
def _row_scale_params(lo, hi, SYMMETRIC: tl.constexpr):
    # The row's float32 scale and zero point (as float32) from its reduction
    # in the accumulation dtype (lo stays 0 for symmetric rows):
    # _layout.int8_params_from_range step for step. float32 arithmetic
    # unless the range is too wide for it, then float64 with the scale
    # saturated at the largest float32.
    lo64 = lo.to(tl.float64)
    hi64 = hi.to(tl.float64)
    fits = (lo64 >= -_FLOAT32_MAX) & (hi64 <= _FLOAT32_MAX)
    mn = tl.where(fits, lo64, 0.0).to(tl.float32)
    mx = tl.where(fits, hi64, 0.0).to(tl.float32)
    if SYMMETRIC:
        steps = 127.0
    else:
        steps = 255.0
    s = tl.math.div_rn(mx - mn, tl.full([], steps, tl.float32))
    fast = fits & (s - s == 0)
    wide_s = tl.minimum(exact_div(hi64 - lo64, tl.full([], steps, tl.float64), True), _FLOAT32_MAX).to(tl.float32)
    s = tl.where(fast, tl.where(s == 0.0, 1.0, s), wide_s)
    if SYMMETRIC:
        zpf = tl.full([], 0.0, tl.float32)
    else:
        fast_zp = -128.0 - _round_half_even(tl.math.div_rn(mn, s))
        wide_zp = -128.0 - _round_half_even(exact_div(lo64, s.to(tl.float64), True))
        wide_zp = tl.minimum(tl.maximum(wide_zp, -128.0), 127.0).to(tl.float32)
        zpf = tl.where(fast, fast_zp, wide_zp)
    return s, zpf


@triton_jit
def _row_part(chunks):
    """(row, part) of this program: part ``pid % chunks`` of row ``pid // chunks``
    (one flat axis of rows x chunks: CUDA's grid axes 1 and 2 stop at 65535)."""
    pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    return pid // chunks, pid % chunks


@triton_jit
def _span_range(x_ptr, begin, end, SYMMETRIC: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    """(min(finite, 0), max(finite, 0)) of x[begin, end) in the accumulation dtype;
    (0, absmax) when SYMMETRIC. Non-finite values count as 0 (neutral)."""
    lo = _to_acc(tl.zeros([BLOCK], tl.float32), IS_F64)
    hi = _to_acc(tl.zeros([BLOCK], tl.float32), IS_F64)
    for start in tl.range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        v = _to_acc(tl.load(x_ptr + offsets, mask=offsets < end, other=0.0), IS_F64)
        f = tl.where(v - v == 0, v, 0.0)
        if SYMMETRIC:
            hi = tl.maximum(hi, tl.abs(f))
        else:
            lo = tl.minimum(lo, f)
            hi = tl.maximum(hi, f)
    return tl.min(lo, axis=0), tl.max(hi, axis=0)


@triton_jit
def _unclamped_code(v, sa, za, IS_F64: tl.constexpr):
    """rint(v / scale) + zero point in the accumulation dtype (NaN -> the zero point), before the clamp."""
    r = _round_half_even(exact_div(v, sa, IS_F64))
    return tl.where(v != v, 0.0, r) + za


@triton_jit
def _scale_divisor(sa, IS_F64: tl.constexpr):
    """Once per program: _triton.div_setup of a float32 scale, and 256 * |dn|, the bound the
    scaled values are clamped to ((0, 1, 1, 0) unused for float64)."""
    if IS_F64:
        s, dn, r = 0.0, 1.0, 1.0
    else:
        s, dn, r = div_setup(sa)
    return s, dn, r, 256.0 * tl.abs(dn)


@triton_jit
def _fast_unclamped_code(v, za, s, dn, r, bound):
    """_unclamped_code for float32 v without a division: v * s clamped to +-256 |dn| (exact;
    beyond +-256 the code clamps the same, so the clamp changes no code and no backward mask,
    and infinite v gets +-256), div_fast (_triton), then round half to even by adding and
    subtracting 1.5 * 2^23 (exact for |q| <= 256)."""
    q = div_fast(tl.minimum(tl.maximum(v * s, -bound), bound), dn, r)
    rounded = (q + 12582912.0) - 12582912.0
    return tl.where(v != v, 0.0, rounded) + za


@triton_jit
def _code(v, sa, za, s, dn, r, bound, IS_F64: tl.constexpr):
    """rint(v / scale) + zero point before the clamp: the true division for float64, else the
    division by the program's reciprocal (the same codes)."""
    if IS_F64:
        out = _unclamped_code(v, sa, za, IS_F64)
    else:
        out = _fast_unclamped_code(v, za, s, dn, r, bound)
    return out


@triton_jit
def _quant_rows_kernel(
    x_ptr,  # (rows, row_length) contiguous, float
    q_ptr,  # (rows, row_length) int8 codes (written unless FAKE)
    out_ptr,  # (rows, row_length) in x's dtype (written if FAKE)
    scale_ptr,  # (rows,) float32: read if STATIC else written
    zp_ptr,  # (rows,) int32: read if STATIC else written (0 when symmetric)
    row_length,
    chunk,  # elements per program along the row (a multiple of BLOCK); row_length when not STATIC
    chunks,  # programs per row (1 when not STATIC): program p does part p % chunks of row p // chunks
    STATIC: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    FAKE: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, part = _row_part(chunks)
    row_x = x_ptr + row * row_length
    if STATIC:
        s = tl.load(scale_ptr + row)
        zpf = tl.load(zp_ptr + row).to(tl.float32)
    else:
        # The row's scale: a reduction held in registers, then the same row again.
        lo, hi = _span_range(row_x, 0, row_length, SYMMETRIC, IS_F64, BLOCK)
        s, zpf = _row_scale_params(lo, hi, SYMMETRIC)
        tl.store(scale_ptr + row, s)
        tl.store(zp_ptr + row, zpf.to(tl.int32))
    sa = _to_acc(s, IS_F64)
    za = _to_acc(zpf, IS_F64)
    ds, dn, dr, bound = _scale_divisor(s, IS_F64)
    qmin = -127.0 if SYMMETRIC else -128.0
    begin = part * chunk
    for start in tl.range(0, chunk, BLOCK):
        offsets = begin + start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        xv = tl.load(row_x + offsets, mask=mask, other=0.0)
        v = _to_acc(xv, IS_F64)
        r = _code(v, sa, za, ds, dn, dr, bound, IS_F64)
        r = tl.minimum(tl.maximum(r, qmin), 127.0)
        if FAKE:
            d = _cast_rne((r - za) * sa, xv.dtype)
            tl.store(out_ptr + row * row_length + offsets, tl.where(v != v, xv, d), mask=mask)
        else:
            tl.store(q_ptr + row * row_length + offsets, r.to(tl.int8), mask=mask)


@triton_jit
def _row_part_scale(scale_ptr, zp_ptr, chunks, IS_F64: tl.constexpr):
    """(row, part) of this program (:func:`_row_part`) and the row's scale and
    zero point in the accumulation dtype."""
    row, part = _row_part(chunks)
    return row, part, _to_acc(tl.load(scale_ptr + row), IS_F64), _to_acc(tl.load(zp_ptr + row), IS_F64)


@triton_jit
def _runs_of_4(BLOCK: tl.constexpr):
    """tl.arange(0, BLOCK) seen by the compiler as runs of 4 contiguous offsets."""
    i = tl.arange(0, BLOCK)
    return (i // 4) * 4 + i % 4


@triton_jit
def _dequant_rows_kernel(
    q_ptr,  # (rows, row_length) int8
    scale_ptr,  # (rows,) float32
    zp_ptr,  # (rows,) int32 (zeros when symmetric)
    out_ptr,  # (rows, row_length) float, dtype of the output
    row_length,
    chunk,
    chunks,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, part, sa, za = _row_part_scale(scale_ptr, zp_ptr, chunks, IS_F64)
    for start in tl.range(0, chunk, BLOCK):
        # runs of 4: codes load 4 to a thread (32 bits) in the layout of the 4 floats each
        # thread stores (128 bits), so no exchange through shared memory (no barriers)
        offsets = part * chunk + start + _runs_of_4(BLOCK)
        mask = offsets < row_length
        q = _to_acc(tl.load(q_ptr + row * row_length + offsets, mask=mask, other=0), IS_F64)
        out = (q - za) * sa
        tl.store(out_ptr + row * row_length + offsets, _cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


@triton_jit
def _fake_quant_backward_kernel(
    grad_ptr,  # (rows, row_length), x's dtype
    x_ptr,  # (rows, row_length)
    scale_ptr,  # (rows,) float32
    zp_ptr,  # (rows,) int32 (zeros when symmetric)
    grad_x_ptr,  # (rows, row_length)
    row_length,
    chunk,
    chunks,
    SYMMETRIC: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, part, sa, za = _row_part_scale(scale_ptr, zp_ptr, chunks, IS_F64)
    ds, dn, dr, bound = _scale_divisor(tl.load(scale_ptr + row), IS_F64)
    qmin = -127.0 if SYMMETRIC else -128.0
    for start in tl.range(0, chunk, BLOCK):
        offsets = part * chunk + start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        v = _to_acc(tl.load(x_ptr + row * row_length + offsets, mask=mask, other=0.0), IS_F64)
        g = tl.load(grad_ptr + row * row_length + offsets, mask=mask, other=0.0)
        r = _code(v, sa, za, ds, dn, dr, bound, IS_F64)
        keep = (v - v == 0) & (r >= qmin) & (r <= 127.0)
        tl.store(grad_x_ptr + row * row_length + offsets, tl.where(keep, g, 0.0).to(g.dtype), mask=mask)


@triton_jit
def _range_partials_kernel(
    x_ptr,  # (rows, row_length) contiguous
    lo_ptr,  # (rows, chunks) partial min(finite, 0), accumulation dtype
    hi_ptr,  # (rows, chunks) partial max(finite, 0) (absmax when SYMMETRIC)
    row_length,
    chunks,
    chunk,
    SYMMETRIC: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, part = _row_part(chunks)
    begin = part * chunk
    lo, hi = _span_range(x_ptr + row * row_length, begin, tl.minimum(begin + chunk, row_length), SYMMETRIC, IS_F64,
                         BLOCK)
    tl.store(lo_ptr + row * chunks + part, lo)
    tl.store(hi_ptr + row * chunks + part, hi)


@triton_jit
def _params_from_partials_kernel(
    lo_ptr,  # (rows, chunks) partial min(finite, 0), accumulation dtype
    hi_ptr,  # (rows, chunks) partial max(finite, 0) (absmax when SYMMETRIC)
    scale_ptr,  # (rows,) float32, written
    zp_ptr,  # (rows,) int32, written (0 when symmetric)
    chunks,
    SYMMETRIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per row: fold the row's partials, then its scale and zero
    # point on the device (_layout.int8_params_from_range, as the kernel
    # that reduces a row itself computes them).
    row = tl.program_id(0).to(tl.int64)
    lo = tl.load(lo_ptr + row * chunks)
    hi = tl.load(hi_ptr + row * chunks)
    for start in tl.range(0, chunks, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < chunks
        lo = tl.minimum(lo, tl.min(tl.load(lo_ptr + row * chunks + offsets, mask=mask, other=0.0), axis=0))
        hi = tl.maximum(hi, tl.max(tl.load(hi_ptr + row * chunks + offsets, mask=mask, other=0.0), axis=0))
    s, zpf = _row_scale_params(lo, hi, SYMMETRIC)
    tl.store(scale_ptr + row, s)
    tl.store(zp_ptr + row, zpf.to(tl.int32))


@triton_jit
def _row_scale_params_fp32(lo, hi, div_s, div_dn, div_r, SYMMETRIC: tl.constexpr):
    """_row_scale_params for a float32 range (input not float64), with no float64 arithmetic and no
    division call for symmetric rows: the scale by div_rn_by_count (the true division by 127 or
    255: (div_s, div_dn, div_r) = div_constants of it), the zero point's quotient by the scale's
    own reciprocal (div_setup). Affine rows whose max - min overflows float32 keep the float64
    path (_row_scale_params). Returns the scale, the zero point (float32) and the scale's
    _scale_divisor."""
    if SYMMETRIC:
        s = div_rn_by_count(hi, 127.0, div_s, div_dn, div_r)  # hi <= the largest float32: finite
        s = tl.where(s == 0.0, 1.0, s)
        ds, dn, dr, bound = _scale_divisor(s, False)
        zpf = tl.full([], 0.0, tl.float32)
    else:
        s = div_rn_by_count(hi - lo, 255.0, div_s, div_dn, div_r)
        fast = s - s == 0
        wide_s, wide_zp = _row_scale_params(lo, hi, SYMMETRIC)
        s = tl.where(fast, tl.where(s == 0.0, 1.0, s), wide_s)
        ds, dn, dr, bound = _scale_divisor(s, False)
        # lo / s by the reciprocal: |lo / s| <= 255, and where lo * ds is below div_fast's range
        # both quotients are below 2^-4 and round to 0
        zpf = tl.where(fast, -128.0 - _round_half_even(div_fast(lo * ds, dn, dr)), wide_zp)
    return s, zpf, ds, dn, dr, bound


@triton_jit
def _quant_row_tile_kernel(
    x_ptr,  # (rows, row_length) contiguous, float
    q_ptr,  # (rows, row_length) int8 codes (written unless FAKE)
    out_ptr,  # (rows, row_length) in x's dtype (written if FAKE)
    scale_ptr,  # (rows,) float32, written
    zp_ptr,  # (rows,) int32, written (0 when symmetric)
    row_length,  # <= BLOCK
    div_s,  # _triton.div_constants(127 if SYMMETRIC else 255)
    div_dn,
    div_r,
    SYMMETRIC: tl.constexpr,
    FAKE: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,  # a power of two >= row_length: the whole row in registers
):
    # One program per row, no loop: the row is loaded once (every load issued before the
    # first use), reduced to its range and scale in registers, then coded from the same
    # registers. The _quant_rows_kernel arithmetic, step for step.
    row = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    offsets = tl.arange(0, BLOCK)
    mask = offsets < row_length
    xv = tl.load(x_ptr + row * row_length + offsets, mask=mask, other=0.0)
    v = _to_acc(xv, IS_F64)
    f = tl.where(v - v == 0, v, 0.0)  # non-finite values and the padding count as 0 (neutral)
    if SYMMETRIC:
        lo = tl.zeros([], v.dtype)
        hi = tl.max(tl.abs(f), axis=0)
    else:  # min(finite, 0), max(finite, 0): the range widened to include 0
        lo = tl.minimum(tl.min(f, axis=0), 0.0)
        hi = tl.maximum(tl.max(f, axis=0), 0.0)
    if IS_F64:
        s, zpf = _row_scale_params(lo, hi, SYMMETRIC)
        ds, dn, dr, bound = _scale_divisor(s, IS_F64)
    else:
        s, zpf, ds, dn, dr, bound = _row_scale_params_fp32(lo, hi, div_s, div_dn, div_r, SYMMETRIC)
    tl.store(scale_ptr + row, s)
    tl.store(zp_ptr + row, zpf.to(tl.int32))
    sa = _to_acc(s, IS_F64)
    za = _to_acc(zpf, IS_F64)
    qmin = -127.0 if SYMMETRIC else -128.0
    r = tl.minimum(tl.maximum(_code(v, sa, za, ds, dn, dr, bound, IS_F64), qmin), 127.0)
    if FAKE:
        d = _cast_rne((r - za) * sa, xv.dtype)
        tl.store(out_ptr + row * row_length + offsets, tl.where(v != v, xv, d), mask=mask)
    else:
        tl.store(q_ptr + row * row_length + offsets, r.to(tl.int8), mask=mask)


def _blocks(row_length: int, max_block: int = 1024) -> tuple[int, int, int]:
    """(BLOCK, chunk, chunks) for a row of row_length elements: chunks of up to 16 blocks, no
    more blocks than the row has."""
    block = min(max_block, max(16, next_power_of_2(max(row_length, 1))))
    chunk = block * min(16, max(1, cdiv(row_length, block)))
    return block, chunk, max(1, cdiv(row_length, chunk))


def _tile_warps(tile: int) -> int:
    """Warps for a row of `tile` elements held in registers: _TILE_PER_THREAD a thread, 1 to 16 warps."""
    return max(1, min(16, tile // (32 * _TILE_PER_THREAD)))


def _warps(block: int) -> int:
    """Warps for blocks of `block` elements: at least 4 elements (16 bytes of fp32) a thread."""
    return max(1, min(4, block // 128))


def quantize_int8_rows(x: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None,
                       symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 codes, scale, zero point) of each row."""
    return _quantize_rows(x, scale, zero_point, symmetric, fake=False)


def fake_quant_int8_rows(x: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None,
                         symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized codes in x's dtype, scale, zero point) of each row."""
    return _quantize_rows(x, scale, zero_point, symmetric, fake=True)


def _quantize_rows(x, scale, zero_point, symmetric, fake):
    x = x.contiguous()
    rows, row_length = x.shape
    is_fp64 = x.dtype == torch.float64
    block, chunk, chunks = _blocks(row_length)
    result = torch.empty_like(x) if fake else torch.empty(x.shape, dtype=torch.int8, device=x.device)
    static = scale is not None
    if static:
        s = scale.to(torch.float32).contiguous().clone()
        zp = (torch.zeros_like(s, dtype=torch.int32) if symmetric else zero_point.to(torch.int32).contiguous().clone())
    elif _TILE_MIN_ROW < row_length <= _TILE_MAX_ROW:
        # The whole row in registers: read once, one launch, no loop.
        s = torch.empty((rows,), dtype=torch.float32, device=x.device)
        zp = torch.empty((rows,), dtype=torch.int32, device=x.device)
        if rows > 0:
            tile = max(16, next_power_of_2(row_length))
            launch(_quant_row_tile_kernel, (rows,), x, result, result, s, zp, row_length,
                   *div_constants(127.0 if symmetric else 255.0), SYMMETRIC=symmetric, FAKE=fake, IS_F64=is_fp64,
                   BLOCK=tile, num_warps=_tile_warps(tile))
        return result, s, zp
    elif chunks > 1 and rows < 64:
        # Few long rows (per tensor): one program per row would leave most of the
        # GPU idle, so the range comes from chunk partials, the scale from one
        # small kernel that folds them, then a static pass: three launches.
        acc = _layout.compute_dtype(x.dtype)
        lo = torch.empty((rows, chunks), dtype=acc, device=x.device)
        hi = torch.empty_like(lo)
        s = torch.empty((rows,), dtype=torch.float32, device=x.device)
        zp = torch.empty((rows,), dtype=torch.int32, device=x.device)
        if rows > 0:
            launch(_range_partials_kernel, (rows * chunks,), x, lo, hi, row_length, chunks, chunk,
                   SYMMETRIC=symmetric, IS_F64=is_fp64, BLOCK=block)
            launch(_params_from_partials_kernel, (rows,), lo, hi, s, zp, chunks, SYMMETRIC=symmetric,
                   BLOCK=min(1024, next_power_of_2(chunks)))
        static = True
    else:
        s = torch.empty((rows,), dtype=torch.float32, device=x.device)
        zp = torch.empty((rows,), dtype=torch.int32, device=x.device)
    if rows > 0:
        parts = chunks if static else 1
        launch(_quant_rows_kernel, (rows * parts,), x, result, result, s, zp, row_length,
               chunk if static else max(row_length, 1), parts,
               STATIC=static, SYMMETRIC=symmetric, FAKE=fake, IS_F64=is_fp64, BLOCK=block, num_warps=_warps(block))
    return result, s, zp


def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                         dtype: torch.dtype) -> torch.Tensor:
    q = q.contiguous()
    rows, row_length = q.shape
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    zp = zero_point if zero_point is not None else torch.zeros_like(scale, dtype=torch.int32)
    # 4096 codes a block: 32 a thread, 8 loads of 4 in flight
    block, chunk, chunks = _blocks(row_length, max_block=4096)
    if q.numel() > 0:
        launch(_dequant_rows_kernel, (rows * chunks,), q, scale.contiguous(), zp.contiguous(), out, row_length,
               chunk, chunks, IS_F64=dtype == torch.float64, BLOCK=block)
    return out


def fake_quant_int8_rows_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                                  zero_point: torch.Tensor | None, symmetric: bool) -> torch.Tensor:
    x = x.contiguous()
    grad = grad.to(x.dtype).contiguous()
    rows, row_length = x.shape
    grad_x = torch.empty_like(x)
    zp = zero_point if zero_point is not None else torch.zeros_like(scale, dtype=torch.int32)
    block, chunk, chunks = _blocks(row_length)
    if x.numel() > 0:
        launch(_fake_quant_backward_kernel, (rows * chunks,), grad, x, scale.contiguous(), zp.contiguous(), grad_x,
               row_length, chunk, chunks, SYMMETRIC=symmetric, IS_F64=x.dtype == torch.float64,
               BLOCK=block)
    return grad_x
