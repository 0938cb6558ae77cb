"""Coherence (correlation-matrix) loss, DESIGN §2.2.

For x (N, D) (or (N, *) flattened to D columns) and optional y (N, D'):

    z = (x - mu) * rstd,  mu = mean_n x,  var = mean_n (x - mu)^2 (biased),  rstd = 1 / sqrt(var + eps)
    R = Zx^T Zy / N                                          (D x D', dimensionless; Zy = Zx when y is None)
    L2 = a * sum_i (R_ii - 1)^2 + b * sum_{i != j} R_ij^2    (a = diag_weight, b = offdiag_weight)
    L = L2 if squared else sqrt(L2)

a = b = 1 gives the EIT-P coherence term ||R - I||_F; a = 1, b = lambda with
squared=True is the Barlow Twins loss (its batch norm without affine is exactly
this standardization, eps = 1e-5). The result is dimensionless, float64 for
float64 inputs and float32 otherwise (fp16/bf16 accumulate in fp32).

NaN/Inf: a non-finite value in a column makes that column's statistics, and
so the loss, NaN (as the reference). A zero-variance column has z = 0 for
eps > 0 (R_ii = 0: it contributes a to the loss, and nothing off the
diagonal); with eps = 0 it gives NaN. The gradient of the non-squared loss is
infinite/NaN where L = 0; use squared=True where that can happen.

Gradient (DESIGN §2.2): S = dL2/dR, S_ii = 2a(R_ii - 1), S_ij = 2b R_ij (/ 2L
for the sqrt); dZx = Zy S^T / N, dZy = Zx S / N; dx = rstd * (dz - mean_n dz
- z * mean_n(dz * z)). Since R = Zx^T Zy / N, Zy R^T = Zy (Zy^T Zx) / N =
(Zy Zy^T) Zx / N: the backward evaluates that product by whichever
association is cheaper for the shape (a D x D' or N x N intermediate).

Backends and the bytes they move (fp32, self-correlation, B = 128-column panels):
  cpp / cuda  forward: read x twice (stats) + once (standardize), write and
              read Z (4ND each) and the panels of R on and right of the
              diagonal (about D^2/2 + DB values, never D x D at once); about
              N D^2 multiply-adds (half of Zx^T Zx). Extra memory: Z (N x D)
              and one B x min(D', 8192) panel.
              backward: x read once, Z written, one Gram (min(N, D)^2 values,
              symmetric: half its multiply-adds), W = Z (Z^T Z) (N x D), the
              fused epilogue reads Z and W twice and writes dx.
  triton      forward: column statistics (reads x twice), then one program per
              (BLOCK_D x BLOCK_D) tile on or above the diagonal reads its
              column blocks of x and y (2 N BLOCK_D values), normalizes them
              on the fly, multiplies them with tl.dot and reduces the tile
              straight to one partial sum: no Z and no R in memory; writes one
              float per tile. backward: Z materialized, Gram and W products as
              Triton GEMMs, then the same fused epilogue.
  reference   eager PyTorch (materializes R, an identity mask, and R^2).

``process_group``: every rank passes its own slice of the global batch; the
column sums, sums of squared deviations and the D x D' product are
all-reduced, so every rank gets the loss of the concatenated batch. The
gradient a rank receives for its x is world_size * dL/dx_rank, so that DDP's
gradient averaging yields exactly the parameter gradients of single-process
training on the global batch. This path runs on ATen ops on any device and
materializes R (D x D').
"""
from __future__ import annotations

import torch

from eitp_kernels import _backends, _extension, _validation, reference
from eitp_kernels._triton import tl, triton, triton_jit

OP = "coherence_loss"

