// Int8Linear's CPU int8 product for a few rows (kernels/int8_linear.h): an
// AVX-512 VNNI GEMV/GEMM over a packed weight, rows in tiles of up to 8 and
// output channels in groups of 32 (2 x 16 int32 lanes), the epilogue applied
// on the accumulators. Compiled for AVX-512 VNNI by a target attribute and
// used only where the CPU reports it (int8_linear_rows_cpu_supported).
//
// For up to 8 rows the weight is read once per call (one row tile): at one
// row the weight's bytes from memory (DRAM for a large layer) are the bound,
// at 8 about half the time (vpdpbusd the rest). So a tile of few rows reads
// several groups at once (8 streams for one row: more requests in flight than
// one stream gets) and a weight over 2 MiB is prefetched 4 KiB ahead into L2
// while the vpdpbusd run. Deciding figures (4096 x 4096, layer / quantize_dynamic
// median of per-round ratios, 1 thread, python benchmarks/native/int8_linear_steps.py
// --threads 1 --no-steps --repeats 300, 9 runs at load average 1.5-4): 1 row
// 0.68-0.85, 8 rows 0.61-1.02 (median 0.90); the previous kernel (tiles of 4 rows
// x 64 channels, one stream, no prefetch), alternated with two of them: 0.92-0.94
// and 1.03-1.07. Without --no-steps, --repeats 200 (six 16 MiB weights in turn: from DRAM),
// 3 runs: 1 row 0.58-0.64, 8 rows 0.69-0.82; the product alone 625-710 us at 1 row
// (fbgemm's 881-1040) and 828-832 at 8 (fbgemm's 1019-1078). At 8 rows the
// vpdpbusd alone (134M multiply-adds, 64 per cycle) take about 580 us.
#include "kernels/int8_linear.h"

#include <algorithm>

#include "cpu/parallel_cpu.h"
#include "kernels/quant.h"

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own placeholder operands.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <vector>

namespace eitp {
namespace {

constexpr int kVectors = kInt8LinearGroup / 16;      // int32 vectors per channel group
constexpr int64_t kStepBytes = kInt8LinearGroup * 4;  // one k group (4 k) of a channel group: 2 cache lines
constexpr int kRowTile = 8;                          // rows sharing each weight load: 8 x 2 accumulators
constexpr int64_t kPrefetchAhead = 4096;             // bytes ahead in each weight stream (into L2)
constexpr int64_t kPrefetchFromBytes = int64_t(1) << 21;  // weights larger than this are prefetched
constexpr int64_t kQuantizeSharedFrom = 65536;            // activation elements whose rows the threads share

#define EITP_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// acc[s][r] += the products of one k group: the weight codes at w + s * stream_stride (one step of
// each of S packed groups), the unsigned activation codes a[r * row_stride]. With Prefetch, the
// lines kPrefetchAhead bytes ahead in each stream are requested into L2.
template <int R, int S, bool Prefetch>
EITP_VNNI __attribute__((always_inline)) inline void k_step(__m512i (&acc)[S][R][kVectors], const int8_t* w,
                                                           int64_t stream_stride, const uint32_t* a,
                                                           int64_t row_stride) {
  __m512i wv[S][kVectors];
  for (int s = 0; s < S; ++s) {
    const int8_t* ws = w + s * stream_stride;
    if (Prefetch)  // past the weight's end at its last steps: a prefetch never faults
      for (int c = 0; c < kVectors; ++c)
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(ws) + kPrefetchAhead + c * 64),
                     _MM_HINT_T1);
    for (int c = 0; c < kVectors; ++c) wv[s][c] = _mm512_loadu_si512(ws + c * 64);
  }
  for (int r = 0; r < R; ++r) {
    const __m512i av = _mm512_set1_epi32(static_cast<int>(a[r * row_stride]));
    for (int s = 0; s < S; ++s)
      for (int c = 0; c < kVectors; ++c) acc[s][r][c] = _mm512_dpbusd_epi32(acc[s][r][c], av, wv[s][c]);
  }
}

