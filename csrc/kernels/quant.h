// int8 quantize / dequantize / fake-quant over a (rows, row_length) view in
// which each row shares one scale (docs/design.md §2.3). Per tensor is one
// row; per channel is the channel axis moved to the front; per group is
// rows of group_size. The maths below is shared by the CPU and CUDA kernels
// and follows eitp_kernels.reference operation for operation:
//
//   symmetric: s = float(absmax) / 127 (fp32), q = clamp(rint(x / s), -127, 127)
//   affine:    mn = float(min(finite min, 0)), mx = float(max(finite max, 0)),
//              s = (mx - mn) / 255, zp = int(-128 - rint(mn / s)),
//              q = clamp(rint(x / s) + zp, -128, 127)
//   s == 0 after the division becomes 1. A range too wide for float32 is
//   handled in float64 with a saturated scale (wide_range_scale below).
//   x / s is the true division's result in A (fp32, or fp64 for fp64 input;
//   fp32 by CodeDivisor below, equal wherever it decides a code); rint is
//   round half to even. NaN gives the code of 0, +-Inf the extreme codes.
//   Dequantize: (q - zp) * s in A.
#pragma once

#include "kernels/common.h"
#include "kernels/fast_divide.h"
#include "kernels/finite_minmax.h"

#ifdef EITP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace eitp {

// quantize_int8_rows / fake_quant_int8_rows.
struct QuantRowsParams {
  const void* x;        // (rows, row_length), row-major, contiguous
  DType dtype;          // storage dtype of x (and of `out`)
  int64_t rows;
  int64_t row_length;
  bool symmetric;
  bool static_scale;    // true: scale / zero_point are inputs; false: computed here and written
  float* scale;         // (rows,)
  int32_t* zero_point;  // (rows,); 0 for symmetric (written when dynamic)
  int8_t* q;            // (rows, row_length) codes, or nullptr (fake-quant)
  void* out;            // (rows, row_length) fake-quantized values in x's dtype, or nullptr (quantize)
  void* workspace;      // CUDA only: quant_cuda_workspace(rows, row_length) accumulation-dtype values
};

// The CUDA launcher's plan for computed scales (csrc/cuda/quant_cuda.cu):
// rows of at most kQuantWarpRowMax elements one warp each; else rows of one
// kRangeChunk, or 256 rows or more, one block each; else (few long rows: per
// tensor) the range pass (kernels/finite_minmax.h: P partials per row, written
// into the workspace, lo of every row then hi), one warp per row folding them
// into (scale, zero point), then the apply kernel.
constexpr int64_t kQuantWarpRowMax = 1024;

inline bool quant_cuda_range_pass(int64_t rows, int64_t row_length) {
  return row_length > kQuantWarpRowMax && rows < 256 && row_length > kRangeChunk;
}
// Workspace values quantize_int8_rows_cuda needs for computed scales.
inline int64_t quant_cuda_workspace(int64_t rows, int64_t row_length) {
  return quant_cuda_range_pass(rows, row_length) ? 2 * rows * range_blocks_per_row(row_length) : 0;
}

// dequantize_int8_rows.
struct DequantRowsParams {
  const int8_t* q;            // (rows, row_length)
  int64_t rows;
  int64_t row_length;
  const float* scale;         // (rows,)
  const int32_t* zero_point;  // (rows,) or nullptr (symmetric)
  DType out_dtype;            // float dtype of out; arithmetic in fp64 for fp64, else fp32
  void* out;                  // (rows, row_length)
};

// fake_quant_int8_rows_backward: grad_x = grad where the straight-through
// estimator passes (x finite and rint(x / s) + zp within [qmin, qmax]), else 0.
struct FakeQuantBackwardParams {
  const void* grad;           // (rows, row_length), dtype of x
  const void* x;              // (rows, row_length)
  DType dtype;
  int64_t rows;
  int64_t row_length;
  bool symmetric;
  const float* scale;         // (rows,)
  const int32_t* zero_point;  // (rows,) or nullptr (symmetric)
  void* grad_x;               // (rows, row_length), dtype of x
};

// Scale and zero point of a row from its reduction (A = fp32 or fp64):
// symmetric from absmax (>= 0), affine from lo = min(finite min, 0) and
// hi = max(finite max, 0). The float32 arithmetic of the header comment is
// used whenever it stays finite; a range too wide for it (affine hi - lo
// beyond 3.4e38, or fp64 values beyond float32) is computed in float64
// instead and the scale saturates at the largest float32
// (wide_range_scale), so no row ever gets an infinite scale.
constexpr double kFloat32Max = 3.4028234663852886e38;

EITP_HD float saturate_to_float32(double v) {
  return v >= kFloat32Max ? static_cast<float>(kFloat32Max) : static_cast<float>(v);
}

// The float64 fallback: s = sat32(range / qsteps) and, for affine,
// zp = clamp(-128 - rint(lo / s), -128, 127).
EITP_HD float wide_range_scale(double range, double qsteps) { return saturate_to_float32(range / qsteps); }

EITP_HD int32_t wide_range_zero_point(double lo, float scale) {
  double zp = -128.0 - rint(lo / static_cast<double>(scale));
  zp = zp < -128.0 ? -128.0 : (zp > 127.0 ? 127.0 : zp);
  return static_cast<int32_t>(zp);
}

