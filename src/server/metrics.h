// Server metrics in the Prometheus text format: request and token counters,
// cache hit/miss tokens, queue gauges and latency histograms.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace dsv4::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double x);
  // Appends the _bucket/_sum/_count lines for `name`.
  void render(const std::string& name, std::string& out) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void count_request(const std::string& route, int status);
  std::atomic<uint64_t> prompt_tokens{0}, generation_tokens{0};
  std::atomic<uint64_t> prompt_cache_hit_tokens{0}, prompt_cache_miss_tokens{0};
  Histogram ttft_seconds, inter_token_seconds, e2e_seconds;

  // waiting/running come from the scheduler at scrape time.
  std::string render(size_t waiting, size_t running, int64_t context_length) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
};

}  // namespace dsv4::server
