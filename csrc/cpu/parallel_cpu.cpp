// The pool behind parallel_chunks (parallel_cpu.h).
#include "cpu/parallel_cpu.h"

#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace eitp {
namespace {

// One call's work. Workers hold it by shared_ptr, so a worker that wakes
// after the call returned still reads a live counter (and finds it spent);
// fn is called only for a claimed chunk, while the caller still waits.
struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t count;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> slots{1};  // slot 0 is the caller's
  std::mutex m;
  std::condition_variable finished;
};

thread_local bool tls_in_worker = false;

// Claims and runs chunks until none are left; true if it finished the last.
bool run_chunks(Job& job, int64_t slot) {
  bool last = false;
  for (int64_t i = job.next.fetch_add(1); i < job.count; i = job.next.fetch_add(1)) {
    (*job.fn)(i, slot);
    last = job.done.fetch_add(1) + 1 == job.count;
  }
  return last;
}

class Pool {
 public:
  // Runs the job with up to `threads` threads (the caller included).
  bool try_run(const std::shared_ptr<Job>& job, int64_t threads) {
    std::unique_lock<std::mutex> busy(call_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    grow(threads - 1);
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = job;
      wanted_ = threads - 1;
      ++generation_;
    }
    wake_.notify_all();
    run_chunks(*job, 0);
    {
      std::unique_lock<std::mutex> lock(job->m);
      job->finished.wait(lock, [&] { return job->done.load() == job->count; });
    }
    std::lock_guard<std::mutex> lock(m_);
    job_.reset();
    return true;
  }

 private:
  void grow(int64_t workers) {
    while (static_cast<int64_t>(threads_.size()) < workers) {
      threads_.emplace_back([this] { work(); });
      threads_.back().detach();  // lives as long as the process (see reset_after_fork)
    }
  }

  void work() {
    tls_in_worker = true;
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (!job_ || wanted_ <= 0) continue;
        --wanted_;
        job = job_;
      }
      const int64_t slot = job->slots.fetch_add(1);
      if (run_chunks(*job, slot)) {
        std::lock_guard<std::mutex> lock(job->m);
        job->finished.notify_one();
      }
    }
  }

  std::mutex call_;  // one call at a time; others run serially
  std::mutex m_;
  std::condition_variable wake_;
  std::shared_ptr<Job> job_;
  int64_t wanted_ = 0;
  uint64_t generation_ = 0;
  std::vector<std::thread> threads_;
};

Pool* pool_instance = nullptr;
std::once_flag pool_once;

// A forked child has none of the parent's workers and may have inherited a
// locked mutex: it starts a new pool (the old one is left, never used).
void reset_after_fork() {
  pool_instance = new Pool();
}

Pool& pool() {
  std::call_once(pool_once, [] {
    pool_instance = new Pool();  // never destroyed: workers may outlive static destructors
    pthread_atfork(nullptr, nullptr, reset_after_fork);
  });
  return *pool_instance;
}

void run_serial(int64_t count, const std::function<void(int64_t, int64_t)>& fn) {
  for (int64_t i = 0; i < count; ++i) fn(i, 0);
}

}  // namespace

int64_t parallel_slots() { return std::max(1, omp_get_max_threads()); }

void parallel_chunks_impl(int64_t count, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t threads = std::min(parallel_slots(), count);
  if (threads <= 1 || tls_in_worker || omp_in_parallel()) return run_serial(count, fn);
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->count = count;
  if (!pool().try_run(job, threads)) run_serial(count, fn);
}

}  // namespace eitp
