// eitp::coherence_forward(Tensor x, Tensor? y, float diag_weight, float offdiag_weight,
//                         bool squared, float eps, bool keep_product=False)
//     -> (Tensor loss, Tensor mean_x, Tensor rstd_x, Tensor mean_y, Tensor rstd_y, Tensor product)
// eitp::coherence_backward(Tensor grad, Tensor loss, Tensor x, Tensor? y, Tensor mean_x,
//                          Tensor rstd_x, Tensor mean_y, Tensor rstd_y, float diag_weight,
//                          float offdiag_weight, bool squared, Tensor? product=None)
//     -> (Tensor dx, Tensor dy)
// eitp::coherence_forward_keeps_product(int n, int d, int? d_y) -> bool
//     whether coherence_forward with keep_product returns the (D, D') product
//     for x (n, d) and y (n, d_y) (None: self-correlation), else an empty one
//
// x: (N, D), y: (N, D') or None (self-correlation), float dtypes with the same
// accumulation dtype (fp64, or fp32 for fp16/bf16/fp32). loss: () in the
// accumulation dtype; mean/rstd: (D,) column statistics (mean_y/rstd_y are
// empty (0,) tensors for self-correlation). keep_product: a backward will
// follow (the caller takes a gradient), so a P the forward makes is kept for
// it. product: P = Zx^T Zy (D, D') in the accumulation dtype
// (self: symmetric) when keep_product and the forward takes the block path,
// else empty (0,) (the Gram path makes no P; coherence_backward recomputes).
// dx/dy: gradients in x's / y's dtype (dy empty for self-correlation).
//
// Forward: P is reduced in blocks of at most kTileRows x kTileCols, each to
// the two partial sums of the loss. Self-correlation makes only the blocks on
// and right of the diagonal, each by one matrix product (ATen: BLAS /
// cuBLAS) reduced as it is made. Cross-correlation on the CPU makes the whole
// P by one threaded product first when it is kept or no larger than the
// inputs (whole_product_fits); otherwise block by block as above, so without
// keep_product a P larger than the inputs is never allocated. Short, wide
// batches (N < D/2) use N x N Gram matrices instead (far fewer flops;
// gram_path_is_cheaper, the one place that decides the path). With
// keep_product the block path writes its blocks into one D x D' matrix that
// the backward reuses.
// Backward: W = Zp (Zp^T Z): with a kept P one product; else by the cheaper
// association (one D x D' or up to two N x N buffers). Then one fused
// epilogue pass per side. On the CPU, cross-correlation with a kept P goes
// by row blocks instead (backward_cross_rows: no N x D intermediates).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <vector>

#include "bindings/tensor_args.h"
#include "kernels/coherence.h"

