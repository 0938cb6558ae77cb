"""Eager PyTorch reference implementations: the ground truth of eitp_kernels.

Every kernel (Triton, C++ CPU, CUDA) is tested against the functions in this
module, so they are written for clarity and exactness, not speed.  The maths is
docs/design.md §2; the exact arithmetic (operation order, dtypes, rounding)
is spelled out in each docstring so that kernels can reproduce integer results
(histogram counts, int8 codes, scales, zero points) bit for bit.

Conventions
-----------
* ``compute_dtype(x.dtype)`` is float64 for float64 inputs and float32 for
  everything else (fp16, bf16, fp32, int8, uint8).  All three ops compute in
  it; fp16/bf16 inputs are up-cast exactly.
* Inputs are assumed already validated (shapes, dtypes, ranges, group sizes):
  validation lives in the op wrappers, not here.
* Nothing is computed at import time; only ``torch``, ``math`` and
  ``eitp_kernels._layout`` (the views and formulas the library shares with
  this module, re-exported here) are used.

Public names
------------
ENTROPY_LOG_FLOOR, compute_dtype, finite_minmax, histogram_counts,
histogram_entropy, standardize_columns, correlation_matrix, coherence_loss,
quantize_int8, dequantize_int8, fake_quant_int8; and the steps the op modules
share with them: divide, slices_as_rows, bin_counts, entropy_from_counts,
linear_binning_counts, column_rstd, coherence_from_correlation, to_rows, from_rows, scale_shape,
int8_params_from_range.
"""

import math

import torch

from eitp_kernels._layout import (
    ENTROPY_LOG_FLOOR,
    coherence_from_correlation,
    column_rstd,
    compute_dtype,
    divide,
    entropy_from_counts,
    from_rows,
    int8_params_from_range,
    scale_shape,
    slices_as_rows,
    to_rows,
)

__all__ = [
    "ENTROPY_LOG_FLOOR",
    "compute_dtype",
    "divide",
    "finite_minmax",
    "histogram_counts",
    "histogram_entropy",
    "standardize_columns",
    "correlation_matrix",
    "coherence_loss",
    "coherence_from_correlation",
    "quantize_int8",
    "dequantize_int8",
    "fake_quant_int8",
    "slices_as_rows",
    "bin_counts",
    "entropy_from_counts",
    "linear_binning_counts",
    "column_rstd",
    "to_rows",
    "from_rows",
    "scale_shape",
    "int8_params_from_range",
]


_CODE_DTYPES = (torch.int8, torch.uint8)


# --------------------------------------------------------------------------
# 2.1 Histogram entropy
# --------------------------------------------------------------------------


def finite_minmax(x, dim=None):
    """Min and max over the finite values of ``x`` (NaN and +-Inf ignored).

    Returns ``(lo, hi)`` in ``compute_dtype(x.dtype)`` (same units as ``x``).
    ``dim=None`` reduces every element (0-d results); ``dim=d`` reduces that
    dimension (like ``torch.amin(x, dim=d)``, no keepdim).  A slice with no
    finite value (all NaN/Inf, or empty) gives ``lo = +inf, hi = -inf``.
    """
    cd = compute_dtype(x.dtype)
    xc = x.to(cd)
    finite = torch.isfinite(xc)
    inf = torch.tensor(math.inf, dtype=cd, device=x.device)
    lo_src = torch.where(finite, xc, inf)
    hi_src = torch.where(finite, xc, -inf)
    if dim is None or xc.dim() == 0:
        if xc.numel() == 0:
            return inf.clone(), (-inf).clone()
        return lo_src.amin(), hi_src.amax()
    d = dim % xc.dim()
    if xc.shape[d] == 0:
        shape = xc.shape[:d] + xc.shape[d + 1:]
        return (torch.full(shape, math.inf, dtype=cd, device=x.device),
                torch.full(shape, -math.inf, dtype=cd, device=x.device))
    return lo_src.amin(dim=d), hi_src.amax(dim=d)


def _row_range(xc, rng):
    """(lo, hi), each (R, 1) in xc's dtype: finite min/max per row or given."""
    rows = xc.shape[0]
    if rng is None:
        lo, hi = finite_minmax(xc.detach(), dim=1)
    else:
        lo = torch.full((rows,), float(rng[0]), dtype=xc.dtype, device=xc.device)
        hi = torch.full((rows,), float(rng[1]), dtype=xc.dtype, device=xc.device)
    return lo.unsqueeze(1), hi.unsqueeze(1)


