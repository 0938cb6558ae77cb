"""Histogram entropy (DESIGN §2.1): fused, device-side, never syncs with the host.

    w = (hi - lo) / bins,   b(x) = clamp(floor((x - lo) / w), 0, bins - 1)
    p_b = c_b / sum(c),     H = -sum_{c_b > 0} p_b ln p_b   [/ ln(base)]

``(lo, hi)`` is the finite min/max of each slice (computed on the device) or
the given ``range``; non-finite values are never counted, and with an explicit
range values outside ``[lo, hi]`` are not counted. int8/uint8 codes: one bin
per code (256 bins). Exactly the arithmetic of ``reference.histogram_counts``
(true division in the accumulation dtype, float64 for fp64 input and float32
otherwise), so float32 counts match the reference bit for bit.

Pipeline per call (rows = 1-D slices):
  1. range: ``eitp::finite_minmax`` (reads x once; skipped for an explicit
     range and for codes);
  2. counts: ``eitp::histogram_counts`` (reads x once, writes rows x bins int64);
  3. entropy: ``eitp::entropy_from_counts`` (reads the counts, writes rows
     float64).
So a float call moves 2 x (bytes of x) + 8 x rows x bins x 2; with an explicit
range or int8 codes, 1 x (bytes of x). With ``process_group`` the range is
all-reduced (MIN/MAX) before counting and the counts (SUM) before the entropy.

Differentiable mode (linear binning): ``eitp::soft_histogram`` makes float64
soft counts (x adds 1-f to bin k and f to bin k+1, u = (x-lo)/w - 0.5,
k = floor(u), f = u - k); its backward ``eitp::soft_histogram_backward`` is
one elementwise pass over x with the bins-long table g = dL/dc of each row:
dL/dx = (g[k+1] - g[k]) / w. The entropy of the soft counts is a few torch
ops whose gradient is dH/dc_j = -(ln p_j + H) / N with ln p taken of p
clamped at ``reference.ENTROPY_LOG_FLOOR``, which gives the DESIGN formula
dH/dx = (ln p_k - ln p_{k+1}) / (N w). The range is held constant.

Triton: the hard counts kernel keeps a block-local histogram (``tl.histogram``,
bins <= 4096) and merges it with one atomic per bin per program (above 4096
bins: one global atomic per element); the soft counts kernel uses two float64
global atomics per element. They are custom ops (``eitp_triton::*``, via
``torch.library.triton_op``) so torch.compile can trace them on a GPU.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from eitp_kernels import _backends, _extension, _validation, reference
from eitp_kernels._triton import tl, triton, triton_jit
from eitp_kernels.ops import finite_range

OP = "histogram_entropy"
MANY_OP = "histogram_entropy_many"
MAX_BINS = 1 << 24

# Backends per device type, best first.
IMPLEMENTED = {"cpu": ("cpp", "triton", "reference"), "cuda": ("cuda", "triton", "reference")}
IMPLEMENTED_DIFFERENTIABLE = IMPLEMENTED
IMPLEMENTED_MANY = IMPLEMENTED

_TRITON_HIST_MAX_BINS = 4096  # above: one global atomic per element


# --------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------


@triton_jit
def _histogram_counts_kernel(
    x_ptr,  # (rows, row_length), contiguous: float dtypes or int8/uint8 codes
    lo_ptr,  # (rows,) range, accumulation dtype (unused for codes)
    hi_ptr,  # (rows,)
    counts_ptr,  # (rows, bins) int64, zero-filled
    row_length,
    bins,
    EXPLICIT: tl.constexpr,  # drop x < lo and x > hi
    IS_CODE: tl.constexpr,  # int8/uint8 input: bin = code + CODE_OFFSET
    CODE_OFFSET: tl.constexpr,
    ACC: tl.constexpr,  # tl.float32 or tl.float64
    IS_F64: tl.constexpr,
    NB: tl.constexpr,  # power of two >= bins (block-local histogram length)
    LOCAL_HIST: tl.constexpr,  # block-local histogram, else one atomic per element
    CHUNK: tl.constexpr,  # elements per program, a multiple of BLOCK
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    chunk = tl.program_id(1).to(tl.int64)
    row_ptr = x_ptr + row * row_length
    out_ptr = counts_ptr + row * bins
    if not IS_CODE:
        lo = tl.load(lo_ptr + row)
        hi = tl.load(hi_ptr + row)
        nb = bins.to(ACC)
        if IS_F64:
            w = (hi - lo) / nb
        else:
            w = tl.math.div_rn(hi - lo, nb)  # IEEE division: the reference's w
    hist = tl.zeros([NB], tl.int32)
    for start in tl.range(0, CHUNK, BLOCK):
        offsets = chunk * CHUNK + start + tl.arange(0, BLOCK)
        in_row = offsets < row_length
        if IS_CODE:
            b = tl.load(row_ptr + offsets, mask=in_row, other=0).to(tl.int32) + CODE_OFFSET
            ok = in_row
        else:
            v = tl.load(row_ptr + offsets, mask=in_row, other=0.0).to(ACC)
            ok = in_row & (v - v == 0)  # finite
            if EXPLICIT:
                ok = ok & (v >= lo) & (v <= hi)
            if IS_F64:
                q = (v - lo) / w
            else:
                q = tl.math.div_rn(v - lo, w)
            # floor clamped to [0, bins-1] == trunc of q clamped to [0, bins]
            q = tl.where(q >= 0, q, 0.0)  # also NaN -> 0
            q = tl.where(q < nb, q, nb)
            q = tl.where(w == 0, 0.0, q)
            b = tl.minimum(q.to(tl.int32), bins - 1)
        if LOCAL_HIST:
            hist += tl.histogram(b, NB, mask=ok)
        else:
            tl.atomic_add(out_ptr + b, tl.full([BLOCK], 1, tl.int64), mask=ok)
    if LOCAL_HIST:
        idx = tl.arange(0, NB)
        tl.atomic_add(out_ptr + idx, hist.to(tl.int64), mask=(idx < bins) & (hist > 0))


def _triton_counts(rows: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    n_rows, row_length = rows.shape
    counts = torch.zeros((n_rows, bins), dtype=torch.int64, device=rows.device)
    if rows.numel() == 0:
        return counts
    is_code = rows.dtype in _validation.CODE_DTYPES
    acc = reference.compute_dtype(rows.dtype)
    local = bins <= _TRITON_HIST_MAX_BINS
    # short rows (many of them): one program per row, no idle loop steps
    block = min(1024, max(16, triton.next_power_of_2(row_length)))
    chunk = min(16384 if local else 4096, max(block, triton.next_power_of_2(row_length)))
    chunks = max(1, triton.cdiv(row_length, chunk))
    if is_code:
        lo = hi = counts  # unused
    _wrap(_histogram_counts_kernel)[(n_rows, chunks)](
        rows, lo, hi, counts, row_length, bins,
        EXPLICIT=explicit, IS_CODE=is_code, CODE_OFFSET=128 if rows.dtype == torch.int8 else 0,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, IS_F64=acc == torch.float64,
        NB=triton.next_power_of_2(bins) if local else 1, LOCAL_HIST=local, CHUNK=chunk, BLOCK=block,
    )
    return counts


@triton_jit
def _soft_bin(v, lo, hi, w, bins, in_row, EXPLICIT: tl.constexpr, IS_F64: tl.constexpr):
    """Linear binning in the reference's arithmetic: (valid, live, k0, k1, f)."""
    valid = in_row & (v - v == 0)
    if EXPLICIT:
        valid = valid & (v >= lo) & (v <= hi)
    live = valid & ((tl.zeros_like(v) + w) != 0)  # broadcast first: the interpreter wants two blocks
    if IS_F64:
        u = (v - lo) / w - 0.5
    else:
        u = tl.math.div_rn(v - lo, w) - 0.5
    live = live & (u == u)  # NaN u (inf/inf: hi - lo overflowed) is not live, as in the reference
    k = tl.floor(u)
    f = u - k
    k = tl.where(live, k, 0.0)
    f = tl.where(live, f, 0.0)
    top = (bins - 1).to(k.dtype)
    k0 = tl.minimum(tl.maximum(k, 0.0), top).to(tl.int32)
    k1 = tl.minimum(tl.maximum(k + 1.0, 0.0), top).to(tl.int32)
    return valid, live, k0, k1, f


