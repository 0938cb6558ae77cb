// CUDA histogram entropy kernels. Grid = (chunks per row, rows): each block
// counts one chunk of one row into a shared-memory histogram (shared atomics),
// then merges it into the row's global counts with one atomic per non-empty
// bin. Histograms too large for shared memory count with global atomics
// directly. The range (lo, hi) is read on the device: no host sync; with the
// automatic range of histogram_counts_with_range each block folds its row's
// range partials itself (the range pass before it also zeroed the counts),
// so a histogram entropy is three launches: range, counts, entropy (which
// writes the result's dtype); a given range comes as kernel arguments (zero
// fill, counts, entropy).
// histogram_counts_many: the same counting, one block per (tensor, chunk)
// work item of a segment table (kernels/entropy_many.h), so a whole list of
// tensors of any dtypes takes one range launch and one counting launch.
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.cuh"
#include "kernels/entropy.h"
#include "kernels/entropy_many.h"
#include "kernels/finite_minmax.h"

namespace eitp {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kItemsPerThread = 32;
constexpr size_t kSharedBytes = 48 * 1024;  // default dynamic shared memory limit

// Bin of element v of a histogram with range (lo, hi); false when it is not counted.
// Counted: finite, and within [lo, hi] for an explicit range (hist_counted),
// tested as count_lo <= v <= count_hi with the range clamped to the finite
// values (a NaN bound stays NaN and counts nothing). The bin: hist_bin's,
// without its clamp at 0, which only uncounted values (v < lo) reach.
template <typename T> struct Binner {
  using A = typename cuda::DeviceAcc<T>::type;
  static constexpr bool kIsCode = false;
  A lo, count_lo, count_hi, top;
  Divisor<A> div;  // by the bin width w = (hi - lo) / bins: its reciprocal once per block
  int32_t bins;
  __device__ Binner(A lo_, A hi_, int64_t nbins, bool explicit_range)
      : lo(lo_), div((hi_ - lo_) / static_cast<A>(static_cast<int32_t>(nbins))) {
    const A most = std::numeric_limits<A>::max();
    count_lo = explicit_range ? (lo_ < -most ? -most : lo_) : -most;
    count_hi = explicit_range ? (hi_ > most ? most : hi_) : most;
    bins = static_cast<int32_t>(nbins);
    top = static_cast<A>(bins - 1);
  }
  __device__ __forceinline__ bool bin(const T& raw, int32_t& b) const {
    const A v = cuda::load_acc(raw);
    // q >= 0 for a counted v (v >= lo); the conversion saturates and takes NaN to 0
    b = to_int_rz(fmin(div.quotient(v - lo), top));
    return v >= count_lo && v <= count_hi;
  }
  static __device__ __forceinline__ int32_t to_int_rz(float q) { return __float2int_rz(q); }
  static __device__ __forceinline__ int32_t to_int_rz(double q) { return __double2int_rz(q); }
};

// int8/uint8 codes: one bin per code, no range.
template <> struct Binner<int8_t> {
  using A = float;
  static constexpr bool kIsCode = true;
  __device__ Binner(A, A, int64_t, bool) {}
  __device__ __forceinline__ bool bin(const int8_t& raw, int32_t& b) const {
    b = static_cast<int32_t>(raw) + 128;
    return true;
  }
};
template <> struct Binner<uint8_t> {
  using A = float;
  static constexpr bool kIsCode = true;
  __device__ Binner(A, A, int64_t, bool) {}
  __device__ __forceinline__ bool bin(const uint8_t& raw, int32_t& b) const {
    b = static_cast<int32_t>(raw);
    return true;
  }
};

// Where a counting block finds its row's range (HistogramParams' lo, hi,
// range_partials_per_row, range_lo, range_hi).
struct RowRange {
  const void* lo;
  const void* hi;
  int64_t partials_per_row;
  double lo_value, hi_value;
};

RowRange row_range_of(const HistogramParams& p) {
  return {p.lo, p.hi, p.range_partials_per_row, p.range_lo, p.range_hi};
}

// The range of row `row` in the accumulation dtype: lo/hi are (rows,); or,
// with partials_per_row > 0, (rows, partials_per_row) range partials
// (finite_minmax_partials_cuda) that warp 0 folds and shares with the block
// (a barrier: call it from every thread; partials_per_row is uniform); or,
// with kScalarRange, (lo_value, hi_value) for every row.
template <typename A>
__device__ __forceinline__ void row_range(const RowRange& r, int64_t row, A& lo, A& hi) {
  const int64_t partials_per_row = r.partials_per_row;
  if (partials_per_row == kScalarRange) {
    lo = static_cast<A>(r.lo_value), hi = static_cast<A>(r.hi_value);  // exact: values of A
    return;
  }
  const A* lo_a = static_cast<const A*>(r.lo);
  const A* hi_a = static_cast<const A*>(r.hi);
  if (partials_per_row == 0) {
    lo = lo_a[row], hi = hi_a[row];
    return;
  }
  __shared__ A range_shared[2];
  if (threadIdx.x < 32) {
    const A inf = std::numeric_limits<A>::infinity();
    const A l = warp_fold(lo_a + row * partials_per_row, partials_per_row, inf, cuda::MinOp());
    const A h = warp_fold(hi_a + row * partials_per_row, partials_per_row, -inf, cuda::MaxOp());
    if (threadIdx.x == 0) range_shared[0] = l, range_shared[1] = h;
  }
  __syncthreads();
  lo = range_shared[0], hi = range_shared[1];
}

// Binner of row `row` (row_range's lo/hi; codes have none: lo, hi are null).
template <typename T>
__device__ Binner<T> row_binner(const RowRange& range, int64_t row, int64_t bins, bool explicit_range) {
  using A = typename Binner<T>::A;
  if constexpr (Binner<T>::kIsCode) {
    return Binner<T>(A(0), A(0), bins, explicit_range);
  } else {
    A l, h;
    row_range<A>(range, row, l, h);
    return Binner<T>(l, h, bins, explicit_range);
  }
}

// Counts x[begin, end) into hist, the block's threads striding over the span
// (16-byte loads), branch-free: a shared histogram has one more slot, bins,
// for the values not counted; global counters get 0 added (to bin 0) for them.
template <typename T>
__device__ __forceinline__ void count_span(const T* __restrict__ x, int64_t begin, int64_t end,
                                           const Binner<T>& binner, int64_t bins, unsigned int* hist) {
  const int32_t uncounted = static_cast<int32_t>(bins);
  cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, threadIdx.x, blockDim.x, [&](int64_t, T raw) {
    int32_t b;
    const bool counted = binner.bin(raw, b);
    atomicAdd(hist + (counted ? b : uncounted), 1u);
  });
}
template <typename T>
__device__ __forceinline__ void count_span(const T* __restrict__ x, int64_t begin, int64_t end,
                                           const Binner<T>& binner, int64_t, unsigned long long* hist) {
  cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, threadIdx.x, blockDim.x, [&](int64_t, T raw) {
    int32_t b;
    const bool counted = binner.bin(raw, b);
    atomicAdd(hist + (counted ? b : 0), static_cast<unsigned long long>(counted));
  });
}

