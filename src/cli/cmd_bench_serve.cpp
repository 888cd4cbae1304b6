// dsv4 bench-serve: load generator for an OpenAI-compatible chat completions
// endpoint (dsv4 serve or any other): N concurrent streaming clients send M
// requests in total and the tool reports time to first token, inter-token
// latency and aggregate output tokens/s.
#pragma GCC diagnostic ignored "-Wrestrict"  // g++ 12 false positive in httplib (GCC bug 105651)

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage = R"(usage: dsv4 bench-serve --url http://127.0.0.1:PORT [options]

Runs --clients concurrent streaming clients against the server's OpenAI chat
completions endpoint (POST <url>/v1/chat/completions, stream: true,
stream_options.include_usage: true) until --requests requests have completed,
then prints:
  TTFT                 time from sending a request to its first content or
                       reasoning delta, p50 / p99 over requests
  inter-token latency  time between consecutive content/reasoning deltas of a
                       request, p50 / p99 over all gaps (a delta usually
                       carries one token; the detokenizer may hold back a
                       partial UTF-8 character)
  output tokens/s      sum of usage.completion_tokens / wall time of the run
Percentiles are nearest-rank. Exits 1 when any request failed (the figures
then cover the successful ones and the first error is printed).

options:
  --url URL            server base URL (a path ending in /v1 is accepted too)
  --clients N          concurrent clients (default 4)
  --requests M         requests in total (default 16)
  --max-tokens T       max_tokens per request (default 64)
  --prompt TEXT        the user message (default: a short writing task)
  --model NAME         "model" field of the requests (default deepseek-v4-flash)
  --api-key KEY        sent as Authorization: Bearer KEY
  --timeout S          per-request read timeout in seconds (default 600)
  --json               machine-readable output
)";

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Nearest-rank percentile of an unsorted sample; 0 when empty.
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

struct RequestResult {
  bool ok = false;
  std::string error;
  double ttft = -1;
  std::vector<double> gaps;  // seconds between deltas
  int64_t completion_tokens = 0;
  int64_t deltas = 0;
};

// Splits "http://host:port/prefix" into the client's base and the path of the
// chat completions endpoint.
void split_url(const std::string& url, std::string* base, std::string* path) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos || url.compare(0, scheme, "http") != 0)
    fail("--url must look like http://127.0.0.1:8000, got \"", url, "\"");
  const size_t slash = url.find('/', scheme + 3);
  *base = url.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : url.substr(slash);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  const bool has_v1 = prefix.size() >= 3 && prefix.compare(prefix.size() - 3, 3, "/v1") == 0;
  *path = prefix + (has_v1 ? "/chat/completions" : "/v1/chat/completions");
}

RequestResult run_request(const std::string& base, const std::string& path, const std::string& body,
                          const std::string& api_key, int timeout_s) {
  RequestResult r;
  httplib::Client client(base);
  client.set_read_timeout(timeout_s, 0);
  client.set_connection_timeout(10, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body;
  req.headers = {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}};
  if (!api_key.empty()) req.headers.emplace("Authorization", "Bearer " + api_key);
  const auto start = Clock::now();
  auto last = start;
  std::string buffer;
  bool done = false;
  std::string parse_error;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    size_t end;
    // Server-sent events are separated by a blank line.
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      const std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      const size_t d = event.find("data: ");
      if (d == std::string::npos) continue;
      const std::string payload = event.substr(d + 6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(payload);
      } catch (const std::exception& e) {
        parse_error = std::string("unparsable event: ") + e.what();
        return false;
      }
      if (j.contains("usage") && j["usage"].is_object() && j["usage"].contains("completion_tokens"))
        r.completion_tokens = j["usage"]["completion_tokens"].get<int64_t>();
      if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) continue;
      const auto& delta = j["choices"][0]["delta"];
      bool text = false;
      for (const char* k : {"content", "reasoning_content"})
        if (delta.contains(k) && delta[k].is_string() && !delta[k].get<std::string>().empty())
          text = true;
      if (!text) continue;
      const auto now = Clock::now();
      if (r.deltas == 0)
        r.ttft = seconds_between(start, now);
      else
        r.gaps.push_back(seconds_between(last, now));
      last = now;
      ++r.deltas;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = client.send(req, res, err);
  if (!parse_error.empty()) {
    r.error = parse_error;
  } else if (!sent) {
    r.error = "request failed: " + httplib::to_string(err);
  } else if (res.status != 200) {
    r.error = "HTTP " + std::to_string(res.status) + ": " + buffer.substr(0, 300);
  } else if (!done) {
    r.error = "the stream ended without data: [DONE]";
  } else {
    r.ok = true;
  }
  return r;
}

