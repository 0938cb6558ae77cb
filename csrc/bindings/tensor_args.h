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

// A CPU temporary of an op (never returned, dropped before the op returns):
// a view of this thread's buffer `slot` (< kCpuScratchSlots), which is reused
// while no tensor holds it and large enough, else replaced. Fresh blocks of
// 128 KiB and more come from the OS with every call (glibc returns them: page
// faults and zeroing). For coherence's standardized Z (256 x 512 fp32, two per
// layer and step) the EIT-P regularizer's overhead went from +69-74% to
// +67-68% (python -m eitp_kernels.bench.suite_eitp_regularizer's overhead(),
// thread CPU time, 4 processes per build, alternated, idle). Buffers over
// kCpuScratchMaxBytes are not kept; at most kCpuScratchSlots buffers per
// thread that made them stay allocated.
constexpr int kCpuScratchSlots = 2;
constexpr int64_t kCpuScratchMaxBytes = int64_t(64) << 20;

inline at::Tensor cpu_scratch(int slot, at::IntArrayRef sizes, const at::TensorOptions& options) {
  thread_local at::Tensor buffers[kCpuScratchSlots];
  const int64_t numel = c10::multiply_integers(sizes);
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  if (slot < 0 || slot >= kCpuScratchSlots || bytes > kCpuScratchMaxBytes) return at::empty(sizes, options);
  at::Tensor& buffer = buffers[slot];
  if (buffer.defined() && buffer.storage().use_count() > 1) return at::empty(sizes, options);  // in use
  if (!buffer.defined() || buffer.nbytes() < static_cast<size_t>(bytes))
    buffer = at::empty({(bytes + 7) / 8}, options.dtype(at::kDouble));  // 8-byte aligned and sized
  return buffer.view(c10::typeMetaToScalarType(options.dtype())).narrow(0, 0, numel).view(sizes);
}

}  // namespace eitp
