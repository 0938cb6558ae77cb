// Coherence (correlation-matrix) loss, DESIGN §2.2. Plain kernels: the binding
// turns tensors into these parameter structs and does the matrix products
// (ATen / BLAS / cuBLAS) on blocks of standardized columns; the kernels here do
// everything around them: column statistics, standardization, the reduction of
// each R tile straight to the scalar loss, and the backward epilogue.
//
//   z = (x - mu) * rstd, mu = mean_n x, var = mean_n (x - mu)^2, rstd = 1/sqrt(var + eps)
//   R = Zx^T Zy / N,  L2 = a sum_i (R_ii - 1)^2 + b sum_{i!=j} R_ij^2,  L = sqrt(L2) unless squared
#pragma once

#include "kernels/common.h"

#ifdef EITP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace eitp {

// Column mean and rstd of a row-major (n, d) matrix. mean/rstd: (d,) in the
// accumulation dtype (double for fp64 input, else float).
struct CoherenceStatsParams {
  const void* x;  // (n, d) contiguous
  DType dtype;
  int64_t n;
  int64_t d;
  double eps;
  void* mean;  // (d,) accumulation dtype
  void* rstd;  // (d,)
};

// The column statistics are summed in double on every backend (x, then
// (x - mu)^2 squared in A), so no sum of finite values overflows. rstd =
// 1 / sqrt(var + eps) in A; a variance beyond A's range (an overflowed
// square, fp32 |x - mu| beyond about 1.8e19, makes it infinite) has no
// A-valued standardization, so rstd is NaN and the loss is NaN rather than
// the column being silently treated as constant (rstd = 0). The reference
// (standardize_columns) does the same.
EITP_HD float sqrt_acc(float v) { return sqrtf(v); }  // IEEE-rounded on host and device (no fast-math)
EITP_HD double sqrt_acc(double v) { return sqrt(v); }

template <typename A>
EITP_HD A column_rstd(double var, double eps) {
  const double a_max = sizeof(A) == sizeof(float) ? 3.4028234663852886e38 : 1.7976931348623157e308;
  if (!(var <= a_max)) return static_cast<A>(nan(""));  // also for a NaN variance
  return A(1) / sqrt_acc(static_cast<A>(var) + static_cast<A>(eps));
}

// z = (x - mean) * rstd, written in the accumulation dtype (n, d) with row
// stride ld_z (>= d) so several matrices can share one buffer.
struct CoherenceStandardizeParams {
  const void* x;  // (n, d) contiguous
  DType dtype;
  int64_t n;
  int64_t d;
  const void* mean;  // (d,) accumulation dtype
  const void* rstd;  // (d,)
  void* z;           // (n, ld_z) accumulation dtype
  int64_t ld_z;
};

// One block of P = Zx^T Zy (rows row0.., columns col0.. of the full D x D'
// product), reduced to the two partial sums of the loss:
//   diag += (P_ii / n - 1)^2 over i == j, off += w_ij (P_ij / n)^2 over i != j,
// where for self-correlation (symmetric) only j >= i is read and off-diagonal
// entries count twice (w = 2), else w = 1. Sums are accumulated in double.
struct CoherenceTileParams {
  const void* tile;  // (rows, cols) accumulation dtype, row stride ld
  bool is_double;    // accumulation dtype of tile
  int64_t rows;
  int64_t cols;
  int64_t ld;
  int64_t row0;  // global index of the tile's first row (a column of X)
  int64_t col0;  // global index of the tile's first column (a column of Y)
  int64_t n;     // batch size N (R = P / N, true division as the reference)
  bool symmetric;
};

// Backward epilogue for one side. With S = dL/dR (S_ii = k 2a(R_ii - 1),
// S_ij = k 2b R_ij, k = grad for the squared loss and grad / (2L) otherwise):
//   dz_j = scale * ( (2b/N) w_j + c_j * zp_j ),   c_j = 2a(R_jj - 1) - 2b R_jj for j < m, else 0
// with w = Zp (Zp^T Z) (the product for this side, done by the binding; N x d),
// zp the partner's standardized matrix, R_jj = mean_n z_j zp_j, scale = k / N
// (x2 for self-correlation, where dZ = Z (S + S^T) / N). Then through the
// standardization: dx = rstd * (dz - mean_n dz - z * mean_n (dz * z)).
// dx is written over w (in place, accumulation dtype).
struct CoherenceBackwardParams {
  const void* z;        // (n, d) this side, accumulation dtype, row stride ld_z
  const void* zp;       // (n, dp) partner, row stride ld_zp (== z for self)
  int64_t ld_z;
  int64_t ld_zp;
  void* w;              // (n, d) in: Zp (Zp^T Z); out: dx. Row stride d.
  const void* rstd;     // (d,)
  const void* grad;     // () incoming gradient of the loss (device scalar)
  const void* loss;     // () the forward's loss value
  bool is_double;
  int64_t n;
  int64_t d;
  int64_t m;            // number of diagonal entries: min(D, D')
  double a;
  double b;
  bool squared;
  bool symmetric;
};

// Scalar factors of the backward epilogue, shared by the CPU and CUDA kernels.
// With W = the partner-side product (see CoherenceBackwardParams::w) and
// k = dL/dL2 (g, or g / (2L) for the sqrt form):
//   dz_ij = scale * (wcoef * W_ij + c_j * Zp_ij),  scale = (2 if symmetric else 1) * k / n,
//   wcoef = 2b / n,  c_j = 2a (R_jj - 1) - 2b R_jj  on diagonal columns (0 elsewhere).
template <typename A> struct BackwardFactors {
  A n, scale, wcoef, a, b;
  EITP_HD BackwardFactors(const CoherenceBackwardParams& p, A grad, A loss)
      : n(static_cast<A>(p.n)),
        scale((p.symmetric ? A(2) : A(1)) * (p.squared ? grad : grad / (A(2) * loss)) / static_cast<A>(p.n)),
        wcoef(A(2) * static_cast<A>(p.b) / static_cast<A>(p.n)),
        a(static_cast<A>(p.a)),
        b(static_cast<A>(p.b)) {}
  EITP_HD A diag_coefficient(A r_jj) const { return A(2) * a * (r_jj - A(1)) - A(2) * b * r_jj; }
};

void coherence_stats_cpu(const CoherenceStatsParams& p);
void coherence_standardize_cpu(const CoherenceStandardizeParams& p);
// Returns {diag_sum, off_sum} for the tile.
void coherence_tile_reduce_cpu(const CoherenceTileParams& p, double* diag_sum, double* off_sum);
void coherence_backward_epilogue_cpu(const CoherenceBackwardParams& p);
// Copy the strict upper triangle of a square (d, d) row-major matrix onto its lower one.
void coherence_mirror_upper_cpu(void* m, bool is_double, int64_t d);

#ifdef EITP_WITH_CUDA
void coherence_stats_cuda(const CoherenceStatsParams& p, cudaStream_t stream);
void coherence_standardize_cuda(const CoherenceStandardizeParams& p, cudaStream_t stream);
// Adds the tile's weighted sums into acc[0] (diag) and acc[1] (off), device
// doubles (pre-zeroed), by atomics.
void coherence_tile_reduce_cuda(const CoherenceTileParams& p, double* acc, cudaStream_t stream);
void coherence_backward_epilogue_cuda(const CoherenceBackwardParams& p, cudaStream_t stream);
void coherence_mirror_upper_cuda(void* m, bool is_double, int64_t d, cudaStream_t stream);
#endif

}  // namespace eitp
