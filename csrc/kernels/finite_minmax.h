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

// The range pass on the GPU (finite_minmax, histogram_counts_with_range, the
// per-tensor int8 scale): each row is reduced by at most kRangeBlocksPerRow
// blocks, block c taking the row's chunks c, c + P, c + 2P, ... of
// kRangeChunk elements (P = range_blocks_per_row), and each block *writes*
// its partial (no atomics into a pre-filled buffer); the next launch folds a
// row's P partials (warp_fold). 512 bounds that fold (a counting block
// reads 2 x 512 partials, 4 KiB of fp32, before it counts 8192 or more
// elements) while keeping a single long row on 512 blocks of 256 threads:
// about 1000 threads per SM of an H100/H200 with 32 bytes of loads in flight
// each, above the 15-22 KiB per SM their bandwidth-latency product asks for
// (chosen from those figures; not timed here: no GPU).
constexpr int64_t kRangeChunk = 256 * 16;
constexpr int64_t kRangeBlocksPerRow = 512;

inline int64_t range_blocks_per_row(int64_t row_length) {
  const int64_t chunks = (row_length + kRangeChunk - 1) / kRangeChunk;
  return chunks < 1 ? 1 : (chunks < kRangeBlocksPerRow ? chunks : kRangeBlocksPerRow);
}

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
// op-fold of v[0, n) by one warp (call it from all 32 lanes): each lane
// issues kLoads loads before it uses them, the lanes' folds are then
// combined by shuffles; the result is in every lane. For the range partials
// (n <= kRangeBlocksPerRow), never NaN.
template <typename A, typename Op>
__device__ __forceinline__ A warp_fold(const A* __restrict__ v, int64_t n, A identity, Op op) {
  constexpr int kLoads = 8;
  const int lane = threadIdx.x & 31;
  A acc = identity;
  for (int64_t base = lane; base < n; base += 32 * kLoads) {
    A got[kLoads];
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      const int64_t j = base + 32 * k;
      got[k] = j < n ? v[j] : identity;
    }
#pragma unroll
    for (int k = 0; k < kLoads; ++k) acc = op(acc, got[k]);
  }
  return cuda::warp_reduce(acc, op);
}

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

// The same over chunks first, first + step, ... (kRangeChunk elements each)
// of a row of `length` elements: one block's share of the range pass.
template <typename T>
__device__ void block_finite_minmax_chunks(const T* __restrict__ x, int64_t length, int64_t first, int64_t step,
                                           typename cuda::DeviceAcc<T>::type& lo,
                                           typename cuda::DeviceAcc<T>::type& hi) {
  using A = typename cuda::DeviceAcc<T>::type;
  __shared__ A scratch[32];
  const A inf = std::numeric_limits<A>::infinity();
  A l = inf, h = -inf;
  for (int64_t begin = first * kRangeChunk; begin < length; begin += step * kRangeChunk) {
    const int64_t end = begin + kRangeChunk < length ? begin + kRangeChunk : length;
    cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, threadIdx.x, blockDim.x,
                                               [&](int64_t, T v) { fold_finite_minmax<A>(cuda::load_acc(v), l, h); });
  }
  lo = cuda::block_reduce(l, inf, scratch, cuda::MinOp());
  hi = cuda::block_reduce(h, -inf, scratch, cuda::MaxOp());
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
// Scratch a CUDA finite min/max needs: 2 * rows * P accumulation-dtype values
// (the partials: lo of every row, then hi), none when P = 1.
inline int64_t finite_minmax_cuda_scratch(int64_t rows, int64_t row_length) {
  const int64_t per_row = range_blocks_per_row(row_length);
  return per_row > 1 ? 2 * rows * per_row : 0;
}
// Writes p.lo / p.hi (nothing pre-filled): the range pass, then (P > 1) one
// fold launch; `scratch` as finite_minmax_cuda_scratch. row_length > 0.
void finite_minmax_cuda(const FiniteMinMaxParams& p, void* scratch, cudaStream_t stream);
// The range pass alone: the partials, lo (rows, P) then hi (rows, P), into
// `partials` (2 * rows * range_blocks_per_row(row_length) values); its blocks
// also zero `zero` (rows, zero_per_row) int64, which a later launch on the
// same stream accumulates into (nullptr: nothing to zero). row_length > 0.
void finite_minmax_partials_cuda(const FiniteMinMaxParams& p, void* partials, int64_t* zero, int64_t zero_per_row,
                                 cudaStream_t stream);
#endif

}  // namespace eitp
