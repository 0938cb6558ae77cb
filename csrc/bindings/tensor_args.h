// Helpers for the binding files: the only code that touches at::Tensor.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include "kernels/common.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef EITP_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace eitp {

// The bindings' one device-dispatch style: each op's implementation is a
// template over a Backend struct (CpuBackend / CudaBackend in its binding
// file) that names the kernels of its device; the schema's CPU and CUDA
// registrations are the two instantiations. A Backend derives from one of
// these and is made first, from the tensor that decides the device: the CUDA
// one holds the device guard and the stream the launches go to (the current
// stream of that device), the CPU one nothing.
struct CpuDevice {
  explicit CpuDevice(const at::Tensor&) {}
  explicit CpuDevice(at::TensorList) {}
};

#ifdef EITP_WITH_CUDA
struct CudaDevice {
  explicit CudaDevice(const at::Tensor& t) : guard(t.device()), stream(c10::cuda::getCurrentCUDAStream().stream()) {}
  // The dispatcher picks CUDA only for a list with a CUDA tensor in it.
  explicit CudaDevice(at::TensorList ts) : CudaDevice(ts[0]) {}
  c10::cuda::CUDAGuard guard;  // before stream: members are made in this order
  cudaStream_t stream;
};
#endif

inline DType kernel_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kChar: return DType::kInt8;
    case at::kByte: return DType::kUInt8;
    default: TORCH_CHECK_TYPE(false, op, ": unsupported dtype ", t.scalar_type());
  }
}

inline bool is_float_dtype(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

// fp64 inputs accumulate in fp64, everything narrower in fp32.
inline at::ScalarType accumulation_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A large CPU output that our kernel writes first: at::empty maps fresh pages
// (glibc mmaps blocks this large on every call), so the kernel's first
// touch page-faults once per 4 KiB (64 MiB: 16384 faults), a cost of the
// order of a memory-bound kernel's own. Advising transparent huge
// pages (MADV_HUGEPAGE, the same advice PyTorch's THP_MEM_ALLOC_ENABLE=1
// gives) on the 2 MiB-aligned interior makes that one fault per 2 MiB.
// madvise is advice: where THP is disabled it fails and nothing changes.
constexpr int64_t kHugePageAdviceBytes = int64_t(8) << 20;

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (t.is_cpu() && static_cast<int64_t>(t.nbytes()) >= kHugePageAdviceBytes) {
    constexpr uintptr_t kHuge = uintptr_t(1) << 21;
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + t.nbytes()) & ~(kHuge - 1);
    if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace eitp
