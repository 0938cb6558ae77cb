// CUDA kernels of the coherence loss (see kernels/coherence.h). The matrix
// products are done by the binding (ATen -> cuBLAS); these kernels do
// everything around them. The Gram path (short, wide batches): column
// statistics, standardization and the fused backward epilogue, one block per
// 32 columns (D is large there). The product path (the raw-product form):
// statistics with the rows split across blocks, the correction and reduction
// of P, and the backward's M and affine terms. All launches go on the
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


// --------------------------------------------------------------------------
// The raw-product form (CoherenceRawParams). Launches: forward
// raw_stats_kernel, raw_finalize_kernel, (the binding's X^T Y),
// raw_reduce_kernel, raw_loss_kernel; backward raw_operands_kernel,
// raw_center_kernel, (the binding's two products).
// --------------------------------------------------------------------------

// Statistics: a block sums kStatRows rows (more beyond kMaxChunks chunks) of kStatCols columns (16 threads
// across, 4 adjacent columns each: a 16-byte load per fp32 row where the row
// is aligned; 16 threads down); blocks tile the columns of x and then y
// (grid x) and the row chunks (grid y). Sums in double of v - c and
// (v - c)^2 with c the column's first value (a shift that keeps the one-pass
// variance free of cancellation), and the extremes (whether a squared
// deviation overflows A, as in the reference); finalized per column in chunk order.
constexpr int kStatCols = 64;
constexpr int kStatColThreads = kStatCols / 4;
constexpr int kStatRowThreads = 256 / kStatColThreads;
constexpr int64_t kStatRows = 256;
constexpr int64_t kMaxChunks = 4096;  // more rows per chunk beyond kStatRows * kMaxChunks rows
// P in 32 x 32 tiles, 256 threads: each thread 4 adjacent entries of one row.
constexpr int kTile = 32;
constexpr int kLossThreads = 256;

struct RawShape {
  int64_t chunk_rows, chunks, x_groups, y_groups, tiles_r, tiles_c;
};

RawShape raw_shape(int64_t n, int64_t d, int64_t dp) {
  const int64_t chunk_rows = std::max(kStatRows, (n + kMaxChunks - 1) / kMaxChunks);
  return {chunk_rows, (n + chunk_rows - 1) / chunk_rows, (d + kStatCols - 1) / kStatCols,
          (dp + kStatCols - 1) / kStatCols, (d + kTile - 1) / kTile, (dp + kTile - 1) / kTile};
}

// Workspace (doubles, then ints): stat partials (chunks, d + dp, 4: sums of
// v - c and (v - c)^2, max and min v); loss
// partials (tiles, 2); row sums of P^2 (tiles_c, d) and column sums
// (tiles_r, dp); the per-column raw flags (d + dp).
struct RawWorkspace {
  double* stat;
  double* loss;
  double* row_sq;
  double* col_sq;
  int* raw_ok;
};

RawWorkspace raw_workspace(const CoherenceRawParams& p) {
  const RawShape s = raw_shape(p.n, p.d, p.dp);
  RawWorkspace w;
  w.stat = static_cast<double*>(p.workspace);
  w.loss = w.stat + s.chunks * (p.d + p.dp) * 4;
  w.row_sq = w.loss + s.tiles_r * s.tiles_c * 2;
  w.col_sq = w.row_sq + s.tiles_c * p.d;
  w.raw_ok = reinterpret_cast<int*>(w.col_sq + s.tiles_r * p.dp);
  return w;
}

// Four adjacent values of row `row` from column j (those at or past `cols`
// read as c, contributing 0): one 16-byte load where aligned.
template <typename T>
__device__ __forceinline__ void load4(const T* __restrict__ x, int64_t ld, int64_t row, int64_t j, int64_t cols,
                                      double out[4]) {
  const T* src = x + row * ld + j;
  if constexpr (sizeof(T) == 4) {
    if (j + 4 <= cols && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
      const float4 v = *reinterpret_cast<const float4*>(src);
      out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
      return;
    }
  }
  for (int q = 0; q < 4; ++q) out[q] = j + q < cols ? static_cast<double>(src[q]) : out[q];
}