__device__ __forceinline__ void zero_shared_hist(unsigned int* sh_hist, int64_t bins) {
  for (int64_t b = threadIdx.x; b <= bins; b += blockDim.x) sh_hist[b] = 0u;  // and the slot of uncounted values
  __syncthreads();
}

// Adds a block's shared histogram into global counts: one atomic per non-empty bin.
__device__ __forceinline__ void merge_shared_hist(const unsigned int* sh_hist, int64_t bins,
                                                  unsigned long long* out) {
  __syncthreads();
  for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
    const unsigned int c = sh_hist[b];
    if (c) atomicAdd(out + b, static_cast<unsigned long long>(c));
  }
}

// Grid = (chunks per row, rows): block (c, r) counts chunk c of row row0 + r,
// into a shared histogram of bins + 1 slots (bins <= kSharedHistogramMaxBins).
template <typename T>
__global__ void hist_rows_kernel(const T* __restrict__ x, int64_t row_length, int64_t chunk, RowRange range,
                                 int64_t row0, int64_t bins, bool explicit_range, unsigned long long* counts) {
  extern __shared__ unsigned int sh_hist[];
  const int64_t row = row0 + blockIdx.y;
  const Binner<T> binner = row_binner<T>(range, row, bins, explicit_range);
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < row_length ? begin + chunk : row_length;
  zero_shared_hist(sh_hist, bins);
  count_span(x + row * row_length, begin, end, binner, bins, sh_hist);
  merge_shared_hist(sh_hist, bins, counts + row * bins);
}

// The same with one global atomic per element, for histograms too large for shared memory (float input only).
template <typename T>
__global__ void hist_rows_global_kernel(const T* __restrict__ x, int64_t row_length, int64_t chunk, RowRange range,
                                        int64_t row0, int64_t bins, bool explicit_range,
                                        unsigned long long* counts) {
  const int64_t row = row0 + blockIdx.y;
  const Binner<T> binner = row_binner<T>(range, row, bins, explicit_range);
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < row_length ? begin + chunk : row_length;
  count_span(x + row * row_length, begin, end, binner, bins, counts + row * bins);
}

