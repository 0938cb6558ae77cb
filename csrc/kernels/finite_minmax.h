// Finite min/max per row: the automatic range of histogram entropy and the
// range of affine quantization. Non-finite values (NaN, +-Inf) are ignored; a
// row with no finite value gives lo = +inf, hi = -inf.
#pragma once

#include "kernels/common.h"
#ifdef __CUDACC__
#include "kernels/cuda_common.cuh"
#endif

#ifdef EITP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace eitp {

struct FiniteMinMaxParams {
  const void* x;      // (rows, row_length), row-major, contiguous
  DType dtype;        // storage dtype of x
  int64_t rows;
  int64_t row_length;
  void* lo;           // (rows,) accumulation dtype (double for fp64 input, else float)
  void* hi;           // (rows,)
};

// Running finite min/max: folds one value into (lo, hi). Branch-free so the
// CPU loop vectorizes; a non-finite v is replaced by the identity element.
template <typename A> EITP_HD void fold_finite_minmax(A v, A& lo, A& hi) {
  const A inf = std::numeric_limits<A>::infinity();
  const bool finite = is_finite_value(v);
  const A v_lo = finite ? v : inf;
  const A v_hi = finite ? v : -inf;
  lo = v_lo < lo ? v_lo : lo;
  hi = v_hi > hi ? v_hi : hi;
}

#ifdef __CUDACC__
// Finite min/max of x[begin, end) over one CUDA block (its threads stride
// over the span), block-reduced: (lo, hi) are the span's in thread 0.
template <typename T>
__device__ void block_finite_minmax(const T* __restrict__ x, int64_t begin, int64_t end,
                                    typename cuda::DeviceAcc<T>::type& lo, typename cuda::DeviceAcc<T>::type& hi) {
  using A = typename cuda::DeviceAcc<T>::type;
  __shared__ A scratch[32];
  const A inf = std::numeric_limits<A>::infinity();
  lo = inf, hi = -inf;
  A l = inf, h = -inf;  // locals: the lambda's captures stay in registers
  cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, threadIdx.x, blockDim.x,
                                             [&](int64_t, T v) { fold_finite_minmax<A>(cuda::load_acc(v), l, h); });
  lo = l, hi = h;
  lo = cuda::block_reduce(lo, inf, scratch, cuda::MinOp());
  hi = cuda::block_reduce(hi, -inf, scratch, cuda::MaxOp());
}
#endif

#ifndef __CUDACC__
// Finite min/max of a contiguous span on the CPU, folded into (lo_out, hi_out).
template <typename T>
void span_finite_minmax(const T* x, int64_t n, typename AccType<T>::type& lo_out, typename AccType<T>::type& hi_out) {
  using A = typename AccType<T>::type;
  const A inf = std::numeric_limits<A>::infinity();
  span_fold_lanes(x, n, inf, -inf, [](A v, A& lo, A& hi) { fold_finite_minmax<A>(v, lo, hi); }, lo_out, hi_out);
}
#endif

void finite_minmax_cpu(const FiniteMinMaxParams& p);
#ifdef EITP_WITH_CUDA
// lo/hi must be pre-filled with +inf/-inf.
void finite_minmax_cuda(const FiniteMinMaxParams& p, cudaStream_t stream);
#endif

}  // namespace eitp