template <typename A>
__global__ void raw_stats_kernel(CoherenceRawParams p, RawWorkspace w, int64_t x_groups, int64_t chunk_rows) {
  __shared__ double part[4][kStatRowThreads][kStatCols];
  const bool is_y = blockIdx.x >= x_groups;
  const int64_t cols = is_y ? p.dp : p.d;
  const int64_t col0 = (is_y ? blockIdx.x - x_groups : blockIdx.x) * int64_t(kStatCols);
  const int tx = threadIdx.x % kStatColThreads, ty = threadIdx.x / kStatColThreads;
  const int64_t j = col0 + 4 * tx;
  const int64_t r0 = blockIdx.y * chunk_rows, r1 = min(p.n, r0 + chunk_rows);
  double shift[4] = {0, 0, 0, 0}, s1[4] = {0, 0, 0, 0}, s2[4] = {0, 0, 0, 0};
  double hi[4] = {0, 0, 0, 0}, lo[4] = {0, 0, 0, 0};
  auto accumulate = [&](const auto* x) {
    if (j >= cols) return;
    load4(x, cols, 0, j, cols, shift);
    for (int q = 0; q < 4; ++q) hi[q] = lo[q] = shift[q];
    for (int64_t i = r0 + ty; i < r1; i += kStatRowThreads) {
      double v[4] = {shift[0], shift[1], shift[2], shift[3]};
      load4(x, cols, i, j, cols, v);
      for (int q = 0; q < 4; ++q) {
        const double c = v[q] - shift[q];
        s1[q] += c;
        s2[q] += c * c;
        hi[q] = fmax(hi[q], v[q]);
        lo[q] = fmin(lo[q], v[q]);
      }
    }
  };
  accumulate(static_cast<const A*>(is_y ? p.y : p.x));
  for (int q = 0; q < 4; ++q) {
    const int c = 4 * tx + q;
    part[0][ty][c] = s1[q], part[1][ty][c] = s2[q], part[2][ty][c] = hi[q], part[3][ty][c] = lo[q];
  }
  __syncthreads();
  // Thread t < 4 * kStatCols folds one column's value over the row threads, in order.
  const int which = threadIdx.x / kStatCols, c = threadIdx.x % kStatCols;
  double total = part[which][0][c];
  for (int r = 1; r < kStatRowThreads; ++r) {
    const double v = part[which][r][c];
    total = which < 2 ? total + v : which == 2 ? fmax(total, v) : fmin(total, v);
  }
  const int64_t col = col0 + c;
  if (col < cols) w.stat[(blockIdx.y * (p.d + p.dp) + (is_y ? p.d : 0) + col) * 4 + which] = total;
}

template <typename A>
__global__ void raw_finalize_kernel(CoherenceRawParams p, RawWorkspace w, int64_t chunks) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.d + (p.symmetric ? 0 : p.dp)) return;
  const bool is_y = col >= p.d;
  const int64_t j = is_y ? col - p.d : col;
  const double shift = static_cast<double>(static_cast<const A*>(is_y ? p.y : p.x)[j]);
  double s1 = 0.0, s2 = 0.0, hi = shift, lo = shift;
  for (int64_t c = 0; c < chunks; ++c) {
    const double* part = w.stat + (c * (p.d + p.dp) + col) * 4;
    s1 += part[0];
    s2 += part[1];
    hi = fmax(hi, part[2]);
    lo = fmin(lo, part[3]);
  }
  const double n = static_cast<double>(p.n), m1 = s1 / n;
  double var = s2 / n - m1 * m1;
  if (var < 0.0) var = 0.0;  // rounding; a NaN stays NaN
  const A mean = static_cast<A>(shift + m1);
  // The reference squares each deviation in A: one beyond A's range makes the variance infinite (rstd NaN).
  const A d_hi = static_cast<A>(hi) - mean, d_lo = static_cast<A>(lo) - mean;
  if (isinf(d_hi * d_hi) || isinf(d_lo * d_lo)) var = INFINITY;
  const A rstd = column_rstd<A>(var, p.eps);
  static_cast<A*>(is_y ? p.mean_y : p.mean_x)[j] = mean;
  static_cast<A*>(is_y ? p.rstd_y : p.rstd_x)[j] = rstd;
  // a NaN statistic fails the comparison: its tiles take the standardized way
  w.raw_ok[col] = fabs(static_cast<double>(mean)) * static_cast<double>(rstd) <= kRawMeanLimit;
}

