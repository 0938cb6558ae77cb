"""int8 quantize, dequantize and fake-quant (docs/design.md §2.3).

Granularity: one scale per tensor, per channel (any ``axis``) or per group of
``group_size`` consecutive elements along the last dim. Every backend works on
a (rows, row_length) view in which each row shares one scale (per tensor: one
row; per channel: the channel axis moved to the front, a copy unless axis is
0; per group: rows of group_size):

    symmetric: scale = float32(absmax) / 127,  q = clamp(rint(x / scale), -127, 127)
    affine:    mn = min(finite min, 0), mx = max(finite max, 0) (float32),
               scale = (mx - mn) / 255,  zero_point = int32(-128 - rint(mn / scale)),
               q = clamp(rint(x / scale) + zero_point, -128, 127)
    dequantize: x = (q - zero_point) * scale

absmax / min / max are over finite values only; a scale of 0 (all-zero row)
becomes 1.0; a range too wide for float32 arithmetic (affine mx - mn beyond
3.4e38, or fp64 values beyond float32) is computed in float64 with the scale
saturated at the largest float32 (reference.int8_params_from_range).
``x / scale`` is a true division in float32 (float64 for float64 input),
rint rounds half to even: codes are bit-identical to
``eitp_kernels.reference``. Units: scale is in units of x per code step;
codes and zero points are dimensionless.

NaN and Inf: +Inf quantizes to the max code (127), -Inf to the min code
(-127 symmetric, -128 affine), NaN to the code of 0 (0, or the zero point).
fake-quant returns NaN for NaN inputs and the extreme codes times scale for
+-Inf. Backward (straight-through estimator): the incoming gradient where x
is finite and its unclamped code lies in [qmin, qmax], 0 elsewhere (clipping
needs a static scale, or an infinite input). No gradient for scale.

Static quantization (``scale`` given, plus ``zero_point`` for affine): the
scale is used as given. Its positivity can only be checked by looking at its
values, so it is checked for Python numbers and for CPU tensors (no device
sync; skipped while torch.compile traces), never for CUDA tensors: a
non-positive or non-finite CUDA scale gives what the reference gives,
clamp(rint(x / scale)) (+-Inf and NaN quotients clamp to the extreme codes
or, for NaN, to an unspecified code).

Bytes moved per element (s = input element size, 2/4/8 bytes), per call:
    quantize, per channel / group:  s read + 1 written (scale reduced in cache / registers)
    quantize, per tensor:           2s read + 1 written (reduction pass, then quantization)
    fake-quant:                     as quantize with s written instead of 1
    dequantize:                     1 read + s' written (s' = output element size)
    fake-quant backward:            2s read (grad, x) + s written
plus (rows,) scales and zero points. Channel granularity with axis != 0 first
copies x into the (channel, rest) layout (one more s read + s written).

Compiled ops (cpp / cuda backends): ``torch.ops.eitp.quantize_int8_rows``,
``dequantize_int8_rows``, ``fake_quant_int8_rows`` and
``fake_quant_int8_rows_backward``; Triton ops (triton backend, CUDA tensors or
CPU tensors under TRITON_INTERPRET=1) are the same with a ``triton_`` prefix.
"""
from __future__ import annotations

import math
import numbers

import torch

from eitp_kernels import _backends, _extension, _validation, reference
from eitp_kernels._triton import launch, tl, triton, triton_jit

OP_QUANTIZE = "quantize_int8"
OP_DEQUANTIZE = "dequantize_int8"
OP_FAKE_QUANT = "fake_quant_int8"
GRANULARITIES = ("tensor", "channel", "group")

# Backends per device type, best first.
IMPLEMENTED = {"cpu": ("cpp", "triton", "reference"), "cuda": ("cuda", "triton", "reference")}


# --------------------------------------------------------------------------
# Validation (shapes, dtypes and Python values only: no device sync)
# --------------------------------------------------------------------------


