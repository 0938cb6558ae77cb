// Coherence (correlation-matrix) loss, docs/design.md §2.2. Plain kernels: the binding
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
  EITP_HD BackwardFactors(int64_t n_rows, double a_, double b_, bool squared, bool symmetric, A grad, A loss)
      : n(static_cast<A>(n_rows)),
        scale((symmetric ? A(2) : A(1)) * (squared ? grad : grad / (A(2) * loss)) / static_cast<A>(n_rows)),
        wcoef(A(2) * static_cast<A>(b_) / static_cast<A>(n_rows)),
        a(static_cast<A>(a_)),
        b(static_cast<A>(b_)) {}
  EITP_HD BackwardFactors(const CoherenceBackwardParams& p, A grad, A loss)
      : BackwardFactors(p.n, p.a, p.b, p.squared, p.symmetric, grad, loss) {}
  EITP_HD A diag_coefficient(A r_jj) const { return A(2) * a * (r_jj - A(1)) - A(2) * b * r_jj; }
};

// What both epilogues (CPU and CUDA) start from: the pointers of
// CoherenceBackwardParams typed with the accumulation type A, and the factors.
template <typename A> struct BackwardEpilogueArgs {
  const A* z;
  const A* zp;
  A* w;
  const A* rstd;
  BackwardFactors<A> f;
  EITP_HD explicit BackwardEpilogueArgs(const CoherenceBackwardParams& p)
      : z(static_cast<const A*>(p.z)),
        zp(static_cast<const A*>(p.zp)),
        w(static_cast<A*>(p.w)),
        rstd(static_cast<const A*>(p.rstd)),
        f(p, *static_cast<const A*>(p.grad), *static_cast<const A*>(p.loss)) {}
};

// Cross-correlation backward with the kept P (CPU): dZx = Zy S^T / N and
// dZy = Zx S / N are made by row blocks (the binding's products W = Zp P^T /
// Zp P on a few standardized rows at a time), so every row's gradient needs
// only its own block. The column means that the standardization's backward
// subtracts are taken from P instead of from all N rows of dz:
//   mean_n W_j = sum_k P_jk mzp_k,   mean_n (W_j z_j) = sum_k P_jk^2 / N   (exact: Z^T Zp = P)
// with mzp the column means of the partner's standardized matrix (as
// computed: about 0). Per column j of this side, dx_ij is then affine:
//   dx_ij = alpha_j W_ij + beta_j zp_ij + gamma_j + delta_j z_ij
//   alpha_j = rstd_j scale wcoef,  beta_j = rstd_j scale c_j (0 for j >= m),
//   gamma_j = -rstd_j mean_n dz_j,  delta_j = -rstd_j mean_n (dz_j z_j)
// (scale, wcoef, c_j: BackwardFactors; R_jj = P_jj / N).
struct CoherenceCrossCoefParams {
  const void* product;  // (d, dp) P = Zx^T Zy, accumulation dtype, contiguous
  const double* zmean_x;  // (d,) column means of Zx as standardize writes it
  const double* zmean_y;  // (dp,)
  const void* rstd_x;   // (d,)
  const void* rstd_y;   // (dp,)
  const void* grad;     // () incoming gradient
  const void* loss;     // () the forward's loss
  bool is_double;
  int64_t n, d, dp;
  double a, b;
  bool squared;
  void* coef_x;  // (4, d) out, accumulation dtype: alpha, beta, gamma, delta rows
  void* coef_y;  // (4, dp) out
};

// One block of rows of dx from the coefficients above (serial: the binding
// shares blocks out to its threads). w, zp, z in the accumulation dtype.
struct CoherenceAffineGradParams {
  const void* w;  // (rows, d), row stride ld_w
  const void* zp; // (rows, >= m) partner's standardized rows, row stride ld_zp
  const void* z;  // (rows, d) this side's standardized rows, row stride ld_z
  int64_t ld_w, ld_zp, ld_z;
  const void* coef;  // (4, d) from CoherenceCrossCoefParams
  bool is_double;    // accumulation dtype
  int64_t rows, d, m;
  void* dx;          // (rows, d) in dx_dtype, row stride ld_dx
  DType dx_dtype;
  int64_t ld_dx;
};

