// Float and double min/max by integer operations on their bit patterns: the
// rule behind the CUDA float atomics (cuda_common.cuh: atomic_min/atomic_max),
// kept host-callable and free of CUDA and torch so a plain C++ test checks it
// (tests/test_float_order.py compiles this header with g++).
//
// The bit pattern of a float with sign bit 0 orders like a signed integer
// (+0 < denormals < normals < +inf < +NaN); with sign bit 1 it orders in
// reverse like an unsigned integer (-0 has the smallest pattern of all
// negatives, -NaN the largest). So, with `stored` the value in memory:
//   min(stored, v): sign bit of v clear -> signed integer min of the patterns
//                   sign bit of v set   -> unsigned integer max
//   max(stored, v): sign bit of v clear -> signed integer max
//                   sign bit of v set   -> unsigned integer min
// The choice goes by the sign *bit*: -0.0 compares >= 0, but its pattern
// (0x80000000) is the smallest signed integer, so choosing by `v >= 0` would
// make min(-3, -0.0) = -0.0 and max(-inf, -0.0) = -inf. The result is the
// min/max in the total order -NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN
// (the finite min/max kernels never pass NaN).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define EITP_ORDER_HD __host__ __device__ __forceinline__
#else
#define EITP_ORDER_HD inline
#endif

namespace eitp {

// Which integer operation on the stored pattern performs a float min/max with v.
struct IntegerMinMax {
  bool as_signed;  // compare the patterns as signed (else unsigned) integers
  bool take_min;   // integer min (else max)
};

EITP_ORDER_HD IntegerMinMax float_min_as_integer(bool v_sign_bit) {
  return v_sign_bit ? IntegerMinMax{false, false} : IntegerMinMax{true, true};
}
EITP_ORDER_HD IntegerMinMax float_max_as_integer(bool v_sign_bit) {
  return v_sign_bit ? IntegerMinMax{false, true} : IntegerMinMax{true, false};
}

EITP_ORDER_HD uint32_t ordered_bits(float v) {
  uint32_t b;
  memcpy(&b, &v, sizeof(b));
  return b;
}
EITP_ORDER_HD uint64_t ordered_bits(double v) {
  uint64_t b;
  memcpy(&b, &v, sizeof(b));
  return b;
}
EITP_ORDER_HD bool sign_bit(float v) { return (ordered_bits(v) >> 31) != 0; }
EITP_ORDER_HD bool sign_bit(double v) { return (ordered_bits(v) >> 63) != 0; }

// What the integer atomic leaves in memory: `op` applied to the patterns.
template <typename U, typename S>
EITP_ORDER_HD U apply_integer_min_max(U stored, U v, IntegerMinMax op) {
  bool v_wins;
  if (op.as_signed) {
    const S s = static_cast<S>(stored), w = static_cast<S>(v);
    v_wins = op.take_min ? w < s : w > s;
  } else {
    v_wins = op.take_min ? v < stored : v > stored;
  }
  return v_wins ? v : stored;
}

// The integer types of a float's bit pattern (unsigned, signed).
template <typename F> struct PatternInts;
template <> struct PatternInts<float> { using U = uint32_t; using S = int32_t; };
template <> struct PatternInts<double> { using U = uint64_t; using S = int64_t; };

// Host/device emulation of atomic_min/atomic_max: the float whose pattern the
// integer operation leaves in memory.
template <typename F>
EITP_ORDER_HD F apply_float_min_max(F stored, F v, IntegerMinMax op) {
  using Ints = PatternInts<F>;
  const typename Ints::U r =
      apply_integer_min_max<typename Ints::U, typename Ints::S>(ordered_bits(stored), ordered_bits(v), op);
  F out;
  memcpy(&out, &r, sizeof(out));
  return out;
}
template <typename F> EITP_ORDER_HD F ordered_min(F stored, F v) {
  return apply_float_min_max(stored, v, float_min_as_integer(sign_bit(v)));
}
template <typename F> EITP_ORDER_HD F ordered_max(F stored, F v) {
  return apply_float_min_max(stored, v, float_max_as_integer(sign_bit(v)));
}

}  // namespace eitp