@triton_jit
def _soft_histogram_kernel(
    x_ptr,  # (rows, row_length), contiguous, float dtypes
    lo_ptr,  # (rows,) accumulation dtype
    hi_ptr,
    counts_ptr,  # (rows, bins) float64, zero-filled
    row_length,
    bins,
    EXPLICIT: tl.constexpr,
    ACC: tl.constexpr,
    IS_F64: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Weighted counts: tl.histogram has no weights, so two float64 global
    # atomics per counted element.
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    row_ptr = x_ptr + row * row_length
    out_ptr = counts_ptr + row * bins
    lo = tl.load(lo_ptr + row)
    hi = tl.load(hi_ptr + row)
    if IS_F64:
        w = (hi - lo) / bins.to(ACC)
    else:
        w = tl.math.div_rn(hi - lo, bins.to(ACC))
    for start in tl.range(0, CHUNK, BLOCK):
        offsets = chunk * CHUNK + start + tl.arange(0, BLOCK)
        in_row = offsets < row_length
        v = tl.load(row_ptr + offsets, mask=in_row, other=0.0).to(ACC)
        valid, live, k0, k1, f = _soft_bin(v, lo, hi, w, bins, in_row, EXPLICIT, IS_F64)
        tl.atomic_add(out_ptr + k0, (1.0 - f).to(tl.float64), mask=valid)
        tl.atomic_add(out_ptr + k1, f.to(tl.float64), mask=live)


@triton_jit
def _soft_histogram_backward_kernel(
    x_ptr,  # (rows, row_length)
    lo_ptr,
    hi_ptr,
    table_ptr,  # (rows, bins) float64: dL/dcounts
    grad_ptr,  # (rows, row_length) accumulation dtype
    row_length,
    bins,
    EXPLICIT: tl.constexpr,
    ACC: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1).to(tl.int64)
    lo = tl.load(lo_ptr + row)
    hi = tl.load(hi_ptr + row)
    if IS_F64:
        w = (hi - lo) / bins.to(ACC)
    else:
        w = tl.math.div_rn(hi - lo, bins.to(ACC))
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    in_row = offsets < row_length
    v = tl.load(x_ptr + row * row_length + offsets, mask=in_row, other=0.0).to(ACC)
    valid, live, k0, k1, f = _soft_bin(v, lo, hi, w, bins, in_row, EXPLICIT, IS_F64)
    t0 = tl.load(table_ptr + row * bins + k0, mask=live, other=0.0)
    t1 = tl.load(table_ptr + row * bins + k1, mask=live, other=0.0)
    g = (t1 - t0) / w.to(tl.float64)  # float64 division is IEEE in Triton
    tl.store(grad_ptr + row * row_length + offsets, tl.where(live, g, 0.0).to(ACC), mask=in_row)


def _triton_soft_counts(rows: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    n_rows, row_length = rows.shape
    counts = torch.zeros((n_rows, bins), dtype=torch.float64, device=rows.device)
    if rows.numel() == 0:
        return counts
    acc = reference.compute_dtype(rows.dtype)
    block = min(1024, max(16, triton.next_power_of_2(row_length)))
    chunk = min(8192, max(block, triton.next_power_of_2(row_length)))
    _wrap(_soft_histogram_kernel)[(n_rows, triton.cdiv(row_length, chunk))](
        rows, lo, hi, counts, row_length, bins, EXPLICIT=explicit,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, IS_F64=acc == torch.float64, CHUNK=chunk, BLOCK=block,
    )
    return counts


def _triton_soft_backward(grad_counts, rows, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    n_rows, row_length = rows.shape
    acc = reference.compute_dtype(rows.dtype)
    grad = torch.empty(rows.shape, dtype=acc, device=rows.device)
    if rows.numel() == 0:
        return grad
    block = min(1024, max(16, triton.next_power_of_2(row_length)))
    _wrap(_soft_histogram_backward_kernel)[(n_rows, triton.cdiv(row_length, block))](
        rows, lo, hi, grad_counts.to(torch.float64).contiguous(), grad, row_length, bins, EXPLICIT=explicit,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, IS_F64=acc == torch.float64, BLOCK=block,
    )
    return grad


def _register_soft_histogram_autograd(namespace: str) -> None:
    """Autograd of ``<namespace>::soft_histogram`` through its ``soft_histogram_backward``
    op (the compiled and the Triton backends register the same pair)."""
    backward_op = getattr(torch.ops, namespace).soft_histogram_backward

    def setup_context(ctx, inputs, output):
        x, lo, hi, bins, explicit_range = inputs
        ctx.save_for_backward(x, lo, hi)
        ctx.bins = bins
        ctx.explicit_range = explicit_range

    def backward(ctx, grad_counts):
        x, lo, hi = ctx.saved_tensors
        grad_x = backward_op(grad_counts, x, lo, hi, ctx.bins, ctx.explicit_range)
        return grad_x.to(x.dtype), None, None, None, None

    torch.library.register_autograd(f"{namespace}::soft_histogram", backward, setup_context=setup_context)


def _wrap(kernel):
    """torch.library.wrap_triton: the launch stays traceable inside a triton_op."""
    return torch.library.wrap_triton(kernel)


def _register_triton_ops() -> None:
    """Triton kernels as custom ops (namespace eitp_triton) so torch.compile traces them."""
    from torch.library import triton_op

    @triton_op("eitp_triton::histogram_counts", mutates_args=())
    def _counts_op(x: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None, bins: int,
                   explicit_range: bool) -> torch.Tensor:
        return _triton_counts(x, lo, hi, bins, explicit_range)

    @triton_op("eitp_triton::soft_histogram", mutates_args=())
    def _soft_op(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int,
                 explicit_range: bool) -> torch.Tensor:
        return _triton_soft_counts(x, lo, hi, bins, explicit_range)

    @triton_op("eitp_triton::soft_histogram_backward", mutates_args=())
    def _soft_backward_op(grad_counts: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                          bins: int, explicit_range: bool) -> torch.Tensor:
        return _triton_soft_backward(grad_counts, x, lo, hi, bins, explicit_range)

    _register_soft_histogram_autograd("eitp_triton")


# --------------------------------------------------------------------------
# Backend building blocks (rows = (R, L) contiguous view)
# --------------------------------------------------------------------------


def _range_rows(backend: str, rows: torch.Tensor, rng, process_group):
    """(lo, hi), each (R,) in the accumulation dtype: finite min/max or the given range."""
    acc = reference.compute_dtype(rows.dtype)
    if rng is not None:
        lo = torch.full((rows.shape[0],), float(rng[0]), dtype=acc, device=rows.device)
        hi = torch.full((rows.shape[0],), float(rng[1]), dtype=acc, device=rows.device)
        return lo, hi
    if backend in ("cpp", "cuda"):
        lo, hi = torch.ops.eitp.finite_minmax(rows)
    elif backend == "triton":
        lo, hi = finite_range._triton_rows(rows)
    else:
        lo, hi = reference.finite_minmax(rows, dim=1)
    if process_group is not None:
        import torch.distributed as dist

        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=process_group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=process_group)
    return lo, hi


def _torch_counts(rows: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    """int64 counts with the reference's arithmetic, for tensor-valued ranges."""
    if rows.dtype in _validation.CODE_DTYPES:
        return reference.histogram_counts(rows, bins=256, dim=1).to(torch.int64)
    xc = rows.to(reference.compute_dtype(rows.dtype))
    lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    valid = reference._counted(xc, lo, hi, explicit)
    w = (hi - lo) / bins
    t = torch.floor((xc - lo) / w).clamp(0, bins - 1)
    t = torch.where((w == 0) | torch.isnan(t), 0.0, t)  # NaN: inf/inf when hi - lo overflows
    t = torch.where(valid, t, 0.0)
    return reference._bincount_rows(t.to(torch.int64), valid, bins)


def _counts_rows(backend: str, rows: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    if backend in ("cpp", "cuda"):
        return torch.ops.eitp.histogram_counts(rows, lo, hi, bins, explicit)
    if backend == "triton":
        return torch.ops.eitp_triton.histogram_counts(rows, lo, hi, bins, explicit)
    return _torch_counts(rows, lo, hi, bins, explicit)


def _entropy_torch(counts: torch.Tensor, log_base) -> torch.Tensor:
    """H per row of counts (float64), the reference's formula; NaN for an empty row."""
    c = counts.to(torch.float64)
    total = c.sum(-1, keepdim=True)
    p = c / total
    plogp = torch.where(c > 0, p * torch.log(torch.where(c > 0, p, 1.0)), 0.0)
    h = -plogp.sum(-1) + 0.0
    h = torch.where(total.squeeze(-1) > 0, h, math.nan)
    return h if log_base is None else h / log_base


def _entropy_rows(backend: str, counts: torch.Tensor, log_base) -> torch.Tensor:
    if backend in ("cpp", "cuda"):
        return torch.ops.eitp.entropy_from_counts(counts, log_base)
    return _entropy_torch(counts, log_base)


def _soft_counts_torch(xs: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    """Linear-binning counts (float64) as in the reference, differentiable by autograd."""
    lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    w = (hi - lo) / bins
    valid = reference._counted(xs, lo, hi, explicit)
    u = (xs - lo) / w - 0.5
    live = valid & (w != 0) & ~torch.isnan(u.detach())
    k = torch.floor(u.detach())
    f = u - k
    k = torch.where(live, k, 0.0)
    f = torch.where(live, f, 0.0)
    kc = k.clamp(0, bins - 1).to(torch.int64)
    k1c = (k + 1).clamp(0, bins - 1).to(torch.int64)
    w_lo = torch.where(valid, 1.0 - f, 0.0).to(torch.float64)
    counts = torch.zeros(xs.shape[0], bins, dtype=torch.float64, device=xs.device)
    return counts.scatter_add(1, kc, w_lo).scatter_add(1, k1c, f.to(torch.float64))


def _soft_entropy(counts: torch.Tensor, log_base) -> torch.Tensor:
    """H of soft counts; value of the reference formula, gradient dH/dc_j = -(lnp_j + H)/N.

    ``lnp = ln(clamp(p, ENTROPY_LOG_FLOOR))`` is held constant in the gradient
    carrier ``-sum p * lnp``, whose derivative is exactly that table.
    """
    n = counts.sum(-1, keepdim=True)
    p = counts / n
    lnp = torch.log(p.detach().clamp(min=reference.ENTROPY_LOG_FLOOR))
    carrier = -(p * lnp).sum(-1)
    h = _entropy_torch(counts.detach(), None) + (carrier - carrier.detach())
    return h if log_base is None else h / log_base


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_common(op, bins, range, base, *, codes: bool):
    bins = _validation.check_int(op, "bins", bins, minimum=1)
    if bins > MAX_BINS:
        raise ValueError(f"{op}: bins must be <= {MAX_BINS}, got {bins}")
    rng = _validation.check_range(op, "range", range)
    log_base = None
    if base is not None:
        base = _validation.check_float(op, "base", base, positive=True)
        if base == 1.0:
            raise ValueError(f"{op}: base must not be 1 (log base 1 is undefined)")
        log_base = math.log(base)
    if codes:
        if bins != 256:
            raise ValueError(f"{op}: int8/uint8 codes have 256 bins (one per code); bins must be 256, got {bins}")
        if rng is not None:
            raise ValueError(f"{op}: int8/uint8 codes take no range (each code is its own bin), got range={range!r}")
    return bins, rng, log_base


def _check_process_group(op, process_group):
    if process_group is None:
        return
    import torch.distributed as dist

    if not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
        raise TypeError(f"{op}: process_group must be None or a torch.distributed.ProcessGroup, "
                        f"got {type(process_group).__name__}")


def _as_rows(x: torch.Tensor, dim):
    if dim is None:
        return x.reshape(1, x.numel()), ()
    moved = x.movedim(dim, -1)
    batch = tuple(moved.shape[:-1])
    return moved.reshape(math.prod(batch), moved.shape[-1]), batch


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def histogram_entropy(
    x: torch.Tensor,
    bins: int = 256,
    range: tuple[float, float] | None = None,
    dim: int | None = None,
    base: float | None = None,
    differentiable: bool = False,
    process_group=None,
) -> torch.Tensor:
    """Shannon entropy of the value histogram of ``x``, computed on x's device.

    ``H = -sum_{b: c_b > 0} p_b ln p_b``, ``p_b = c_b / sum(c)``, with ``bins``
    equal-width bins over ``range = (lo, hi)`` or, when ``range is None``, over
    the finite min/max of each slice (found on the device: no host sync).
    ``x == hi`` falls in the last bin. Units: nats, or ``H / ln(base)``
    (``base=2``: bits). Exactly ``reference.histogram_entropy``.

    Args:
        x: fp16, bf16, fp32 or fp64 tensor, or int8/uint8 codes (then each code
            is its own bin: ``bins`` must be 256 and ``range`` None; base 2 gives
            the bits per parameter an entropy coder needs).
        bins: number of bins, 1 to 2^24.
        range: ``(lo, hi)`` with lo < hi, or None for the automatic range.
        dim: None for one entropy of all elements (result shape ``()``), or the
            dim to reduce: one entropy per 1-D slice along it (result shape
            ``x.shape`` without ``dim``), each with its own automatic range.
        base: logarithm base (> 0, != 1), or None for natural log.
        differentiable: linear binning with the DESIGN §2.1 gradient (range
            held constant), for use as a loss term. Float input only.
        process_group: a ``torch.distributed`` group: the automatic range is
            all-reduced (MIN/MAX) and the counts (SUM), so every rank gets the
            entropy of the data of all ranks (x must have the same number of
            slices on each rank).

    Returns:
        float64 for fp64 input, float32 otherwise. NaN/Inf: non-finite values
        are never counted; a slice where nothing was counted (all non-finite,
        all outside ``range``, or empty) gives NaN; a constant slice gives 0.
        A range wider than the compute dtype can hold (hi - lo overflows float32
        for non-fp64 x, e.g. values near +-3e38) makes the bin width infinite:
        every counted value falls in bin 0, so the entropy is 0 (compute in
        float64 to avoid it).

    Bytes moved (hard binning): automatic range 2 reads of x (range pass, count
    pass); explicit range or codes 1 read; plus rows x bins x 8 written and
    read back for the counts.
    """
    is_code = isinstance(x, torch.Tensor) and x.dtype in _validation.CODE_DTYPES
    _validation.check_tensor(OP, "x", x, dtypes=_validation.FLOAT_DTYPES + _validation.CODE_DTYPES, allow_empty=True)
    bins, rng, log_base = _check_common(OP, bins, range, base, codes=is_code)
    if dim is not None:
        dim = _validation.check_dim(OP, "dim", dim, x.dim())
    if not isinstance(differentiable, bool):
        raise TypeError(f"{OP}: differentiable must be a bool, got {type(differentiable).__name__}")
    if differentiable and is_code:
        raise TypeError(f"{OP}: differentiable=True needs a floating-point x, got {x.dtype}")
    _check_process_group(OP, process_group)

    acc = reference.compute_dtype(x.dtype)
    if differentiable:
        backend = _backends.resolve(OP, x.device, IMPLEMENTED_DIFFERENTIABLE)
        if backend == "reference" and process_group is None:
            return reference.histogram_entropy(x, bins=bins, range=rng, dim=dim, base=base, differentiable=True)
        rows, batch = _as_rows(x.to(acc), dim)
        rows = rows.contiguous()
        lo, hi = _range_rows(backend, rows.detach(), rng, process_group)
        if backend in ("cpp", "cuda"):
            counts = torch.ops.eitp.soft_histogram(rows, lo, hi, bins, rng is not None)
        elif backend == "triton":
            counts = torch.ops.eitp_triton.soft_histogram(rows, lo, hi, bins, rng is not None)
        else:
            counts = _soft_counts_torch(rows, lo, hi, bins, rng is not None)
        if process_group is not None:
            import torch.distributed as dist

            total = counts.detach().clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=process_group)
            counts = counts + (total - counts.detach())  # value: global counts; gradient: to local x
        return _soft_entropy(counts, log_base).to(acc).reshape(batch)

    backend = _backends.resolve(OP, x.device, IMPLEMENTED)
    if backend == "reference" and process_group is None:
        return reference.histogram_entropy(x, bins=bins, range=rng, dim=dim, base=base)
    rows, batch = _as_rows(x, dim)
    rows = rows.contiguous()
    if is_code:
        lo = hi = None
    else:
        lo, hi = _range_rows(backend, rows, rng, process_group)
    counts = _counts_rows(backend, rows, lo, hi, bins, rng is not None)
    if process_group is not None:
        import torch.distributed as dist

        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=process_group)
    return _entropy_rows(backend, counts, log_base).to(acc).reshape(batch)


def histogram_entropy_many(
    tensors: Sequence[torch.Tensor],
    bins: int = 256,
    range: tuple[float, float] | None = None,
    base: float | None = None,
) -> torch.Tensor:
    """Entropy of each tensor of a list (all its elements, as ``histogram_entropy(t)``).

    Returns a 1-D tensor of ``len(tensors)`` entropies: float64 when any tensor
    is float64, else float32. Each tensor gets its own automatic range unless
    ``range`` is given. The tensors may differ in shape and dtype (int8/uint8
    codes need bins == 256 and no range) and must share a device.

    Launches: on CPU one ``eitp::histogram_counts_many`` over the whole list
    (parallel across tensors and within large ones: ranges in one parallel
    pass, counts in a second) plus one ``entropy_from_counts``. On CUDA the
    compiled op makes two launches per tensor (range, counts), all on the
    current stream without host sync; the Triton backend three per tensor.
    """
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{MANY_OP}: tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 0:
        raise ValueError(f"{MANY_OP}: tensors is empty; it needs at least one tensor")
    any_code = False
    for i, t in enumerate(tensors):
        _validation.check_tensor(MANY_OP, f"tensors[{i}]", t,
                                 dtypes=_validation.FLOAT_DTYPES + _validation.CODE_DTYPES, allow_empty=True)
        if i:
            _validation.check_same_device(MANY_OP, "tensors[0]", tensors[0], f"tensors[{i}]", t)
        any_code = any_code or t.dtype in _validation.CODE_DTYPES
    bins, rng, log_base = _check_common(MANY_OP, bins, range, base, codes=any_code)
    out_dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    backend = _backends.resolve(MANY_OP, tensors[0].device, IMPLEMENTED_MANY)
    if backend in ("cpp", "cuda"):
        counts = torch.ops.eitp.histogram_counts_many(list(tensors), bins, None if rng is None else list(rng))
        return torch.ops.eitp.entropy_from_counts(counts, log_base).to(out_dtype)
    if backend == "triton":
        return torch.stack([histogram_entropy(t, bins=bins, range=rng, base=base).to(out_dtype) for t in tensors])
    return torch.stack([reference.histogram_entropy(t, bins=bins, range=rng, base=base).to(out_dtype)
                        for t in tensors])


# --------------------------------------------------------------------------
# Fake kernels and autograd of the compiled ops
# --------------------------------------------------------------------------


def _register() -> None:
    @torch.library.register_fake("eitp::histogram_counts")
    def _(x, lo, hi, bins, explicit_range):
        return x.new_empty((x.shape[0], bins), dtype=torch.int64)

    @torch.library.register_fake("eitp::histogram_counts_many")
    def _(xs, bins, range):
        return xs[0].new_empty((len(xs), bins), dtype=torch.int64)

    @torch.library.register_fake("eitp::soft_histogram")
    def _(x, lo, hi, bins, explicit_range):
        return x.new_empty((x.shape[0], bins), dtype=torch.float64)

    @torch.library.register_fake("eitp::soft_histogram_backward")
    def _(grad_counts, x, lo, hi, bins, explicit_range):
        return x.new_empty(x.shape, dtype=reference.compute_dtype(x.dtype))

    @torch.library.register_fake("eitp::entropy_from_counts")
    def _(counts, log_base):
        return counts.new_empty((counts.shape[0],), dtype=torch.float64)

    _register_soft_histogram_autograd("eitp")


if _extension.load()[0]:
    _register()
if triton is not None:
    _register_triton_ops()
