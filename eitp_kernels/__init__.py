"""eitp_kernels: fused kernels for EIT-P training measurements.

Public API:
    backends(), use_backend(name), BackendUnavailableError
    finite_minmax(x, dim=None)
    quantize_int8(x, *, granularity, axis, group_size, symmetric, scale, zero_point)
    dequantize_int8(q, scale, zero_point=None, *, granularity, axis, group_size, dtype)
    fake_quant_int8(x, *, granularity, axis, group_size, symmetric, scale, zero_point)
Modules (``eitp_kernels.nn``): FakeQuantLinear, Int8Linear, prepare_qat(model),
export_int8(model), load_int8(state, model_or_factory).
The reference implementations (the ground truth) live in
``eitp_kernels.reference``.
"""
from eitp_kernels._backends import BackendStatus, BackendUnavailableError, backends, use_backend
from eitp_kernels.ops.finite_range import finite_minmax
from eitp_kernels.ops.quant import dequantize_int8, fake_quant_int8, quantize_int8

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "backends",
    "dequantize_int8",
    "fake_quant_int8",
    "finite_minmax",
    "quantize_int8",
    "use_backend",
]
