// CUDA kernels of the coherence loss (see kernels/coherence.h). The matrix
// products are done by the binding (ATen -> cuBLAS); these kernels do the
// column statistics, standardization, the reduction of each R tile into the
// two loss sums, and the fused backward epilogue. All launches go on the
// caller's (current) stream; all indexing is int64.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/coherence.h"
#include "kernels/cuda_common.cuh"

namespace eitp {
namespace {

// Column kernels: a block owns kCols consecutive columns; threadIdx.x is the
// column (coalesced loads along a row), threadIdx.y strides over the rows.
constexpr int kCols = 32;
constexpr int kRowThreads = 8;
constexpr int kThreads = 256;

// Sum over threadIdx.y of a per-thread value; the result is valid for threadIdx.y == 0.
template <typename A>
__device__ __forceinline__ A column_sum(A v, A (*scratch)[kCols]) {
  __syncthreads();  // scratch may still be read by a previous reduction
  scratch[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  A total = A(0);
  if (threadIdx.y == 0)
    for (int r = 0; r < kRowThreads; ++r) total += scratch[r][threadIdx.x];
  return total;
}

template <typename T>
__global__ void stats_kernel(const T* __restrict__ x, int64_t n, int64_t d, double eps,
                             typename cuda::DeviceAcc<T>::type* __restrict__ mean,
                             typename cuda::DeviceAcc<T>::type* __restrict__ rstd) {
  using A = typename cuda::DeviceAcc<T>::type;
  // Sums in double (coherence.h, column_rstd): finite inputs never overflow them.
  __shared__ double scratch[kRowThreads][kCols];
  __shared__ A mu_shared[kCols];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool ok = j < d;
  double s = 0.0;
  if (ok)
    for (int64_t i = threadIdx.y; i < n; i += kRowThreads) s += static_cast<double>(cuda::load_acc(x[i * d + j]));
  s = column_sum(s, scratch);
  if (threadIdx.y == 0) mu_shared[threadIdx.x] = static_cast<A>(s / static_cast<double>(n));
  __syncthreads();
  const A mu = mu_shared[threadIdx.x];
  double q = 0.0;
  if (ok)
    for (int64_t i = threadIdx.y; i < n; i += kRowThreads) {
      const A c = cuda::load_acc(x[i * d + j]) - mu;
      q += static_cast<double>(c * c);  // squared in A, summed in double, as the reference
    }
  q = column_sum(q, scratch);
  if (threadIdx.y == 0 && ok) {
    mean[j] = mu;
    rstd[j] = column_rstd<A>(q / static_cast<double>(n), eps);  // IEEE sqrt and division (no fast-math)
  }
}

template <typename T>
__global__ void standardize_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                                   const typename cuda::DeviceAcc<T>::type* __restrict__ mean,
                                   const typename cuda::DeviceAcc<T>::type* __restrict__ rstd,
                                   typename cuda::DeviceAcc<T>::type* __restrict__ z, int64_t ld_z) {
  const int64_t total = n * d;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d, j = e - i * d;
    z[i * ld_z + j] = (cuda::load_acc(x[e]) - mean[j]) * rstd[j];
  }
}

template <typename A>
__global__ void tile_reduce_kernel(const A* __restrict__ t, CoherenceTileParams p, double* __restrict__ acc) {
  __shared__ double scratch[32];
  const int64_t total = p.rows * p.cols;
  const A n = static_cast<A>(p.n);
  double diag = 0.0, off = 0.0;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / p.cols, c = e - r * p.cols;
    const int64_t gi = p.row0 + r, gj = p.col0 + c;
    if (p.symmetric && gj < gi) continue;
    const A v = t[r * p.ld + c] / n;
    if (gi == gj) {
      const A dv = v - A(1);
      diag += static_cast<double>(dv * dv);
    } else {
      off += (p.symmetric ? 2.0 : 1.0) * static_cast<double>(v * v);
    }
  }
  struct Add { __device__ double operator()(double a, double b) const { return a + b; } };
  diag = cuda::block_reduce(diag, 0.0, scratch, Add());
  off = cuda::block_reduce(off, 0.0, scratch, Add());
  if (threadIdx.x == 0) {
    atomicAdd(acc, diag);
    atomicAdd(acc + 1, off);
  }
}

