// CUDA histogram entropy kernels. Grid = (chunks per row, rows): each block
// counts one chunk of one row into a shared-memory histogram (shared atomics),
// then merges it into the row's global counts with one atomic per non-empty
// bin. Histograms too large for shared memory count with global atomics
// directly. The range (lo, hi) is read on the device: no host sync.
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.cuh"
#include "kernels/entropy.h"

namespace eitp {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kItemsPerThread = 32;
constexpr size_t kSharedBytes = 48 * 1024;  // default dynamic shared memory limit

// Bin of element v of a row; false when it is not counted.
template <typename T> struct Binner {
  using A = typename cuda::DeviceAcc<T>::type;
  A lo, hi, w;
  int32_t bins;
  bool explicit_range;
  __device__ Binner(const void* lo_p, const void* hi_p, int64_t row, int64_t nbins, bool expl) {
    lo = static_cast<const A*>(lo_p)[row];
    hi = static_cast<const A*>(hi_p)[row];
    bins = static_cast<int32_t>(nbins);
    w = (hi - lo) / static_cast<A>(bins);
    explicit_range = expl;
  }
  __device__ __forceinline__ bool operator()(const T& raw, int32_t& b) const {
    const A v = cuda::load_acc(raw);
    b = hist_bin<A>(v, lo, w, bins);
    return hist_counted<A>(v, lo, hi, explicit_range);
  }
};

template <> struct Binner<int8_t> {
  __device__ Binner(const void*, const void*, int64_t, int64_t, bool) {}
  __device__ __forceinline__ bool operator()(const int8_t& raw, int32_t& b) const {
    b = static_cast<int32_t>(raw) + 128;
    return true;
  }
};
template <> struct Binner<uint8_t> {
  __device__ Binner(const void*, const void*, int64_t, int64_t, bool) {}
  __device__ __forceinline__ bool operator()(const uint8_t& raw, int32_t& b) const {
    b = static_cast<int32_t>(raw);
    return true;
  }
};

template <typename T>
__global__ void hist_shared_kernel(const T* __restrict__ x, int64_t row_length, int64_t chunk, const void* lo,
                                   const void* hi, int64_t row0, int64_t bins, bool explicit_range,
                                   unsigned long long* counts) {
  extern __shared__ unsigned int sh_hist[];
  const int64_t row = row0 + blockIdx.y;
  for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) sh_hist[b] = 0u;
  __syncthreads();
  const Binner<T> binner(lo, hi, row, bins, explicit_range);
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < row_length ? begin + chunk : row_length;
  const T* row_ptr = x + row * row_length;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    int32_t b;
    if (binner(row_ptr[i], b)) atomicAdd(sh_hist + b, 1u);
  }
  __syncthreads();
  unsigned long long* out = counts + row * bins;
  for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
    const unsigned int c = sh_hist[b];
    if (c) atomicAdd(out + b, static_cast<unsigned long long>(c));
  }
}

template <typename T>
__global__ void hist_global_kernel(const T* __restrict__ x, int64_t row_length, int64_t chunk, const void* lo,
                                   const void* hi, int64_t row0, int64_t bins, bool explicit_range,
                                   unsigned long long* counts) {
  const int64_t row = row0 + blockIdx.y;
  const Binner<T> binner(lo, hi, row, bins, explicit_range);
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < row_length ? begin + chunk : row_length;
  const T* row_ptr = x + row * row_length;
  unsigned long long* out = counts + row * bins;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    int32_t b;
    if (binner(row_ptr[i], b)) atomicAdd(out + b, 1ull);
  }
}

template <typename T>
void launch_counts(const HistogramParams& p, cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(p.bins) * sizeof(unsigned int);
  const bool use_shared = shared <= kSharedBytes;
  const int64_t chunk = std::max<int64_t>(kThreads * kItemsPerThread, use_shared ? 8 * p.bins : 0);
  const int64_t chunks = std::max<int64_t>(1, (p.row_length + chunk - 1) / chunk);
  auto* counts = reinterpret_cast<unsigned long long*>(p.counts);  // int64 counts stay < 2^63
  for (int64_t row0 = 0; row0 < p.rows; row0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, p.rows - row0);
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(rows));
    const T* x = static_cast<const T*>(p.x);
    if (use_shared) {
      hist_shared_kernel<T><<<grid, kThreads, shared, stream>>>(x, p.row_length, chunk, p.lo, p.hi, row0, p.bins,
                                                                p.explicit_range, counts);
    } else {
      hist_global_kernel<T><<<grid, kThreads, 0, stream>>>(x, p.row_length, chunk, p.lo, p.hi, row0, p.bins,
                                                           p.explicit_range, counts);
    }
  }
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
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(rows));
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
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(rows));
    soft_backward_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(p.x), p.row_length, p.lo, p.hi, row0,
                                                           p.bins, p.explicit_range, p.grad_counts,
                                                           static_cast<A*>(p.grad_x));
  }
}

// ---------------------------------------------------------------- entropy from counts

struct SumOp { __device__ double operator()(double a, double b) const { return a + b; } };

template <typename C>
__global__ void entropy_kernel(const C* __restrict__ counts, int64_t bins, double log_base, double* out) {
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
    out[row] = h;
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
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (p.counts_are_int) {
    entropy_kernel<int64_t><<<grid, kThreads, 0, stream>>>(static_cast<const int64_t*>(p.counts), p.bins, p.log_base,
                                                           p.out);
  } else {
    entropy_kernel<double><<<grid, kThreads, 0, stream>>>(static_cast<const double*>(p.counts), p.bins, p.log_base,
                                                          p.out);
  }
  cuda::check_launch("entropy_from_counts_cuda");
}

}  // namespace eitp
