// CPU kernels of the coherence loss (see kernels/coherence.h). Row-major (n, d)
// matrices are processed by column blocks: each OpenMP thread owns a range of
// columns and walks the rows, so the inner loop runs over contiguous columns
// and vectorizes, and each column's reduction has a single owner (no atomics,
// deterministic for a given thread count).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels/coherence.h"

namespace eitp {
namespace {

constexpr int64_t kColBlock = 64;  // columns per work item

inline int64_t col_blocks(int64_t d) { return (d + kColBlock - 1) / kColBlock; }
inline bool worth_threads(int64_t n, int64_t d) { return n * d >= 16384; }

// Column sums over all rows (statistics, column means of z) walk the rows of
// one wide column range per thread: rows of kColBlock floats at a 4*d-byte
// stride touch a new page every row (at d = 1024), slow next to the matrix
// product they precede. Ranges of up to kWideCols columns read long
// contiguous pieces; each column's sum still has one owner and a fixed row
// order, so the result does not depend on the thread count (which only sets
// the range widths).
constexpr int64_t kWideCols = 1024;

struct ColumnRanges {
  int64_t width, count;
};

inline ColumnRanges column_ranges(int64_t n, int64_t d) {
  const int64_t threads = worth_threads(n, d) ? std::max(1, omp_get_max_threads()) : 1;
  int64_t width = (d + threads - 1) / threads;
  width = std::min(kWideCols, std::max(kColBlock, (width + 15) / 16 * 16));
  return {width, (d + width - 1) / width};
}

// sums[j] += term(v_ij, j) over `rows` rows of w values at stride ld, in
// double. Its own EITP_CPU_HOT function: loops in a lambda passed to a cloned
// function are compiled for the default target only (so compiled, the
// statistics of a 2048 x 1024 fp32 matrix took 13% of its product's time:
// `perf record` over 300 calls of torch.ops.eitp.coherence_forward, 2 threads).
// Four rows per step, added pairwise before they reach sums: one load and store
// of sums[j] per four values instead of per value (the order stays fixed,
// whatever the thread count); the statistics then take 5.8-6.4% of the
// 2048 x 1024 cross forward against 7.1-7.3% one row per step (perf over 400
// calls of torch.ops.eitp.coherence_forward, 2 threads, two runs each).
template <typename T, typename Term>
EITP_CPU_HOT void sum_rows(const T* __restrict__ x, int64_t ld, int64_t rows, int64_t w, Term term,
                           double* __restrict__ sums) {
  auto v = [&](const T* __restrict__ row, int64_t j) { return static_cast<double>(term(load_acc(row[j]), j)); };
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T* __restrict__ r0 = x + i * ld;
    const T* __restrict__ r1 = r0 + ld;
    const T* __restrict__ r2 = r1 + ld;
    const T* __restrict__ r3 = r2 + ld;
    for (int64_t j = 0; j < w; ++j) sums[j] += (v(r0, j) + v(r1, j)) + (v(r2, j) + v(r3, j));
  }
  for (; i < rows; ++i)
    for (int64_t j = 0; j < w; ++j) sums[j] += v(x + i * ld, j);
}

// Runs body(j0, w, column_sums) once per column range [j0, j0 + w) of the
// row-major (n, d) x (column_ranges: one range per thread). column_sums(term)
// sums static_cast<double>(term(v, j)) over the n rows in row order, v =
// x[i][j0 + j] in the accumulation type, for every j < w, and returns the w
// sums (valid until its next call).
template <typename T, typename Body>
void for_column_ranges(const T* x, int64_t n, int64_t d, Body body) {
  const ColumnRanges ranges = column_ranges(n, d);
#pragma omp parallel for schedule(static) if (ranges.count > 1)
  for (int64_t blk = 0; blk < ranges.count; ++blk) {
    const int64_t j0 = blk * ranges.width, w = std::min(d, j0 + ranges.width) - j0;
    std::vector<double> acc(w);
    auto column_sums = [&](auto term) -> const double* {
      std::fill(acc.begin(), acc.end(), 0.0);
      sum_rows(x + j0, d, n, w, term, acc.data());
      return acc.data();
    };
    body(j0, w, column_sums);
  }
}

template <typename T>
void stats(const CoherenceStatsParams& p) {
  using A = typename AccType<T>::type;
  A* mean = static_cast<A*>(p.mean);
  A* rstd = static_cast<A*>(p.rstd);
  const double n = static_cast<double>(p.n);
  for_column_ranges(static_cast<const T*>(p.x), p.n, p.d, [&](int64_t j0, int64_t w, auto column_sums) {
    A* mu = mean + j0;
    const double* sums = column_sums([](A v, int64_t) { return v; });
    for (int64_t j = 0; j < w; ++j) mu[j] = static_cast<A>(sums[j] / n);
    // squared in A, summed in double, as the reference: a deviation whose
    // square overflows A makes the variance infinite and rstd NaN
    const double* squares = column_sums([&](A v, int64_t j) { const A c = v - mu[j]; return c * c; });
    for (int64_t j = 0; j < w; ++j) rstd[j0 + j] = column_rstd<A>(squares[j] / n, p.eps);
  });
}

template <typename T>
EITP_CPU_HOT void standardize(const CoherenceStandardizeParams& p) {
  using A = typename AccType<T>::type;
  const T* x = static_cast<const T*>(p.x);
  const A* mean = static_cast<const A*>(p.mean);
  const A* rstd = static_cast<const A*>(p.rstd);
  A* z = static_cast<A*>(p.z);
  const int64_t n = p.n, d = p.d;
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * d;
    A* out = z + i * p.ld_z;
    for (int64_t j = 0; j < d; ++j) out[j] = (load_acc(row[j]) - mean[j]) * rstd[j];
  }
}