def _check_layout(op: str, name: str, x: torch.Tensor, granularity, axis, group_size):
    """Normalized (granularity, axis, group_size, scale shape) for tensor ``x``."""
    granularity = _validation.check_choice(op, "granularity", granularity, GRANULARITIES)
    axis = _validation.check_int(op, "axis", axis)
    group_size = _validation.check_int(op, "group_size", group_size, minimum=1)
    if granularity == "channel":
        if x.dim() == 0:
            raise ValueError(f"{op}: granularity='channel' needs {name} with at least 1 dimension, got a 0-d tensor")
        axis = _validation.check_dim(op, "axis", axis, x.dim())
    elif granularity == "group":
        if x.dim() == 0:
            raise ValueError(f"{op}: granularity='group' needs {name} with at least 1 dimension, got a 0-d tensor")
        group_size = _validation.check_group_size(op, group_size, x.shape[-1])
    sshape = reference._scale_shape(x.shape, granularity, axis, group_size)
    return granularity, axis, group_size, sshape


def _check_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")
    return value


def _values_readable(t: torch.Tensor) -> bool:
    """Whether looking at t's values costs no device sync and no graph break."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _as_per_row(op: str, name: str, value, sshape, device, *, integer: bool, check_positive: bool = False):
    """A Python number or tensor with prod(sshape) elements -> a flat (rows,) tensor
    (float32 scale or int32 zero point) on ``device``."""
    rows = math.prod(sshape)
    if isinstance(value, bool) or not isinstance(value, (torch.Tensor, numbers.Real)):
        kind = "an int" if integer else "a float"
        raise TypeError(f"{op}: {name} must be {kind} or a tensor, got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        if integer:
            value = _validation.check_int(op, name, value)
        else:
            value = _validation.check_float(op, name, value, positive=check_positive)
        if rows != 1:
            raise ValueError(f"{op}: {name} must have shape {tuple(sshape)}, got a single number")
        return torch.full((1,), value, dtype=torch.int32 if integer else torch.float32, device=device)
    if integer:
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must have an integer dtype, got {value.dtype}")
    elif not value.dtype.is_floating_point:
        raise TypeError(f"{op}: {name} must have a float dtype, got {value.dtype}")
    if value.numel() != rows or (value.dim() > 1 and tuple(value.shape) != tuple(sshape)):
        raise ValueError(f"{op}: {name} must have shape {tuple(sshape)}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{op}: {name} is on {value.device} but the data is on {device}; they must share a device")
    flat = value.reshape(rows).to(torch.int32 if integer else torch.float32)
    if check_positive and _values_readable(flat) and flat.numel() > 0:
        if not bool(((flat > 0) & torch.isfinite(flat)).all()):
            raise ValueError(f"{op}: {name} must be finite and > 0 everywhere")
    return flat


def _check_static(op, x, sshape, symmetric, scale, zero_point):
    """(scale, zero_point) as flat per-row tensors, or (None, None) for dynamic scales."""
    if scale is None:
        if zero_point is not None:
            raise ValueError(f"{op}: zero_point was given without a scale; pass both (static) or neither (dynamic)")
        return None, None
    s = _as_per_row(op, "scale", scale, sshape, x.device, integer=False, check_positive=True)
    if symmetric:
        if zero_point is not None:
            raise ValueError(f"{op}: zero_point is only used with symmetric=False")
        return s, None
    if zero_point is None:
        raise ValueError(f"{op}: a static affine scale (symmetric=False) needs a zero_point")
    return s, _as_per_row(op, "zero_point", zero_point, sshape, x.device, integer=True)


# --------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------


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
def _div(a, b, IS_FP64: tl.constexpr):
    # Correctly rounded division (fp32 `/` may be approximate on a GPU).
    if IS_FP64:
        out = a / b
    else:
        out = tl.math.div_rn(a, b)
    return out


@triton_jit
def _to_acc(v, IS_FP64: tl.constexpr):
    if IS_FP64:
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


@triton_jit
def _row_scale_params(lo, hi, SYMMETRIC: tl.constexpr):
    # The row's float32 scale and zero point (as float32) from its reduction
    # in the accumulation dtype (lo stays 0 for symmetric rows):
    # reference.int8_params_from_range step for step. float32 arithmetic
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
    wide_s = tl.minimum(_div(hi64 - lo64, tl.full([], steps, tl.float64), True), _FLOAT32_MAX).to(tl.float32)
    s = tl.where(fast, tl.where(s == 0.0, 1.0, s), wide_s)
    if SYMMETRIC:
        zpf = tl.full([], 0.0, tl.float32)
    else:
        fast_zp = -128.0 - _round_half_even(tl.math.div_rn(mn, s))
        wide_zp = -128.0 - _round_half_even(_div(lo64, s.to(tl.float64), True))
        wide_zp = tl.minimum(tl.maximum(wide_zp, -128.0), 127.0).to(tl.float32)
        zpf = tl.where(fast, fast_zp, wide_zp)
    return s, zpf


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
    IS_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One flat axis of rows x chunks: CUDA's grid axes 1 and 2 stop at 65535.
    pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    row = pid // chunks
    part = pid % chunks
    row_x = x_ptr + row * row_length
    if STATIC:
        s = tl.load(scale_ptr + row)
        zpf = tl.load(zp_ptr + row).to(tl.float32)
    else:
        # The row's scale: a reduction held in registers, then the same row again.
        lo = _to_acc(tl.zeros([BLOCK], tl.float32), IS_FP64)
        hi = _to_acc(tl.zeros([BLOCK], tl.float32), IS_FP64)
        for start in tl.range(0, row_length, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            v = _to_acc(tl.load(row_x + offsets, mask=offsets < row_length, other=0.0), IS_FP64)
            f = tl.where(v - v == 0, v, 0.0)  # non-finite -> 0 (neutral)
            if SYMMETRIC:
                hi = tl.maximum(hi, tl.abs(f))
            else:
                lo = tl.minimum(lo, f)
                hi = tl.maximum(hi, f)
        s, zpf = _row_scale_params(tl.min(lo, axis=0), tl.max(hi, axis=0), SYMMETRIC)
        tl.store(scale_ptr + row, s)
        tl.store(zp_ptr + row, zpf.to(tl.int32))
    sa = _to_acc(s, IS_FP64)
    za = _to_acc(zpf, IS_FP64)
    qmin = -127.0 if SYMMETRIC else -128.0
    begin = part * chunk
    for start in tl.range(0, chunk, BLOCK):
        offsets = begin + start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        xv = tl.load(row_x + offsets, mask=mask, other=0.0)
        v = _to_acc(xv, IS_FP64)
        r = _round_half_even(_div(v, sa, IS_FP64))
        r = tl.where(v != v, 0.0, r) + za
        r = tl.minimum(tl.maximum(r, qmin), 127.0)
        if FAKE:
            d = _cast_rne((r - za) * sa, xv.dtype)
            tl.store(out_ptr + row * row_length + offsets, tl.where(v != v, xv, d), mask=mask)
        else:
            tl.store(q_ptr + row * row_length + offsets, r.to(tl.int8), mask=mask)


@triton_jit
def _dequant_rows_kernel(
    q_ptr,  # (rows, row_length) int8
    scale_ptr,  # (rows,) float32
    zp_ptr,  # (rows,) int32 (zeros when symmetric)
    out_ptr,  # (rows, row_length) float, dtype of the output
    row_length,
    chunk,
    chunks,
    IS_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One flat axis of rows x chunks: CUDA's grid axes 1 and 2 stop at 65535.
    pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    row = pid // chunks
    part = pid % chunks
    sa = _to_acc(tl.load(scale_ptr + row), IS_FP64)
    za = _to_acc(tl.load(zp_ptr + row), IS_FP64)
    for start in tl.range(0, chunk, BLOCK):
        offsets = part * chunk + start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        q = _to_acc(tl.load(q_ptr + row * row_length + offsets, mask=mask, other=0), IS_FP64)
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
    IS_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One flat axis of rows x chunks: CUDA's grid axes 1 and 2 stop at 65535.
    pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    row = pid // chunks
    part = pid % chunks
    sa = _to_acc(tl.load(scale_ptr + row), IS_FP64)
    za = _to_acc(tl.load(zp_ptr + row), IS_FP64)
    qmin = -127.0 if SYMMETRIC else -128.0
    for start in tl.range(0, chunk, BLOCK):
        offsets = part * chunk + start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        v = _to_acc(tl.load(x_ptr + row * row_length + offsets, mask=mask, other=0.0), IS_FP64)
        g = tl.load(grad_ptr + row * row_length + offsets, mask=mask, other=0.0)
        r = _round_half_even(_div(v, sa, IS_FP64))
        r = tl.where(v != v, 0.0, r) + za
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
    IS_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One flat axis of rows x chunks: CUDA's grid axes 1 and 2 stop at 65535.
    pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    row = pid // chunks
    part = pid % chunks
    lo = _to_acc(tl.zeros([BLOCK], tl.float32), IS_FP64)
    hi = _to_acc(tl.zeros([BLOCK], tl.float32), IS_FP64)
    for start in tl.range(0, chunk, BLOCK):
        offsets = part * chunk + start + tl.arange(0, BLOCK)
        v = _to_acc(tl.load(x_ptr + row * row_length + offsets, mask=offsets < row_length, other=0.0), IS_FP64)
        f = tl.where(v - v == 0, v, 0.0)
        if SYMMETRIC:
            hi = tl.maximum(hi, tl.abs(f))
        else:
            lo = tl.minimum(lo, f)
            hi = tl.maximum(hi, f)
    tl.store(lo_ptr + row * chunks + part, tl.min(lo, axis=0))
    tl.store(hi_ptr + row * chunks + part, tl.max(hi, axis=0))


def _triton_blocks(row_length: int) -> tuple[int, int, int]:
    """(BLOCK, chunk, chunks) for a row of row_length elements."""
    block = min(1024, max(16, triton.next_power_of_2(max(row_length, 1))))
    chunk = block * 16
    return block, chunk, max(1, triton.cdiv(row_length, chunk))


def _params_from_range(lo: torch.Tensor, hi: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point (zeros when symmetric) from reduced (lo, hi), on the device."""
    s, zp = reference.int8_params_from_range(lo, hi, symmetric)
    return s, torch.zeros_like(s, dtype=torch.int32) if zp is None else zp


