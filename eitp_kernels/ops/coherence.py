"""Coherence (correlation-matrix) loss, docs/design.md §2.2.

For x (N, D) (or (N, *) flattened to D columns) and optional y (N, D'):

    z = (x - mu) * rstd,  mu = mean_n x,  var = mean_n (x - mu)^2 (biased),  rstd = 1 / sqrt(var + eps)
    R = Zx^T Zy / N                                          (D x D', dimensionless; Zy = Zx when y is None)
    L2 = a * sum_i (R_ii - 1)^2 + b * sum_{i != j} R_ij^2    (a = diag_weight, b = offdiag_weight)
    L = L2 if squared else sqrt(L2)

a = b = 1 gives the EIT-P coherence term ||R - I||_F; a = 1, b = lambda with
squared=True is the Barlow Twins loss (its batch norm without affine is exactly
this standardization, eps = 1e-5). The result is dimensionless, float64 for
float64 inputs and float32 otherwise (fp16/bf16 accumulate in fp32).

Gradient: S = dL2/dR, S_ii = 2a(R_ii - 1), S_ij = 2b R_ij (/ 2L for the
sqrt); dZx = Zy S^T / N, dZy = Zx S / N; dx = rstd * (dz - mean_n dz - z *
mean_n(dz * z)).

Paths: one pure planner (:func:`plan`: shapes, device, whether a gradient
will be taken) picks how every backend evaluates the products, and the
compiled (``eitp::``) and Triton (``eitp_triton::``) ops take its choice as
their ``path`` argument, so the fake kernels know every output's shape:
GRAM (N x N Gram matrices Zx Zx^T, Zy Zy^T for short, wide batches, returned:
the backward's input), BLOCKS (CPU forward: P reduced block by block, never
whole) or PRODUCT (P = Zx^T Zy made whole and returned: the backward's
input; on the GPU by one cuBLAS product of the raw inputs, corrected in one
pass). Memory: the only D x D' buffer is P on the PRODUCT path (at most
4/3 of the inputs' size when the planner gives it on a GPU); GRAM keeps one
or two N x N matrices (N < D there); the reference and the
``process_group`` path materialize R. How each
backend evaluates the products: csrc/bindings/coherence.cpp and
``eitp_kernels.triton.coherence``.
"""
from __future__ import annotations

import torch

from eitp_kernels import _backends, _layout, _registration, _validation, reference
from eitp_kernels import _dtensor

OP = "coherence_loss"


