// Int8Linear's CPU int8 product for a few rows, with its epilogue
// (docs/design.md §2.5): for row i and output channel j,
//
//   acc[i, j] = sum_k (q[i, k] + 128) * w[j, k]          (u8 x s8, exact int32)
//   dot       = acc[i, j] - 128 * col_sums[j]             (= sum_k q[i, k] w[j, k], exact)
//   out[i, j] = (float(dot) * weight_scale[j]) * row_scale[i] (+ bias[j])
//
// each float step rounded on its own (no fused multiply-add): the value of
// torch._int_mm(q, w.t()).float() * weight_scale, then * row_scale, then
// + bias, as the layer's other products compute it.
//
// The weight is packed once (eitp_kernels._int8_gemv.pack): k padded to a
// multiple of 4 and n to a multiple of G = kInt8LinearGroup with zero codes,
// laid out as (n / G, k / 4, G, 4): for each group of G output channels and
// each 4 consecutive k, the 4 codes of channel 0, then channel 1, ... (the
// operand order of AVX-512 VNNI's vpdpbusd). col_sums: (n padded,) sum_k w[j, k].
#pragma once

#include <cstdint>

namespace eitp {

// Output channels per packed group (G above): 2 vectors of 16 int32, so that
// a tile of 8 rows keeps its 16 accumulators in registers.
constexpr int64_t kInt8LinearGroup = 32;

struct Int8LinearRowsParams {
  const int8_t* q;             // (m, k) activation codes, row-major; nullptr with x
  const float* row_scale;      // (m,); nullptr with x
  const float* x;              // (m, k) float32 activations, row-major, or nullptr: q and row_scale
                               // are then computed here, as quantize_int8_rows_cpu does per row
                               // (symmetric): int8_linear_float_rows
  const int8_t* packed;        // (n_pad / G, k_pad / 4, G, 4)
  const int32_t* col_sums;     // (n_pad,)
  const float* weight_scale;   // (n,)
  const float* bias;           // (n,) or nullptr
  int64_t m, k, n;
  int64_t k_pad, n_pad;        // k_pad % 4 == 0, n_pad % G == 0
  float* out;                  // (m, n), row-major
};

// Whether this CPU runs int8_linear_rows_cpu (AVX-512 F/BW and VNNI).
bool int8_linear_rows_cpu_supported();
// Requires int8_linear_rows_cpu_supported().
void int8_linear_rows_cpu(const Int8LinearRowsParams& p);

}  // namespace eitp
