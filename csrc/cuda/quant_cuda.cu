// CUDA int8 quantize / dequantize / fake-quant over (rows, row_length) views,
// one scale per row (maths in kernels/quant.h, shared with the CPU code).
//
// Dynamic scales:
//   rows of <= 1024 elements (per group, short channels): one warp per row;
//     the row is reduced with warp shuffles, then re-read (from L1/L2) and
//     quantized: one DRAM read, one write.
//   longer rows, many of them (per channel): one block per row, block reduction.
//   few long rows (per tensor): the range pass of kernels/finite_minmax.h
//     (at most kRangeBlocksPerRow blocks a row, each writing its partial into
//     the workspace: nothing to zero first), one warp per row folding the
//     partials into (scale, zero point), then the static kernel (two reads,
//     one write): three launches.
// Static scales, dequantize and the backward: a flat grid of
//   rows * chunks blocks, each walking its chunk with a block stride.
// All offsets are int64; launches go to the caller's (current) stream.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda_common.cuh"
#include "kernels/quant.h"

namespace eitp {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;  // elements per block in the flat kernels

// The span of one block of the flat kernels: block b covers elements
// [begin, end) of row b / chunks (chunk b % chunks of kChunk elements);
// base = row * row_length is the row's first element.
struct RowChunk {
  int64_t row, begin, end, base;
};
__device__ __forceinline__ RowChunk row_chunk(int64_t row_length, int64_t chunks) {
  const int64_t block = blockIdx.x;
  const int64_t row = block / chunks, begin = (block % chunks) * kChunk;
  return {row, begin, std::min<int64_t>(begin + kChunk, row_length), row * row_length};
}

__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(double* p, double v) { *p = v; }

// Quantize (or fake-quantize) elements [begin, end) of one row, shared by
// `threads` threads (this one is `t`): 16-byte loads, the scale's reciprocal
// once (CodeDivisor, kernels/quant.h).
template <typename T>
__device__ __forceinline__ void apply_row(const T* __restrict__ x, int8_t* __restrict__ q, T* __restrict__ out,
                                          int64_t begin, int64_t end, int t, int threads, float scale,
                                          int32_t zero_point, bool symmetric) {
  using A = typename cuda::DeviceAcc<T>::type;
  const A s = A(scale), zp = A(zero_point), qmin = symmetric ? A(-127) : A(-128), qmax = A(127);
  const CodeDivisor<A> div(s);
  if (q != nullptr) {
    cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, t, threads, [&](int64_t i, T xv) {
      const A r = clamp_code<A>(unclamped_code<A>(cuda::load_acc(xv), div, zp), qmin, qmax);
      q[i] = static_cast<int8_t>(static_cast<int32_t>(r));
    });
  } else {
    cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, t, threads, [&](int64_t i, T xv) {
      const A v = cuda::load_acc(xv);
      const A r = clamp_code<A>(unclamped_code<A>(v, div, zp), qmin, qmax);
      if (v != v) out[i] = xv;  // NaN stays NaN (same bits)
      else store_out(out + i, (r - zp) * s);
    });
  }
}

template <typename A>
struct RangeFold {
  bool symmetric;
  A lo = A(0), hi = A(0);
};

// Folds x[begin, end) into fold (symmetric: absmax in hi; affine: the range with 0 in (lo, hi)), shared by
// `threads` threads (16-byte loads); one loop per kind, so neither carries the other's code.
template <typename T, typename A>
__device__ __forceinline__ void fold_span(const T* __restrict__ x, int64_t begin, int64_t end, int t, int threads,
                                          RangeFold<A>& fold) {
  A lo = fold.lo, hi = fold.hi;
  if (fold.symmetric) {
    cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, t, threads,
                                               [&](int64_t, T v) { fold_absmax<A>(cuda::load_acc(v), hi); });
  } else {
    cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, t, threads,
                                               [&](int64_t, T v) { fold_range0<A>(cuda::load_acc(v), lo, hi); });
  }
  fold.lo = lo, fold.hi = hi;
}

// Dynamic, one warp per row.
template <typename T>
__global__ void quant_warp_rows_kernel(QuantRowsParams p) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= p.rows) return;  // whole warps exit together
  const int64_t base = row * p.row_length;
  const T* x = static_cast<const T*>(p.x) + base;
  RangeFold<A> fold{p.symmetric};
  fold_span(x, 0, p.row_length, lane, 32, fold);
  const A lo = cuda::warp_reduce(fold.lo, cuda::MinOp());
  const A hi = cuda::warp_reduce(fold.hi, cuda::MaxOp());
  float scale;
  int32_t zero_point;
  row_scale_params<A>(p.symmetric, lo, hi, scale, zero_point);
  if (lane == 0) p.scale[row] = scale, p.zero_point[row] = zero_point;
  apply_row<T>(x, p.q != nullptr ? p.q + base : nullptr, p.out != nullptr ? static_cast<T*>(p.out) + base : nullptr,
               0, p.row_length, lane, 32, scale, zero_point, p.symmetric);
}

