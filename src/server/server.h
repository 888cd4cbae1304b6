// `dsv4 serve`: the DeepSeek platform API (OpenAI chat completions, FIM
// completions, Anthropic messages, models, balance) plus the self-hosting
// conventions (/health, /metrics, /tokenize, /detokenize) over cpp-httplib.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/scheduler.h"
#include "server/chat_backend.h"

namespace dsv4::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                        // 0: any free port (see ApiServer::bind)
  std::vector<std::string> api_keys;      // empty: no authentication
  std::vector<std::string> served_names;  // extra model names
  bool insecure = false;                  // allow a non-loopback bind without keys
  std::string prices_file;                // JSON price overrides
  std::map<std::string, double> budgets;  // api key -> USD
  std::string ledger_file;                // empty: ledger kept in memory only
  size_t max_body_bytes = 32u << 20;
  // HTTP worker threads = the number of connections served at once (each
  // stream holds one for its whole duration).
  int http_threads = 32;
  size_t max_queue = 128;   // queued requests beyond this get 429
  int64_t max_context = 0;  // > 0: serve at most this many tokens per sequence
  std::chrono::milliseconds keepalive_interval{10000};
  // One stderr line per request: route, status, time, the body's top-level
  // fields and the headers that select API behaviour (to see what real
  // clients such as Claude Code and OpenCode send).
  bool log_requests = false;
  // Added to every request's logits (llama.cpp's --logit-bias): e.g. a large
  // end-of-sequence bias makes a random-weight test checkpoint answer briefly.
  std::vector<std::pair<int32_t, float>> logit_bias;
};

class ApiServer {
 public:
  explicit ApiServer(ServerOptions options);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Makes the model available; until then every API route answers 503 and
  // /health reports "Loading model".
  void attach(std::shared_ptr<engine::Scheduler> scheduler,
              std::shared_ptr<const ChatBackend> backend);

  // Binds host:port (throws dsv4::Error if it cannot, or if the address is not
  // loopback while no API key is configured and insecure is false). Returns
  // the bound port.
  int bind();
  // Serves until stop(); call bind() first.
  void serve();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback_host(const std::string& host);

}  // namespace dsv4::server
