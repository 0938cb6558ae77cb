"""Weight-only int8 linear: float activations times an int8 weight with
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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from eitp_kernels import _backends, _registration, _validation

OP = "int8_weight_only_linear"
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


ROWS = {"reference": _eager, "triton": _backends.op_caller("eitp_triton", OP)}


# --------------------------------------------------------------------------
# Custom ops: fake kernel, for eitp_triton::
# --------------------------------------------------------------------------


def _weight_only_fake(x, weight_int8, weight_scale, bias):
    return x.new_empty((x.shape[0], weight_int8.shape[0]))


_registration.register(OP, "int8_linear.int8_weight_only_linear", _weight_only_fake, compiled=False)
