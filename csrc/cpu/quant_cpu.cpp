// CPU int8 quantize / dequantize / fake-quant over (rows, row_length) views,
// one scale per row. Many rows (per channel, per group): chunks of rows shared
// out by parallel_chunks (cpu/parallel_cpu.h), each row reduced then quantized
// while it is still in cache (one read of the data from memory, one write).
// Few long rows (per tensor): a parallel reduction over spans of the row (one
// partial per span, folded in order), then a parallel quantization pass (two
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

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cpu/parallel_cpu.h"
#include "kernels/quant.h"

namespace eitp {
namespace {

constexpr int64_t kParallelMin = 32768;  // elements below which one thread does it all
// Elements per chunk of parallel_chunks (at least; a multiple of 64 within a
// row, so no two chunks write one cache line of output), and at most
// kMaxChunks chunks per call.
constexpr int64_t kChunkElems = 65536;
constexpr int64_t kMaxChunks = 256;

// Chunks of whole rows: at least kChunkElems elements each (one chunk below kParallelMin).
inline Chunking row_chunks(int64_t rows, int64_t n) {
  if (rows * n < kParallelMin) return {rows, rows > 0 ? 1 : 0};
  return chunking(rows, (kChunkElems + n - 1) / std::max<int64_t>(n, 1), kMaxChunks);
}

// Chunks of one long row: multiples of 64 elements.
inline Chunking span_chunks(int64_t n) {
  Chunking c = chunking(n, kChunkElems, kMaxChunks);
  c.size = (c.size + 63) & ~int64_t(63);
  c.count = (n + c.size - 1) / c.size;
  return c;
}

// Runs rows(r0, r1) over chunks of whole rows.
template <typename RowsFn>
void for_row_chunks(int64_t rows, int64_t n, const RowsFn& fn) {
  const Chunking c = row_chunks(rows, n);
  parallel_chunks(c.count, [&](int64_t i, int64_t) { fn(i * c.size, std::min(rows, (i + 1) * c.size)); });
}

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

// fp16 spans go through the float loops in blocks: the values converted with
// F16C (halves_to_floats: load_acc's values), the float loop vectorized, the
// results converted back (floats_to_halves: store_acc's rounding). Per value
// the same result; the scalar fp16 loops converted one value at a time in
// software (fake-quant per channel of a 1024 x 1024 fp16 tensor, 1 thread:
// 6.8 ms against 0.47 ms for fp32).
constexpr int64_t kHalfBlock = 512;
template <typename T> constexpr bool kIsHalf = std::is_same<T, Half16>::value;

template <typename Fn>
void for_half_blocks(int64_t n, Fn fn) {
  for (int64_t s = 0; s < n; s += kHalfBlock) fn(s, std::min(kHalfBlock, n - s));
}

// Codes of one span with a fixed (scale, zero point).
template <typename T>
EITP_CPU_HOT void span_quantize(const T* x, int64_t n, float scale, int32_t zero_point, bool symmetric, int8_t* q) {
  if constexpr (kIsHalf<T>) {
    alignas(64) float values[kHalfBlock];
    for_half_blocks(n, [&](int64_t s, int64_t m) {
      halves_to_floats(x + s, m, values);
      span_quantize<float>(values, m, scale, zero_point, symmetric, q + s);
    });
    return;
  }
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
  if constexpr (kIsHalf<T>) {
    alignas(64) float values[kHalfBlock], results[kHalfBlock];
    for_half_blocks(n, [&](int64_t s, int64_t m) {
      halves_to_floats(x + s, m, values);
      span_fake_quant<float>(values, m, scale, zero_point, symmetric, results);
      floats_to_halves(results, m, out + s);
      for (int64_t i = 0; i < m; ++i) out[s + i] = select(values[i] != values[i], x[s + i], out[s + i]);  // NaN's bits
    });
    return;
  }
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
    const int64_t n = p.row_length;
    const Chunking c = span_chunks(n);
    // One partial per chunk, folded in chunk order (no lock, the same result whatever ran them).
    std::vector<A> lo(c.count, A(0)), hi(c.count, A(0));
    parallel_chunks(c.count, [&](int64_t i, int64_t) {
      const int64_t begin = i * c.size, end = std::min(n, begin + c.size);
      span_reduce<T>(x(r) + begin, end - begin, p.symmetric, lo[i], hi[i]);
    });
    A l = A(0), h = A(0);
    for (int64_t i = 0; i < c.count; ++i) {
      l = lo[i] < l ? lo[i] : l;
      h = hi[i] > h ? hi[i] : h;
    }
    row_scale_params<A>(p.symmetric, l, h, p.scale[r], p.zero_point[r]);
  }
};

template <typename T>
void quantize_rows(const QuantRowsParams& p) {
  const RowJob<T> job{p};
  const int64_t n = p.row_length;
  if (p.rows >= parallel_slots() || n < kParallelMin) {
    // Whole rows per chunk: each row reduced, then quantized while it is hot in cache.
    for_row_chunks(p.rows, n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (!p.static_scale) job.params_serial(r);
        job.apply(r, 0, n);
      }
    });
    return;
  }
  // Few long rows: parallel inside each row (two passes when dynamic).
  const Chunking c = span_chunks(n);
  for (int64_t r = 0; r < p.rows; ++r) {
    if (!p.static_scale) job.params_parallel(r);
    parallel_chunks(c.count, [&](int64_t i, int64_t) { job.apply(r, i * c.size, std::min(n, (i + 1) * c.size)); });
  }
}