// Dynamic, one block per row.
template <typename T>
__global__ void quant_block_rows_kernel(QuantRowsParams p) {
  using A = typename cuda::DeviceAcc<T>::type;
  __shared__ A scratch[32];
  __shared__ float shared_scale;
  __shared__ int32_t shared_zero_point;
  const int64_t row = blockIdx.x;
  const int64_t base = row * p.row_length;
  const T* x = static_cast<const T*>(p.x) + base;
  RangeFold<A> fold{p.symmetric};
  fold_span(x, 0, p.row_length, threadIdx.x, blockDim.x, fold);
  const A lo = cuda::block_reduce(fold.lo, A(0), scratch, cuda::MinOp());
  const A hi = cuda::block_reduce(fold.hi, A(0), scratch, cuda::MaxOp());
  if (threadIdx.x == 0) {
    row_scale_params<A>(p.symmetric, lo, hi, shared_scale, shared_zero_point);
    p.scale[row] = shared_scale;
    p.zero_point[row] = shared_zero_point;
  }
  __syncthreads();
  apply_row<T>(x, p.q != nullptr ? p.q + base : nullptr, p.out != nullptr ? static_cast<T*>(p.out) + base : nullptr,
               0, p.row_length, threadIdx.x, blockDim.x, shared_scale, shared_zero_point, p.symmetric);
}

// Per-tensor first pass, grid = rows * P blocks (P = range_blocks_per_row):
// block c of a row folds its chunks c, c + P, ... and writes its partial,
// lo into workspace[row * P + c] and hi into workspace[(rows + row) * P + c].
template <typename T>
__global__ void range_chunks_kernel(QuantRowsParams p, int64_t per_row) {
  using A = typename cuda::DeviceAcc<T>::type;
  __shared__ A scratch[32];
  const int64_t row = blockIdx.x / per_row, first = blockIdx.x % per_row;
  const T* x = static_cast<const T*>(p.x) + row * p.row_length;
  RangeFold<A> fold{p.symmetric};
  for (int64_t begin = first * kRangeChunk; begin < p.row_length; begin += per_row * kRangeChunk)
    fold_span(x, begin, std::min<int64_t>(begin + kRangeChunk, p.row_length), threadIdx.x, blockDim.x, fold);
  const A lo = cuda::block_reduce(fold.lo, A(0), scratch, cuda::MinOp());  // the range always holds 0
  const A hi = cuda::block_reduce(fold.hi, A(0), scratch, cuda::MaxOp());
  if (threadIdx.x == 0) {
    A* ws = static_cast<A*>(p.workspace);
    ws[blockIdx.x] = lo;
    ws[p.rows * per_row + blockIdx.x] = hi;
  }
}

// One warp per row: the row's P partials folded into its scale and zero point.
template <typename T>
__global__ void params_from_workspace_kernel(QuantRowsParams p, int64_t per_row) {
  using A = typename cuda::DeviceAcc<T>::type;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= p.rows) return;  // whole warps exit together
  const A* ws = static_cast<const A*>(p.workspace);
  // symmetric: absmax in hi (every lo partial is 0)
  const A lo = p.symmetric ? A(0) : warp_fold(ws + row * per_row, per_row, A(0), cuda::MinOp());
  const A hi = warp_fold(ws + (p.rows + row) * per_row, per_row, A(0), cuda::MaxOp());
  if ((threadIdx.x & 31) == 0) row_scale_params<A>(p.symmetric, lo, hi, p.scale[row], p.zero_point[row]);
}

// Static scale (given, or from the per-tensor pass): flat grid of rows * chunks blocks.
template <typename T>
__global__ void quant_static_kernel(QuantRowsParams p, int64_t chunks) {
  const auto [row, begin, end, base] = row_chunk(p.row_length, chunks);
  apply_row<T>(static_cast<const T*>(p.x) + base, p.q != nullptr ? p.q + base : nullptr,
               p.out != nullptr ? static_cast<T*>(p.out) + base : nullptr, begin, end, threadIdx.x, blockDim.x,
               p.scale[row], p.zero_point[row], p.symmetric);
}

template <typename T>
__global__ void dequant_kernel(DequantRowsParams p, int64_t chunks) {
  using A = typename cuda::DeviceAcc<T>::type;
  const auto [row, begin, end, base] = row_chunk(p.row_length, chunks);
  const A s = A(p.scale[row]), zp = A(p.zero_point != nullptr ? p.zero_point[row] : 0);
  T* out = static_cast<T*>(p.out) + base;
  cuda::for_each_element<cuda::kVectorLoads>(p.q + base, begin, end, threadIdx.x, blockDim.x,
                                             [&](int64_t i, int8_t c) { store_out(out + i, (A(c) - zp) * s); });
}

