// How fast can one core count values into a histogram? The floor under the
// CPU histogram kernels (csrc/cpu/entropy_cpu.cpp), measured without torch:
//
//   g++ -O3 -march=x86-64-v3 -Icsrc benchmarks/native/histogram_floor.cpp -o /tmp/histogram_floor
//   /tmp/histogram_floor
//
// One thread; 128K normal fp32 values (in cache), 256 bins. Each line is the
// best of 300 passes in TSC ticks per value (the TSC runs at the nominal
// 2.6 GHz of the dev box, the core at its boost clock):
//   increments      ++count[bin] of precomputed bins, 4 interleaved copies
//                   (what entropy_cpu.cpp's add_indices does)
//   stores only     count[bin] = i: the scattered stores alone, no loads
//   pair table u16  one increment per 2 values into a 258 x 258 table of
//                   (bin_i, bin_j) pairs, then summed into the 256 counts
// On the 2-core AMD EPYC dev box (2026-11-23, three runs): increments
// 0.73-0.90, stores only 0.74-0.83, pair table 1.10-1.46 ticks per value
// (the pair table does not fit in L1).
// One scattered store per value and cycle is the floor; halving the stores
// with a pair table costs more in cache misses than it saves. The kernel's
// own loop (csrc/cpu/entropy_cpu.cpp, count_blocks), which also computes the
// bins, is timed by `eitp-bench --ops histogram_entropy` (int8 codes: no
// range pass).
#include <x86intrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/entropy.h"

namespace {

constexpr int kBins = 256;
constexpr int kSlots = kBins + 2;  // as the kernel: bins, an empty slot, the uncounted slot
constexpr int64_t kValues = int64_t(1) << 17;

template <typename Pass> void report(const char* name, Pass pass) {
  unsigned long long best = ~0ull;
  for (int rep = 0; rep < 300; ++rep) {
    const unsigned long long start = __rdtsc();
    pass();
    best = std::min(best, __rdtsc() - start);
  }
  std::printf("%-16s %.2f ticks/value\n", name, static_cast<double>(best) / kValues);
}

}  // namespace

int main() {
  std::vector<float> x(kValues);
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(gen);
  const float lo = *std::min_element(x.begin(), x.end());
  const float w = (*std::max_element(x.begin(), x.end()) - lo) / kBins;
  std::vector<int32_t> bins(kValues);
  for (int64_t i = 0; i < kValues; ++i) bins[i] = eitp::hist_bin<float>(x[i], lo, w, kBins);

  std::vector<uint32_t> counts(4 * kSlots);
  uint32_t* c0 = counts.data();
  uint32_t* c1 = c0 + kSlots;
  uint32_t* c2 = c1 + kSlots;
  uint32_t* c3 = c2 + kSlots;
  const int32_t* b = bins.data();
  report("increments", [&] {
    for (int64_t i = 0; i < kValues; i += 4) ++c0[b[i]], ++c1[b[i + 1]], ++c2[b[i + 2]], ++c3[b[i + 3]];
    asm volatile("" ::"r"(c0) : "memory");
  });
  report("stores only", [&] {
    for (int64_t i = 0; i < kValues; i += 4) {
      const uint32_t v = static_cast<uint32_t>(i);
      c0[b[i]] = v, c1[b[i + 1]] = v, c2[b[i + 2]] = v, c3[b[i + 3]] = v;
    }
    asm volatile("" ::"r"(c0) : "memory");
  });
  std::vector<uint16_t> pairs(kSlots * kSlots);
  std::vector<uint64_t> pair_counts(kSlots);
  report("pair table u16", [&] {
    uint16_t* p = pairs.data();
    for (int64_t i = 0; i < kValues; i += 2) ++p[b[i] * kSlots + b[i + 1]];  // no overflow: 64K pairs
    for (int r = 0; r < kSlots; ++r) {
      uint64_t row = 0;
      for (int c = 0; c < kSlots; ++c) row += p[r * kSlots + c], pair_counts[c] += p[r * kSlots + c];
      pair_counts[r] += row;
    }
    std::fill(pairs.begin(), pairs.end(), uint16_t(0));
    asm volatile("" ::"r"(pair_counts.data()) : "memory");
  });
  return 0;
}