// Runs row(r, begin, end) over every row: chunks of whole rows when there
// are enough rows, otherwise each long row split into 64-element-aligned
// spans. For elementwise passes whose row parameters are known.
template <typename RowFn>
void for_each_row_span(int64_t rows, int64_t n, const RowFn& row) {
  if (rows >= parallel_slots() || n < kParallelMin) {
    for_row_chunks(rows, n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) row(r, 0, n);
    });
    return;
  }
  const Chunking c = span_chunks(n);
  for (int64_t r = 0; r < rows; ++r)
    parallel_chunks(c.count, [&](int64_t i, int64_t) { row(r, i * c.size, std::min(n, (i + 1) * c.size)); });
}

template <typename T>
EITP_CPU_HOT void span_dequantize(const int8_t* q, int64_t n, float scale, int32_t zero_point, T* out) {
  if constexpr (kIsHalf<T>) {
    alignas(64) float results[kHalfBlock];
    for_half_blocks(n, [&](int64_t s, int64_t m) {
      span_dequantize<float>(q + s, m, scale, zero_point, results);
      floats_to_halves(results, m, out + s);
    });
    return;
  }
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

// g where keep, else +0 (no bit set, store_acc's zero for every dtype), by a
// mask on the bits: the load of g stays unconditional. Written as a select,
// GCC made it a masked load (vmaskmovps), which in an autograd backward ran
// about 8x slower than the plain load here (fake-quant per channel of
// randn(1024, 1024) fp32, forward + backward, 1 thread: 6.95 ms, of which
// the backward kernel 3.2 ms; alone with the same arguments 0.3-0.4 ms).
template <typename T> inline T pass_or_zero(bool keep, T g) {
  if constexpr (sizeof(T) == 2) {
    T out = g;
    out.bits = static_cast<uint16_t>(g.bits & (keep ? 0xFFFFu : 0u));
    return out;
  } else {
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    return bit_cast<T>(static_cast<U>(bit_cast<U>(g) & (keep ? ~U(0) : U(0))));
  }
}

template <typename T>
EITP_CPU_HOT void span_backward(const T* grad, const T* x, int64_t n, float scale, int32_t zero_point,
                                bool symmetric, T* grad_x) {
  if constexpr (kIsHalf<T>) {  // the float loop on x, with 1 as the gradient: which values pass
    alignas(64) float values[kHalfBlock], ones[kHalfBlock], passes[kHalfBlock];
    for (int64_t i = 0; i < kHalfBlock; ++i) ones[i] = 1.0f;
    for_half_blocks(n, [&](int64_t s, int64_t m) {
      halves_to_floats(x + s, m, values);
      span_backward<float>(ones, values, m, scale, zero_point, symmetric, passes);
      for (int64_t i = 0; i < m; ++i) grad_x[s + i] = pass_or_zero(passes[i] != 0.0f, grad[s + i]);
    });
    return;
  }
  using A = typename AccType<T>::type;
  const A s = A(scale), zp = A(zero_point), qmin = symmetric ? A(-127) : A(-128), qmax = A(127);
  const CodeDivisor<A> div(s);
  for (int64_t i = 0; i < n; ++i) {
    const A v = load_acc(x[i]);
    const A r = unclamped_code<A>(v, div, zp);
    const bool keep = is_finite_value(v) && r >= qmin && r <= qmax;
    grad_x[i] = pass_or_zero(keep, grad[i]);
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
