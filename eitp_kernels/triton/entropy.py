"""Triton kernels and launchers of histogram entropy: the ``triton`` backend of
:mod:`eitp_kernels.ops.entropy`, which validates, dispatches and registers them
as custom ops.

The hard counts kernel counts one tile per program (256 bytes of input a
thread, all loaded before the first is used) into a block-local histogram
(``tl.histogram``, bins <= 4096), zeroed once, merged with one relaxed atomic
per bin (above 4096 bins: one global atomic per element); the bins come from
the division by the program's reciprocal (``_triton.div_setup``: no division
per element, the true division's bins). The soft counts kernel uses two float64
global atomics per element. Many tensors: each tensor is a segment of a flat
buffer per dtype; a work item is one chunk of one segment, found by binary
search in the prefix sum of work items per segment, so one launch covers every
tensor of a dtype.

Launchers, one per op ``eitp_triton::<name>`` with the arguments of its
compiled twin ``eitp::<name>`` (rows: a contiguous (R, L) view):
``histogram_counts``, ``soft_histogram``, ``soft_histogram_backward``,
``histogram_counts_many``, ``entropy_from_counts``; and ``histogram_entropy_rows``
(Triton only): a whole ``histogram_entropy`` call in three launches, the range
pass zeroing the counts, every counting program folding its row's range
partials, the entropy kernel writing the result's dtype.
"""
from __future__ import annotations

import functools

import torch

from eitp_kernels import _layout, _validation
from eitp_kernels._triton import (acc_tl, cdiv, div_constants, div_fast, div_rn_by_count, div_setup, exact_div, fma_rn,
                                  launch, next_power_of_2, tl, triton_jit)
from eitp_kernels.triton import finite_minmax

# The block-local histogram holds next_power_of_2(bins) int32 counters per
# program on chip, and on-chip memory per block is bounded (each kernel's
# shared memory: python -m eitp_kernels._triton_aot); above this many bins each
# element takes one global atomic instead.
_LOCAL_HIST_MAX_BINS = 4096
# Bytes of input each thread of the counting kernel loads (its one tile).
_TILE_BYTES = 256
# The range pass of histogram_entropy_rows: parts of at least _RANGE_CHUNK elements (the chunk of
# triton/finite_minmax.py, in blocks of _RANGE_BLOCK: 16 elements a thread); at most
# _MAX_RANGE_PARTS per row, since every counting program of the row folds them (two loads of
# 4 values a thread at 1024); each part zeroes up to _ZERO_PER_PART bins of the row's counts,
# _ZERO_BLOCK at a time.
_RANGE_CHUNK = 16384
_RANGE_BLOCK = 2048
_MAX_RANGE_PARTS = 1024
_ZERO_PER_PART = 1 << 16
_ZERO_BLOCK = 512


@triton_jit
def _as_acc(n, ACC: tl.constexpr):
    """Integer ``n`` as an ACC scalar. Not ``n.to(ACC)``: Triton's compiler turns an
    integer argument equal to 1 into a Python int constant, which has no ``.to``."""
    return tl.zeros([], ACC) + n


@triton_jit
def _bin_width(lo_ptr, hi_ptr, bins, ACC: tl.constexpr, IS_F64: tl.constexpr):
    """(lo, hi, bins, w) of one histogram as ACC scalars: w = (hi - lo) / bins, the reference's division."""
    lo = tl.load(lo_ptr)
    hi = tl.load(hi_ptr)
    nb = _as_acc(bins, ACC)
    return lo, hi, nb, exact_div(hi - lo, nb, IS_F64)


@triton_jit
def _exact_bins(v, lo, hi, w, nb, DROP: tl.constexpr, EXPLICIT: tl.constexpr, IS_F64: tl.constexpr):
    """Bins (int32) of values v by true division, DROP for values not counted (float64 input)."""
    ok = v - v == 0  # finite (the span's masked tail loads NaN)
    if EXPLICIT:
        ok = ok & (v >= lo) & (v <= hi)
    q = exact_div(v - lo, w, IS_F64)
    # floor clamped to [0, bins-1] == trunc of q clamped to [0, bins-1]
    q = tl.where(q >= 0, q, 0.0)  # also NaN -> 0
    q = tl.where(q < nb - 1.0, q, nb - 1.0)
    q = tl.where(w == 0, 0.0, q)
    return tl.where(ok, q.to(tl.int32), DROP)


