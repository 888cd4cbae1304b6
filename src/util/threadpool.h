// The process-wide thread pool. All parallel work in dsv4 goes through it, so
// the number of compute threads is set in exactly one place.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dsv4 {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end, thread_index) on disjoint ranges covering [0, n);
  // the calling thread takes part. Ranges are multiples of `grain` (except the
  // last). Returns when all are done; rethrows the first exception.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                    int64_t grain = 1);

  // The shared pool; sized by set_global_threads() or DSV4_THREADS, else all cores.
  static ThreadPool& global();
  static void set_global_threads(int num_threads);

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 0;
  int64_t next_chunk_ = 0, num_chunks_ = 0;
  // Written under mu_; atomic so that a thread may spin on them without the lock before it
  // sleeps on a condition variable (see kSpinTime in threadpool.cpp).
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
  std::mutex run_mu_;  // one parallel_for at a time
};

// Shorthand for ThreadPool::global().parallel_for.
inline void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                         int64_t grain = 1) {
  ThreadPool::global().parallel_for(n, fn, grain);
}

// fn(i) for every row i < n of `elements` each: on the pool when the rows hold enough
// elements in all to be worth a wake-up (per-row layouts and elementwise steps of a prefill,
// which would otherwise run serially between parallel kernels), inline otherwise.
template <typename Fn>
void parallel_for_rows(int64_t n, int64_t elements, Fn fn) {
  constexpr int64_t kMinElements = int64_t{1} << 16;
  if (n * elements < 2 * kMinElements) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  parallel_for(
      n,
      [&](int64_t a, int64_t b, int) {
        for (int64_t i = a; i < b; ++i) fn(i);
      },
      std::max<int64_t>(1, kMinElements / std::max<int64_t>(1, elements)));
}

}  // namespace dsv4