// The raw-product form (docs/design.md §2.2): P from the product of the
// inputs themselves, no standardized copy. With mu, rstd the column statistics:
//   P = Zx^T Zy = diag(rstd_x) (X^T Y - N mu_x mu_y^T) diag(rstd_y)
// (X^T Y by the binding's product; corrected in one pass, the subtraction in
// double). The rounding error of X^T Y relative to P grows as
// 1 + (mu rstd)^2, so it is used where every column's mean is within
// kRawMeanLimit standard deviations of zero (the CPU checks all columns
// before the product; CUDA per tile of P after it, recomputing the tiles
// beyond the limit from standardized values: no host sync).
//
// Backward (alpha, beta, gamma, delta of CoherenceCrossCoefParams, Z's column
// means taken as 0: the corrected product centers exactly): one matrix
//   M_jk = alpha_x_j P_jk rstd_y_k + [j == k < m] beta_x_j rstd_y_j
//        = rstd_x_j P_jk alpha_y_k + [j == k < m] beta_y_k rstd_x_k
//     (alpha = rstd * a common factor, beta_j = rstd_j * a factor of R_jj)
// serves both gradients:
//   dx = x_ij shift_x_j + const_x_j + Y M^T,   dy = y_ik shift_y_k + const_y_k + X M
//   shift_x_j = delta_x_j rstd_x_j,  const_x_j = gamma_x_j - shift_x_j mu_x_j - sum_k M_jk mu_y_k
//   shift_y_k = delta_y_k rstd_y_k,  const_y_k = gamma_y_k - shift_y_k mu_y_k - sum_j M_jk mu_x_j
// The CPU multiplies the raw inputs; CUDA the centered ones (x - mu_x, y -
// mu_y: the constants are then 0 and the products keep their accuracy for
// any mean). Self-correlation on CUDA is the cross form with y = x and
// symmetric: the scale doubles (BackwardFactors) and only dx is made.
constexpr double kRawMeanLimit = 2.0;

struct CoherenceRawParams {
  const void* x;  // (n, d) contiguous, in the accumulation dtype A
  const void* y;  // (n, dp) contiguous, A (== x for self-correlation)
  bool is_double;  // A
  bool symmetric;  // self-correlation (CUDA)
  int64_t n, d, dp;
  double eps, a, b;
  bool squared;
  void* mean_x;  // (d,) A (CUDA writes the statistics, the CPU reads them)
  void* rstd_x;
  void* mean_y;  // (dp,) A
  void* rstd_y;
  void* product;  // (d, dp) A, contiguous. Forward in: X^T Y, out: P; backward in: P
  void* loss;        // () A: the forward's output, the backward's input
  const void* grad;  // () A: the backward's incoming gradient
  void* m;           // (d, dp) A: backward out, M
  void* out_x;       // (n, d) A: backward out, the affine term of dx (the binding adds Y M^T)
  void* out_y;       // (n, dp)
  void* centered_x;  // (n, d) A, CUDA backward out: x - mu_x (the products' operands)
  void* centered_y;  // (n, dp)
  void* workspace;   // CUDA: coherence_raw_workspace_bytes
};