@triton_jit
def _fast_bins(v, lo, hi, w, nb, DROP: tl.constexpr, EXPLICIT: tl.constexpr, LOCAL_HIST: tl.constexpr):
    """Bins (int32) of float32 values v, DROP for values not counted, by _triton.div_setup /
    div_fast: the bins of the true division (docs/design.md §2.1), w a scalar.

    (v - lo) * s is one FMA, fma(v, s, -lo * s): exact scaling by the power of two s. A value
    at the top edge may get bin ``bins`` (q = (hi - lo) / w rounds to bins): the merge adds
    that bin to the last one, so no clamp is needed while bins < 2^22 (block-local
    histograms). A non-finite v gives q = NaN, which the minimum with DROP turns into DROP;
    with the automatic range every finite v is in [lo, hi], so no comparison either."""
    s, dn, r = div_setup(w)  # w == 0 or not finite: s = 0, every counted value in bin 0
    q = div_fast(fma_rn(v, s, -tl.where(s == 0.0, 0.0, lo * s)), dn, r)
    if LOCAL_HIST:
        q = tl.minimum(q, DROP)
    else:
        q = tl.where(q == q, tl.minimum(q, nb - 1.0), DROP)  # bins up to 2^24: q(hi) may pass bins + 1
    if EXPLICIT:
        # lo and hi may be infinite (a range beyond float32): v - v == 0 drops +-inf then
        q = tl.where((v >= lo) & (v <= hi) & (v - v == 0), q, DROP)
    return q.to(tl.int32)


