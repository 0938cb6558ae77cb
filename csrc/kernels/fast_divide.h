// Division by a divisor that is constant over a loop (a bin width, an int8
// scale), shared by the CPU and CUDA kernels: the reciprocal once, then per
// element three instructions instead of a correctly rounded division (about
// 11 on a GPU, with a slow-path call per element in the loop).
//
// fp32: r = 1/d correctly rounded once; per element
//   q0 = a * r;  res = fma(-q0, d, a) (exact);  q = fma(res, r, q0),
// which equals IEEE a / d for 2^-96 <= |d| <= 2^96, |a| >= 2^-101 and
// 2^-125 <= |a / d| <= 2^125; a smaller |a| or |a / d| gives |q| < 2^-4,
// as IEEE's |a / d| < 2^-5: a floor or a round half to even of either is 0
// (the same steps and bounds as eitp_kernels._triton.div_fast; the proof:
// tests/test_fast_div.py, every divisor significand and numerators next to
// the quotient's rounding midpoints, in numpy with an exact fma). A divisor
// outside [2^-96, 2^96] is first scaled by 2^64 or 2^-64, with the numerator
// scaled by the same power of two (exact, or an underflow to a quotient below
// 2^-4 again), so the whole float range takes the same three steps. A zero or
// non-finite divisor gives q = 0 * a (0 for finite a, NaN otherwise): what a
// bin width of 0 or infinity bins to (bin 0).
// fp64 keeps the true division (the fast path is proved for fp32 only).
#pragma once

#include <cmath>

#include "kernels/common.h"

namespace eitp {

constexpr float kFastDivMin = 0x1.0p-96f;  // eitp_kernels._triton.DIV_MIN
constexpr float kFastDivMax = 0x1.0p96f;   // eitp_kernels._triton.DIV_MAX

template <typename A> struct Divisor;

template <> struct Divisor<float> {
  float d, r, scale;  // the (scaled) divisor, its correctly rounded reciprocal, the numerator's scale

  EITP_HD explicit Divisor(float divisor) {
    const float magnitude = divisor < 0.0f ? -divisor : divisor;
    scale = 1.0f;
    if (!(magnitude - magnitude == 0.0f) || magnitude == 0.0f) {  // zero, infinite or NaN
      d = 1.0f;
      r = 0.0f;
      return;
    }
    if (magnitude < kFastDivMin) scale = 0x1.0p64f;
    else if (magnitude > kFastDivMax) scale = 0x1.0p-64f;
    d = divisor * scale;
    r = 1.0f / d;
  }

  // a / divisor (see the header comment for where it equals IEEE division).
  EITP_HD float quotient(float a) const { return scaled_quotient(a * scale); }
  // a / divisor given a * scale (so a caller can clamp the scaled numerator).
  EITP_HD float scaled_quotient(float scaled) const {
    const float q0 = scaled * r;
    const float res = fmaf(-q0, d, scaled);
    return fmaf(res, r, q0);
  }
};

template <> struct Divisor<double> {
  double d;
  static constexpr double scale = 1.0;
  EITP_HD explicit Divisor(double divisor) : d(divisor) {}
  EITP_HD double scaled_quotient(double a) const { return quotient(a); }
  // The true division; a zero divisor gives 0 (the bin width of a constant slice).
  EITP_HD double quotient(double a) const { return d == 0.0 ? 0.0 : a / d; }
};

}  // namespace eitp
