// eitp::coherence_forward(Tensor x, Tensor? y, float diag_weight, float offdiag_weight,
//                         bool squared, float eps, int path)
//     -> (Tensor loss, Tensor mean_x, Tensor rstd_x, Tensor mean_y, Tensor rstd_y, Tensor product)
// eitp::coherence_backward(Tensor grad, Tensor loss, Tensor x, Tensor? y, Tensor mean_x,
//                          Tensor rstd_x, Tensor mean_y, Tensor rstd_y, Tensor product,
//                          float diag_weight, float offdiag_weight, bool squared, int path)
//     -> (Tensor dx, Tensor dy)
// The same schemas as eitp_triton:: (eitp_kernels/triton/coherence.py).
//
// x: (N, D), y: (N, D') or None (self-correlation), float dtypes with the same
// accumulation dtype (fp64, or fp32 for fp16/bf16/fp32). loss: () in the
// accumulation dtype; mean/rstd: (D,) column statistics (mean_y/rstd_y are
// empty (0,) tensors for self-correlation). path: the planner's choice
// (eitp_kernels/ops/coherence.py, plan; decided once, from the shapes, the
// device and whether a backward follows): 0 GRAM (N x N Gram matrices, short
// wide batches), 1 BLOCKS (P reduced block by block, never whole: CPU
// forward only), 2 PRODUCT (P made whole and returned: the backward's input).
// product: what the backward multiplies by, in the accumulation dtype:
// PRODUCT P = Zx^T Zy (D, D'); GRAM the Gram matrices (1, N, N) [Zx Zx^T]
// (self) or (2, N, N) [Zx Zx^T, Zy Zy^T]; BLOCKS empty (0,). dx/dy:
// gradients in x's / y's dtype (dy empty for self).
//
// This file checks, allocates and fills the params; the CPU thread
// scheduling is in csrc/cpu, the kernels in csrc/cpu and csrc/cuda, the
// products by ATen (BLAS, cuBLAS). How each path runs:
//   GRAM      both devices: standardized Z, Gram matrices (kept: the
//             backward's input), the sums from them; backward W = (Zp Zp^T) Z
//             and the fused epilogue per side.
//   BLOCKS    CPU: blocks of standardized columns shared out to the threads.
//   PRODUCT   CPU self: the blocks on and right of the diagonal into P, then
//             mirrored; backward W = Z P and the epilogue. CPU cross: one
//             product of the raw inputs corrected in place (kernels/
//             coherence.h, CoherenceRawParams) where the means allow, else of
//             standardized copies; backward by the raw form or by row blocks.
//             CUDA (self and cross): the raw form, one product forward and
//             one per gradient backward, the rest in seven kernel launches.
//
// Why this file is longer than the other bindings (about 650 lines): the op's
// matrix products are ATen calls (BLAS, cuBLAS) between its kernels, so the
// order of products and kernels of three paths, forward and backward, on two
// devices, is tensor code and lives here; the kernels stay torch-free.
#include <algorithm>
#include <vector>

#include "bindings/tensor_args.h"
#include "kernels/coherence.h"

