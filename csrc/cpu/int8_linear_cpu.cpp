// Int8Linear's CPU int8 product for a few rows (kernels/int8_linear.h): an
// AVX-512 VNNI GEMV/GEMM over a packed weight, rows in tiles of up to 4 and
// output channels in groups of 64 (4 x 16 int32 lanes), the epilogue applied
// on the accumulators. Compiled for AVX-512 VNNI by a target attribute and
// used only where the CPU reports it (int8_linear_rows_cpu_supported).
#include "kernels/int8_linear.h"

#include <algorithm>

#include "cpu/parallel_cpu.h"

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own placeholder operands.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <vector>

namespace eitp {
namespace {

constexpr int kGroup = 64;   // output channels per group: 4 vectors of 16 int32
constexpr int kVectors = 4;
constexpr int kRowTile = 4;  // rows sharing each weight load

#define EITP_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// out rows [r0, r0 + R) for the 64 channels of group g.
template <int R>
EITP_VNNI void group_rows(const Int8LinearRowsParams& p, const uint32_t* a, int64_t k_groups, int64_t g,
                          int64_t r0) {
  __m512i acc[R][kVectors];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kVectors; ++c) acc[r][c] = _mm512_setzero_si512();
  const int8_t* w = p.packed + g * k_groups * kGroup * 4;
  for (int64_t kg = 0; kg < k_groups; ++kg) {
    __m512i wv[kVectors];
    for (int c = 0; c < kVectors; ++c) wv[c] = _mm512_loadu_si512(w + (kg * kVectors + c) * 64);
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[(r0 + r) * k_groups + kg]));
      for (int c = 0; c < kVectors; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
    }
  }
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int c = 0; c < kVectors; ++c) {
    const int64_t j0 = g * kGroup + c * 16;
    if (j0 >= p.n) break;
    const int64_t left = p.n - j0;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    const __m512i sums = _mm512_slli_epi32(_mm512_loadu_si512(p.col_sums + j0), 7);  // 128 * col_sums
    const __m512 ws = _mm512_maskz_loadu_ps(mask, p.weight_scale + j0);
    const __m512 b = p.bias ? _mm512_maskz_loadu_ps(mask, p.bias + j0) : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) {
      const int64_t i = r0 + r;
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][c], sums));  // exact int32, one rounding
      __m512 y = _mm512_mul_round_ps(dot, ws, kRound);
      y = _mm512_mul_round_ps(y, _mm512_set1_ps(p.row_scale[i]), kRound);
      if (p.bias) y = _mm512_add_round_ps(y, b, kRound);
      _mm512_mask_storeu_ps(p.out + i * p.n + j0, mask, y);
    }
  }
}

EITP_VNNI void rows_vnni(const Int8LinearRowsParams& p) {
  const int64_t k_groups = p.k_pad / 4, groups = p.n_pad / kGroup;
  // The codes as unsigned bytes q + 128 (the sign bit flipped), 4 per k group, k padded with code 0.
  std::vector<uint32_t> a(static_cast<size_t>(p.m * k_groups), 0x80808080u);
  for (int64_t i = 0; i < p.m; ++i) {
    uint8_t* row = reinterpret_cast<uint8_t*>(a.data() + i * k_groups);
    const int8_t* q = p.q + i * p.k;
    for (int64_t kk = 0; kk < p.k; ++kk) row[kk] = static_cast<uint8_t>(q[kk]) ^ 0x80u;
  }
  const uint32_t* codes = a.data();
  auto groups_from = [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      int64_t r0 = 0;
      for (; r0 + kRowTile <= p.m; r0 += kRowTile) group_rows<kRowTile>(p, codes, k_groups, g, r0);
      switch (p.m - r0) {
        case 3: group_rows<3>(p, codes, k_groups, g, r0); break;
        case 2: group_rows<2>(p, codes, k_groups, g, r0); break;
        case 1: group_rows<1>(p, codes, k_groups, g, r0); break;
        default: break;
      }
    }
  };
  // Threads (parallel_chunks) share out the channel groups: chunks of at least 2^20 multiply-adds.
  const int64_t per_group = p.m * p.k_pad * kGroup;
  const Chunking c = chunking(groups, std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(per_group, 1)),
                              4 * parallel_slots());
  parallel_chunks(c.count, [&](int64_t i, int64_t) { groups_from(i * c.size, std::min(groups, (i + 1) * c.size)); });
}

}  // namespace

bool int8_linear_rows_cpu_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

void int8_linear_rows_cpu(const Int8LinearRowsParams& p) { rows_vnni(p); }

}  // namespace eitp
