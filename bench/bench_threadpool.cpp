// The thread pool's cost per parallel_for, as decoding pays it: a token is a few hundred
// short parallel steps (tens to hundreds of microseconds each) with short serial work
// between them. Each iteration runs one step of `work_us` microseconds of busy work split
// over the pool, then `serial_us` on the calling thread alone. Counters: `overhead`, wall
// time ÷ the ideal (work split evenly, plus the serial part; 1.0 means no cost), and the
// microseconds lost per step.
//
// Threads: the global pool (DSV4_THREADS, default all cores).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>

#include "util/threadpool.h"

namespace {

// Busy work for about `us` microseconds of this thread (a dependent chain, no memory).
void spin_for(double us) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double, std::micro>(us);
  while (std::chrono::steady_clock::now() < end) {
  }
}

void parallel_steps(benchmark::State& state) {
  const double work_us = static_cast<double>(state.range(0));
  const double serial_us = static_cast<double>(state.range(1));
  dsv4::ThreadPool& pool = dsv4::ThreadPool::global();
  const int threads = pool.num_threads();
  // 64 equal parts, as a linear's rows are split.
  constexpr int64_t kParts = 64;
  const double part_us = work_us * threads / kParts;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    pool.parallel_for(kParts, [&](int64_t a, int64_t b, int) {
      for (int64_t i = a; i < b; ++i) spin_for(part_us);
    });
    spin_for(serial_us);
  }
  const double elapsed_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  const double steps = static_cast<double>(state.iterations());
  state.counters["overhead"] = elapsed_us / ((work_us + serial_us) * steps);
  state.counters["lost_us_per_step"] = elapsed_us / steps - (work_us + serial_us);
  state.counters["threads"] = threads;
}

}  // namespace

// {parallel work per step (µs of one thread's share), serial work between steps (µs)}.
BENCHMARK(parallel_steps)
    ->Args({20, 5})
    ->Args({100, 10})
    ->Args({500, 20})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK_MAIN();