void coherence_stats_cpu(const CoherenceStatsParams& p);
void coherence_standardize_cpu(const CoherenceStandardizeParams& p);
// Returns {diag_sum, off_sum} for the tile.
void coherence_tile_reduce_cpu(const CoherenceTileParams& p, double* diag_sum, double* off_sum);
void coherence_backward_epilogue_cpu(const CoherenceBackwardParams& p);
// Column means of z = (x - mean) * rstd exactly as coherence_standardize_cpu
// writes it, summed in double: (d,) doubles.
void coherence_z_column_means_cpu(const CoherenceStandardizeParams& p, double* out);
void coherence_cross_coefficients_cpu(const CoherenceCrossCoefParams& p);
void coherence_affine_grad_rows_cpu(const CoherenceAffineGradParams& p);
// The CPU raw-product steps: whether every column's mean is within
// kRawMeanLimit standard deviations of zero (NaN statistics fail), P from
// X^T Y in place, and M with out_x / out_y (the affine terms).
bool coherence_raw_applies_cpu(const CoherenceRawParams& p);
void coherence_center_product_cpu(const CoherenceRawParams& p);
void coherence_raw_operands_cpu(const CoherenceRawParams& p);
// Reduces `count` blocks of P to the loss (written at loss in the
// accumulation dtype, L2 = a diag + b off, its sqrt unless squared).
// make(context, i, scratch) makes block i (a single-threaded matrix product
// into scratch, or a view of a whole P) and returns its params. The blocks
// are shared out to coherence_tile_workers_cpu(count) threads, each with its
// own scratch_bytes at scratch + w * scratch_bytes (scratch may be null),
// longest first (the blocks come largest first); their sums are added in
// block order, so the result does not depend on the thread count.
using CoherenceMakeTile = CoherenceTileParams (*)(void* context, int64_t index, void* scratch);
int64_t coherence_tile_workers_cpu(int64_t count);
void coherence_reduce_tiles_cpu(int64_t count, CoherenceMakeTile make, void* context, void* scratch,
                                int64_t scratch_bytes, bool is_double, double a, double b, bool squared,
                                void* loss);
// Copy the strict upper triangle of a square (d, d) row-major matrix onto its lower one.
void coherence_mirror_upper_cpu(void* m, bool is_double, int64_t d);

// The GRAM path's loss from its Gram matrices, in one pass over each input:
//   ||R||_F^2 = <Gx, Gy>_F / N^2 (products in A, summed in double),
//   R_ii = mean_n zx_ni zy_ni (i < m = min(D, D'); products in A, summed in double),
//   diag = sum_i (R_ii - 1)^2, off = ||R||_F^2 - sum_i R_ii^2,
//   L2 = a diag + b off, written at loss in A (its sqrt unless squared).
// The total is about D/N times the diagonal part or more (rank(R) <= N; D/N
// > 4/3 where the planner gives GRAM), so the subtraction keeps A's accuracy
// unless most columns are constant. Every sum has a fixed order: the result
// does not depend on the thread count.
struct CoherenceGramLossParams {
  const void* gx;  // (n, n) A, contiguous: Zx Zx^T
  const void* gy;  // (n, n): Zy Zy^T (== gx for self-correlation)
  const void* zx;  // (n, d) A, contiguous
  const void* zy;  // (n, dp) A, contiguous (== zx for self-correlation)
  bool is_double;
  int64_t n;
  int64_t d;
  int64_t dp;
  double a;
  double b;
  bool squared;
  void* loss;  // () A
};
void coherence_gram_loss_cpu(const CoherenceGramLossParams& p);

#ifdef EITP_WITH_CUDA
void coherence_stats_cuda(const CoherenceStatsParams& p, cudaStream_t stream);
void coherence_standardize_cuda(const CoherenceStandardizeParams& p, cudaStream_t stream);
// Adds the tile's weighted sums into acc[0] (diag) and acc[1] (off), device
// doubles (pre-zeroed), by atomics.
void coherence_backward_epilogue_cuda(const CoherenceBackwardParams& p, cudaStream_t stream);
// The raw-product form (CoherenceRawParams): the statistics of x and y (two
// launches, rows split across blocks), then after the binding's X^T Y the
// correction and reduction of P to the loss (two launches); backward: M and
// P's row/column sums (one launch), then the centered operands and affine
// terms (one launch) before the binding's two products.
int64_t coherence_raw_workspace_bytes(int64_t n, int64_t d, int64_t dp);
void coherence_raw_stats_cuda(const CoherenceRawParams& p, cudaStream_t stream);
void coherence_raw_reduce_cuda(const CoherenceRawParams& p, cudaStream_t stream);
void coherence_raw_operands_cuda(const CoherenceRawParams& p, cudaStream_t stream);
void coherence_raw_center_cuda(const CoherenceRawParams& p, cudaStream_t stream);
#endif

}  // namespace eitp