def _counted(xc, lo, hi, explicit):
    """Mask of values that enter the histogram: finite (and inside the range)."""
    valid = torch.isfinite(xc)
    if explicit:
        valid = valid & (xc >= lo) & (xc <= hi)
    return valid


def bin_counts(xc, lo, hi, bins, explicit):
    """Exact int64 counts (R, bins) of the float rows ``xc`` (R, L) in the compute
    dtype, over the range ``lo``, ``hi`` (R, 1): the binning of :func:`histogram_counts`."""
    valid = _counted(xc, lo, hi, explicit)
    w = divide(hi - lo, bins)
    t = torch.floor((xc - lo) / w).clamp(0, bins - 1)
    t = torch.where((w == 0) | torch.isnan(t), 0.0, t)  # NaN: inf/inf when hi - lo overflows
    t = torch.where(valid, t, 0.0)
    return _bincount_rows(t.to(torch.int64), valid, bins)


def _bincount_rows(b, valid, bins):
    """Exact int64 counts (R, bins) of the bin indices b (R, L) where valid."""
    rows = b.shape[0]
    idx = b + torch.arange(rows, device=b.device, dtype=torch.int64).unsqueeze(1) * bins
    if b.device.type == "cpu":
        idx = idx.reshape(-1) if valid is None else idx[valid]
        return torch.bincount(idx, minlength=rows * bins).reshape(rows, bins)
    # On a GPU both boolean indexing and bincount (which reads its input's max to size the
    # output) wait for the device; uncounted values go to one extra bin, dropped after.
    if valid is not None:
        idx = torch.where(valid, idx, rows * bins)
    counts = torch.zeros(rows * bins + 1, dtype=torch.int64, device=b.device)
    counts.scatter_add_(0, idx.reshape(-1), torch.ones_like(idx).reshape(-1))
    return counts[:-1].reshape(rows, bins)


def histogram_counts(x, bins=256, range=None, dim=None):
    """Hard-binned histogram counts of ``x``.

    Float input, arithmetic in ``cd = compute_dtype(x.dtype)``:

    * ``lo, hi = finite_minmax(slice)`` when ``range is None``, else
      ``range = (lo, hi)`` (python floats, rounded to ``cd``) for every slice;
    * ``w = (hi - lo) / bins``;
    * ``b = clamp(floor((x - lo) / w), 0, bins - 1)`` (true division, not a
      multiplication by ``1/w``), so ``x == hi`` lands in the last bin;
    * non-finite values are never counted; with an explicit range, values with
      ``x < lo`` or ``x > hi`` (comparing ``x`` itself) are not counted;
    * ``w == 0`` (constant slice, ``hi == lo``; also a range so narrow that
      ``(hi - lo) / bins`` underflows to 0) puts every counted value in bin 0.

    int8 / uint8 input: each of the 256 codes is its own bin (int8 code ``c``
    goes to bin ``c + 128``, uint8 code ``c`` to bin ``c``); ``bins`` must be
    256 and ``range`` None there.

    ``dim=None``: one histogram of all elements, shape ``(bins,)``.
    ``dim=d``: one histogram per 1-D slice along ``d`` (``d`` is reduced, like
    ``torch.sum(dim=d)``); shape ``x.shape`` without ``d``, plus ``(bins,)``.

    Returns counts (number of elements, exact integers accumulated in int64)
    as a float tensor of dtype ``cd``.
    """
    cd = compute_dtype(x.dtype)
    xs, batch = slices_as_rows(x, dim)
    if x.dtype in _CODE_DTYPES:
        b = xs.to(torch.int64)
        if x.dtype == torch.int8:
            b = b + 128
        counts = _bincount_rows(b, None, 256)
        return counts.to(cd).reshape(batch + (256,))
    xc = xs.to(cd)
    lo, hi = _row_range(xc, range)
    counts = bin_counts(xc, lo, hi, bins, range is not None)
    return counts.to(cd).reshape(batch + (bins,))


