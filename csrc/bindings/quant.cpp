// int8 quantization ops over (rows, row_length) views, one scale per row:
//
// eitp::quantize_int8_rows(Tensor x, Tensor? scale, Tensor? zero_point, bool symmetric)
//     -> (Tensor q, Tensor scale, Tensor zero_point)
// eitp::fake_quant_int8_rows(Tensor x, Tensor? scale, Tensor? zero_point, bool symmetric)
//     -> (Tensor out, Tensor scale, Tensor zero_point)
// eitp::dequantize_int8_rows(Tensor q, Tensor scale, Tensor? zero_point, ScalarType dtype) -> Tensor
// eitp::fake_quant_int8_rows_backward(Tensor grad, Tensor x, Tensor scale, Tensor? zero_point,
//     bool symmetric) -> Tensor
//
// x: (rows, row_length) float. scale: (rows,) float32; zero_point: (rows,) int32.
// scale given = static quantization (affine also needs zero_point); scale None
// = computed per row (returned zero_point is all 0 for symmetric). q int8;
// out in x's dtype. The backward gives grad where the straight-through
// estimator passes and 0 elsewhere.
#include "bindings/tensor_args.h"
#include "kernels/quant.h"

namespace eitp {
namespace {

void check_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (rows, row_length), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(is_float_dtype(x), op, ": x must be a float tensor, got ", x.scalar_type());
}

void check_per_row(const at::Tensor& x, const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), op, ": ", name, " must have shape (", x.size(0),
                    ",), got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

struct QuantArgs {
  at::Tensor x, scale, zero_point, workspace;
  bool static_scale;
};

QuantArgs prepare_quant(const at::Tensor& x_in, const std::optional<at::Tensor>& scale,
                        const std::optional<at::Tensor>& zero_point, bool symmetric, const char* op) {
  check_rows(x_in, op);
  QuantArgs a;
  a.x = x_in.contiguous();
  a.static_scale = scale.has_value();
  const int64_t rows = x_in.size(0);
  if (a.static_scale) {
    check_per_row(x_in, *scale, op, "scale", at::kFloat);
    a.scale = scale->contiguous().clone();
    if (symmetric) {
      a.zero_point = at::zeros({rows}, x_in.options().dtype(at::kInt));
    } else {
      TORCH_CHECK_VALUE(zero_point.has_value(), op, ": a static affine scale needs a zero_point");
      check_per_row(x_in, *zero_point, op, "zero_point", at::kInt);
      a.zero_point = zero_point->contiguous().clone();
    }
  } else {
    TORCH_CHECK_VALUE(!zero_point.has_value(), op, ": zero_point is given without a scale");
    a.scale = at::empty({rows}, x_in.options().dtype(at::kFloat));
    a.zero_point = at::empty({rows}, x_in.options().dtype(at::kInt));
  }
  return a;
}

QuantRowsParams make_params(QuantArgs& a, bool symmetric, int8_t* q, void* out, const char* op) {
  QuantRowsParams p;
  p.x = a.x.data_ptr();
  p.dtype = kernel_dtype(a.x, op);
  p.rows = a.x.size(0);
  p.row_length = a.x.size(1);
  p.symmetric = symmetric;
  p.static_scale = a.static_scale;
  p.scale = a.scale.data_ptr<float>();
  p.zero_point = a.zero_point.data_ptr<int32_t>();
  p.q = q;
  p.out = out;
  p.workspace = a.workspace.defined() ? a.workspace.data_ptr() : nullptr;
  return p;
}

struct CpuBackend : CpuDevice {
  using CpuDevice::CpuDevice;
  static constexpr bool kScaleWorkspace = false;
  void quantize(const QuantRowsParams& p) { quantize_int8_rows_cpu(p); }
  void dequantize(const DequantRowsParams& p) { dequantize_int8_rows_cpu(p); }
  void fake_quant_backward(const FakeQuantBackwardParams& p) { fake_quant_int8_rows_backward_cpu(p); }
};

#ifdef EITP_WITH_CUDA
struct CudaBackend : CudaDevice {
  using CudaDevice::CudaDevice;
  // Computed scales need QuantRowsParams::workspace (kernels/quant.h).
  static constexpr bool kScaleWorkspace = true;
  void quantize(const QuantRowsParams& p) { quantize_int8_rows_cuda(p, stream); }
  void dequantize(const DequantRowsParams& p) { dequantize_int8_rows_cuda(p, stream); }
  void fake_quant_backward(const FakeQuantBackwardParams& p) { fake_quant_int8_rows_backward_cuda(p, stream); }
};
#endif

template <bool kFake, typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> quant_impl(const at::Tensor& x_in, const std::optional<at::Tensor>& scale,
                                                          const std::optional<at::Tensor>& zero_point, bool symmetric) {
  const char* op = kFake ? "fake_quant_int8_rows" : "quantize_int8_rows";
  Backend be(x_in);
  QuantArgs a = prepare_quant(x_in, scale, zero_point, symmetric, op);
  at::Tensor result = empty_output(a.x.sizes(), kFake ? a.x.options() : a.x.options().dtype(at::kChar));
  if (Backend::kScaleWorkspace && !a.static_scale)
    a.workspace = at::empty({quant_cuda_workspace(a.x.size(0), a.x.size(1))},
                            a.x.options().dtype(accumulation_dtype(a.x)));
  if (a.x.size(0) > 0)
    be.quantize(make_params(a, symmetric, kFake ? nullptr : result.data_ptr<int8_t>(),
                            kFake ? result.data_ptr() : nullptr, op));
  return {result, a.scale, a.zero_point};
}

template <typename Backend>
at::Tensor dequant_impl(const at::Tensor& q_in, const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                        at::ScalarType dtype) {
  const char* op = "dequantize_int8_rows";
  Backend be(q_in);
  TORCH_CHECK_VALUE(q_in.dim() == 2, op, ": q must be 2-D (rows, row_length), got ", q_in.dim(), "-D");
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kChar, op, ": q must be int8, got ", q_in.scalar_type());
  TORCH_CHECK_TYPE(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, op,
                   ": dtype must be a float dtype, got ", dtype);
  check_per_row(q_in, scale, op, "scale", at::kFloat);
  if (zero_point.has_value()) check_per_row(q_in, *zero_point, op, "zero_point", at::kInt);
  const at::Tensor q = q_in.contiguous(), s = scale.contiguous();
  const at::Tensor zp = zero_point.has_value() ? zero_point->contiguous() : at::Tensor();
  at::Tensor out = empty_output(q.sizes(), q.options().dtype(dtype));
  if (q.numel() > 0) {
    DequantRowsParams p;
    p.q = q.data_ptr<int8_t>();
    p.rows = q.size(0);
    p.row_length = q.size(1);
    p.scale = s.data_ptr<float>();
    p.zero_point = zp.defined() ? zp.data_ptr<int32_t>() : nullptr;
    p.out_dtype = kernel_dtype(out, op);
    p.out = out.data_ptr();
    be.dequantize(p);
  }
  return out;
}