// One 32 x 32 tile of P per block. Where every row and column of the tile is
// within the mean limit, P from the raw product (in place, corrected in
// double); elsewhere the tile is recomputed from standardized values through
// shared memory (as a GEMM would, sums in A). Then R = P / N and the tile's
// two loss sums (double) to w.loss.
template <typename A>
__global__ void raw_reduce_kernel(CoherenceRawParams p, RawWorkspace w, int64_t tiles_c) {
  __shared__ A zx[kTile][kTile + 1];
  __shared__ A zy[kTile][kTile + 1];
  __shared__ double scratch[32];
  const int64_t tr = blockIdx.x / tiles_c, tc = blockIdx.x % tiles_c;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
  const int64_t j = tr * kTile + ty, k0 = tc * kTile + 4 * tx;
  const A *mx = static_cast<const A*>(p.mean_x), *rx = static_cast<const A*>(p.rstd_x);
  const A *my = static_cast<const A*>(p.mean_y), *ry = static_cast<const A*>(p.rstd_y);
  const int* ok_y = w.raw_ok + (p.symmetric ? 0 : p.d);
  // Whether the tile's rows (threads 0..31) and columns (threads 32..63) are all within the limit.
  bool ok = true;
  if (threadIdx.x < kTile) ok = tr * kTile + threadIdx.x >= p.d || w.raw_ok[tr * kTile + threadIdx.x];
  else if (threadIdx.x < 2 * kTile) ok = tc * kTile + threadIdx.x - kTile >= p.dp || ok_y[tc * kTile + threadIdx.x - kTile];
  ok = __syncthreads_and(ok);
  A* product = static_cast<A*>(p.product);
  A value[4] = {A(0), A(0), A(0), A(0)};
  if (ok) {
    if (j < p.d) {
      const double nmx = static_cast<double>(p.n) * static_cast<double>(mx[j]), rxj = static_cast<double>(rx[j]);
      for (int q = 0; q < 4; ++q)
        if (k0 + q < p.dp)
          value[q] = static_cast<A>((static_cast<double>(product[j * p.dp + k0 + q]) -
                                     nmx * static_cast<double>(my[k0 + q])) * rxj * static_cast<double>(ry[k0 + q]));
    }
  } else {
    const A *x = static_cast<const A*>(p.x), *y = static_cast<const A*>(p.y);
    for (int64_t i0 = 0; i0 < p.n; i0 += kTile) {
      // each thread loads 4 entries of each 32 x 32 block: rows i0 + ty, columns 4 tx ..
      for (int q = 0; q < 4; ++q) {
        const int c = 4 * tx + q;
        const int64_t i = i0 + ty, jj = tr * kTile + c, kk = tc * kTile + c;
        zx[ty][c] = i < p.n && jj < p.d ? (x[i * p.d + jj] - mx[jj]) * rx[jj] : A(0);
        zy[ty][c] = i < p.n && kk < p.dp ? (y[i * p.dp + kk] - my[kk]) * ry[kk] : A(0);
      }
      __syncthreads();
      for (int r = 0; r < kTile; ++r)
        for (int q = 0; q < 4; ++q) value[q] += zx[r][ty] * zy[r][4 * tx + q];
      __syncthreads();
    }
  }
  double diag = 0.0, off = 0.0;
  if (j < p.d) {
    const A n = static_cast<A>(p.n);
    for (int q = 0; q < 4; ++q) {
      const int64_t k = k0 + q;
      if (k >= p.dp) break;
      product[j * p.dp + k] = value[q];
      const A r = value[q] / n;
      if (j == k) diag += static_cast<double>((r - A(1)) * (r - A(1)));
      else off += static_cast<double>(r * r);
    }
  }
  struct Add { __device__ double operator()(double a, double b) const { return a + b; } };
  diag = cuda::block_reduce(diag, 0.0, scratch, Add());
  off = cuda::block_reduce(off, 0.0, scratch, Add());
  if (threadIdx.x == 0) w.loss[blockIdx.x * 2] = diag, w.loss[blockIdx.x * 2 + 1] = off;
}

