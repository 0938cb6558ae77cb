// Histogram entropy (docs/design.md §2.1): hard-binned counts, linear-binned (soft)
// counts and their backward, and the entropy of a row of counts. Plain
// structs and host-device maths; no torch headers.
//
// Bin arithmetic (exactly the reference's, in the accumulation type A =
// double for fp64 input, float otherwise):
//   w = (hi - lo) / bins;  b = clamp(floor((x - lo) / w), 0, bins - 1)
// the true division's result (fp32: by the reciprocal of w and one
// correction step, kernels/fast_divide.h, equal wherever it decides a bin). Non-finite x is never counted; with an
// explicit range x < lo or x > hi is not counted; w == 0 puts everything in
// bin 0. int8/uint8 codes: 256 bins, code c -> c + 128 (int8) or c (uint8).
#pragma once

#include <vector>

#include "kernels/common.h"
#include "kernels/fast_divide.h"

#ifdef EITP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace eitp {

// The most bins a histogram may have. Inputs narrower than fp64 compute the
// bin index floor((x - lo) / w) in float, which holds every integer only up
// to 2^24: with more bins some could never be reached. The bindings reject
// more; ops/entropy.py (MAX_BINS) holds the same number for the backends
// without this extension, and tests/test_cpp_rules.py ties the two.
constexpr int64_t kMaxBins = int64_t(1) << 24;

// One histogram: a contiguous run of `length` elements of one dtype. A
// batched call has one segment per row; histogram_counts_many one per tensor.
struct HistSegment {
  const void* x;
  DType dtype;
  int64_t length;
  double lo;  // range in the accumulation type (exact: a float widens to double)
  double hi;
};

struct HistogramParams {
  const void* x;          // (rows, row_length), row-major, contiguous
  DType dtype;            // float dtypes, or int8/uint8 codes
  int64_t rows;
  int64_t row_length;
  const void* lo;         // (rows,) accumulation dtype; unused for codes
  const void* hi;         // (rows,)
  int64_t bins;
  bool explicit_range;    // drop x < lo, x > hi
  int64_t* counts;        // (rows, bins), zero-filled by the caller
  // CUDA (histogram_counts_with_range), where each row's range comes from
  // instead of lo / hi (rows,): > 0, lo / hi are (rows, this many) range
  // partials (finite_minmax_partials_cuda) whose min / max is the row's range;
  // kScalarRange, (range_lo, range_hi) for every row (lo / hi unused).
  int64_t range_partials_per_row = 0;
  double range_lo = 0.0;  // accumulation-dtype values (exact as doubles)
  double range_hi = 0.0;
};
constexpr int64_t kScalarRange = -1;

struct SoftHistogramParams {
  const void* x;          // (rows, row_length), float dtypes
  DType dtype;
  int64_t rows;
  int64_t row_length;
  const void* lo;         // (rows,) accumulation dtype
  const void* hi;
  int64_t bins;
  bool explicit_range;
  double* counts;         // (rows, bins) soft counts, zero-filled by the caller
};

struct SoftHistogramBackwardParams {
  const void* x;          // (rows, row_length)
  DType dtype;
  int64_t rows;
  int64_t row_length;
  const void* lo;
  const void* hi;
  int64_t bins;
  bool explicit_range;
  const double* grad_counts;  // (rows, bins): dL/dc, the bins-long table per row
  void* grad_x;               // (rows, row_length) accumulation dtype
};

struct EntropyFromCountsParams {
  const void* counts;     // (rows, bins), int64 or float64
  bool counts_are_int;
  int64_t rows;
  int64_t bins;
  double log_base;        // 0 for nats, else ln(base): H is divided by it
  void* out;              // (rows,) float64, or float32 when out_is_float
  bool out_is_float;
};

// Stores row r's entropy, computed in float64, in the output's dtype (float32:
// rounded to nearest, as a float64 -> float32 conversion of the result would).
EITP_HD void store_entropy(const EntropyFromCountsParams& p, int64_t r, double h) {
  if (p.out_is_float) static_cast<float*>(p.out)[r] = static_cast<float>(h);
  else static_cast<double*>(p.out)[r] = h;
}

