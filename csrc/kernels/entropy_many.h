// histogram_counts_many on the GPU: one histogram per tensor of a
// list, in a fixed number of launches whatever the list's length. The binding
// packs every tensor into one int64 table (struct of arrays) that reaches the
// device in one copy; work item k (one CUDA block) is chunk
// k - block_start[s] of the segment s with block_start[s] <= k < block_start[s+1],
// found by a binary search in the kernel. Plain structs, no torch headers.
#pragma once

#include <cstdint>

#include "kernels/common.h"

#ifdef EITP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace eitp {

// Views into the int64 table of `segments` entries.
struct SegmentTable {
  int64_t segments;
  int64_t chunk;               // elements per work item
  int64_t* block_start;        // (segments + 1) exclusive prefix sum of ceil(length / chunk); [segments] = items
  int64_t* x;                  // (segments) data addresses (contiguous tensors)
  int64_t* length;             // (segments) elements
  int64_t* dtype;              // (segments) DType codes; the dtype may differ per segment
  double* lo;                  // (segments) range: accumulation-dtype values widened to double (exact);
  double* hi;                  //   +inf / -inf before the automatic-range pass
};

// int64 slots the table needs for `segments` entries.
inline int64_t segment_table_slots(int64_t segments) { return 6 * segments + 1; }

// The table's arrays inside `base` (host or device memory of
// segment_table_slots(segments) int64 slots). lo/hi hold doubles in int64
// slots (same size); only the kernels read them, as doubles.
inline SegmentTable segment_table_view(int64_t* base, int64_t segments, int64_t chunk) {
  SegmentTable t;
  t.segments = segments;
  t.chunk = chunk;
  t.block_start = base;
  t.x = base + segments + 1;
  t.length = t.x + segments;
  t.dtype = t.length + segments;
  t.lo = reinterpret_cast<double*>(t.dtype + segments);
  t.hi = t.lo + segments;
  return t;
}

// Histograms up to this many bins count in shared memory (4 bytes a bin in
// the default 48 KiB a block, static and dynamic together: 256 bytes are left
// for the kernels' static shared variables); larger ones with one global
// atomic per element.
constexpr int64_t kSharedHistogramMaxBins = (48 * 1024 - 256) / 4;

// Elements per CUDA block (a work item): enough per block to amortize zeroing and merging
// a shared histogram (8 elements per bin), at least 256 threads x 32.
inline int64_t histogram_chunk(int64_t bins) {
  const int64_t base = 256 * 32;
  return bins <= kSharedHistogramMaxBins && 8 * bins > base ? 8 * bins : base;
}

struct HistogramManyParams {
  SegmentTable table;     // device pointers
  int64_t items;          // table.block_start[segments], known on the host: one block each
  int64_t bins;
  bool explicit_range;    // drop x < lo, x > hi
  bool auto_range_pass;   // compute lo/hi of the float segments first (finite min/max)
  int64_t* counts;        // (segments, bins), zero-filled by the caller
};

#ifdef EITP_WITH_CUDA
// At most two launches (range pass, counting pass), on `stream`, no host sync.
void histogram_counts_many_cuda(const HistogramManyParams& p, cudaStream_t stream);
#endif

}  // namespace eitp
