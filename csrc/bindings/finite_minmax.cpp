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

std::tuple<at::Tensor, at::Tensor> finite_minmax_cpu_impl(const at::Tensor& x_in) {
  auto [lo, hi] = check_and_allocate(x_in);
  const at::Tensor x = x_in.contiguous();
  if (x.numel() > 0) finite_minmax_cpu(make_params(x, lo, hi));
  return {lo, hi};
}

#ifdef EITP_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> finite_minmax_cuda_impl(const at::Tensor& x_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto [lo, hi] = check_and_allocate(x_in);
  const at::Tensor x = x_in.contiguous();
  if (x.numel() > 0) finite_minmax_cuda(make_params(x, lo, hi), c10::cuda::getCurrentCUDAStream().stream());
  return {lo, hi};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(eitp, m) { m.def("finite_minmax(Tensor x) -> (Tensor, Tensor)"); }
TORCH_LIBRARY_IMPL(eitp, CPU, m) { m.impl("finite_minmax", &finite_minmax_cpu_impl); }
#ifdef EITP_WITH_CUDA
TORCH_LIBRARY_IMPL(eitp, CUDA, m) { m.impl("finite_minmax", &finite_minmax_cuda_impl); }
#endif

}  // namespace eitp
