"""int8 quantize, dequantize and fake-quant (docs/design.md §2.3).

Granularity: one scale per tensor, per channel (any ``axis``) or per group of
``group_size`` consecutive elements along the last dim. Every backend works on
a (rows, row_length) view in which each row shares one scale:

    symmetric: scale = float32(absmax) / 127,  q = clamp(rint(x / scale), -127, 127)
    affine:    mn = min(finite min, 0), mx = max(finite max, 0) (float32),
               scale = (mx - mn) / 255,  zero_point = int32(-128 - rint(mn / scale)),
               q = clamp(rint(x / scale) + zero_point, -128, 127)
    dequantize: x = (q - zero_point) * scale

absmax / min / max are over finite values only; a scale of 0 (all-zero row)
becomes 1.0; a range too wide for float32 arithmetic (affine mx - mn beyond
3.4e38, or fp64 values beyond float32) is computed in float64 with the scale
saturated at the largest float32 (_layout.int8_params_from_range).
``x / scale`` is a true division in float32 (float64 for float64 input),
rint rounds half to even: codes are bit-identical to
``eitp_kernels.reference``. Units: scale is in units of x per code step;
codes and zero points are dimensionless.

Bytes moved per element (s = input element size): quantize s read + 1
written (per tensor 2s read: a reduction pass first); fake-quant as quantize
with s written instead of 1; dequantize 1 read + the output's size written;
fake-quant backward 2s read + s written. Channel granularity with axis != 0
first copies x into the (channel, rest) layout. The Triton kernels are in
``eitp_kernels.triton.quant``.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from eitp_kernels import _backends, _layout, _registration, _validation, reference
from eitp_kernels import _dtensor

OP_QUANTIZE = "quantize_int8"
OP_DEQUANTIZE = "dequantize_int8"
OP_FAKE_QUANT = "fake_quant_int8"
GRANULARITIES = ("tensor", "channel", "group")


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def quantize_int8(x: torch.Tensor, *, granularity: str = "tensor", axis: int = 0, group_size: int = 128,
                  symmetric: bool = True, scale: torch.Tensor | float | None = None,
                  zero_point: torch.Tensor | int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a float tensor (fp16/bf16/fp32/fp64, any rank) to int8 codes.

    Returns ``(q, scale, zero_point)``: ``q`` int8 with x's shape (for
    ``granularity="channel"`` with axis != 0 a permuted view of contiguous
    storage, as the reference returns); ``scale`` float32 and ``zero_point``
    int32 (None when symmetric) of shape ``()`` per tensor, ``(x.shape[axis],)``
    per channel, ``x.shape[:-1] + (x.shape[-1] // group_size,)`` per group.
    Formulas and bytes moved: see the module docstring.
    Not differentiable (use :func:`fake_quant_int8` for training).

    NaN/Inf: +Inf quantizes to the max code (127), -Inf to the min code
    (-127 symmetric, -128 affine), NaN to the code of 0 (0, or the zero
    point).

    Static quantization (``scale`` given, plus ``zero_point`` when
    ``symmetric=False``): the scale is used as given (values beyond the range
    are clipped). Its positivity can only be checked by looking at its values,
    so it is checked for Python numbers and for CPU tensors (no device sync;
    skipped while torch.compile traces), never for CUDA tensors: a
    non-positive or non-finite CUDA scale gives what the reference gives,
    clamp(rint(x / scale)) (+-Inf and NaN quotients clamp to the extreme codes
    or, for NaN, to an unspecified code).
    """
    if _dtensor.is_dtensor(x):  # docs/design.md §3.3
        return _dtensor.quantize_int8(x, granularity, axis, group_size, symmetric, scale, zero_point)
    call = _check_quantize(OP_QUANTIZE, x, granularity, axis, group_size, symmetric, scale, zero_point)
    x = x.detach()
    if call.backend == "reference":
        return reference.quantize_int8(x, *call.reference_args())
    q, s, zp = _QUANTIZE_ROWS[call.backend](call.rows(x), call.scale, call.zero_point, call.symmetric)
    sshape = call.layout.sshape
    return call.from_rows(q, x), s.reshape(sshape), None if call.symmetric else zp.reshape(sshape)


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
    if _dtensor.holds_dtensor(q, scale, zero_point):  # docs/design.md §3.3
        return _dtensor.dequantize_int8(q, scale, zero_point, granularity, axis, group_size, dtype)
    _validation.check_tensor(op, "q", q, dtypes=(torch.int8,), allow_empty=True)
    if dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be one of {_validation.FLOAT_DTYPES}, got {dtype!r}")
    granularity, axis, group_size, sshape = _check_layout(op, "q", q, granularity, axis, group_size)
    for name, value in (("scale", scale), ("zero_point", zero_point)):
        _check_scale_layout(op, name, value, q, granularity, sshape)
    s_rows = _as_per_row(op, "scale", scale, sshape, q.device, integer=False)
    zp_rows = None if zero_point is None else _as_per_row(op, "zero_point", zero_point, sshape, q.device,
                                                          integer=True)
    backend = _backends.resolve(op, q.device, _backends.IMPLEMENTED)
    if backend == "reference":
        return reference.dequantize_int8(
            q, s_rows.reshape(sshape), None if zp_rows is None else zp_rows.reshape(sshape),
            granularity, axis, group_size, dtype=dtype)
    rows = _layout.to_rows(q, granularity, axis, group_size)
    out = _DEQUANTIZE_ROWS[backend](rows, s_rows, zp_rows, dtype)
    return _layout.from_rows(out, q.shape, granularity, axis)