def _triton_quant(x, scale, zero_point, symmetric, fake):
    x = x.contiguous()
    rows, row_length = x.shape
    is_fp64 = x.dtype == torch.float64
    block, chunk, chunks = _triton_blocks(row_length)
    result = torch.empty_like(x) if fake else torch.empty(x.shape, dtype=torch.int8, device=x.device)
    static = scale is not None
    if static:
        s = scale.to(torch.float32).contiguous().clone()
        zp = (torch.zeros_like(s, dtype=torch.int32) if symmetric else zero_point.to(torch.int32).contiguous().clone())
    elif chunks > 1 and rows < 64:
        # Few long rows (per tensor): the range from chunk partials, then a static pass.
        acc = torch.float64 if is_fp64 else torch.float32
        lo = torch.empty((rows, chunks), dtype=acc, device=x.device)
        hi = torch.empty_like(lo)
        if rows > 0:
            launch(_range_partials_kernel, (rows * chunks,), x, lo, hi, row_length, chunks, chunk, traceable=True,
                   SYMMETRIC=symmetric, IS_FP64=is_fp64, BLOCK=block)
        s, zp = _params_from_range(lo.amin(dim=1), hi.amax(dim=1), symmetric)
        static = True
    else:
        s = torch.empty((rows,), dtype=torch.float32, device=x.device)
        zp = torch.empty((rows,), dtype=torch.int32, device=x.device)
    if rows > 0:
        parts = chunks if static else 1
        launch(_quant_rows_kernel, (rows * parts,), x, result, result, s, zp, row_length,
               chunk if static else max(row_length, 1), parts, traceable=True,
               STATIC=static, SYMMETRIC=symmetric, FAKE=fake, IS_FP64=is_fp64, BLOCK=block)
    return result, s, zp


