// Histogram entropy operators (docs/design.md §2.1). Rows are 1-D histograms; the
// Python wrapper makes the (rows, row_length) view and the range.
//
// eitp::histogram_counts(Tensor x, Tensor? lo, Tensor? hi, int bins, bool explicit_range) -> Tensor
//     x (rows, L) float or int8/uint8 codes; lo/hi (rows,) in the accumulation
//     dtype (None for codes). Returns int64 counts (rows, bins).
// eitp::histogram_counts_with_range(Tensor x, int bins, float[]? range=None) -> Tensor
//     histogram_counts of a float x over range = [lo, hi] (explicit: values
//     outside are dropped; each bound rounded to the accumulation dtype, as
//     a filled lo/hi tensor holds it) or, when None, over each row's finite
//     min/max (the automatic range, finite_minmax's), found inside the op. On
//     CUDA: the range pass (which also zeroes the counts) and the counting
//     pass, whose blocks fold their row's range partials; with a range, the
//     zero fill and the counting pass (the range as kernel arguments).
//     Returns int64 counts (rows, bins).
// eitp::histogram_counts_many(Tensor[] xs, int bins, float[]? range) -> Tensor
//     one histogram per tensor (all elements; automatic finite range per
//     tensor unless range = [lo, hi]). Returns int64 counts (len(xs), bins).
// eitp::soft_histogram(Tensor x, Tensor lo, Tensor hi, int bins, bool explicit_range) -> Tensor
//     linear-binning counts, float64 (rows, bins).
// eitp::soft_histogram_backward(Tensor grad_counts, Tensor x, Tensor lo, Tensor hi, int bins,
//                               bool explicit_range) -> Tensor
//     dL/dx = (g[k+1] - g[k]) / w for live values, in the accumulation dtype.
// eitp::entropy_from_counts(Tensor counts, float? log_base, ScalarType? dtype=None) -> Tensor
//     H = -sum_{c>0} p ln p per row, computed in float64 (NaN for an empty
//     row; / log_base), written as dtype: float64 (None) or float32.
#include <algorithm>
#include <optional>

#include "bindings/tensor_args.h"
#include "kernels/entropy.h"
#include "kernels/finite_minmax.h"
#ifdef EITP_WITH_CUDA
#include "kernels/entropy_many.h"
#endif