// Sum of (row[c] / n)^2 over [begin, end) in double, with kLanes independent
// accumulators so the loop vectorizes without reassociating one sum.
template <typename A>
EITP_CPU_HOT double row_sum_squares(const A* row, int64_t begin, int64_t end, A n) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {0.0};
  int64_t c = begin;
  for (; c + kLanes <= end; c += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const A v = row[c + l] / n;
      lane[l] += static_cast<double>(v * v);
    }
  double s = 0.0;
  for (; c < end; ++c) {
    const A v = row[c] / n;
    s += static_cast<double>(v * v);
  }
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

template <typename A>
void tile_reduce(const CoherenceTileParams& p, double* diag_out, double* off_out) {
  const A* t = static_cast<const A*>(p.tile);
  const A n = static_cast<A>(p.n);
  double diag = 0.0, off = 0.0;
// The binding's tiles (at most kCrossMaxTileRows x kTileCols = 512 x 1024,
// csrc/bindings/coherence.cpp) are already shared out to the threads, and
// each is little vector work: threads here only for far larger tiles (a
// parallel region costs more than a small tile on a loaded machine, where
// both threads must be scheduled).
#pragma omp parallel for schedule(dynamic, 8) reduction(+ : diag, off) if (p.rows * p.cols >= (int64_t(1) << 22))
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t gi = p.row0 + r;
    const A* row = t + r * p.ld;
    // Self-correlation reads only j > i (counted twice) and j == i.
    const int64_t c_diag = gi - p.col0;  // the tile column holding R_ii, if in range
    const bool has_diag = c_diag >= 0 && c_diag < p.cols;
    double s;
    if (p.symmetric) {
      s = row_sum_squares(row, std::max<int64_t>(0, c_diag + 1), p.cols, n);
    } else if (has_diag) {
      s = row_sum_squares(row, 0, c_diag, n) + row_sum_squares(row, c_diag + 1, p.cols, n);
    } else {
      s = row_sum_squares(row, 0, p.cols, n);
    }
    if (has_diag) {
      const A dv = row[c_diag] / n - A(1);
      diag += static_cast<double>(dv * dv);
    }
    off += p.symmetric ? 2.0 * s : s;
  }
  *diag_out = diag;
  *off_out = off;
}