namespace eitp {
namespace {

constexpr int64_t kGram = 0, kBlocks = 1, kProduct = 2;

void check_path(int64_t path, const char* op) {
  TORCH_CHECK_VALUE(path == kGram || path == kBlocks || path == kProduct, op,
                    ": path must be 0 (GRAM), 1 (BLOCKS) or 2 (PRODUCT), got ", path);
}

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

// Symmetric Gram matrices on the CPU are built from row panels of this many
// rows on and right of the diagonal (1/2 + kGramPanel / (2N) of the
// multiply-adds of one product), then mirrored. 64 rows were the fastest of
// 32, 64, 128 and one whole product at N = 256 (Z: 256 x 512 fp32, 1 thread,
// thread CPU time, medians of 200: 0.50 ms against 0.56, 0.62 and 0.72) and
// within 6% of the fastest up to N = 512 (512 x 512: 2.20 ms, 128 rows 2.05,
// whole 3.42); smaller ones by one product.
constexpr int64_t kGramPanel = 64;

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

// z is a temporary of the call (never returned): the backend's scratch `slot`
// (0 for x's side, 1 for y's).
template <typename Backend>
at::Tensor standardized(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd, Backend& be,
                        int slot = 0) {
  at::Tensor z = be.scratch(slot, x.sizes(), x.options().dtype(accumulation_dtype(x)));
  be.standardize(standardize_params(x, mean, rstd, z.data_ptr()));
  return z;
}

// out = A^T A (k x k, k = A.size(1)). On the CPU from the row panels on and
// right of the diagonal, then mirrored: about half the multiply-adds.
template <typename Backend>
void symmetric_gram(const at::Tensor& a, at::Tensor out, Backend& be) {
  const int64_t k = a.size(1);
  if (!Backend::kPanelGram || k <= kGramPanel) {
    at::mm_out(out, a.t(), a);
    return;
  }
  for (int64_t i0 = 0; i0 < k; i0 += kGramPanel) {
    const int64_t rows = std::min(kGramPanel, k - i0);
    at::Tensor dst = out.narrow(0, i0, rows).narrow(1, i0, k - i0);
    at::mm_out(dst, a.narrow(1, i0, rows).t(), a.narrow(1, i0, k - i0));
  }
  be.mirror(out);
}

// The GRAM path's kept Gram matrices, (1, N, N) self: [Zx Zx^T]; (2, N, N)
// cross: [Zx Zx^T, Zy Zy^T]. The forward returns them as its `product`
// output; the backward multiplies by them (W = (Zp Zp^T) Z per side).
template <typename Backend>
at::Tensor gram_matrices(const at::Tensor& zx, const at::Tensor& zy, bool self, Backend& be) {
  const int64_t n = zx.size(0);
  at::Tensor grams = at::empty({self ? 1 : 2, n, n}, zx.options());
  symmetric_gram(zx.t(), grams.select(0, 0), be);
  if (!self) symmetric_gram(zy.t(), grams.select(0, 1), be);
  return grams;
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

// The loss from P's blocks on the CPU (coherence_reduce_tiles_cpu shares
// them out to the threads). product undefined: each block made into its
// worker's scratch (BLOCKS); defined: blocks made into it, or (whole) already
// made and only read.
struct TileContext {
  at::Tensor zx, zy, product;
  std::vector<Block> blocks;
  bool whole, self;
  at::TensorOptions options;
};

CoherenceTileParams make_tile(void* context, int64_t index, void* scratch) {
  TileContext& c = *static_cast<TileContext*>(context);
  const Block& b = c.blocks[index];
  at::Tensor tile = c.product.defined() ? c.product.narrow(0, b.row0, b.rows).narrow(1, b.col0, b.cols)
                                        : at::from_blob(scratch, {b.rows, b.cols}, c.options);
  if (!c.whole) at::mm_out(tile, c.zx.narrow(1, b.row0, b.rows).t(), c.zy.narrow(1, b.col0, b.cols));
  CoherenceTileParams p;
  p.tile = tile.data_ptr();
  p.is_double = c.zx.scalar_type() == at::kDouble;
  p.rows = b.rows;
  p.cols = b.cols;
  p.ld = tile.stride(0);
  p.row0 = b.row0;
  p.col0 = b.col0;
  p.n = c.zx.size(0);
  p.symmetric = c.self;
  return p;
}

void cpu_block_loss(const at::Tensor& zx, const at::Tensor& zy, bool self, const at::Tensor& product, bool whole,
                    double a, double b, bool squared, at::Tensor& loss) {
  TileContext c{zx, zy, product, product_blocks(zx.size(1), zy.size(1), self), whole, self, zx.options()};
  const int64_t count = static_cast<int64_t>(c.blocks.size());
  at::Tensor scratch;
  int64_t scratch_bytes = 0;
  if (!product.defined()) {
    scratch_bytes = c.blocks.front().rows * c.blocks.front().cols * static_cast<int64_t>(zx.element_size());
    scratch = at::empty({coherence_tile_workers_cpu(count) * scratch_bytes}, zx.options().dtype(at::kByte));
  }
  coherence_reduce_tiles_cpu(count, &make_tile, &c, scratch.defined() ? scratch.data_ptr() : nullptr,
                             scratch_bytes, zx.scalar_type() == at::kDouble, a, b, squared, loss.data_ptr());
}

CoherenceRawParams raw_params(const at::Tensor& x, const at::Tensor& y, bool self, const at::Tensor& mx,
                              const at::Tensor& rx, const at::Tensor& my, const at::Tensor& ry,
                              const at::Tensor& product, double eps, double a, double b, bool squared) {
  CoherenceRawParams p{};
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.is_double = x.scalar_type() == at::kDouble;
  p.symmetric = self;
  p.n = x.size(0);
  p.d = x.size(1);
  p.dp = y.size(1);
  p.eps = eps;
  p.a = a;
  p.b = b;
  p.squared = squared;
  p.mean_x = mx.data_ptr();
  p.rstd_x = rx.data_ptr();
  p.mean_y = my.data_ptr();
  p.rstd_y = ry.data_ptr();
  p.product = product.data_ptr();
  return p;
}

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename Backend>
ForwardResult forward_impl(const at::Tensor& x_in, const c10::optional<at::Tensor>& y_in, double a, double b,
                           bool squared, double eps, int64_t path) {
  Backend be(x_in);
  Sides s = check_inputs(x_in, y_in, "coherence_forward");
  check_path(path, "coherence_forward");
  TORCH_CHECK_VALUE(Backend::kHasBlocks || path != kBlocks,
                    "coherence_forward: path BLOCKS (1) is a CPU path; on CUDA use GRAM (0) or PRODUCT (2)");
  const bool self = !s.y.defined();
  if (path == kProduct) return be.product_forward(s, a, b, squared, eps);
  auto [mean_x, rstd_x] = column_stats(s.x, eps, be);
  at::Tensor mean_y = at::empty({0}, mean_x.options()), rstd_y = at::empty({0}, mean_x.options());
  if (!self) std::tie(mean_y, rstd_y) = column_stats(s.y, eps, be);
  at::Tensor zx = standardized(s.x, mean_x, rstd_x, be);
  at::Tensor zy = self ? zx : standardized(s.y, mean_y, rstd_y, be, 1);
  if (path == kGram) {
    at::Tensor grams = gram_matrices(zx, zy, self, be);
    return {be.gram_loss(zx, zy, grams, a, b, squared), mean_x, rstd_x, mean_y, rstd_y, grams};
  }
  at::Tensor loss = at::empty({}, mean_x.options());
  be.block_loss(zx, zy, self, a, b, squared, loss);
  return {loss, mean_x, rstd_x, mean_y, rstd_y, at::empty({0}, mean_x.options())};
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

// The gradients by the N x N association (GRAM): W = (Zp Zp^T) Z per side,
// with the Gram matrices the forward kept (gram_matrices), or made here when
// `grams` is empty (after a BLOCKS forward, which keeps none).
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> backward_gram(const at::Tensor& grad, const at::Tensor& loss, const Sides& s,
                                                 const at::Tensor& mx, const at::Tensor& rx, const at::Tensor& my,
                                                 const at::Tensor& ry, double a, double b, bool squared,
                                                 const at::Tensor& grams_in, Backend& be) {
  const bool self = !s.y.defined();
  at::Tensor zx = standardized(s.x, mx, rx, be);
  at::Tensor zy = self ? zx : standardized(s.y, my, ry, be, 1);
  const at::Tensor grams = grams_in.numel() == 0 ? gram_matrices(zx, zy, self, be) : grams_in;
  if (self) {
    at::Tensor w = at::mm(grams.select(0, 0), zx);
    epilogue(zx, zx, w, rx, grad, loss, zx.size(1), a, b, squared, true, be);
    return {w.to(s.x.scalar_type()), at::empty({0}, s.x.options())};
  }
  at::Tensor wx = at::mm(grams.select(0, 1), zx);
  at::Tensor wy = at::mm(grams.select(0, 0), zy);
  const int64_t m = std::min(zx.size(1), zy.size(1));
  epilogue(zx, zy, wx, rx, grad, loss, m, a, b, squared, false, be);
  epilogue(zy, zx, wy, ry, grad, loss, m, a, b, squared, false, be);
  return {wx.to(s.x.scalar_type()), wy.to(s.y.scalar_type())};
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_in, const at::Tensor& loss_in,
                                                 const at::Tensor& x_in, const c10::optional<at::Tensor>& y_in,
                                                 const at::Tensor& mean_x, const at::Tensor& rstd_x,
                                                 const at::Tensor& mean_y, const at::Tensor& rstd_y,
                                                 const at::Tensor& product_in, double a, double b, bool squared,
                                                 int64_t path) {
  Backend be(x_in);
  Sides s = check_inputs(x_in, y_in, "coherence_backward");
  check_path(path, "coherence_backward");
  const bool self = !s.y.defined();
  const int64_t d = s.x.size(1), dp = self ? d : s.y.size(1);
  const auto acc = accumulation_dtype(s.x);
  TORCH_CHECK_VALUE(mean_x.numel() == d && rstd_x.numel() == d, "coherence_backward: mean_x/rstd_x must have D entries");
  const at::Tensor mx = mean_x.to(acc).contiguous(), rx = rstd_x.to(acc).contiguous();
  const at::Tensor grad = grad_in.to(acc).contiguous(), loss = loss_in.to(acc).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == 1 && loss.numel() == 1, "coherence_backward: grad and loss must be scalars");
  at::Tensor my = mx, ry = rx;
  if (!self) {
    TORCH_CHECK_VALUE(mean_y.numel() == dp && rstd_y.numel() == dp,
                      "coherence_backward: mean_y/rstd_y must have D' entries");
    my = mean_y.to(acc).contiguous();
    ry = rstd_y.to(acc).contiguous();
  }
  // GRAM, or BLOCKS (the planner never takes a gradient through it; the forward kept nothing): the N x N association
  if (path != kProduct) {
    const int64_t n = s.x.size(0), sides = self ? 1 : 2;
    TORCH_CHECK_VALUE(path == kBlocks ? product_in.numel() == 0
                                      : product_in.numel() == 0 || (product_in.dim() == 3 && product_in.size(0) == sides &&
                                                                    product_in.size(1) == n && product_in.size(2) == n),
                      "coherence_backward: product must be the forward's Gram matrices (", sides, ", ", n, ", ", n,
                      ") or empty on the GRAM path, empty on the BLOCKS path, got ", product_in.sizes());
    TORCH_CHECK_VALUE(product_in.numel() == 0 || product_in.device() == s.x.device(),
                      "coherence_backward: product must be on x's device");
    return backward_gram(grad, loss, s, mx, rx, my, ry, a, b, squared, product_in.to(acc).contiguous(), be);
  }
  TORCH_CHECK_VALUE(product_in.dim() == 2 && product_in.size(0) == d && product_in.size(1) == dp,
                    "coherence_backward: product must be (D, D') = (", d, ", ", dp, ") on the PRODUCT path, got ",
                    product_in.sizes());
  TORCH_CHECK_VALUE(product_in.device() == s.x.device(), "coherence_backward: product must be on x's device");
  return be.product_backward(grad, loss, s, mx, rx, my, ry, a, b, squared, product_in.to(acc).contiguous());
}

// The raw-form backward's two products, shared by both devices: the affine
// terms out_x / out_y (made by the backend) accumulate Y M^T and X M (BLAS
// beta = 1), with the backend's operands (CPU: the raw inputs; CUDA: centered).
std::tuple<at::Tensor, at::Tensor> raw_products(at::Tensor& out_x, at::Tensor& out_y, const at::Tensor& m,
                                                const at::Tensor& op_x, const at::Tensor& op_y, const Sides& s) {
  out_x.addmm_(op_y, m.t());
  if (!s.y.defined()) return {out_x.to(s.x.scalar_type()), at::empty({0}, s.x.options())};
  out_y.addmm_(op_x, m);
  return {out_x.to(s.x.scalar_type()), out_y.to(s.y.scalar_type())};
}

struct CpuBackend : CpuDevice {
  using CpuDevice::CpuDevice;
  static constexpr bool kPanelGram = true, kHasBlocks = true;
  at::Tensor scratch(int slot, at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cpu_scratch(slot, sizes, options);
  }
  void stats(const CoherenceStatsParams& p) { coherence_stats_cpu(p); }
  void standardize(const CoherenceStandardizeParams& p) { coherence_standardize_cpu(p); }
  void mirror(at::Tensor& m) { coherence_mirror_upper_cpu(m.data_ptr(), m.scalar_type() == at::kDouble, m.size(0)); }
  void epilogue(const CoherenceBackwardParams& p) { coherence_backward_epilogue_cpu(p); }
  void z_column_means(const CoherenceStandardizeParams& p, double* out) { coherence_z_column_means_cpu(p, out); }
  void cross_coefficients(const CoherenceCrossCoefParams& p) { coherence_cross_coefficients_cpu(p); }
  void affine_grad_rows(const CoherenceAffineGradParams& p) { coherence_affine_grad_rows_cpu(p); }
  void block_loss(const at::Tensor& zx, const at::Tensor& zy, bool self, double a, double b, bool squared,
                  at::Tensor& loss) {
    cpu_block_loss(zx, zy, self, at::Tensor(), false, a, b, squared, loss);
  }
  // One kernel where the ATen form (gram_loss_aten) took about 25 small ops:
  // at Z 256 x 512 fp32, 1 thread, those cost 0.3 ms of a 0.8 ms forward.
  at::Tensor gram_loss(const at::Tensor& zx, const at::Tensor& zy, const at::Tensor& grams, double a, double b,
                       bool squared) {
    at::Tensor loss = at::empty({}, zx.options());
    CoherenceGramLossParams p;
    p.gx = grams.data_ptr();
    p.gy = grams.select(0, grams.size(0) - 1).data_ptr();
    p.zx = zx.data_ptr();
    p.zy = zy.data_ptr();
    p.is_double = zx.scalar_type() == at::kDouble;
    p.n = zx.size(0);
    p.d = zx.size(1);
    p.dp = zy.size(1);
    p.a = a;
    p.b = b;
    p.squared = squared;
    p.loss = loss.data_ptr();
    coherence_gram_loss_cpu(p);
    return loss;
  }

  ForwardResult product_forward(const Sides& s, double a, double b, bool squared, double eps) {
    const bool self = !s.y.defined();
    auto [mean_x, rstd_x] = column_stats(s.x, eps, *this);
    at::Tensor loss = at::empty({}, mean_x.options());
    const int64_t d = s.x.size(1);
    if (self) {
      at::Tensor product = empty_output({d, d}, mean_x.options());
      at::Tensor zx = standardized(s.x, mean_x, rstd_x, *this);
      cpu_block_loss(zx, zx, true, product, false, a, b, squared, loss);
      mirror(product);
      return {loss, mean_x, rstd_x, at::empty({0}, mean_x.options()), at::empty({0}, mean_x.options()), product};
    }
    auto [mean_y, rstd_y] = column_stats(s.y, eps, *this);
    at::Tensor product = empty_output({d, s.y.size(1)}, mean_x.options());
    const auto acc = mean_x.scalar_type();
    at::Tensor xa = s.x.to(acc), ya = s.y.to(acc);
    CoherenceRawParams p = raw_params(xa, ya, false, mean_x, rstd_x, mean_y, rstd_y, product, eps, a, b, squared);
    if (coherence_raw_applies_cpu(p)) {
      at::mm_out(product, xa.t(), ya);
      coherence_center_product_cpu(p);
      cpu_block_loss(xa, ya, false, product, true, a, b, squared, loss);
    } else {
      at::Tensor zx = standardized(s.x, mean_x, rstd_x, *this), zy = standardized(s.y, mean_y, rstd_y, *this, 1);
      at::mm_out(product, zx.t(), zy);
      cpu_block_loss(zx, zy, false, product, true, a, b, squared, loss);
    }
    return {loss, mean_x, rstd_x, mean_y, rstd_y, product};
  }

  std::tuple<at::Tensor, at::Tensor> product_backward(const at::Tensor& grad, const at::Tensor& loss, const Sides& s,
                                                      const at::Tensor& mx, const at::Tensor& rx,
                                                      const at::Tensor& my, const at::Tensor& ry, double a, double b,
                                                      bool squared, const at::Tensor& product) {
    if (!s.y.defined()) {
      at::Tensor zx = standardized(s.x, mx, rx, *this);
      at::Tensor w = at::mm(zx, product);  // dZ = Z (S + S^T) / N: W = Z (Z^T Z)
      eitp::epilogue(zx, zx, w, rx, grad, loss, zx.size(1), a, b, squared, true, *this);
      return {w.to(s.x.scalar_type()), at::empty({0}, s.x.options())};
    }
    const auto acc = product.scalar_type();
    at::Tensor xa = s.x.to(acc), ya = s.y.to(acc);
    CoherenceRawParams p = raw_params(xa, ya, false, mx, rx, my, ry, product, 0.0, a, b, squared);
    if (!coherence_raw_applies_cpu(p))
      return backward_cross_rows(grad, loss, s, mx, rx, my, ry, a, b, squared, product, *this);
    at::Tensor m = empty_output(product.sizes(), product.options());
    at::Tensor out_x = empty_output(xa.sizes(), xa.options()), out_y = empty_output(ya.sizes(), ya.options());
    p.loss = loss.data_ptr();
    p.grad = grad.data_ptr();
    p.m = m.data_ptr();
    p.out_x = out_x.data_ptr();
    p.out_y = out_y.data_ptr();
    coherence_raw_operands_cpu(p);
    return raw_products(out_x, out_y, m, xa, ya, s);
  }
};

#ifdef EITP_WITH_CUDA
struct CudaBackend : CudaDevice {
  using CudaDevice::CudaDevice;
  // One product per Gram matrix (the half-size panels are a CPU saving); no
  // BLOCKS path: there the planner gives GRAM or PRODUCT (P is then at most
  // 4/3 of the inputs' size).
  static constexpr bool kPanelGram = false, kHasBlocks = false;
  at::Tensor scratch(int, at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);  // the caching allocator's
  }
  void stats(const CoherenceStatsParams& p) { coherence_stats_cuda(p, stream); }
  void standardize(const CoherenceStandardizeParams& p) { coherence_standardize_cuda(p, stream); }
  void epilogue(const CoherenceBackwardParams& p) { coherence_backward_epilogue_cuda(p, stream); }
  void mirror(at::Tensor&) {}  // never called (kPanelGram)
  void block_loss(const at::Tensor&, const at::Tensor&, bool, double, double, bool, at::Tensor&) {}  // kHasBlocks
  // The loss from the N x N Gram matrices by ATen ops (the CPU's one kernel,
  // coherence_gram_loss_cpu, says the same): sum_ij R_ij^2 = ||Zx^T Zy||_F^2
  // / N^2 = <Zx Zx^T, Zy Zy^T>_F / N^2, R_ii = mean_n zx_i zy_i, diag =
  // sum_i (R_ii - 1)^2, off = total - sum_i R_ii^2 (kernels/coherence.h,
  // CoherenceGramLossParams, on its accuracy).
  at::Tensor gram_loss(const at::Tensor& zx, const at::Tensor& zy, const at::Tensor& grams, double a, double b,
                       bool squared) {
    const int64_t n = zx.size(0), m = std::min(zx.size(1), zy.size(1));
    const at::Tensor gx = grams.select(0, 0), gy = grams.select(0, grams.size(0) - 1);
    const double nn = static_cast<double>(n) * static_cast<double>(n);
    at::Tensor total = (gx * gy).sum(at::kDouble) / nn;
    at::Tensor rdiag = (zx.narrow(1, 0, m) * zy.narrow(1, 0, m)).sum(0) / static_cast<double>(n);
    at::Tensor diag = (rdiag - 1.0).square().sum(at::kDouble);
    at::Tensor off = total - rdiag.square().sum(at::kDouble);
    at::Tensor l2 = diag * a + off * b;  // device ops: no host sync
    return (squared ? l2 : l2.sqrt()).to(zx.scalar_type());
  }

  // The raw form for self- and cross-correlation (self: y is x, symmetric).
  struct Raw {
    at::Tensor x, y, workspace;
    CoherenceRawParams p;
  };
  Raw raw(const Sides& s, const at::Tensor& mx, const at::Tensor& rx, const at::Tensor& my, const at::Tensor& ry,
          const at::Tensor& product, double eps, double a, double b, bool squared) {
    const bool self = !s.y.defined();
    const auto acc = accumulation_dtype(s.x);
    Raw r;
    r.x = s.x.to(acc);
    r.y = self ? r.x : s.y.to(acc);
    r.p = raw_params(r.x, r.y, self, mx, rx, self ? mx : my, self ? rx : ry, product, eps, a, b, squared);
    r.workspace = at::empty({coherence_raw_workspace_bytes(r.p.n, r.p.d, r.p.dp)}, s.x.options().dtype(at::kByte));
    r.p.workspace = r.workspace.data_ptr();
    return r;
  }

  ForwardResult product_forward(const Sides& s, double a, double b, bool squared, double eps) {
    const bool self = !s.y.defined();
    const auto options = s.x.options().dtype(accumulation_dtype(s.x));
    const int64_t d = s.x.size(1), dp = self ? d : s.y.size(1);
    at::Tensor mean_x = at::empty({d}, options), rstd_x = at::empty({d}, options);
    at::Tensor mean_y = at::empty({self ? 0 : dp}, options), rstd_y = at::empty({self ? 0 : dp}, options);
    at::Tensor product = at::empty({d, dp}, options), loss = at::empty({}, options);
    Raw r = raw(s, mean_x, rstd_x, mean_y, rstd_y, product, eps, a, b, squared);
    r.p.loss = loss.data_ptr();
    coherence_raw_stats_cuda(r.p, stream);
    at::mm_out(product, r.x.t(), r.y);
    coherence_raw_reduce_cuda(r.p, stream);
    return {loss, mean_x, rstd_x, mean_y, rstd_y, product};
  }

  std::tuple<at::Tensor, at::Tensor> product_backward(const at::Tensor& grad, const at::Tensor& loss, const Sides& s,
                                                      const at::Tensor& mx, const at::Tensor& rx,
                                                      const at::Tensor& my, const at::Tensor& ry, double a, double b,
                                                      bool squared, const at::Tensor& product) {
    Raw r = raw(s, mx, rx, my, ry, product, 0.0, a, b, squared);
    at::Tensor m = at::empty(product.sizes(), product.options());
    at::Tensor centered_x = at::empty(r.x.sizes(), r.x.options()), out_x = at::empty(r.x.sizes(), r.x.options());
    at::Tensor centered_y = s.y.defined() ? at::empty(r.y.sizes(), r.y.options()) : centered_x;
    at::Tensor out_y = s.y.defined() ? at::empty(r.y.sizes(), r.y.options()) : out_x;
    r.p.loss = const_cast<void*>(loss.data_ptr());
    r.p.grad = grad.data_ptr();
    r.p.m = m.data_ptr();
    r.p.out_x = out_x.data_ptr();
    r.p.out_y = out_y.data_ptr();
    r.p.centered_x = centered_x.data_ptr();
    r.p.centered_y = centered_y.data_ptr();
    coherence_raw_operands_cuda(r.p, stream);
    coherence_raw_center_cuda(r.p, stream);
    return raw_products(out_x, out_y, m, centered_x, centered_y, s);
  }
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
      "int path) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "coherence_backward(Tensor grad, Tensor loss, Tensor x, Tensor? y, Tensor mean_x, Tensor rstd_x, "
      "Tensor mean_y, Tensor rstd_y, Tensor product, float diag_weight, float offdiag_weight, bool squared, "
      "int path) -> (Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(eitp, CPU, m) { register_kernels<CpuBackend>(m); }
#ifdef EITP_WITH_CUDA
TORCH_LIBRARY_IMPL(eitp, CUDA, m) { register_kernels<CudaBackend>(m); }
#endif

}  // namespace eitp