def linear_binning_counts(xs, lo, hi, bins, explicit):
    """Linear-binning (soft) counts of docs/design.md §2.1: ``u = (x - lo) / w - 0.5``,
    ``k = floor(u)``, ``f = u - k``; x adds ``1 - f`` to bin k and ``f`` to
    bin k + 1 (edges clamp to the end bins).

    ``xs`` is (R, L) in compute dtype, ``lo``/``hi`` are (R, 1). Returns
    ``(counts, k0, k1, live, w)``: float64 counts (R, bins), differentiable
    in ``xs`` through f by autograd; the clamped bins k0 = k and k1 = k + 1;
    ``live`` where x has a gradient; the bin width w.
    """
    w = divide(hi - lo, bins)
    valid = _counted(xs, lo, hi, explicit)
    u = (xs - lo) / w - 0.5
    # w == 0, or NaN u (inf/inf when hi - lo overflows): whole weight to bin 0, zero gradient
    live = valid & (w != 0) & ~torch.isnan(u.detach())
    k = torch.floor(u.detach())
    f = u - k
    k = torch.where(live, k, 0.0)
    f = torch.where(live, f, 0.0)
    k0 = k.clamp(0, bins - 1).to(torch.int64)
    k1 = (k + 1).clamp(0, bins - 1).to(torch.int64)
    w_lo = torch.where(valid, 1.0 - f, 0.0).to(torch.float64)
    counts = torch.zeros(xs.shape[0], bins, dtype=torch.float64, device=xs.device)
    counts = counts.scatter_add(1, k0, w_lo).scatter_add(1, k1, f.to(torch.float64))
    return counts, k0, k1, live, w


