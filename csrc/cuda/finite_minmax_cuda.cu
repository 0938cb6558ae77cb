// CUDA finite min/max per row, nothing pre-filled, at most two launches:
// range_partials_kernel, grid = (P blocks per row, rows), block c folding the
// row's chunks c, c + P, ... (kernels/finite_minmax.h) and writing its
// partial; then, when a row has more than one partial (P > 1),
// finite_minmax_fold_kernel folds each row's P partials with one warp. With
// P = 1 the partials are the outputs. The range pass of
// histogram_counts_with_range is the same kernel; it also zeroes the counts
// the counting launch after it adds to.
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.cuh"
#include "kernels/finite_minmax.h"

namespace eitp {
namespace {

constexpr int kThreads = 256;

// Block (c, r): partial c of row row0 + r into lo_part / hi_part[row * per_row + c];
// zeroes its share (every P * blockDim-th slot from c * blockDim) of the row's `zero` slots.
template <typename T>
__global__ void range_partials_kernel(const T* __restrict__ x, int64_t row_length, int64_t row0, int64_t per_row,
                                      typename cuda::DeviceAcc<T>::type* lo_part,
                                      typename cuda::DeviceAcc<T>::type* hi_part, int64_t* zero,
                                      int64_t zero_per_row) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int64_t row = row0 + blockIdx.y;
  const int64_t c = blockIdx.x;
  A lo, hi;
  block_finite_minmax_chunks(x + row * row_length, row_length, c, per_row, lo, hi);
  if (threadIdx.x == 0) {
    lo_part[row * per_row + c] = lo;
    hi_part[row * per_row + c] = hi;
  }
  if (zero != nullptr) {
    int64_t* z = zero + row * zero_per_row;
    for (int64_t i = c * blockDim.x + threadIdx.x; i < zero_per_row; i += per_row * blockDim.x) z[i] = 0;
  }
}

// One warp per row: (lo, hi) of the row's per_row partials.
template <typename A>
__global__ void finite_minmax_fold_kernel(const A* __restrict__ lo_part, const A* __restrict__ hi_part, int64_t rows,
                                          int64_t per_row, A* lo, A* hi) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps exit together
  const A inf = std::numeric_limits<A>::infinity();
  const A l = warp_fold(lo_part + row * per_row, per_row, inf, cuda::MinOp());
  const A h = warp_fold(hi_part + row * per_row, per_row, -inf, cuda::MaxOp());
  if ((threadIdx.x & 31) == 0) lo[row] = l, hi[row] = h;
}

template <typename T>
void launch_partials(const FiniteMinMaxParams& p, typename cuda::DeviceAcc<T>::type* lo_part,
                     typename cuda::DeviceAcc<T>::type* hi_part, int64_t* zero, int64_t zero_per_row,
                     cudaStream_t stream) {
  const int64_t per_row = range_blocks_per_row(p.row_length);
  // gridDim.y is limited to 65535: larger row counts go in slices.
  for (int64_t row0 = 0; row0 < p.rows; row0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, p.rows - row0);
    const dim3 grid(grid_x(per_row, "finite_minmax_cuda"), grid_yz(rows, "finite_minmax_cuda"));
    range_partials_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(p.x), p.row_length, row0, per_row,
                                                            lo_part, hi_part, zero, zero_per_row);
  }
}

template <typename T>
void launch(const FiniteMinMaxParams& p, void* scratch, cudaStream_t stream) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int64_t per_row = range_blocks_per_row(p.row_length);
  if (per_row == 1) {  // one partial per row: it is the row's result
    launch_partials<T>(p, static_cast<A*>(p.lo), static_cast<A*>(p.hi), nullptr, 0, stream);
    return;
  }
  A* lo_part = static_cast<A*>(scratch);
  A* hi_part = lo_part + p.rows * per_row;
  launch_partials<T>(p, lo_part, hi_part, nullptr, 0, stream);
  const int64_t rows_per_block = kThreads / 32;
  finite_minmax_fold_kernel<A><<<grid_x((p.rows + rows_per_block - 1) / rows_per_block, "finite_minmax_cuda"),
                                  kThreads, 0, stream>>>(lo_part, hi_part, p.rows, per_row, static_cast<A*>(p.lo),
                                                         static_cast<A*>(p.hi));
}

}  // namespace

void finite_minmax_cuda(const FiniteMinMaxParams& p, void* scratch, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "finite_minmax_cuda", [&](auto tag) { launch<decltype(tag)>(p, scratch, stream); });
  cuda::check_launch("finite_minmax_cuda");
}

void finite_minmax_partials_cuda(const FiniteMinMaxParams& p, void* partials, int64_t* zero, int64_t zero_per_row,
                                 cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "finite_minmax_partials_cuda", [&](auto tag) {
    using A = typename cuda::DeviceAcc<decltype(tag)>::type;
    A* lo_part = static_cast<A*>(partials);
    launch_partials<decltype(tag)>(p, lo_part, lo_part + p.rows * range_blocks_per_row(p.row_length), zero,
                                   zero_per_row, stream);
  });
  cuda::check_launch("finite_minmax_partials_cuda");
}

}  // namespace eitp
