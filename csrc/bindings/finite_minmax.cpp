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

std::tuple<at::Tensor, at::Tensor> check_and_allocate(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 2, "finite_minmax: x must be 2-D (rows, row_length), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(is_float_dtype(x), "finite_minmax: x must be a float tensor, got ", x.scalar_type());
  const auto options = x.options().dtype(accumulation_dtype(x));
  const double inf = std::numeric_limits<double>::infinity();
  return {at::full({x.size(0)}, inf, options), at::full({x.size(0)}, -inf, options)};
}

struct CpuBackend : CpuDevice {
  using CpuDevice::CpuDevice;
  void finite_minmax(const FiniteMinMaxParams& p) { finite_minmax_cpu(p); }
};

#ifdef EITP_WITH_CUDA
struct CudaBackend : CudaDevice {
  using CudaDevice::CudaDevice;
  void finite_minmax(const FiniteMinMaxParams& p) { finite_minmax_cuda(p, stream); }
};
#endif

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> finite_minmax_impl(const at::Tensor& x_in) {
  Backend be(x_in);
  auto [lo, hi] = check_and_allocate(x_in);
  const at::Tensor x = x_in.contiguous();
  if (x.numel() > 0) be.finite_minmax(make_params(x, lo, hi));
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
