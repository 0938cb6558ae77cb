"""Histogram entropy (docs/design.md §2.1): fused, device-side, never syncs with the host.

    w = (hi - lo) / bins,   b(x) = clamp(floor((x - lo) / w), 0, bins - 1)
    p_b = c_b / sum(c),     H = -sum_{c_b > 0} p_b ln p_b   [/ ln(base)]   (nats, or bits for base 2)

``(lo, hi)`` is the finite min/max of each slice (computed on the device) or
the given ``range``. int8/uint8 codes: one bin per code (256 bins). Exactly
the arithmetic of ``reference.histogram_counts`` (true division in the
accumulation dtype, float64 for fp64 input and float32 otherwise), so float32
counts match the reference bit for bit.

Each call is three compiled ops on (rows, length) views: ``finite_minmax``
(the range; skipped for an explicit range and for codes),
``histogram_counts`` (rows x bins int64) and ``entropy_from_counts``; on the
Triton backend (without a process group) one op, ``histogram_entropy_rows``,
that launches the three steps' kernels and nothing else.
Differentiable mode (linear binning): ``soft_histogram`` makes float64 soft
counts (x adds 1-f to bin k and f to bin k+1, u = (x-lo)/w - 0.5, k =
floor(u), f = u - k), and the entropy's gradient dH/dc_j = -(ln p_j + H) / N
(ln p of p clamped at ``_layout.ENTROPY_LOG_FLOOR``) gives dH/dx = (ln p_k -
ln p_{k+1}) / (N w); the range is held constant. The Triton kernels are in
``eitp_kernels.triton.entropy``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from eitp_kernels import _backends, _layout, _registration, _validation, reference
from eitp_kernels import _dtensor
from eitp_kernels.ops.finite_minmax import ROWS as FINITE_MINMAX_ROWS

OP = "histogram_entropy"
MANY_OP = "histogram_entropy_many"
# The most bins: the number and its reason are csrc/kernels/entropy.h's
# kMaxBins, which the compiled ops check; stated here for every backend
# (tests/test_cpp_rules.py ties the two).
MAX_BINS = 1 << 24


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
            Each bound is a number or a 0-d tensor on any device (e.g.
            ``(x.min(), x.max())``, as ``torch.histc`` takes): tensors are
            converted on x's device without a host sync, so lo < hi is checked
            there: a tensor range with lo >= hi or a non-finite bound gives NaN.
        dim: None for one entropy of all elements (result shape ``()``), or the
            dim to reduce: one entropy per 1-D slice along it (result shape
            ``x.shape`` without ``dim``), each with its own automatic range.
        base: logarithm base (> 0, != 1), or None for natural log.
        differentiable: linear binning with the docs/design.md §2.1 gradient (range
            held constant), for use as a loss term. Float input only.
        process_group: a ``torch.distributed`` group: the automatic range is
            all-reduced (MIN/MAX) and the counts (SUM), so every rank gets the
            entropy of the data of all ranks (x must have the same number of
            slices on each rank; the slices' lengths may differ). Gradient
            convention (``differentiable=True``), the same as
            ``coherence_loss``: each rank's x receives ``world_size * dH/dx_rank``,
            so that DDP's averaging of the ranks' parameter gradients gives
            exactly the gradient of single-process training on the
            concatenated batch (add it to per-rank batch-mean losses as
            usual). The range is held constant (the automatic one is the
            global min/max).

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
    if _dtensor.holds_dtensor(x, range):  # docs/design.md §3.3
        return _dtensor.histogram_entropy(x, bins, range, dim, base, differentiable, process_group)
    is_code = isinstance(x, torch.Tensor) and x.dtype in _validation.CODE_DTYPES
    _validation.check_tensor(OP, "x", x, dtypes=_validation.FLOAT_DTYPES + _validation.CODE_DTYPES, allow_empty=True)
    bins, rng, log_base = _check_common(OP, bins, range, base, codes=is_code)
    if dim is not None:
        dim = _validation.check_dim(OP, "dim", dim, x.dim())
    _validation.check_bool(OP, "differentiable", differentiable)
    if differentiable and is_code:
        raise TypeError(f"{OP}: differentiable=True needs a floating-point x, got {x.dtype}")
    _validation.check_process_group(OP, process_group)

    acc = _layout.compute_dtype(x.dtype)
    if differentiable:
        backend = _backends.resolve(OP, x.device, _backends.IMPLEMENTED)
        if backend == "reference" and process_group is None and not _validation.range_has_tensor(rng):
            return reference.histogram_entropy(x, bins=bins, range=rng, dim=dim, base=base, differentiable=True)
        rows, batch = _layout.slices_as_rows(x.to(acc), dim)
        rows = rows.contiguous()
        lo, hi = _range_rows(backend, rows.detach(), rng, process_group)
        counts = _SOFT_COUNTS[backend](rows, lo, hi, bins, rng is not None)
        if process_group is not None:
            counts = _global_soft_counts(counts, process_group)
        return _soft_entropy(counts, log_base).to(acc).reshape(batch)

    backend = _backends.resolve(OP, x.device, _backends.IMPLEMENTED)
    if backend == "reference" and process_group is None and not _validation.range_has_tensor(rng):
        return reference.histogram_entropy(x, bins=bins, range=rng, dim=dim, base=base)
    rows, batch = _layout.slices_as_rows(x, dim)
    rows = rows.contiguous()
    if backend in _ENTROPY_ROWS and process_group is None:
        return _entropy_one_call(backend, rows, bins, rng, log_base).reshape(batch)
    if is_code:
        counts = _counts_rows(backend, rows, None, None, bins, False)
    elif process_group is None and backend in _COUNTS_WITH_RANGE and not _validation.range_has_tensor(rng):
        # the range given as numbers, or found inside the op
        counts = _COUNTS_WITH_RANGE[backend](rows, bins, None if rng is None else [float(v) for v in rng])
    else:
        lo, hi = _range_rows(backend, rows, rng, process_group)
        counts = _counts_rows(backend, rows, lo, hi, bins, rng is not None)
    if process_group is not None:
        import torch.distributed as dist

        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=process_group)
    return _entropy_rows(backend, counts, log_base, acc).reshape(batch)


def histogram_entropy_many(
    tensors: Sequence[torch.Tensor],
    bins: int = 256,
    range: tuple[float, float] | None = None,
    base: float | None = None,
) -> torch.Tensor:
    """Entropy of each tensor of a list (all its elements, as ``histogram_entropy(t)``).

    Returns a 1-D tensor of ``len(tensors)`` entropies: float64 when any tensor
    is float64, else float32. Each tensor gets its own automatic range unless
    ``range`` is given (numbers, or 0-d tensors as in ``histogram_entropy``:
    then each tensor is counted by its own launch, since the many-tensor
    kernels take the range as host numbers). The tensors may differ in shape and dtype (int8/uint8
    codes need bins == 256 and no range) and must share a device.

    Launches do not grow with the number of tensors; nothing syncs with the host:
      * CPU (``cpp``): one ``eitp::histogram_counts_many`` over the whole list
        (parallel across tensors and within large ones: ranges in one parallel
        pass, counts in a second) plus one ``entropy_from_counts``.
      * CUDA: one asynchronous host-to-device copy of a segment table (data
        address, length, dtype and range of every tensor, from pinned memory),
        one range kernel (automatic range only) and one counting kernel for
        all tensors of all dtypes (one block per (tensor, chunk) work item,
        found by binary search), then one ``entropy_from_counts``; plus the
        zero fill of the counts and the final dtype cast.
      * Triton: per dtype group (at most six: fp16, bf16, fp32, fp64, int8,
        uint8), one ``torch.cat`` of the group's flattened tensors (a copy of
        their bytes; skipped for a lone contiguous tensor; on CUDA torch's
        cat copies up to 128 inputs per launch), two range kernels (per-chunk
        partials and their per-tensor fold; automatic range only) and one
        counting kernel; plus one entropy kernel. The small offset table is
        built and copied to the device once per list signature (dtypes and
        lengths, bins, range mode; kept for the 32 latest).
    A non-contiguous tensor is first copied to a contiguous one (one copy each).
    The CUDA op copies a table from host memory on every call, the Triton op
    on a signature's first call and on every call under CUDA graph capture
    (a kept table would sit in the graph's pool), so neither can be captured
    in a CUDA graph: they are tagged ``cudagraph_unsafe`` and torch.compile's
    CUDA graphs run them outside the graph.
    """
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{MANY_OP}: tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 0:
        raise ValueError(f"{MANY_OP}: tensors is empty; it needs at least one tensor")
    if _dtensor.holds_dtensor(tensors):  # docs/design.md §3.3
        return _dtensor.histogram_entropy_many(tensors, bins, range, base)
    any_code = False
    for i, t in enumerate(tensors):
        _validation.check_tensor(MANY_OP, f"tensors[{i}]", t,
                                 dtypes=_validation.FLOAT_DTYPES + _validation.CODE_DTYPES, allow_empty=True)
        if i:
            _validation.check_same_device(MANY_OP, "tensors[0]", tensors[0], f"tensors[{i}]", t)
        any_code = any_code or t.dtype in _validation.CODE_DTYPES
    bins, rng, log_base = _check_common(MANY_OP, bins, range, base, codes=any_code)
    out_dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    backend = _backends.resolve(MANY_OP, tensors[0].device, _backends.IMPLEMENTED)
    if _validation.range_has_tensor(rng):
        counts = _counts_each_with_tensor_range(backend, list(tensors), bins, rng)
        return _entropy_rows(backend, counts, log_base, out_dtype)
    if backend in _COUNTS_MANY:
        counts = _counts_many(backend, list(tensors), bins, rng)
        return _entropy_rows(backend, counts, log_base, out_dtype)
    return torch.stack([reference.histogram_entropy(t, bins=bins, range=rng, base=base).to(out_dtype)
                        for t in tensors])


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_common(op, bins, range, base, *, codes: bool):
    bins = _validation.check_int(op, "bins", bins, minimum=1)
    if bins > MAX_BINS:
        raise ValueError(f"{op}: bins must be <= {MAX_BINS}, got {bins}")
    rng = _validation.check_range(op, "range", range, allow_tensors=True)
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


# --------------------------------------------------------------------------
# Backends (rows = (R, L) contiguous view)
# --------------------------------------------------------------------------


def _range_rows(backend: str, rows: torch.Tensor, rng, process_group):
    """(lo, hi), each (R,) in the accumulation dtype: finite min/max or the given range."""
    acc = _layout.compute_dtype(rows.dtype)
    if _validation.range_has_tensor(rng):
        return _tensor_range(rng, rows.shape[0], acc, rows.device)
    if rng is not None:
        lo = torch.full((rows.shape[0],), float(rng[0]), dtype=acc, device=rows.device)
        hi = torch.full((rows.shape[0],), float(rng[1]), dtype=acc, device=rows.device)
        return lo, hi
    lo, hi = FINITE_MINMAX_ROWS[backend](rows)
    if process_group is not None:
        import torch.distributed as dist

        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=process_group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=process_group)
    return lo, hi


def _tensor_range(rng, rows: int, acc: torch.dtype, device: torch.device):
    """(lo, hi), each (rows,) in ``acc`` on ``device``, from a range with 0-d tensor bounds.

    Converted on the device, rounded to ``acc`` as a Python bound would be,
    without a host sync: a CPU bound for a GPU tensor is read on the host and
    filled in (copying pageable host memory to a GPU waits for the device). lo <
    hi and finiteness cannot be checked on the host without a sync: a range that
    fails them becomes (NaN, NaN), which counts nothing, so the entropy is NaN.
    """
    lo, hi = (_bound_on(v, acc, device) for v in rng)
    bad = ~((lo < hi) & torch.isfinite(lo) & torch.isfinite(hi))
    nan = torch.full_like(lo, math.nan)
    lo, hi = torch.where(bad, nan, lo), torch.where(bad, nan, hi)
    return lo.reshape(1).expand(rows).contiguous(), hi.reshape(1).expand(rows).contiguous()


def _bound_on(v, acc: torch.dtype, device: torch.device) -> torch.Tensor:
    """One range bound (a number or a 0-d tensor) as a 0-d ``acc`` tensor on ``device``."""
    if not isinstance(v, torch.Tensor):
        return torch.full((), v, dtype=acc, device=device)
    v = v.detach().to(dtype=acc)
    if v.device.type == "cpu" and device.type != "cpu" and not torch.compiler.is_compiling():
        return torch.full((), v.item(), dtype=acc, device=device)
    return v.to(device=device)


def _torch_counts(rows: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    """int64 counts with the reference's arithmetic, for tensor-valued ranges."""
    if rows.dtype in _validation.CODE_DTYPES:
        return reference.histogram_counts(rows, bins=256, dim=1).to(torch.int64)
    xc = rows.to(_layout.compute_dtype(rows.dtype))
    return reference.bin_counts(xc, lo.unsqueeze(1), hi.unsqueeze(1), bins, explicit)


def _counts_rows(backend: str, rows: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    return _COUNTS[backend](rows, lo, hi, bins, explicit)


def _counts_many(backend: str, tensors: list[torch.Tensor], bins: int, rng) -> torch.Tensor:
    """int64 counts (len(tensors), bins): one histogram of all elements of each tensor."""
    return _COUNTS_MANY[backend](tensors, bins, None if rng is None else list(rng))


def _counts_each_with_tensor_range(backend: str, tensors: list[torch.Tensor], bins: int, rng) -> torch.Tensor:
    """int64 counts (len(tensors), bins) for a range with tensor bounds: the
    many-tensor kernels take the range as host numbers, so each tensor is
    counted by the single-tensor op (one counting launch per tensor)."""
    counts = []
    for t in tensors:
        row = t.reshape(1, t.numel()).contiguous()
        lo, hi = _tensor_range(rng, 1, _layout.compute_dtype(t.dtype), t.device)
        counts.append(_counts_rows(backend, row, lo, hi, bins, True))
    return torch.cat(counts)


def _entropy_torch(counts: torch.Tensor, log_base) -> torch.Tensor:
    """H per row of counts (float64), the reference's formula; NaN for an empty row."""
    return _layout.entropy_from_counts(counts.to(torch.float64), log_base)


def _entropy_rows(backend: str, counts: torch.Tensor, log_base, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """H per row of counts as ``dtype`` (float32 or float64); the compiled ops
    write it directly, without a conversion after them."""
    if backend in _ENTROPY_AS_DTYPE:
        return _ENTROPY_AS_DTYPE[backend](counts, log_base, dtype)
    return _ENTROPY[backend](counts, log_base).to(dtype)


def _entropy_one_call(backend: str, rows: torch.Tensor, bins: int, rng, log_base) -> torch.Tensor:
    """H per row (accumulation dtype) by one op that finds the range, counts and takes the
    entropy on the device (triton: three launches); the automatic range where rng is None."""
    if rng is None or rows.dtype in _validation.CODE_DTYPES:
        return _ENTROPY_ROWS[backend](rows, None, None, bins, False, log_base, None)
    if _validation.range_has_tensor(rng):
        lo, hi = _range_rows(backend, rows, rng, None)
        return _ENTROPY_ROWS[backend](rows, lo, hi, bins, True, log_base, None)
    return _ENTROPY_ROWS[backend](rows, None, None, bins, True, log_base, [float(rng[0]), float(rng[1])])


def _soft_counts_torch(xs: torch.Tensor, lo, hi, bins: int, explicit: bool) -> torch.Tensor:
    """Linear-binning counts (float64) as in the reference, differentiable by autograd."""
    return reference.linear_binning_counts(xs, lo.unsqueeze(1), hi.unsqueeze(1), bins, explicit)[0]


def _global_soft_counts(counts: torch.Tensor, process_group) -> torch.Tensor:
    """The all-reduced (SUM) soft counts, with the gradient that DDP's averaging expects.

    Value: the counts of every rank's data. Gradient: ``world_size * dL/dc``
    flows back to this rank's own counts (and so to its x). H depends on the
    local counts only through the global ones (dH/dc_rank = dH/dc_global), so
    the exact gradient of this rank's slice is dL/dc; DDP then averages the
    ranks' parameter gradients, ``(1/world) sum_r``, which would leave
    ``1/world`` of the single-process gradient on the concatenated batch
    without the factor (coherence_loss applies the same factor).
    """
    import torch.distributed as dist

    world = dist.get_world_size(process_group)
    total = counts.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=process_group)
    return total + world * (counts - counts.detach())


def _soft_entropy(counts: torch.Tensor, log_base) -> torch.Tensor:
    """H of soft counts; value of the reference formula, gradient dH/dc_j = -(lnp_j + H)/N.

    ``lnp = ln(clamp(p, ENTROPY_LOG_FLOOR))`` is held constant in the gradient
    carrier ``-sum p * lnp``, whose derivative is exactly that table.
    """
    n = counts.sum(-1, keepdim=True)
    p = counts / n
    lnp = torch.log(p.detach().clamp(min=_layout.ENTROPY_LOG_FLOOR))
    carrier = -(p * lnp).sum(-1)
    h = _entropy_torch(counts.detach(), None) + (carrier - carrier.detach())
    return h if log_base is None else h / log_base


# Each step per backend: the compiled backends' ops, their Triton twins, eager torch.
_op = _backends.op_caller
_COUNTS = {"reference": _torch_counts, "cpp": _op("eitp", "histogram_counts"),
           "cuda": _op("eitp", "histogram_counts"), "triton": _op("eitp_triton", "histogram_counts")}
_COUNTS_MANY = {"cpp": _op("eitp", "histogram_counts_many"), "cuda": _op("eitp", "histogram_counts_many"),
                "triton": _op("eitp_triton", "histogram_counts_many")}  # reference: one call per tensor
_SOFT_COUNTS = {"reference": _soft_counts_torch, "cpp": _op("eitp", "soft_histogram"),
                "cuda": _op("eitp", "soft_histogram"), "triton": _op("eitp_triton", "soft_histogram")}
_ENTROPY = {"reference": _entropy_torch, "cpp": _op("eitp", "entropy_from_counts"),
            "cuda": _op("eitp", "entropy_from_counts"), "triton": _op("eitp_triton", "entropy_from_counts")}
# The whole call in one op (range, counts, entropy; no process group), where a backend has it.
_ENTROPY_ROWS = {"triton": _op("eitp_triton", "histogram_entropy_rows")}
# The ops that take the result's dtype, and the compiled ones that count over
# a range given as numbers or found inside the op (a GPU call: range pass or
# zero fill, counts, entropy).
_ENTROPY_AS_DTYPE = {"cpp": _ENTROPY["cpp"], "cuda": _ENTROPY["cuda"], "triton": _ENTROPY["triton"]}
_COUNTS_WITH_RANGE = {"cpp": _op("eitp", "histogram_counts_with_range"),
                      "cuda": _op("eitp", "histogram_counts_with_range")}


# --------------------------------------------------------------------------
# Custom ops: fake kernels and autograd, for eitp:: and eitp_triton::
# --------------------------------------------------------------------------


def _counts_fake(x, lo, hi, bins, explicit_range):
    return x.new_empty((x.shape[0], bins), dtype=torch.int64)


def _counts_with_range_fake(x, bins, range=None):
    return x.new_empty((x.shape[0], bins), dtype=torch.int64)


def _counts_many_fake(xs, bins, range):
    return xs[0].new_empty((len(xs), bins), dtype=torch.int64)


def _soft_histogram_fake(x, lo, hi, bins, explicit_range):
    return x.new_empty((x.shape[0], bins), dtype=torch.float64)


def _soft_histogram_backward_fake(grad_counts, x, lo, hi, bins, explicit_range):
    return x.new_empty(x.shape, dtype=_layout.compute_dtype(x.dtype))


def _entropy_from_counts_fake(counts, log_base, dtype=None):
    return counts.new_empty((counts.shape[0],), dtype=torch.float64 if dtype is None else dtype)


def _entropy_rows_fake(x, lo, hi, bins, explicit_range, log_base, bounds=None):
    return x.new_empty((x.shape[0],), dtype=_layout.compute_dtype(x.dtype))


def _soft_histogram_setup_context(ctx, inputs, output):
    x, lo, hi, bins, explicit_range = inputs
    ctx.save_for_backward(x, lo, hi)
    ctx.bins = bins
    ctx.explicit_range = explicit_range


def _soft_histogram_backward(ops, ctx, grad_counts):
    x, lo, hi = ctx.saved_tensors
    grad_x = ops.soft_histogram_backward(grad_counts, x, lo, hi, ctx.bins, ctx.explicit_range)
    return grad_x.to(x.dtype), None, None, None, None


_registration.register("histogram_counts", "entropy.histogram_counts", _counts_fake)
_registration.register("histogram_counts_with_range", None, _counts_with_range_fake)  # no Triton twin
# cudagraph_unsafe (as the compiled op's schema): the launcher copies a segment
# table built on the host from pinned memory reused after the call.
_registration.register("histogram_counts_many", "entropy.histogram_counts_many", _counts_many_fake,
                       tags=(torch.Tag.cudagraph_unsafe,))
_registration.register("soft_histogram", "entropy.soft_histogram", _soft_histogram_fake,
                       autograd=(_soft_histogram_setup_context, _soft_histogram_backward))
_registration.register("soft_histogram_backward", "entropy.soft_histogram_backward",
                       _soft_histogram_backward_fake)
_registration.register("entropy_from_counts", "entropy.entropy_from_counts", _entropy_from_counts_fake)
_registration.register("histogram_entropy_rows", "entropy.histogram_entropy_rows", _entropy_rows_fake, compiled=False)
