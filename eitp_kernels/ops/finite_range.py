"""Finite min/max: the automatic range of histogram entropy and the range of
affine int8 quantization.

    lo = min{x_i : x_i finite},  hi = max{x_i : x_i finite}

over the whole tensor (``dim=None``) or along one dim. NaN and +-Inf are
ignored; a slice with no finite value gives (lo, hi) = (+inf, -inf). Results
are in the accumulation dtype: float64 for float64 input, float32 otherwise
(exact: a min/max of fp16/bf16 values is representable in fp32).

Every backend reads x once (2-4 bytes per element) and writes two values per
slice. The compiled op is ``torch.ops.eitp.finite_minmax`` on a (rows, length)
view; the Triton kernel writes per-chunk partials that one small reduction
folds.
"""
from __future__ import annotations

import torch

from eitp_kernels import _backends, _extension, _validation, reference
from eitp_kernels._triton import launch, tl, triton, triton_jit

OP = "finite_minmax"

# Backends per device type, best first.
IMPLEMENTED = {"cpu": ("cpp", "triton", "reference"), "cuda": ("cuda", "triton", "reference")}


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


def _triton_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, row_length = x2d.shape
    block, chunk = 1024, 16384
    chunks = max(1, triton.cdiv(row_length, chunk))
    acc = reference.compute_dtype(x2d.dtype)
    lo = torch.empty((rows, chunks), dtype=acc, device=x2d.device)
    hi = torch.empty_like(lo)
    if rows > 0:
        launch(_finite_minmax_partials_kernel, (rows * chunks,), x2d, lo, hi, row_length, chunks,
               ACC=tl.float64 if acc == torch.float64 else tl.float32, CHUNK=chunk, BLOCK=block)
    return lo.amin(dim=1), hi.amax(dim=1)


def _compiled_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.eitp.finite_minmax(x2d)


def _reference_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.finite_minmax(x2d, dim=1)


_ROWS = {"reference": _reference_rows, "cpp": _compiled_rows, "cuda": _compiled_rows, "triton": _triton_rows}


def finite_minmax(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the finite values of ``x`` (all of it, or along ``dim``).

    Returns ``(lo, hi)`` of shape () or ``x.shape`` without ``dim``, float64 for
    float64 input and float32 otherwise; (+inf, -inf) where a slice holds no
    finite value. Never syncs with the device.
    """
    _validation.check_tensor(OP, "x", x)
    if dim is None:
        rows = x.reshape(1, -1)
        out_shape: tuple[int, ...] = ()
    else:
        dim = _validation.check_dim(OP, "dim", dim, x.dim())
        moved = x.movedim(dim, -1)
        out_shape = tuple(moved.shape[:-1])
        rows = moved.reshape(-1, moved.shape[-1])
    backend = _backends.resolve(OP, x.device, IMPLEMENTED)
    lo, hi = _ROWS[backend](rows.contiguous())
    return lo.reshape(out_shape), hi.reshape(out_shape)


def _register_fake() -> None:
    @torch.library.register_fake("eitp::finite_minmax")
    def _(x):
        acc = reference.compute_dtype(x.dtype)
        return x.new_empty((x.shape[0],), dtype=acc), x.new_empty((x.shape[0],), dtype=acc)


if _extension.load()[0]:
    _register_fake()