int run_bench_serve(int argc, char** argv) {
  Args args("bench-serve", argc, argv,
            {{"url", true},
             {"clients", true},
             {"requests", true},
             {"max-tokens", true},
             {"prompt", true},
             {"model", true},
             {"api-key", true},
             {"timeout", true},
             {"json", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  std::string base, path;
  split_url(args.require("url"), &base, &path);
  const int64_t clients = args.get_int("clients", 4);
  const int64_t requests = args.get_int("requests", 16);
  const int64_t max_tokens = args.get_int("max-tokens", 64);
  const int64_t timeout = args.get_int("timeout", 600);
  if (clients < 1 || clients > 4096) fail("--clients must be between 1 and 4096");
  if (requests < 1) fail("--requests must be at least 1");
  if (max_tokens < 1) fail("--max-tokens must be at least 1");
  if (timeout < 1) fail("--timeout must be at least 1 second");
  const std::string prompt =
      args.get("prompt", "Write a short story about a lighthouse keeper who finds a message.");
  const std::string model = args.get("model", "deepseek-v4-flash");
  const std::string api_key = args.get("api-key");

  std::vector<RequestResult> results(static_cast<size_t>(requests));
  std::atomic<int64_t> next{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  // Client threads block on sockets, not on compute: plain threads, one per
  // client, rather than the compute pool.
  for (int64_t c = 0; c < std::min(clients, requests); ++c)
    threads.emplace_back([&] {
      for (int64_t i; (i = next.fetch_add(1)) < requests;) {
        const nlohmann::json body = {
            {"model", model},           {"messages", {{{"role", "user"}, {"content", prompt}}}},
            {"max_tokens", max_tokens}, {"seed", i},
            {"stream", true},           {"stream_options", {{"include_usage", true}}}};
        results[static_cast<size_t>(i)] =
            run_request(base, path, body.dump(), api_key, static_cast<int>(timeout));
      }
    });
  for (auto& t : threads) t.join();
  const double wall = seconds_between(t0, Clock::now());

  std::vector<double> ttft, gaps;
  int64_t tokens = 0, ok = 0;
  std::string first_error;
  for (const auto& r : results) {
    if (!r.ok) {
      if (first_error.empty()) first_error = r.error;
      continue;
    }
    ++ok;
    tokens += r.completion_tokens;
    if (r.ttft >= 0) ttft.push_back(r.ttft);
    gaps.insert(gaps.end(), r.gaps.begin(), r.gaps.end());
  }
  if (ok == 0) fail("every request failed; the first: ", first_error);
  nlohmann::ordered_json out = {{"url", base + path},
                                {"clients", clients},
                                {"requests", requests},
                                {"succeeded", ok},
                                {"failed", requests - ok},
                                {"max_tokens", max_tokens},
                                {"wall_seconds", wall},
                                {"output_tokens", tokens},
                                {"output_tokens_per_second", static_cast<double>(tokens) / wall},
                                {"ttft_p50_seconds", percentile(ttft, 50)},
                                {"ttft_p99_seconds", percentile(ttft, 99)},
                                {"inter_token_p50_seconds", percentile(gaps, 50)},
                                {"inter_token_p99_seconds", percentile(gaps, 99)},
                                {"inter_token_samples", gaps.size()}};
  if (!first_error.empty()) out["first_error"] = first_error;
  if (args.has("json")) {
    write_stdout(out.dump(2) + "\n");
  } else {
    char buf[1024];
    std::snprintf(buf, sizeof buf,
                  "%s: %lld clients, %lld/%lld requests succeeded in %.2f s\n"
                  "  TTFT                 p50 %.1f ms, p99 %.1f ms\n"
                  "  inter-token latency  p50 %.1f ms, p99 %.1f ms (%zu gaps)\n"
                  "  output               %lld tokens, %.2f tokens/s aggregate\n",
                  (base + path).c_str(), static_cast<long long>(clients),
                  static_cast<long long>(ok), static_cast<long long>(requests), wall,
                  1e3 * percentile(ttft, 50), 1e3 * percentile(ttft, 99),
                  1e3 * percentile(gaps, 50), 1e3 * percentile(gaps, 99), gaps.size(),
                  static_cast<long long>(tokens), static_cast<double>(tokens) / wall);
    std::string text = buf;
    if (!first_error.empty()) text += "  first error: " + first_error + "\n";
    write_stdout(text);
  }
  return ok == requests ? 0 : 1;
}

}  // namespace

DSV4_COMMAND("bench-serve",
             "load-test a chat completions server: TTFT, inter-token latency, tokens/s",
             run_bench_serve);

}  // namespace dsv4::cli