// out rows [r0, r0 + R) for the channels of groups [g, g + S): S weight streams at once.
template <int R, int S, bool Prefetch>
EITP_VNNI void group_rows(const Int8LinearRowsParams& p, const uint32_t* a, int64_t k_groups, int64_t g,
                          int64_t r0) {
  __m512i acc[S][R][kVectors];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < kVectors; ++c) acc[s][r][c] = _mm512_setzero_si512();
  const int64_t stride = k_groups * kStepBytes;
  const int8_t* w = p.packed + g * stride;
  const uint32_t* rows = a + r0 * k_groups;
  for (int64_t kg = 0; kg < k_groups; ++kg)
    k_step<R, S, Prefetch>(acc, w + kg * kStepBytes, stride, rows + kg, k_groups);
  // The epilogue's loops end early at n; the accumulators go through memory
  // first, so that the loop above indexes them with constants only (GCC 12
  // keeps them in registers then, else copies them on every step).
  alignas(64) int32_t dots[S][R][kVectors][16];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < kVectors; ++c) _mm512_store_si512(dots[s][r][c], acc[s][r][c]);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int s = 0; s < S; ++s)
    for (int c = 0; c < kVectors; ++c) {
      const int64_t j0 = (g + s) * kInt8LinearGroup + c * 16;
      if (j0 >= p.n) break;
      const int64_t left = p.n - j0;
      const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
      const __m512i sums = _mm512_slli_epi32(_mm512_loadu_si512(p.col_sums + j0), 7);  // 128 * col_sums
      const __m512 ws = _mm512_maskz_loadu_ps(mask, p.weight_scale + j0);
      const __m512 b = p.bias ? _mm512_maskz_loadu_ps(mask, p.bias + j0) : _mm512_setzero_ps();
      for (int r = 0; r < R; ++r) {
        const int64_t i = r0 + r;
        // exact int32, one rounding
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(dots[s][r][c]), sums));
        __m512 y = _mm512_mul_round_ps(dot, ws, kRound);
        y = _mm512_mul_round_ps(y, _mm512_set1_ps(p.row_scale[i]), kRound);
        if (p.bias) y = _mm512_add_round_ps(y, b, kRound);
        _mm512_mask_storeu_ps(p.out + i * p.n + j0, mask, y);
      }
    }
}

// Rows [r0, r0 + R), groups [g0, g1): S groups at a time, then one at a time.
template <int R, int S, bool Prefetch>
EITP_VNNI void tile_groups(const Int8LinearRowsParams& p, const uint32_t* a, int64_t k_groups, int64_t g0,
                           int64_t g1, int64_t r0) {
  int64_t g = g0;
  for (; g + S <= g1; g += S) group_rows<R, S, Prefetch>(p, a, k_groups, g, r0);
  for (; g < g1; ++g) group_rows<R, 1, Prefetch>(p, a, k_groups, g, r0);
}

// Weight streams read at once for a tile of R rows: 16 accumulators (12 for
// 3 rows), so that even one row has 16 independent vpdpbusd chains and
// several streams for the hardware prefetchers to follow; at most `block`.
constexpr int streams_for(int rows, int block) {
  const int s = rows == 1 ? 8 : rows == 2 ? 4 : rows <= 4 ? 2 : 1;
  return s < block ? s : block;
}