template <typename A>
EITP_HD void symmetric_params(A absmax, float& scale, int32_t& zero_point) {
  if (static_cast<double>(absmax) > kFloat32Max) {  // fp64 only: float(absmax) would overflow
    scale = wide_range_scale(static_cast<double>(absmax), 127.0);
    zero_point = 0;
    return;
  }
  float s = static_cast<float>(absmax) / 127.0f;
  scale = s == 0.0f ? 1.0f : s;
  zero_point = 0;
}

template <typename A>
EITP_HD void affine_params(A lo, A hi, float& scale, int32_t& zero_point) {
  const bool fits = static_cast<double>(lo) >= -kFloat32Max && static_cast<double>(hi) <= kFloat32Max;
  const float mn = fits ? static_cast<float>(lo) : 0.0f, mx = fits ? static_cast<float>(hi) : 0.0f;
  float s = (mx - mn) / 255.0f;
  if (!fits || !is_finite_value(s)) {
    scale = wide_range_scale(static_cast<double>(hi) - static_cast<double>(lo), 255.0);
    zero_point = wide_range_zero_point(static_cast<double>(lo), scale);
    return;
  }
  s = s == 0.0f ? 1.0f : s;
  scale = s;
  zero_point = static_cast<int32_t>(-128.0f - rintf(mn / s));
}

// The row's scale and zero point from its reduction (see fold_absmax /
// fold_range0 below for what lo and hi hold).
template <typename A>
EITP_HD void row_scale_params(bool symmetric, A lo, A hi, float& scale, int32_t& zero_point) {
  if (symmetric) symmetric_params<A>(hi, scale, zero_point);
  else affine_params<A>(lo, hi, scale, zero_point);
}

// Folds one value into the row reduction. Symmetric keeps absmax in `hi`;
// affine keeps (lo, hi), both starting at 0 (the range always holds 0).
// Non-finite values contribute 0: neutral for both.
template <typename A>
EITP_HD void fold_absmax(A v, A& absmax) {
#ifdef __CUDA_ARCH__
  absmax = fmax(absmax, is_finite_value(v) ? fabs(v) : A(0));  // FMNMX (no NaN reaches it)
#else
  const A a = is_finite_value(v) ? (v < A(0) ? -v : v) : A(0);
  absmax = a > absmax ? a : absmax;
#endif
}
// (A -0 may replace a +0 bound on the GPU: the scale and zero point are the same.)
template <typename A>
EITP_HD void fold_range0(A v, A& lo, A& hi) {
  const A f = is_finite_value(v) ? v : A(0);
#ifdef __CUDA_ARCH__
  lo = fmin(lo, f), hi = fmax(hi, f);
#else
  lo = f < lo ? f : lo;
  hi = f > hi ? f : hi;
#endif
}

EITP_HD float round_half_even(float v) { return rintf(v); }
EITP_HD double round_half_even(double v) { return rint(v); }

// Division by a row's scale s for the codes: the numerator, scaled as
// Divisor(s) scales it (kernels/fast_divide.h), is first clamped to 1024
// times the scaled divisor (a quotient beyond +-1024 clamps to the same code
// whatever its value, and the clamp keeps every quotient finite and within
// the fast division's range; +-Inf gets the extreme codes as before).
template <typename A> struct CodeDivisor {
  Divisor<A> div;
  A limit;
  EITP_HD explicit CodeDivisor(A s) : div(s) {
    const A d = div.d < A(0) ? -div.d : div.d;  // |s| times the scale: at most 2^96 (fp32), no overflow below
    const A most = std::numeric_limits<A>::max(), l = d * A(1024);
    limit = l < most ? l : most;  // (fp64 only: a divisor beyond max / 1024)
  }
  EITP_HD A quotient(A v) const {
    if constexpr (sizeof(A) == 8) return v / div.d;  // fp64: the true division, no clamp needed
    const A scaled = v * div.scale;
#ifdef __CUDA_ARCH__
    const A a = fmin(fmax(scaled, -limit), limit);  // FMNMX; a NaN v becomes -limit (unclamped_code replaces its code)
#else
    A a = scaled < -limit ? -limit : scaled;  // NaN stays NaN (unclamped_code replaces its code)
    a = a > limit ? limit : a;
#endif
    return div.scaled_quotient(a);
  }
};

// The unclamped code rint(v / s) + zp (NaN -> zp), in A; |v / s| > 1024 gives +-1024 + zp.
template <typename A>
EITP_HD A unclamped_code(A v, const CodeDivisor<A>& s, A zp) {
  const A r = round_half_even(s.quotient(v));
  return (v != v ? A(0) : r) + zp;
}

template <typename A>
EITP_HD A clamp_code(A r, A qmin, A qmax) {
#ifdef __CUDA_ARCH__
  return fmin(fmax(r, qmin), qmax);  // r is never NaN here: FMNMX
#else
  r = r < qmin ? qmin : r;
  return r > qmax ? qmax : r;
#endif
}

void quantize_int8_rows_cpu(const QuantRowsParams& p);
void dequantize_int8_rows_cpu(const DequantRowsParams& p);
void fake_quant_int8_rows_backward_cpu(const FakeQuantBackwardParams& p);
#ifdef EITP_WITH_CUDA
void quantize_int8_rows_cuda(const QuantRowsParams& p, cudaStream_t stream);
void dequantize_int8_rows_cuda(const DequantRowsParams& p, cudaStream_t stream);
void fake_quant_int8_rows_backward_cuda(const FakeQuantBackwardParams& p, cudaStream_t stream);
#endif

}  // namespace eitp
