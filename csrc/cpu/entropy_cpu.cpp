// CPU histogram entropy kernels, shared out by parallel_chunks (cpu/parallel_cpu.h).
//
// Work is cut into items: a whole histogram (row or tensor) when it is short,
// else chunks of it; items are the chunks of parallel_chunks. Each thread counts an item into a private histogram
// (four interleaved copies for small bin counts, so repeated hits on one bin
// do not serialize on a store-to-load dependency), then adds it to the output
// row: a plain add when the item is the whole row, an atomic add otherwise
// (bins atomics per chunk of >= 64K elements). Float values: the bin indices
// of a block of 64 are computed in a branch-free loop the compiler
// vectorizes, next to the increments of the previous block (count_blocks).
// The increments bound the speed: one scattered store per value and cycle is
// the floor (benchmarks/native/histogram_floor.cpp measures it; the command
// is in its header).
// The bin loop's range test and clamps are only if-converted (and so
// vectorized) when comparisons may be assumed not to trap; as in
// quant_cpu.cpp, this changes no value (no fast-math), only which
// floating-point exception flags may be raised. Set before the includes so
// the header's inline helpers share it. Without it GCC 12 left block_bins
// scalar, with a branch per value: the regularizer's two histograms
// (python -m eitp_kernels.bench.suite_eitp_regularizer --parts, "entropies",
// 1 thread, idle) 0.58 ms, with it 0.24 ms; the counts are unchanged.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "cpu/parallel_cpu.h"
#include "kernels/entropy.h"
#include "kernels/finite_minmax.h"
#include "kernels/vector_log.h"