def _triton_dequant(q, scale, zero_point, dtype):
    q = q.contiguous()
    rows, row_length = q.shape
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    zp = zero_point if zero_point is not None else torch.zeros_like(scale, dtype=torch.int32)
    block, chunk, chunks = _triton_blocks(row_length)
    if q.numel() > 0:
        launch(_dequant_rows_kernel, (rows * chunks,), q, scale.contiguous(), zp.contiguous(), out, row_length,
               chunk, chunks, traceable=True, IS_FP64=dtype == torch.float64, BLOCK=block)
    return out


def _triton_backward(grad, x, scale, zero_point, symmetric):
    x = x.contiguous()
    grad = grad.to(x.dtype).contiguous()
    rows, row_length = x.shape
    grad_x = torch.empty_like(x)
    zp = zero_point if zero_point is not None else torch.zeros_like(scale, dtype=torch.int32)
    block, chunk, chunks = _triton_blocks(row_length)
    if x.numel() > 0:
        launch(_fake_quant_backward_kernel, (rows * chunks,), grad, x, scale.contiguous(), zp.contiguous(), grad_x,
               row_length, chunk, chunks, traceable=True, SYMMETRIC=symmetric, IS_FP64=x.dtype == torch.float64,
               BLOCK=block)
    return grad_x


