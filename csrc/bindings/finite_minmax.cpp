// eitp::finite_minmax(Tensor x) -> (Tensor lo, Tensor hi)
// x: (rows, row_length) float tensor. lo/hi: (rows,) min/max over the finite
// values of each row in the accumulation dtype (+inf/-inf for a row with none).
#include "bindings/tensor_args.h"
#include "kernels/finite_minmax.h"

namespace eitp {
namespace {

FiniteMinMaxParams make_params(const at::Tensor& x, at::Tensor& lo, at::Tensor& hi) {
  FiniteMinMaxParams p;
  p.x = x.data_ptr();
  p.dtype = kernel_dtype(x, "finite_minmax");
  p.rows = x.size(0);
  p.row_length = x.size(1);
  p.lo = lo.data_ptr();
  p.hi = hi.data_ptr();
  return p;
}

void check_x(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 2, "finite_minmax: x must be 2-D (rows, row_length), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(is_float_dtype(x), "finite_minmax: x must be a float tensor, got ", x.scalar_type());
}

// The kernels write every row's lo/hi (nothing pre-filled); scratch(rows,
// row_length) is the accumulation-dtype scratch a backend's kernels need.
struct CpuBackend : CpuDevice {
  using CpuDevice::CpuDevice;
  static int64_t scratch(int64_t, int64_t) { return 0; }
  void finite_minmax(const FiniteMinMaxParams& p, void*) { finite_minmax_cpu(p); }
};

#ifdef EITP_WITH_CUDA
struct CudaBackend : CudaDevice {
  using CudaDevice::CudaDevice;
  static int64_t scratch(int64_t rows, int64_t row_length) { return finite_minmax_cuda_scratch(rows, row_length); }
  void finite_minmax(const FiniteMinMaxParams& p, void* scratch) { finite_minmax_cuda(p, scratch, stream); }
};
#endif

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> finite_minmax_impl(const at::Tensor& x_in) {
  Backend be(x_in);
  check_x(x_in);
  const auto options = x_in.options().dtype(accumulation_dtype(x_in));
  const int64_t rows = x_in.size(0);
  if (x_in.numel() == 0) {  // rows of no element: nothing for a kernel to write
    const double inf = std::numeric_limits<double>::infinity();
    return {at::full({rows}, inf, options), at::full({rows}, -inf, options)};
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor lo = at::empty({rows}, options), hi = at::empty({rows}, options);
  at::Tensor scratch = at::empty({Backend::scratch(rows, x.size(1))}, options);
  be.finite_minmax(make_params(x, lo, hi), scratch.data_ptr());
  return {lo, hi};
}

// The schema's kernels for one device: its Backend's instantiations.
template <typename Backend>
void register_kernels(torch::Library& m) {
  m.impl("finite_minmax", &finite_minmax_impl<Backend>);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(eitp, m) { m.def("finite_minmax(Tensor x) -> (Tensor, Tensor)"); }
TORCH_LIBRARY_IMPL(eitp, CPU, m) { register_kernels<CpuBackend>(m); }
#ifdef EITP_WITH_CUDA
TORCH_LIBRARY_IMPL(eitp, CUDA, m) { register_kernels<CudaBackend>(m); }
#endif

}  // namespace eitp
