"""The GPU steps of Int8Linear (eitp_kernels.nn.Int8Linear): the weight-only
int8 linear for 1-16 rows and the int8 path's rescale for more.

Weight-only int8 linear: float activations times an int8 weight with
per-output-channel scales, the weight dequantized as it is read.

    out[i, j] = sum_k x[i, k] * (weight_int8[j, k] * weight_scale[j]) + bias[j]
              = (sum_k x[i, k] * weight_int8[j, k]) * weight_scale[j] + bias[j]

computed in float32 (the scale applied once per output, in the epilogue) and
returned in x's dtype. It is Int8Linear's path for 1-16 rows on a GPU
(``eitp_kernels.nn.Int8Linear``), where the call is a GEMV bounded by reading
the weight: the Triton kernel (:mod:`eitp_kernels.triton.int8_linear`) reads
each int8 code once, n * k bytes, against 4 n k for an fp32 weight and 2 n k
for bf16. Backends: ``triton`` (CUDA; CPU tensors under TRITON_INTERPRET=1)
and ``reference`` (eager: ``F.linear`` with the weight dequantized in
float32). Not differentiable (inference).

Rescale (:func:`int8_linear_rescale`): the int8 path's epilogue after the
exact int32 product acc = qx @ weight_int8^T (torch._int_mm),

    out[i, j] = float32(acc[i, j] - zero_point * code_sums[j]) * row_scale[i] * weight_scale[j] + bias[j]

in one pass (the zero-point term only for affine activations): with the
activation quantization (one kernel) and torch._int_mm, three launches per
layer call. Same backends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from eitp_kernels import _backends, _registration, _validation

OP = "int8_weight_only_linear"
RESCALE_OP = "int8_linear_rescale"
# The op's backends per device, best first (interpreted Triton is never chosen automatically).
IMPLEMENTED = {"cpu": ("triton", "reference"), "cuda": ("triton", "reference")}
MAX_ROWS = 16  # the weight-only kernel's rows (eitp_kernels.triton.int8_linear.MAX_ROWS)


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def int8_weight_only_linear(x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (m, k) float (fp32/bf16/fp16, m <= 16) times the (n, k) int8 weight
    dequantized with ``weight_scale`` (n,) per output channel, plus ``bias``
    (n,) in x's dtype: (m, n) in x's dtype (formula in the module docstring).
    Reads the codes once (n * k bytes)."""
    _check(x, weight_int8, weight_scale, bias)
    backend = _backends.resolve(OP, x.device, IMPLEMENTED)
    return ROWS[backend](x, weight_int8, weight_scale, bias)