template <typename A>
EITP_CPU_HOT void backward_epilogue(const CoherenceBackwardParams& p) {
  const auto [z, zp, w, rstd, f] = BackwardEpilogueArgs<A>(p);
  const int64_t n = p.n, d = p.d;
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int64_t blk = 0; blk < col_blocks(d); ++blk) {
    const int64_t j0 = blk * kColBlock, j1 = std::min(d, j0 + kColBlock), cw = j1 - j0;
    const int64_t diag_end = std::min(j1, p.m);  // columns [j0, diag_end) have R_jj
    double acc[kColBlock];
    A c[kColBlock];
    for (int64_t j = 0; j < cw; ++j) acc[j] = 0.0;
    // R_jj = mean_n z_j zp_j
    for (int64_t i = 0; i < n; ++i) {
      const A* zr = z + i * p.ld_z + j0;
      const A* pr = zp + i * p.ld_zp + j0;
      for (int64_t j = 0; j < diag_end - j0; ++j) acc[j] += static_cast<double>(zr[j] * pr[j]);
    }
    for (int64_t j = 0; j < cw; ++j) {
      if (j0 + j < diag_end) {
        const A r = static_cast<A>(acc[j] / static_cast<double>(n));
        c[j] = f.diag_coefficient(r);
      } else {
        c[j] = A(0);
      }
    }
    // dz in place of w, with the column sums of dz and dz * z
    double sum_dz[kColBlock], sum_dzz[kColBlock];
    for (int64_t j = 0; j < cw; ++j) sum_dz[j] = sum_dzz[j] = 0.0;
    // Columns with a partner, then those without (partner 0), in two loops: one
    // loop with a conditional partner became a masked load (vmaskmovps), which
    // ran several times slower than plain loads in an autograd backward
    // (quant_cpu.cpp, pass_or_zero, has the figures).
    const int64_t paired = std::max<int64_t>(0, diag_end - j0);
    for (int64_t i = 0; i < n; ++i) {
      A* wr = w + i * d + j0;
      const A* zr = z + i * p.ld_z + j0;
      const A* pr = zp + i * p.ld_zp + j0;
      // inlined, so that it is compiled for this clone's target
      auto column = [&](int64_t j, A partner) __attribute__((always_inline)) {
        const A dz = f.scale * (f.wcoef * wr[j] + c[j] * partner);
        wr[j] = dz;
        sum_dz[j] += static_cast<double>(dz);
        sum_dzz[j] += static_cast<double>(dz * zr[j]);
      };
      for (int64_t j = 0; j < paired; ++j) column(j, pr[j]);
      for (int64_t j = paired; j < cw; ++j) column(j, A(0));
    }
    A mdz[kColBlock], mdzz[kColBlock];
    for (int64_t j = 0; j < cw; ++j) {
      mdz[j] = static_cast<A>(sum_dz[j] / static_cast<double>(n));
      mdzz[j] = static_cast<A>(sum_dzz[j] / static_cast<double>(n));
    }
    for (int64_t i = 0; i < n; ++i) {
      A* wr = w + i * d + j0;
      const A* zr = z + i * p.ld_z + j0;
      for (int64_t j = 0; j < cw; ++j) wr[j] = rstd[j0 + j] * (wr[j] - mdz[j] - zr[j] * mdzz[j]);
    }
  }
}

template <typename T>
void z_column_means(const CoherenceStandardizeParams& p, double* out) {
  using A = typename AccType<T>::type;
  const A* mean = static_cast<const A*>(p.mean);
  const A* rstd = static_cast<const A*>(p.rstd);
  const double n = static_cast<double>(p.n);
  for_column_ranges(static_cast<const T*>(p.x), p.n, p.d, [&](int64_t j0, int64_t w, auto column_sums) {
    const A* mu = mean + j0;
    const A* rs = rstd + j0;
    // z as standardize writes it
    const double* sums = column_sums([&](A v, int64_t j) { return (v - mu[j]) * rs[j]; });
    for (int64_t j = 0; j < w; ++j) out[j0 + j] = sums[j] / n;
  });
}

// Row sums of P^2 and of P_jk * m_k (x side: one row of P per output), with
// kLanes independent accumulators each so the loop vectorizes without
// reassociating one sum (one dependent chain per row would bound the loop by
// the add latency).
template <typename A>
EITP_CPU_HOT void product_row_sums(const A* pm, int64_t d, int64_t dp, const double* m, double* sq, double* dot) {
  constexpr int kLanes = 8;
#pragma omp parallel for schedule(static) if (d * dp >= 65536)
  for (int64_t j = 0; j < d; ++j) {
    const A* row = pm + j * dp;
    double s[kLanes] = {0.0}, t[kLanes] = {0.0};
    int64_t k = 0;
    for (; k + kLanes <= dp; k += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const double v = static_cast<double>(row[k + l]);
        s[l] += v * v;
        t[l] += v * m[k + l];
      }
    double s_all = 0.0, t_all = 0.0;
    for (; k < dp; ++k) {
      const double v = static_cast<double>(row[k]);
      s_all += v * v;
      t_all += v * m[k];
    }
    for (int l = 0; l < kLanes; ++l) s_all += s[l], t_all += t[l];
    sq[j] = s_all;
    dot[j] = t_all;
  }
}