def _register_triton_ops() -> None:
    from torch.library import triton_op

    @triton_op("eitp::triton_quantize_int8_rows", mutates_args=())
    def _triton_quantize_rows(x: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None,
                              symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _triton_quant(x, scale, zero_point, symmetric, fake=False)

    @triton_op("eitp::triton_fake_quant_int8_rows", mutates_args=())
    def _triton_fake_quant_rows(x: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None,
                                symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _triton_quant(x, scale, zero_point, symmetric, fake=True)

    @triton_op("eitp::triton_dequantize_int8_rows", mutates_args=())
    def _triton_dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                                dtype: torch.dtype) -> torch.Tensor:
        return _triton_dequant(q, scale, zero_point, dtype)

    @triton_op("eitp::triton_fake_quant_int8_rows_backward", mutates_args=())
    def _triton_fake_quant_rows_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                                         zero_point: torch.Tensor | None, symmetric: bool) -> torch.Tensor:
        return _triton_backward(grad, x, scale, zero_point, symmetric)

    # triton_op traces its body for fake tensors; under the interpreter that
    # would launch kernels on fake tensors, so the interpreter gets the plain fakes.
    if _backends._triton_interpreter_requested():
        _register_fakes("triton_")
    _register_autograd("eitp::triton_fake_quant_int8_rows", "triton_fake_quant_int8_rows_backward")


# --------------------------------------------------------------------------
# Compiled ops: fake kernels and autograd
# --------------------------------------------------------------------------


def _register_autograd(op_name: str, backward_op: str) -> None:
    def setup_context(ctx, inputs, output):
        x, _scale, _zero_point, symmetric = inputs
        _out, s, zp = output
        ctx.save_for_backward(x, s, zp)
        ctx.symmetric = symmetric

    def backward(ctx, grad_out, _grad_scale, _grad_zero_point):
        x, s, zp = ctx.saved_tensors
        grad_x = getattr(torch.ops.eitp, backward_op)(grad_out, x, s, None if ctx.symmetric else zp, ctx.symmetric)
        return grad_x, None, None, None

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