class _LinearBinningEntropy(torch.autograd.Function):
    """Entropy of linear-binned (soft) counts with the docs/design.md §2.1 backward.

    ``xs`` is (R, L) in compute dtype, ``lo``/``hi`` are (R, 1) constants.
    """

    @staticmethod
    def forward(ctx, xs, lo, hi, bins, explicit, log_base):
        counts, kc, k1c, live, w = linear_binning_counts(xs, lo, hi, bins, explicit)
        h = entropy_from_counts(counts, log_base)
        n = counts.sum(-1, keepdim=True)
        lnp = torch.log((counts / n).clamp(min=ENTROPY_LOG_FLOOR))
        ctx.save_for_backward(kc, k1c, live, lnp, n, w)
        ctx.log_base = log_base
        return h.to(xs.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        kc, k1c, live, lnp, n, w = ctx.saved_tensors
        g = grad_h.to(torch.float64).unsqueeze(1)
        diff = lnp.gather(1, kc) - lnp.gather(1, k1c)
        grad = g * diff / (n * w.to(torch.float64))
        if ctx.log_base is not None:
            grad = divide(grad, ctx.log_base)
        grad = torch.where(live, grad, 0.0).to(w.dtype)
        return grad, None, None, None, None, None


def histogram_entropy(x, bins=256, range=None, dim=None, base=None,
                      differentiable=False):
    """Shannon entropy of the value histogram of ``x``.

    ``H = -sum_{b: c_b > 0} p_b ln p_b`` with ``p_b = c_b / sum_b c_b``, where
    ``c`` are the counts of :func:`histogram_counts` (same ``bins``, ``range``,
    ``dim``, int8/uint8 code semantics).  Units: nats when ``base is None``,
    otherwise ``H / ln(base)`` (``base=2``: bits; for int8 codes, the bits per
    parameter an ideal entropy coder needs).

    Computed in float64, returned in ``compute_dtype(x.dtype)``; shape ``()``
    for ``dim=None``, else ``x.shape`` without ``dim``.  A slice where nothing
    was counted (all non-finite, or all outside an explicit range) gives NaN;
    a constant slice gives 0.

    ``differentiable=True`` (float input only): linear binning.  The range is
    held constant (auto range computed on detached values).  In compute dtype:
    ``u = (x - lo) / w - 0.5``, ``k = floor(u)``, ``f = u - k``; ``x`` adds
    ``1 - f`` to bin ``clamp(k, 0, bins-1)`` and ``f`` to bin
    ``clamp(k+1, 0, bins-1)`` (soft counts accumulated in float64).
    Non-finite and (explicit range) out-of-range values are excluded; a slice
    with ``w == 0`` puts its whole weight in bin 0 with zero gradient.  The
    backward is the docs/design.md §2.1 formula, one elementwise pass:

        dH/dx = grad_out * (lnp[kc] - lnp[k1c]) / (N * w)   [/ ln(base)]

    with ``N`` the slice's total counted weight, ``kc``/``k1c`` the two
    clamped bins, ``lnp = ln(clamp(p, min=ENTROPY_LOG_FLOOR))``; zero for
    excluded values.  The gradient is discontinuous at bin centres (``f = 0``)
    and ignores the dependence of an automatic range on ``x``.
    """
    cd = compute_dtype(x.dtype)
    log_base = None if base is None else math.log(base)
    if differentiable:
        if not x.is_floating_point():
            raise TypeError("differentiable entropy needs a floating-point input")
        xs, batch = slices_as_rows(x.to(cd), dim)
        lo, hi = _row_range(xs.detach(), range)
        h = _LinearBinningEntropy.apply(xs, lo, hi, bins, range is not None, log_base)
        return h.reshape(batch)
    counts = histogram_counts(x, bins=bins, range=range, dim=dim)
    return entropy_from_counts(counts.to(torch.float64), log_base).to(cd)


# --------------------------------------------------------------------------
# 2.2 Coherence (correlation) loss
# --------------------------------------------------------------------------


def standardize_columns(x, eps=1e-5):
    """Column standardization with biased variance (batch norm, no affine).

    ``x`` is (N, D) or (N, *) (trailing dims are features); in
    ``cd = compute_dtype(x.dtype)``: ``mu = mean_n x``, ``d = x - mu``,
    ``var = mean_n d^2`` (``d * d`` in cd), ``z = d * rstd`` with
    ``rstd = column_rstd(var, eps, cd)``.  Returns z (dimensionless) with the
    shape of ``x``.  The sums behave as float64 sums (every backend sums in
    float64): the fast float32 sums are redone in float64 when one overflows,
    so huge finite columns standardize correctly.  A zero-variance column
    gives z = 0 for ``eps > 0``; a squared deviation or a variance beyond
    cd's range (fp32: |x - mu| beyond about 1.8e19) gives NaN.
    """
    cd = compute_dtype(x.dtype)
    n = x.shape[0]
    # contiguous: the result does not depend on the input's memory layout
    xc = x.to(cd).reshape(n, -1).contiguous()
    d, var = _deviations_and_variance(xc, cd)
    if cd != torch.float64:
        # A float32 sum overflowed (an infinite mean makes var non-finite too),
        # or the input is not finite: the float64 sums the kernels use.
        # float64 sums everywhere would double the cost of this eager
        # reference (it is also the benchmarks' eager baseline).
        overflowed = ~torch.isfinite(var).all()
        if torch.compiler.is_compiling():
            # A traced graph cannot branch on a value: both sums, the same choice by torch.where.
            d64, var64 = _deviations_and_variance(xc, torch.float64)
            d, var = torch.where(overflowed, d64, d), torch.where(overflowed, var64, var)
        elif bool(overflowed):
            d, var = _deviations_and_variance(xc, torch.float64)
    return (d * column_rstd(var, eps, cd)).reshape(x.shape)


def _deviations_and_variance(xc, sum_dtype):
    """``d = x - cd(sum_n x / N)`` and ``var = sum_n d^2 / N`` (``d * d`` in x's
    dtype) per column of ``xc`` (N, D), the sums taken in ``sum_dtype``."""
    n = xc.shape[0]
    mu = divide(xc.sum(0, keepdim=True, dtype=sum_dtype), n).to(xc.dtype)
    d = xc - mu
    return d, divide((d * d).sum(0, keepdim=True, dtype=sum_dtype), n)


def correlation_matrix(x, y=None, eps=1e-5):
    """Correlation matrix ``R = Z_x^T Z_y / N`` (dimensionless, D x D').

    ``x`` (N, D) or (N, *) flattened to (N, D); ``y`` likewise (same N), or
    None for self-correlation (``Z_y = Z_x``).  ``Z`` from
    :func:`standardize_columns`.  Computed and returned in the compute dtype
    (float64 if x or y is float64, else float32).  With ``eps = 0`` this is
    Pearson's correlation (the biased variances cancel).
    """
    dt = x.dtype if y is None else torch.promote_types(x.dtype, y.dtype)
    cd = compute_dtype(dt)
    n = x.shape[0]
    zx = standardize_columns(x.to(cd).reshape(n, -1), eps)
    zy = zx if y is None else standardize_columns(y.to(cd).reshape(n, -1), eps)
    return divide(zx.transpose(0, 1) @ zy, n)


def coherence_loss(x, y=None, diag_weight=1.0, offdiag_weight=1.0,
                   squared=False, eps=1e-5):
    """Coherence loss ``||R - I||`` with separate diagonal / off-diagonal weights.

    ``R = correlation_matrix(x, y, eps)`` (D x D'); with ``a = diag_weight``,
    ``b = offdiag_weight``:

        L2 = a * sum_i (R_ii - 1)^2 + b * sum_{i != j} R_ij^2

    where the diagonal is ``i == j`` for ``i < min(D, D')``.  Returns ``L2`` if
    ``squared`` else ``sqrt(L2)`` (a = b = 1: the Frobenius norm
    ``||R - I||_F``; a = 1, b = lambda: Barlow Twins).  Dimensionless, dtype
    ``compute_dtype(x.dtype)`` (fp16/bf16 inputs accumulate and return fp32).

    Gradients are plain autograd through torch ops.  Note that
    ``d sqrt(L2) / d L2`` is infinite at ``L2 == 0`` (e.g. ``eps = 0`` and a
    single column): the non-squared loss then has a NaN gradient; use
    ``squared=True`` where that can happen.
    """
    return coherence_from_correlation(correlation_matrix(x, y, eps), diag_weight, offdiag_weight, squared)


# --------------------------------------------------------------------------
# 2.3 int8 quantization
# --------------------------------------------------------------------------


def _qrange(symmetric):
    return (-127, 127) if symmetric else (-128, 127)




def _quantize_rows(x, granularity, axis, group_size, symmetric, scale, zero_point):
    """Codes as rows plus scale, zero point, and the unclamped codes r (+ zp)."""
    cd = compute_dtype(x.dtype)
    rows = to_rows(x.detach(), granularity, axis, group_size).to(cd)
    m = rows.shape[0]
    sshape = scale_shape(x.shape, granularity, axis, group_size)
    if scale is None:
        finite = torch.isfinite(rows)
        zero_col = torch.zeros(m, 1, dtype=cd, device=rows.device)
        # Non-finite values are replaced by 0 and a 0 column is appended: both
        # are neutral (absmax >= 0; the affine range is widened to include 0)
        # and make empty / all-non-finite rows well defined.
        vals = torch.cat([torch.where(finite, rows, 0.0), zero_col], 1)
        if symmetric:
            s, zp = int8_params_from_range(None, vals.abs().amax(1), True)
        else:
            s, zp = int8_params_from_range(vals.amin(1), vals.amax(1), False)
        s = s.reshape(sshape)
        zp = None if zp is None else zp.reshape(sshape)
    else:
        s = torch.as_tensor(scale, device=x.device).to(torch.float32).reshape(sshape)
        if symmetric:
            zp = None
        else:
            if zero_point is None:
                raise ValueError("a static affine scale needs a zero_point")
            zp = torch.as_tensor(zero_point, device=x.device).to(torch.int32).reshape(sshape)
    r = torch.round(rows / s.reshape(m, 1).to(cd))
    r = torch.where(torch.isnan(rows), 0.0, r)
    if zp is not None:
        r = r + zp.reshape(m, 1).to(cd)
    qmin, qmax = _qrange(symmetric)
    q = r.clamp(qmin, qmax).to(torch.int8)
    return q, s, zp, r, rows


def quantize_int8(x, granularity="tensor", axis=0, group_size=128,
                  symmetric=True, scale=None, zero_point=None):
    """Quantize a float tensor to int8 codes.

    Returns ``(q, scale, zero_point)``: ``q`` int8 with x's shape, ``scale``
    float32 (units of x per code step), ``zero_point`` int32 (a code) or None
    when symmetric.  Scale / zero-point shapes by granularity:

    * ``"tensor"``: ``()``;
    * ``"channel"``: ``(x.shape[axis],)`` (any axis, negative allowed);
    * ``"group"``: groups of ``group_size`` consecutive elements along the last
      dim, shape ``x.shape[:-1] + (x.shape[-1] // group_size,)``.

    Range (over finite values only; reduced in float32, or in float64 then cast
    to float32 for float64 inputs):

    * symmetric: ``scale = float32(absmax) / 127`` (float32 division);
    * affine: ``mn = min(finite min, 0)``, ``mx = max(finite max, 0)``,
      ``scale = (mx - mn) / 255`` and
      ``zero_point = int32(-128 - round(mn / scale))`` (float32 arithmetic);
    * ``scale == 0`` after that division (absmax == 0 / mx == mn, no finite
      value, or a range so tiny that the float32 division underflows) is
      replaced by ``scale = 1.0``;
    * a range too wide for float32 (affine ``mx - mn`` beyond 3.4e38, or
      float64 values beyond float32) is computed in float64 and the scale
      saturates at the largest float32 (:func:`int8_params_from_range`).

    A given ``scale`` (and ``zero_point`` for affine) is used as-is (static
    quantization; values beyond the range are clipped).

    Codes, in ``cd = compute_dtype(x.dtype)``: ``v = x.to(cd) /
    scale.to(cd)`` (true division), ``r = torch.round(v)`` (half to even);
    symmetric ``q = clamp(r, -127, 127)``; affine
    ``q = clamp(r + zero_point, -128, 127)``.  Non-finite values: ``+Inf`` gives
    the max code (127), ``-Inf`` the min code (-127 symmetric, -128 affine),
    ``NaN`` the code of 0 (0 symmetric, ``clamp(zero_point)`` affine).
    """
    q, s, zp, _, _ = _quantize_rows(x, granularity, axis, group_size, symmetric,
                                    scale, zero_point)
    return from_rows(q, x.shape, granularity, axis), s, zp


def dequantize_int8(q, scale, zero_point=None, granularity="tensor", axis=0,
                    group_size=128, dtype=torch.float32):
    """Dequantize int8 codes: ``x = (q - zero_point) * scale``.

    Computed in float64 if ``dtype`` is float64, else float32, then cast to
    ``dtype``.  ``scale`` / ``zero_point`` shapes as in :func:`quantize_int8`
    (``zero_point=None``: symmetric).  Units of ``x`` are those of ``scale``.
    """
    cd = compute_dtype(dtype)
    rows = to_rows(q, granularity, axis, group_size).to(cd)
    m = rows.shape[0]
    if zero_point is not None:
        zp = torch.as_tensor(zero_point, device=q.device).reshape(m, 1)
        rows = rows - zp.to(cd)
    s = torch.as_tensor(scale, device=q.device).reshape(m, 1)
    out = (rows * s.to(cd)).to(dtype)
    return from_rows(out, q.shape, granularity, axis)


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, granularity, axis, group_size, symmetric, scale, zero_point):
        q, s, zp, r, rows = _quantize_rows(x, granularity, axis, group_size,
                                           symmetric, scale, zero_point)
        qmin, qmax = _qrange(symmetric)
        q = from_rows(q, x.shape, granularity, axis)
        out = dequantize_int8(q, s, zp, granularity, axis, group_size, dtype=x.dtype)
        out = torch.where(torch.isnan(x), x, out)
        keep = torch.isfinite(rows) & (r >= qmin) & (r <= qmax)
        ctx.save_for_backward(from_rows(keep, x.shape, granularity, axis))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad_out, 0.0), None, None, None, None, None, None


def fake_quant_int8(x, granularity="tensor", axis=0, group_size=128,
                    symmetric=True, scale=None, zero_point=None):
    """Quantize-dequantize round trip with a straight-through gradient.

    Forward: ``dequantize_int8(*quantize_int8(x, ...), dtype=x.dtype)`` (same
    arguments and semantics as :func:`quantize_int8`), except that NaN inputs
    stay NaN in the output (+-Inf come back as the extreme codes times scale).

    Backward (straight-through estimator): ``grad_x = grad_out`` where ``x``
    is finite and the unclamped code ``round(x / scale)`` (``+ zero_point``)
    lies in ``[qmin, qmax]`` (``[-127, 127]`` symmetric, ``[-128, 127]``
    affine), 0 elsewhere.  Clipping happens with a static scale, for +-Inf,
    and (affine, very rarely) when both ends round half away from each other.
    No gradient flows to ``scale`` / ``zero_point``.
    """
    return _FakeQuantSTE.apply(x, granularity, axis, group_size, symmetric,
                               scale, zero_point)