def fake_quant_int8(x: torch.Tensor, *, granularity: str = "tensor", axis: int = 0, group_size: int = 128,
                    symmetric: bool = True, scale: torch.Tensor | float | None = None,
                    zero_point: torch.Tensor | int | None = None) -> torch.Tensor:
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
    if _dtensor.is_dtensor(x):  # docs/design.md §3.3
        return _dtensor.fake_quant_int8(x, granularity, axis, group_size, symmetric, scale, zero_point)
    call = _check_quantize(OP_FAKE_QUANT, x, granularity, axis, group_size, symmetric, scale, zero_point)
    if call.backend == "reference":
        return reference.fake_quant_int8(x, *call.reference_args())
    out, _, _ = _FAKE_QUANT_ROWS[call.backend](call.rows(x), call.scale, call.zero_point, call.symmetric)
    return call.from_rows(out, x)


# --------------------------------------------------------------------------
# Validation (shapes, dtypes and Python values only: no device sync)
# --------------------------------------------------------------------------


class _Layout(NamedTuple):
    granularity: str
    axis: int
    group_size: int
    sshape: tuple  # shape of the scale and zero point


class _QuantizeCall(NamedTuple):
    """A checked quantize / fake-quant call: its layout, its static scale and zero
    point as flat per-row tensors (None: dynamic) and its backend. (A NamedTuple: a
    frozen dataclass costs three times as much to make, 1 us a call.)"""
    layout: _Layout
    symmetric: bool
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    backend: str

    def reference_args(self) -> tuple:
        """The reference function's arguments after x."""
        lay = self.layout
        scale = None if self.scale is None else self.scale.reshape(lay.sshape)
        zero_point = None if self.zero_point is None else self.zero_point.reshape(lay.sshape)
        return lay.granularity, lay.axis, lay.group_size, self.symmetric, scale, zero_point

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return _layout.to_rows(x, self.layout.granularity, self.layout.axis, self.layout.group_size)

    def from_rows(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _layout.from_rows(rows, x.shape, self.layout.granularity, self.layout.axis)


def _check_quantize(op, x, granularity, axis, group_size, symmetric, scale, zero_point) -> _QuantizeCall:
    """The checks and backend choice that quantize_int8 and fake_quant_int8 share."""
    _validation.check_tensor(op, "x", x, allow_empty=True)
    layout = _check_layout(op, "x", x, granularity, axis, group_size)
    symmetric = _validation.check_bool(op, "symmetric", symmetric)
    s_rows, zp_rows = _check_static(op, x, layout.sshape, symmetric, scale, zero_point)
    return _QuantizeCall(layout, symmetric, s_rows, zp_rows, _backends.resolve(op, x.device, _backends.IMPLEMENTED))


# (granularity, axis, group_size, shape) -> its checked _Layout, for plain Python arguments: a
# layout is checked once per shape (the checks and the scale shape are 2 us of a 14 us call on
# 64 elements, python -m eitp_kernels.bench --host). Invalid layouts raise and are never stored.
_LAYOUTS: dict[tuple, _Layout] = {}
_LAYOUTS_MAX = 1024  # entries kept before the cache starts over


def _check_layout(op: str, name: str, x: torch.Tensor, granularity, axis, group_size) -> _Layout:
    """Normalized (granularity, axis, group_size, scale shape) for tensor ``x``."""
    if type(granularity) is str and type(axis) is int and type(group_size) is int \
            and not torch.compiler.is_compiling():
        key = (granularity, axis, group_size, x.shape)
        layout = _LAYOUTS.get(key)
        if layout is None:
            layout = _checked_layout(op, name, x, granularity, axis, group_size)
            if len(_LAYOUTS) >= _LAYOUTS_MAX:
                _LAYOUTS.clear()
            _LAYOUTS[key] = layout
        return layout
    return _checked_layout(op, name, x, granularity, axis, group_size)


def _checked_layout(op: str, name: str, x: torch.Tensor, granularity, axis, group_size) -> _Layout:
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
    sshape = _layout.scale_shape(x.shape, granularity, axis, group_size)
    return _Layout(granularity, axis, group_size, sshape)


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


# --------------------------------------------------------------------------
# Backends (rows = (R, L) view, one scale per row)
# --------------------------------------------------------------------------


# The row op of each backend but the reference (which takes the tensor and its
# granularity as they are): the compiled ops and their eitp_triton:: twins.
_op = _backends.op_caller
_QUANTIZE_ROWS = {"cpp": _op("eitp", "quantize_int8_rows"), "cuda": _op("eitp", "quantize_int8_rows"),
                  "triton": _op("eitp_triton", "quantize_int8_rows")}
_FAKE_QUANT_ROWS = {"cpp": _op("eitp", "fake_quant_int8_rows"), "cuda": _op("eitp", "fake_quant_int8_rows"),
                    "triton": _op("eitp_triton", "fake_quant_int8_rows")}
_DEQUANTIZE_ROWS = {"cpp": _op("eitp", "dequantize_int8_rows"), "cuda": _op("eitp", "dequantize_int8_rows"),
                    "triton": _op("eitp_triton", "dequantize_int8_rows")}


# --------------------------------------------------------------------------
# Custom ops: fake kernels and autograd, for eitp:: and eitp_triton::
# --------------------------------------------------------------------------


def _quantize_rows_fake(x, scale, zero_point, symmetric):
    rows = x.shape[0]
    return (x.new_empty(x.shape, dtype=torch.int8), x.new_empty((rows,), dtype=torch.float32),
            x.new_empty((rows,), dtype=torch.int32))


def _fake_quant_rows_fake(x, scale, zero_point, symmetric):
    rows = x.shape[0]
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty((rows,), dtype=torch.float32), x.new_empty((rows,), dtype=torch.int32))