// The tiles' sums in a fixed order, then L2 = a diag + b off and its sqrt.
template <typename A>
__global__ void raw_loss_kernel(CoherenceRawParams p, RawWorkspace w, int64_t tiles) {
  __shared__ double scratch[32];
  double diag = 0.0, off = 0.0;
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) diag += w.loss[t * 2], off += w.loss[t * 2 + 1];
  struct Add { __device__ double operator()(double a, double b) const { return a + b; } };
  diag = cuda::block_reduce(diag, 0.0, scratch, Add());
  off = cuda::block_reduce(off, 0.0, scratch, Add());
  if (threadIdx.x == 0) {
    const double l2 = diag * p.a + off * p.b;
    *static_cast<A*>(p.loss) = static_cast<A>(p.squared ? l2 : sqrt(l2));
  }
}

template <typename A>
__device__ __forceinline__ BackwardFactors<double> raw_factors(const CoherenceRawParams& p) {
  return BackwardFactors<double>(p.n, p.a, p.b, p.squared, p.symmetric,
                                 static_cast<double>(*static_cast<const A*>(p.grad)),
                                 static_cast<double>(*static_cast<const A*>(p.loss)));
}

// M_jk = alpha_x_j P_jk rstd_y_k + [j == k < m] beta_x_j rstd_y_j (kernels/coherence.h),
// and the tile's row and column sums of P^2 (one partial per tile column / row).
template <typename A>
__global__ void raw_operands_kernel(CoherenceRawParams p, RawWorkspace w, int64_t tiles_c) {
  __shared__ double col[kTile][kTile + 1];
  const int64_t tr = blockIdx.x / tiles_c, tc = blockIdx.x % tiles_c;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
  const int64_t j = tr * kTile + ty, k0 = tc * kTile + 4 * tx, m = min(p.d, p.dp);
  const A* product = static_cast<const A*>(p.product);
  const A *rx = static_cast<const A*>(p.rstd_x), *ry = static_cast<const A*>(p.rstd_y);
  const BackwardFactors<double> f = raw_factors<A>(p);
  double row = 0.0;
  if (j < p.d) {
    const A alpha = static_cast<A>(static_cast<double>(rx[j]) * f.scale * f.wcoef);
    for (int q = 0; q < 4; ++q) {
      const int64_t k = k0 + q;
      double sq = 0.0;
      if (k < p.dp) {
        const A v = product[j * p.dp + k];
        A out = alpha * v * ry[k];
        if (j == k && j < m) {
          const double r = static_cast<double>(product[j * p.dp + j] / static_cast<A>(p.n));
          out += static_cast<A>(static_cast<double>(rx[j]) * f.scale * f.diag_coefficient(r)) * ry[j];
        }
        static_cast<A*>(p.m)[j * p.dp + k] = out;
        sq = static_cast<double>(v) * static_cast<double>(v);
      }
      row += sq;
      col[ty][4 * tx + q] = sq;
    }
  } else {
    for (int q = 0; q < 4; ++q) col[ty][4 * tx + q] = 0.0;
  }
  // row: over the 8 threads of this row (adjacent lanes), in a fixed order
  for (int offset = 4; offset > 0; offset >>= 1) row += __shfl_down_sync(0xffffffffu, row, offset, 8);
  if (tx == 0 && j < p.d) w.row_sq[tc * p.d + j] = row;
  __syncthreads();
  if (!p.symmetric && threadIdx.x < kTile) {
    const int64_t k = tc * kTile + threadIdx.x;
    double total = 0.0;
    for (int r = 0; r < kTile; ++r) total += col[r][threadIdx.x];
    if (k < p.dp) w.col_sq[tr * p.dp + k] = total;
  }
}

