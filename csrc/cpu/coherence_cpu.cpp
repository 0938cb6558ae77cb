// CPU kernels of the coherence loss (see kernels/coherence.h). Row-major (n, d)
// matrices are processed by column blocks: each OpenMP thread owns a range of
// columns and walks the rows, so the inner loop runs over contiguous columns
// and vectorizes, and each column's reduction has a single owner (no atomics,
// deterministic for a given thread count).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels/coherence.h"

namespace eitp {
namespace {

constexpr int64_t kColBlock = 64;  // columns per work item

inline int64_t col_blocks(int64_t d) { return (d + kColBlock - 1) / kColBlock; }
inline bool worth_threads(int64_t n, int64_t d) { return n * d >= 16384; }

template <typename T>
EITP_CPU_HOT void stats(const CoherenceStatsParams& p) {
  using A = typename AccType<T>::type;
  const T* x = static_cast<const T*>(p.x);
  A* mean = static_cast<A*>(p.mean);
  A* rstd = static_cast<A*>(p.rstd);
  const int64_t n = p.n, d = p.d;
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int64_t blk = 0; blk < col_blocks(d); ++blk) {
    const int64_t j0 = blk * kColBlock, j1 = std::min(d, j0 + kColBlock), w = j1 - j0;
    double acc[kColBlock];
    for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const T* row = x + i * d + j0;
      for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(load_acc(row[j]));
    }
    A mu[kColBlock];
    for (int64_t j = 0; j < w; ++j) mu[j] = static_cast<A>(acc[j] / static_cast<double>(n));
    for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const T* row = x + i * d + j0;
      for (int64_t j = 0; j < w; ++j) {
        const A c = load_acc(row[j]) - mu[j];
        acc[j] += static_cast<double>(c * c);  // squared in A, summed in double, as the reference
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      mean[j0 + j] = mu[j];
      rstd[j0 + j] = column_rstd<A>(acc[j] / static_cast<double>(n), p.eps);
    }
  }
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
// A tile is at most 256 x 1024 values, a fraction of a millisecond of vector
// work: threads only for unusually large tiles (a parallel region costs more
// than that on a loaded machine, where both threads must be scheduled).
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
  const A* z = static_cast<const A*>(p.z);
  const A* zp = static_cast<const A*>(p.zp);
  A* w = static_cast<A*>(p.w);
  const A* rstd = static_cast<const A*>(p.rstd);
  const BackwardFactors<A> f(p, *static_cast<const A*>(p.grad), *static_cast<const A*>(p.loss));
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
    for (int64_t i = 0; i < n; ++i) {
      A* wr = w + i * d + j0;
      const A* zr = z + i * p.ld_z + j0;
      const A* pr = zp + i * p.ld_zp + j0;
      for (int64_t j = 0; j < cw; ++j) {
        const A partner = j0 + j < diag_end ? pr[j] : A(0);
        const A dz = f.scale * (f.wcoef * wr[j] + c[j] * partner);
        wr[j] = dz;
        sum_dz[j] += static_cast<double>(dz);
        sum_dzz[j] += static_cast<double>(dz * zr[j]);
      }
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

// By kMirrorBlock x kMirrorBlock blocks below the diagonal, so the column
// reads of the upper triangle stay within a few cache lines per row.
constexpr int64_t kMirrorBlock = 64;

template <typename A>
void mirror_upper(A* m, int64_t d) {
  const int64_t blocks = (d + kMirrorBlock - 1) / kMirrorBlock;
#pragma omp parallel for schedule(dynamic, 1) if (d >= 512)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t i0 = bi * kMirrorBlock, i1 = std::min(d, i0 + kMirrorBlock);
    for (int64_t j0 = 0; j0 <= i0; j0 += kMirrorBlock)
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0, j1 = std::min(i, j0 + kMirrorBlock); j < j1; ++j) m[i * d + j] = m[j * d + i];
  }
}

}  // namespace

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

void coherence_mirror_upper_cpu(void* m, bool is_double, int64_t d) {
  if (is_double) mirror_upper(static_cast<double*>(m), d);
  else mirror_upper(static_cast<float*>(m), d);
}

}  // namespace eitp
