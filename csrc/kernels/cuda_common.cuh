// CUDA-only helpers: 16-bit loads, warp/block reductions, float atomics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/common.h"
#include "kernels/float_order.h"
#include "kernels/grid.h"

namespace eitp {
namespace cuda {

template <typename T> struct DeviceAcc { using type = float; };
template <> struct DeviceAcc<double> { using type = double; };

__device__ __forceinline__ float load_acc(const __half& v) { return __half2float(v); }
__device__ __forceinline__ float load_acc(const __nv_bfloat16& v) { return __bfloat162float(v); }
__device__ __forceinline__ float load_acc(const float& v) { return v; }
__device__ __forceinline__ double load_acc(const double& v) { return v; }

// The element loops: fn(i, x[i]) for every i in [begin, end), shared by
// `threads` threads (this one is `t`) striding over the span. x must be
// aligned to its element size. The elements up to the first 16-byte boundary
// (fewer than 16) and the last partial vector are taken one per thread; the
// rest as 16-byte vectors (4 floats, 8 halves, 16 codes), kLoads of them per
// thread issued before any is used, so each thread keeps kLoads * 16 bytes
// in flight (the cost model's rule: python -m eitp_kernels.bench.cost_model).
template <int kLoads, typename T, typename Fn>
__device__ __forceinline__ void for_each_element(const T* __restrict__ x, int64_t begin, int64_t end, int t,
                                                 int threads, Fn&& fn) {
  constexpr int kPerVector = 16 / static_cast<int>(sizeof(T));
  if (begin >= end) return;
  const int64_t misaligned = static_cast<int64_t>((reinterpret_cast<uintptr_t>(x + begin) & 15u) / sizeof(T));
  int64_t head = misaligned ? kPerVector - misaligned : 0;
  head = head < end - begin ? head : end - begin;
  if (t < head) fn(begin + t, x[begin + t]);
  const int64_t start = begin + head;
  const int64_t vectors = (end - start) / kPerVector;
  const uint4* xv = reinterpret_cast<const uint4*>(x + start);
  for (int64_t base = t; base < vectors; base += static_cast<int64_t>(kLoads) * threads) {
    uint4 v[kLoads];
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      const int64_t j = base + static_cast<int64_t>(k) * threads;
      if (j < vectors) v[k] = __ldg(xv + j);
    }
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      const int64_t j = base + static_cast<int64_t>(k) * threads;
      if (j < vectors) {
        const T* values = reinterpret_cast<const T*>(&v[k]);
#pragma unroll
        for (int e = 0; e < kPerVector; ++e) fn(start + j * kPerVector + e, values[e]);
      }
    }
  }
  const int64_t tail = start + vectors * kPerVector;
  if (tail + t < end) fn(tail + t, x[tail + t]);
}

// Loads in flight per thread in the element loops (x 16 bytes).
constexpr int kVectorLoads = 2;

template <typename A, typename Op>
__device__ __forceinline__ A warp_reduce(A v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Block-wide reduction; the result is valid in thread 0. `scratch` holds 32 values.
template <typename A, typename Op>
__device__ __forceinline__ A block_reduce(A v, A identity, A* scratch, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < warps ? scratch[lane] : identity;
  if (warp == 0) v = warp_reduce(v, op);
  return v;
}

// Float atomics by the order-preserving integer view (float_order.h): the
// integer operation is chosen by the sign *bit* of v, so -0.0 is ordered
// below +0.0 and above every negative number.
template <typename F, typename S, typename U>
__device__ __forceinline__ void atomic_integer_min_max(F* addr, F v, IntegerMinMax op) {
  const U bits = ordered_bits(v);
  if (op.as_signed) {
    S* signed_addr = reinterpret_cast<S*>(addr);
    if (op.take_min) atomicMin(signed_addr, static_cast<S>(bits));
    else atomicMax(signed_addr, static_cast<S>(bits));
  } else {
    U* unsigned_addr = reinterpret_cast<U*>(addr);
    if (op.take_min) atomicMin(unsigned_addr, bits);
    else atomicMax(unsigned_addr, bits);
  }
}
__device__ __forceinline__ void atomic_min(float* addr, float v) {
  atomic_integer_min_max<float, int, unsigned int>(addr, v, float_min_as_integer(sign_bit(v)));
}
__device__ __forceinline__ void atomic_max(float* addr, float v) {
  atomic_integer_min_max<float, int, unsigned int>(addr, v, float_max_as_integer(sign_bit(v)));
}
__device__ __forceinline__ void atomic_min(double* addr, double v) {
  atomic_integer_min_max<double, long long, unsigned long long>(addr, v, float_min_as_integer(sign_bit(v)));
}
__device__ __forceinline__ void atomic_max(double* addr, double v) {
  atomic_integer_min_max<double, long long, unsigned long long>(addr, v, float_max_as_integer(sign_bit(v)));
}

// After an op's launches: a failed launch (bad configuration, no kernel image
// for this GPU) becomes an exception naming the launcher, instead of surfacing
// at a later, unrelated synchronization. The binding turns it into a Python
// RuntimeError.
inline void check_launch(const char* what) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
}

// dispatch_float (common.h) with the CUDA 16-bit types.
template <typename Fn> void dispatch_float(DType dtype, const char* who, Fn&& fn) {
  dispatch_float_as<__half, __nv_bfloat16>(dtype, who, static_cast<Fn&&>(fn));
}

struct MinOp { template <typename A> __device__ A operator()(A a, A b) const { return b < a ? b : a; } };
struct MaxOp { template <typename A> __device__ A operator()(A a, A b) const { return b > a ? b : a; } };

}  // namespace cuda
}  // namespace eitp
