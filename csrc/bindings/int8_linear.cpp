// eitp::int8_linear_rows(Tensor q, Tensor row_scale, Tensor packed, Tensor col_sums, Tensor weight_scale,
//     Tensor? bias) -> Tensor out
// q: (m, k) int8 activation codes; row_scale: (m,) float32; packed: (n_pad / G, k_pad / 4, G, 4) int8
// (G = kInt8LinearGroup), the weight as eitp_kernels._int8_gemv.pack lays it out; col_sums: (n_pad,)
// int32; weight_scale: (n,) float32; bias: (n,) float32. out: (m, n) float32 (kernels/int8_linear.h). CPU only; raises
// NotImplementedError on a CPU without AVX-512 VNNI.
#include "bindings/tensor_args.h"
#include "kernels/int8_linear.h"

namespace eitp {
namespace {

constexpr const char* kOp = "int8_linear_rows";

void check_vector(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t size) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, kOp, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, kOp, ": ", name, " must have shape (", size, ",), got ",
                    t.sizes());
}

at::Tensor int8_linear_rows(const at::Tensor& q_in, const at::Tensor& row_scale, const at::Tensor& packed,
                            const at::Tensor& col_sums, const at::Tensor& weight_scale,
                            const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kChar, kOp, ": q must be int8, got ", q_in.scalar_type());
  TORCH_CHECK_VALUE(q_in.dim() == 2, kOp, ": q must be 2-D (m, k), got ", q_in.dim(), "-D");
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kChar, kOp, ": packed must be int8, got ", packed.scalar_type());
  constexpr int64_t G = kInt8LinearGroup;
  TORCH_CHECK_VALUE(packed.dim() == 4 && packed.size(2) == G && packed.size(3) == 4 && packed.is_contiguous(), kOp,
                    ": packed must be a contiguous (n_pad / ", G, ", k_pad / 4, ", G, ", 4) tensor, got ",
                    packed.sizes());
  const int64_t m = q_in.size(0), k = q_in.size(1), n = weight_scale.numel();
  const int64_t k_pad = packed.size(1) * 4, n_pad = packed.size(0) * G;
  TORCH_CHECK_VALUE(k <= k_pad && k_pad < k + 4, kOp, ": packed holds k_pad = ", k_pad, " for q with k = ", k);
  TORCH_CHECK_VALUE(n <= n_pad && n_pad < n + G, kOp, ": packed holds n_pad = ", n_pad, " for weight_scale with n = ",
                    n);
  check_vector(row_scale.reshape({-1}), "row_scale", at::kFloat, m);
  check_vector(col_sums, "col_sums", at::kInt, n_pad);
  check_vector(weight_scale, "weight_scale", at::kFloat, n);
  if (bias.has_value()) check_vector(*bias, "bias", at::kFloat, n);
  for (const at::Tensor* t : {&row_scale, &packed, &col_sums, &weight_scale})
    TORCH_CHECK_VALUE(t->device() == q_in.device(), kOp, ": every tensor must be on ", q_in.device());
  TORCH_CHECK_NOT_IMPLEMENTED(int8_linear_rows_cpu_supported(), kOp, ": this CPU has no AVX-512 VNNI");
  const at::Tensor q = q_in.contiguous(), rs = row_scale.reshape({-1}).contiguous(), cs = col_sums.contiguous(),
                   ws = weight_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({m, n}, q.options().dtype(at::kFloat));
  if (m == 0 || n == 0) return out;
  Int8LinearRowsParams p;
  p.q = q.data_ptr<int8_t>();
  p.row_scale = rs.data_ptr<float>();
  p.packed = packed.data_ptr<int8_t>();
  p.col_sums = cs.data_ptr<int32_t>();
  p.weight_scale = ws.data_ptr<float>();
  p.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  p.m = m;
  p.k = k;
  p.n = n;
  p.k_pad = k_pad;
  p.n_pad = n_pad;
  p.out = out.data_ptr<float>();
  int8_linear_rows_cpu(p);
  return out;
}

}  // namespace
}  // namespace eitp

TORCH_LIBRARY_FRAGMENT(eitp, m) {
  m.def("int8_linear_rows(Tensor q, Tensor row_scale, Tensor packed, Tensor col_sums, Tensor weight_scale, "
        "Tensor? bias) -> Tensor");
}
TORCH_LIBRARY_IMPL(eitp, CPU, m) { m.impl("int8_linear_rows", &eitp::int8_linear_rows); }