// The centered operands x - mu (accumulation dtype) and the affine terms
// out = shift * (x - mu), shift_j = delta_j rstd_j (the constants are 0 for
// centered operands), for x (grid x below x_groups) and y.
template <typename A>
__global__ void raw_center_kernel(CoherenceRawParams p, RawWorkspace w, int64_t x_groups, int64_t tiles_r,
                                  int64_t tiles_c) {
  __shared__ A shift[kStatCols];
  const bool is_y = blockIdx.x >= x_groups;
  const int64_t cols = is_y ? p.dp : p.d, m = min(p.d, p.dp);
  const int64_t col0 = (is_y ? blockIdx.x - x_groups : blockIdx.x) * int64_t(kStatCols);
  const A* mean = static_cast<const A*>(is_y ? p.mean_y : p.mean_x);
  const A* rstd = static_cast<const A*>(is_y ? p.rstd_y : p.rstd_x);
  if (threadIdx.x < kStatCols && col0 + threadIdx.x < cols) {
    const int64_t j = col0 + threadIdx.x;
    const BackwardFactors<double> f = raw_factors<A>(p);
    // sum_k P_jk^2 (x side: P's row j) or sum_j P_jk^2 (y side: column j)
    double sq = 0.0;
    if (is_y) for (int64_t t = 0; t < tiles_r; ++t) sq += w.col_sq[t * p.dp + j];
    else for (int64_t t = 0; t < tiles_c; ++t) sq += w.row_sq[t * p.d + j];
    double c = 0.0, r = 0.0;
    if (j < m) {
      r = static_cast<double>(static_cast<const A*>(p.product)[j * p.dp + j] / static_cast<A>(p.n));
      c = f.diag_coefficient(r);
    }
    const double rs = static_cast<double>(rstd[j]);
    const double mean_dzz = f.scale * (f.wcoef * sq / static_cast<double>(p.n) + c * r);
    shift[threadIdx.x] = static_cast<A>(-rs * mean_dzz * rs);
  }
  __syncthreads();
  const int64_t rows_per_block = (p.n + gridDim.y - 1) / gridDim.y;
  const int64_t r0 = blockIdx.y * rows_per_block, r1 = min(p.n, r0 + rows_per_block);
  A* centered = static_cast<A*>(is_y ? p.centered_y : p.centered_x);
  A* out = static_cast<A*>(is_y ? p.out_y : p.out_x);
  const int tx = threadIdx.x % kStatCols, ty = threadIdx.x / kStatCols;
  const int64_t j = col0 + tx;
  if (j >= cols) return;
  const A mu = mean[j], s = shift[tx];
  for (int64_t i = r0 + ty; i < r1; i += blockDim.x / kStatCols) {
    const A v = static_cast<const A*>(is_y ? p.y : p.x)[i * cols + j];
    const A dev = v - mu;
    centered[i * cols + j] = dev;
    out[i * cols + j] = s * dev;
  }
}

// The raw kernels read x and y in the accumulation dtype (the binding's
// product needs them so: narrower inputs are converted once, before the statistics).
template <typename Fn>
void by_acc(const CoherenceRawParams& p, Fn&& fn) {
  if (p.is_double) fn(double{});
  else fn(float{});
}

}  // namespace

void coherence_stats_cuda(const CoherenceStatsParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "coherence_stats_cuda", [&](auto tag) { launch_stats<decltype(tag)>(p, stream); });
}

void coherence_standardize_cuda(const CoherenceStandardizeParams& p, cudaStream_t stream) {
  cuda::dispatch_float(p.dtype, "coherence_standardize_cuda", [&](auto tag) { launch_standardize<decltype(tag)>(p, stream); });
}

void coherence_backward_epilogue_cuda(const CoherenceBackwardParams& p, cudaStream_t stream) {
  const dim3 block(kCols, kRowThreads);
  if (p.is_double) backward_epilogue_kernel<double><<<column_blocks(p.d), block, 0, stream>>>(p);
  else backward_epilogue_kernel<float><<<column_blocks(p.d), block, 0, stream>>>(p);
  cuda::check_launch("coherence_backward_epilogue_cuda");
}