namespace eitp {
namespace {

// The counting loop's pieces are forced inline into count_float_range, which
// is compiled per target (EITP_CPU_HOT): a lambda or helper left out of line
// is compiled for the baseline target only, where the bin arithmetic's fmaf
// (kernels/fast_divide.h) is a libm call per value. Counts of two
// tanh(randn(256, 512)) fp32 tensors, 64 bins, 1 thread
// (torch.ops.eitp.histogram_counts_many([a, b], 64, None), thread CPU time,
// medians of 200 calls, load average 8 on 2 cores): 1.16-1.72 ms out of line,
// 0.45-0.47 ms inlined (0.13 ms once vectorized: no-trapping-math above).
// Check: `objdump -dC eitp_kernels/_C.abi3.so` shows fmaf@plt called only
// from "[clone .default]" functions, and ymm registers in count_float_range's
// "[clone .arch_x86_64_v3]".
#define EITP_INLINE_HOT __attribute__((always_inline)) inline

constexpr int64_t kMinChunk = int64_t(1) << 17;
constexpr int64_t kParallelThreshold = int64_t(1) << 18;  // fewer elements: one thread (a parallel region costs
                                                            // far more than counting them on a busy machine)

struct WorkItem {
  int64_t seg;
  int64_t begin;
  int64_t end;
  bool whole;  // the item is its segment's only item: it owns the output row
};

int64_t chunk_for(int64_t bins) { return std::max<int64_t>(kMinChunk, 16 * bins); }

std::vector<WorkItem> make_items(const std::vector<HistSegment>& segs, int64_t chunk) {
  std::vector<WorkItem> items;
  for (int64_t s = 0; s < static_cast<int64_t>(segs.size()); ++s) {
    const int64_t n = segs[s].length;
    if (n == 0) continue;
    if (n <= chunk) {
      items.push_back({s, 0, n, true});
    } else {
      for (int64_t b = 0; b < n; b += chunk) items.push_back({s, b, std::min(n, b + chunk), false});
    }
  }
  return items;
}

int64_t total_length(const std::vector<HistSegment>& segs) {
  int64_t n = 0;
  for (const auto& s : segs) n += s.length;
  return n;
}

// fn(item, slot) for every item: in parallel from kParallelThreshold elements
// in all, else in the caller (slot 0).
template <typename Fn>
void for_items(int64_t elements, int64_t n_items, Fn&& fn) {
  if (elements >= kParallelThreshold) {
    parallel_chunks(n_items, fn);
  } else {
    for (int64_t i = 0; i < n_items; ++i) fn(i, int64_t(0));
  }
}

// ---------------------------------------------------------------- hard counts

// A private histogram: `copies` interleaved copies of `stride` = bins + 2
// slots; slot bins + 1 of each copy takes the uncounted values (so the
// increment loop has no branch), slot bins stays empty.
struct PrivateHist {
  uint32_t* slots;
  int64_t stride;
  int copies;
};

int64_t hist_stride(int64_t bins) { return bins + 2; }

// Adds the slots offset + idx[i], i < m, to h (int32 indices, or int8/uint8
// codes read in place). With four copies, consecutive values go to different
// copies: a run of equal bins does not chain each increment on the store of
// the previous one.
template <typename I>
EITP_INLINE_HOT void add_indices(const I* idx, int64_t m, PrivateHist h, int32_t offset = 0) {
  int64_t i = 0;
  uint32_t* c0 = h.slots + offset;
  if (h.copies == 4) {
    uint32_t* c1 = c0 + h.stride;
    uint32_t* c2 = c1 + h.stride;
    uint32_t* c3 = c2 + h.stride;
    for (; i + 4 <= m; i += 4) {
      ++c0[idx[i]];
      ++c1[idx[i + 1]];
      ++c2[idx[i + 2]];
      ++c3[idx[i + 3]];
    }
  }
  for (; i < m; ++i) ++c0[idx[i]];
}

// Counts n values in blocks: fill(begin, m, idx) writes the slots of values
// [begin, begin + m), vectorized. Software-pipelined: the increments of one
// block are issued next to the index arithmetic of the following one (which
// the core overlaps), and each index buffer is read back a block after it was
// written (a vector store read back at once by scalar loads stalls on
// store-to-load forwarding), which beats binning then counting each block in
// turn.
constexpr int kCountBlock = 64;

template <typename Fill>
EITP_INLINE_HOT void count_blocks(int64_t n, Fill fill, PrivateHist h) {
  constexpr int kBlock = kCountBlock;
  alignas(64) int32_t idx[2][kBlock];
  const int64_t full = n / kBlock;
  if (full > 0) fill(int64_t(0), kBlock, idx[0]);
  for (int64_t k = 1; k < full; ++k) {
    fill(k * kBlock, kBlock, idx[k & 1]);
    add_indices(idx[(k - 1) & 1], kBlock, h);
  }
  if (full > 0) add_indices(idx[(full - 1) & 1], kBlock, h);
  const int rest = static_cast<int>(n - full * kBlock);
  if (rest > 0) {
    fill(full * kBlock, rest, idx[0]);
    add_indices(idx[0], rest, h);
  }
}

// Slots of a block: the bin of hist_bin (the quotient by Divisor(w), as
// the CUDA kernels take it); uncounted values go to slot bins + 1.
// Branch-free: the compiler vectorizes it.
template <bool kExplicitRange, typename T, typename A>
EITP_INLINE_HOT void block_bins(const T* x, int m, A lo, A hi, const Divisor<A>& div, int32_t bins, int32_t* idx) {
  for (int i = 0; i < m; ++i) {
    const A v = load_acc(x[i]);
    const bool counted = kExplicitRange ? (v >= lo) & (v <= hi) : v - v == A(0);
    idx[i] = counted ? hist_bin<A>(v, lo, div, bins) : bins + 1;  // maxps in hist_bin: NaN -> bin 0
  }
}

// The values of a block as the block kernels read them: x itself, or for
// fp16 the block converted into `buf` (F16C: one instruction per 8 values).
template <typename T> EITP_INLINE_HOT const T* block_values(const T* x, int, float*) { return x; }
EITP_INLINE_HOT const float* block_values(const Half16* x, int m, float* buf) {
  halves_to_floats(x, m, buf);
  return buf;
}

template <typename T>
EITP_CPU_HOT void count_float_range(const T* x, int64_t n, typename AccType<T>::type lo, typename AccType<T>::type hi,
                                    bool explicit_range, int32_t bins, PrivateHist hist) {
  using A = typename AccType<T>::type;
  const Divisor<A> div((hi - lo) / static_cast<A>(bins));
  alignas(64) float buf[kCountBlock];
  if (explicit_range) {
    count_blocks(n, [&](int64_t s, int m, int32_t* idx) __attribute__((always_inline)) {
      block_bins<true>(block_values(x + s, m, buf), m, lo, hi, div, bins, idx);
    }, hist);
  } else {
    count_blocks(n, [&](int64_t s, int m, int32_t* idx) __attribute__((always_inline)) {
      block_bins<false>(block_values(x + s, m, buf), m, lo, hi, div, bins, idx);
    }, hist);
  }
}

// Codes index the histogram directly: no index buffer to write and read
// back, as count_blocks needs for computed bins.
template <typename T>
EITP_CPU_HOT void count_code_range(const T* x, int64_t n, PrivateHist h) {
  add_indices(x, n, h, std::is_signed<T>::value ? 128 : 0);
}

template <typename T>
void count_float_item(const HistSegment& seg, const WorkItem& it, bool explicit_range, int32_t bins, PrivateHist hist) {
  using A = typename AccType<T>::type;
  count_float_range<T>(static_cast<const T*>(seg.x) + it.begin, it.end - it.begin, static_cast<A>(seg.lo),
                       static_cast<A>(seg.hi), explicit_range, bins, hist);
}

void count_item(const HistSegment& seg, const WorkItem& it, bool explicit_range, int32_t bins, PrivateHist hist) {
  switch (seg.dtype) {
    case DType::kFloat16: return count_float_item<Half16>(seg, it, explicit_range, bins, hist);
    case DType::kBFloat16: return count_float_item<BFloat16>(seg, it, explicit_range, bins, hist);
    case DType::kFloat32: return count_float_item<float>(seg, it, explicit_range, bins, hist);
    case DType::kFloat64: return count_float_item<double>(seg, it, explicit_range, bins, hist);
    case DType::kInt8:
      return count_code_range(static_cast<const int8_t*>(seg.x) + it.begin, it.end - it.begin, hist);
    case DType::kUInt8:
      return count_code_range(static_cast<const uint8_t*>(seg.x) + it.begin, it.end - it.begin, hist);
  }
}

// ---------------------------------------------------------------- auto range

template <typename T>
void minmax_item(const HistSegment& seg, const WorkItem& it, double& lo_out, double& hi_out) {
  using A = typename AccType<T>::type;
  A lo = std::numeric_limits<A>::infinity(), hi = -std::numeric_limits<A>::infinity();
  span_finite_minmax(static_cast<const T*>(seg.x) + it.begin, it.end - it.begin, lo, hi);
  lo_out = lo;
  hi_out = hi;
}

void item_range(const HistSegment& seg, const WorkItem& it, double& lo, double& hi) {
  switch (seg.dtype) {
    case DType::kFloat16: return minmax_item<Half16>(seg, it, lo, hi);
    case DType::kBFloat16: return minmax_item<BFloat16>(seg, it, lo, hi);
    case DType::kFloat32: return minmax_item<float>(seg, it, lo, hi);
    case DType::kFloat64: return minmax_item<double>(seg, it, lo, hi);
    default: lo = 0.0; hi = 0.0;  // codes: no range
  }
}

void auto_ranges_all(std::vector<HistSegment>& segs) {
  const std::vector<WorkItem> items = make_items(segs, std::max<int64_t>(kMinChunk, 1 << 18));
  const int64_t n_items = static_cast<int64_t>(items.size());
  std::vector<double> lo(items.size()), hi(items.size());
  for_items(total_length(segs), n_items, [&](int64_t i, int64_t) {
    const WorkItem& it = items[i];
    item_range(segs[it.seg], it, lo[i], hi[i]);
  });
  const double inf = std::numeric_limits<double>::infinity();
  for (auto& s : segs) {
    s.lo = inf;
    s.hi = -inf;
  }
  for (int64_t i = 0; i < n_items; ++i) {
    HistSegment& s = segs[items[i].seg];
    s.lo = std::min(s.lo, lo[i]);
    s.hi = std::max(s.hi, hi[i]);
  }
}


// Finite min/max of the segments longer than `min_length` (the others get
// theirs inside their counting task), in parallel over chunks.
void auto_ranges(std::vector<HistSegment>& segs, int64_t min_length) {
  std::vector<HistSegment> long_segs;
  std::vector<size_t> where;
  for (size_t i = 0; i < segs.size(); ++i) {
    if (segs[i].length > min_length) {
      long_segs.push_back(segs[i]);
      where.push_back(i);
    }
  }
  if (long_segs.empty()) return;
  auto_ranges_all(long_segs);
  for (size_t j = 0; j < where.size(); ++j) segs[where[j]] = long_segs[j];
}

// Adds the private histogram to the row it alone writes and zeroes it for the
// next item, in one vectorized pass: for short rows this merge is a real
// share of the work, so it takes no per-bin branch.
EITP_CPU_HOT void merge_whole(PrivateHist h, int32_t bins, int64_t* out) {
  if (h.copies == 4) {
    uint32_t* c0 = h.slots;
    uint32_t* c1 = c0 + h.stride;
    uint32_t* c2 = c1 + h.stride;
    uint32_t* c3 = c2 + h.stride;
    for (int32_t b = 0; b < bins; ++b) {
      out[b] += static_cast<int64_t>(c0[b]) + c1[b] + c2[b] + c3[b];
      c0[b] = c1[b] = c2[b] = c3[b] = 0;
    }
    for (uint32_t* c : {c0, c1, c2, c3}) c[bins] = c[bins + 1] = 0;  // spill slots
  } else {
    for (int32_t b = 0; b < bins; ++b) out[b] += h.slots[b];
    std::fill(h.slots, h.slots + h.stride, 0u);
  }
}

// Adds the private histogram of a chunk to a row other threads add to too
// (one atomic per non-empty bin) and zeroes it.
void merge_shared(PrivateHist h, int32_t bins, int64_t* out) {
  for (int32_t b = 0; b < bins; ++b) {
    uint64_t c = h.slots[b];
    for (int k = 1; k < h.copies; ++k) c += h.slots[k * h.stride + b];
    if (c == 0) continue;
#pragma omp atomic
    out[b] += static_cast<int64_t>(c);
  }
  std::fill(h.slots, h.slots + h.copies * h.stride, 0u);
}

// range_in_item: a segment that is a single item gets its automatic range
// computed inside the counting task (one pass over data that is then still in
// cache); longer segments must already carry theirs.
void count_segments(const std::vector<HistSegment>& segs, int64_t bins64, bool explicit_range, int64_t* counts,
                    bool range_in_item = false) {
  const int32_t bins = static_cast<int32_t>(bins64);
  const std::vector<WorkItem> items = make_items(segs, chunk_for(bins64));
  const int copies = bins <= 4096 ? 4 : 1;
  const int64_t stride = hist_stride(bins64);
  const int64_t n_items = static_cast<int64_t>(items.size());
  // One private histogram per thread slot.
  std::vector<uint32_t> hists(static_cast<size_t>(parallel_slots() * copies * stride), 0u);
  for_items(total_length(segs), n_items, [&](int64_t i, int64_t slot) {
    const PrivateHist h{hists.data() + slot * copies * stride, stride, copies};
    const WorkItem& it = items[i];
    HistSegment seg = segs[it.seg];
    if (range_in_item && it.whole) item_range(seg, it, seg.lo, seg.hi);
    count_item(seg, it, explicit_range, bins, h);
    int64_t* out = counts + it.seg * bins64;
    if (it.whole) {
      merge_whole(h, bins, out);
    } else {
      merge_shared(h, bins, out);
    }
  });
}

template <typename A> void read_range(const void* lo, const void* hi, int64_t r, double& lo_out, double& hi_out) {
  lo_out = static_cast<const A*>(lo)[r];
  hi_out = static_cast<const A*>(hi)[r];
}

std::vector<HistSegment> row_segments(const void* x, DType dtype, int64_t rows, int64_t row_length, const void* lo,
                                      const void* hi) {
  const bool is_code = dtype == DType::kInt8 || dtype == DType::kUInt8;
  size_t elem = 1;
  switch (dtype) {
    case DType::kFloat16: case DType::kBFloat16: elem = 2; break;
    case DType::kFloat32: elem = 4; break;
    case DType::kFloat64: elem = 8; break;
    default: elem = 1;
  }
  std::vector<HistSegment> segs(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    HistSegment& s = segs[r];
    s.x = static_cast<const char*>(x) + static_cast<size_t>(r) * static_cast<size_t>(row_length) * elem;
    s.dtype = dtype;
    s.length = row_length;
    s.lo = 0.0;
    s.hi = 0.0;
    if (!is_code) {
      if (dtype == DType::kFloat64) read_range<double>(lo, hi, r, s.lo, s.hi);
      else read_range<float>(lo, hi, r, s.lo, s.hi);
    }
  }
  return segs;
}

// ---------------------------------------------------------------- soft counts

template <typename T>
void soft_item(const HistSegment& seg, const WorkItem& it, bool explicit_range, int64_t bins, double* hist) {
  using A = typename AccType<T>::type;
  const T* x = static_cast<const T*>(seg.x);
  const A lo = static_cast<A>(seg.lo), hi = static_cast<A>(seg.hi);
  const A w = (hi - lo) / static_cast<A>(bins);
  for (int64_t i = it.begin; i < it.end; ++i) {
    const SoftBin<A> s = soft_bin<A>(load_acc(x[i]), lo, hi, w, bins, explicit_range);
    hist[s.k0] += static_cast<double>(s.w0);
    hist[s.k1] += static_cast<double>(s.w1);
  }
}

template <typename T>
void soft_backward_item(const HistSegment& seg, const WorkItem& it, bool explicit_range, int64_t bins,
                        const double* table, typename AccType<T>::type* grad) {
  using A = typename AccType<T>::type;
  const T* x = static_cast<const T*>(seg.x);
  const A lo = static_cast<A>(seg.lo), hi = static_cast<A>(seg.hi);
  const A w = (hi - lo) / static_cast<A>(bins);
  const double wd = static_cast<double>(w);
  for (int64_t i = it.begin; i < it.end; ++i) {
    const SoftBin<A> s = soft_bin<A>(load_acc(x[i]), lo, hi, w, bins, explicit_range);
    grad[i] = s.live ? static_cast<A>((table[s.k1] - table[s.k0]) / wd) : A(0);
  }
}

// One soft histogram per row, rows cut into work items (make_items).
template <typename T>
void soft_rows(const SoftHistogramParams& p) {
  const std::vector<HistSegment> segs = row_segments(p.x, p.dtype, p.rows, p.row_length, p.lo, p.hi);
  const std::vector<WorkItem> items = make_items(segs, chunk_for(p.bins));
  const int64_t n_items = static_cast<int64_t>(items.size());
  std::vector<double> hists(static_cast<size_t>(parallel_slots() * p.bins));
  for_items(p.rows * p.row_length, n_items, [&](int64_t i, int64_t slot) {
    double* hist = hists.data() + slot * p.bins;
    const WorkItem& it = items[i];
    std::fill(hist, hist + p.bins, 0.0);
    soft_item<T>(segs[it.seg], it, p.explicit_range, p.bins, hist);
    double* out = p.counts + it.seg * p.bins;
    for (int64_t b = 0; b < p.bins; ++b) {
      if (hist[b] == 0.0) continue;
      if (it.whole) {
        out[b] += hist[b];
      } else {
#pragma omp atomic
        out[b] += hist[b];
      }
    }
  });
}

template <typename T>
void soft_backward_rows(const SoftHistogramBackwardParams& p) {
  using A = typename AccType<T>::type;
  const std::vector<HistSegment> segs = row_segments(p.x, p.dtype, p.rows, p.row_length, p.lo, p.hi);
  const std::vector<WorkItem> items = make_items(segs, kMinChunk);
  const int64_t n_items = static_cast<int64_t>(items.size());
  for_items(p.rows * p.row_length, n_items, [&](int64_t i, int64_t) {
    const WorkItem& it = items[i];
    const double* table = p.grad_counts + it.seg * p.bins;
    const int64_t row_offset = it.seg * p.row_length;
    soft_backward_item<T>(segs[it.seg], it, p.explicit_range, p.bins, table, static_cast<A*>(p.grad_x) + row_offset);
  });
}

}  // namespace

void histogram_counts_segments_cpu(std::vector<HistSegment>& segments, int64_t bins, bool explicit_range,
                                   int64_t* counts) {
  const int64_t chunk = chunk_for(bins);
  if (!explicit_range) auto_ranges(segments, chunk);
  count_segments(segments, bins, explicit_range, counts, !explicit_range);
}

void histogram_counts_cpu(const HistogramParams& p) {
  const std::vector<HistSegment> segs = row_segments(p.x, p.dtype, p.rows, p.row_length, p.lo, p.hi);
  count_segments(segs, p.bins, p.explicit_range, p.counts);
}

void soft_histogram_cpu(const SoftHistogramParams& p) {
  dispatch_float(p.dtype, "soft_histogram_cpu", [&](auto tag) { soft_rows<decltype(tag)>(p); });
}

void soft_histogram_backward_cpu(const SoftHistogramBackwardParams& p) {
  dispatch_float(p.dtype, "soft_histogram_backward_cpu", [&](auto tag) { soft_backward_rows<decltype(tag)>(p); });
}

void entropy_from_counts_cpu(const EntropyFromCountsParams& p) {
  // q ln q through vector_log (csrc/kernels/vector_log.h), which vectorizes
  // where std::log is one library call per bin. Rows it cannot take (a count
  // >= 2^52, soft counts with a subnormal q or an infinite total) go through
  // std::log. Small
  // inputs stay on one thread (kParallelThreshold): a parallel region stalls
  // calls for milliseconds while other processes keep the cores busy.
  auto row = [&](int64_t r) {
    const QLogQ q = p.counts_are_int ? sum_q_log_q(static_cast<const int64_t*>(p.counts) + r * p.bins, p.bins)
                                     : sum_q_log_q(static_cast<const double*>(p.counts) + r * p.bins, p.bins);
    double h = q.total > 0 ? -q.sum + 0.0 : std::numeric_limits<double>::quiet_NaN();  // + 0.0: no -0
    if (p.log_base != 0.0) h /= p.log_base;
    store_entropy(p, r, h);
  };
  if (p.rows * p.bins < kParallelThreshold) {
    for (int64_t r = 0; r < p.rows; ++r) row(r);
    return;
  }
  const Chunking c = chunking(p.rows, std::max<int64_t>(1, kMinChunk / std::max<int64_t>(1, p.bins)), 256);
  parallel_chunks(c.count, [&](int64_t i, int64_t) {
    for (int64_t r = i * c.size, r1 = std::min(p.rows, (i + 1) * c.size); r < r1; ++r) row(r);
  });
}

}  // namespace eitp