# --------------------------------------------------------------------------
# Public functions
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
    in x and y. No host sync. Gradient and memory: see the module docstring.

    NaN/Inf: a non-finite value in a column makes that column's statistics,
    and so the loss, NaN (as the reference). The column sums are taken in
    float64 on every backend; a squared deviation or a variance beyond the
    compute dtype's range (fp32: |x - mean| beyond about 1.8e19) gives NaN too
    (reference.standardize_columns). A zero-variance column has z = 0 for
    eps > 0 (R_ii = 0: it contributes diag_weight to the loss, and nothing off
    the diagonal); with eps = 0 it gives NaN. The gradient of the non-squared
    loss is infinite/NaN where L = 0; use squared=True where that can happen.

    ``process_group``: every rank passes its own slice of the global batch;
    the column sums, sums of squared deviations and the D x D' product are
    all-reduced, so every rank gets the loss of the concatenated batch. The
    gradient a rank receives for its x is world_size * dL/dx_rank, so that
    DDP's gradient averaging yields exactly the parameter gradients of
    single-process training on the global batch. This path runs on ATen ops
    on any device and materializes R (D x D').
    """
    if _dtensor.holds_dtensor(x, y):  # docs/design.md §3.3
        return _dtensor.coherence_loss(x, y, diag_weight, offdiag_weight, squared, eps, process_group)
    a, b, eps = _check(x, y, diag_weight, offdiag_weight, squared, eps, process_group)
    x2, y2 = _as_matrices(x, y)
    if process_group is not None:
        return _DistributedCoherence.apply(x2, y2, a, b, squared, eps, process_group)
    backend = _backends.resolve(OP, x.device, _backends.IMPLEMENTED)
    return _LOSS[backend](x2, y2, a, b, squared, eps)


# --------------------------------------------------------------------------
# Validation
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
    _validation.check_bool(OP, "squared", squared)
    eps = _validation.check_float(OP, "eps", eps, non_negative=True)
    _validation.check_process_group(OP, process_group)
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
# Backends
# --------------------------------------------------------------------------


GRAM, BLOCKS, PRODUCT = 0, 1, 2
PATH_NAMES = {GRAM: "GRAM", BLOCKS: "BLOCKS", PRODUCT: "PRODUCT"}


def plan(n: int, d: int, d_y: int | None, device_type: str, backward: bool) -> int:
    """The path every backend takes for x (n, d) and y (n, d_y) (``d_y`` None:
    self-correlation) on ``device_type``, with or without a backward to follow.

    Multiply-adds of the Gram form g = N^2 D (self) or N^2 (D + D') (cross)
    against p = N D^2 or 2 N D D' of the D x D' product. GRAM when 4 g < 3 p
    (self: 4N < 3D), with or without a backward: on the CPU the forward
    makes one triangle of each Gram matrix (about g / 2) against the
    product's blocks on and right of the diagonal (about p / 2), and keeps
    them for the backward, which then costs g against p. Otherwise PRODUCT
    when a gradient will be taken (the backward multiplies by P) and on a GPU
    (one cuBLAS product; not GRAM means P is at most 4/3 of the inputs'
    size). A CPU forward alone: BLOCKS for self-correlation (only the blocks
    on and right of the diagonal, shared out to the threads), and for
    cross-correlation PRODUCT while P is no larger than the inputs (D D' <=
    N (D + D') / 2: one threaded product), else BLOCKS (the memory stays of
    the inputs' order).

    Measured with `benchmarks/native/coherence_paths.py --threads 1
    --cpu-time` (thread CPU time, medians of 11-21; ``--grid`` for fwd+bwd,
    ``--grid-fwd`` the forward alone too), 2 shared cores at load 2-4.
    Forward + backward, GRAM against PRODUCT: at D = N PRODUCT is faster
    (self 256x256 0.96 ms against 0.82, 512x512 6.41 against 6.33; cross
    256x256 2.19 against 1.61), at D = 1.25 N even (self 256x320 1.44
    against 1.46; cross 0.92x), at D = 1.5 N GRAM mostly faster (self
    256x384 1.62 against 2.02, 512x768 8.74 against 12.06, 128x192 0.37
    against 0.36; cross 256x384 1.06x, 512x768 1.18x, 128x192 0.91x), from
    D = 2N GRAM by 1.4-1.9x (self 256x512, the EIT-P regularizer's layers:
    1.91 ms against 3.02; Barlow Twins 512x2048 50.9 against 177.1). Forward
    alone, GRAM against the faster of BLOCKS and PRODUCT: at D = N about
    even for self (256x256 0.34 ms against 0.35, 512x512 2.78 against 2.49)
    and slower for cross (256x256 0.65 against 0.47); at D = 1.25 N self
    0.42 against 0.46, cross 1.06 against 0.81; at D = 1.5 N 256x384 self
    0.47 against 0.67, cross 1.20 against 1.21, 512x768 self 3.45 against
    4.55, cross 6.81 against 7.35, 128x192 cross 0.19 against 0.17; at D = 2N
    GRAM by 1.4-1.8x (self 256x512 0.83 against 1.29). Self 2048x1024:
    BLOCKS 30.9 ms, PRODUCT 32.4, GRAM 89.8 (medians of 5). On a GPU the rule
    is the flop count's, not measured.
    """
    if d_y is None:
        gram_cost, product_cost = n * n * d, n * d * d
    else:
        gram_cost, product_cost = n * n * (d + d_y), 2 * n * d * d_y
    if 4 * gram_cost < 3 * product_cost:
        return GRAM
    if backward or device_type != "cpu" or (d_y is not None and 2 * d * d_y <= n * (d + d_y)):
        return PRODUCT
    return BLOCKS


def _plan_for(x2, y2):
    backward = torch.is_grad_enabled() and (x2.requires_grad or (y2 is not None and y2.requires_grad))
    return plan(x2.shape[0], x2.shape[1], None if y2 is None else y2.shape[1], x2.device.type, backward)


def _reference_loss(x2, y2, a, b, squared, eps):
    return reference.coherence_loss(x2, y2, diag_weight=a, offdiag_weight=b, squared=squared, eps=eps)


def _op_loss(forward, compiled=False):
    def loss(x2, y2, a, b, squared, eps):
        path = _plan_for(x2, y2)
        if compiled and _eager_with_gradient(x2, y2):
            return _EagerCompiledCoherence.apply(x2, y2, a, b, squared, eps, path)
        return forward(x2, y2, a, b, squared, eps, path)[0]
    return loss


def _eager_with_gradient(x2, y2) -> bool:
    """Whether a call is plain eager (as _backends._plain_eager: not traced, no
    mode or functorch transform, plain tensors) and takes a gradient."""
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() or not _backends.no_layers_active():
        return False
    tensors = (x2,) if y2 is None else (x2, y2)
    return all(type(t) is torch.Tensor for t in tensors) and any(t.requires_grad for t in tensors)


class _EagerCompiledCoherence(torch.autograd.Function):
    """The ``eitp::`` op's autograd formula (the one registered below for the
    custom op: _forward_setup_context, _forward_backward) as a plain
    autograd.Function, the op called below the Autograd key, for plain eager
    calls with a gradient. torch.library's Python autograd kernel around the
    op cost about 0.18 ms per forward + backward (Z 256 x 512 fp32, 1 thread:
    two coherence_loss forward + backward 4.0 ms against 3.25 for the ops
    alone, thread CPU time, medians of 80; its fill_defaults rebuilds the
    schema's argument list per argument). Same saved tensors, same backward."""

    @staticmethod
    def forward(ctx, x, y, a, b, squared, eps, path):
        with _backends._below_autograd():
            out = torch.ops.eitp.coherence_forward.default(x, y, a, b, squared, eps, path)
        loss, mean_x, rstd_x, mean_y, rstd_y, product = out
        ctx.save_for_backward(x, y, loss, mean_x, rstd_x, mean_y, rstd_y, product)
        ctx.set_materialize_grads(False)
        ctx.args = (a, b, squared, path)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return _forward_backward(torch.ops.eitp, ctx, grad_loss)


_LOSS = {"reference": _reference_loss,
         "cpp": _op_loss(_backends.op_caller("eitp", "coherence_forward"), compiled=True),
         "cuda": _op_loss(_backends.op_caller("eitp", "coherence_forward"), compiled=True),
         "triton": _op_loss(_backends.op_caller("eitp_triton", "coherence_forward"))}


# process_group: global-batch statistics
class _DistributedCoherence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, y2, a, b, squared, eps, group):
        import torch.distributed as dist

        cd = _layout.compute_dtype(x2.dtype)
        world = dist.get_world_size(group)
        n = torch.tensor([float(x2.shape[0])], dtype=cd, device=x2.device)
        dist.all_reduce(n, group=group)

        def standardize(v):
            # Sums in float64, as every backend (_layout.column_rstd).
            vc = v.to(cd)
            s = vc.sum(0, dtype=torch.float64)
            dist.all_reduce(s, group=group)
            dev = vc - (s / n.double()).to(cd)
            q = (dev * dev).sum(0, dtype=torch.float64)
            dist.all_reduce(q, group=group)
            rstd = _layout.column_rstd(q / n.double(), eps, cd)
            return dev * rstd, rstd

        zx, rx = standardize(x2)
        zy, ry = (zx, rx) if y2 is None else standardize(y2)
        p = zx.t() @ zy
        dist.all_reduce(p, group=group)
        r = p / n
        loss = _layout.coherence_from_correlation(r, a, b, squared)
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
# Custom ops: fake kernels and autograd, for eitp:: and eitp_triton::
# --------------------------------------------------------------------------


def _kept_shape(n, d, dp, path):
    """Shape of the forward's ``product`` output (what the backward multiplies
    by), on every backend: PRODUCT P (D, D'); GRAM the Gram matrices, (1, N, N)
    [Zx Zx^T] for self-correlation or (2, N, N) [Zx Zx^T, Zy Zy^T]; BLOCKS (0,)."""
    if path == PRODUCT:
        return (d, dp or d)
    if path == GRAM:
        return (2 if dp else 1, n, n)
    return (0,)


def _forward_fake(x, y, diag_weight, offdiag_weight, squared, eps, path):
    """(loss, mean_x, rstd_x, mean_y, rstd_y, product); product: :func:`_kept_shape`."""
    acc = _layout.compute_dtype(x.dtype)
    n, d = x.shape
    dp = 0 if y is None else y.shape[1]
    return (x.new_empty((), dtype=acc), x.new_empty((d,), dtype=acc), x.new_empty((d,), dtype=acc),
            x.new_empty((dp,), dtype=acc), x.new_empty((dp,), dtype=acc),
            x.new_empty(_kept_shape(n, d, dp, path), dtype=acc))


def _backward_fake(grad, loss, x, y, mean_x, rstd_x, mean_y, rstd_y, product, diag_weight, offdiag_weight, squared,
                   path):
    # contiguous, like the real kernels (whatever the inputs' strides)
    return x.new_empty(x.shape), (x.new_empty((0,)) if y is None else y.new_empty(y.shape))


def _forward_setup_context(ctx, inputs, output):
    x, y, a, b, squared, _eps, path = inputs
    loss, mean_x, rstd_x, mean_y, rstd_y, product = output
    # Only what the backward needs: the inputs (alive anyway), the (D,)
    # statistics, the scalar loss and the product it multiplies by (P, the
    # Gram matrices, or empty: _kept_shape); Z is recomputed (O(ND)).
    ctx.save_for_backward(x, y, loss, mean_x, rstd_x, mean_y, rstd_y, product)
    ctx.mark_non_differentiable(mean_x, rstd_x, mean_y, rstd_y, product)
    ctx.set_materialize_grads(False)  # no zero "gradients" for those (a D x D' one for the product)
    ctx.args = (a, b, squared, path)


def _forward_backward(ops, ctx, grad_loss, *unused):
    if grad_loss is None:
        return (None,) * 7
    x, y, loss, mean_x, rstd_x, mean_y, rstd_y, product = ctx.saved_tensors
    a, b, squared, path = ctx.args
    dx, dy = ops.coherence_backward(grad_loss, loss, x, y, mean_x, rstd_x, mean_y, rstd_y, product, a, b, squared,
                                    path)
    return (dx, None if y is None else dy) + (None,) * 5


_registration.register("coherence_forward", "coherence.coherence_forward", _forward_fake,
                       autograd=(_forward_setup_context, _forward_backward))
_registration.register("coherence_backward", "coherence.coherence_backward", _backward_fake)
