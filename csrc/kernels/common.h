// Plain C++/CUDA helpers shared by the CPU and CUDA kernels. No torch headers:
// the bindings turn tensors into the parameter structs declared next to each
// kernel, and the kernels see only pointers, sizes and these enums.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__CUDACC__)
#define EITP_HD __host__ __device__ __forceinline__
#else
#define EITP_HD inline
#endif

// Hot CPU loops are compiled twice, for x86-64-v3 (AVX2, FMA, F16C) and the
// baseline, and picked at load time (GCC function multi-versioning): the
// wheel stays portable and modern CPUs get 256-bit vectors.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && \
    !defined(__SANITIZE_ADDRESS__)
#define EITP_CPU_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define EITP_CPU_HOT
#endif

namespace eitp {

// Storage dtypes a kernel may receive. The binding maps at::ScalarType here.
enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3, kInt8 = 4, kUInt8 = 5 };

// 16-bit storage types for the CPU kernels (the CUDA kernels use __half and
// __nv_bfloat16 from the CUDA headers instead).
struct Half16 { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

// Bit casts (memcpy: no aliasing UB; compiles to a register move).
template <typename To, typename From> inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}
inline float bits_to_float(uint32_t bits) { return bit_cast<float>(bits); }
inline uint32_t float_to_bits(float f) { return bit_cast<uint32_t>(f); }
inline double bits_to_double(uint64_t bits) { return bit_cast<double>(bits); }
inline uint64_t double_to_bits(double x) { return bit_cast<uint64_t>(x); }

