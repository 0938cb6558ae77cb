"""Finite min/max: the automatic range of histogram entropy and the range of
affine int8 quantization.

    lo = min{x_i : x_i finite},  hi = max{x_i : x_i finite}

over the whole tensor (``dim=None``) or along one dim. NaN and +-Inf are
ignored; a slice with no finite value gives (lo, hi) = (+inf, -inf). Results
are in the accumulation dtype: float64 for float64 input, float32 otherwise
(exact: a min/max of fp16/bf16 values is representable in fp32).

Every backend reads x once (2-4 bytes per element) and writes two values per
slice. The compiled op is ``torch.ops.eitp.finite_minmax`` on a (rows, length)
view; the Triton kernel (``eitp_kernels.triton.finite_minmax``) writes per-chunk
partials that one small reduction folds.
"""
from __future__ import annotations

import torch

from eitp_kernels import _backends, _layout, _registration, _validation, reference
from eitp_kernels import _dtensor

OP = "finite_minmax"


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def finite_minmax(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the finite values of ``x`` (all of it, or along ``dim``).

    Returns ``(lo, hi)`` of shape () or ``x.shape`` without ``dim``, float64 for
    float64 input and float32 otherwise; (+inf, -inf) where a slice holds no
    finite value. Never syncs with the device.
    """
    if _dtensor.is_dtensor(x):  # docs/design.md §3.3
        return _dtensor.finite_minmax(x, dim)
    _validation.check_tensor(OP, "x", x)
    if dim is not None:
        dim = _validation.check_dim(OP, "dim", dim, x.dim())
    rows, out_shape = _layout.slices_as_rows(x, dim)
    backend = _backends.resolve(OP, x.device, _backends.IMPLEMENTED)
    lo, hi = ROWS[backend](rows.contiguous())
    return lo.reshape(out_shape), hi.reshape(out_shape)


# --------------------------------------------------------------------------
# Backends (rows = (R, L) contiguous view)
# --------------------------------------------------------------------------


def _reference_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.finite_minmax(x2d, dim=1)


# (lo, hi), each (R,), of a contiguous (R, L) view, per backend (also histogram_entropy's range step).
_op = _backends.op_caller
ROWS = {"reference": _reference_rows, "cpp": _op("eitp", "finite_minmax"), "cuda": _op("eitp", "finite_minmax"),
        "triton": _op("eitp_triton", "finite_minmax")}


# --------------------------------------------------------------------------
# Custom ops: fake kernels, for eitp:: and eitp_triton::
# --------------------------------------------------------------------------


def _finite_minmax_fake(x):
    acc = _layout.compute_dtype(x.dtype)
    return x.new_empty((x.shape[0],), dtype=acc), x.new_empty((x.shape[0],), dtype=acc)


_registration.register("finite_minmax", "finite_minmax.finite_minmax", _finite_minmax_fake)