template <typename Backend>
at::Tensor backward_impl(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& scale,
                         const std::optional<at::Tensor>& zero_point, bool symmetric) {
  const char* op = "fake_quant_int8_rows_backward";
  Backend be(x_in);
  check_rows(x_in, op);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes(), op, ": grad must have x's shape ", x_in.sizes(), ", got ",
                    grad_in.sizes());
  TORCH_CHECK_VALUE(grad_in.device() == x_in.device(), op, ": grad is on ", grad_in.device(), " but x is on ",
                    x_in.device());
  check_per_row(x_in, scale, op, "scale", at::kFloat);
  if (zero_point.has_value()) check_per_row(x_in, *zero_point, op, "zero_point", at::kInt);
  const at::Tensor x = x_in.contiguous(), s = scale.contiguous();
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  const at::Tensor zp = zero_point.has_value() ? zero_point->contiguous() : at::Tensor();
  at::Tensor grad_x = empty_output(x.sizes(), x.options());
  if (x.numel() > 0) {
    FakeQuantBackwardParams p;
    p.grad = grad.data_ptr();
    p.x = x.data_ptr();
    p.dtype = kernel_dtype(x, op);
    p.rows = x.size(0);
    p.row_length = x.size(1);
    p.symmetric = symmetric;
    p.scale = s.data_ptr<float>();
    p.zero_point = zp.defined() ? zp.data_ptr<int32_t>() : nullptr;
    p.grad_x = grad_x.data_ptr();
    be.fake_quant_backward(p);
  }
  return grad_x;
}

// The schema's kernels for one device: its Backend's instantiations.
template <typename Backend>
void register_kernels(torch::Library& m) {
  m.impl("quantize_int8_rows", &quant_impl<false, Backend>);
  m.impl("fake_quant_int8_rows", &quant_impl<true, Backend>);
  m.impl("dequantize_int8_rows", &dequant_impl<Backend>);
  m.impl("fake_quant_int8_rows_backward", &backward_impl<Backend>);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(eitp, m) {
  m.def("quantize_int8_rows(Tensor x, Tensor? scale, Tensor? zero_point, bool symmetric) -> (Tensor, Tensor, Tensor)");
  m.def("fake_quant_int8_rows(Tensor x, Tensor? scale, Tensor? zero_point, bool symmetric) -> (Tensor, Tensor, Tensor)");
  m.def("dequantize_int8_rows(Tensor q, Tensor scale, Tensor? zero_point, ScalarType dtype) -> Tensor");
  m.def("fake_quant_int8_rows_backward(Tensor grad, Tensor x, Tensor scale, Tensor? zero_point, bool symmetric) -> Tensor");
}
TORCH_LIBRARY_IMPL(eitp, CPU, m) { register_kernels<CpuBackend>(m); }
#ifdef EITP_WITH_CUDA
TORCH_LIBRARY_IMPL(eitp, CUDA, m) { register_kernels<CudaBackend>(m); }
#endif

}  // namespace eitp
