"""Triton kernels and launchers of the coherence loss: the ``triton`` backend
of :mod:`eitp_kernels.ops.coherence`, which validates, plans, dispatches and
registers them as the custom ops ``eitp_triton::coherence_forward`` and
``eitp_triton::coherence_backward`` (the schemas of the compiled
``eitp::`` ops: the planner's ``path`` is an argument, docs/design.md §2.2).

The matrix products are ``torch.mm`` (cuBLAS on a GPU: fp32 products run at
the library's rate, not at that of 32 x 32 Triton tiles, which are bound by
shared memory); the kernels do everything around them.

PRODUCT (and BLOCKS, by row panels of P): the raw-product form. Column
statistics of x and y with the rows split across programs (sums in float64
of v - c and (v - c)^2, c the column's first value, and the extremes, which
say whether a squared deviation overflows ACC as in the reference),
finalized per column;
P = X^T Y by one product of the raw inputs; one pass corrects it, P =
diag(rstd_x) (X^T Y - N mu_x mu_y^T) diag(rstd_y), where every row and
column of a 32 x 32 tile has its mean within ``RAW_MEAN_LIMIT`` standard
deviations of zero (else the tile is recomputed from standardized values:
no host sync), and reduces it to per-tile loss sums; one program adds them
up. Backward: one pass over P makes M (kernels/coherence.h,
CoherenceRawParams) and P's row and column sums of squares, one pass writes
the centered inputs and the affine terms, and one product per gradient adds
Yc M^T / Xc M to them. A Barlow Twins forward + backward: 7 Triton launches
and 3 products.

GRAM: standardized Z, the N x N Gram matrices by torch.mm (returned: the
backward's input), the loss from them; backward W = (Zp Zp^T) Z and a fused
epilogue per side.

Launchers: ``coherence_forward``, ``coherence_backward``.
"""
from __future__ import annotations

import functools

import torch

from eitp_kernels import _layout
from eitp_kernels._triton import acc_tl, cdiv, exact_div, launch, tl, triton_jit

GRAM, BLOCKS, PRODUCT = 0, 1, 2  # eitp_kernels.ops.coherence.plan
RAW_MEAN_LIMIT = tl.constexpr(2.0)  # csrc/kernels/coherence.h, kRawMeanLimit


@triton_jit
def _exact(v):
    """A float64 scalar argument as a float64 value (the interpreter passes
    Python floats, which Triton would round to float32)."""
    return tl.full([], v, tl.float64)


@triton_jit
def _rstd(var, eps, ACC: tl.constexpr):
    """column_rstd: 1 / sqrt(var + eps) in ACC (correctly rounded), NaN for a
    variance beyond ACC's range (var: float64)."""
    eps_acc = tl.full([], eps, ACC)
    if ACC == tl.float64:
        beyond = (var <= 1.7976931348623157e308) == 0
        rstd = 1.0 / tl.sqrt(var + eps_acc)
    else:
        beyond = (var <= 3.4028234663852886e38) == 0
        rstd = exact_div(tl.full(var.shape, 1.0, tl.float32), tl.sqrt_rn(var.to(tl.float32) + eps_acc), False)
    return tl.where(beyond, float("nan"), rstd)


# --------------------------------------------------------------------------
# Column statistics (every path)
# --------------------------------------------------------------------------


