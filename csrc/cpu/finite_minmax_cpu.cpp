// CPU finite min/max per row. Parallel over rows when there are enough of
// them, otherwise over chunks of each row (one long row: the whole-tensor
// range of a large weight).
#include <omp.h>

#include <stdexcept>

#include "kernels/finite_minmax.h"

namespace eitp {
namespace {

template <typename T>
void row_minmax(const T* row, int64_t n, typename AccType<T>::type& lo_out, typename AccType<T>::type& hi_out,
                bool parallel) {
  using A = typename AccType<T>::type;
  const A inf = std::numeric_limits<A>::infinity();
  A lo = inf, hi = -inf;
  if (parallel) {
    // One contiguous span per thread, folded under a critical section (a handful of threads).
#pragma omp parallel
    {
      const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
      A l = inf, h = -inf;
      span_finite_minmax(row + begin, end - begin, l, h);
#pragma omp critical
      {
        lo = l < lo ? l : lo;
        hi = h > hi ? h : hi;
      }
    }
  } else {
    span_finite_minmax(row, n, lo, hi);
  }
  lo_out = lo;
  hi_out = hi;
}

template <typename T>
void minmax_rows(const FiniteMinMaxParams& p) {
  using A = typename AccType<T>::type;
  const T* x = static_cast<const T*>(p.x);
  A* lo = static_cast<A*>(p.lo);
  A* hi = static_cast<A*>(p.hi);
  const int64_t threads = omp_get_max_threads();
  if (p.rows >= threads || p.row_length < 32768) {
#pragma omp parallel for schedule(static) if (p.rows * p.row_length >= 32768)
    for (int64_t r = 0; r < p.rows; ++r) row_minmax(x + r * p.row_length, p.row_length, lo[r], hi[r], false);
  } else {
    for (int64_t r = 0; r < p.rows; ++r) row_minmax(x + r * p.row_length, p.row_length, lo[r], hi[r], true);
  }
}

}  // namespace

void finite_minmax_cpu(const FiniteMinMaxParams& p) {
  dispatch_float(p.dtype, "finite_minmax_cpu", [&](auto tag) { minmax_rows<decltype(tag)>(p); });
}

}  // namespace eitp
