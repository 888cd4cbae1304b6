#include "server/metrics.h"

#include <cstdio>

namespace dsv4::server {

namespace {
std::string num(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}
}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double x) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && x > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += x;
  ++count_;
}

void Histogram::render(const std::string& name, std::string& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  cum += counts_.back();
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
  out += name + "_sum " + num(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : ttft_seconds({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}),
      inter_token_seconds({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      e2e_seconds({0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}) {}

void Metrics::count_request(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
}

std::string Metrics::render(size_t waiting, size_t running, int64_t context_length) const {
  std::string out;
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name +
           " " + std::to_string(v) + "\n";
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name +
           " " + num(v) + "\n";
  };
  out += "# HELP dsv4_requests_total HTTP requests by route and status.\n";
  out += "# TYPE dsv4_requests_total counter\n";
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [k, v] : requests_)
      out += "dsv4_requests_total{route=\"" + k.first + "\",status=\"" + std::to_string(k.second) +
             "\"} " + std::to_string(v) + "\n";
  }
  counter("dsv4_prompt_tokens_total", "Prompt tokens of finished requests.", prompt_tokens);
  counter("dsv4_generation_tokens_total", "Generated tokens.", generation_tokens);
  counter("dsv4_prompt_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.",
          prompt_cache_hit_tokens);
  counter("dsv4_prompt_cache_miss_tokens_total", "Prompt tokens computed (prefix cache miss).",
          prompt_cache_miss_tokens);
  gauge("dsv4_num_requests_waiting", "Requests queued, not started.", double(waiting));
  gauge("dsv4_num_requests_running", "Requests generating.", double(running));
  gauge("dsv4_context_length_tokens", "Context length of the served model.",
        double(context_length));
  out += "# HELP dsv4_time_to_first_token_seconds Time from request to first token.\n";
  out += "# TYPE dsv4_time_to_first_token_seconds histogram\n";
  ttft_seconds.render("dsv4_time_to_first_token_seconds", out);
  out += "# HELP dsv4_inter_token_latency_seconds Time between consecutive tokens.\n";
  out += "# TYPE dsv4_inter_token_latency_seconds histogram\n";
  inter_token_seconds.render("dsv4_inter_token_latency_seconds", out);
  out += "# HELP dsv4_e2e_request_latency_seconds Time from request to its last token.\n";
  out += "# TYPE dsv4_e2e_request_latency_seconds histogram\n";
  e2e_seconds.render("dsv4_e2e_request_latency_seconds", out);
  return out;
}

}  // namespace dsv4::server