// Column sums of P^2 and of P_jk * m_j (y side), by column blocks per thread
// (each column has one owner and a fixed summation order).
template <typename A>
EITP_CPU_HOT void product_col_sums(const A* pm, int64_t d, int64_t dp, const double* m, double* sq, double* dot) {
#pragma omp parallel for schedule(static) if (d * dp >= 65536)
  for (int64_t blk = 0; blk < col_blocks(dp); ++blk) {
    const int64_t k0 = blk * kColBlock, w = std::min(dp, k0 + kColBlock) - k0;
    double s[kColBlock] = {0.0}, t[kColBlock] = {0.0};
    for (int64_t j = 0; j < d; ++j) {
      const A* row = pm + j * dp + k0;
      for (int64_t k = 0; k < w; ++k) {
        const double v = static_cast<double>(row[k]);
        s[k] += v * v;
        t[k] += v * m[j];
      }
    }
    for (int64_t k = 0; k < w; ++k) sq[k0 + k] = s[k], dot[k0 + k] = t[k];
  }
}

// alpha, beta, gamma, delta (kernels/coherence.h) of one side's d columns,
// from sq_j = sum P^2 and pm_j = mean_n W_j over the side's row/column of P.
template <typename A>
void side_coefficients(const CoherenceCrossCoefParams& p, const BackwardFactors<double>& f, const A* pm,
                       int64_t d, const double* sq, const double* dot, const double* zmean_partner,
                       const A* rstd, A* coef) {
  const int64_t m = std::min(p.d, p.dp);
  const double n = static_cast<double>(p.n);
  for (int64_t j = 0; j < d; ++j) {
    double c = 0.0, r = 0.0, mzp = 0.0;
    if (j < m) {
      r = static_cast<double>(pm[j * (p.dp + 1)] / static_cast<A>(p.n));  // R_jj = P_jj / N as the forward
      c = f.diag_coefficient(r);
      mzp = zmean_partner[j];
    }
    const double mean_dz = f.scale * (f.wcoef * dot[j] + c * mzp);
    const double mean_dzz = f.scale * (f.wcoef * sq[j] / n + c * r);
    const double rs = static_cast<double>(rstd[j]);
    coef[j] = static_cast<A>(rs * f.scale * f.wcoef);
    coef[d + j] = static_cast<A>(rs * f.scale * c);
    coef[2 * d + j] = static_cast<A>(-rs * mean_dz);
    coef[3 * d + j] = static_cast<A>(-rs * mean_dzz);
  }
}

// Backward factors of a cross-correlation (BackwardFactors) from its scalars.
template <typename A>
BackwardFactors<double> cross_factors(int64_t n, double a, double b, bool squared, const void* grad,
                                      const void* loss) {
  CoherenceBackwardParams bp{};
  bp.n = n;
  bp.a = a;
  bp.b = b;
  bp.squared = squared;
  bp.symmetric = false;
  return BackwardFactors<double>(bp, static_cast<double>(*static_cast<const A*>(grad)),
                                 static_cast<double>(*static_cast<const A*>(loss)));
}

template <typename A>
void cross_coefficients(const CoherenceCrossCoefParams& p) {
  const A* pm = static_cast<const A*>(p.product);
  const BackwardFactors<double> f = cross_factors<A>(p.n, p.a, p.b, p.squared, p.grad, p.loss);
  std::vector<double> sq_x(p.d), dot_x(p.d), sq_y(p.dp), dot_y(p.dp);
  product_row_sums(pm, p.d, p.dp, p.zmean_y, sq_x.data(), dot_x.data());
  product_col_sums(pm, p.d, p.dp, p.zmean_x, sq_y.data(), dot_y.data());
  side_coefficients(p, f, pm, p.d, sq_x.data(), dot_x.data(), p.zmean_y, static_cast<const A*>(p.rstd_x),
                    static_cast<A*>(p.coef_x));
  side_coefficients(p, f, pm, p.dp, sq_y.data(), dot_y.data(), p.zmean_x, static_cast<const A*>(p.rstd_y),
                    static_cast<A*>(p.coef_y));
}