// Rows [r0, r0 + rows) with rows <= kRowTile, groups [g0, g1) (at most Block).
template <int Block, bool Prefetch>
EITP_VNNI void tile_rows(const Int8LinearRowsParams& p, const uint32_t* a, int64_t k_groups, int64_t g0, int64_t g1,
                         int64_t r0, int64_t rows) {
  switch (rows) {
    case 8: tile_groups<8, streams_for(8, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    case 7: tile_groups<7, streams_for(7, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    case 6: tile_groups<6, streams_for(6, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    case 5: tile_groups<5, streams_for(5, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    case 4: tile_groups<4, streams_for(4, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    case 3: tile_groups<3, streams_for(3, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    case 2: tile_groups<2, streams_for(2, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    case 1: tile_groups<1, streams_for(1, Block), Prefetch>(p, a, k_groups, g0, g1, r0); break;
    default: break;
  }
}

// Groups [first, last) for every row, Block groups at a time: each block's
// row tiles one after another, so that the tiles after the first read the
// block's weight from L2 (2 groups: 256 KiB at k = 4096); the first tile
// prefetches it when the weight is larger than kPrefetchFromBytes.
template <int Block>
EITP_VNNI void groups_rows(const Int8LinearRowsParams& p, const uint32_t* a, int64_t k_groups, int64_t first,
                           int64_t last) {
  const bool prefetch = p.k_pad * p.n_pad > kPrefetchFromBytes;
  for (int64_t g = first; g < last; g += Block) {
    const int64_t g1 = std::min(last, g + Block);
    for (int64_t r0 = 0; r0 < p.m; r0 += kRowTile) {
      const int64_t rows = std::min<int64_t>(kRowTile, p.m - r0);
      if (prefetch && r0 == 0)
        tile_rows<Block, true>(p, a, k_groups, g, g1, r0, rows);
      else
        tile_rows<Block, false>(p, a, k_groups, g, g1, r0, rows);
    }
  }
}

// absmax of the finite values of x[0, n) (0 for none): 16 lanes, the tail masked.
EITP_VNNI float finite_absmax(const float* x, int64_t n) {
  __m512 m = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(in, x + i);  // lanes past n: 0, which changes no max
    const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_EQ_OQ);
    m = _mm512_mask_max_ps(m, finite, m, _mm512_abs_ps(v));
  }
  return _mm512_reduce_max_ps(m);  // a max: exact in any order
}

// Symmetric per-row quantization of x[0, n) as quantize_int8_rows computes it
// (kernels/quant.h: s = absmax / 127, q = clamp(rint(x / s), -127, 127) with
// CodeDivisor's clamp and three-step quotient, NaN -> 0), 16 values at a
// time, the codes written as unsigned bytes q + 128. Each step is the scalar
// kernel's IEEE operation (compares false for NaN as there, fnmadd / fmadd for
// its fmaf, roundscale for rint): the same codes bit for bit (tested against
// it on NaN, infinite, zero, denormal and half-way rows). It costs about
// nothing next to the product: 1024 x 1024, 1 thread, m = 64 / 512, the layer
// with it 352 / 2848 us, the product from given codes 381 / 2882, the
// quantize_int8_rows op alone 47 / 307 (10th percentiles of thread CPU time,
// python benchmarks/native/int8_linear_steps.py --threads 1 --sides 1024).
EITP_VNNI void quantize_row_unsigned(const float* x, int64_t n, float* scale, uint8_t* out) {
  int32_t zero_point = 0;
  row_scale_params<float>(true, 0.0f, finite_absmax(x, n), *scale, zero_point);
  const CodeDivisor<float> div(*scale);
  const __m512 numerator_scale = _mm512_set1_ps(div.div.scale), d = _mm512_set1_ps(div.div.d),
               r = _mm512_set1_ps(div.div.r), limit = _mm512_set1_ps(div.limit),
               neg_limit = _mm512_set1_ps(-div.limit), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  constexpr int kRint = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t left = n - i;
    const __mmask16 in = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(in, x + i);
    __m512 a = _mm512_mul_ps(v, numerator_scale);
    a = _mm512_mask_mov_ps(a, _mm512_cmp_ps_mask(a, neg_limit, _CMP_LT_OQ), neg_limit);
    a = _mm512_mask_mov_ps(a, _mm512_cmp_ps_mask(a, limit, _CMP_GT_OQ), limit);
    const __m512 q0 = _mm512_mul_ps(a, r);
    const __m512 q = _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, d, a), r, q0);
    __m512 code = _mm512_maskz_roundscale_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), q, kRint);  // NaN -> 0
    code = _mm512_mask_mov_ps(code, _mm512_cmp_ps_mask(code, lo, _CMP_LT_OQ), lo);
    code = _mm512_mask_mov_ps(code, _mm512_cmp_ps_mask(code, hi, _CMP_GT_OQ), hi);
    const __m128i bytes = _mm_xor_si128(_mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(code)), _mm_set1_epi8(char(0x80)));
    if (left >= 16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), bytes);
    } else {
      alignas(16) uint8_t tail[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(tail), bytes);
      for (int64_t j = 0; j < left; ++j) out[i + j] = tail[j];
    }
  }
}