@triton_jit
def _count_span(
    x_ptr,
    begin,  # counts x[begin, end), end - begin <= CHUNK
    end,
    lo,  # this histogram's range, ACC scalars (unused for codes)
    hi,
    out_ptr,  # (BINS,) int64 counts to add to
    bins_s,  # _triton.div_constants(BINS): w = (hi - lo) / BINS without a division call
    bins_dn,
    bins_r,
    BINS: tl.constexpr,  # the number of bins (a constant: the merge's masks and addresses fold)
    EXPLICIT: tl.constexpr,  # drop x < lo and x > hi
    IS_CODE: tl.constexpr,  # int8/uint8 input: bin = code + CODE_OFFSET
    CODE_OFFSET: tl.constexpr,
    ACC: tl.constexpr,  # tl.float32 or tl.float64
    IS_F64: tl.constexpr,
    NB: tl.constexpr,  # power of two >= BINS + 2: the block-local histogram (BINS, the top edge, dropped)
    LOCAL_HIST: tl.constexpr,  # block-local histogram, else one atomic per element
    CHUNK: tl.constexpr,
    BF16_PAIRS: tl.constexpr,  # bf16 x read as 32-bit words (begin and end even, x 4-byte aligned)
):
    # The whole span is one tile: every load is issued before the first use, and the
    # block-local histogram is zeroed, filled and merged once per program. The tail past the
    # span loads zeros (one instruction per two registers); their bin, pad_bin, comes off at
    # the merge.
    DROP: tl.constexpr = NB - 1 if LOCAL_HIST else (1 << 30)  # the bin of values not counted (> BINS)
    offsets = tl.arange(0, CHUNK)  # from begin: 32-bit masks, one base address
    in_span = offsets < (end - begin).to(tl.int32)
    if BF16_PAIRS:
        # two bf16 values per 32-bit word, widened by a shift and a mask (one instruction each);
        # the histogram takes them in any order
        half = tl.arange(0, CHUNK // 2)
        words = tl.load((x_ptr + begin).to(tl.pointer_type(tl.uint32), bitcast=True) + half,
                        mask=half < ((end - begin) // 2).to(tl.int32), other=0)
        x = tl.reshape(tl.join((words << 16).to(tl.float32, bitcast=True),
                               (words & 0xFFFF0000).to(tl.float32, bitcast=True)), [CHUNK], can_reorder=True)
    else:
        x = tl.load(x_ptr + begin + offsets, mask=in_span, other=0)
    if IS_CODE:
        b = x.to(tl.int32) + CODE_OFFSET
        pad_bin = CODE_OFFSET
    else:
        nb = _as_acc(BINS, ACC)
        if IS_F64:
            w = exact_div(hi - lo, nb, IS_F64)
            b = _exact_bins(x.to(ACC), lo, hi, w, nb, DROP, EXPLICIT, IS_F64)
            pad_bin = _exact_bins(tl.zeros([], ACC), lo, hi, w, nb, DROP, EXPLICIT, IS_F64)
        else:
            w = div_rn_by_count(hi - lo, nb, bins_s, bins_dn, bins_r)
            b = _fast_bins(x.to(ACC), lo, hi, w, nb, DROP, EXPLICIT, LOCAL_HIST)
            pad_bin = _fast_bins(tl.zeros([], ACC), lo, hi, w, nb, DROP, EXPLICIT, LOCAL_HIST)
    pad = (CHUNK - (end - begin)).to(tl.int32)
    if LOCAL_HIST:
        hist = tl.histogram(b, NB)
        idx = tl.arange(0, NB)
        # bin `BINS` holds values at the top edge: they count in the last bin
        tl.atomic_add(out_ptr + tl.minimum(idx, BINS - 1), hist.to(tl.int64), mask=(idx <= BINS) & (hist > 0),
                      sem="relaxed")
        # (a negative pad_bin was not counted: tl.histogram ignores bins outside [0, NB))
        tl.atomic_add(out_ptr + tl.minimum(pad_bin, BINS - 1), -pad.to(tl.int64),
                      mask=(pad > 0) & (pad_bin >= 0) & (pad_bin <= BINS), sem="relaxed")
    else:
        tl.atomic_add(out_ptr + b, tl.full([CHUNK], 1, tl.int64), mask=(b < BINS) & in_span, sem="relaxed")


@triton_jit
def _row_range(lo_ptr, hi_ptr, parts, lo_value, hi_value, ACC: tl.constexpr, PARTS: tl.constexpr):
    """(lo, hi) of one row, ACC scalars: the float32 arguments (lo_value, hi_value) when PARTS == 0,
    its one stored range (PARTS == 1), or the fold of its ``parts`` <= PARTS range partials
    (min/max: exact in any order; +-inf pads), loaded at once."""
    if PARTS == 0:
        lo = tl.zeros([], ACC) + lo_value
        hi = tl.zeros([], ACC) + hi_value
    elif PARTS == 1:
        lo = tl.load(lo_ptr)
        hi = tl.load(hi_ptr)
    else:
        offsets = tl.arange(0, PARTS)
        live = offsets < parts
        lo = tl.min(tl.load(lo_ptr + offsets, mask=live, other=float("inf")).to(ACC), axis=0)
        hi = tl.max(tl.load(hi_ptr + offsets, mask=live, other=float("-inf")).to(ACC), axis=0)
    return lo, hi


@triton_jit
def _histogram_counts_kernel(
    x_ptr,  # rows: (rows, row_length) contiguous; SEGMENTED: the segments one after another. Float or int8/uint8
    first_item_ptr,  # SEGMENTED: (segments + 1,) exclusive prefix sum of the work items per segment
    offset_ptr,  # SEGMENTED: (segments + 1,) element offset of each segment in x
    row_ptr,  # SEGMENTED: (segments,) output row of each segment
    lo_ptr,  # (rows, parts) range partials per output row (parts 1: the range), accumulation dtype
    hi_ptr,  # (rows, parts); lo and hi unused for codes
    counts_ptr,  # (rows, BINS) int64, zero-filled
    length,  # rows: row_length; SEGMENTED: segments
    steps,  # rows: programs per row (program p counts chunk p % steps of row p // steps);
            # SEGMENTED: binary-search steps, >= ceil(log2(segments))
    parts,  # range partials per row, folded by every program of the row (1 for SEGMENTED)
    lo_value,  # PARTS == 0: the range of every row, float32 (lo_ptr and hi_ptr unused)
    hi_value,
    bins_s,  # _triton.div_constants(BINS)
    bins_dn,
    bins_r,
    BINS: tl.constexpr,
    SEGMENTED: tl.constexpr,  # work items from the segment table (many tensors), else rows x chunks
    EXPLICIT: tl.constexpr,
    IS_CODE: tl.constexpr,
    CODE_OFFSET: tl.constexpr,
    ACC: tl.constexpr,
    IS_F64: tl.constexpr,
    NB: tl.constexpr,
    LOCAL_HIST: tl.constexpr,
    CHUNK: tl.constexpr,  # elements per program (one tile)
    BF16_PAIRS: tl.constexpr,  # bf16 rows of even length from a 4-byte aligned x: read as 32-bit words
    PARTS: tl.constexpr,  # 0 (lo_value, hi_value), 1 (one range per row), or a power of two >= parts
):
    if SEGMENTED:
        seg, begin, end = _segment_work_item(first_item_ptr, offset_ptr, length, steps, CHUNK)
        row = tl.load(row_ptr + seg)
        span_ptr = x_ptr
    else:
        # One flat axis of rows x chunks: CUDA's grid axes 1 and 2 stop at 65535.
        pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
        row = pid // steps
        begin = (pid % steps) * CHUNK
        end = tl.minimum(begin + CHUNK, length)
        span_ptr = x_ptr + row * length
    if IS_CODE:
        lo = 0.0
        hi = 0.0
    else:
        lo, hi = _row_range(lo_ptr + row * parts, hi_ptr + row * parts, parts, lo_value, hi_value, ACC, PARTS)
    _count_span(span_ptr, begin, end, lo, hi, counts_ptr + row * BINS, bins_s, bins_dn,
                bins_r, BINS, EXPLICIT, IS_CODE, CODE_OFFSET, ACC, IS_F64, NB, LOCAL_HIST, CHUNK, BF16_PAIRS)


def _count_meta(dtype: torch.dtype, bins: int, explicit: bool, max_span: int) -> dict:
    """Meta-parameters of the Triton counting kernels for `dtype` and spans of up to `max_span` elements
    (a dict shared between calls: read it, never change it). Computed once per argument tuple
    (symbolic sizes while torch.compile traces: each time, no hash that would specialise them)."""
    if type(max_span) is int and type(bins) is int:
        return _cached_count_meta(dtype, bins, explicit, max_span)
    return _new_count_meta(dtype, bins, explicit, max_span)


def _new_count_meta(dtype: torch.dtype, bins: int, explicit: bool, max_span: int) -> dict:
    local = bins <= _LOCAL_HIST_MAX_BINS
    acc = _layout.compute_dtype(dtype)
    # One tile per program: _TILE_BYTES per thread, all loaded before the first use (the
    # once-per-program work, about 200 instructions on sm_90, spread over 64-256 elements
    # per thread); short spans (many of them) in one tile each, on fewer warps.
    per_thread = _TILE_BYTES // dtype.itemsize
    chunk = max(16, next_power_of_2(max_span))
    chunk = min(chunk, 8 * 32 * per_thread if local else 4096)
    return dict(
        EXPLICIT=explicit, IS_CODE=dtype in _validation.CODE_DTYPES, CODE_OFFSET=128 if dtype == torch.int8 else 0,
        ACC=acc_tl(acc), IS_F64=acc == torch.float64,
        BINS=bins, NB=next_power_of_2(bins + 2), LOCAL_HIST=local, CHUNK=chunk,
        num_warps=min(8, max(1, chunk // (32 * per_thread))) if local else 4,
    )


_cached_count_meta = functools.lru_cache(maxsize=256)(_new_count_meta)


def histogram_counts(x: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None, bins: int,
                     explicit_range: bool) -> torch.Tensor:
    n_rows, row_length = x.shape
    counts = x.new_zeros((n_rows, bins), dtype=torch.int64)
    _launch_counts(x, lo, hi, 1, counts, explicit_range)
    return counts


def _launch_counts(x: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None, parts: int,
                   counts: torch.Tensor, explicit_range: bool, bounds: tuple[float, float] | None = None) -> None:
    """Add the counts of each row of x to ``counts`` (rows, bins), zero-filled before the launch; the
    range of row r: the fold of lo[r, :parts], hi[r, :parts] (parts 1: lo[r], hi[r]), or ``bounds``
    for every row (float32 accumulation only: kernel arguments are float32)."""
    n_rows, row_length = x.shape
    bins = counts.shape[1]
    if x.numel() == 0:
        return
    meta = _count_meta(x.dtype, bins, explicit_range, row_length)
    if meta["IS_CODE"] or bounds is not None:
        lo = hi = counts  # unused
    chunks = cdiv(row_length, meta["CHUNK"])
    # (the allocator aligns storages to 16 bytes or more: an even offset is a 4-byte aligned bf16 pair)
    pairs = x.dtype == torch.bfloat16 and row_length % 2 == 0 and x.storage_offset() % 2 == 0
    launch(_histogram_counts_kernel, (n_rows * chunks,), x, counts, counts, counts, lo, hi, counts, row_length, chunks,
           parts, *(bounds or (0.0, 0.0)), *div_constants(bins), SEGMENTED=False, BF16_PAIRS=pairs,
           PARTS=0 if bounds is not None else 1 if parts == 1 else _MAX_RANGE_PARTS,
           **meta)  # counts: the segment table, unused


# ---- many tensors: one flat buffer per dtype, segments found by binary search


@triton_jit
def _segment_work_item(
    first_item_ptr,  # (segments + 1,) exclusive prefix sum of the work items of each segment
    offset_ptr,  # (segments + 1,) element offset of each segment in the flat buffer
    segments,
    search_steps,  # >= ceil(log2(segments))
    CHUNK: tl.constexpr,  # elements per work item
):
    """(segment, begin, end) of this program's work item: chunk
    ``item - first_item[s]`` of the last segment ``s`` with ``first_item[s] <= item``
    (an empty segment owns no item, so a tie resolves to the non-empty one after it)."""
    item = tl.program_id(0).to(tl.int64)
    lo = item * 0
    hi = lo + segments - 1
    for _ in range(search_steps):
        mid = (lo + hi + 1) >> 1
        go = tl.load(first_item_ptr + mid) <= item
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
    begin = tl.load(offset_ptr + lo) + (item - tl.load(first_item_ptr + lo)) * CHUNK
    end = tl.minimum(begin + CHUNK, tl.load(offset_ptr + lo + 1))
    return lo, begin, end


@triton_jit
def _segments_range_partials_kernel(
    x_ptr,  # flat buffer: the segments one after another, one float dtype
    first_item_ptr,
    offset_ptr,
    part_lo_ptr,  # (items,) finite min of each work item, accumulation dtype
    part_hi_ptr,  # (items,) finite max
    segments,
    search_steps,
    ACC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _, begin, end = _segment_work_item(first_item_ptr, offset_ptr, segments, search_steps, CHUNK)
    lo, hi = finite_minmax._finite_minmax_span(x_ptr, begin, end, ACC, BLOCK)
    item = tl.program_id(0).to(tl.int64)
    tl.store(part_lo_ptr + item, lo)
    tl.store(part_hi_ptr + item, hi)


@triton_jit
def _segments_range_reduce_kernel(
    part_lo_ptr,  # (items,) from _segments_range_partials_kernel
    part_hi_ptr,
    first_item_ptr,  # (segments + 1,)
    row_ptr,  # (segments,) output row of each segment
    lo_ptr,  # (rows,) range per output row, accumulation dtype
    hi_ptr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per segment folds the partials of its work items (none for
    # an empty segment: (+inf, -inf), and nothing is counted).
    seg = tl.program_id(0).to(tl.int64)
    first = tl.load(first_item_ptr + seg)
    last = tl.load(first_item_ptr + seg + 1)
    lo = tl.full([BLOCK], float("inf"), ACC)
    hi = tl.full([BLOCK], float("-inf"), ACC)
    for start in tl.range(first, last, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < last
        lo = tl.minimum(lo, tl.load(part_lo_ptr + offsets, mask=mask, other=float("inf")))
        hi = tl.maximum(hi, tl.load(part_hi_ptr + offsets, mask=mask, other=float("-inf")))
    row = tl.load(row_ptr + seg)
    tl.store(lo_ptr + row, tl.min(lo, axis=0))
    tl.store(hi_ptr + row, tl.max(hi, axis=0))


@triton_jit
def _soft_bin(v, lo, hi, w, bins, in_row, EXPLICIT: tl.constexpr, IS_F64: tl.constexpr):
    """Linear binning in the reference's arithmetic: (valid, live, k0, k1, f)."""
    valid = in_row & (v - v == 0)
    if EXPLICIT:
        valid = valid & (v >= lo) & (v <= hi)
    live = valid & ((tl.zeros_like(v) + w) != 0)  # broadcast first: the interpreter wants two blocks
    u = exact_div(v - lo, w, IS_F64) - 0.5
    live = live & (u == u)  # NaN u (inf/inf: hi - lo overflowed) is not live, as in the reference
    k = tl.floor(u)
    f = u - k
    k = tl.where(live, k, 0.0)
    f = tl.where(live, f, 0.0)
    top = tl.zeros([], k.dtype) + (bins - 1)  # not (bins - 1).to(): bins may be the constant 1
    k0 = tl.minimum(tl.maximum(k, 0.0), top).to(tl.int32)
    k1 = tl.minimum(tl.maximum(k + 1.0, 0.0), top).to(tl.int32)
    return valid, live, k0, k1, f


@triton_jit
def _soft_row(lo_ptr, hi_ptr, parts, bins, ACC: tl.constexpr, IS_F64: tl.constexpr):
    """(row, part, lo, hi, w) of this program: part ``pid % parts`` of row ``pid // parts``
    (one flat axis of rows x parts), with the row's range and bin width."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // parts
    lo, hi, _, w = _bin_width(lo_ptr + row, hi_ptr + row, bins, ACC, IS_F64)
    return row, pid % parts, lo, hi, w


@triton_jit
def _soft_histogram_kernel(
    x_ptr,  # (rows, row_length), contiguous, float dtypes
    lo_ptr,  # (rows,) accumulation dtype
    hi_ptr,
    counts_ptr,  # (rows, bins) float64, zero-filled
    row_length,
    chunks,  # programs per row (one flat axis of rows x chunks)
    bins,
    EXPLICIT: tl.constexpr,
    ACC: tl.constexpr,
    IS_F64: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Weighted counts: tl.histogram has no weights, so two float64 global
    # atomics per counted element.
    row, chunk, lo, hi, w = _soft_row(lo_ptr, hi_ptr, chunks, bins, ACC, IS_F64)
    row_ptr = x_ptr + row * row_length
    out_ptr = counts_ptr + row * bins
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
    blocks,  # programs per row (one flat axis of rows x blocks)
    bins,
    EXPLICIT: tl.constexpr,
    ACC: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, block, lo, hi, w = _soft_row(lo_ptr, hi_ptr, blocks, bins, ACC, IS_F64)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    in_row = offsets < row_length
    v = tl.load(x_ptr + row * row_length + offsets, mask=in_row, other=0.0).to(ACC)
    valid, live, k0, k1, f = _soft_bin(v, lo, hi, w, bins, in_row, EXPLICIT, IS_F64)
    t0 = tl.load(table_ptr + row * bins + k0, mask=live, other=0.0)
    t1 = tl.load(table_ptr + row * bins + k1, mask=live, other=0.0)
    g = (t1 - t0) / w.to(tl.float64)  # float64 division is IEEE in Triton
    tl.store(grad_ptr + row * row_length + offsets, tl.where(live, g, 0.0).to(ACC), mask=in_row)


def soft_histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int,
                   explicit_range: bool) -> torch.Tensor:
    n_rows, row_length = x.shape
    counts = x.new_zeros((n_rows, bins), dtype=torch.float64)
    if x.numel() == 0:
        return counts
    acc = _layout.compute_dtype(x.dtype)
    block = min(1024, max(16, next_power_of_2(row_length)))
    chunk = min(8192, max(block, next_power_of_2(row_length)))
    chunks = cdiv(row_length, chunk)
    launch(_soft_histogram_kernel, (n_rows * chunks,), x, lo, hi, counts, row_length, chunks, bins,
           EXPLICIT=explicit_range, ACC=acc_tl(acc),
           IS_F64=acc == torch.float64, CHUNK=chunk, BLOCK=block)
    return counts


def soft_histogram_backward(grad_counts: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int,
                            explicit_range: bool) -> torch.Tensor:
    n_rows, row_length = x.shape
    acc = _layout.compute_dtype(x.dtype)
    grad = x.new_empty(x.shape, dtype=acc)
    if x.numel() == 0:
        return grad
    block = min(1024, max(16, next_power_of_2(row_length)))
    blocks = cdiv(row_length, block)
    launch(_soft_histogram_backward_kernel, (n_rows * blocks,), x, lo, hi,
           grad_counts.to(torch.float64).contiguous(), grad, row_length, blocks, bins,
           EXPLICIT=explicit_range, ACC=acc_tl(acc), IS_F64=acc == torch.float64,
           BLOCK=block)
    return grad


def _segment_table(groups: list[list[int]], numels: list[int], chunks: list[int], device):
    """Per dtype group, the int64 (first_item, offset, row) arrays of its segments (each
    (segments + 1,), row padded), all views of one tensor built on the host and copied
    to the device once (pinned, asynchronous: no sync); and the work items per group."""
    values: list[int] = []
    items = []
    for idx, chunk in zip(groups, chunks):
        first, offset = [0], [0]
        for i in idx:
            n = numels[i]
            first.append(first[-1] + -(-n // chunk))
            offset.append(offset[-1] + n)
        values += first + offset + idx + [0]
        items.append(first[-1])
    table = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        table = table.pin_memory().to(device, non_blocking=True)
    views, at = [], 0
    for idx in groups:
        width = len(idx) + 1
        views.append(table[at:at + 3 * width].view(3, width))
        at += 3 * width
    return views, items


class _ManyPlan:
    """What histogram_counts_many derives from a list's signature alone (:func:`_many_plan`):
    per dtype group (non-empty ones only) its tensors' indices, counting meta-parameters,
    segment table (device tensors, read-only once built), work items and binary-search steps;
    and the accumulation dtypes that need a (lo, hi) slot per tensor."""

    __slots__ = ("groups", "range_accs")

    def __init__(self, dtypes: tuple, numels: tuple, bins: int, explicit: bool, device: torch.device):
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, dtype in enumerate(dtypes):
            by_dtype.setdefault(dtype, []).append(i)
        groups = list(by_dtype.values())
        metas = [_count_meta(dtypes[idx[0]], bins, explicit, max(numels[i] for i in idx)) for idx in groups]
        tables, group_items = _segment_table(groups, numels, [m["CHUNK"] for m in metas], device)
        self.range_accs = tuple(dict.fromkeys(_layout.compute_dtype(dtypes[idx[0]]) for idx in groups
                                              if dtypes[idx[0]] not in _validation.CODE_DTYPES))
        # (indices, meta, first, offset, row, items, segments, steps (>= ceil(log2(segments))), acc)
        self.groups = tuple((tuple(idx), meta, first, offset, row, items, len(idx), len(idx).bit_length(),
                             _layout.compute_dtype(dtypes[idx[0]]))
                            for idx, meta, (first, offset, row), items in zip(groups, metas, tables, group_items)
                            if items > 0)  # a group of empty tensors only: zero counts, nothing launched


# Plans by signature: the key holds everything a plan depends on: the device (on CUDA also the
# current stream: the table's copy is queued there, and each stream reads a table it copied),
# the dtype and number of elements of each tensor (not its layout: each one is flattened), bins
# and whether the range is explicit. Small: a training step has a few lists.
@functools.lru_cache(maxsize=32)
def _cached_many_plan(device: torch.device, stream: int | None, dtypes: tuple, numels: tuple, bins: int,
                      explicit: bool) -> _ManyPlan:
    return _ManyPlan(dtypes, numels, bins, explicit, device)


def _capturing(device: torch.device) -> bool:
    """Whether ``device``'s current stream is capturing a CUDA graph (is_current_stream_capturing
    asks about the current device's stream, which need not be the tensors' device)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return torch.cuda.is_current_stream_capturing()
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def _many_plan(xs: list[torch.Tensor], bins: int, explicit: bool) -> _ManyPlan:
    """The list's :class:`_ManyPlan` (built once per signature; never kept from a CUDA graph
    capture, whose table would live in the graph's memory pool and be copied only on replay)."""
    device = xs[0].device
    dtypes, numels = tuple([t.dtype for t in xs]), tuple([t.numel() for t in xs])
    if device.type != "cuda":
        return _cached_many_plan(device, None, dtypes, numels, bins, explicit)
    if _capturing(device):
        return _ManyPlan(dtypes, numels, bins, explicit, device)
    return _cached_many_plan(device, torch._C._cuda_getCurrentRawStream(device.index), dtypes, numels, bins,
                             explicit)


def histogram_counts_many(xs: list[torch.Tensor], bins: int, range: list[float] | None) -> torch.Tensor:  # noqa: A002
    """int64 counts (len(xs), bins) of every tensor in a fixed number of launches
    per dtype group: one torch.cat of the group's flattened tensors (skipped for a lone
    contiguous tensor), range partials + range fold (automatic range only), counts.
    The segment table and everything else that depends only on the list's signature
    comes from :func:`_many_plan`."""
    plan = _many_plan(xs, bins, range is not None)
    x0 = xs[0]
    n = len(xs)
    counts = x0.new_zeros((n, bins), dtype=torch.int64)
    if range is None:
        ranges = {acc: (x0.new_empty(n, dtype=acc), x0.new_empty(n, dtype=acc)) for acc in plan.range_accs}
    else:
        ranges = {acc: (x0.new_full((n,), range[0], dtype=acc), x0.new_full((n,), range[1], dtype=acc))
                  for acc in plan.range_accs}
    bins_s, bins_dn, bins_r = div_constants(bins)
    for idx, meta, first, offset, row, items, segments, steps, acc in plan.groups:
        # (reshape alone may return a strided view of a 1-D tensor; the kernels need a contiguous span)
        flat = torch.cat([xs[i].reshape(-1) for i in idx]) if segments > 1 else xs[idx[0]].reshape(-1).contiguous()
        if meta["IS_CODE"]:
            lo = hi = counts  # unused
        else:
            lo, hi = ranges[acc]
            if range is None:
                part_lo = x0.new_empty(items, dtype=acc)
                part_hi = x0.new_empty(items, dtype=acc)
                launch(_segments_range_partials_kernel, (items,), flat, first, offset, part_lo, part_hi, segments,
                       steps, ACC=meta["ACC"], CHUNK=meta["CHUNK"], BLOCK=min(1024, meta["CHUNK"]))
                launch(_segments_range_reduce_kernel, (segments,), part_lo, part_hi, first, row, lo, hi,
                       ACC=meta["ACC"], BLOCK=128)
        launch(_histogram_counts_kernel, (items,), flat, first, offset, row, lo, hi, counts, segments, steps, 1,
               0.0, 0.0, bins_s, bins_dn, bins_r, SEGMENTED=True, BF16_PAIRS=False, PARTS=1, **meta)
    return counts


@triton_jit
def _entropy_from_counts_kernel(
    counts_ptr,  # (rows, bins) int64 or float64 counts
    out_ptr,  # (rows,) float64
    bins,
    log_base,  # float64; used when HAS_BASE
    HAS_BASE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per row, the reference's formula in float64:
    # n = sum c, p = c / n, H = -sum_{c > 0} p ln p (NaN when n == 0), / log_base.
    row = tl.program_id(0).to(tl.int64)
    row_ptr = counts_ptr + row * bins
    total = tl.zeros([BLOCK], tl.float64)
    for start in tl.range(0, bins, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        total += tl.load(row_ptr + offsets, mask=offsets < bins, other=0).to(tl.float64)
    n = tl.sum(total, axis=0)
    plogp = tl.zeros([BLOCK], tl.float64)
    for start in tl.range(0, bins, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        c = tl.load(row_ptr + offsets, mask=offsets < bins, other=0).to(tl.float64)
        p = c / n  # float64 division is IEEE in Triton
        plogp += tl.where(c > 0, p * tl.log(tl.where(c > 0, p, 1.0)), 0.0)
    h = 0.0 - tl.sum(plogp, axis=0)  # 0 - s, not -s: an empty sum gives +0.0, as the reference
    h = tl.where(n > 0, h, float("nan"))
    if HAS_BASE:
        h = h / log_base
    tl.store(out_ptr + row, h.to(out_ptr.dtype.element_ty))  # rounded to nearest, as torch's .to()


def entropy_from_counts(counts: torch.Tensor, log_base: float | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """H per row of counts, docs/design.md §2.1; NaN for a row with nothing counted. Computed in
    float64 and written as ``dtype`` (float64 or float32; None: float64), no conversion after."""
    if dtype not in (None, torch.float64, torch.float32):
        raise TypeError(f"entropy_from_counts: dtype must be float64 or float32, got {dtype}")
    out = counts.new_empty((counts.shape[0],), dtype=dtype or torch.float64)
    _launch_entropy(counts.contiguous(), out, log_base)
    return out


def _launch_entropy(counts: torch.Tensor, out: torch.Tensor, log_base: float | None) -> None:
    """out[r] = H of counts[r] (contiguous), computed in float64 and rounded to out's dtype."""
    rows, bins = counts.shape
    if rows > 0:
        launch(_entropy_from_counts_kernel, (rows,), counts, out, bins, 1.0 if log_base is None else log_base,
               HAS_BASE=log_base is not None, BLOCK=min(1024, next_power_of_2(max(bins, 16))))


# ---- one call: range, counts and entropy in three launches


@triton_jit
def _range_partials_zero_kernel(
    x_ptr,  # (rows, row_length) contiguous, float
    part_lo_ptr,  # (rows, parts) finite min of each part, accumulation dtype
    part_hi_ptr,  # (rows, parts) finite max
    counts_ptr,  # (rows, bins) int64: zeroed here, for the counting kernel that follows
    row_length,
    parts,  # programs per row: program p takes part p % parts of row p // parts
    chunk,  # elements per part (a multiple of BLOCK); parts past the row's end are empty
    bins,
    zero_span,  # bins each part zeroes: ceil(bins / parts)
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    ZERO_BLOCK: tl.constexpr,
):
    # The range pass of histogram_entropy: finite min/max partials of one part of a row
    # (an empty part gives (+inf, -inf)), and that part's share of the row's counts
    # zeroed, so that no separate fill is launched.
    pid = tl.program_id(0).to(tl.int64)  # int64: row * row_length can pass 2^31
    row = pid // parts
    part = pid % parts
    begin = tl.minimum(part * chunk, row_length)
    lo, hi = finite_minmax._finite_minmax_span(x_ptr + row * row_length, begin,
                                               tl.minimum(begin + chunk, row_length), ACC, BLOCK)
    tl.store(part_lo_ptr + pid, lo)
    tl.store(part_hi_ptr + pid, hi)
    zero_begin = part * zero_span
    zero_end = tl.minimum(zero_begin + zero_span, bins)
    for start in tl.range(zero_begin, zero_end, ZERO_BLOCK):
        offsets = start + tl.arange(0, ZERO_BLOCK)
        tl.store(counts_ptr + row * bins + offsets, tl.zeros([ZERO_BLOCK], tl.int64), mask=offsets < zero_end)


def _range_parts(row_length: int, bins: int) -> tuple[int, int]:
    """(parts, chunk) of each row's range pass: chunks of _RANGE_CHUNK elements, longer (a multiple of
    the block) where a row would have more than _MAX_RANGE_PARTS (every counting program folds its
    row's partials); more parts, some empty, where each would zero more than _ZERO_PER_PART bins."""
    chunk = max(_RANGE_CHUNK, cdiv(cdiv(row_length, _MAX_RANGE_PARTS), _RANGE_BLOCK) * _RANGE_BLOCK)
    return max(1, cdiv(row_length, chunk), cdiv(bins, _ZERO_PER_PART)), chunk


def histogram_entropy_rows(x: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None, bins: int,
                           explicit_range: bool, log_base: float | None,
                           bounds: list[float] | None = None) -> torch.Tensor:
    """H of each row of x (contiguous (rows, row_length)), in x's accumulation dtype, in three launches.

    Float x with lo, hi and bounds None (the automatic range): range partials that also zero the
    counts, counts (each program folds its row's partials), entropy. Codes, a given (rows,) range
    lo/hi, or ``bounds`` = [lo, hi] for every row: a zero fill, counts, entropy (float64 input with
    bounds: two fills of a (rows,) range first, since kernel arguments are float32). The entropy
    kernel writes the result's dtype (no copy after)."""
    n_rows, row_length = x.shape
    acc = _layout.compute_dtype(x.dtype)
    out = x.new_empty((n_rows,), dtype=acc)
    if n_rows == 0:
        return out
    parts = 1
    if bounds is not None and acc == torch.float64:
        lo = x.new_full((n_rows,), bounds[0], dtype=acc)
        hi = x.new_full((n_rows,), bounds[1], dtype=acc)
        bounds = None
    if lo is None and bounds is None and x.dtype not in _validation.CODE_DTYPES and row_length > 0:
        parts, chunk = _range_parts(row_length, bins)
        counts = x.new_empty((n_rows, bins), dtype=torch.int64)
        lo = x.new_empty((n_rows, parts), dtype=acc)
        hi = x.new_empty((n_rows, parts), dtype=acc)
        launch(_range_partials_zero_kernel, (n_rows * parts,), x, lo, hi, counts, row_length, parts, chunk, bins,
               cdiv(bins, parts), ACC=acc_tl(acc), BLOCK=_RANGE_BLOCK, ZERO_BLOCK=_ZERO_BLOCK)
    else:
        counts = x.new_zeros((n_rows, bins), dtype=torch.int64)
    _launch_counts(x, lo, hi, parts, counts, explicit_range,
                   None if bounds is None else (float(bounds[0]), float(bounds[1])))
    _launch_entropy(counts, out, log_base)
    return out