template <typename T, typename A>
EITP_CPU_HOT void affine_grad_rows(const CoherenceAffineGradParams& p) {
  const A* coef = static_cast<const A*>(p.coef);
  const A *alpha = coef, *beta = coef + p.d, *gamma = coef + 2 * p.d, *delta = coef + 3 * p.d;
  const int64_t m = std::min(p.m, p.d);
  // The binding calls this once per row block, outside any parallel region.
#pragma omp parallel for schedule(static) if (p.rows * p.d >= 65536)
  for (int64_t i = 0; i < p.rows; ++i) {
    const A* w = static_cast<const A*>(p.w) + i * p.ld_w;
    const A* zp = static_cast<const A*>(p.zp) + i * p.ld_zp;
    const A* z = static_cast<const A*>(p.z) + i * p.ld_z;
    T* out = static_cast<T*>(p.dx) + i * p.ld_dx;
    for (int64_t j = 0; j < m; ++j) out[j] = store_acc<T>(alpha[j] * w[j] + beta[j] * zp[j] + gamma[j] + delta[j] * z[j]);
    for (int64_t j = m; j < p.d; ++j) out[j] = store_acc<T>(alpha[j] * w[j] + gamma[j] + delta[j] * z[j]);
  }
}

// By kMirrorBlock-row blocks (one per work item), each filled by
// kMirrorTile x kMirrorTile tiles: a tile reads kMirrorTile row pieces of the
// upper triangle and writes kMirrorTile row pieces below the diagonal. Whole
// 64-column blocks read down a column touch 64 lines a row stride apart, which
// at d = 512 (fp32: a 2 KiB stride) fall into two L1 sets: so mirrored, a
// 512 x 512 P took 5.7% of the regularizer's coherence forward + backward
// (256 x 512, 1 thread: perf record of 3000 calls of the ops).
constexpr int64_t kMirrorBlock = 64;
constexpr int64_t kMirrorTile = 8;

template <typename A>
EITP_CPU_HOT void mirror_rows(A* m, int64_t d, int64_t i0, int64_t i1) {
  for (int64_t j0 = 0; j0 < i1; j0 += kMirrorTile) {
    const int64_t j1 = std::min(j0 + kMirrorTile, i1);
    for (int64_t t0 = std::max(i0, j0); t0 < i1; t0 += kMirrorTile) {
      const int64_t t1 = std::min(t0 + kMirrorTile, i1);
      for (int64_t j = j0; j < j1; ++j) {
        const A* src = m + j * d;
        for (int64_t i = std::max(t0, j + 1); i < t1; ++i) m[i * d + j] = src[i];
      }
    }
  }
}

template <typename A>
void mirror_upper(A* m, int64_t d) {
  const int64_t blocks = (d + kMirrorBlock - 1) / kMirrorBlock;
#pragma omp parallel for schedule(dynamic, 1) if (d >= 512)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t i0 = bi * kMirrorBlock;
    mirror_rows(m, d, i0, std::min(d, i0 + kMirrorBlock));
  }
}

template <typename A>
bool raw_applies(const CoherenceRawParams& p) {
  auto within = [](const void* mean, const void* rstd, int64_t count) {
    const A *mu = static_cast<const A*>(mean), *rs = static_cast<const A*>(rstd);
    for (int64_t j = 0; j < count; ++j)  // a NaN statistic fails the comparison
      if (!(std::fabs(static_cast<double>(mu[j])) * static_cast<double>(rs[j]) <= kRawMeanLimit)) return false;
    return true;
  };
  return within(p.mean_x, p.rstd_x, p.d) && within(p.mean_y, p.rstd_y, p.dp);
}

template <typename A>
EITP_CPU_HOT void center_product(const CoherenceRawParams& p) {
  A* pm = static_cast<A*>(p.product);
  const A *mx = static_cast<const A*>(p.mean_x), *rx = static_cast<const A*>(p.rstd_x);
  const A *my = static_cast<const A*>(p.mean_y), *ry = static_cast<const A*>(p.rstd_y);
  const double n = static_cast<double>(p.n);
#pragma omp parallel for schedule(static) if (p.d * p.dp >= 65536)
  for (int64_t j = 0; j < p.d; ++j) {
    A* row = pm + j * p.dp;
    const double nmx = n * static_cast<double>(mx[j]), rxj = static_cast<double>(rx[j]);
    for (int64_t k = 0; k < p.dp; ++k)
      row[k] = static_cast<A>((static_cast<double>(row[k]) - nmx * static_cast<double>(my[k])) * rxj *
                              static_cast<double>(ry[k]));
  }
}

