// CPU finite min/max per row. Chunks of whole rows when there are enough of
// them, otherwise chunks of each row (one long row: the whole-tensor range of
// a large weight), one partial per chunk folded in chunk order; shared out by
// parallel_chunks (cpu/parallel_cpu.h).
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "cpu/parallel_cpu.h"
#include "kernels/finite_minmax.h"

namespace eitp {
namespace {

constexpr int64_t kParallelMin = 32768;  // elements below which one thread does it all
constexpr int64_t kChunkElems = 65536;   // at least, per chunk
constexpr int64_t kMaxChunks = 256;

template <typename T>
void row_minmax_parallel(const T* row, int64_t n, typename AccType<T>::type& lo_out,
                         typename AccType<T>::type& hi_out) {
  using A = typename AccType<T>::type;
  const A inf = std::numeric_limits<A>::infinity();
  const Chunking c = chunking(n, kChunkElems, kMaxChunks);
  std::vector<A> lo(c.count, inf), hi(c.count, -inf);
  parallel_chunks(c.count, [&](int64_t i, int64_t) {
    const int64_t begin = i * c.size;
    span_finite_minmax(row + begin, std::min(n, begin + c.size) - begin, lo[i], hi[i]);
  });
  A l = inf, h = -inf;
  for (int64_t i = 0; i < c.count; ++i) {
    l = lo[i] < l ? lo[i] : l;
    h = hi[i] > h ? hi[i] : h;
  }
  lo_out = l;
  hi_out = h;
}

template <typename T>
void minmax_rows(const FiniteMinMaxParams& p) {
  using A = typename AccType<T>::type;
  const T* x = static_cast<const T*>(p.x);
  A* lo = static_cast<A*>(p.lo);
  A* hi = static_cast<A*>(p.hi);
  const int64_t n = p.row_length;
  auto serial = [&](int64_t r) {
    A l = std::numeric_limits<A>::infinity(), h = -std::numeric_limits<A>::infinity();
    span_finite_minmax(x + r * n, n, l, h);
    lo[r] = l;
    hi[r] = h;
  };
  if (p.rows >= parallel_slots() || n < kParallelMin) {
    const Chunking c = p.rows * n < kParallelMin
                           ? Chunking{p.rows, p.rows > 0 ? 1 : 0}
                           : chunking(p.rows, (kChunkElems + n - 1) / std::max<int64_t>(n, 1), kMaxChunks);
    parallel_chunks(c.count, [&](int64_t i, int64_t) {
      for (int64_t r = i * c.size, r1 = std::min(p.rows, (i + 1) * c.size); r < r1; ++r) serial(r);
    });
  } else {
    for (int64_t r = 0; r < p.rows; ++r) row_minmax_parallel(x + r * n, n, lo[r], hi[r]);
  }
}

}  // namespace

void finite_minmax_cpu(const FiniteMinMaxParams& p) {
  dispatch_float(p.dtype, "finite_minmax_cpu", [&](auto tag) { minmax_rows<decltype(tag)>(p); });
}

}  // namespace eitp