namespace eitp {
namespace {

// Blocks of P = Zx^T Zy: kTileRows x kTileCols per matrix product.
// Self-correlation then costs 1/2 + kTileRows / (2D) of the multiply-adds of
// Zx^T Zx. On the CPU whole blocks go to the threads (CpuBackend), so the
// row count trades block efficiency against load balance: 128 rows give 8
// blocks per 1024 columns (balanced over 2 threads) and were the fastest
// within the noise (2048 x 1024 fp32 forward, 2 threads: 15.4 ms against 26.0
// eager). Re-measure with `eitp-bench --ops coherence_loss` when changing these.
constexpr int64_t kTileRows = 128;
constexpr int64_t kTileCols = 1024;
// Cross-correlation (no symmetry to exploit) takes taller blocks: a
// single-threaded 128 x 1024 product (K = 2048) costs 1.33x the time per
// multiply-add of the whole 1024 x 1024 product, a 512-row one 1.02x
// (`benchmarks/native/barlow_twins_ab.py --threads 1 --cpu-time`). So up to
// 512 rows while D still makes four row panels (two per thread on the 2-core
// target); the height depends on D only.
constexpr int64_t kCrossMaxTileRows = 512;

int64_t cross_tile_rows(int64_t d) {
  const int64_t quarter = (d + 3) / 4;
  return std::clamp((quarter + 63) / 64 * 64, kTileRows, kCrossMaxTileRows);
}
// Rows per block of the CPU cross-correlation backward (backward_cross_rows):
// the blocks are made one after the other, each product threaded by BLAS,
// rather than shared out to the threads as single-threaded products: a
// 4096 x 2048 P (16 MiB) does not fit in one core's L2, so two
// single-threaded products would each stream all of it. The two ways are
// within the shared machine's noise (fwd+bwd against lightly, 1.07x against
// 0.98x at 4096 x 2048, `benchmarks/native/barlow_twins_ab.py --threads 2`);
// re-measure on an idle machine.
constexpr int64_t kBackwardMaxRows = 1024;

int64_t backward_block_rows(int64_t n) { return std::min(n, kBackwardMaxRows); }

// Floats per 64 bytes: the scratch regions of backward_cross_rows start on
// cache lines.
constexpr int64_t kAlignFloats = 16;
inline int64_t aligned(int64_t count) { return (count + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

// Symmetric Gram matrices larger than this are built from row panels on and
// right of the diagonal (about half the multiply-adds), smaller ones by one product.
constexpr int64_t kGramPanel = 256;

struct Sides {
  at::Tensor x, y;  // contiguous 2-D; y undefined for self-correlation
};

Sides check_inputs(const at::Tensor& x_in, const c10::optional<at::Tensor>& y_in, const char* op) {
  TORCH_CHECK_VALUE(x_in.dim() == 2, op, ": x must be 2-D (N, D), got ", x_in.dim(), "-D");
  TORCH_CHECK_TYPE(is_float_dtype(x_in), op, ": x must be a float tensor, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.size(0) >= 2, op, ": x needs at least 2 rows (the batch), got ", x_in.size(0));
  TORCH_CHECK_VALUE(x_in.size(1) >= 1, op, ": x needs at least 1 column, got ", x_in.size(1));
  Sides s;
  s.x = x_in.contiguous();
  if (y_in.has_value() && y_in->defined()) {
    const at::Tensor& y = *y_in;
    TORCH_CHECK_VALUE(y.dim() == 2, op, ": y must be 2-D (N, D'), got ", y.dim(), "-D");
    TORCH_CHECK_TYPE(is_float_dtype(y), op, ": y must be a float tensor, got ", y.scalar_type());
    TORCH_CHECK_VALUE(y.size(0) == x_in.size(0), op, ": y must have as many rows as x (", x_in.size(0), "), got ",
                      y.size(0));
    TORCH_CHECK_VALUE(y.size(1) >= 1, op, ": y needs at least 1 column");
    TORCH_CHECK_VALUE(y.device() == x_in.device(), op, ": x and y must be on the same device");
    TORCH_CHECK_TYPE(accumulation_dtype(y) == accumulation_dtype(x_in), op,
                     ": x and y must both be float64 or both narrower (cast first), got ", x_in.scalar_type(),
                     " and ", y.scalar_type());
    s.y = y.contiguous();
  }
  return s;
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> column_stats(const at::Tensor& x, double eps, Backend& be) {
  const auto options = x.options().dtype(accumulation_dtype(x));
  at::Tensor mean = at::empty({x.size(1)}, options), rstd = at::empty({x.size(1)}, options);
  CoherenceStatsParams p;
  p.x = x.data_ptr();
  p.dtype = kernel_dtype(x, "coherence");
  p.n = x.size(0);
  p.d = x.size(1);
  p.eps = eps;
  p.mean = mean.data_ptr();
  p.rstd = rstd.data_ptr();
  be.stats(p);
  return {mean, rstd};
}

// z = (x - mean) * rstd for the (N, D) rows of x, written at z (leading
// dimension D; nullptr for kernels that read the parameters only).
CoherenceStandardizeParams standardize_params(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                                              void* z) {
  CoherenceStandardizeParams p;
  p.x = x.data_ptr();
  p.dtype = kernel_dtype(x, "coherence");
  p.n = x.size(0);
  p.d = x.size(1);
  p.mean = mean.data_ptr();
  p.rstd = rstd.data_ptr();
  p.z = z;
  p.ld_z = x.size(1);
  return p;
}

template <typename Backend>
at::Tensor standardized(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd, Backend& be) {
  at::Tensor z = empty_output(x.sizes(), x.options().dtype(accumulation_dtype(x)));
  be.standardize(standardize_params(x, mean, rstd, z.data_ptr()));
  return z;
}

// A^T A (k x k, k = A.size(1)). Large ones from the row panels on and right
// of the diagonal, then mirrored: about half the multiply-adds.
template <typename Backend>
at::Tensor symmetric_gram(const at::Tensor& a, Backend& be) {
  const int64_t k = a.size(1);
  if (k <= kGramPanel) return at::mm(a.t(), a);
  at::Tensor out = at::empty({k, k}, a.options());
  for (int64_t i0 = 0; i0 < k; i0 += kGramPanel) {
    const int64_t rows = std::min(kGramPanel, k - i0);
    at::Tensor dst = out.narrow(0, i0, rows).narrow(1, i0, k - i0);
    at::mm_out(dst, a.narrow(1, i0, rows).t(), a.narrow(1, i0, k - i0));
  }
  be.mirror(out);
  return out;
}

// Whether the forward reduces N x N Gram matrices instead of blocks of the
// D x D' product: when that costs less than half the multiply-adds (self:
// N^2 D vs N D^2 / 2 .. N D^2, i.e. 2N < D). The Gram path keeps no product
// even when keep_product: making P there would cost the flops it saves.
bool gram_path_is_cheaper(int64_t n, int64_t d, int64_t dp, bool self) {
  const double tile_cost = self ? double(n) * d * d : 2.0 * n * d * dp;
  const double gram_cost = self ? double(n) * n * d : double(n) * n * (d + dp);
  return 2.0 * gram_cost < tile_cost;
}

// The same rule as an op (coherence_forward_keeps_product), for the forward's
// fake kernel (ops/coherence.py), which gives the outputs' shapes without
// running the forward: whether coherence_forward(x (n, d), y (n, d_y) or
// None for self-correlation, keep_product=True) returns the (D, D') product
// rather than an empty one.
bool forward_keeps_product(int64_t n, int64_t d, std::optional<int64_t> d_y) {
  return !gram_path_is_cheaper(n, d, d_y.value_or(d), !d_y.has_value());
}

// (2,) double: diag = sum_i (R_ii - 1)^2, off = sum_{i!=j} R_ij^2 from N x N
// Gram matrices (wide, short batches): sum_ij R_ij^2 = ||Zx^T Zy||_F^2 / N^2
// = <Zx Zx^T, Zy Zy^T>_F / N^2, and R_ii = mean_n zx_i zy_i; off = total -
// sum_i R_ii^2. With N <= D/2 the total is at least twice the diagonal part
// (rank(R) <= N), so the subtraction keeps fp32 accuracy unless most columns
// are constant.
template <typename Backend>
at::Tensor gram_sums(const at::Tensor& zx, const at::Tensor& zy, bool self, Backend& be) {
  const int64_t n = zx.size(0), m = std::min(zx.size(1), zy.size(1));
  at::Tensor gx = symmetric_gram(zx.t(), be);
  at::Tensor gy = self ? gx : symmetric_gram(zy.t(), be);
  const double nn = static_cast<double>(n) * static_cast<double>(n);
  at::Tensor total = (gx * gy).sum(at::kDouble) / nn;
  at::Tensor rdiag = (zx.narrow(1, 0, m) * zy.narrow(1, 0, m)).sum(0) / static_cast<double>(n);
  at::Tensor diag = (rdiag - 1.0).square().sum(at::kDouble);
  at::Tensor off = total - rdiag.square().sum(at::kDouble);
  return at::stack({diag, off});
}

// One block of P = Zx^T Zy: rows [row0, row0 + rows) (columns of X) by
// columns [col0, col0 + cols) (columns of Y).
struct Block {
  int64_t row0, rows, col0, cols;
};

// The blocks of P a forward makes, largest first: row panels of kTileRows
// split into kTileCols columns; self-correlation only on and right of the
// diagonal.
std::vector<Block> product_blocks(int64_t d, int64_t dp, bool self) {
  std::vector<Block> blocks;
  const int64_t tile_rows = self ? kTileRows : cross_tile_rows(d);
  for (int64_t i0 = 0; i0 < d; i0 += tile_rows)
    for (int64_t c0 = self ? i0 : 0; c0 < dp; c0 += kTileCols)
      blocks.push_back({i0, std::min(tile_rows, d - i0), c0, std::min(kTileCols, dp - c0)});
  return blocks;
}

// Whether cross-correlation makes the whole D x D' product by one (threaded)
// matrix product before reducing it block by block: when P is no larger than
// the inputs (D D' <= N (D + D') / 2), so the memory stays of the inputs'
// order. One threaded product does less work than single-threaded blocks
// shared out to the threads (2048 x 1024 fwd, 2 threads: 16.0 ms against
// 17.4, `benchmarks/native/barlow_twins_ab.py --threads 2`), though it loses
// while other processes compete for the cores (one descheduled thread stalls
// it).
bool whole_product_fits(int64_t n, int64_t d, int64_t dp) {
  return 2.0 * double(d) * double(dp) <= double(n) * double(d + dp);
}

// Cross-correlation on the CPU multiplies the raw inputs (in the accumulation
// dtype) and corrects the product (kernels/coherence.h,
// CoherenceCenterProductParams) when every column's mean is within
// kRawMeanLimit standard deviations of zero: the error of X^T Y relative to P
// then grows at most 1 + 2^2 = 5-fold, and the passes that write standardized
// copies of x and y (forward) or of their row blocks (backward) go.
constexpr double kRawMeanLimit = 2.0;

bool raw_products_apply(const Sides& s, const at::Tensor& mean_x, const at::Tensor& rstd_x, const at::Tensor& mean_y,
                        const at::Tensor& rstd_y) {
  auto offset = [](const at::Tensor& mean, const at::Tensor& rstd) {
    return (mean.to(at::kDouble).abs() * rstd.to(at::kDouble)).max().item<double>();
  };
  // A NaN statistic fails the comparison: the standardized path keeps its NaN rules.
  return offset(mean_x, rstd_x) <= kRawMeanLimit && offset(mean_y, rstd_y) <= kRawMeanLimit;
}

template <typename Backend>
void center_product(at::Tensor& product, int64_t n, const at::Tensor& mean_x, const at::Tensor& rstd_x,
                    const at::Tensor& mean_y, const at::Tensor& rstd_y, Backend& be) {
  CoherenceCenterProductParams p;
  p.product = product.data_ptr();
  p.is_double = product.scalar_type() == at::kDouble;
  p.n = n;
  p.d = product.size(0);
  p.dp = product.size(1);
  p.mean_x = mean_x.data_ptr();
  p.rstd_x = rstd_x.data_ptr();
  p.mean_y = mean_y.data_ptr();
  p.rstd_y = rstd_y.data_ptr();
  be.center_product(p);
}

// (2,) double sums of the loss from P = Zx^T Zy, made block by block (one
// matrix product each) and every block reduced as it is made. product:
// undefined (blocks go through a small scratch buffer per worker) or a
// (D, D') matrix that receives P (for the backward; self: mirrored into a
// full symmetric matrix).
// center: zx and zy are the raw inputs (raw_products_apply), the whole
// product is made and then corrected by center().
template <typename Backend>
at::Tensor tile_sums(const at::Tensor& zx, const at::Tensor& zy, bool self, at::Tensor& product, Backend& be,
                     const std::function<void(at::Tensor&)>& center = nullptr) {
  const int64_t n = zx.size(0), d = zx.size(1), dp = zy.size(1);
  const bool keep = product.defined();
  const bool whole = center != nullptr || (Backend::kWholeCrossProduct && !self && (keep || whole_product_fits(n, d, dp)));
  at::Tensor full = keep || !whole ? product : empty_output({d, dp}, zx.options());
  if (whole) at::mm_out(full, zx.t(), zy);
  if (center) center(full);
  const bool has_p = full.defined();
  const std::vector<Block> blocks = product_blocks(d, dp, self);
  auto make_block = [&](const Block& b, const at::Tensor& scratch) {
    at::Tensor tile = has_p ? full.narrow(0, b.row0, b.rows).narrow(1, b.col0, b.cols)
                            : scratch.narrow(0, 0, b.rows * b.cols).view({b.rows, b.cols});
    if (!whole) at::mm_out(tile, zx.narrow(1, b.row0, b.rows).t(), zy.narrow(1, b.col0, b.cols));
    CoherenceTileParams p;
    p.tile = tile.data_ptr();
    p.is_double = zx.scalar_type() == at::kDouble;
    p.rows = b.rows;
    p.cols = b.cols;
    p.ld = tile.stride(0);
    p.row0 = b.row0;
    p.col0 = b.col0;
    p.n = n;
    p.symmetric = self;
    return p;
  };
  const int64_t scratch_numel = has_p ? 0 : blocks.front().rows * blocks.front().cols;
  at::Tensor sums = be.reduce_blocks(blocks, make_block, scratch_numel, zx.options());
  if (keep && self) be.mirror(product);
  return sums;
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& x_in, const c10::optional<at::Tensor>& y_in, double a, double b, bool squared, double eps,
    bool keep_product) {
  Backend be(x_in);
  Sides s = check_inputs(x_in, y_in, "coherence_forward");
  const bool self = !s.y.defined();
  const int64_t n = s.x.size(0), d = s.x.size(1), dp = self ? d : s.y.size(1);
  auto [mean_x, rstd_x] = column_stats(s.x, eps, be);
  at::Tensor mean_y, rstd_y;
  if (self) {
    mean_y = at::empty({0}, mean_x.options());
    rstd_y = at::empty({0}, mean_x.options());
  } else {
    std::tie(mean_y, rstd_y) = column_stats(s.y, eps, be);
  }
  const auto acc_options = mean_x.options();
  // keep_product: a backward will follow; P is kept where the block path makes it anyway.
  const bool gram = gram_path_is_cheaper(n, d, dp, self);
  at::Tensor product = keep_product && !gram ? empty_output({d, dp}, acc_options) : at::Tensor();
  // (2,) double on the device: diag = sum_i (R_ii - 1)^2, off = sum_{i!=j} R_ij^2.
  at::Tensor sums;
  bool raw = false;
  if constexpr (Backend::kRawCrossProducts) {
    raw = !self && !gram && (product.defined() || whole_product_fits(n, d, dp)) &&
          raw_products_apply(s, mean_x, rstd_x, mean_y, rstd_y);
    if (raw) {
      auto center = [&](at::Tensor& p) { center_product(p, n, mean_x, rstd_x, mean_y, rstd_y, be); };
      sums = tile_sums(s.x.to(acc_options.dtype()), s.y.to(acc_options.dtype()), false, product, be, center);
    }
  }
  if (!raw) {
    at::Tensor zx = standardized(s.x, mean_x, rstd_x, be);
    at::Tensor zy = self ? zx : standardized(s.y, mean_y, rstd_y, be);
    sums = gram ? gram_sums(zx, zy, self, be) : tile_sums(zx, zy, self, product, be);
  }
  at::Tensor l2 = sums.select(0, 0) * a + sums.select(0, 1) * b;  // device ops: no host sync
  at::Tensor loss = (squared ? l2 : l2.sqrt()).to(acc_options.dtype());
  if (!product.defined()) product = at::empty({0}, acc_options);
  return {loss, mean_x, rstd_x, mean_y, rstd_y, product};
}

template <typename Backend>
void epilogue(const at::Tensor& z, const at::Tensor& zp, at::Tensor& w, const at::Tensor& rstd,
              const at::Tensor& grad, const at::Tensor& loss, int64_t m, double a, double b, bool squared,
              bool symmetric, Backend& be) {
  CoherenceBackwardParams p;
  p.z = z.data_ptr();
  p.zp = zp.data_ptr();
  p.ld_z = z.stride(0);
  p.ld_zp = zp.stride(0);
  p.w = w.data_ptr();
  p.rstd = rstd.data_ptr();
  p.grad = grad.data_ptr();
  p.loss = loss.data_ptr();
  p.is_double = z.scalar_type() == at::kDouble;
  p.n = z.size(0);
  p.d = z.size(1);
  p.m = m;
  p.a = a;
  p.b = b;
  p.squared = squared;
  p.symmetric = symmetric;
  be.epilogue(p);
}

// Cross-correlation backward through the kept P by blocks of rows
// (backward_block_rows; kernels/coherence.h, CoherenceCrossCoefParams). Per
// block, the rows of Zx and Zy are standardized into scratch, Wx = Zy_b P^T
// and Wy = Zx_b P made by one (BLAS-threaded) product each, and dx/dy written
// from them in x's/y's dtype by one affine pass. No N x D buffer besides dx
// and dy (Z and W stay in at most kBackwardMaxRows rows of scratch); x and y
// are read twice (once for the column means of Z), dx and dy written once.
// The column means of the standardization's backward come from P (O(D D'))
// instead of two more passes over dz. Every row depends only on its own
// block, whose shape depends on N only.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> backward_cross_rows(const at::Tensor& grad, const at::Tensor& loss, const Sides& s,
                                                       const at::Tensor& mx, const at::Tensor& rx,
                                                       const at::Tensor& my, const at::Tensor& ry, double a, double b,
                                                       bool squared, const at::Tensor& product_in, Backend& be) {
  const at::Tensor product = product_in.contiguous();
  const int64_t n = s.x.size(0), d = s.x.size(1), dp = s.y.size(1), m = std::min(d, dp);
  const bool is_double = product.scalar_type() == at::kDouble;
  const auto dbl = mx.options().dtype(at::kDouble);
  at::Tensor zmean_x = at::empty({d}, dbl), zmean_y = at::empty({dp}, dbl);
  be.z_column_means(standardize_params(s.x, mx, rx, nullptr), zmean_x.data_ptr<double>());
  be.z_column_means(standardize_params(s.y, my, ry, nullptr), zmean_y.data_ptr<double>());
  at::Tensor coef_x = at::empty({4, d}, product.options()), coef_y = at::empty({4, dp}, product.options());
  CoherenceCrossCoefParams cp;
  cp.product = product.data_ptr();
  cp.zmean_x = zmean_x.data_ptr<double>();
  cp.zmean_y = zmean_y.data_ptr<double>();
  cp.rstd_x = rx.data_ptr();
  cp.rstd_y = ry.data_ptr();
  cp.grad = grad.data_ptr();
  cp.loss = loss.data_ptr();
  cp.is_double = is_double;
  cp.n = n;
  cp.d = d;
  cp.dp = dp;
  cp.a = a;
  cp.b = b;
  cp.squared = squared;
  cp.coef_x = coef_x.data_ptr();
  cp.coef_y = coef_y.data_ptr();
  be.cross_coefficients(cp);

  at::Tensor dx = empty_output({n, d}, s.x.options()), dy = empty_output({n, dp}, s.y.options());
  const int64_t block_rows = backward_block_rows(n);
  const int64_t count = (n + block_rows - 1) / block_rows;
  const int64_t wide = std::max(d, dp);
  // Zx rows, Zy rows, W rows (PyTorch's CPU buffers are 64-byte aligned).
  const int64_t zx_size = aligned(block_rows * d), zy_size = aligned(block_rows * dp);
  at::Tensor scratch = at::empty({zx_size + zy_size + block_rows * wide}, product.options());
  auto affine = [&](const at::Tensor& w, const at::Tensor& zp, const at::Tensor& z, const at::Tensor& coef,
                    at::Tensor& out, int64_t cols) {
    CoherenceAffineGradParams p;
    p.w = w.data_ptr();
    p.zp = zp.data_ptr();
    p.z = z.data_ptr();
    p.ld_w = w.stride(0);
    p.ld_zp = zp.stride(0);
    p.ld_z = z.stride(0);
    p.coef = coef.data_ptr();
    p.is_double = is_double;
    p.rows = z.size(0);
    p.d = cols;
    p.m = m;
    p.dx = out.data_ptr();
    p.dx_dtype = kernel_dtype(out, "coherence");
    p.ld_dx = out.stride(0);
    be.affine_grad_rows(p);
  };
  for (int64_t blk = 0; blk < count; ++blk) {
    const int64_t r0 = blk * block_rows, rows = std::min(block_rows, n - r0);
    at::Tensor zx = scratch.narrow(0, 0, rows * d).view({rows, d});
    at::Tensor zy = scratch.narrow(0, zx_size, rows * dp).view({rows, dp});
    at::Tensor w = scratch.narrow(0, zx_size + zy_size, rows * wide).view({rows, wide});
    const at::Tensor xs = s.x.narrow(0, r0, rows), ys = s.y.narrow(0, r0, rows);
    be.standardize(standardize_params(xs, mx, rx, zx.data_ptr()));
    be.standardize(standardize_params(ys, my, ry, zy.data_ptr()));
    at::Tensor wx = w.narrow(1, 0, d), wy = w.narrow(1, 0, dp);
    at::Tensor dxs = dx.narrow(0, r0, rows), dys = dy.narrow(0, r0, rows);
    at::mm_out(wx, zy, product.t());
    affine(wx, zy, zx, coef_x, dxs, d);
    at::mm_out(wy, zx, product);
    affine(wy, zx, zy, coef_y, dys, dp);
  }
  return {dx, dy};
}

// Cross-correlation backward through the kept P by products of the raw
// inputs (raw_products_apply; kernels/coherence.h, CoherenceRawOperandsParams):
// dx = x shift_x + const_x + Y M^T and dy = y shift_y + const_y + X M (one M for both): one
// affine pass and one product per side; no standardized copy of x or y.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> backward_cross_raw(const at::Tensor& grad, const at::Tensor& loss, const Sides& s,
                                                      const at::Tensor& mx, const at::Tensor& rx,
                                                      const at::Tensor& my, const at::Tensor& ry, double a, double b,
                                                      bool squared, const at::Tensor& product_in, Backend& be) {
  const at::Tensor product = product_in.contiguous();
  const int64_t d = s.x.size(1), dp = s.y.size(1);
  const bool is_double = product.scalar_type() == at::kDouble;
  at::Tensor m = empty_output({d, dp}, product.options());
  at::Tensor affine_x = at::empty({2, d}, product.options()), affine_y = at::empty({2, dp}, product.options());
  CoherenceRawOperandsParams op;
  op.product = product.data_ptr();
  op.is_double = is_double;
  op.n = s.x.size(0);
  op.d = d;
  op.dp = dp;
  op.grad = grad.data_ptr();
  op.loss = loss.data_ptr();
  op.a = a;
  op.b = b;
  op.squared = squared;
  op.mean_x = mx.data_ptr();
  op.rstd_x = rx.data_ptr();
  op.mean_y = my.data_ptr();
  op.rstd_y = ry.data_ptr();
  op.m = m.data_ptr();
  op.affine_x = affine_x.data_ptr();
  op.affine_y = affine_y.data_ptr();
  be.raw_operands(op);
  auto side = [&](const at::Tensor& other, const at::Tensor& operand, const at::Tensor& self_in,
                  const at::Tensor& affine) {
    at::Tensor out = empty_output(self_in.sizes(), self_in.options());
    CoherenceAffineRowsParams p;
    p.out = out.data_ptr();
    p.x = self_in.data_ptr();
    p.affine = affine.data_ptr();
    p.is_double = is_double;
    p.rows = out.size(0);
    p.d = out.size(1);
    be.affine_rows(p);
    return out.addmm_(other, operand);  // the product accumulated into the affine term (BLAS beta = 1)
  };
  const at::Tensor x = s.x.to(product.scalar_type()), y = s.y.to(product.scalar_type());
  return {side(y, m.t(), x, affine_x).to(s.x.scalar_type()), side(x, m, y, affine_y).to(s.y.scalar_type())};
}

// product: P = Zx^T Zy (D x D') kept by the forward, or an empty/undefined
// tensor to recompute what is needed here.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_in, const at::Tensor& loss_in,
                                                 const at::Tensor& x_in, const c10::optional<at::Tensor>& y_in,
                                                 const at::Tensor& mean_x, const at::Tensor& rstd_x,
                                                 const at::Tensor& mean_y, const at::Tensor& rstd_y, double a,
                                                 double b, bool squared, const c10::optional<at::Tensor>& product_in) {
  Backend be(x_in);
  Sides s = check_inputs(x_in, y_in, "coherence_backward");
  const bool self = !s.y.defined();
  const int64_t n = s.x.size(0), d = s.x.size(1), dp = self ? d : s.y.size(1);
  const auto acc = accumulation_dtype(s.x);
  TORCH_CHECK_VALUE(mean_x.numel() == d && rstd_x.numel() == d, "coherence_backward: mean_x/rstd_x must have D entries");
  const at::Tensor mx = mean_x.to(acc).contiguous(), rx = rstd_x.to(acc).contiguous();
  const at::Tensor grad = grad_in.to(acc).contiguous(), loss = loss_in.to(acc).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == 1 && loss.numel() == 1, "coherence_backward: grad and loss must be scalars");
  at::Tensor product;
  if (product_in.has_value() && product_in->defined() && product_in->numel() > 0) {
    TORCH_CHECK_VALUE(product_in->dim() == 2 && product_in->size(0) == d && product_in->size(1) == dp,
                      "coherence_backward: product must be (D, D') = (", d, ", ", dp, "), got ", product_in->sizes());
    TORCH_CHECK_VALUE(product_in->device() == s.x.device(), "coherence_backward: product must be on x's device");
    product = product_in->to(acc);
  }
  if (self) {
    at::Tensor zx = standardized(s.x, mx, rx, be);
    // dZ = 2 Z S / N with S = k (2b R + diag(c)): W = Z (Z^T Z) = (Z Z^T) Z.
    at::Tensor w = product.defined() ? at::mm(zx, product)
                   : n < d           ? at::mm(symmetric_gram(zx.t(), be), zx)
                                     : at::mm(zx, symmetric_gram(zx, be));
    epilogue(zx, zx, w, rx, grad, loss, d, a, b, squared, true, be);
    return {w.to(s.x.scalar_type()), at::empty({0}, s.x.options())};
  }
  TORCH_CHECK_VALUE(mean_y.numel() == dp && rstd_y.numel() == dp, "coherence_backward: mean_y/rstd_y must have D' entries");
  const at::Tensor my = mean_y.to(acc).contiguous(), ry = rstd_y.to(acc).contiguous();
  if constexpr (Backend::kRowBlockCrossBackward) {
    if (product.defined()) {
      if (raw_products_apply(s, mx, rx, my, ry))
        return backward_cross_raw(grad, loss, s, mx, rx, my, ry, a, b, squared, product, be);
      return backward_cross_rows(grad, loss, s, mx, rx, my, ry, a, b, squared, product, be);
    }
  }
  at::Tensor zx = standardized(s.x, mx, rx, be), zy = standardized(s.y, my, ry, be);
  at::Tensor wx, wy;
  // Wx = Zy (Zy^T Zx) and Wy = Zx (Zx^T Zy): via one D x D' product (6 N D D'
  // flops, 4 N D D' when kept) or two N x N Gram matrices (4 N^2 (D + D')).
  const double cost_dd = 6.0 * n * d * dp, cost_nn = 4.0 * n * n * (d + dp);
  if (product.defined() || cost_dd <= cost_nn) {
    const at::Tensor m = product.defined() ? product : at::mm(zx.t(), zy);
    wx = at::mm(zy, m.t());
    wy = at::mm(zx, m);
  } else {
    wx = at::mm(symmetric_gram(zy.t(), be), zx);
    wy = at::mm(symmetric_gram(zx.t(), be), zy);
  }
  const int64_t m = std::min(d, dp);
  epilogue(zx, zy, wx, rx, grad, loss, m, a, b, squared, false, be);
  epilogue(zy, zx, wy, ry, grad, loss, m, a, b, squared, false, be);
  return {wx.to(s.x.scalar_type()), wy.to(s.y.scalar_type())};
}

struct CpuBackend : CpuDevice {
  using CpuDevice::CpuDevice;
  void stats(const CoherenceStatsParams& p) { coherence_stats_cpu(p); }
  void standardize(const CoherenceStandardizeParams& p) { coherence_standardize_cpu(p); }
  void mirror(at::Tensor& m) { coherence_mirror_upper_cpu(m.data_ptr(), m.scalar_type() == at::kDouble, m.size(0)); }
  // Blocks are shared out to the threads, each making whole blocks with a
  // single-threaded product (BLAS runs serially inside a parallel region) and
  // reducing them while they are in its cache: small blocks parallelize
  // badly inside one product. Per-block sums are added in block order, so the
  // result does not depend on the thread count.
  template <typename MakeBlock>
  at::Tensor reduce_blocks(const std::vector<Block>& blocks, MakeBlock& make_block, int64_t scratch_numel,
                           const at::TensorOptions& options) {
    const int64_t count = static_cast<int64_t>(blocks.size());
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
    at::Tensor scratch = at::empty({workers, scratch_numel}, options);
    std::vector<double> diag(count), off(count);
    std::atomic<int64_t> next{0};  // blocks come largest first: dynamic, longest-first scheduling
    at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w)
        for (int64_t i = next++; i < count; i = next++)
          coherence_tile_reduce_cpu(make_block(blocks[i], scratch[w]), &diag[i], &off[i]);
    });
    at::Tensor out = at::zeros({2}, options.dtype(at::kDouble));
    double* sums = out.data_ptr<double>();
    for (int64_t i = 0; i < count; ++i) sums[0] += diag[i], sums[1] += off[i];
    return out;
  }
  void epilogue(const CoherenceBackwardParams& p) { coherence_backward_epilogue_cpu(p); }
  static constexpr bool kRowBlockCrossBackward = true;
  static constexpr bool kWholeCrossProduct = true;
  void z_column_means(const CoherenceStandardizeParams& p, double* out) { coherence_z_column_means_cpu(p, out); }
  void cross_coefficients(const CoherenceCrossCoefParams& p) { coherence_cross_coefficients_cpu(p); }
  void affine_grad_rows(const CoherenceAffineGradParams& p) { coherence_affine_grad_rows_cpu(p); }
  static constexpr bool kRawCrossProducts = true;
  void center_product(const CoherenceCenterProductParams& p) { coherence_center_product_cpu(p); }
  void raw_operands(const CoherenceRawOperandsParams& p) { coherence_raw_operands_cpu(p); }
  void affine_rows(const CoherenceAffineRowsParams& p) { coherence_affine_rows_cpu(p); }
};

