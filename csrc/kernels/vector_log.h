// A natural logarithm for double that GCC vectorizes, and the lane-wise
// sum of x ln x built on it (entropy_from_counts_cpu). Host only, no torch
// headers. std::log is a libm call per value, which no loop vectorizes.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/common.h"

namespace eitp {

inline uint64_t double_to_bits(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

inline double bits_to_double(uint64_t bits) {
  double x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

// uint64 -> double, rounded to nearest like a plain conversion, from bit
// operations and two double operations: AVX2 has no vector int64 -> double
// conversion, so GCC would leave a static_cast loop scalar. The high and
// low 32 bits go into the mantissas of 2^84 and 2^52; removing the two
// offsets is exact, the final addition rounds once.
inline double uint64_to_double(uint64_t v) {
  const double high = bits_to_double(0x4530000000000000ull | (v >> 32));         // 2^84 + high * 2^32
  const double low = bits_to_double(0x4330000000000000ull | (v & 0xffffffffull));  // 2^52 + low
  return (high - (0x1p84 + 0x1p52)) + low;
}

// ln x for a positive, normal, finite x, within about 1 ulp; any other x
// gives an unspecified value (no trap), so callers select or check around
// it. Branch-free so a loop over it vectorizes:
//   x = 2^e * m with m in [sqrt(1/2), sqrt(2)), split with integer operations
//   on the bits (frexp is a libm call);
//   ln m = ln(1 + f) = 2 atanh(s) with f = m - 1 (exact: Sterbenz) and
//   s = f / (2 + f), |s| <= 0.1716: ln(1 + f) = 2s + s R, R = sum_k 2 s^2k/(2k+1),
//   and 2s = f - s f, so ln(1 + f) = f - s (f - R): the rounding errors of s
//   only reach the smaller term s (f - R) (< 0.21 f);
//   R to k = 11: the first term left out is below 2^-60 of ln m;
//   ln x = e ln2_hi + (ln m + e ln2_lo), ln2_hi with 32 significant bits,
//   so e ln2_hi is exact for every double exponent (|e| <= 1024).
inline double vector_log(double x) {
  constexpr uint64_t kSqrtHalfBits = 0x3fe6a09e667f3bcdull;  // sqrt(1/2)
  constexpr uint64_t kOneBits = 0x3ff0000000000000ull;
  const uint64_t bits = double_to_bits(x);
  // e + 1023, in [1, 2046] for positive normal x: no signed shift needed
  const uint64_t biased_e = (bits - kSqrtHalfBits + kOneBits) >> 52;
  const double m = bits_to_double(bits - (biased_e << 52) + kOneBits);
  const double e = bits_to_double(0x4330000000000000ull | biased_e) - (0x1p52 + 1023.0);
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  double r = 2.0 / 23;
  r = r * z + 2.0 / 21;
  r = r * z + 2.0 / 19;
  r = r * z + 2.0 / 17;
  r = r * z + 2.0 / 15;
  r = r * z + 2.0 / 13;
  r = r * z + 2.0 / 11;
  r = r * z + 2.0 / 9;
  r = r * z + 2.0 / 7;
  r = r * z + 2.0 / 5;
  r = r * z + 2.0 / 3;
  r = r * z;
  const double log_m = f - s * (f - r);
  constexpr double kLn2Hi = 0x1.62e42feep-1;        // ln 2 cut to 32 significant bits
  constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;  // ln 2 - kLn2Hi, rounded
  return e * kLn2Hi + (log_m + e * kLn2Lo);
}

// What sum_x_log_x found: the sum, and whether every counted x was in
// vector_log's domain (else the caller recomputes with std::log).
struct XLogXSum {
  double sum;
  bool all_normal;
};

// sum over i with num[i] > 0 of x ln x, x = num[i] / den, for int64_t or
// double num. The terms go into kLanes independent partial sums (i % kLanes),
// added in a fixed order at the end: the loop vectorizes without
// reassociating (no -ffast-math) and the result depends only on the inputs.
template <typename Num>
EITP_CPU_HOT XLogXSum sum_x_log_x(const Num* num, int64_t n, double den) {
  constexpr int64_t kLanes = 8;
  double lane_sum[kLanes] = {};
  uint64_t lane_abnormal[kLanes] = {};  // counted x that is not a positive normal double
  // Masks, not ?: or &&: GCC turns a select into a branch around the
  // floating-point operations (they might trap) and then cannot vectorize.
  const auto add = [&](int64_t i, int64_t lane) {
    double value;
    if constexpr (std::is_integral<Num>::value) {            // int64: see uint64_to_double
      value = uint64_to_double(static_cast<uint64_t>(num[i]));  // wrong for num < 0, never counted
    } else {
      value = static_cast<double>(num[i]);
    }
    const double x = value / den;
    const uint64_t counted = uint64_t(0) - static_cast<uint64_t>(num[i] > 0);
    const uint64_t in_domain = uint64_t(0) - static_cast<uint64_t>((x >= DBL_MIN) & (x <= DBL_MAX));
    lane_sum[lane] += bits_to_double(double_to_bits(x * vector_log(x)) & counted);
    lane_abnormal[lane] |= counted & ~in_domain;
  };
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full; i += kLanes)
    for (int64_t lane = 0; lane < kLanes; ++lane) add(i + lane, lane);
  for (int64_t i = full; i < n; ++i) add(i, i - full);
  double sum = 0.0;
  uint64_t abnormal = 0;
  for (int64_t lane = 0; lane < kLanes; ++lane) sum += lane_sum[lane], abnormal |= lane_abnormal[lane];
  return {sum, abnormal == 0};
}

}  // namespace eitp