template <typename T>
__global__ void backward_kernel(FakeQuantBackwardParams p, int64_t chunks) {
  using A = typename cuda::DeviceAcc<T>::type;
  const auto [row, begin, end, base] = row_chunk(p.row_length, chunks);
  const A s = A(p.scale[row]), zp = A(p.zero_point != nullptr ? p.zero_point[row] : 0);
  const A qmin = p.symmetric ? A(-127) : A(-128), qmax = A(127);
  const T* x = static_cast<const T*>(p.x) + base;
  const T* __restrict__ grad = static_cast<const T*>(p.grad) + base;
  T* __restrict__ grad_x = static_cast<T*>(p.grad_x) + base;
  const CodeDivisor<A> div(s);
  cuda::for_each_element<cuda::kVectorLoads>(x, begin, end, threadIdx.x, blockDim.x, [&](int64_t i, T xv) {
    const T g = grad[i];  // unconditional: the loads of a vector issue together
    const A v = cuda::load_acc(xv);
    const A r = unclamped_code<A>(v, div, zp);
    const bool keep = is_finite_value(v) && r >= qmin && r <= qmax;
    if (keep) grad_x[i] = g;
    else store_out(grad_x + i, A(0));
  });
}

int64_t chunks_of(int64_t row_length) { return std::max<int64_t>(1, (row_length + kChunk - 1) / kChunk); }

template <typename T>
void launch_quant(const QuantRowsParams& p, cudaStream_t stream) {
  const int64_t chunks = chunks_of(p.row_length);
  if (!p.static_scale) {
    if (p.row_length <= kQuantWarpRowMax) {
      const int64_t rows_per_block = kThreads / 32;
      const int64_t blocks = (p.rows + rows_per_block - 1) / rows_per_block;
      quant_warp_rows_kernel<T><<<grid_x(blocks, "quantize_int8_rows_cuda"), kThreads, 0, stream>>>(p);
      return cuda::check_launch("quantize_int8_rows_cuda (warp rows)");
    }
    if (!quant_cuda_range_pass(p.rows, p.row_length)) {  // 256 rows or more, or rows of one chunk
      quant_block_rows_kernel<T><<<grid_x(p.rows, "quantize_int8_rows_cuda"), kThreads, 0, stream>>>(p);
      return cuda::check_launch("quantize_int8_rows_cuda (block rows)");
    }
    const int64_t per_row = range_blocks_per_row(p.row_length);
    range_chunks_kernel<T><<<grid_x(p.rows * per_row, "quantize_int8_rows_cuda"), kThreads, 0, stream>>>(p, per_row);
    cuda::check_launch("quantize_int8_rows_cuda (range)");
    const int64_t rows_per_block = kThreads / 32;
    params_from_workspace_kernel<T><<<grid_x((p.rows + rows_per_block - 1) / rows_per_block, "quantize_int8_rows_cuda"),
                                      kThreads, 0, stream>>>(p, per_row);
    cuda::check_launch("quantize_int8_rows_cuda (params)");
  }
  quant_static_kernel<T><<<grid_x(p.rows * chunks, "quantize_int8_rows_cuda"), kThreads, 0, stream>>>(p, chunks);
  cuda::check_launch("quantize_int8_rows_cuda (apply)");
}

template <typename T>
void launch_dequant(const DequantRowsParams& p, cudaStream_t stream) {
  const int64_t chunks = chunks_of(p.row_length);
  dequant_kernel<T><<<grid_x(p.rows * chunks, "dequantize_int8_rows_cuda"), kThreads, 0, stream>>>(p, chunks);
  cuda::check_launch("dequantize_int8_rows_cuda");
}

template <typename T>
void launch_backward(const FakeQuantBackwardParams& p, cudaStream_t stream) {
  const int64_t chunks = chunks_of(p.row_length);
  backward_kernel<T><<<grid_x(p.rows * chunks, "fake_quant_int8_rows_backward_cuda"), kThreads, 0, stream>>>(p, chunks);
  cuda::check_launch("fake_quant_int8_rows_backward_cuda");
}

}  // namespace

void quantize_int8_rows_cuda(const QuantRowsParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "quantize_int8_rows_cuda", [&](auto tag) { launch_quant<decltype(tag)>(p, stream); });
}

void dequantize_int8_rows_cuda(const DequantRowsParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.out_dtype, "dequantize_int8_rows_cuda", [&](auto tag) { launch_dequant<decltype(tag)>(p, stream); });
}

void fake_quant_int8_rows_backward_cuda(const FakeQuantBackwardParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "fake_quant_int8_rows_backward_cuda", [&](auto tag) { launch_backward<decltype(tag)>(p, stream); });
}

}  // namespace eitp
