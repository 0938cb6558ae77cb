"""Layout and shared arithmetic: what both the library and the reference use.

The kernels' wrappers need the same views (one row per slice, per scale), the
same accumulation dtype and the same few formulas (an int8 scale from a range,
an entropy from counts, rstd from a variance) as the reference states them.
They live here so that ``eitp_kernels.reference`` stays the oracle and the
eager backend only: no production module imports it for anything else.
docs/design.md §2 is the maths; each docstring gives the exact arithmetic.
"""

import math

import torch

__all__ = [
    "ENTROPY_LOG_FLOOR",
    "divide",
    "compute_dtype",
    "slices_as_rows",
    "entropy_from_counts",
    "column_rstd",
    "coherence_from_correlation",
    "to_rows",
    "from_rows",
    "scale_shape",
    "int8_params_from_range",
]

#: Floor applied to bin probabilities before taking ``ln p`` in the backward
#: pass of the differentiable (linear-binning) entropy.  An empty neighbour bin
#: then contributes ``ln(1e-12) ~= -27.6`` instead of ``-inf``: the gradient is
#: large but finite.  Dimensionless (a probability).
ENTROPY_LOG_FLOOR = 1e-12

_FLOAT32_MAX = torch.finfo(torch.float32).max


def divide(a, divisor):
    """``a / divisor`` rounded once (IEEE true division) on every device.

    PyTorch's CUDA kernels divide a tensor by a Python number as a
    multiplication by the number's rounded reciprocal, which is 1 ulp off for
    divisors that are not powers of two (``x / 127`` on an H200, torch 2.11):
    enough to move a value across a bin edge or change an int8 scale. The
    reference divides by a tensor instead, as every backend divides.
    """
    if isinstance(divisor, torch.Tensor):
        return a / divisor
    return a / torch.full((), divisor, dtype=a.dtype, device=a.device)