def int8_linear_rescale(acc: torch.Tensor, row_scale: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor | None = None, code_sums: torch.Tensor | None = None,
                        zero_point: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(m, n) in ``dtype`` from the int32 product ``acc`` (m, n): the rescale of
    the module docstring. ``row_scale``: float32 (m,) or (m, 1) per row, or
    one element per tensor; ``weight_scale``: float32 (n,); ``bias``: (n,);
    ``code_sums`` (int32 (n,)) and ``zero_point`` (int32, one element) both or
    neither (affine activations)."""
    _validation.check_tensor(RESCALE_OP, "acc", acc, dtypes=(torch.int32,), min_dim=2, max_dim=2, allow_empty=True)
    m, n = acc.shape
    _validation.check_tensor(RESCALE_OP, "row_scale", row_scale, dtypes=(torch.float32,), allow_empty=True)
    if row_scale.numel() not in (1, m):
        raise ValueError(f"{RESCALE_OP}: row_scale must have 1 or {m} elements, got shape {tuple(row_scale.shape)}")
    _validation.check_tensor(RESCALE_OP, "weight_scale", weight_scale, dtypes=(torch.float32,), min_dim=1, max_dim=1,
                             allow_empty=True)
    if weight_scale.shape[0] != n:
        raise ValueError(f"{RESCALE_OP}: weight_scale must have shape ({n},), got {tuple(weight_scale.shape)}")
    if (code_sums is None) != (zero_point is None):
        raise ValueError(f"{RESCALE_OP}: code_sums and zero_point go together (affine activations), got one of them")
    backend = _backends.resolve(RESCALE_OP, acc.device, IMPLEMENTED)
    return RESCALE[backend](acc, row_scale, weight_scale, bias, code_sums, zero_point, dtype)


def triton_available(device: torch.device | str) -> bool:
    """Whether the Triton backend would run this op's tensors on ``device`` (CUDA with
    Triton; CPU only under TRITON_INTERPRET=1)."""
    device = torch.device(device)
    if device.type == "cpu" and not _backends.triton_interpreter_requested():
        return False
    status = _backends._status("triton")
    return status.available and device.type in status.devices


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check(x, weight_int8, weight_scale, bias) -> None:
    _validation.check_tensor(OP, "x", x, dtypes=(torch.float32, torch.bfloat16, torch.float16), min_dim=2, max_dim=2,
                             allow_empty=True)
    if not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"{OP}: x must have 1 to {MAX_ROWS} rows, got shape {tuple(x.shape)}")
    _validation.check_tensor(OP, "weight_int8", weight_int8, dtypes=(torch.int8,), min_dim=2, max_dim=2,
                             allow_empty=True)
    if weight_int8.shape[1] != x.shape[1]:
        raise ValueError(f"{OP}: weight_int8 must be (n, {x.shape[1]}) for x of shape {tuple(x.shape)}, got "
                         f"{tuple(weight_int8.shape)}")
    n = weight_int8.shape[0]
    _validation.check_tensor(OP, "weight_scale", weight_scale, dtypes=(torch.float32,), min_dim=1, max_dim=1,
                             allow_empty=True)
    if weight_scale.shape[0] != n:
        raise ValueError(f"{OP}: weight_scale must have shape ({n},), got {tuple(weight_scale.shape)}")
    if bias is not None:
        _validation.check_tensor(OP, "bias", bias, dtypes=(x.dtype,), min_dim=1, max_dim=1, allow_empty=True)
        if bias.shape[0] != n:
            raise ValueError(f"{OP}: bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (("weight_int8", weight_int8), ("weight_scale", weight_scale), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{OP}: {name} is on {t.device}, x on {x.device}")


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------


def _eager(x, weight_int8, weight_scale, bias):
    weight = weight_int8.to(torch.float32) * weight_scale.unsqueeze(1)
    out = F.linear(x.to(torch.float32), weight, None if bias is None else bias.to(torch.float32))
    return out.to(x.dtype)


def _eager_rescale(acc, row_scale, weight_scale, bias, code_sums, zero_point, dtype):
    if zero_point is not None:
        acc = acc - zero_point.reshape(()) * code_sums
    m = acc.shape[0]
    row_scale = row_scale.reshape(m, 1) if row_scale.numel() == m else row_scale.reshape(())
    out = acc.to(torch.float32) * row_scale * weight_scale
    return (out if bias is None else out + bias.to(torch.float32)).to(dtype)


ROWS = {"reference": _eager, "triton": _backends.op_caller("eitp_triton", OP)}
RESCALE = {"reference": _eager_rescale, "triton": _backends.op_caller("eitp_triton", RESCALE_OP)}


# --------------------------------------------------------------------------
# Custom ops: fake kernels, for eitp_triton::
# --------------------------------------------------------------------------


def _weight_only_fake(x, weight_int8, weight_scale, bias):
    return x.new_empty((x.shape[0], weight_int8.shape[0]))


def _rescale_fake(acc, row_scale, weight_scale, bias, code_sums, zero_point, dtype):
    return acc.new_empty(acc.shape, dtype=dtype)


_registration.register(OP, "int8_linear.int8_weight_only_linear", _weight_only_fake, compiled=False)
_registration.register(RESCALE_OP, "int8_linear.int8_linear_rescale", _rescale_fake, compiled=False)