// Is v counted? Finite, and inside [lo, hi] for an explicit range.
template <typename A> EITP_HD bool hist_counted(A v, A lo, A hi, bool explicit_range) {
  return is_finite_value(v) && (!explicit_range || (v >= lo && v <= hi));
}

// Bin of a counted value: floor(q), q = (v - lo) / w, clamped to
// [0, bins-1], as trunc of q clamped to [0, bins - 1] (trunc == floor for
// q >= 0; bins - 1 is exact in A for bins <= kMaxBins), which vectorizes with
// plain SSE2 conversions. NaN q (inf/inf) goes to 0. The quotient is taken by
// `div` (Divisor(w), kernels/fast_divide.h: IEEE division for fp32 wherever
// the bin can depend on it; w == 0 or infinite gives bin 0).
template <typename A> EITP_HD int32_t hist_bin(A v, A lo, const Divisor<A>& div, int32_t bins) {
  A q = div.quotient(v - lo);
  const A top = static_cast<A>(bins - 1);
#ifdef __CUDA_ARCH__
  q = fmin(fmax(q, A(0)), top);  // FMNMX: NaN -> 0
#else
  q = q >= A(0) ? q : A(0);
  q = q < top ? q : top;
#endif
  return static_cast<int32_t>(q);
}

// Linear binning of a value (reference arithmetic in A): u = (x-lo)/w - 0.5,
// k = floor(u), f = u - k; weight (1-f) to clamp(k), f to clamp(k+1).
// `live` is false for uncounted values and w == 0 (then f = 0, k = 0).
template <typename A> struct SoftBin {
  int64_t k0, k1;
  A w0, w1;  // weights (w0 = 0 for uncounted values)
  bool live;
};

EITP_HD float floor_acc(float v) { return floorf(v); }
EITP_HD double floor_acc(double v) { return floor(v); }

template <typename A> EITP_HD SoftBin<A> soft_bin(A v, A lo, A hi, A w, int64_t bins, bool explicit_range) {
  SoftBin<A> s;
  const bool valid = hist_counted(v, lo, hi, explicit_range);
  s.live = valid && w != A(0);
  A k = A(0), f = A(0);
  if (s.live) {
    const A u = (v - lo) / w - A(0.5);
    if (u == u) {
      k = floor_acc(u);
      f = u - k;
    } else {
      s.live = false;  // NaN u (inf/inf: hi - lo overflowed): weight to bin 0, as w == 0;
    }                  // casting NaN k to int64 below would be UB and index out of bounds
  }
  const A top = static_cast<A>(bins - 1);
  const A k1 = k + A(1);
  s.k0 = static_cast<int64_t>(k < A(0) ? A(0) : (k > top ? top : k));
  s.k1 = static_cast<int64_t>(k1 < A(0) ? A(0) : (k1 > top ? top : k1));
  s.w0 = valid ? A(1) - f : A(0);
  s.w1 = f;
  return s;
}

void histogram_counts_cpu(const HistogramParams& p);
void soft_histogram_cpu(const SoftHistogramParams& p);
void soft_histogram_backward_cpu(const SoftHistogramBackwardParams& p);
void entropy_from_counts_cpu(const EntropyFromCountsParams& p);
// Many tensors, one histogram each. With auto_range, each segment's lo/hi is
// computed here (finite min/max) and written back into `segments`.
void histogram_counts_segments_cpu(std::vector<HistSegment>& segments, int64_t bins, bool explicit_range,
                                   int64_t* counts /* (segments, bins), zero-filled */);

#ifdef EITP_WITH_CUDA
// The counting launch(es); with p.range_partials_per_row > 0 each block folds
// its row's range partials first (histogram_counts_with_range: the range pass
// ran before it on `stream` and zeroed p.counts); with kScalarRange the range
// is p.range_lo / p.range_hi.
void histogram_counts_cuda(const HistogramParams& p, cudaStream_t stream);
void soft_histogram_cuda(const SoftHistogramParams& p, cudaStream_t stream);
void soft_histogram_backward_cuda(const SoftHistogramBackwardParams& p, cudaStream_t stream);
void entropy_from_counts_cuda(const EntropyFromCountsParams& p, cudaStream_t stream);
#endif

}  // namespace eitp