@triton_jit
def _shifted_sums(ptr, N, C, block, chunk, chunk_rows, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # sums over rows [chunk * chunk_rows, ..) of v - c and (v - c)^2 in float64, c = the column's first value
    cols = block * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = cols < C
    shift = tl.load(ptr + cols, mask=ok, other=0.0).to(tl.float64)
    s1 = tl.zeros([BLOCK_D], tl.float64)
    s2 = tl.zeros([BLOCK_D], tl.float64)
    hi = shift
    lo = shift
    for n0 in tl.range(0, chunk_rows, BLOCK_N):
        rows = chunk * chunk_rows + n0 + tl.arange(0, BLOCK_N)
        m = (rows[:, None] < N) & ok[None, :]
        v = tl.load(ptr + rows[:, None] * C + cols[None, :], mask=m, other=0.0).to(tl.float64)
        c = tl.where(m, v - shift[None, :], 0.0)
        s1 += tl.sum(c, axis=0)
        s2 += tl.sum(c * c, axis=0)
        hi = tl.maximum(hi, tl.max(tl.where(m, v, shift[None, :]), axis=0))
        lo = tl.minimum(lo, tl.min(tl.where(m, v, shift[None, :]), axis=0))
    return cols, ok, s1, s2, hi, lo


@triton_jit
def _stats_partial_kernel(
    x_ptr, y_ptr,  # (N, D), (N, D') contiguous, ACC
    part_ptr,  # (chunks, D + D', 4) float64: sum (v - c), sum (v - c)^2, max v, min v
    N, D, DP, x_blocks, col_blocks,
    chunk_rows,  # rows per chunk, a multiple of BLOCK_N
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per BLOCK_D columns (x's, then y's) and chunk_rows rows, on one grid axis.
    pid = tl.program_id(0).to(tl.int64)
    block = pid % col_blocks
    chunk = pid // col_blocks
    if block < x_blocks:
        cols, ok, s1, s2, hi, lo = _shifted_sums(x_ptr, N, D, block, chunk, chunk_rows, BLOCK_N, BLOCK_D)
        out = part_ptr + (chunk * (D + DP) + cols) * 4
    else:
        cols, ok, s1, s2, hi, lo = _shifted_sums(y_ptr, N, DP, block - x_blocks, chunk, chunk_rows, BLOCK_N,
                                                 BLOCK_D)
        out = part_ptr + (chunk * (D + DP) + D + cols) * 4
    tl.store(out, s1, mask=ok)
    tl.store(out + 1, s2, mask=ok)
    tl.store(out + 2, hi, mask=ok)
    tl.store(out + 3, lo, mask=ok)


@triton_jit
def _stats_finalize_kernel(
    x_ptr, y_ptr, part_ptr,
    mean_x_ptr, rstd_x_ptr, mean_y_ptr, rstd_y_ptr,  # (D,), (D',) ACC
    ok_ptr,  # (D + D',) int32: the column's mean within RAW_MEAN_LIMIT standard deviations of zero
    N, D, DP, COLS, chunks,
    eps: tl.float64,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = g < COLS
    is_y = g >= D
    jy = g - D
    shift = tl.where(is_y, tl.load(y_ptr + jy, mask=ok & is_y, other=0.0),
                     tl.load(x_ptr + g, mask=ok & (g < D), other=0.0)).to(tl.float64)
    s1 = tl.zeros([BLOCK], tl.float64)
    s2 = tl.zeros([BLOCK], tl.float64)
    hi = shift
    lo = shift
    stride = tl.full([], 0, tl.int64) + D + DP  # int64 offsets
    for c in tl.range(0, chunks):
        base = part_ptr + (c * stride + g) * 4
        s1 += tl.load(base, mask=ok, other=0.0)
        s2 += tl.load(base + 1, mask=ok, other=0.0)
        hi = tl.maximum(hi, tl.load(base + 2, mask=ok, other=0.0))
        lo = tl.minimum(lo, tl.load(base + 3, mask=ok, other=0.0))
    m1 = s1 / N
    var = s2 / N - m1 * m1
    var = tl.where(var < 0.0, 0.0, var)  # rounding; a NaN stays NaN
    mean = (shift + m1).to(ACC)
    # The reference squares each deviation in ACC: one beyond ACC's range makes its variance infinite (rstd NaN)
    d_hi = hi.to(ACC) - mean
    d_lo = lo.to(ACC) - mean
    var = tl.where((d_hi * d_hi == float("inf")) | (d_lo * d_lo == float("inf")), float("inf"), var)
    var = tl.where(ok, var, 1.0)  # padding columns: no 1/0 when eps == 0
    rstd = _rstd(var, eps, ACC)
    tl.store(mean_x_ptr + g, mean, mask=ok & (g < D))
    tl.store(rstd_x_ptr + g, rstd, mask=ok & (g < D))
    tl.store(mean_y_ptr + jy, mean, mask=ok & is_y)
    tl.store(rstd_y_ptr + jy, rstd, mask=ok & is_y)
    raw_ok = tl.abs(mean.to(tl.float64)) * rstd.to(tl.float64) <= RAW_MEAN_LIMIT  # NaN fails
    tl.store(ok_ptr + g, raw_ok.to(tl.int32), mask=ok)


# --------------------------------------------------------------------------
# PRODUCT / BLOCKS forward: the correction and reduction of P, the loss
# --------------------------------------------------------------------------


@triton_jit
def _reduce_kernel(
    panel_ptr,  # (rows, D') ACC: in X^T Y for P's rows [row0, row0 + rows), out P
    x_ptr, y_ptr,  # (N, D), (N, D') contiguous ACC (y_ptr == x_ptr for self-correlation)
    mx_ptr, rx_ptr, my_ptr, ry_ptr, okx_ptr, oky_ptr,
    partial_ptr,  # (tiles, 2) float64: per tile sum (R_ii - 1)^2 and sum R_ij^2, i != j
    N, D, DP, row0, rows, tiles_c, tile0,
    ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    tr = pid // tiles_c
    tc = pid % tiles_c
    ri = tr.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # rows of the panel
    gi = row0 + ri  # rows of P (columns of x)
    cj = tc.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok_i = ri < rows
    ok_j = cj < DP
    valid = ok_i[:, None] & ok_j[None, :]
    raw_ok = tl.min(tl.load(okx_ptr + gi, mask=ok_i, other=1), axis=0) * \
        tl.min(tl.load(oky_ptr + cj, mask=ok_j, other=1), axis=0)
    mxi = tl.load(mx_ptr + gi, mask=ok_i, other=0.0)
    rxi = tl.load(rx_ptr + gi, mask=ok_i, other=0.0)
    myj = tl.load(my_ptr + cj, mask=ok_j, other=0.0)
    ryj = tl.load(ry_ptr + cj, mask=ok_j, other=0.0)
    tile = panel_ptr + ri[:, None] * DP + cj[None, :]
    if raw_ok > 0:
        raw = tl.load(tile, mask=valid, other=0.0).to(tl.float64)
        centered = raw - (N * mxi.to(tl.float64))[:, None] * myj.to(tl.float64)[None, :]
        p = (centered * rxi.to(tl.float64)[:, None] * ryj.to(tl.float64)[None, :]).to(ACC)
    else:
        # a column's mean beyond the limit: the tile from standardized values
        p = tl.zeros([BLOCK, BLOCK], ACC)
        for n0 in tl.range(0, N, BLOCK_N):
            rows_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
            mi = (rows_n[:, None] < N) & ok_i[None, :]
            mj = (rows_n[:, None] < N) & ok_j[None, :]
            xv = tl.load(x_ptr + rows_n[:, None] * D + gi[None, :], mask=mi, other=0.0)
            yv = tl.load(y_ptr + rows_n[:, None] * DP + cj[None, :], mask=mj, other=0.0)
            zx = tl.where(mi, (xv - mxi[None, :]) * rxi[None, :], 0.0)
            zy = tl.where(mj, (yv - myj[None, :]) * ryj[None, :], 0.0)
            p += tl.dot(tl.trans(zx), zy, input_precision="ieee")
    tl.store(tile, p, mask=valid)
    r = exact_div(p, tl.zeros([], ACC) + N, ACC == tl.float64)
    on_diag = valid & (gi[:, None] == cj[None, :])
    off = valid & (gi[:, None] != cj[None, :])
    d_diag = tl.sum(tl.sum(tl.where(on_diag, ((r - 1.0) * (r - 1.0)).to(tl.float64), 0.0), axis=1), axis=0)
    d_off = tl.sum(tl.sum(tl.where(off, (r * r).to(tl.float64), 0.0), axis=1), axis=0)
    tl.store(partial_ptr + (tile0 + pid) * 2, d_diag)
    tl.store(partial_ptr + (tile0 + pid) * 2 + 1, d_off)


@triton_jit
def _loss_kernel(partial_ptr, loss_ptr, tiles, a: tl.float64, b: tl.float64,
                 SQUARED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # the tiles' sums in a fixed order; L2 = a diag + b off, its sqrt unless SQUARED
    a, b = _exact(a), _exact(b)
    d_diag = tl.zeros([BLOCK], tl.float64)
    d_off = tl.zeros([BLOCK], tl.float64)
    for t0 in tl.range(0, tiles, BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        d_diag += tl.load(partial_ptr + t * 2, mask=t < tiles, other=0.0)
        d_off += tl.load(partial_ptr + t * 2 + 1, mask=t < tiles, other=0.0)
    l2 = a * tl.sum(d_diag, axis=0) + b * tl.sum(d_off, axis=0)
    if not SQUARED:
        l2 = tl.sqrt(l2)
    tl.store(loss_ptr, l2.to(ACC))


# --------------------------------------------------------------------------
# PRODUCT backward: M, P's sums, the centered operands and affine terms
# --------------------------------------------------------------------------


@triton_jit
def _factors(grad_ptr, loss_ptr, N, b, SQUARED: tl.constexpr, SYMMETRIC: tl.constexpr):
    """(scale, wcoef) of BackwardFactors in float64: scale = k / N (x2 for
    self-correlation), k = grad (or grad / (2L)); wcoef = 2b / N."""
    k = tl.load(grad_ptr).to(tl.float64)
    if not SQUARED:
        k = k / (2.0 * tl.load(loss_ptr).to(tl.float64))
    if SYMMETRIC:
        k = 2.0 * k
    return k / N, 2.0 * b / N


@triton_jit
def _diag_coefficient(p_ptr, cols, has_diag, N, DP, a, b, ACC: tl.constexpr):
    """(c_j, R_jj) in float64 for the columns with a diagonal entry (0 elsewhere):
    R_jj = P_jj / N in ACC as the forward, c_j = 2a (R_jj - 1) - 2b R_jj."""
    pd = tl.load(p_ptr + cols * DP + cols, mask=has_diag, other=0.0)
    r = exact_div(pd, tl.zeros([], ACC) + N, ACC == tl.float64).to(tl.float64)
    c = 2.0 * a * (r - 1.0) - 2.0 * b * r
    return tl.where(has_diag, c, 0.0), tl.where(has_diag, r, 0.0)


@triton_jit
def _operands_kernel(
    p_ptr, m_ptr,  # (D, D') ACC: P in, M out
    rx_ptr, ry_ptr, grad_ptr, loss_ptr,
    row_sq_ptr,  # (tiles_c, D) float64: per tile column, sum_k P_jk^2 over the tile
    col_sq_ptr,  # (tiles_r, D') float64 (cross-correlation only)
    N, D, DP, M_DIAG, tiles_c,
    a: tl.float64, b: tl.float64,
    SQUARED: tl.constexpr, SYMMETRIC: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    # M_jk = alpha_j P_jk rstd_y_k + [j == k < m] beta_j rstd_y_j, alpha_j = rstd_x_j scale wcoef,
    # beta_j = rstd_x_j scale c_j (kernels/coherence.h)
    a, b = _exact(a), _exact(b)
    pid = tl.program_id(0)
    tr = pid // tiles_c
    tc = pid % tiles_c
    ci = tr.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cj = tc.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok_i = ci < D
    ok_j = cj < DP
    valid = ok_i[:, None] & ok_j[None, :]
    scale, wcoef = _factors(grad_ptr, loss_ptr, N, b, SQUARED, SYMMETRIC)
    rxi = tl.load(rx_ptr + ci, mask=ok_i, other=0.0)
    ryj = tl.load(ry_ptr + cj, mask=ok_j, other=0.0)
    p = tl.load(p_ptr + ci[:, None] * DP + cj[None, :], mask=valid, other=0.0)
    alpha = (rxi.to(tl.float64) * scale * wcoef).to(ACC)
    m = alpha[:, None] * p * ryj[None, :]
    has_diag = ci < M_DIAG
    c, _r = _diag_coefficient(p_ptr, ci, has_diag, N, DP, a, b, ACC)
    beta = (rxi.to(tl.float64) * scale * c).to(ACC)
    ryi = tl.load(ry_ptr + ci, mask=has_diag, other=0.0)
    m += tl.where(has_diag[:, None] & (ci[:, None] == cj[None, :]), (beta * ryi)[:, None], 0.0)
    tl.store(m_ptr + ci[:, None] * DP + cj[None, :], m, mask=valid)
    sq = tl.where(valid, p.to(tl.float64) * p.to(tl.float64), 0.0)
    tl.store(row_sq_ptr + tc.to(tl.int64) * D + ci, tl.sum(sq, axis=1), mask=ok_i)
    if not SYMMETRIC:
        tl.store(col_sq_ptr + tr.to(tl.int64) * DP + cj, tl.sum(sq, axis=0), mask=ok_j)


@triton_jit
def _center_side(src_ptr, mean_ptr, rstd_ptr, sq_ptr, tiles, C, p_ptr, DP, M_DIAG, centered_ptr, out_ptr,
                 N, block, row_block, a, b, scale, wcoef,
                 ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = block * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = cols < C
    sq = tl.zeros([BLOCK_D], tl.float64)
    stride = tl.full([], 0, tl.int64) + C  # int64 offsets
    for t in tl.range(0, tiles):
        sq += tl.load(sq_ptr + t * stride + cols, mask=ok, other=0.0)
    c, r = _diag_coefficient(p_ptr, cols, ok & (cols < M_DIAG), N, DP, a, b, ACC)
    rs = tl.load(rstd_ptr + cols, mask=ok, other=0.0).to(tl.float64)
    mean_dzz = scale * (wcoef * sq / N + c * r)
    shift = (-rs * mean_dzz * rs).to(ACC)  # delta_j rstd_j
    mean = tl.load(mean_ptr + cols, mask=ok, other=0.0)
    rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
    m = (rows[:, None] < N) & ok[None, :]
    offsets = rows[:, None] * C + cols[None, :]
    dev = tl.load(src_ptr + offsets, mask=m, other=0.0) - mean[None, :]
    tl.store(centered_ptr + offsets, dev, mask=m)
    tl.store(out_ptr + offsets, shift[None, :] * dev, mask=m)


@triton_jit
def _center_kernel(
    x_ptr, y_ptr, p_ptr, mx_ptr, rx_ptr, my_ptr, ry_ptr, grad_ptr, loss_ptr, row_sq_ptr, col_sq_ptr,
    cx_ptr, cy_ptr, ox_ptr, oy_ptr,  # out: x - mu_x, y - mu_y and the affine terms shift * (x - mu)
    N, D, DP, M_DIAG, x_blocks, col_blocks, tiles_r, tiles_c,
    a: tl.float64, b: tl.float64,
    SQUARED: tl.constexpr, SYMMETRIC: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per BLOCK_N x BLOCK_D block of x (column blocks below x_blocks), then of y, on one grid axis.
    a, b = _exact(a), _exact(b)
    pid = tl.program_id(0).to(tl.int64)
    block = pid % col_blocks
    row_block = pid // col_blocks
    scale, wcoef = _factors(grad_ptr, loss_ptr, N, b, SQUARED, SYMMETRIC)
    if block < x_blocks:
        _center_side(x_ptr, mx_ptr, rx_ptr, row_sq_ptr, tiles_c, D, p_ptr, DP, M_DIAG, cx_ptr, ox_ptr,
                     N, block, row_block, a, b, scale, wcoef, ACC, BLOCK_N, BLOCK_D)
    else:
        _center_side(y_ptr, my_ptr, ry_ptr, col_sq_ptr, tiles_r, DP, p_ptr, DP, M_DIAG, cy_ptr, oy_ptr,
                     N, block - x_blocks, row_block, a, b, scale, wcoef, ACC, BLOCK_N, BLOCK_D)


# --------------------------------------------------------------------------
# GRAM: standardized copies and the backward epilogue
# --------------------------------------------------------------------------


@triton_jit
def _standardize_kernel(
    x_ptr, mean_ptr, rstd_ptr, z_ptr,  # x (N, D) contiguous ACC; z (N, D) ACC
    N, D, col_blocks,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = (pid // col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = (pid % col_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    v = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    mean = tl.load(mean_ptr + cols, mask=cols < D, other=0.0)
    rstd = tl.load(rstd_ptr + cols, mask=cols < D, other=0.0)
    tl.store(z_ptr + rows[:, None] * D + cols[None, :], (v - mean[None, :]) * rstd[None, :], mask=mask)


@triton_jit
def _backward_epilogue_kernel(
    z_ptr, zp_ptr,  # (N, D) this side, (N, D') partner: contiguous ACC (zp_ptr == z_ptr for self)
    w_ptr,  # (N, D) in: Zp (Zp^T Z); out: dx (ACC), contiguous
    rstd_ptr, grad_ptr, loss_ptr,
    N, D, DP, M_DIAG,
    a: tl.float64, b: tl.float64,
    SQUARED: tl.constexpr, SYMMETRIC: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # dz_j = scale ((2b/N) w_j + c_j zp_j), c_j = 2a(R_jj - 1) - 2b R_jj (j < M_DIAG),
    # dx = rstd (dz - mean_n dz - z mean_n(dz z)). One program per BLOCK_D columns.
    a, b = _exact(a), _exact(b)
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    has_diag = cols < M_DIAG
    scale64, wcoef64 = _factors(grad_ptr, loss_ptr, N, b, SQUARED, SYMMETRIC)
    scale = scale64.to(ACC)
    wcoef = wcoef64.to(ACC)
    rdiag = tl.zeros([BLOCK_D], ACC)
    for n0 in tl.range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        md = (rows[:, None] < N) & has_diag[None, :]
        zv = tl.load(z_ptr + rows[:, None] * D + cols[None, :], mask=md, other=0.0)
        pv = tl.load(zp_ptr + rows[:, None] * DP + cols[None, :], mask=md, other=0.0)
        rdiag += tl.sum(zv * pv, axis=0)
    rdiag = exact_div(rdiag, tl.zeros([], ACC) + N, ACC == tl.float64)
    c = tl.where(has_diag, (2.0 * a * (rdiag - 1.0) - 2.0 * b * rdiag).to(ACC), 0.0)
    s_dz = tl.zeros([BLOCK_D], ACC)
    s_dzz = tl.zeros([BLOCK_D], ACC)
    for n0 in tl.range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        m = (rows[:, None] < N) & col_ok[None, :]
        md = (rows[:, None] < N) & has_diag[None, :]
        wv = tl.load(w_ptr + rows[:, None] * D + cols[None, :], mask=m, other=0.0)
        zv = tl.load(z_ptr + rows[:, None] * D + cols[None, :], mask=m, other=0.0)
        pv = tl.load(zp_ptr + rows[:, None] * DP + cols[None, :], mask=md, other=0.0)
        dz = tl.where(m, scale * (wcoef * wv + c[None, :] * pv), 0.0)
        tl.store(w_ptr + rows[:, None] * D + cols[None, :], dz, mask=m)
        s_dz += tl.sum(dz, axis=0)
        s_dzz += tl.sum(dz * zv, axis=0)
    mdz = exact_div(s_dz, tl.zeros([], ACC) + N, ACC == tl.float64)
    mdzz = exact_div(s_dzz, tl.zeros([], ACC) + N, ACC == tl.float64)
    rstd = tl.load(rstd_ptr + cols, mask=col_ok, other=0.0)
    for n0 in tl.range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        m = (rows[:, None] < N) & col_ok[None, :]
        dz = tl.load(w_ptr + rows[:, None] * D + cols[None, :], mask=m, other=0.0)
        zv = tl.load(z_ptr + rows[:, None] * D + cols[None, :], mask=m, other=0.0)
        tl.store(w_ptr + rows[:, None] * D + cols[None, :],
                 rstd[None, :] * (dz - mdz[None, :] - zv * mdzz[None, :]), mask=m)


# --------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------

_STATS_ROWS, _MAX_CHUNKS, _BLOCK_N, _BLOCK_D = 256, 4096, 64, 32
_TILE = 32
_LOSS_BLOCK = 256
_PANEL_ROWS = 256  # BLOCKS: rows of P per product


def _acc_inputs(x, y):
    """x and y contiguous in the accumulation dtype (the products' operands);
    y is x for self-correlation."""
    acc = _layout.compute_dtype(x.dtype)
    xa = x.to(acc).contiguous()
    return xa, (xa if y is None else y.to(acc).contiguous())


class _ForwardLayout:
    """The grids and sizes of a forward (the column statistics; on BLOCKS/PRODUCT the panels of P)
    that depend on the shapes and path alone (x (n, d), y (n, dp), or x again for self-correlation):
    computed once per (n, d, dp, self_corr, path), where :func:`_forward_layout` caches it."""

    __slots__ = ("chunk_rows", "chunks", "x_blocks", "col_blocks", "part_shape", "finalize_grid", "tiles_c",
                 "tiles", "panel_rows", "panels")

    def __init__(self, n: int, d: int, dp: int, self_corr: bool, path: int):
        stats_dp = 0 if self_corr else dp  # the statistics of x, then y's (none for self-correlation)
        # chunks of _STATS_ROWS rows, or more where that would make over _MAX_CHUNKS partials per column
        self.chunk_rows = cdiv(max(_STATS_ROWS, cdiv(n, _MAX_CHUNKS)), _BLOCK_N) * _BLOCK_N
        self.chunks = cdiv(n, self.chunk_rows)
        self.x_blocks = cdiv(d, _BLOCK_D)
        self.col_blocks = self.x_blocks + cdiv(stats_dp, _BLOCK_D)
        self.part_shape = (self.chunks, d + stats_dp, 4)
        self.finalize_grid = (cdiv(d + stats_dp, _LOSS_BLOCK),)
        # P's row panels: (first row, rows, grid, first tile); a panel of every row of P is the whole
        # product buffer and x itself (no views made). None on GRAM: the loop over d would specialise
        # a symbolic d while torch.compile traces, where GRAM's forward otherwise keeps it symbolic.
        self.tiles_c = cdiv(dp, _TILE)
        self.tiles = cdiv(d, _TILE) * self.tiles_c
        if path == GRAM:
            self.panel_rows, self.panels = 0, ()
            return
        self.panel_rows = d if path == PRODUCT else min(d, _PANEL_ROWS)
        panels = []
        for row0 in range(0, d, self.panel_rows):
            rows = min(self.panel_rows, d - row0)
            panels.append((row0, rows, (cdiv(rows, _TILE) * self.tiles_c,), (row0 // _TILE) * self.tiles_c))
        self.panels = tuple(panels)


_cached_forward_layout = functools.lru_cache(maxsize=64)(_ForwardLayout)


def _forward_layout(n, d, dp, self_corr: bool, path: int) -> _ForwardLayout:
    """The shapes' :class:`_ForwardLayout`, cached for plain integers (symbolic sizes while
    torch.compile traces: computed each time, no hash that would specialise them)."""
    if type(n) is int and type(d) is int and type(dp) is int and type(path) is int:
        return _cached_forward_layout(n, d, dp, self_corr, path)
    return _ForwardLayout(n, d, dp, self_corr, path)


def _column_stats(xa, ya, self_corr, eps, layout):
    """mean, rstd of x and y (y's: empty for self-correlation) and the per-column raw flags."""
    n, d = xa.shape
    dp = 0 if self_corr else ya.shape[1]
    part = xa.new_empty(layout.part_shape, dtype=torch.float64)
    launch(_stats_partial_kernel, (layout.col_blocks * layout.chunks,), xa, ya, part, n, d, dp, layout.x_blocks,
           layout.col_blocks, layout.chunk_rows, BLOCK_N=_BLOCK_N, BLOCK_D=_BLOCK_D)
    mean_x, rstd_x = xa.new_empty(d), xa.new_empty(d)
    mean_y, rstd_y = xa.new_empty(dp), xa.new_empty(dp)
    raw_ok = xa.new_empty(d + dp, dtype=torch.int32)
    launch(_stats_finalize_kernel, layout.finalize_grid, xa, ya, part, mean_x, rstd_x, mean_y,
           rstd_y, raw_ok, n, d, dp, d + dp, layout.chunks, float(eps), ACC=acc_tl(xa.dtype), BLOCK=_LOSS_BLOCK)
    return mean_x, rstd_x, mean_y, rstd_y, raw_ok


def _standardize(xa, mean, rstd):
    n, d = xa.shape
    z = torch.empty_like(xa)
    col_blocks = cdiv(d, _BLOCK_D)
    launch(_standardize_kernel, (cdiv(n, _BLOCK_N) * col_blocks,), xa, mean, rstd, z, n, d, col_blocks,
           BLOCK_N=_BLOCK_N, BLOCK_D=_BLOCK_D)
    return z


def _loss_from_gram(zx, zy, a, b, squared):
    """||R||_F^2 = <Zx Zx^T, Zy Zy^T>_F / N^2 and R_ii = mean_n zx_i zy_i (csrc/bindings/coherence.cpp, gram_sums)."""
    n = zx.shape[0]
    m = min(zx.shape[1], zy.shape[1])
    grams = zx.new_empty((1 if zy is zx else 2, n, n))  # kept for the backward
    gx, gy = torch.mm(zx, zx.t(), out=grams[0]), (grams[0] if zy is zx else torch.mm(zy, zy.t(), out=grams[1]))
    total = (gx * gy).sum(dtype=torch.float64) / (n * n)
    rdiag = (zx[:, :m] * zy[:, :m]).sum(0) / n
    diag = ((rdiag - 1.0) ** 2).sum(dtype=torch.float64)
    off = total - (rdiag * rdiag).sum(dtype=torch.float64)
    l2 = a * diag + b * off
    return (l2 if squared else torch.sqrt(l2)).to(zx.dtype), grams


def _loss_from_products(xa, ya, stats, a, b, squared, path, layout):
    """P = X^T Y corrected and reduced (PRODUCT: whole, returned; BLOCKS: by row panels)."""
    n, d = xa.shape
    dp = ya.shape[1]
    mean_x, rstd_x, mean_y, rstd_y, raw_ok = stats
    self_corr = mean_y.numel() == 0
    my, ry = (mean_x, rstd_x) if self_corr else (mean_y, rstd_y)
    ok_y = raw_ok if self_corr else raw_ok[d:]
    acc = acc_tl(xa.dtype)
    partials = xa.new_empty((layout.tiles, 2), dtype=torch.float64)
    product = xa.new_empty((layout.panel_rows, dp))
    for row0, rows, grid, tile0 in layout.panels:
        if rows == d:  # one panel: P whole
            panel = product
            torch.mm(xa.t(), ya, out=panel)
        else:
            panel = product[:rows]
            torch.mm(xa[:, row0:row0 + rows].t(), ya, out=panel)
        launch(_reduce_kernel, grid, panel, xa, ya, mean_x, rstd_x, my, ry, raw_ok, ok_y, partials,
               n, d, dp, row0, rows, layout.tiles_c, tile0, ACC=acc, BLOCK=_TILE, BLOCK_N=_TILE)
    loss = xa.new_empty(())
    launch(_loss_kernel, (1,), partials, loss, layout.tiles, float(a), float(b), SQUARED=squared, ACC=acc,
           BLOCK=_LOSS_BLOCK)
    return loss, (product if path == PRODUCT else xa.new_empty((0,)))


def coherence_forward(x: torch.Tensor, y: torch.Tensor | None, diag_weight: float, offdiag_weight: float,
                      squared: bool, eps: float, path: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    xa, ya = _acc_inputs(x, y)
    n, d = xa.shape
    layout = _forward_layout(n, d, ya.shape[1], y is None, path)
    stats = _column_stats(xa, ya, y is None, eps, layout)
    mean_x, rstd_x, mean_y, rstd_y, _raw_ok = stats
    if path == GRAM:
        zx = _standardize(xa, mean_x, rstd_x)
        zy = zx if y is None else _standardize(ya, mean_y, rstd_y)
        loss, product = _loss_from_gram(zx, zy, diag_weight, offdiag_weight, squared)
    else:
        loss, product = _loss_from_products(xa, ya, stats, diag_weight, offdiag_weight, squared, path, layout)
    return loss, mean_x, rstd_x, mean_y, rstd_y, product


def _backward_gram(grad, loss, xa, ya, self_corr, mean_x, rstd_x, mean_y, rstd_y, grams, a, b, squared):
    n, d = xa.shape
    zx = _standardize(xa, mean_x, rstd_x)
    zy = zx if self_corr else _standardize(ya, mean_y, rstd_y)
    sides = [(zx, zy, rstd_x)] if self_corr else [(zx, zy, rstd_x), (zy, zx, rstd_y)]
    m_diag = min(zx.shape[1], zy.shape[1])
    out = []
    for side, (z, zp, rstd) in enumerate(sides):
        # Zp (Zp^T Z) by the N x N association, with the forward's Zp Zp^T (none kept after BLOCKS)
        gram = torch.mm(zp, zp.t()) if grams.numel() == 0 else grams[len(sides) - 1 - side]
        w = torch.mm(gram, z)
        launch(_backward_epilogue_kernel, (cdiv(z.shape[1], _BLOCK_D),), z, zp, w, rstd, grad, loss,
               n, z.shape[1], zp.shape[1], m_diag, float(a), float(b), SQUARED=squared, SYMMETRIC=self_corr,
               ACC=acc_tl(z.dtype), BLOCK_N=_BLOCK_N, BLOCK_D=_BLOCK_D)
        out.append(w)
    return out


def _backward_product(grad, loss, xa, ya, self_corr, mean_x, rstd_x, mean_y, rstd_y, product, a, b, squared):
    n, d = xa.shape
    dp = ya.shape[1]
    my, ry = (mean_x, rstd_x) if self_corr else (mean_y, rstd_y)
    tiles_r, tiles_c = cdiv(d, _TILE), cdiv(dp, _TILE)
    m = torch.empty_like(product)
    row_sq = xa.new_empty((tiles_c, d), dtype=torch.float64)
    col_sq = xa.new_empty((0 if self_corr else tiles_r, dp), dtype=torch.float64)
    acc = acc_tl(xa.dtype)
    launch(_operands_kernel, (tiles_r * tiles_c,), product, m, rstd_x, ry, grad, loss, row_sq, col_sq,
           n, d, dp, min(d, dp), tiles_c, float(a), float(b), SQUARED=squared, SYMMETRIC=self_corr, ACC=acc,
           BLOCK=_TILE)
    cx, ox = torch.empty_like(xa), torch.empty_like(xa)
    cy, oy = (cx, ox) if self_corr else (torch.empty_like(ya), torch.empty_like(ya))
    x_blocks = cdiv(d, _BLOCK_D)
    col_blocks = x_blocks + (0 if self_corr else cdiv(dp, _BLOCK_D))
    launch(_center_kernel, (col_blocks * cdiv(n, _BLOCK_N),), xa, ya, product, mean_x, rstd_x, my,
           ry, grad, loss, row_sq, col_sq, cx, cy, ox, oy, n, d, dp, min(d, dp), x_blocks, col_blocks, tiles_r,
           tiles_c,
           float(a), float(b), SQUARED=squared, SYMMETRIC=self_corr, ACC=acc, BLOCK_N=_BLOCK_N, BLOCK_D=_BLOCK_D)
    ox.addmm_(cy, m.t())  # dx = shift_x (x - mu_x) + (y - mu_y) M^T
    if self_corr:
        return [ox]
    oy.addmm_(cx, m)  # dy = shift_y (y - mu_y) + (x - mu_x) M
    return [ox, oy]


def coherence_backward(grad: torch.Tensor, loss: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
                       mean_x: torch.Tensor, rstd_x: torch.Tensor, mean_y: torch.Tensor, rstd_y: torch.Tensor,
                       product: torch.Tensor, diag_weight: float, offdiag_weight: float, squared: bool,
                       path: int) -> tuple[torch.Tensor, torch.Tensor]:
    xa, ya = _acc_inputs(x, y)
    acc = xa.dtype
    grad = grad.to(acc).reshape(1)
    loss = loss.to(acc).reshape(1)
    args = (grad, loss, xa, ya, y is None, mean_x, rstd_x, mean_y, rstd_y)
    if path == PRODUCT:
        grads = _backward_product(*args, product.to(acc).contiguous(), diag_weight, offdiag_weight, squared)
    else:  # GRAM, or BLOCKS (the forward kept nothing): the N x N association
        grads = _backward_gram(*args, product.to(acc), diag_weight, offdiag_weight, squared)
    dx = grads[0].to(x.dtype)
    return dx, (x.new_empty((0,)) if y is None else grads[1].to(y.dtype))