template <typename T>
void launch_counts(const HistogramParams& p, cudaStream_t stream) {
  const bool use_shared = Binner<T>::kIsCode || p.bins <= kSharedHistogramMaxBins;  // codes: 256 bins
  const int64_t chunk = histogram_chunk(p.bins);
  const int64_t chunks = std::max<int64_t>(1, (p.row_length + chunk - 1) / chunk);
  const size_t shared = use_shared ? static_cast<size_t>(p.bins + 1) * sizeof(unsigned int) : 0;
  auto* counts = reinterpret_cast<unsigned long long*>(p.counts);  // int64 counts stay < 2^63
  for (int64_t row0 = 0; row0 < p.rows; row0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, p.rows - row0);
    const dim3 grid(grid_x(chunks, "histogram_counts_cuda"), grid_yz(rows, "histogram_counts_cuda"));
    const T* x = static_cast<const T*>(p.x);
    const RowRange range = row_range_of(p);
    if constexpr (Binner<T>::kIsCode) {
      hist_rows_kernel<T><<<grid, kThreads, shared, stream>>>(x, p.row_length, chunk, range, row0, p.bins,
                                                              p.explicit_range, counts);
    } else if (use_shared) {
      hist_rows_kernel<T><<<grid, kThreads, shared, stream>>>(x, p.row_length, chunk, range, row0, p.bins,
                                                              p.explicit_range, counts);
    } else {
      hist_rows_global_kernel<T><<<grid, kThreads, 0, stream>>>(x, p.row_length, chunk, range, row0, p.bins,
                                                                p.explicit_range, counts);
    }
  }
}

// ---------------------------------------------------------------- many tensors (segment table)

// Calls fn(T{}) with the device storage type of a float DType (dtype is
// uniform across a block: one work item belongs to one segment).
template <typename Fn> __device__ __forceinline__ void dispatch_float_device(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat16: fn(__half{}); break;
    case DType::kBFloat16: fn(__nv_bfloat16{}); break;
    case DType::kFloat32: fn(float{}); break;
    case DType::kFloat64: fn(double{}); break;
    default: break;
  }
}

__device__ __forceinline__ bool is_code(DType dtype) { return dtype == DType::kInt8 || dtype == DType::kUInt8; }

// This block's work item: its segment and the element span [begin, end).
struct WorkItem {
  int64_t seg, begin, end;
};