// Row i's codes as unsigned bytes q + 128 (the sign bit flipped) at row (k_pad bytes), from the
// given codes or, with p.x, quantized here (its scale into row_scale[i]).
EITP_VNNI void unsigned_codes(const Int8LinearRowsParams& p, int64_t i, uint8_t* row, float* row_scale) {
  if (p.x != nullptr) return quantize_row_unsigned(p.x + i * p.k, p.k, row_scale + i, row);
  const int8_t* q = p.q + i * p.k;
  for (int64_t kk = 0; kk < p.k; ++kk) row[kk] = static_cast<uint8_t>(q[kk]) ^ 0x80u;
}

EITP_VNNI void rows_vnni(const Int8LinearRowsParams& p_in) {
  const int64_t k_groups = p_in.k_pad / 4, groups = p_in.n_pad / kInt8LinearGroup;
  // The codes, 4 per k group, k padded with code 0 (0x80 unsigned); the row scales computed with p.x.
  std::vector<uint32_t> a(static_cast<size_t>(p_in.m * k_groups), 0x80808080u);
  std::vector<float> computed_scales(p_in.x != nullptr ? p_in.m : 0);
  Int8LinearRowsParams p = p_in;
  if (p.x != nullptr) p.row_scale = computed_scales.data();
  uint8_t* code_rows = reinterpret_cast<uint8_t*>(a.data());
  const uint32_t* codes = a.data();
  // OpenMP threads share out the channel groups: chunks of at least 2^20
  // multiply-adds. OpenMP, not parallel_chunks' pool: the ops around a layer
  // (torch's, fbgemm's, oneDNN's) run on OpenMP, whose workers spin for a
  // while after each region, so a pool worker woken next to them waited for a
  // core. Layer / quantize_dynamic, 2 threads, idle, median of per-round
  // ratios (python benchmarks/native/int8_linear_steps.py --threads 2
  // --no-steps --repeats 300, two runs each, interleaved), pool then OpenMP:
  // 1024 x 1024 m = 8 1.08-1.14 then 0.79-0.80, m = 64 1.26-1.55 then
  // 0.93-0.96; 4096 x 4096 m = 8 1.24-1.35 then 0.84-0.91, m = 64 1.19-1.60
  // then 0.92-0.93.
  const int64_t per_group = p.m * p.k_pad * kInt8LinearGroup;
  const Chunking c = chunking(groups, std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(per_group, 1)),
                              4 * parallel_slots());
  // The rows are converted (quantized with p.x) in the same region, shared
  // out from kQuantizeSharedFrom elements on, else by one thread (the others
  // wait at its barrier).
  const bool share_rows = p.m * p.k >= kQuantizeSharedFrom;
#pragma omp parallel if (c.count > 1 || share_rows)
  {
    if (share_rows) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < p.m; ++r) unsigned_codes(p, r, code_rows + r * p.k_pad, computed_scales.data());
    } else {
#pragma omp single
      for (int64_t r = 0; r < p.m; ++r) unsigned_codes(p, r, code_rows + r * p.k_pad, computed_scales.data());
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < c.count; ++i) {
      const int64_t first = i * c.size, last = std::min(groups, (i + 1) * c.size);
      if (p.m <= kRowTile)
        groups_rows<8>(p, codes, k_groups, first, last);  // one row tile: up to 8 streams
      else
        groups_rows<2>(p, codes, k_groups, first, last);
    }
  }
}

}  // namespace

bool int8_linear_rows_cpu_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

void int8_linear_rows_cpu(const Int8LinearRowsParams& p) { rows_vnni(p); }

}  // namespace eitp