// mrow = ax * prow * ry elementwise (restrict: the rows do not overlap, so the
// loop vectorizes).
template <typename A>
EITP_CPU_HOT void scale_row(const A* __restrict__ prow, A ax, const A* __restrict__ ry, A* __restrict__ mrow,
                            int64_t count) {
  for (int64_t k = 0; k < count; ++k) mrow[k] = ax * prow[k] * ry[k];
}

template <typename A>
EITP_CPU_HOT void affine_row(A* __restrict__ out, const A* __restrict__ x, const A* __restrict__ shift,
                             const A* __restrict__ constant, int64_t count) {
  for (int64_t j = 0; j < count; ++j) out[j] = x[j] * shift[j] + constant[j];
}

// out = x_ij shift_j + const_j over the (n, d) rows.
template <typename A>
void affine_rows(A* out, const A* x, const A* shift, const A* constant, int64_t n, int64_t d) {
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int64_t i = 0; i < n; ++i) affine_row(out + i * d, x + i * d, shift, constant, d);
}

template <typename A>
void raw_operands(const CoherenceRawParams& p) {
  const int64_t d = p.d, dp = p.dp, m = std::min(d, dp);
  const A* pm = static_cast<const A*>(p.product);
  const A *mx = static_cast<const A*>(p.mean_x), *rx = static_cast<const A*>(p.rstd_x);
  const A *my = static_cast<const A*>(p.mean_y), *ry = static_cast<const A*>(p.rstd_y);
  // P's row and column passes: sums of squares (the coefficients) and the
  // products with rstd * mu of the partner (the constants).
  std::vector<double> scaled_mean_x(d), scaled_mean_y(dp);
  for (int64_t j = 0; j < d; ++j) scaled_mean_x[j] = static_cast<double>(rx[j]) * static_cast<double>(mx[j]);
  for (int64_t k = 0; k < dp; ++k) scaled_mean_y[k] = static_cast<double>(ry[k]) * static_cast<double>(my[k]);
  std::vector<double> sq_x(d), dot_x(d), sq_y(dp), dot_y(dp);
  product_row_sums(pm, d, dp, scaled_mean_y.data(), sq_x.data(), dot_x.data());
  product_col_sums(pm, d, dp, scaled_mean_x.data(), sq_y.data(), dot_y.data());
  // alpha, beta, gamma, delta with Z's column means 0 (their dot terms vanish).
  const BackwardFactors<double> f = cross_factors<A>(p.n, p.a, p.b, p.squared, p.grad, p.loss);
  CoherenceCrossCoefParams cp{};
  cp.n = p.n;
  cp.d = d;
  cp.dp = dp;
  const std::vector<double> zeros(std::max(d, dp), 0.0);
  std::vector<A> coef_x(4 * d), coef_y(4 * dp);
  side_coefficients(cp, f, pm, d, sq_x.data(), zeros.data(), zeros.data(), rx, coef_x.data());
  side_coefficients(cp, f, pm, dp, sq_y.data(), zeros.data(), zeros.data(), ry, coef_y.data());
  const A *alpha_x = coef_x.data(), *beta_x = alpha_x + d, *gamma_x = alpha_x + 2 * d, *delta_x = alpha_x + 3 * d;
  const A *alpha_y = coef_y.data(), *beta_y = alpha_y + dp, *gamma_y = alpha_y + 2 * dp,
          *delta_y = alpha_y + 3 * dp;
  // M_jk = alpha_x_j P_jk rstd_y_k (+ beta_x_j rstd_y_j on the diagonal): alpha and beta are
  // rstd times factors common to both sides, so this is also rstd_x_j P_jk alpha_y_k (+ beta_y_k
  // rstd_x_k): one matrix serves both gradients, one D x D' write and allocation.
  A* mm = static_cast<A*>(p.m);
#pragma omp parallel for schedule(static) if (d * dp >= 65536)
  for (int64_t j = 0; j < d; ++j) {
    scale_row(pm + j * dp, alpha_x[j], ry, mm + j * dp, dp);
    if (j < m) mm[j * dp + j] += beta_x[j] * ry[j];
  }
  auto constants = [](int64_t count, int64_t diag, const A* alpha, const A* beta, const A* gamma, const A* delta,
                      const A* rstd, const A* mean, const double* dot, const A* rstd_partner,
                      const A* mean_partner, A* affine) {
    for (int64_t j = 0; j < count; ++j) {
      // sum_k M_jk mu_k (row) or sum_j M_jk mu_j (column) = alpha_j sum P rstd mu + [j < m] beta_j rstd_j mu_j
      double n_mu = static_cast<double>(alpha[j]) * dot[j];
      if (j < diag)
        n_mu += static_cast<double>(beta[j]) * static_cast<double>(rstd_partner[j]) *
                static_cast<double>(mean_partner[j]);
      const double shift = static_cast<double>(delta[j]) * static_cast<double>(rstd[j]);
      affine[j] = static_cast<A>(shift);
      affine[count + j] = static_cast<A>(static_cast<double>(gamma[j]) - shift * static_cast<double>(mean[j]) - n_mu);
    }
  };
  std::vector<A> affine_x(2 * d), affine_y(2 * dp);
  constants(d, m, alpha_x, beta_x, gamma_x, delta_x, rx, mx, dot_x.data(), ry, my, affine_x.data());
  constants(dp, m, alpha_y, beta_y, gamma_y, delta_y, ry, my, dot_y.data(), rx, mx, affine_y.data());
  affine_rows(static_cast<A*>(p.out_x), static_cast<const A*>(p.x), affine_x.data(), affine_x.data() + d, p.n, d);
  affine_rows(static_cast<A*>(p.out_y), static_cast<const A*>(p.y), affine_y.data(), affine_y.data() + dp, p.n, dp);
}