def _register_fakes(prefix: str) -> None:
    """Fake (meta) kernels of the four row ops ``eitp::<prefix>...``: shapes and dtypes only."""

    @torch.library.register_fake(f"eitp::{prefix}quantize_int8_rows")
    def _(x, scale, zero_point, symmetric):
        rows = x.shape[0]
        return (x.new_empty(x.shape, dtype=torch.int8), x.new_empty((rows,), dtype=torch.float32),
                x.new_empty((rows,), dtype=torch.int32))

    @torch.library.register_fake(f"eitp::{prefix}fake_quant_int8_rows")
    def _(x, scale, zero_point, symmetric):
        rows = x.shape[0]
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                x.new_empty((rows,), dtype=torch.float32), x.new_empty((rows,), dtype=torch.int32))

    @torch.library.register_fake(f"eitp::{prefix}dequantize_int8_rows")
    def _(q, scale, zero_point, dtype):
        return q.new_empty(q.shape, dtype=dtype)

    @torch.library.register_fake(f"eitp::{prefix}fake_quant_int8_rows_backward")
    def _(grad, x, scale, zero_point, symmetric):
        return torch.empty_like(x, memory_format=torch.contiguous_format)


def _register_compiled() -> None:
    _register_fakes("")
    _register_autograd("eitp::fake_quant_int8_rows", "fake_quant_int8_rows_backward")


if _extension.load()[0]:
    _register_compiled()
if triton is not None:
    _register_triton_ops()


