// Plain C++/CUDA helpers shared by the CPU and CUDA kernels. No torch headers:
// the bindings turn tensors into the parameter structs declared next to each
// kernel, and the kernels see only pointers, sizes and these enums.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define EITP_HD __host__ __device__ __forceinline__
#else
#define EITP_HD inline
#endif

namespace eitp {

// Storage dtypes a kernel may receive. The binding maps at::ScalarType here.
enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3, kInt8 = 4, kUInt8 = 5 };

// 16-bit storage types for the CPU kernels (the CUDA kernels use __half and
// __nv_bfloat16 from the CUDA headers instead).
struct Half16 { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float bits_to_float(uint32_t bits) {
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// IEEE binary16 -> binary32, exact (every half is a float).
inline float to_float(Half16 h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exponent = (h.bits >> 10) & 0x1fu;
  uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf / nan
  if (exponent == 0) {
    if (mantissa == 0) return bits_to_float(sign);  // +-0
    // subnormal half: value = mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// bfloat16 is the top half of a float32.
inline float to_float(BFloat16 b) { return bits_to_float(static_cast<uint32_t>(b.bits) << 16); }
inline float to_float(float x) { return x; }

// Accumulation type: double for double input, float for everything narrower.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

template <typename T> inline typename AccType<T>::type load_acc(const T& v) { return to_float(v); }
template <> inline double load_acc<double>(const double& v) { return v; }

// isfinite that survives -ffast-math style flags and works on host and device.
template <typename A> EITP_HD bool is_finite_value(A v) {
  return v - v == A(0);  // inf - inf and nan - nan are nan, which compares unequal
}

}  // namespace eitp
