// CPU int8 quantize / dequantize / fake-quant over (rows, row_length) views,
// one scale per row. Many rows (per channel, per group): OpenMP over rows, and
// each row is reduced then quantized while it is still in cache (one read of
// the data from memory, one write). Few long rows (per tensor): a parallel
// reduction over spans of the row, then a parallel quantization pass (two
// reads, one write). Loops are lane-wise / elementwise so they vectorize
// without fast-math; codes are bit-identical to the reference.
// The NaN / clamp selects in the quantization loops are only if-converted
// (and so vectorized) when comparisons may be assumed not to trap. This
// changes no result (no fast-math: IEEE values, rounding and division are
// untouched); only floating-point exception flags may differ. Set before the
// includes so the header's inline helpers share the option and inline.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <omp.h>

#include <stdexcept>

#include "kernels/quant.h"

namespace eitp {
namespace {

constexpr int64_t kParallelMin = 32768;  // elements below which one thread does it all

// Row reduction: symmetric -> absmax in hi; affine -> (min(.,0), max(.,0)).
template <typename T>
void span_reduce(const T* x, int64_t n, bool symmetric, typename AccType<T>::type& lo_out,
                 typename AccType<T>::type& hi_out) {
  using A = typename AccType<T>::type;
  if (symmetric) {
    span_fold_lanes(x, n, A(0), A(0), [](A v, A&, A& hi) { fold_absmax<A>(v, hi); }, lo_out, hi_out);
  } else {
    span_fold_lanes(x, n, A(0), A(0), [](A v, A& lo, A& hi) { fold_range0<A>(v, lo, hi); }, lo_out, hi_out);
  }
}

// a if take else b; 16-bit storage types select on their bits (vectorizable).
template <typename T> inline T select(bool take, T a, T b) { return take ? a : b; }
template <> inline Half16 select<Half16>(bool take, Half16 a, Half16 b) { return Half16{take ? a.bits : b.bits}; }
template <> inline BFloat16 select<BFloat16>(bool take, BFloat16 a, BFloat16 b) {
  return BFloat16{take ? a.bits : b.bits};
}

// Codes of one span with a fixed (scale, zero point).
template <typename T>
EITP_CPU_HOT void span_quantize(const T* x, int64_t n, float scale, int32_t zero_point, bool symmetric, int8_t* q) {
  using A = typename AccType<T>::type;
  const A s = A(scale), zp = A(zero_point), qmin = symmetric ? A(-127) : A(-128), qmax = A(127);
  const CodeDivisor<A> div(s);
  for (int64_t i = 0; i < n; ++i) {
    const A r = clamp_code<A>(unclamped_code<A>(load_acc(x[i]), div, zp), qmin, qmax);
    q[i] = static_cast<int8_t>(static_cast<int32_t>(r));
  }
}

// dequantize(quantize(x)) of one span in x's dtype; NaN inputs are copied through.
template <typename T>
EITP_CPU_HOT void span_fake_quant(const T* x, int64_t n, float scale, int32_t zero_point, bool symmetric, T* out) {
  using A = typename AccType<T>::type;
  const A s = A(scale), zp = A(zero_point), qmin = symmetric ? A(-127) : A(-128), qmax = A(127);
  const CodeDivisor<A> div(s);
  for (int64_t i = 0; i < n; ++i) {
    const T xi = x[i];
    const A v = load_acc(xi);
    const A r = clamp_code<A>(unclamped_code<A>(v, div, zp), qmin, qmax);
    const T d = store_acc<T>((r - zp) * s);
    out[i] = select(v != v, xi, d);
  }
}

template <typename T>
struct RowJob {
  const QuantRowsParams& p;
  const T* x(int64_t r) const { return static_cast<const T*>(p.x) + r * p.row_length; }
  void apply(int64_t r, int64_t begin, int64_t end) const {
    const int64_t offset = r * p.row_length + begin;
    if (p.q != nullptr)
      span_quantize<T>(static_cast<const T*>(p.x) + offset, end - begin, p.scale[r], p.zero_point[r], p.symmetric,
                       p.q + offset);
    else
      span_fake_quant<T>(static_cast<const T*>(p.x) + offset, end - begin, p.scale[r], p.zero_point[r],
                         p.symmetric, static_cast<T*>(p.out) + offset);
  }
  void params_serial(int64_t r) const {
    using A = typename AccType<T>::type;
    A lo = A(0), hi = A(0);
    span_reduce<T>(x(r), p.row_length, p.symmetric, lo, hi);
    row_scale_params<A>(p.symmetric, lo, hi, p.scale[r], p.zero_point[r]);
  }
  void params_parallel(int64_t r) const {
    using A = typename AccType<T>::type;
    A lo = A(0), hi = A(0);
    const int64_t n = p.row_length;
#pragma omp parallel
    {
      const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
      A l = A(0), h = A(0);
      span_reduce<T>(x(r) + begin, end - begin, p.symmetric, l, h);
#pragma omp critical
      {
        lo = l < lo ? l : lo;
        hi = h > hi ? h : hi;
      }
    }
    row_scale_params<A>(p.symmetric, lo, hi, p.scale[r], p.zero_point[r]);
  }
};

template <typename T>
void quantize_rows(const QuantRowsParams& p) {
  const RowJob<T> job{p};
  const int64_t threads = omp_get_max_threads();
  const int64_t total = p.rows * p.row_length;
  if (p.rows >= threads || p.row_length < kParallelMin) {
    // One row per iteration: reduce it, then quantize it while it is hot in cache.
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
    for (int64_t r = 0; r < p.rows; ++r) {
      if (!p.static_scale) job.params_serial(r);
      job.apply(r, 0, p.row_length);
    }
    return;
  }
  // Few long rows: parallel inside each row (two passes when dynamic).
  for (int64_t r = 0; r < p.rows; ++r) {
    if (!p.static_scale) job.params_parallel(r);
    const int64_t n = p.row_length;
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      // Span ends on multiples of 64 elements so threads never share a cache line of output.
      const int64_t begin = (n * t / nt) & ~int64_t(63), end = t + 1 == nt ? n : (n * (t + 1) / nt) & ~int64_t(63);
      job.apply(r, begin, end);
    }
  }
}

// Runs row(r, begin, end) over every row: rows in parallel when there are
// enough of them, otherwise each long row split into one 64-element-aligned
// span per thread. For elementwise passes whose row parameters are known.
template <typename RowFn>
void for_each_row_span(int64_t rows, int64_t n, const RowFn& row) {
  if (rows >= omp_get_max_threads() || n < kParallelMin) {
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) row(r, 0, n);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t begin = (n * t / nt) & ~int64_t(63), end = t + 1 == nt ? n : (n * (t + 1) / nt) & ~int64_t(63);
      row(r, begin, end);
    }
  }
}

