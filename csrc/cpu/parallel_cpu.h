// Fork-join for the CPU kernels that must stay steady on a busy machine.
//
// parallel_chunks(count, fn) runs fn(chunk, slot) for every chunk in
// [0, count): the calling thread and up to omp_get_max_threads() - 1 pool
// workers (torch.set_num_threads sets that number) claim chunks one at a time
// from a shared counter; slot (< parallel_slots()) names the thread, for
// per-thread scratch. The call returns when every claimed chunk is done; it
// never waits for a worker that has not claimed one, so a worker the OS has
// not scheduled yet costs nothing (the caller runs the chunks itself), and the
// workers wait for work blocked on a condition variable, never spinning.
//
// Why not OpenMP here: libgomp's default wait policy spins between and at the
// end of parallel regions, and every region ends in a barrier all of its
// threads must reach; on a machine whose cores other processes keep busy, a
// descheduled thread holds the whole call (the call's time is the slowest
// thread's) and spinning threads burn the process's share of the cores. The
// figures are in docs/design.md §3.4 (benchmarks/native/cpu_tails.py).
//
// Serial (fn run in the caller for every chunk) when count or the thread
// count is 1, inside an OpenMP region or a pool worker, or while another
// thread's call holds the pool.
#pragma once

#include <cstdint>
#include <functional>

namespace eitp {

// Threads a parallel_chunks call may use: omp_get_max_threads(), at least 1.
int64_t parallel_slots();

void parallel_chunks_impl(int64_t count, const std::function<void(int64_t, int64_t)>& fn);

template <typename Fn>
void parallel_chunks(int64_t count, Fn&& fn) {
  if (count <= 0) return;
  if (count == 1) {
    fn(int64_t(0), int64_t(0));
    return;
  }
  parallel_chunks_impl(count, std::function<void(int64_t, int64_t)>(std::forward<Fn>(fn)));
}

// Chunks of at least `min_items` items (and so at most `max_chunks` of them)
// for `items` items: ceil(items / chunk) chunks of `size` items each.
struct Chunking {
  int64_t size, count;
};

inline Chunking chunking(int64_t items, int64_t min_items, int64_t max_chunks) {
  if (items <= 0) return {1, 0};
  int64_t size = (items + max_chunks - 1) / max_chunks;
  if (size < min_items) size = min_items;
  return {size, (items + size - 1) / size};
}

}  // namespace eitp