// The last segment s with block_start[s] <= item (empty segments own no item,
// so ties resolve to the non-empty one after them).
__device__ int64_t find_segment(const int64_t* block_start, int64_t segments, int64_t item) {
  int64_t lo = 0, hi = segments - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (block_start[mid] <= item) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

__device__ WorkItem block_work_item(const SegmentTable& t) {
  __shared__ int64_t seg_shared;
  const int64_t item = blockIdx.x;
  if (threadIdx.x == 0) seg_shared = find_segment(t.block_start, t.segments, item);
  __syncthreads();
  WorkItem w;
  w.seg = seg_shared;
  w.begin = (item - t.block_start[w.seg]) * t.chunk;
  const int64_t length = t.length[w.seg];
  w.end = w.begin + t.chunk < length ? w.begin + t.chunk : length;
  return w;
}

// Finite min/max of x[begin, end), folded into the segment's (lo, hi) slots.
template <typename T>
__device__ void range_span(const T* __restrict__ x, int64_t begin, int64_t end, double* lo_out, double* hi_out) {
  typename cuda::DeviceAcc<T>::type lo, hi;
  block_finite_minmax(x, begin, end, lo, hi);
  if (threadIdx.x == 0) {  // a float widens to double exactly, so the double min/max is the float one
    cuda::atomic_min(lo_out, static_cast<double>(lo));
    cuda::atomic_max(hi_out, static_cast<double>(hi));
  }
}

// One block per work item; code segments have no range and return at once.
__global__ void segments_range_kernel(SegmentTable t) {
  const WorkItem w = block_work_item(t);
  const DType dtype = static_cast<DType>(t.dtype[w.seg]);
  if (is_code(dtype)) return;  // uniform across the block
  const void* x = reinterpret_cast<const void*>(t.x[w.seg]);
  dispatch_float_device(dtype, [&](auto tag) {
    using T = decltype(tag);
    range_span<T>(static_cast<const T*>(x), w.begin, w.end, t.lo + w.seg, t.hi + w.seg);
  });
}

template <typename T>
__device__ void count_item(const SegmentTable& t, const WorkItem& w, int64_t bins, bool explicit_range,
                           bool use_shared, unsigned int* sh_hist, unsigned long long* out) {
  using A = typename Binner<T>::A;
  const Binner<T> binner(static_cast<A>(t.lo[w.seg]), static_cast<A>(t.hi[w.seg]), bins, explicit_range);
  const T* x = reinterpret_cast<const T*>(t.x[w.seg]);
  if (use_shared) count_span(x, w.begin, w.end, binner, bins, sh_hist);
  else count_span(x, w.begin, w.end, binner, bins, out);
}

// One block per work item, into the counts row of its segment.
__global__ void segments_count_kernel(SegmentTable t, int64_t bins, bool explicit_range, bool use_shared,
                                      unsigned long long* counts) {
  extern __shared__ unsigned int sh_hist[];
  const WorkItem w = block_work_item(t);
  const DType dtype = static_cast<DType>(t.dtype[w.seg]);
  unsigned long long* out = counts + w.seg * bins;
  if (use_shared) zero_shared_hist(sh_hist, bins);
  if (dtype == DType::kInt8) {
    count_item<int8_t>(t, w, bins, explicit_range, use_shared, sh_hist, out);
  } else if (dtype == DType::kUInt8) {
    count_item<uint8_t>(t, w, bins, explicit_range, use_shared, sh_hist, out);
  } else {
    dispatch_float_device(dtype, [&](auto tag) {
      count_item<decltype(tag)>(t, w, bins, explicit_range, use_shared, sh_hist, out);
    });
  }
  if (use_shared) merge_shared_hist(sh_hist, bins, out);
}

// ---------------------------------------------------------------- soft counts

template <typename T>
__global__ void soft_hist_kernel(const T* __restrict__ x, int64_t row_length, int64_t chunk, const void* lo_p,
                                 const void* hi_p, int64_t row0, int64_t bins, bool explicit_range, bool use_shared,
                                 double* counts) {
  using A = typename cuda::DeviceAcc<T>::type;
  extern __shared__ double sh_soft[];
  const int64_t row = row0 + blockIdx.y;
  const A lo = static_cast<const A*>(lo_p)[row], hi = static_cast<const A*>(hi_p)[row];
  const A w = (hi - lo) / static_cast<A>(bins);
  double* out = counts + row * bins;
  double* hist = use_shared ? sh_soft : out;
  if (use_shared) {
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) sh_soft[b] = 0.0;
    __syncthreads();
  }
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < row_length ? begin + chunk : row_length;
  const T* row_ptr = x + row * row_length;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const SoftBin<A> s = soft_bin<A>(cuda::load_acc(row_ptr[i]), lo, hi, w, bins, explicit_range);
    if (s.w0 != A(0)) atomicAdd(hist + s.k0, static_cast<double>(s.w0));
    if (s.w1 != A(0)) atomicAdd(hist + s.k1, static_cast<double>(s.w1));
  }
  if (use_shared) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
      const double c = sh_soft[b];
      if (c != 0.0) atomicAdd(out + b, c);
    }
  }
}

template <typename T>
void launch_soft(const SoftHistogramParams& p, cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(p.bins) * sizeof(double);
  const bool use_shared = shared <= kSharedBytes;
  const int64_t chunk = std::max<int64_t>(kThreads * kItemsPerThread, use_shared ? 8 * p.bins : 0);
  const int64_t chunks = std::max<int64_t>(1, (p.row_length + chunk - 1) / chunk);
  for (int64_t row0 = 0; row0 < p.rows; row0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, p.rows - row0);
    const dim3 grid(grid_x(chunks, "soft_histogram_cuda"), grid_yz(rows, "soft_histogram_cuda"));
    soft_hist_kernel<T><<<grid, kThreads, use_shared ? shared : 0, stream>>>(
        static_cast<const T*>(p.x), p.row_length, chunk, p.lo, p.hi, row0, p.bins, p.explicit_range, use_shared,
        p.counts);
  }
}

template <typename T>
__global__ void soft_backward_kernel(const T* __restrict__ x, int64_t row_length, const void* lo_p, const void* hi_p,
                                     int64_t row0, int64_t bins, bool explicit_range,
                                     const double* __restrict__ grad_counts,
                                     typename cuda::DeviceAcc<T>::type* __restrict__ grad_x) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int64_t row = row0 + blockIdx.y;
  const A lo = static_cast<const A*>(lo_p)[row], hi = static_cast<const A*>(hi_p)[row];
  const A w = (hi - lo) / static_cast<A>(bins);
  const double wd = static_cast<double>(w);
  const double* table = grad_counts + row * bins;
  const T* row_ptr = x + row * row_length;
  A* grad_row = grad_x + row * row_length;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < row_length; i += stride) {
    const SoftBin<A> s = soft_bin<A>(cuda::load_acc(row_ptr[i]), lo, hi, w, bins, explicit_range);
    grad_row[i] = s.live ? static_cast<A>((table[s.k1] - table[s.k0]) / wd) : A(0);
  }
}

