"""Triton kernels and launchers of the coherence loss: the ``triton`` backend
of :mod:`eitp_kernels.ops.coherence`, which validates, dispatches and
registers them as the custom ops ``eitp_triton::coherence_forward`` and
``eitp_triton::coherence_backward``.

Forward: column statistics (reads x twice), then one program per
(BLOCK_D x BLOCK_D) tile on or above the diagonal reads its column blocks of x
and y, normalizes them on the fly, multiplies them with tl.dot and reduces the
tile straight to one partial sum: no Z and no R in memory. Backward: Z
materialized, Gram and W products as Triton GEMMs, then a fused epilogue.

Launchers: ``coherence_forward``, ``coherence_backward`` (the arguments and
results of ``torch.ops.eitp.coherence_forward`` / ``coherence_backward``
without the kept product).
"""
from __future__ import annotations

import torch

from eitp_kernels import _layout
from eitp_kernels._triton import acc_tl, exact_div, launch, tl, triton, triton_jit


@triton_jit
def _col_stats_kernel(
    x_ptr,  # (N, D) any float dtype, row stride stride_n, unit column stride
    mean_ptr,  # (D,) ACC
    rstd_ptr,  # (D,) ACC
    N, D, stride_n,
    eps: tl.float64,  # fp64 parameter, rounded to ACC in the kernel (an unannotated float is .f32)
    ACC: tl.constexpr,  # tl.float32 or tl.float64
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program per BLOCK_D columns: mean, then the biased variance of the
    # deviations (two passes over x, as the reference), rstd = 1 / sqrt(var + eps).
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    # Sums in float64 on every backend (_layout.column_rstd): finite inputs
    # never overflow them.
    total = tl.zeros([BLOCK_D], tl.float64)
    for n0 in tl.range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (rows[:, None] < N) & col_ok[None, :]
        v = tl.load(x_ptr + rows[:, None] * stride_n + cols[None, :], mask=mask, other=0.0).to(ACC)
        total += tl.sum(v.to(tl.float64), axis=0)
    mean = (total / N).to(ACC)
    sq = tl.zeros([BLOCK_D], tl.float64)
    for n0 in tl.range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (rows[:, None] < N) & col_ok[None, :]
        v = tl.load(x_ptr + rows[:, None] * stride_n + cols[None, :], mask=mask, other=0.0).to(ACC)
        dev = tl.where(mask, v - mean[None, :], 0.0)
        sq += tl.sum((dev * dev).to(tl.float64), axis=0)  # squared in ACC, summed in float64, as the reference
    var = tl.where(col_ok, sq / N, 1.0)  # padding columns: no 1/0 when eps == 0
    eps_acc = tl.full([], eps, ACC)
    if ACC == tl.float64:
        beyond = (var <= 1.7976931348623157e308) == 0
        rstd = 1.0 / tl.sqrt(var + eps_acc)  # fp64 sqrt and division are correctly rounded
    else:
        beyond = (var <= 3.4028234663852886e38) == 0
        # not the approximate fp32 sqrt and division
        rstd = exact_div(tl.full([BLOCK_D], 1.0, tl.float32), tl.sqrt_rn(var.to(tl.float32) + eps_acc), False)
    rstd = tl.where(beyond, float("nan"), rstd)  # no standardization in ACC: NaN loss, as the reference
    tl.store(mean_ptr + cols, mean, mask=col_ok)
    tl.store(rstd_ptr + cols, rstd, mask=col_ok)


@triton_jit
def _corr_tile_kernel(
    x_ptr, y_ptr,  # (N, D) and (N, D'), row strides sx, sy (y_ptr == x_ptr for self-correlation)
    mx_ptr, rx_ptr, my_ptr, ry_ptr,  # column statistics, ACC
    partial_ptr,  # (tiles_i * tiles_j, 2) ACC: per tile sum (R_ii - 1)^2 and weighted sum R_ij^2, i != j
    N, D, DP, sx, sy, tiles_j,
    skip_lower,  # 1 for self-correlation (tiles below the diagonal do nothing), else 0
    SYMMETRIC: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program per BLOCK_D x BLOCK_D tile of R: normalizes its column blocks
    # of x and y on the fly, multiplies them with tl.dot over the batch, and
    # reduces the tile straight to two numbers. Self-correlation: tiles below
    # the diagonal do nothing, off-diagonal entries of the others count twice.
    pid = tl.program_id(0)
    ti = pid // tiles_j
    tj = pid % tiles_j
    d_diag = tl.zeros([], ACC)
    d_off = tl.zeros([], ACC)
    if tj >= ti * skip_lower:
        ci = ti.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        cj = tj.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        ok_i = ci < D
        ok_j = cj < DP
        mxi = tl.load(mx_ptr + ci, mask=ok_i, other=0.0)
        rxi = tl.load(rx_ptr + ci, mask=ok_i, other=0.0)
        myj = tl.load(my_ptr + cj, mask=ok_j, other=0.0)
        ryj = tl.load(ry_ptr + cj, mask=ok_j, other=0.0)
        acc = tl.zeros([BLOCK_D, BLOCK_D], ACC)
        for n0 in tl.range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
            row_ok = rows < N
            mi = row_ok[:, None] & ok_i[None, :]
            mj = row_ok[:, None] & ok_j[None, :]
            xv = tl.load(x_ptr + rows[:, None] * sx + ci[None, :], mask=mi, other=0.0).to(ACC)
            yv = tl.load(y_ptr + rows[:, None] * sy + cj[None, :], mask=mj, other=0.0).to(ACC)
            zx = tl.where(mi, (xv - mxi[None, :]) * rxi[None, :], 0.0)
            zy = tl.where(mj, (yv - myj[None, :]) * ryj[None, :], 0.0)
            acc += tl.dot(tl.trans(zx), zy, input_precision="ieee")
        r = exact_div(acc, tl.zeros([], ACC) + N, ACC == tl.float64)
        valid = ok_i[:, None] & ok_j[None, :]
        on_diag = valid & (ci[:, None] == cj[None, :])
        d_diag = tl.sum(tl.sum(tl.where(on_diag, (r - 1.0) * (r - 1.0), 0.0), axis=1), axis=0)
        if SYMMETRIC:
            off = valid & (cj[None, :] > ci[:, None])
            d_off = 2.0 * tl.sum(tl.sum(tl.where(off, r * r, 0.0), axis=1), axis=0)
        else:
            off = valid & (cj[None, :] != ci[:, None])
            d_off = tl.sum(tl.sum(tl.where(off, r * r, 0.0), axis=1), axis=0)
    tl.store(partial_ptr + pid * 2, d_diag)
    tl.store(partial_ptr + pid * 2 + 1, d_off)


@triton_jit
def _tile(col_blocks, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(row indices, column indices) of this program's BLOCK_R x BLOCK_C tile: one
    flat axis of row blocks x column blocks (CUDA's grid axes 1 and 2 stop at 65535)."""
    pid = tl.program_id(0).to(tl.int64)
    return ((pid // col_blocks) * BLOCK_R + tl.arange(0, BLOCK_R),
            (pid % col_blocks) * BLOCK_C + tl.arange(0, BLOCK_C))


@triton_jit
def _standardize_kernel(
    x_ptr, mean_ptr, rstd_ptr, z_ptr,  # x (N, D) row stride sx; z (N, D) contiguous ACC
    N, D, sx,
    col_blocks,  # cdiv(D, BLOCK_D)
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows, cols = _tile(col_blocks, BLOCK_N, BLOCK_D)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    v = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + cols, mask=cols < D, other=0.0)
    rstd = tl.load(rstd_ptr + cols, mask=cols < D, other=0.0)
    tl.store(z_ptr + rows[:, None] * D + cols[None, :], (v - mean[None, :]) * rstd[None, :], mask=mask)


@triton_jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr,  # C (M, P) = A (M, K) @ B (K, P); any strides (transposes are free)
    M, P, K,
    sam, sak, sbk, sbp, scm, scp,
    p_blocks,  # cdiv(P, BLOCK_P)
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rm, rp = _tile(p_blocks, BLOCK_M, BLOCK_P)
    acc = tl.zeros([BLOCK_M, BLOCK_P], ACC)
    for k0 in tl.range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        a = tl.load(a_ptr + rm[:, None] * sam + rk[None, :] * sak, mask=(rm[:, None] < M) & (rk[None, :] < K),
                    other=0.0)
        b = tl.load(b_ptr + rk[:, None] * sbk + rp[None, :] * sbp, mask=(rk[:, None] < K) & (rp[None, :] < P),
                    other=0.0)
        acc += tl.dot(a, b, input_precision="ieee")
    tl.store(c_ptr + rm[:, None] * scm + rp[None, :] * scp, acc, mask=(rm[:, None] < M) & (rp[None, :] < P))


@triton_jit
def _backward_epilogue_kernel(
    z_ptr, zp_ptr,  # (N, D) this side, (N, D') partner: contiguous ACC (zp_ptr == z_ptr for self)
    w_ptr,  # (N, D) in: Zp (Zp^T Z); out: dx (ACC), contiguous
    rstd_ptr, grad_ptr, loss_ptr,
    coef_ptr,  # (2,) ACC: diag_weight, offdiag_weight (in ACC precision, not as fp32 scalars)
    N, D, DP, M_DIAG,
    SQUARED: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # dz_j = scale ((2b/N) w_j + c_j zp_j), c_j = 2a(R_jj - 1) - 2b R_jj (j < M_DIAG),
    # scale = k / N (x2 self), k = grad (squared) or grad / (2L);
    # dx = rstd (dz - mean_n dz - z mean_n(dz z)). One program per BLOCK_D columns.
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    has_diag = cols < M_DIAG
    g = tl.load(grad_ptr).to(ACC)
    a = tl.load(coef_ptr)
    b = tl.load(coef_ptr + 1)
    if SQUARED:
        k = g
    else:
        k = exact_div(g, 2.0 * tl.load(loss_ptr).to(ACC), ACC == tl.float64)
    if SYMMETRIC:
        scale = exact_div(2.0 * k, tl.zeros([], ACC) + N, ACC == tl.float64)
    else:
        scale = exact_div(k, tl.zeros([], ACC) + N, ACC == tl.float64)
    wcoef = exact_div(2.0 * b, tl.zeros([], ACC) + N, ACC == tl.float64)
    rdiag = tl.zeros([BLOCK_D], ACC)
    for n0 in tl.range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        md = (rows[:, None] < N) & has_diag[None, :]
        zv = tl.load(z_ptr + rows[:, None] * D + cols[None, :], mask=md, other=0.0)
        pv = tl.load(zp_ptr + rows[:, None] * DP + cols[None, :], mask=md, other=0.0)
        rdiag += tl.sum(zv * pv, axis=0)
    rdiag = exact_div(rdiag, tl.zeros([], ACC) + N, ACC == tl.float64)
    c = tl.where(has_diag, 2.0 * a * (rdiag - 1.0) - 2.0 * b * rdiag, 0.0)
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


_STATS_BLOCK_N, _STATS_BLOCK_D = 64, 32
_TILE_BLOCK_N, _TILE_BLOCK_D = 32, 32
_MM_BLOCK = 32


def _column_stats(x2, eps):
    n, d = x2.shape
    acc = _layout.compute_dtype(x2.dtype)
    mean = torch.empty(d, dtype=acc, device=x2.device)
    rstd = torch.empty(d, dtype=acc, device=x2.device)
    launch(_col_stats_kernel, (triton.cdiv(d, _STATS_BLOCK_D),), x2, mean, rstd, n, d, x2.stride(0), float(eps),
           ACC=acc_tl(acc), BLOCK_N=_STATS_BLOCK_N, BLOCK_D=_STATS_BLOCK_D)
    return mean, rstd


def _standardize(x2, mean, rstd):
    n, d = x2.shape
    z = torch.empty((n, d), dtype=mean.dtype, device=x2.device)
    col_blocks = triton.cdiv(d, _STATS_BLOCK_D)
    launch(_standardize_kernel, (triton.cdiv(n, _STATS_BLOCK_N) * col_blocks,), x2, mean, rstd, z, n, d,
           x2.stride(0), col_blocks, ACC=acc_tl(mean.dtype), BLOCK_N=_STATS_BLOCK_N, BLOCK_D=_STATS_BLOCK_D)
    return z


def _matmul(a, b):
    m, k = a.shape
    p = b.shape[1]
    c = torch.empty((m, p), dtype=a.dtype, device=a.device)
    p_blocks = triton.cdiv(p, _MM_BLOCK)
    launch(_matmul_kernel, (triton.cdiv(m, _MM_BLOCK) * p_blocks,), a, b, c, m, p, k, a.stride(0), a.stride(1),
           b.stride(0), b.stride(1), c.stride(0), c.stride(1), p_blocks,
           ACC=acc_tl(a.dtype), BLOCK_M=_MM_BLOCK, BLOCK_P=_MM_BLOCK, BLOCK_K=_MM_BLOCK)
    return c


def _backward_epilogue(z, zp, w, rstd, grad, loss, m_diag, coef, squared, symmetric):
    n, d = z.shape
    launch(_backward_epilogue_kernel, (triton.cdiv(d, _STATS_BLOCK_D),),
           z, zp, w, rstd, grad, loss, coef, n, d, zp.shape[1], m_diag,
           SQUARED=squared, SYMMETRIC=symmetric, ACC=acc_tl(z.dtype),
           BLOCK_N=_STATS_BLOCK_N, BLOCK_D=_STATS_BLOCK_D)


def _gram_first(n: int, d: int, dp: int | None) -> bool:
    """Whether the backward's W products take fewer multiply-adds through the N x N
    Gram matrices than through the D x D' product M = Zx^T Zy.

    Self-correlation (``dp`` None), W = (Z Z^T) Z or Z (Z^T Z): 2 N^2 D against
    2 N D^2. Cross: (Zy Zy^T) Zx and (Zx Zx^T) Zy cost 2 N^2 (D + D'); M = Zx^T Zy,
    then Zy M^T and Zx M, cost 3 N D D'.
    """
    if dp is None:
        return n < d
    return 3 * n * d * dp > 2 * n * n * (d + dp)


def _x_and_y_contiguous_rows(x2, y2):
    # Kernels take a row stride and a unit column stride.
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    y2 = None if y2 is None else (y2 if y2.stride(-1) == 1 else y2.contiguous())
    return x2, y2


def coherence_forward(x: torch.Tensor, y: torch.Tensor | None, diag_weight: float, offdiag_weight: float,
                      squared: bool, eps: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = _x_and_y_contiguous_rows(x, y)
    n, d = x.shape
    mean_x, rstd_x = _column_stats(x, eps)
    if y is None:
        yy, mean_y, rstd_y = x, mean_x, rstd_x
    else:
        yy = y
        mean_y, rstd_y = _column_stats(y, eps)
    dp = yy.shape[1]
    tiles_i, tiles_j = triton.cdiv(d, _TILE_BLOCK_D), triton.cdiv(dp, _TILE_BLOCK_D)
    partials = torch.empty((tiles_i * tiles_j, 2), dtype=mean_x.dtype, device=x.device)
    launch(_corr_tile_kernel, (tiles_i * tiles_j,),
           x, yy, mean_x, rstd_x, mean_y, rstd_y, partials, n, d, dp, x.stride(0), yy.stride(0), tiles_j,
           int(y is None), SYMMETRIC=y is None, ACC=acc_tl(mean_x.dtype), BLOCK_N=_TILE_BLOCK_N,
           BLOCK_D=_TILE_BLOCK_D)
    sums = partials.to(torch.float64).sum(0)
    l2 = diag_weight * sums[0] + offdiag_weight * sums[1]
    loss = (l2 if squared else torch.sqrt(l2)).to(mean_x.dtype)
    if y is None:
        mean_y = mean_x.new_empty((0,))
        rstd_y = mean_x.new_empty((0,))
    return loss, mean_x, rstd_x, mean_y, rstd_y


def coherence_backward(grad: torch.Tensor, loss: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
                       mean_x: torch.Tensor, rstd_x: torch.Tensor, mean_y: torch.Tensor,
                       rstd_y: torch.Tensor, diag_weight: float, offdiag_weight: float,
                       squared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _x_and_y_contiguous_rows(x, y)
    n, d = x.shape
    acc = mean_x.dtype
    grad = grad.to(acc).reshape(1).contiguous()
    loss = loss.to(acc).reshape(1).contiguous()
    coef = torch.empty(2, dtype=acc, device=x.device)  # filled on the device: no host sync
    coef[0] = diag_weight
    coef[1] = offdiag_weight
    zx = _standardize(x, mean_x, rstd_x)
    if y is None:
        w = _matmul(_matmul(zx, zx.t()), zx) if _gram_first(n, d, None) else _matmul(zx, _matmul(zx.t(), zx))
        _backward_epilogue(zx, zx, w, rstd_x, grad, loss, d, coef, squared, True)
        return w.to(x.dtype), x.new_empty((0,))
    zy = _standardize(y, mean_y, rstd_y)
    dp = y.shape[1]
    if _gram_first(n, d, dp):
        wx = _matmul(_matmul(zy, zy.t()), zx)
        wy = _matmul(_matmul(zx, zx.t()), zy)
    else:
        m = _matmul(zx.t(), zy)
        wx, wy = _matmul(zy, m.t()), _matmul(zx, m)
    m_diag = min(d, dp)
    _backward_epilogue(zx, zy, wx, rstd_x, grad, loss, m_diag, coef, squared, False)
    _backward_epilogue(zy, zx, wy, rstd_y, grad, loss, m_diag, coef, squared, False)
    return wx.to(x.dtype), wy.to(y.dtype)
