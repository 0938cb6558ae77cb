// eitp::int8_linear_rows(Tensor q, Tensor row_scale, Tensor packed, Tensor col_sums, Tensor weight_scale,
//     Tensor? bias) -> Tensor out
// q: (m, k) int8 activation codes; row_scale: (m,) float32; packed: (n_pad / G, k_pad / 4, G, 4) int8
// (G = kInt8LinearGroup), the weight as eitp_kernels._int8_gemv.pack lays it out; col_sums: (n_pad,)
// int32; weight_scale: (n,) float32; bias: (n,) float32. out: (m, n) float32 (kernels/int8_linear.h). CPU only; raises
// NotImplementedError on a CPU without AVX-512 VNNI.
// eitp::int8_linear_float_rows(Tensor x, Tensor packed, Tensor col_sums, Tensor weight_scale, Tensor? bias)
//     -> Tensor out
// The same with x: (m, k) float32 activations, quantized per row (symmetric) inside the op: the codes and
// scales quantize_int8_rows gives, one op and one pass over x instead of two ops.
#include "bindings/tensor_args.h"
#include "kernels/int8_linear.h"

#include <vector>

namespace eitp {
namespace {

void check_vector(const char* op, const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t size) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": ", name, " must have shape (", size, ",), got ",
                    t.sizes());
}

// Checks the weight's tensors against the activations' (m, k) and fills p but for the activations.
Int8LinearRowsParams weight_params(const char* op, const at::Tensor& activations, const at::Tensor& packed,
                                   const at::Tensor& col_sums, const at::Tensor& weight_scale,
                                   const std::optional<at::Tensor>& bias, std::vector<at::Tensor>& keep) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kChar, op, ": packed must be int8, got ", packed.scalar_type());
  constexpr int64_t G = kInt8LinearGroup;
  TORCH_CHECK_VALUE(packed.dim() == 4 && packed.size(2) == G && packed.size(3) == 4 && packed.is_contiguous(), op,
                    ": packed must be a contiguous (n_pad / ", G, ", k_pad / 4, ", G, ", 4) tensor, got ",
                    packed.sizes());
  const int64_t m = activations.size(0), k = activations.size(1), n = weight_scale.numel();
  const int64_t k_pad = packed.size(1) * 4, n_pad = packed.size(0) * G;
  const char* name = activations.scalar_type() == at::kChar ? "q" : "x";
  TORCH_CHECK_VALUE(k <= k_pad && k_pad < k + 4, op, ": packed holds k_pad = ", k_pad, " for ", name, " with k = ", k);
  TORCH_CHECK_VALUE(n <= n_pad && n_pad < n + G, op, ": packed holds n_pad = ", n_pad, " for weight_scale with n = ",
                    n);
  check_vector(op, col_sums, "col_sums", at::kInt, n_pad);
  check_vector(op, weight_scale, "weight_scale", at::kFloat, n);
  if (bias.has_value()) check_vector(op, *bias, "bias", at::kFloat, n);
  const std::pair<const char*, const at::Tensor*> on_device[] = {
      {"packed", &packed}, {"col_sums", &col_sums}, {"weight_scale", &weight_scale},
      {"bias", bias.has_value() ? &*bias : &packed}};
  for (const auto& [tensor_name, t] : on_device)
    TORCH_CHECK_VALUE(t->device() == activations.device(), op, ": ", tensor_name, " must be on ", name, "'s device ",
                      activations.device(), ", got ", t->device());
  TORCH_CHECK_NOT_IMPLEMENTED(int8_linear_rows_cpu_supported(), op, ": this CPU has no AVX-512 VNNI");
  keep = {col_sums.contiguous(), weight_scale.contiguous(), bias.has_value() ? bias->contiguous() : at::Tensor()};
  Int8LinearRowsParams p{};
  p.packed = packed.data_ptr<int8_t>();
  p.col_sums = keep[0].data_ptr<int32_t>();
  p.weight_scale = keep[1].data_ptr<float>();
  p.bias = keep[2].defined() ? keep[2].data_ptr<float>() : nullptr;
  p.m = m;
  p.k = k;
  p.n = n;
  p.k_pad = k_pad;
  p.n_pad = n_pad;
  return p;
}

at::Tensor run(Int8LinearRowsParams& p, const at::Tensor& activations) {
  at::Tensor out = at::empty({p.m, p.n}, activations.options().dtype(at::kFloat));
  if (p.m == 0 || p.n == 0) return out;
  p.out = out.data_ptr<float>();
  int8_linear_rows_cpu(p);
  return out;
}

at::Tensor int8_linear_rows(const at::Tensor& q_in, const at::Tensor& row_scale, const at::Tensor& packed,
                            const at::Tensor& col_sums, const at::Tensor& weight_scale,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* kOp = "int8_linear_rows";
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kChar, kOp, ": q must be int8, got ", q_in.scalar_type());
  TORCH_CHECK_VALUE(q_in.dim() == 2, kOp, ": q must be 2-D (m, k), got ", q_in.dim(), "-D");
  check_vector(kOp, row_scale.reshape({-1}), "row_scale", at::kFloat, q_in.size(0));
  TORCH_CHECK_VALUE(row_scale.device() == q_in.device(), kOp, ": row_scale must be on q's device ", q_in.device(),
                    ", got ", row_scale.device());
  std::vector<at::Tensor> keep;
  Int8LinearRowsParams p = weight_params(kOp, q_in, packed, col_sums, weight_scale, bias, keep);
  const at::Tensor q = q_in.contiguous(), rs = row_scale.reshape({-1}).contiguous();
  p.q = q.data_ptr<int8_t>();
  p.row_scale = rs.data_ptr<float>();
  return run(p, q);
}

at::Tensor int8_linear_float_rows(const at::Tensor& x_in, const at::Tensor& packed, const at::Tensor& col_sums,
                                  const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias) {
  constexpr const char* kOp = "int8_linear_float_rows";
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, kOp, ": x must be float32, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.dim() == 2, kOp, ": x must be 2-D (m, k), got ", x_in.dim(), "-D");
  std::vector<at::Tensor> keep;
  Int8LinearRowsParams p = weight_params(kOp, x_in, packed, col_sums, weight_scale, bias, keep);
  const at::Tensor x = x_in.contiguous();
  p.x = x.data_ptr<float>();
  return run(p, x);
}

}  // namespace
}  // namespace eitp

TORCH_LIBRARY_FRAGMENT(eitp, m) {
  m.def("int8_linear_rows(Tensor q, Tensor row_scale, Tensor packed, Tensor col_sums, Tensor weight_scale, "
        "Tensor? bias) -> Tensor");
}
TORCH_LIBRARY_FRAGMENT(eitp, m) {
  m.def("int8_linear_float_rows(Tensor x, Tensor packed, Tensor col_sums, Tensor weight_scale, Tensor? bias) "
        "-> Tensor");
}
TORCH_LIBRARY_IMPL(eitp, CPU, m) {
  m.impl("int8_linear_rows", &eitp::int8_linear_rows);
  m.impl("int8_linear_float_rows", &eitp::int8_linear_float_rows);
}
