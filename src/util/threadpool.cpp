#include "util/threadpool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>

#include "util/error.h"

namespace dsv4 {

namespace {
// Index of the pool thread running the current job on this thread, or -1.
// A parallel_for issued from inside a job runs inline on that thread.
thread_local int tls_job_index = -1;

// A thread that has run out of work polls for the next job (workers) or for the others to
// finish (the caller) for this long before it sleeps on a condition variable. Decoding one
// token issues a few hundred parallel_for calls with short serial steps between them, and
// waking a sleeping thread costs tens of microseconds (a futex wake; in a VM an interrupt to
// an idle vCPU): bench_threadpool lost 17-29 µs per 100 µs step at 2 threads with sleeping
// alone, 8-12 µs with polling first (docs/performance.md, session 13). Timed rather than
// counted: a pause lasts ~3 cycles on Zen 1 and ~140 on Skylake.
constexpr auto kSpinTime = std::chrono::microseconds(100);

// Polls `ready` until it holds or kSpinTime has passed; the caller then waits on its
// condition variable, whose predicate decides.
template <typename Ready>
void spin_until(Ready ready) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1; !ready(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > kSpinTime) return;
  }
}

struct JobScope {
  int saved;
  explicit JobScope(int index) : saved(tls_job_index) { tls_job_index = index; }
  ~JobScope() { tls_job_index = saved; }
};
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads < 1) num_threads = 1;
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    spin_until([&] {
      return stop_.load(std::memory_order_acquire) ||
             generation_.load(std::memory_order_acquire) != seen;
    });
    std::unique_lock<std::mutex> lock(mu_);
    cv_work_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    for (;;) {
      if (next_chunk_ >= num_chunks_) break;
      int64_t c = next_chunk_++;
      auto* job = job_;
      int64_t b = c * job_chunk_, e = std::min(job_n_, b + job_chunk_);
      lock.unlock();
      try {
        JobScope scope(index);
        (*job)(b, e, index);
      } catch (...) {
        std::lock_guard<std::mutex> g(mu_);
        if (!error_) error_ = std::current_exception();
      }
      lock.lock();
    }
    if (--pending_ == 0) cv_done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t grain) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t threads = num_threads();
  if (tls_job_index >= 0) {
    fn(0, n, tls_job_index);
    return;
  }
  if (threads == 1 || n <= grain) {
    JobScope scope(0);
    fn(0, n, 0);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mu_);
  // A few chunks per thread balances uneven work without much locking.
  int64_t chunk = (n + threads * 4 - 1) / (threads * 4);
  chunk = std::max<int64_t>(grain, (chunk + grain - 1) / grain * grain);
  std::unique_lock<std::mutex> lock(mu_);
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = chunk;
  next_chunk_ = 0;
  num_chunks_ = (n + chunk - 1) / chunk;
  pending_ = static_cast<int>(workers_.size());
  error_ = nullptr;
  ++generation_;
  cv_work_.notify_all();
  for (;;) {
    if (next_chunk_ >= num_chunks_) break;
    int64_t c = next_chunk_++;
    int64_t b = c * chunk, e = std::min(n, b + chunk);
    lock.unlock();
    try {
      JobScope scope(0);
      fn(b, e, 0);
    } catch (...) {
      std::lock_guard<std::mutex> g(mu_);
      if (!error_) error_ = std::current_exception();
    }
    lock.lock();
  }
  lock.unlock();
  spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
  lock.lock();
  cv_done_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
  if (error_) {
    auto e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

namespace {
std::unique_ptr<ThreadPool>& global_slot() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}
std::mutex& global_mu() {
  static std::mutex mu;
  return mu;
}
}  // namespace

ThreadPool& ThreadPool::global() {
  std::lock_guard<std::mutex> lock(global_mu());
  auto& slot = global_slot();
  if (!slot) {
    int n = static_cast<int>(std::thread::hardware_concurrency());
    if (const char* env = std::getenv("DSV4_THREADS")) {
      int v = std::atoi(env);
      if (v > 0) n = v;
    }
    slot = std::make_unique<ThreadPool>(std::max(1, n));
  }
  return *slot;
}

void ThreadPool::set_global_threads(int num_threads) {
  if (num_threads < 1) fail("thread count must be >= 1, got ", num_threads);
  std::lock_guard<std::mutex> lock(global_mu());
  global_slot() = std::make_unique<ThreadPool>(num_threads);
}

}  // namespace dsv4