def _dequantize_rows_fake(q, scale, zero_point, dtype):
    return q.new_empty(q.shape, dtype=dtype)


def _fake_quant_rows_backward_fake(grad, x, scale, zero_point, symmetric):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_quant_setup_context(ctx, inputs, output):
    x, _scale, _zero_point, symmetric = inputs
    _out, s, zp = output
    ctx.save_for_backward(x, s, zp)
    ctx.symmetric = symmetric
    # The scale and zero point get no gradient: autograd need not fill zero
    # gradients for them (two device launches per backward).
    ctx.mark_non_differentiable(s, zp)
    ctx.set_materialize_grads(False)


def _fake_quant_backward(ops, ctx, grad_out, _grad_scale, _grad_zero_point):
    if grad_out is None:  # not materialized: nothing flowed back into the output
        return None, None, None, None
    x, s, zp = ctx.saved_tensors
    grad_x = ops.fake_quant_int8_rows_backward(grad_out, x, s, None if ctx.symmetric else zp, ctx.symmetric)
    return grad_x, None, None, None


_registration.register("quantize_int8_rows", "quant.quantize_int8_rows", _quantize_rows_fake)
_registration.register("fake_quant_int8_rows", "quant.fake_quant_int8_rows", _fake_quant_rows_fake,
                       autograd=(_fake_quant_setup_context, _fake_quant_backward))
_registration.register("dequantize_int8_rows", "quant.dequantize_int8_rows", _dequantize_rows_fake)
_registration.register("fake_quant_int8_rows_backward", "quant.fake_quant_int8_rows_backward",
                       _fake_quant_rows_backward_fake)