namespace eitp {
namespace {

bool is_code_dtype(const at::Tensor& t) { return t.scalar_type() == at::kChar || t.scalar_type() == at::kByte; }

void check_bins(int64_t bins, const char* op) {
  TORCH_CHECK_VALUE(bins >= 1 && bins <= kMaxBins, op, ": bins must be in [1, ", kMaxBins, "], got ", bins);
}

void check_range_tensor(const at::Tensor& x, const at::Tensor& r, const char* name, const char* op) {
  TORCH_CHECK_VALUE(r.dim() == 1 && r.size(0) == x.size(0), op, ": ", name, " must have shape (rows,) = (", x.size(0),
                    ",), got ", r.sizes());
  TORCH_CHECK_TYPE(r.scalar_type() == accumulation_dtype(x), op, ": ", name, " must have dtype ",
                   accumulation_dtype(x), ", got ", r.scalar_type());
  TORCH_CHECK_VALUE(r.device() == x.device(), op, ": ", name, " is on ", r.device(), " but x is on ", x.device());
}

// ---------------------------------------------------------------- histogram_counts

struct CountsArgs {
  at::Tensor x, lo, hi, counts;
};

CountsArgs prepare_counts(const at::Tensor& x_in, const std::optional<at::Tensor>& lo,
                          const std::optional<at::Tensor>& hi, int64_t bins, bool explicit_range) {
  const char* op = "histogram_counts";
  TORCH_CHECK_VALUE(x_in.dim() == 2, op, ": x must be 2-D (rows, row_length), got ", x_in.dim(), "-D");
  TORCH_CHECK_TYPE(is_float_dtype(x_in) || is_code_dtype(x_in), op, ": x must be a float or int8/uint8 tensor, got ",
                   x_in.scalar_type());
  check_bins(bins, op);
  CountsArgs a;
  a.x = x_in.contiguous();
  if (is_code_dtype(x_in)) {
    TORCH_CHECK_VALUE(bins == 256, op, ": int8/uint8 codes need bins == 256, got ", bins);
  } else {
    TORCH_CHECK_VALUE(lo.has_value() && hi.has_value(), op, ": a float x needs lo and hi");
    check_range_tensor(x_in, *lo, "lo", op);
    check_range_tensor(x_in, *hi, "hi", op);
    a.lo = lo->contiguous();
    a.hi = hi->contiguous();
  }
  a.counts = at::zeros({x_in.size(0), bins}, x_in.options().dtype(at::kLong));
  return a;
}

HistogramParams counts_params(const CountsArgs& a, int64_t bins, bool explicit_range) {
  HistogramParams p;
  p.x = a.x.data_ptr();
  p.dtype = kernel_dtype(a.x, "histogram_counts");
  p.rows = a.x.size(0);
  p.row_length = a.x.size(1);
  p.lo = a.lo.defined() ? a.lo.data_ptr() : nullptr;
  p.hi = a.hi.defined() ? a.hi.data_ptr() : nullptr;
  p.bins = bins;
  p.explicit_range = explicit_range;
  p.counts = a.counts.data_ptr<int64_t>();
  return p;
}

// ---------------------------------------------------------------- histogram_counts_with_range

void check_with_range(const at::Tensor& x, int64_t bins, const std::optional<at::ArrayRef<double>>& range) {
  const char* op = "histogram_counts_with_range";
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (rows, row_length), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(is_float_dtype(x), op, ": x must be a float tensor, got ", x.scalar_type());
  check_bins(bins, op);
  TORCH_CHECK_VALUE(!range.has_value() || range->size() == 2, op, ": range must be [lo, hi]");
}

// The parameters of a count whose range is the backend's to supply (lo, hi
// null here).
HistogramParams with_range_params(const at::Tensor& x, int64_t bins, at::Tensor& counts) {
  const char* op = "histogram_counts_with_range";
  HistogramParams p;
  p.x = x.data_ptr();
  p.dtype = kernel_dtype(x, op);
  p.rows = x.size(0);
  p.row_length = x.size(1);
  p.lo = p.hi = nullptr;
  p.bins = bins;
  p.explicit_range = false;
  p.counts = counts.data_ptr<int64_t>();
  return p;
}

// ---------------------------------------------------------------- histogram_counts_many

void check_many(const at::TensorList xs, int64_t bins, const std::optional<at::ArrayRef<double>>& range) {
  const char* op = "histogram_counts_many";
  check_bins(bins, op);
  TORCH_CHECK_VALUE(!range.has_value() || range->size() == 2, op, ": range must be [lo, hi]");
  for (size_t i = 0; i < xs.size(); ++i) {
    TORCH_CHECK_TYPE(is_float_dtype(xs[i]) || is_code_dtype(xs[i]), op, ": tensors[", i,
                     "] must be a float or int8/uint8 tensor, got ", xs[i].scalar_type());
    TORCH_CHECK_VALUE(xs[i].device() == xs[0].device(), op, ": tensors[", i, "] is on ", xs[i].device(),
                      " but tensors[0] is on ", xs[0].device());
    if (is_code_dtype(xs[i])) {
      TORCH_CHECK_VALUE(bins == 256 && !range.has_value(), op, ": tensors[", i,
                        "] holds int8/uint8 codes, which need bins == 256 and no range");
    }
  }
}

// An explicit range bound rounded to t's accumulation dtype, as the reference does.
double range_in_acc(double v, const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? v : static_cast<double>(static_cast<float>(v));
}

// Every tensor of xs as one segment of the threaded CPU counting pass.
at::Tensor counts_many_cpu(const at::TensorList xs, int64_t bins, const std::optional<at::ArrayRef<double>>& range) {
  std::vector<at::Tensor> keep;
  keep.reserve(xs.size());
  std::vector<HistSegment> segs(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    keep.push_back(xs[i].contiguous());
    segs[i].x = keep.back().data_ptr();
    segs[i].dtype = kernel_dtype(keep.back(), "histogram_counts_many");
    segs[i].length = keep.back().numel();
    if (range.has_value()) {
      segs[i].lo = range_in_acc((*range)[0], keep.back());
      segs[i].hi = range_in_acc((*range)[1], keep.back());
    }
  }
  at::Tensor counts = at::zeros({static_cast<int64_t>(xs.size()), bins}, at::TensorOptions().dtype(at::kLong));
  if (!xs.empty()) histogram_counts_segments_cpu(segs, bins, range.has_value(), counts.data_ptr<int64_t>());
  return counts;
}

// ---------------------------------------------------------------- soft histogram

struct SoftArgs {
  at::Tensor x, lo, hi;
};

SoftArgs prepare_soft(const char* op, const at::Tensor& x_in, const at::Tensor& lo, const at::Tensor& hi,
                      int64_t bins) {
  TORCH_CHECK_VALUE(x_in.dim() == 2, op, ": x must be 2-D (rows, row_length), got ", x_in.dim(), "-D");
  TORCH_CHECK_TYPE(is_float_dtype(x_in), op, ": x must be a float tensor, got ", x_in.scalar_type());
  check_bins(bins, op);
  check_range_tensor(x_in, lo, "lo", op);
  check_range_tensor(x_in, hi, "hi", op);
  return {x_in.contiguous(), lo.contiguous(), hi.contiguous()};
}

SoftHistogramParams soft_params(const SoftArgs& a, int64_t bins, bool explicit_range, at::Tensor& counts) {
  SoftHistogramParams p;
  p.x = a.x.data_ptr();
  p.dtype = kernel_dtype(a.x, "soft_histogram");
  p.rows = a.x.size(0);
  p.row_length = a.x.size(1);
  p.lo = a.lo.data_ptr();
  p.hi = a.hi.data_ptr();
  p.bins = bins;
  p.explicit_range = explicit_range;
  p.counts = counts.data_ptr<double>();
  return p;
}

struct SoftBackwardArgs {
  SoftArgs a;
  at::Tensor grad_counts, grad_x;
};

SoftBackwardArgs prepare_soft_backward(const at::Tensor& grad_counts, const at::Tensor& x, const at::Tensor& lo,
                                       const at::Tensor& hi, int64_t bins) {
  const char* op = "soft_histogram_backward";
  SoftBackwardArgs b;
  b.a = prepare_soft(op, x, lo, hi, bins);
  TORCH_CHECK_VALUE(grad_counts.dim() == 2 && grad_counts.size(0) == x.size(0) && grad_counts.size(1) == bins, op,
                    ": grad_counts must have shape (rows, bins) = (", x.size(0), ", ", bins, "), got ",
                    grad_counts.sizes());
  TORCH_CHECK_VALUE(grad_counts.device() == x.device(), op, ": grad_counts is on ", grad_counts.device(),
                    " but x is on ", x.device());
  b.grad_counts = grad_counts.to(at::kDouble).contiguous();
  b.grad_x = at::empty(x.sizes(), x.options().dtype(accumulation_dtype(x)));
  return b;
}

SoftHistogramBackwardParams soft_backward_params(SoftBackwardArgs& b, int64_t bins, bool explicit_range) {
  SoftHistogramBackwardParams p;
  p.x = b.a.x.data_ptr();
  p.dtype = kernel_dtype(b.a.x, "soft_histogram_backward");
  p.rows = b.a.x.size(0);
  p.row_length = b.a.x.size(1);
  p.lo = b.a.lo.data_ptr();
  p.hi = b.a.hi.data_ptr();
  p.bins = bins;
  p.explicit_range = explicit_range;
  p.grad_counts = b.grad_counts.data_ptr<double>();
  p.grad_x = b.grad_x.data_ptr();
  return p;
}

// ---------------------------------------------------------------- entropy_from_counts

EntropyFromCountsParams entropy_params(const at::Tensor& counts, std::optional<double> log_base, at::Tensor& out) {
  EntropyFromCountsParams p;
  p.counts = counts.data_ptr();
  p.counts_are_int = counts.scalar_type() == at::kLong;
  p.rows = counts.size(0);
  p.bins = counts.size(1);
  p.log_base = log_base.has_value() ? *log_base : 0.0;
  p.out = out.data_ptr();
  p.out_is_float = out.scalar_type() == at::kFloat;
  return p;
}

at::ScalarType entropy_dtype(std::optional<at::ScalarType> dtype) {
  const at::ScalarType d = dtype.value_or(at::kDouble);
  TORCH_CHECK_TYPE(d == at::kDouble || d == at::kFloat, "entropy_from_counts: dtype must be float64 or float32, got ",
                   d);
  return d;
}

at::Tensor check_counts(const at::Tensor& counts) {
  const char* op = "entropy_from_counts";
  TORCH_CHECK_VALUE(counts.dim() == 2, op, ": counts must be 2-D (rows, bins), got ", counts.dim(), "-D");
  TORCH_CHECK_TYPE(counts.scalar_type() == at::kLong || counts.scalar_type() == at::kDouble, op,
                   ": counts must be int64 or float64, got ", counts.scalar_type());
  return counts.contiguous();
}

// ---------------------------------------------------------------- backends

// range_scratch(rows, row_length, auto_range): accumulation-dtype values
// that counts_auto_range / counts_given_range need for the range.
struct CpuBackend : CpuDevice {
  using CpuDevice::CpuDevice;
  void counts(const HistogramParams& p) { histogram_counts_cpu(p); }
  static int64_t range_scratch(int64_t rows, int64_t, bool) { return 2 * rows; }
  // The range (p.range_lo, p.range_hi) in every row's lo / hi slot of the
  // scratch, then the counts (zero-filled by the caller).
  void counts_given_range(HistogramParams p, void* scratch) {
    if (p.dtype == DType::kFloat64) {
      fill_range<double>(p, scratch);
    } else {
      fill_range<float>(p, scratch);
    }
    histogram_counts_cpu(p);
  }
  template <typename A> static void fill_range(HistogramParams& p, void* scratch) {
    A* lo = static_cast<A*>(scratch);
    std::fill_n(lo, p.rows, static_cast<A>(p.range_lo));
    std::fill_n(lo + p.rows, p.rows, static_cast<A>(p.range_hi));
    p.lo = lo;
    p.hi = lo + p.rows;
  }
  // finite_minmax_cpu into the scratch (lo of every row, then hi), then the
  // counts: the same two passes as the finite_minmax and histogram_counts ops.
  void counts_auto_range(HistogramParams p, void* scratch) {
    const size_t acc_size = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
    void* lo = scratch;
    void* hi = static_cast<char*>(scratch) + static_cast<size_t>(p.rows) * acc_size;
    finite_minmax_cpu(FiniteMinMaxParams{p.x, p.dtype, p.rows, p.row_length, lo, hi});
    p.lo = lo;
    p.hi = hi;
    std::fill_n(p.counts, p.rows * p.bins, int64_t(0));
    histogram_counts_cpu(p);
  }
  at::Tensor counts_many(const at::TensorList xs, int64_t bins, const std::optional<at::ArrayRef<double>>& range) {
    return counts_many_cpu(xs, bins, range);
  }
  void soft(const SoftHistogramParams& p) { soft_histogram_cpu(p); }
  void soft_backward(const SoftHistogramBackwardParams& p) { soft_histogram_backward_cpu(p); }
  void entropy(const EntropyFromCountsParams& p) { entropy_from_counts_cpu(p); }
};

#ifdef EITP_WITH_CUDA
// The segment table of the tensors (kernels/entropy_many.h) in pinned host
// memory: data addresses, lengths, dtypes, ranges (+inf/-inf for the
// automatic range) and the prefix sum of work items.
at::Tensor host_segment_table(const std::vector<at::Tensor>& xs, int64_t chunk,
                              const std::optional<at::ArrayRef<double>>& range, int64_t& items) {
  const int64_t n = static_cast<int64_t>(xs.size());
  at::Tensor host = at::empty({segment_table_slots(n)}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  const SegmentTable t = segment_table_view(host.data_ptr<int64_t>(), n, chunk);
  const double inf = std::numeric_limits<double>::infinity();
  items = 0;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& x = xs[i];
    t.block_start[i] = items;
    items += (x.numel() + chunk - 1) / chunk;
    t.x[i] = reinterpret_cast<int64_t>(x.data_ptr());
    t.length[i] = x.numel();
    t.dtype[i] = static_cast<int64_t>(kernel_dtype(x, "histogram_counts_many"));
    t.lo[i] = range.has_value() ? range_in_acc((*range)[0], x) : inf;  // codes ignore it
    t.hi[i] = range.has_value() ? range_in_acc((*range)[1], x) : -inf;
  }
  t.block_start[n] = items;
  return host;
}

// Every tensor in 2 kernel launches (range pass unless the range is given or
// there are only codes; counting pass) after one host-to-device copy of the
// segment table, all on the current stream, no host sync. A non-contiguous
// tensor is first copied to a contiguous one.
at::Tensor counts_many_cuda(const at::TensorList xs_in, int64_t bins, const std::optional<at::ArrayRef<double>>& range,
                            cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(xs_in.size());
  std::vector<at::Tensor> xs;  // keeps contiguous copies alive until the launches are queued
  xs.reserve(xs_in.size());
  bool any_float = false;
  for (const at::Tensor& x : xs_in) {
    xs.push_back(x.contiguous());
    any_float = any_float || is_float_dtype(x);
  }
  HistogramManyParams p;
  p.bins = bins;
  p.explicit_range = range.has_value();
  p.auto_range_pass = !range.has_value() && any_float;
  const int64_t chunk = histogram_chunk(bins);
  const at::Tensor host = host_segment_table(xs, chunk, range, p.items);
  // pinned + non_blocking: an async copy; the caching host allocator keeps the
  // pinned block until the copy has run
  at::Tensor table = host.to(xs_in[0].device(), at::kLong, /*non_blocking=*/true);
  p.table = segment_table_view(table.data_ptr<int64_t>(), n, chunk);
  at::Tensor counts = at::zeros({n, bins}, xs_in[0].options().dtype(at::kLong));
  p.counts = counts.data_ptr<int64_t>();
  histogram_counts_many_cuda(p, stream);
  return counts;
}

struct CudaBackend : CudaDevice {
  using CudaDevice::CudaDevice;
  void counts(const HistogramParams& p) { histogram_counts_cuda(p, stream); }
  static int64_t range_scratch(int64_t rows, int64_t row_length, bool auto_range) {
    return auto_range ? 2 * rows * range_blocks_per_row(row_length) : 0;
  }
  // One launch: the counting pass with the range as kernel arguments (the
  // caller zero-filled the counts).
  void counts_given_range(HistogramParams p, void*) {
    p.range_partials_per_row = kScalarRange;
    histogram_counts_cuda(p, stream);
  }
  // Two launches: the range pass (its partials into the scratch; it zeroes
  // the counts) and the counting pass, whose blocks fold their row's partials.
  void counts_auto_range(HistogramParams p, void* scratch) {
    finite_minmax_partials_cuda(FiniteMinMaxParams{p.x, p.dtype, p.rows, p.row_length, nullptr, nullptr}, scratch,
                                p.counts, p.bins, stream);
    const int64_t per_row = range_blocks_per_row(p.row_length);
    const size_t acc_size = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
    p.lo = scratch;
    p.hi = static_cast<char*>(scratch) + static_cast<size_t>(p.rows * per_row) * acc_size;
    p.range_partials_per_row = per_row;
    histogram_counts_cuda(p, stream);
  }
  at::Tensor counts_many(const at::TensorList xs, int64_t bins, const std::optional<at::ArrayRef<double>>& range) {
    return counts_many_cuda(xs, bins, range, stream);
  }
  void soft(const SoftHistogramParams& p) { soft_histogram_cuda(p, stream); }
  void soft_backward(const SoftHistogramBackwardParams& p) { soft_histogram_backward_cuda(p, stream); }
  void entropy(const EntropyFromCountsParams& p) { entropy_from_counts_cuda(p, stream); }
};
#endif

// ---------------------------------------------------------------- the ops

template <typename Backend>
at::Tensor histogram_counts_impl(const at::Tensor& x, const std::optional<at::Tensor>& lo,
                                 const std::optional<at::Tensor>& hi, int64_t bins, bool explicit_range) {
  Backend be(x);
  CountsArgs a = prepare_counts(x, lo, hi, bins, explicit_range);
  if (a.x.numel() > 0) be.counts(counts_params(a, bins, explicit_range));
  return a.counts;
}

template <typename Backend>
at::Tensor histogram_counts_with_range_impl(const at::Tensor& x_in, int64_t bins,
                                           std::optional<at::ArrayRef<double>> range) {
  Backend be(x_in);
  check_with_range(x_in, bins, range);
  const at::Tensor x = x_in.contiguous();
  // The automatic range's pass zeroes the counts itself; rows of no element
  // have nothing for the kernels to write.
  const bool auto_range = !range.has_value();
  const auto counts_options = x.options().dtype(at::kLong);
  at::Tensor counts = auto_range && x.numel() > 0 ? at::empty({x.size(0), bins}, counts_options)
                                                  : at::zeros({x.size(0), bins}, counts_options);
  if (x.numel() == 0) return counts;
  HistogramParams p = with_range_params(x, bins, counts);
  at::Tensor scratch = at::empty({Backend::range_scratch(p.rows, p.row_length, auto_range)},
                                 x.options().dtype(accumulation_dtype(x)));
  if (auto_range) {
    be.counts_auto_range(p, scratch.data_ptr());
  } else {
    p.explicit_range = true;
    p.range_lo = range_in_acc((*range)[0], x);
    p.range_hi = range_in_acc((*range)[1], x);
    be.counts_given_range(p, scratch.data_ptr());
  }
  return counts;
}

template <typename Backend>
at::Tensor histogram_counts_many_impl(const at::TensorList xs, int64_t bins,
                                      std::optional<at::ArrayRef<double>> range) {
  check_many(xs, bins, range);
  Backend be(xs);
  return be.counts_many(xs, bins, range);
}

template <typename Backend>
at::Tensor soft_histogram_impl(const at::Tensor& x, const at::Tensor& lo, const at::Tensor& hi, int64_t bins,
                               bool explicit_range) {
  Backend be(x);
  SoftArgs a = prepare_soft("soft_histogram", x, lo, hi, bins);
  at::Tensor counts = at::zeros({x.size(0), bins}, x.options().dtype(at::kDouble));
  if (a.x.numel() > 0) be.soft(soft_params(a, bins, explicit_range, counts));
  return counts;
}

template <typename Backend>
at::Tensor soft_histogram_backward_impl(const at::Tensor& grad_counts, const at::Tensor& x, const at::Tensor& lo,
                                        const at::Tensor& hi, int64_t bins, bool explicit_range) {
  Backend be(x);
  SoftBackwardArgs b = prepare_soft_backward(grad_counts, x, lo, hi, bins);
  if (x.numel() > 0) be.soft_backward(soft_backward_params(b, bins, explicit_range));
  return b.grad_x;
}

template <typename Backend>
at::Tensor entropy_from_counts_impl(const at::Tensor& counts_in, std::optional<double> log_base,
                                   std::optional<at::ScalarType> dtype) {
  Backend be(counts_in);
  const at::Tensor counts = check_counts(counts_in);
  at::Tensor out = at::empty({counts.size(0)}, counts.options().dtype(entropy_dtype(dtype)));
  if (counts.size(0) > 0) be.entropy(entropy_params(counts, log_base, out));
  return out;
}

// The schema's kernels for one device: its Backend's instantiations.
template <typename Backend>
void register_kernels(torch::Library& m) {
  m.impl("histogram_counts", &histogram_counts_impl<Backend>);
  m.impl("histogram_counts_with_range", &histogram_counts_with_range_impl<Backend>);
  m.impl("histogram_counts_many", &histogram_counts_many_impl<Backend>);
  m.impl("soft_histogram", &soft_histogram_impl<Backend>);
  m.impl("soft_histogram_backward", &soft_histogram_backward_impl<Backend>);
  m.impl("entropy_from_counts", &entropy_from_counts_impl<Backend>);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(eitp, m) {
  m.def("histogram_counts(Tensor x, Tensor? lo, Tensor? hi, int bins, bool explicit_range) -> Tensor");
  m.def("histogram_counts_with_range(Tensor x, int bins, float[]? range=None) -> Tensor");
  // cudagraph_unsafe: the CUDA impl copies a host-built table (data addresses)
  // from pinned memory that is reused after the call, so a captured graph
  // would replay a stale copy; torch.compile's CUDA graphs leave it outside.
  m.def("histogram_counts_many(Tensor[] xs, int bins, float[]? range) -> Tensor", {at::Tag::cudagraph_unsafe});
  m.def("soft_histogram(Tensor x, Tensor lo, Tensor hi, int bins, bool explicit_range) -> Tensor");
  m.def(
      "soft_histogram_backward(Tensor grad_counts, Tensor x, Tensor lo, Tensor hi, int bins, bool explicit_range) "
      "-> Tensor");
  m.def("entropy_from_counts(Tensor counts, float? log_base, ScalarType? dtype=None) -> Tensor");
}
TORCH_LIBRARY_IMPL(eitp, CPU, m) { register_kernels<CpuBackend>(m); }
#ifdef EITP_WITH_CUDA
TORCH_LIBRARY_IMPL(eitp, CUDA, m) { register_kernels<CudaBackend>(m); }
#endif

}  // namespace eitp
