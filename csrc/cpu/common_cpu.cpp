// CPU helpers declared in kernels/common.h that need their own instruction
// set: fp16 <-> fp32 conversion with F16C.
#include "kernels/common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#include <immintrin.h>
#define EITP_F16C_VERSIONS 1
#endif

namespace eitp {
namespace {

#ifdef EITP_F16C_VERSIONS
// GCC function multi-versioning: the loader binds convert_halves to the F16C
// version on CPUs that have it.
__attribute__((target("default"))) void convert_halves(const Half16* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = to_float(x[i]);
}

__attribute__((target("avx,f16c"))) void convert_halves(const Half16* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) out[i] = to_float(x[i]);
}

__attribute__((target("default"))) void convert_floats(const float* x, int64_t n, Half16* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_half(x[i]);
}

// vcvtps2ph with the MXCSR's rounding (round to nearest even), as float_to_half's cast.
__attribute__((target("avx,f16c"))) void convert_floats(const float* x, int64_t n, Half16* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_CUR_DIRECTION));
  for (; i < n; ++i) out[i] = float_to_half(x[i]);
}
#else
void convert_halves(const Half16* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = to_float(x[i]);
}

void convert_floats(const float* x, int64_t n, Half16* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_half(x[i]);
}
#endif

}  // namespace

void halves_to_floats(const Half16* x, int64_t n, float* out) { convert_halves(x, n, out); }

void floats_to_halves(const float* x, int64_t n, Half16* out) { convert_floats(x, n, out); }

}  // namespace eitp