// IEEE binary16 -> binary32, exact (every half is a float); the arithmetic
// of PyTorch's c10::detail::fp16_ieee_to_fp32_value. Branch-free, so the
// compiler vectorizes it (GCC 12 makes a _Float16 conversion a libgcc call
// per value, which does not vectorize). A normal half (and inf/NaN):
// exponent and mantissa moved into a float with the exponent raised by 224,
// times 2^-112.
// A subnormal half m * 2^-24: the float 0.5 + m * 2^-24 (mantissa bits m)
// minus 0.5. Every float operand and result is a normal number, so flushed
// denormals (DAZ/FTZ) do not change the result.
inline float to_float(Half16 h) {
  const uint32_t word = static_cast<uint32_t>(h.bits) << 16;
  const uint32_t sign = word & 0x80000000u;
  const uint32_t two_word = word + word;  // exponent and mantissa, sign shifted out
  const float normal = bits_to_float((two_word >> 4) + (0xe0u << 23)) * 0x1.0p-112f;
  const float subnormal = bits_to_float((two_word >> 17) | (126u << 23)) - 0.5f;
  const uint32_t normal_bits = float_to_bits(normal), subnormal_bits = float_to_bits(subnormal);
  // A mask, not ?: : GCC turns a select into a branch around each float
  // operation and then cannot vectorize it (the operations might trap).
  const uint32_t subnormal_mask = 0u - static_cast<uint32_t>(two_word < (1u << 27));
  return bits_to_float(sign | (subnormal_bits & subnormal_mask) | (normal_bits & ~subnormal_mask));
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

// ---- float -> storage conversions (round to nearest even), for kernels that
// write 16-bit outputs (quant). store_acc<T>(acc) is the inverse of load_acc.

// Portable float -> IEEE binary16, round to nearest even, overflow to inf,
// NaN stays NaN (quiet). After F. Giesen's float_to_half_fast3_rtne.
inline uint16_t float_to_half_bits(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t ax = bits & 0x7fffffffu;
  const uint32_t f32_inf = 255u << 23, f16_overflow = (127u + 16u) << 23;
  const uint32_t denorm_magic = 126u << 23;  // 0.5f: its ulp is the smallest half subnormal
  uint32_t out;
  if (ax >= f16_overflow) {
    out = ax > f32_inf ? 0x7e00u : 0x7c00u;
  } else if (ax < (113u << 23)) {  // below the smallest normal half: one RNE float addition
    out = float_to_bits(bits_to_float(ax) + bits_to_float(denorm_magic)) - denorm_magic;
  } else {
    const uint32_t mantissa_odd = (ax >> 13) & 1u;
    ax += (uint32_t)((15 - 127) * (1 << 23)) + 0xfffu + mantissa_odd;  // rebias and round
    out = ax >> 13;
  }
  return static_cast<uint16_t>(out | sign);
}

inline Half16 float_to_half(float v) {
  Half16 out;
#if defined(__FLT16_MAX__) && !defined(__CUDACC__)
  const _Float16 h = static_cast<_Float16>(v);  // vcvtps2ph in the x86-64-v3 clones
  out.bits = bit_cast<uint16_t>(h);
#else
  out.bits = float_to_half_bits(v);
#endif
  return out;
}

// float -> bfloat16, round to nearest even; NaN -> quiet NaN of the same sign.
inline BFloat16 float_to_bfloat16(float v) {
  const uint32_t bits = float_to_bits(v);
  BFloat16 out;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  out.bits = static_cast<uint16_t>(nan ? ((bits >> 16) | 0x0040u) : rounded);
  return out;
}

template <typename T> inline T store_acc(typename AccType<T>::type v);
template <> inline float store_acc<float>(float v) { return v; }
template <> inline double store_acc<double>(double v) { return v; }
template <> inline Half16 store_acc<Half16>(float v) { return float_to_half(v); }
template <> inline BFloat16 store_acc<BFloat16>(float v) { return float_to_bfloat16(v); }

#ifndef __CUDACC__
// out[i] = to_float(x[i]) for i < n: one vcvtph2ps per 8 values on CPUs with
// F16C, to_float elsewhere (csrc/cpu/common_cpu.cpp). For fp16 loops that
// work on blocks: one instruction per 8 values against to_float's sequence
// of integer and float operations.
void halves_to_floats(const Half16* x, int64_t n, float* out);
// out[i] = float_to_half(x[i]) for i < n (round to nearest even): one
// vcvtps2ph per 8 values on CPUs with F16C.
void floats_to_halves(const float* x, int64_t n, Half16* out);

// Lane-wise (lo, hi) reduction of a contiguous span on the CPU, folded into
// (lo_out, hi_out): fold(v, lo, hi) updates one of kLanes independent
// accumulator pairs, starting from (init_lo, init_hi). Elementwise across the
// lanes, so the compiler vectorizes it without reassociating a reduction (no
// fast-math). Used for finite min/max and the int8 ranges.
template <typename T, typename Fold>
EITP_CPU_HOT void span_fold_lanes(const T* x, int64_t n, typename AccType<T>::type init_lo,
                                  typename AccType<T>::type init_hi, Fold fold, typename AccType<T>::type& lo_out,
                                  typename AccType<T>::type& hi_out) {
  using A = typename AccType<T>::type;
  if constexpr (std::is_same<T, Half16>::value) {  // fp16: convert blocks, fold them as floats
    constexpr int64_t kBlock = 1024;
    alignas(64) float block[kBlock];
    for (int64_t s = 0; s < n; s += kBlock) {
      const int64_t m = n - s < kBlock ? n - s : kBlock;
      halves_to_floats(x + s, m, block);
      span_fold_lanes(block, m, init_lo, init_hi, fold, lo_out, hi_out);
    }
    return;
  }
  constexpr int64_t kLanes = 16;
  A lo[kLanes], hi[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) lo[j] = init_lo, hi[j] = init_hi;
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) fold(load_acc(x[i + j]), lo[j], hi[j]);
  for (int64_t i = full; i < n; ++i) fold(load_acc(x[i]), lo[0], hi[0]);
  A l = lo_out, h = hi_out;
  for (int64_t j = 0; j < kLanes; ++j) l = lo[j] < l ? lo[j] : l, h = hi[j] > h ? hi[j] : h;
  lo_out = l;
  hi_out = h;
}
#endif

// The one map from a float DType to its storage type: calls fn(T{}) with T
// HalfT / BFloat16T / float / double, so a kernel is instantiated with
// `dispatch_float<Half16, BFloat16>(dtype, "op", [&](auto tag) { run<decltype(tag)>(p); })`.
// CUDA code uses cuda::dispatch_float (its __half and __nv_bfloat16).
template <typename HalfT, typename BFloat16T, typename Fn>
void dispatch_float_as(DType dtype, const char* who, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat16: return fn(HalfT{});
    case DType::kBFloat16: return fn(BFloat16T{});
    case DType::kFloat32: return fn(float{});
    case DType::kFloat64: return fn(double{});
    default: throw std::invalid_argument(std::string(who) + ": unsupported dtype (expected a float dtype)");
  }
}

template <typename Fn> void dispatch_float(DType dtype, const char* who, Fn&& fn) {
  dispatch_float_as<Half16, BFloat16>(dtype, who, static_cast<Fn&&>(fn));
}

}  // namespace eitp