template <typename T>
EITP_CPU_HOT void span_dequantize(const int8_t* q, int64_t n, float scale, int32_t zero_point, T* out) {
  using A = typename AccType<T>::type;
  const A s = A(scale), zp = A(zero_point);
  for (int64_t i = 0; i < n; ++i) out[i] = store_acc<T>((A(q[i]) - zp) * s);
}

template <typename T>
void dequantize_rows(const DequantRowsParams& p) {
  T* out = static_cast<T*>(p.out);
  const int64_t n = p.row_length;
  auto row = [&](int64_t r, int64_t begin, int64_t end) {
    const int32_t zp = p.zero_point != nullptr ? p.zero_point[r] : 0;
    span_dequantize<T>(p.q + r * n + begin, end - begin, p.scale[r], zp, out + r * n + begin);
  };
  for_each_row_span(p.rows, n, row);
}

template <typename T>
EITP_CPU_HOT void span_backward(const T* grad, const T* x, int64_t n, float scale, int32_t zero_point,
                                bool symmetric, T* grad_x) {
  using A = typename AccType<T>::type;
  const A s = A(scale), zp = A(zero_point), qmin = symmetric ? A(-127) : A(-128), qmax = A(127);
  const CodeDivisor<A> div(s);
  const T zero = store_acc<T>(A(0));
  for (int64_t i = 0; i < n; ++i) {
    const A v = load_acc(x[i]);
    const A r = unclamped_code<A>(v, div, zp);
    const bool keep = is_finite_value(v) && r >= qmin && r <= qmax;
    grad_x[i] = select(keep, grad[i], zero);
  }
}

template <typename T>
void backward_rows(const FakeQuantBackwardParams& p) {
  const T* grad = static_cast<const T*>(p.grad);
  const T* x = static_cast<const T*>(p.x);
  T* gx = static_cast<T*>(p.grad_x);
  const int64_t n = p.row_length;
  auto row = [&](int64_t r, int64_t begin, int64_t end) {
    const int32_t zp = p.zero_point != nullptr ? p.zero_point[r] : 0;
    const int64_t o = r * n + begin;
    span_backward<T>(grad + o, x + o, end - begin, p.scale[r], zp, p.symmetric, gx + o);
  };
  for_each_row_span(p.rows, n, row);
}

}  // namespace

void quantize_int8_rows_cpu(const QuantRowsParams& p) {
  dispatch_float(p.dtype, "quantize_int8_rows_cpu", [&](auto tag) { quantize_rows<decltype(tag)>(p); });
}

void dequantize_int8_rows_cpu(const DequantRowsParams& p) {
  dispatch_float(p.out_dtype, "dequantize_int8_rows_cpu", [&](auto tag) { dequantize_rows<decltype(tag)>(p); });
}

void fake_quant_int8_rows_backward_cpu(const FakeQuantBackwardParams& p) {
  dispatch_float(p.dtype, "fake_quant_int8_rows_backward_cpu", [&](auto tag) { backward_rows<decltype(tag)>(p); });
}

}  // namespace eitp