def compute_dtype(dtype):
    """Accumulation / arithmetic dtype used for inputs of ``dtype``.

    ``torch.float64`` for float64 inputs, ``torch.float32`` for every other
    dtype (float16, bfloat16, float32, int8, uint8).
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def slices_as_rows(x, dim):
    """``x`` as (R, L): one row per 1-D slice along ``dim`` (one row of all
    elements for ``dim=None`` or a 0-d x); also the batch shape (x.shape
    without ``dim``) the R results reshape to."""
    if dim is None or x.dim() == 0:
        return x.reshape(1, x.numel()), ()
    d = dim % x.dim()
    xm = x.movedim(d, -1)
    batch = tuple(xm.shape[:-1])
    return xm.reshape(math.prod(batch), xm.shape[-1]), batch


def entropy_from_counts(c, log_base):
    """H = -sum_{c_b>0} p_b ln p_b per row of c (float64), NaN for empty rows;
    divided by ``log_base`` (ln of the base) unless it is None."""
    total = c.sum(-1, keepdim=True)
    p = c / total
    plogp = torch.where(c > 0, p * torch.log(p), 0.0)
    h = -plogp.sum(-1) + 0.0  # "+ 0.0" turns -0.0 into +0.0
    h = torch.where(total.squeeze(-1) > 0, h, math.nan)
    if log_base is not None:
        h = divide(h, log_base)
    return h


def column_rstd(var, eps, dtype):
    """``rstd = 1 / sqrt(var + eps)`` in ``dtype`` (1 / units of x).

    ``var`` may be held in a wider dtype (float64 sums). A variance beyond
    ``dtype``'s range (an overflowed square makes it infinite) has no
    standardization in ``dtype``: rstd is NaN, so the loss is NaN instead of
    the column silently counting as constant (rstd = 0). Every backend does
    the same.
    """
    beyond = ~(var <= torch.finfo(dtype).max)  # NaN variances too
    return torch.where(beyond, math.nan, torch.rsqrt(var.to(dtype) + eps))


def coherence_from_correlation(r, diag_weight=1.0, offdiag_weight=1.0, squared=False):
    """The coherence loss of a correlation matrix ``r`` (D x D', dimensionless):
    ``L2 = diag_weight * sum_i (r_ii - 1)^2 + offdiag_weight * sum_{i != j} r_ij^2``
    (the diagonal is ``i == j`` for ``i < min(D, D')``); ``L2`` if ``squared``
    else ``sqrt(L2)``, in r's dtype. The one copy of this formula: the
    reference's ``coherence_loss`` and the ``process_group`` path (the global
    R) use it.
    """
    eye = torch.eye(r.shape[0], r.shape[1], dtype=torch.bool, device=r.device)
    diag = torch.diagonal(r)
    l_diag = ((diag - 1.0) ** 2).sum()
    l_off = (r.masked_fill(eye, 0.0) ** 2).sum()
    l2 = diag_weight * l_diag + offdiag_weight * l_off
    return l2 if squared else torch.sqrt(l2)


def to_rows(t, granularity, axis, group_size):
    """View t as (M, K): one row per scale, in the scale's C order."""
    shape = tuple(t.shape)
    if granularity == "tensor":
        return t.reshape(1, t.numel())
    if granularity == "channel":
        a = axis % t.dim()
        rest = math.prod(shape[:a] + shape[a + 1:])
        return t.movedim(a, 0).reshape(shape[a], rest)
    if granularity == "group":
        return t.reshape(t.numel() // group_size, group_size)
    raise ValueError(f"unknown granularity {granularity!r}")


def from_rows(rows, shape, granularity, axis):
    """Inverse of to_rows."""
    shape = tuple(shape)
    if granularity == "channel":
        a = axis % len(shape)
        moved = (shape[a],) + shape[:a] + shape[a + 1:]
        return rows.reshape(moved).movedim(0, a)
    return rows.reshape(shape)


def scale_shape(shape, granularity, axis, group_size):
    """Shape of the scale (and zero point) of a tensor of ``shape`` at this granularity."""
    shape = tuple(shape)
    if granularity == "tensor":
        return ()
    if granularity == "channel":
        return (shape[axis % len(shape)],)
    return shape[:-1] + (shape[-1] // group_size,)


def int8_params_from_range(lo, hi, symmetric):
    """Per-row int8 ``(scale, zero_point)`` from a row reduction.

    ``hi`` is the row's absmax (symmetric) or ``max(finite max, 0)`` and
    ``lo`` is ``min(finite min, 0)`` (affine; ignored when symmetric), both in
    the compute dtype. float32 arithmetic, as docs/design.md §2.3 states it:
    symmetric ``s = float32(hi) / 127``, ``zero_point = None``; affine
    ``s = (float32(hi) - float32(lo)) / 255``,
    ``zero_point = int32(-128 - round(float32(lo) / s))``; ``s == 0`` becomes 1.
    A range too wide for that (affine ``hi - lo`` beyond 3.4e38, or float64
    values beyond float32) is computed in float64 instead, with the scale
    saturated at the largest float32: ``s = float32(min((hi - lo) / steps,
    3.4028235e38))`` and ``zero_point = clamp(-128 - round(lo / s), -128, 127)``,
    so no scale is ever infinite. Every backend computes exactly this.
    """
    hi64 = hi.to(torch.float64)
    lo64 = torch.zeros_like(hi64) if symmetric else lo.to(torch.float64)
    fits = (lo64 >= -_FLOAT32_MAX) & (hi64 <= _FLOAT32_MAX)
    mn = torch.where(fits, lo64, 0.0).to(torch.float32)
    mx = torch.where(fits, hi64, 0.0).to(torch.float32)
    steps = 127.0 if symmetric else 255.0
    s = divide(mx if symmetric else mx - mn, steps)
    wide = ~fits | ~torch.isfinite(s)
    wide_s = divide(hi64 - lo64, steps).clamp(max=_FLOAT32_MAX).to(torch.float32)
    s = torch.where(wide, wide_s, torch.where(s == 0, 1.0, s))
    if symmetric:
        return s, None
    zp = -128.0 - torch.round(mn / s)
    wide_zp = (-128.0 - torch.round(lo64 / s.to(torch.float64))).clamp(-128.0, 127.0)
    return s, torch.where(wide, wide_zp.to(torch.float32), zp).to(torch.int32)