# Backends per device type, best first.
IMPLEMENTED = {"cpu": ("cpp", "triton", "reference"), "cuda": ("cuda", "triton", "reference")}


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def _check(x, y, diag_weight, offdiag_weight, squared, eps, process_group):
    _validation.check_tensor(OP, "x", x, min_dim=1)
    if x.shape[0] < 2:
        raise ValueError(
            f"{OP}: x must have at least 2 rows (the batch dimension N; correlations need N >= 2), "
            f"got shape {tuple(x.shape)}")
    if y is not None:
        _validation.check_tensor(OP, "y", y, min_dim=1)
        _validation.check_same_device(OP, "x", x, "y", y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{OP}: y must have the same batch size as x ({x.shape[0]}), got shape {tuple(y.shape)}")
    a = _validation.check_float(OP, "diag_weight", diag_weight, non_negative=True)
    b = _validation.check_float(OP, "offdiag_weight", offdiag_weight, non_negative=True)
    if not isinstance(squared, bool):
        raise TypeError(f"{OP}: squared must be a bool, got {type(squared).__name__}")
    eps = _validation.check_float(OP, "eps", eps, non_negative=True)
    if process_group is not None:
        import torch.distributed as dist

        if not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
            raise TypeError(f"{OP}: process_group must be None or a torch.distributed.ProcessGroup, "
                            f"got {type(process_group).__name__}")
    return a, b, eps


def _as_matrices(x, y):
    """(N, D) views; both in float64 when either is float64 (the reference's promotion)."""
    n = x.shape[0]
    x2 = x.reshape(n, -1)
    y2 = None if y is None else y.reshape(n, -1)
    if y2 is not None and (x2.dtype == torch.float64) != (y2.dtype == torch.float64):
        x2, y2 = x2.to(torch.float64), y2.to(torch.float64)
    return x2, y2


# --------------------------------------------------------------------------
# public function
# --------------------------------------------------------------------------


def coherence_loss(x: torch.Tensor, y: torch.Tensor | None = None, *, diag_weight: float = 1.0,
                   offdiag_weight: float = 1.0, squared: bool = False, eps: float = 1e-5,
                   process_group=None) -> torch.Tensor:
    """Coherence loss ``||R - I||`` of the column correlations of ``x`` (and ``y``).

    ``R = Zx^T Zy / N`` with ``z = (x - mean) / sqrt(var + eps)`` per column
    (biased variance); ``L2 = diag_weight * sum_i (R_ii - 1)^2 +
    offdiag_weight * sum_{i != j} R_ij^2``; returns ``L2`` if ``squared`` else
    ``sqrt(L2)``. ``x``: (N, D) or (N, *) (flattened to D features), N >= 2;
    ``y``: same N, or None for self-correlation. Returns a 0-d tensor,
    dimensionless, float64 if x or y is float64 else float32. Differentiable
    in x and y. No host sync. See the module docstring for the gradient, NaN
    behaviour, memory, and ``process_group`` (global-batch statistics; the
    gradient is scaled for DDP's averaging).
    """
    a, b, eps = _check(x, y, diag_weight, offdiag_weight, squared, eps, process_group)
    x2, y2 = _as_matrices(x, y)
    if process_group is not None:
        return _DistributedCoherence.apply(x2, y2, a, b, squared, eps, process_group)
    backend = _backends.resolve(OP, x.device, IMPLEMENTED)
    if backend == "reference":
        return reference.coherence_loss(x2, y2, diag_weight=a, offdiag_weight=b, squared=squared, eps=eps)
    if backend == "triton":
        return _triton_coherence(x2, y2, a, b, squared, eps)
    return torch.ops.eitp.coherence_forward(x2, y2, a, b, squared, eps)[0]


# --------------------------------------------------------------------------
# compiled ops: fake kernels and autograd
# --------------------------------------------------------------------------


def _register_compiled() -> None:
    @torch.library.register_fake("eitp::coherence_forward")
    def _(x, y, diag_weight, offdiag_weight, squared, eps):
        acc = reference.compute_dtype(x.dtype)
        d = x.shape[1]
        dp = 0 if y is None else y.shape[1]
        return (x.new_empty((), dtype=acc), x.new_empty((d,), dtype=acc), x.new_empty((d,), dtype=acc),
                x.new_empty((dp,), dtype=acc), x.new_empty((dp,), dtype=acc))

    @torch.library.register_fake("eitp::coherence_backward")
    def _(grad, loss, x, y, mean_x, rstd_x, mean_y, rstd_y, diag_weight, offdiag_weight, squared):
        return torch.empty_like(x), (x.new_empty((0,)) if y is None else torch.empty_like(y))

    def setup_context(ctx, inputs, output):
        x, y, a, b, squared, _eps = inputs
        loss, mean_x, rstd_x, mean_y, rstd_y = output
        # Only what the backward needs: the inputs (alive anyway), the (D,)
        # statistics and the scalar loss; Z is recomputed (O(ND)).
        ctx.save_for_backward(x, y, loss, mean_x, rstd_x, mean_y, rstd_y)
        ctx.mark_non_differentiable(mean_x, rstd_x, mean_y, rstd_y)
        ctx.weights = (a, b, squared)

    def backward(ctx, grad_loss, *unused):
        x, y, loss, mean_x, rstd_x, mean_y, rstd_y = ctx.saved_tensors
        a, b, squared = ctx.weights
        dx, dy = torch.ops.eitp.coherence_backward(grad_loss, loss, x, y, mean_x, rstd_x, mean_y, rstd_y,
                                                   a, b, squared)
        return dx, (None if y is None else dy), None, None, None, None

    torch.library.register_autograd("eitp::coherence_forward", backward, setup_context=setup_context)


if _extension.load()[0]:
    _register_compiled()


# --------------------------------------------------------------------------
# process_group: global-batch statistics
# --------------------------------------------------------------------------


class _DistributedCoherence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, y2, a, b, squared, eps, group):
        import torch.distributed as dist

        cd = reference.compute_dtype(x2.dtype)
        world = dist.get_world_size(group)
        n = torch.tensor([float(x2.shape[0])], dtype=cd, device=x2.device)
        dist.all_reduce(n, group=group)

        def standardize(v):
            vc = v.to(cd)
            s = vc.sum(0)
            dist.all_reduce(s, group=group)
            dev = vc - s / n
            q = (dev * dev).sum(0)
            dist.all_reduce(q, group=group)
            rstd = 1.0 / torch.sqrt(q / n + eps)
            return dev * rstd, rstd

        zx, rx = standardize(x2)
        zy, ry = (zx, rx) if y2 is None else standardize(y2)
        p = zx.t() @ zy
        dist.all_reduce(p, group=group)
        r = p / n
        # Every entry counted as the reference: the diagonal separately.
        m = min(r.shape)
        idx = torch.arange(m, device=r.device)
        diag = r[idx, idx]
        off = r.clone()
        off[idx, idx] = 0.0
        l2 = a * ((diag - 1.0) ** 2).sum() + b * (off * off).sum()
        loss = l2 if squared else torch.sqrt(l2)
        ctx.save_for_backward(zx, zy if y2 is not None else None, rx, ry if y2 is not None else None, r, loss, n)
        ctx.args = (a, b, squared, group, world, y2 is None, x2.dtype, None if y2 is None else y2.dtype)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        import torch.distributed as dist

        zx, zy, rx, ry, r, loss, n = ctx.saved_tensors
        a, b, squared, group, world, self_corr, x_dtype, y_dtype = ctx.args
        k = grad if squared else grad / (2.0 * loss)
        m = min(r.shape)
        idx = torch.arange(m, device=r.device)
        s = 2.0 * b * r
        s[idx, idx] = 2.0 * a * (r[idx, idx] - 1.0)
        s = s * k
        if self_corr:
            dz = (zx @ (s + s.t()) / n,)
            zs, rs = (zx,), (rx,)
        else:
            dz = (zy @ s.t() / n, zx @ s / n)
            zs, rs = (zx, zy), (rx, ry)
        # Column sums of dz and dz * z over the global batch, in one collective.
        sums = torch.cat([torch.cat([g.sum(0), (g * z).sum(0)]) for g, z in zip(dz, zs)])
        dist.all_reduce(sums, group=group)
        grads, offset = [], 0
        for g, z, rstd in zip(dz, zs, rs):
            d = z.shape[1]
            mean_dz = sums[offset:offset + d] / n
            mean_dzz = sums[offset + d:offset + 2 * d] / n
            offset += 2 * d
            # world *: DDP averages the ranks' parameter gradients.
            grads.append(world * rstd * (g - mean_dz - z * mean_dzz))
        dx = grads[0].to(x_dtype)
        dy = None if self_corr else grads[1].to(y_dtype)
        return dx, dy, None, None, None, None, None


# --------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------


def _triton_coherence(x2, y2, a, b, squared, eps):  # replaced below once the kernels exist
    raise NotImplementedError