def _rows_ops(backend: str):
    """(quantize_rows, fake_quant_rows, dequantize_rows) for a non-reference backend."""
    ops = torch.ops.eitp
    if backend == "triton":
        return ops.triton_quantize_int8_rows, ops.triton_fake_quant_int8_rows, ops.triton_dequantize_int8_rows
    return ops.quantize_int8_rows, ops.fake_quant_int8_rows, ops.dequantize_int8_rows


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def quantize_int8(
    x: torch.Tensor,
    *,
    granularity: str = "tensor",
    axis: int = 0,
    group_size: int = 128,
    symmetric: bool = True,
    scale: torch.Tensor | float | None = None,
    zero_point: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a float tensor (fp16/bf16/fp32/fp64, any rank) to int8 codes.

    Returns ``(q, scale, zero_point)``: ``q`` int8 with x's shape (for
    ``granularity="channel"`` with axis != 0 a permuted view of contiguous
    storage, as the reference returns); ``scale`` float32 and ``zero_point``
    int32 (None when symmetric) of shape ``()`` per tensor, ``(x.shape[axis],)``
    per channel, ``x.shape[:-1] + (x.shape[-1] // group_size,)`` per group.
    Formulas, NaN/Inf handling and bytes moved: see the module docstring.
    ``scale`` (and ``zero_point`` when ``symmetric=False``) given: static
    quantization with those values (values beyond the range are clipped).
    Not differentiable (use :func:`fake_quant_int8` for training).
    """
    op = OP_QUANTIZE
    _validation.check_tensor(op, "x", x, allow_empty=True)
    granularity, axis, group_size, sshape = _check_layout(op, "x", x, granularity, axis, group_size)
    symmetric = _check_bool(op, "symmetric", symmetric)
    s_rows, zp_rows = _check_static(op, x, sshape, symmetric, scale, zero_point)
    backend = _backends.resolve(op, x.device, IMPLEMENTED)
    x = x.detach()
    if backend == "reference":
        return reference.quantize_int8(
            x, granularity, axis, group_size, symmetric,
            None if s_rows is None else s_rows.reshape(sshape), None if zp_rows is None else zp_rows.reshape(sshape))
    rows = reference._to_rows(x, granularity, axis, group_size)
    q, s, zp = _rows_ops(backend)[0](rows, s_rows, zp_rows, symmetric)
    q = reference._from_rows(q, x.shape, granularity, axis)
    return q, s.reshape(sshape), None if symmetric else zp.reshape(sshape)


def _check_scale_layout(op: str, name: str, value, q: torch.Tensor, granularity: str, sshape) -> None:
    """A scale/zero point whose shape is not this granularity's: say which layout it fits."""
    if not isinstance(value, torch.Tensor) or value.numel() == math.prod(sshape):
        return
    fits = []
    if value.numel() == 1:
        fits.append('granularity="tensor"')
    if value.dim() == 1:
        fits += [f'granularity="channel", axis={a}' for a in range(q.dim()) if q.shape[a] == value.numel()]
    elif value.dim() > 1 and value.dim() == q.dim() and tuple(value.shape[:-1]) == tuple(q.shape[:-1]):
        groups = value.shape[-1]
        if groups and q.shape[-1] % groups == 0:
            fits.append(f'granularity="group", group_size={q.shape[-1] // groups}')
    hint = f" (a {name} of this shape fits {' or '.join(fits)})" if fits else ""
    raise ValueError(f"{op}: {name} must have shape {tuple(sshape)} for granularity={granularity!r} and q of shape "
                     f"{tuple(q.shape)}, got {tuple(value.shape)}{hint}")


def dequantize_int8(
    q: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int | None = None,
    *,
    granularity: str = "tensor",
    axis: int = 0,
    group_size: int = 128,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """int8 codes back to floats: ``x = (q - zero_point) * scale``.

    Computed in float64 when ``dtype`` is float64, else float32, then cast to
    ``dtype`` (round to nearest even). ``scale`` / ``zero_point`` have the
    shapes :func:`quantize_int8` returns for this granularity (a Python number
    for granularity="tensor"); ``zero_point=None`` means symmetric. Reads 1
    byte and writes ``dtype``'s size per element.
    """
    op = OP_DEQUANTIZE
    _validation.check_tensor(op, "q", q, dtypes=(torch.int8,), allow_empty=True)
    if dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be one of {_validation.FLOAT_DTYPES}, got {dtype!r}")
    granularity, axis, group_size, sshape = _check_layout(op, "q", q, granularity, axis, group_size)
    for name, value in (("scale", scale), ("zero_point", zero_point)):
        _check_scale_layout(op, name, value, q, granularity, sshape)
    s_rows = _as_per_row(op, "scale", scale, sshape, q.device, integer=False)
    zp_rows = None if zero_point is None else _as_per_row(op, "zero_point", zero_point, sshape, q.device,
                                                          integer=True)
    backend = _backends.resolve(op, q.device, IMPLEMENTED)
    if backend == "reference":
        return reference.dequantize_int8(
            q, s_rows.reshape(sshape), None if zp_rows is None else zp_rows.reshape(sshape),
            granularity, axis, group_size, dtype=dtype)
    rows = reference._to_rows(q, granularity, axis, group_size)
    out = _rows_ops(backend)[2](rows, s_rows, zp_rows, dtype)
    return reference._from_rows(out, q.shape, granularity, axis)


def fake_quant_int8(
    x: torch.Tensor,
    *,
    granularity: str = "tensor",
    axis: int = 0,
    group_size: int = 128,
    symmetric: bool = True,
    scale: torch.Tensor | float | None = None,
    zero_point: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """``dequantize_int8(*quantize_int8(x, ...), dtype=x.dtype)`` in one pass,
    differentiable with the straight-through estimator.

    Same arguments and scale semantics as :func:`quantize_int8`; the output
    has x's shape and dtype (NaN inputs stay NaN, +-Inf become the extreme
    codes times scale). Gradient: ``grad_out`` where x is finite and its
    unclamped code is in [qmin, qmax], 0 elsewhere (clipped by a static scale,
    or infinite); none for ``scale``. One read of x and one write of the
    output per call (two reads per tensor); the backward reads grad and x and
    writes grad_x.
    """
    op = OP_FAKE_QUANT
    _validation.check_tensor(op, "x", x, allow_empty=True)
    granularity, axis, group_size, sshape = _check_layout(op, "x", x, granularity, axis, group_size)
    symmetric = _check_bool(op, "symmetric", symmetric)
    s_rows, zp_rows = _check_static(op, x, sshape, symmetric, scale, zero_point)
    backend = _backends.resolve(op, x.device, IMPLEMENTED)
    if backend == "reference":
        return reference.fake_quant_int8(
            x, granularity, axis, group_size, symmetric,
            None if s_rows is None else s_rows.reshape(sshape), None if zp_rows is None else zp_rows.reshape(sshape))
    rows = reference._to_rows(x, granularity, axis, group_size)
    out, _, _ = _rows_ops(backend)[1](rows, s_rows, zp_rows, symmetric)
    return reference._from_rows(out, x.shape, granularity, axis)
