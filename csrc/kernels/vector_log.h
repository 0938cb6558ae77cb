// A natural logarithm for double that GCC vectorizes, and the per-row sum
// of q ln q (q = c / total) that entropy_from_counts_cpu builds on it. Host
// only, no torch headers. std::log is a libm call per value, which keeps a
// loop scalar.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/common.h"

namespace eitp {

// ln x for a positive, normal, finite x, accurate to a few ulp
// (tests/test_entropy.py test_entropy_from_counts_log_accuracy_over_the_range
// holds the entropies it gives within 4 ulp of math.log's); any other x gives
// an unspecified value and never traps, so callers check the domain first.
// Branch-free, so a loop over it vectorizes:
//   x = 2^e * m with m in [sqrt(1/2), sqrt(2)), split with integer
//   operations on the bits (frexp is a libm call);
//   ln m = ln(1 + f) = 2 atanh(s) with f = m - 1 (exact: Sterbenz) and
//   s = f / (2 + f), |s| <= 0.1716, z = s^2 <= 0.02944:
//   ln(1 + f) = 2s + s R(z), R(z) = sum_k 2 z^k / (2k + 1), and 2s = f - s f,
//   so ln(1 + f) = f - s (f - R): the rounding errors of s only reach the
//   smaller term s (f - R) (< 0.21 f);
//   R(z) = z P(z), P a degree-6 Chebyshev fit of R(z)/z on [0, 0.02944]
//   (mpmath.chebyfit at 50 digits, 7 coefficients rounded to double:
//   |error| < 3.2e-16, below 5e-18 of ln m; the series itself needs 10
//   terms for that);
//   ln x = e ln2_hi + (ln m + e ln2_lo), ln2_hi with 32 significant bits,
//   so e ln2_hi is exact for every double exponent (|e| <= 1024).
inline double vector_log(double x) {
  constexpr uint64_t kSqrtHalfBits = 0x3fe6a09e667f3bcdull;  // sqrt(1/2)
  constexpr uint64_t kOneBits = 0x3ff0000000000000ull;
  const uint64_t bits = double_to_bits(x);
  // e + 1023, in [1, 2047] for positive normal x: no signed shift needed
  const uint64_t biased_e = (bits - kSqrtHalfBits + kOneBits) >> 52;
  const double m = bits_to_double(bits - (biased_e << 52) + kOneBits);
  const double e = bits_to_double(0x4330000000000000ull | biased_e) - (0x1p52 + 1023.0);
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  double p = 0x1.2b5900de53b32p-3;
  p = p * z + 0x1.39fe51a7c18f9p-3;
  p = p * z + 0x1.7462b51cb66b1p-3;
  p = p * z + 0x1.c71c62e3f11e6p-3;
  p = p * z + 0x1.2492492df281ap-2;
  p = p * z + 0x1.99999999952d7p-2;
  p = p * z + 0x1.5555555555558p-1;  // close to the series' 2/3, 2/5, 2/7, ... from here up
  const double log_m = f - s * (f - z * p);
  constexpr double kLn2Hi = 0x1.62e42feep-1;        // ln 2 cut to 32 significant bits
  constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;  // ln 2 - kLn2Hi, rounded
  return e * kLn2Hi + (log_m + e * kLn2Lo);
}

// Independent partial sums per row: add(i, lane) for i < n, lane = i % 8.
// The loops vectorize without reassociating a reduction (no -ffast-math),
// and each result depends only on the row, never on the thread count.
constexpr int64_t kXLogXLanes = 8;

template <typename Add> inline void for_each_lane(int64_t n, Add&& add) {
  const int64_t full = n - n % kXLogXLanes;
  for (int64_t i = 0; i < full; i += kXLogXLanes)
    for (int64_t lane = 0; lane < kXLogXLanes; ++lane) add(i + lane, lane);
  for (int64_t i = full; i < n; ++i) add(i, i - full);
}

// Exact int64 -> double for 0 <= c < 2^52 in two vectorizable operations (AVX2
// has no int64 -> double conversion): c in the mantissa of 2^52, minus 2^52.
inline double count_to_double(int64_t c) {
  return bits_to_double(0x4330000000000000ull | static_cast<uint64_t>(c)) - 0x1p52;
}
inline double count_to_double(double c) { return c; }

// What sum_x_log_x found: the sum, and whether every counted x was in
// vector_log's domain (for int64 counts the caller makes sure beforehand).
struct XLogXSum {
  double sum;
  bool in_domain;
};

// sum over i with num[i] > 0 of x ln x, x = num[i] / den; int64 num must be
// below 2^52. Masks, not ?:, select the counted terms: GCC turns a select
// into a branch around the floating-point operations (they might trap) and
// then cannot vectorize.
template <typename Num>
EITP_CPU_HOT XLogXSum sum_x_log_x(const Num* num, int64_t n, double den) {
  double lane_sum[kXLogXLanes] = {};
  uint64_t lane_outside[kXLogXLanes] = {};  // a counted x that is not a positive normal double
  const auto add = [&](int64_t i, int64_t lane) {
    const double x = count_to_double(num[i]) / den;
    const uint64_t counted = uint64_t(0) - static_cast<uint64_t>(num[i] > 0);
    lane_sum[lane] += bits_to_double(double_to_bits(x * vector_log(x)) & counted);
    if constexpr (std::is_floating_point<Num>::value) {
      const uint64_t normal = uint64_t(0) - static_cast<uint64_t>((x >= DBL_MIN) & (x <= DBL_MAX));
      lane_outside[lane] |= counted & ~normal;
    }
  };
  for_each_lane(n, add);
  double sum = 0.0;
  uint64_t outside = 0;
  for (int64_t lane = 0; lane < kXLogXLanes; ++lane) sum += lane_sum[lane], outside |= lane_outside[lane];
  return {sum, outside == 0};
}

// A row's total; for int64 also whether every count is in [0, 2^52), as
// sum_x_log_x needs (one OR of all counts; then q >= 2^-63 is normal).
struct CountsTotal {
  double total;
  bool small_ints;
};

EITP_CPU_HOT inline CountsTotal count_total(const int64_t* c, int64_t n) {
  int64_t total = 0;  // exact below 2^63, wraps beyond
  uint64_t bits = 0;
  for (int64_t i = 0; i < n; ++i) total += c[i], bits |= static_cast<uint64_t>(c[i]);
  return {static_cast<double>(total), bits < (uint64_t(1) << 52)};
}

// float64 (soft counts): summed in lanes; sum_x_log_x checks their q.
EITP_CPU_HOT inline CountsTotal count_total(const double* c, int64_t n) {
  double lane_total[kXLogXLanes] = {};
  for_each_lane(n, [&](int64_t i, int64_t lane) { lane_total[lane] += c[i]; });
  double total = 0.0;
  for (int64_t lane = 0; lane < kXLogXLanes; ++lane) total += lane_total[lane];
  return {total, true};
}

// The total of a row of counts and sum_{c > 0} q ln q, q = c / total: through
// vector_log, or with std::log per value for the rows it cannot take (a count
// >= 2^52; soft counts with a subnormal q or an infinite total).
struct QLogQ {
  double total;
  double sum;
};

template <typename Count> QLogQ sum_q_log_q(const Count* c, int64_t n) {
  const CountsTotal row = count_total(c, n);
  if (!(row.total > 0)) return {row.total, 0.0};  // no q (the entropy is NaN)
  if (row.small_ints) {
    const XLogXSum fast = sum_x_log_x(c, n, row.total);
    if (fast.in_domain) return {row.total, fast.sum};
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (c[i] > 0) {
      const double q = static_cast<double>(c[i]) / row.total;
      sum += q * std::log(q);
    }
  }
  return {row.total, sum};
}

}  // namespace eitp