#ifdef EITP_WITH_CUDA
struct CudaBackend : CudaDevice {
  using CudaDevice::CudaDevice;
  void stats(const CoherenceStatsParams& p) { coherence_stats_cuda(p, stream); }
  void standardize(const CoherenceStandardizeParams& p) { coherence_standardize_cuda(p, stream); }
  void mirror(at::Tensor& m) {
    coherence_mirror_upper_cuda(m.data_ptr(), m.scalar_type() == at::kDouble, m.size(0), stream);
  }
  // One block after the other on the stream; each reduction adds into acc by atomics.
  template <typename MakeBlock>
  at::Tensor reduce_blocks(const std::vector<Block>& blocks, MakeBlock& make_block, int64_t scratch_numel,
                           const at::TensorOptions& options) {
    at::Tensor acc = at::zeros({2}, options.dtype(at::kDouble));
    at::Tensor scratch = at::empty({scratch_numel}, options);
    for (const Block& b : blocks) coherence_tile_reduce_cuda(make_block(b, scratch), acc.data_ptr<double>(), stream);
    return acc;
  }
  void epilogue(const CoherenceBackwardParams& p) { coherence_backward_epilogue_cuda(p, stream); }
  static constexpr bool kRowBlockCrossBackward = false;  // one stream: whole-matrix products are faster
  static constexpr bool kWholeCrossProduct = false;
  static constexpr bool kRawCrossProducts = false;
};

#endif

// The schema's kernels for one device: its Backend's instantiations.
template <typename Backend>
void register_kernels(torch::Library& m) {
  m.impl("coherence_forward", &forward_impl<Backend>);
  m.impl("coherence_backward", &backward_impl<Backend>);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(eitp, m) {
  m.def(
      "coherence_forward(Tensor x, Tensor? y, float diag_weight, float offdiag_weight, bool squared, float eps, "
      "bool keep_product=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "coherence_backward(Tensor grad, Tensor loss, Tensor x, Tensor? y, Tensor mean_x, Tensor rstd_x, "
      "Tensor mean_y, Tensor rstd_y, float diag_weight, float offdiag_weight, bool squared, Tensor? product=None) "
      "-> (Tensor, Tensor)");
  // No tensor argument: one kernel for every device, callable under fake tensors.
  m.def("coherence_forward_keeps_product(int n, int d, int? d_y) -> bool", &forward_keeps_product);
}
TORCH_LIBRARY_IMPL(eitp, CPU, m) { register_kernels<CpuBackend>(m); }
#ifdef EITP_WITH_CUDA
TORCH_LIBRARY_IMPL(eitp, CUDA, m) { register_kernels<CudaBackend>(m); }
#endif

}  // namespace eitp