// sum_j a_j b_j over count values of two rows, in double with kLanes
// independent accumulators (vectorizes without reassociating one sum).
template <typename A>
EITP_CPU_HOT double row_dot(const A* __restrict__ a, const A* __restrict__ b, int64_t count) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {0.0};
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(a[j + l] * b[j + l]);
  double s = 0.0;
  for (; j < count; ++j) s += static_cast<double>(a[j] * b[j]);
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

// out[j] = sum_i zx_ij zy_ij for j < w (columns j0.., both row strides ld),
// four rows per step added pairwise before they reach out.
template <typename A>
EITP_CPU_HOT void column_dots(const A* __restrict__ zx, int64_t ldx, const A* __restrict__ zy, int64_t ldy,
                              int64_t rows, int64_t w, double* __restrict__ out) {
  auto v = [&](int64_t i, int64_t j) { return static_cast<double>(zx[i * ldx + j] * zy[i * ldy + j]); };
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4)
    for (int64_t j = 0; j < w; ++j) out[j] += (v(i, j) + v(i + 1, j)) + (v(i + 2, j) + v(i + 3, j));
  for (; i < rows; ++i)
    for (int64_t j = 0; j < w; ++j) out[j] += v(i, j);
}

template <typename A>
void gram_loss(const CoherenceGramLossParams& p) {
  const A* gx = static_cast<const A*>(p.gx);
  const A* gy = static_cast<const A*>(p.gy);
  const A* zx = static_cast<const A*>(p.zx);
  const A* zy = static_cast<const A*>(p.zy);
  const int64_t n = p.n, m = std::min(p.d, p.dp);
  // <Gx, Gy>_F by rows, then the rows in order
  std::vector<double> rows(n);
#pragma omp parallel for schedule(static) if (n * n >= (int64_t(1) << 18))
  for (int64_t i = 0; i < n; ++i) rows[i] = row_dot(gx + i * n, gy + i * n, n);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += rows[i];
  total /= static_cast<double>(n) * static_cast<double>(n);
  // R_ii by column blocks, one owner per column
  std::vector<double> dots(m, 0.0);
#pragma omp parallel for schedule(static) if (worth_threads(n, m))
  for (int64_t blk = 0; blk < col_blocks(m); ++blk) {
    const int64_t j0 = blk * kColBlock;
    column_dots(zx + j0, p.d, zy + j0, p.dp, n, std::min(m, j0 + kColBlock) - j0, dots.data() + j0);
  }
  double diag = 0.0, diag_squares = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const A r = static_cast<A>(dots[i] / static_cast<double>(n));
    const A dv = r - A(1);
    diag += static_cast<double>(dv * dv);
    diag_squares += static_cast<double>(r * r);
  }
  const double l2 = p.a * diag + p.b * (total - diag_squares);
  *static_cast<A*>(p.loss) = static_cast<A>(p.squared ? l2 : std::sqrt(l2));
}

}  // namespace

void coherence_gram_loss_cpu(const CoherenceGramLossParams& p) {
  if (p.is_double) gram_loss<double>(p);
  else gram_loss<float>(p);
}