template <typename T>
void launch_soft_backward(const SoftHistogramBackwardParams& p, cudaStream_t stream) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int64_t per_block = kThreads * 8;
  const int64_t blocks = std::min<int64_t>(65535, std::max<int64_t>(1, (p.row_length + per_block - 1) / per_block));
  for (int64_t row0 = 0; row0 < p.rows; row0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, p.rows - row0);
    const dim3 grid(grid_x(blocks, "soft_histogram_backward_cuda"), grid_yz(rows, "soft_histogram_backward_cuda"));
    soft_backward_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(p.x), p.row_length, p.lo, p.hi, row0,
                                                           p.bins, p.explicit_range, p.grad_counts,
                                                           static_cast<A*>(p.grad_x));
  }
}

// ---------------------------------------------------------------- entropy from counts

struct SumOp { __device__ double operator()(double a, double b) const { return a + b; } };

template <typename C>
__global__ void entropy_kernel(const C* __restrict__ counts, int64_t bins, double log_base,
                               EntropyFromCountsParams p) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const C* c = counts + row * bins;
  double total = 0.0;
  for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) total += static_cast<double>(c[b]);
  total = cuda::block_reduce(total, 0.0, scratch, SumOp());
  __shared__ double total_shared;
  if (threadIdx.x == 0) total_shared = total;
  __syncthreads();
  total = total_shared;
  double s = 0.0;
  for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
    const double cb = static_cast<double>(c[b]);
    if (cb > 0) {
      const double q = cb / total;
      s += q * log(q);
    }
  }
  s = cuda::block_reduce(s, 0.0, scratch, SumOp());
  if (threadIdx.x == 0) {
    double h = -s + 0.0;
    if (!(total > 0)) h = nan("");
    if (log_base != 0.0) h = h / log_base;
    store_entropy(p, row, h);  // the result's dtype: no conversion launch after it
  }
}

}  // namespace

void histogram_counts_cuda(const HistogramParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kInt8: launch_counts<int8_t>(p, stream); break;
    case DType::kUInt8: launch_counts<uint8_t>(p, stream); break;
    default:
      cuda::dispatch_float(p.dtype, "histogram_counts_cuda", [&](auto tag) { launch_counts<decltype(tag)>(p, stream); });
  }
  cuda::check_launch("histogram_counts_cuda");
}

void histogram_counts_many_cuda(const HistogramManyParams& p, cudaStream_t stream) {
  if (p.items == 0) return;  // every tensor empty: zero counts
  const dim3 grid(grid_x(p.items, "histogram_counts_many_cuda"));
  if (p.auto_range_pass) segments_range_kernel<<<grid, kThreads, 0, stream>>>(p.table);
  const bool use_shared = p.bins <= kSharedHistogramMaxBins;
  const size_t shared = use_shared ? static_cast<size_t>(p.bins + 1) * sizeof(unsigned int) : 0;
  segments_count_kernel<<<grid, kThreads, shared, stream>>>(p.table, p.bins, p.explicit_range, use_shared,
                                                            reinterpret_cast<unsigned long long*>(p.counts));
  cuda::check_launch("histogram_counts_many_cuda");
}

void soft_histogram_cuda(const SoftHistogramParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "soft_histogram_cuda", [&](auto tag) { launch_soft<decltype(tag)>(p, stream); });
  cuda::check_launch("soft_histogram_cuda");
}

void soft_histogram_backward_cuda(const SoftHistogramBackwardParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "soft_histogram_backward_cuda",
                       [&](auto tag) { launch_soft_backward<decltype(tag)>(p, stream); });
  cuda::check_launch("soft_histogram_backward_cuda");
}

void entropy_from_counts_cuda(const EntropyFromCountsParams& p, cudaStream_t stream) {
  const dim3 grid(grid_x(p.rows, "entropy_from_counts_cuda"));
  if (p.counts_are_int) {
    entropy_kernel<int64_t><<<grid, kThreads, 0, stream>>>(static_cast<const int64_t*>(p.counts), p.bins, p.log_base,
                                                           p);
  } else {
    entropy_kernel<double><<<grid, kThreads, 0, stream>>>(static_cast<const double*>(p.counts), p.bins, p.log_base,
                                                          p);
  }
  cuda::check_launch("entropy_from_counts_cuda");
}

}  // namespace eitp