int64_t coherence_raw_workspace_bytes(int64_t n, int64_t d, int64_t dp) {
  const RawShape s = raw_shape(n, d, dp);
  const int64_t doubles = s.chunks * (d + dp) * 4 + s.tiles_r * s.tiles_c * 2 + s.tiles_c * d + s.tiles_r * dp;
  return doubles * int64_t(sizeof(double)) + (d + dp) * int64_t(sizeof(int));
}

void coherence_raw_stats_cuda(const CoherenceRawParams& p, cudaStream_t stream) {
  const RawShape s = raw_shape(p.n, p.d, p.dp);
  const RawWorkspace w = raw_workspace(p);
  by_acc(p, [&](auto tag) {
    using A = decltype(tag);
    // self-correlation: x's columns only (y is x)
    const dim3 grid(grid_x(s.x_groups + (p.symmetric ? 0 : s.y_groups), "coherence_raw_stats_cuda"),
                    grid_yz(s.chunks, "coherence_raw_stats_cuda"));
    raw_stats_kernel<A><<<grid, 256, 0, stream>>>(p, w, s.x_groups, s.chunk_rows);
    cuda::check_launch("coherence_raw_stats_cuda");
    const int64_t cols = p.d + (p.symmetric ? 0 : p.dp);
    raw_finalize_kernel<A><<<grid_x((cols + 255) / 256, "coherence_raw_stats_cuda"), 256, 0, stream>>>(
        p, w, s.chunks);
    cuda::check_launch("coherence_raw_stats_cuda (finalize)");
  });
}

void coherence_raw_reduce_cuda(const CoherenceRawParams& p, cudaStream_t stream) {
  const RawShape s = raw_shape(p.n, p.d, p.dp);
  const RawWorkspace w = raw_workspace(p);
  const unsigned tiles = grid_x(s.tiles_r * s.tiles_c, "coherence_raw_reduce_cuda");
  by_acc(p, [&](auto tag) {
    using A = decltype(tag);
    raw_reduce_kernel<A><<<tiles, 256, 0, stream>>>(p, w, s.tiles_c);
    cuda::check_launch("coherence_raw_reduce_cuda");
  });
  if (p.is_double) raw_loss_kernel<double><<<1, kLossThreads, 0, stream>>>(p, w, tiles);
  else raw_loss_kernel<float><<<1, kLossThreads, 0, stream>>>(p, w, tiles);
  cuda::check_launch("coherence_raw_reduce_cuda (loss)");
}

void coherence_raw_operands_cuda(const CoherenceRawParams& p, cudaStream_t stream) {
  const RawShape s = raw_shape(p.n, p.d, p.dp);
  const RawWorkspace w = raw_workspace(p);
  const unsigned tiles = grid_x(s.tiles_r * s.tiles_c, "coherence_raw_operands_cuda");
  if (p.is_double) raw_operands_kernel<double><<<tiles, 256, 0, stream>>>(p, w, s.tiles_c);
  else raw_operands_kernel<float><<<tiles, 256, 0, stream>>>(p, w, s.tiles_c);
  cuda::check_launch("coherence_raw_operands_cuda");
}

void coherence_raw_center_cuda(const CoherenceRawParams& p, cudaStream_t stream) {
  const RawShape s = raw_shape(p.n, p.d, p.dp);
  const RawWorkspace w = raw_workspace(p);
  const int64_t groups = s.x_groups + (p.symmetric ? 0 : s.y_groups);
  // enough row slices for about 4 blocks per multiprocessor on a large GPU (132 SMs)
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((p.n + 63) / 64, (528 + groups - 1) / groups));
  by_acc(p, [&](auto tag) {
    using A = decltype(tag);
    const dim3 grid(grid_x(groups, "coherence_raw_center_cuda"), grid_yz(slices, "coherence_raw_center_cuda"));
    raw_center_kernel<A><<<grid, 256, 0, stream>>>(p, w, s.x_groups, s.tiles_r, s.tiles_c);
    cuda::check_launch("coherence_raw_center_cuda");
  });
}

}  // namespace eitp
