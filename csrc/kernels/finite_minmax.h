// Finite min/max per row: the automatic range of histogram entropy and the
// range of affine quantization. Non-finite values (NaN, +-Inf) are ignored; a
// row with no finite value gives lo = +inf, hi = -inf.
#pragma once

#include "kernels/common.h"

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

void finite_minmax_cpu(const FiniteMinMaxParams& p);
#ifdef EITP_WITH_CUDA
// lo/hi must be pre-filled with +inf/-inf.
void finite_minmax_cuda(const FiniteMinMaxParams& p, cudaStream_t stream);
#endif

}  // namespace eitp
