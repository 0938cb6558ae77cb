// CUDA finite min/max per row. Grid = (chunks per row, rows): each block
// reduces one chunk in registers, then one atomic per block and output folds
// it in, so a single huge row still spreads over the whole GPU.
// The outputs must be pre-filled with +inf (lo) and -inf (hi).
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.cuh"
#include "kernels/finite_minmax.h"

namespace eitp {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kItemsPerThread = 16;

template <typename T>
__global__ void finite_minmax_kernel(const T* __restrict__ x, int64_t row_length, int64_t chunk,
                                     typename cuda::DeviceAcc<T>::type* lo_out,
                                     typename cuda::DeviceAcc<T>::type* hi_out) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int64_t row = blockIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < row_length ? begin + chunk : row_length;
  A lo, hi;
  block_finite_minmax(x + row * row_length, begin, end, lo, hi);
  if (threadIdx.x == 0) {
    cuda::atomic_min(lo_out + row, lo);
    cuda::atomic_max(hi_out + row, hi);
  }
}

template <typename T>
void launch(const FiniteMinMaxParams& p, cudaStream_t stream) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int64_t chunk = kThreads * kItemsPerThread;
  const int64_t chunks = std::max<int64_t>(1, (p.row_length + chunk - 1) / chunk);
  // gridDim.y is limited to 65535: larger row counts go in slices.
  for (int64_t row0 = 0; row0 < p.rows; row0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, p.rows - row0);
    dim3 grid(grid_x(chunks, "finite_minmax_cuda"), grid_yz(rows, "finite_minmax_cuda"));
    finite_minmax_kernel<T><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(p.x) + row0 * p.row_length, p.row_length, chunk,
        static_cast<A*>(p.lo) + row0, static_cast<A*>(p.hi) + row0);
  }
}

}  // namespace

void finite_minmax_cuda(const FiniteMinMaxParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "finite_minmax_cuda", [&](auto tag) { launch<decltype(tag)>(p, stream); });
  cuda::check_launch("finite_minmax_cuda");
}

}  // namespace eitp