template <typename A>
__global__ void backward_epilogue_kernel(CoherenceBackwardParams p) {
  __shared__ A scratch[kRowThreads][kCols];
  __shared__ A coef[3][kCols];  // c_j, mean dz, mean dz*z
  const auto [z, zp, w, rstd, f] = BackwardEpilogueArgs<A>(p);
  const int64_t n = p.n, d = p.d;
  const A nn = f.n;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool ok = j < d, has_diag = j < p.m;
  A s = A(0);
  if (has_diag)
    for (int64_t i = threadIdx.y; i < n; i += kRowThreads) s += z[i * p.ld_z + j] * zp[i * p.ld_zp + j];
  s = column_sum(s, scratch);
  if (threadIdx.y == 0) {
    const A r = s / nn;
    coef[0][threadIdx.x] = has_diag ? f.diag_coefficient(r) : A(0);
  }
  __syncthreads();
  const A c = coef[0][threadIdx.x];
  A sdz = A(0), sdzz = A(0);
  if (ok)
    for (int64_t i = threadIdx.y; i < n; i += kRowThreads) {
      const A partner = has_diag ? zp[i * p.ld_zp + j] : A(0);
      const A dz = f.scale * (f.wcoef * w[i * d + j] + c * partner);
      w[i * d + j] = dz;
      sdz += dz;
      sdzz += dz * z[i * p.ld_z + j];
    }
  sdz = column_sum(sdz, scratch);
  if (threadIdx.y == 0) coef[1][threadIdx.x] = sdz / nn;
  sdzz = column_sum(sdzz, scratch);
  if (threadIdx.y == 0) coef[2][threadIdx.x] = sdzz / nn;
  __syncthreads();
  if (!ok) return;
  const A mdz = coef[1][threadIdx.x], mdzz = coef[2][threadIdx.x], rs = rstd[j];
  for (int64_t i = threadIdx.y; i < n; i += kRowThreads)
    w[i * d + j] = rs * (w[i * d + j] - mdz - z[i * p.ld_z + j] * mdzz);
}

template <typename A>
__global__ void mirror_kernel(A* m, int64_t d) {
  const int64_t total = d * d;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d, j = e - i * d;
    if (j < i) m[e] = m[j * d + i];
  }
}

unsigned elementwise_blocks(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 65535)));
}

unsigned column_blocks(int64_t d) { return grid_x((d + kCols - 1) / kCols, "coherence_cuda (column blocks)"); }

template <typename T>
void launch_stats(const CoherenceStatsParams& p, cudaStream_t stream) {
  using A = typename cuda::DeviceAcc<T>::type;
  stats_kernel<T><<<column_blocks(p.d), dim3(kCols, kRowThreads), 0, stream>>>(
      static_cast<const T*>(p.x), p.n, p.d, p.eps, static_cast<A*>(p.mean), static_cast<A*>(p.rstd));
  cuda::check_launch("coherence_stats_cuda");
}

template <typename T>
void launch_standardize(const CoherenceStandardizeParams& p, cudaStream_t stream) {
  using A = typename cuda::DeviceAcc<T>::type;
  standardize_kernel<T><<<elementwise_blocks(p.n * p.d), kThreads, 0, stream>>>(
      static_cast<const T*>(p.x), p.n, p.d, static_cast<const A*>(p.mean), static_cast<const A*>(p.rstd),
      static_cast<A*>(p.z), p.ld_z);
  cuda::check_launch("coherence_standardize_cuda");
}

}  // namespace

void coherence_stats_cuda(const CoherenceStatsParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "coherence_stats_cuda", [&](auto tag) { launch_stats<decltype(tag)>(p, stream); });
}

void coherence_standardize_cuda(const CoherenceStandardizeParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "coherence_standardize_cuda", [&](auto tag) { launch_standardize<decltype(tag)>(p, stream); });
}

void coherence_tile_reduce_cuda(const CoherenceTileParams& p, double* acc, cudaStream_t stream) {
  const unsigned blocks = elementwise_blocks(p.rows * p.cols);
  if (p.is_double) tile_reduce_kernel<double><<<blocks, kThreads, 0, stream>>>(static_cast<const double*>(p.tile), p, acc);
  else tile_reduce_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(p.tile), p, acc);
  cuda::check_launch("coherence_tile_reduce_cuda");
}

void coherence_backward_epilogue_cuda(const CoherenceBackwardParams& p, cudaStream_t stream) {
  const dim3 block(kCols, kRowThreads);
  if (p.is_double) backward_epilogue_kernel<double><<<column_blocks(p.d), block, 0, stream>>>(p);
  else backward_epilogue_kernel<float><<<column_blocks(p.d), block, 0, stream>>>(p);
  cuda::check_launch("coherence_backward_epilogue_cuda");
}

void coherence_mirror_upper_cuda(void* m, bool is_double, int64_t d, cudaStream_t stream) {
  const unsigned blocks = elementwise_blocks(d * d);
  if (is_double) mirror_kernel<double><<<blocks, kThreads, 0, stream>>>(static_cast<double*>(m), d);
  else mirror_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<float*>(m), d);
  cuda::check_launch("coherence_mirror_upper_cuda");
}

}  // namespace eitp