void coherence_stats_cpu(const CoherenceStatsParams& p) {
  dispatch_float(p.dtype, "coherence_stats_cpu", [&](auto tag) { stats<decltype(tag)>(p); });
}

void coherence_standardize_cpu(const CoherenceStandardizeParams& p) {
  dispatch_float(p.dtype, "coherence_standardize_cpu", [&](auto tag) { standardize<decltype(tag)>(p); });
}

void coherence_tile_reduce_cpu(const CoherenceTileParams& p, double* diag_sum, double* off_sum) {
  if (p.is_double) tile_reduce<double>(p, diag_sum, off_sum);
  else tile_reduce<float>(p, diag_sum, off_sum);
}

void coherence_backward_epilogue_cpu(const CoherenceBackwardParams& p) {
  if (p.is_double) backward_epilogue<double>(p);
  else backward_epilogue<float>(p);
}

void coherence_z_column_means_cpu(const CoherenceStandardizeParams& p, double* out) {
  dispatch_float(p.dtype, "coherence_z_column_means_cpu", [&](auto tag) { z_column_means<decltype(tag)>(p, out); });
}

void coherence_cross_coefficients_cpu(const CoherenceCrossCoefParams& p) {
  if (p.is_double) cross_coefficients<double>(p);
  else cross_coefficients<float>(p);
}

void coherence_affine_grad_rows_cpu(const CoherenceAffineGradParams& p) {
  if (p.is_double) {
    if (p.dx_dtype != DType::kFloat64) throw std::invalid_argument("coherence_affine_grad_rows_cpu: fp64 sums need fp64 dx");
    affine_grad_rows<double, double>(p);
    return;
  }
  switch (p.dx_dtype) {
    case DType::kFloat32: affine_grad_rows<float, float>(p); break;
    case DType::kFloat16: affine_grad_rows<Half16, float>(p); break;
    case DType::kBFloat16: affine_grad_rows<BFloat16, float>(p); break;
    default: throw std::invalid_argument("coherence_affine_grad_rows_cpu: dx must be a float dtype");
  }
}

void coherence_mirror_upper_cpu(void* m, bool is_double, int64_t d) {
  if (is_double) mirror_upper(static_cast<double*>(m), d);
  else mirror_upper(static_cast<float*>(m), d);
}

bool coherence_raw_applies_cpu(const CoherenceRawParams& p) {
  return p.is_double ? raw_applies<double>(p) : raw_applies<float>(p);
}

void coherence_center_product_cpu(const CoherenceRawParams& p) {
  if (p.is_double) center_product<double>(p);
  else center_product<float>(p);
}

void coherence_raw_operands_cpu(const CoherenceRawParams& p) {
  if (p.is_double) raw_operands<double>(p);
  else raw_operands<float>(p);
}

// Blocks are shared out to the threads, each making whole blocks with a
// single-threaded product (BLAS runs serially inside a parallel region) and
// reducing them while they are in its cache: small blocks parallelize badly
// inside one product. Dynamic, longest-first scheduling (the blocks come
// largest first).
int64_t coherence_tile_workers_cpu(int64_t count) {
  return std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), count));
}

void coherence_reduce_tiles_cpu(int64_t count, CoherenceMakeTile make, void* context, void* scratch,
                                int64_t scratch_bytes, bool is_double, double a, double b, bool squared,
                                void* loss) {
  const int64_t workers = coherence_tile_workers_cpu(count);
  std::vector<double> diag(count), off(count);
  std::atomic<int64_t> next{0};
#pragma omp parallel for schedule(static, 1) num_threads(workers) if (workers > 1)
  for (int64_t w = 0; w < workers; ++w) {
    void* own = scratch == nullptr ? nullptr : static_cast<char*>(scratch) + w * scratch_bytes;
    for (int64_t i = next++; i < count; i = next++)
      coherence_tile_reduce_cpu(make(context, i, own), &diag[i], &off[i]);
  }
  double sums[2] = {0.0, 0.0};
  for (int64_t i = 0; i < count; ++i) sums[0] += diag[i], sums[1] += off[i];
  const double l2 = sums[0] * a + sums[1] * b;
  const double value = squared ? l2 : std::sqrt(l2);
  if (is_double) *static_cast<double*>(loss) = value;
  else *static_cast<float*>(loss) = static_cast<float>(value);
}

}  // namespace eitp
