#include "server/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <random>
#include <set>

#include "engine/json_constraint.h"
#include "engine/tool_constraint.h"
#include "server/api_error.h"
#include "server/auth.h"
#include "server/client_watch.h"
#include "server/ledger.h"
#include "server/metrics.h"
#include "server/requests.h"
#include "util/error.h"

namespace dsv4::server {

using json = Json;
using Clock = std::chrono::steady_clock;

bool is_loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

namespace {

const char* kFingerprint = "fp_dsv4_selfhosted";

std::string dump(const json& j) {
  // Token bytes in logprobs may be partial UTF-8: replace rather than throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string random_alnum(size_t n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string s(n, ' ');
  for (auto& c : s) c = chars[rng() % 62];
  return s;
}

std::string uuid4() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  uint64_t a = rng(), b = rng();
  a = (a & 0xffffffffffff0fffULL) | 0x4000ULL;
  b = (b & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", unsigned(a >> 32),
                unsigned((a >> 16) & 0xffff), unsigned(a & 0xffff), unsigned(b >> 48),
                static_cast<unsigned long long>(b & 0xffffffffffffULL));
  return buf;
}

int64_t unix_now() {
  return static_cast<int64_t>(std::time(nullptr));
}

json bytes_array(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(int(c));
  return a;
}

std::string fmt_usd(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", x);
  return buf;
}

// The prefix cache's state in Prometheus text (the hit/miss token counters
// are in Metrics, counted per finished request).
std::string prefix_cache_metrics(const engine::PrefixCacheStats& st, uint64_t budget) {
  std::string out;
  auto add = [&](const char* name, const char* type, const char* help, uint64_t v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
           name + " " + std::to_string(v) + "\n";
  };
  add("dsv4_prefix_cache_entries", "gauge", "Snapshots held by the prefix cache.", st.entries);
  add("dsv4_prefix_cache_bytes", "gauge", "Bytes charged to the prefix cache's snapshots.",
      st.bytes);
  add("dsv4_prefix_cache_budget_bytes", "gauge", "The prefix cache's memory budget.", budget);
  add("dsv4_prefix_cache_lookups_total", "counter", "Prefix cache lookups.", st.lookups);
  add("dsv4_prefix_cache_hits_total", "counter", "Prefix cache lookups that hit.", st.hits);
  add("dsv4_prefix_cache_evictions_total", "counter", "Snapshots evicted for the budget.",
      st.evictions);
  return out;
}

// The usage object of the OpenAI-format routes.
json openai_usage(int64_t prompt, int64_t completion, int64_t reasoning, int64_t cache_hit,
                  bool chat) {
  json u = {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion},
            {"prompt_tokens_details", {{"cached_tokens", cache_hit}}},
            {"prompt_cache_hit_tokens", cache_hit},
            {"prompt_cache_miss_tokens", prompt - cache_hit}};
  if (chat) u["completion_tokens_details"] = {{"reasoning_tokens", reasoning}};
  return u;
}

// Accumulates one generation's output as the chat layer parses it.
struct ToolCall {
  std::string id, name, arguments;
};

struct Collected {
  std::string reasoning, content;
  std::vector<ToolCall> calls;
  json content_logprobs = json::array(), reasoning_logprobs = json::array();
  int64_t reasoning_tokens = 0;
  bool in_reasoning = false;
};

const char* finish_name(const engine::GenerationEvent& ev, bool tool_calls) {
  switch (ev.finish) {
    case engine::FinishReason::kStop:
      return tool_calls ? "tool_calls" : "stop";
    case engine::FinishReason::kLength:
      return "length";
    case engine::FinishReason::kInsufficientResource:
      return "insufficient_system_resource";
    default:
      return "stop";
  }
}

const char* anthropic_stop_reason(const engine::GenerationEvent& ev, bool tool_calls) {
  switch (ev.finish) {
    case engine::FinishReason::kStop:
      if (tool_calls) return "tool_use";
      return ev.matched_stop.empty() ? "end_turn" : "stop_sequence";
    case engine::FinishReason::kLength:
      return "max_tokens";
    default:
      return "end_turn";
  }
}

// A watch on the connection of `req` (see ClientWatch).
std::shared_ptr<ClientWatch> watch_client(const httplib::Request& req) {
  return std::make_shared<ClientWatch>(req.local_addr, req.local_port, req.remote_addr,
                                       req.remote_port);
}

// A one-line outline of a JSON request body for the request log: every
// top-level field, with array lengths, object keys one level down and short
// scalar values (`tools[24] thinking{type=adaptive} max_tokens=32000`).
std::string outline(const json& j, int depth = 0) {
  if (j.is_array()) return "[" + std::to_string(j.size()) + "]";
  if (j.is_object()) {
    std::string s;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!s.empty()) s += depth == 0 ? " " : ",";
      s += it.key();
      if (it->is_object() && depth < 1)
        s += "{" + outline(*it, depth + 1) + "}";
      else if (it->is_array() || it->is_object())
        s += outline(*it, depth + 1);
      else if (it->is_string() && it->get_ref<const std::string&>().size() > 40)
        s += "=\"…\"";
      else
        s += "=" + dump(*it);
    }
    return s;
  }
  return dump(j);
}

}  // namespace

struct ApiServer::Impl {
  ServerOptions opt;
  ApiKeys keys;
  ModelNames names;
  PriceTable prices;
  Ledger ledger;
  Metrics metrics;
  httplib::Server http;
  std::mutex attach_mu;
  std::shared_ptr<engine::Scheduler> scheduler;
  std::shared_ptr<const ChatBackend> backend;
  std::atomic<bool> ready{false};
  int bound_port = -1;

  explicit Impl(ServerOptions o)
      : opt(std::move(o)),
        keys(opt.api_keys),
        names(opt.served_names),
        prices(PriceTable::defaults()),
        ledger(opt.ledger_file) {
    if (!opt.prices_file.empty()) prices.load_file(opt.prices_file);
    // Served names and aliases not in the table are billed like the model
    // they stand for (flash) unless the price file says otherwise.
    for (const auto& n : opt.served_names)
      if (!prices.all().count(n)) prices.set(n, prices.get("deepseek-v4-flash"));
    for (const auto& [key, usd] : opt.budgets) ledger.set_budget(key, usd);
    setup_routes();
  }

  // ------------------------------------------------------------ plumbing

  static ApiStyle style_of(const std::string& path) {
    return path.rfind("/anthropic", 0) == 0 || path.rfind("/v1/messages", 0) == 0
               ? ApiStyle::kAnthropic
               : ApiStyle::kOpenAI;
  }

  void send_error(httplib::Response& res, const ApiError& e, ApiStyle style) {
    res.status = error_status(e.kind(), style);
    res.set_content(dump(error_body(e, style)), "application/json");
  }

  // The API key of the request; throws 401 when keys are configured and the
  // request has none or a wrong one. Returns "" when auth is off.
  std::string authenticate(const httplib::Request& req) {
    auto key =
        request_key(req.get_header_value("Authorization"), req.get_header_value("x-api-key"));
    if (!keys.enabled()) return key.value_or("");
    if (!key || key->empty())
      throw ApiError(ErrorKind::kAuthentication,
                     "Authentication Fails, no api key provided (use Authorization: Bearer <key> "
                     "or x-api-key)");
    if (!keys.valid(*key))
      throw ApiError(ErrorKind::kAuthentication,
                     "Authentication Fails, Your api key: " + mask_key(*key) + " is invalid");
    return *key;
  }

  json parse_body(const httplib::Request& req) {
    try {
      return json::parse(req.body);
    } catch (const json::parse_error& e) {
      throw ApiError(ErrorKind::kInvalidRequest,
                     std::string("Failed to parse the request body as JSON: ") + e.what());
    }
  }

  void require_ready() {
    if (!ready.load())
      throw ApiError(ErrorKind::kOverloaded, "Loading model: the server is not ready yet");
  }

  using Handler = std::function<void(const httplib::Request&, httplib::Response&, ApiStyle)>;

  // Wraps a route: style, error rendering, request counting, request ids.
  httplib::Server::Handler wrap(const std::string& route, Handler h) {
    return [this, route, h](const httplib::Request& req, httplib::Response& res) {
      const ApiStyle style = style_of(req.path);
      const std::string rid = uuid4();
      const auto start = Clock::now();
      res.set_header(style == ApiStyle::kAnthropic ? "request-id" : "x-request-id", rid);
      try {
        h(req, res, style);
      } catch (const ApiError& e) {
        send_error(res, e, style);
      } catch (const Error& e) {
        send_error(res, ApiError(ErrorKind::kInvalidRequest, e.what()), style);
      } catch (const std::exception& e) {
        send_error(res, ApiError(ErrorKind::kServer, std::string("internal error: ") + e.what()),
                   style);
      }
      if (res.status == 429 || res.status == 503 || res.status == 529)
        res.set_header("retry-after", "1");
      metrics.count_request(route, res.status == -1 ? 200 : res.status);
      if (opt.log_requests) log_request(req, res, start);
    };
  }

  void log_request(const httplib::Request& req, const httplib::Response& res,
                   Clock::time_point start) const {
    std::string line = "dsv4 serve: " + req.method + " " + req.target + " " +
                       std::to_string(res.status == -1 ? 200 : res.status);
    char buf[64];
    std::snprintf(buf, sizeof buf, " %.3fs",
                  std::chrono::duration<double>(Clock::now() - start).count());
    line += buf;
    if (!req.body.empty()) {
      line += " body " + std::to_string(req.body.size()) + " B";
      const json body = json::parse(req.body, nullptr, false);
      line += body.is_discarded() ? " (not JSON)" : " {" + outline(body) + "}";
    }
    for (const char* h : {"anthropic-beta", "anthropic-version", "user-agent"})
      if (req.has_header(h)) line += std::string(" ") + h + ": " + req.get_header_value(h);
    if (res.status >= 400) line += " -> " + res.body;
    line += "\n";
    // One fputs per line keeps concurrent requests' lines whole.
    std::fputs(line.c_str(), stderr);
  }

  // --------------------------------------------------------------- routes

  void setup_routes() {
    http.set_payload_max_length(opt.max_body_bytes);
    const int threads = std::max(2, opt.http_threads);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_keep_alive_max_count(100);
    http.set_read_timeout(600, 0);
    http.set_write_timeout(600, 0);

    // Fills in bodies httplib itself produced (404 for unknown routes, 413 for
    // oversized bodies) so every error has the route's JSON shape.
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                       httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      const ApiStyle style = style_of(req.path);
      if (res.status == 413)
        send_error(
            res,
            ApiError(ErrorKind::kTooLarge, "Request body too large: the limit is " +
                                               std::to_string(opt.max_body_bytes) + " bytes"),
            style);
      else if (res.status == 404)
        send_error(res, ApiError(ErrorKind::kNotFound, "Not found: " + req.method + " " + req.path),
                   style);
      else
        return httplib::Server::HandlerResponse::Unhandled;
      metrics.count_request("other", res.status);
      return httplib::Server::HandlerResponse::Handled;
    }));

    auto post = [&](const std::string& pattern, const std::string& route, Handler h) {
      http.Post(pattern + "/?", wrap(route, std::move(h)));
    };
    auto get = [&](const std::string& pattern, const std::string& route, Handler h) {
      http.Get(pattern + "/?", wrap(route, std::move(h)));
    };

    for (const char* p : {"/chat/completions", "/v1/chat/completions"})
      post(p, "chat_completions", [this](auto& req, auto& res, ApiStyle) {
        handle_chat(req, res, ApiStyle::kOpenAI, false, false);
      });
    post("/beta/chat/completions", "chat_completions", [this](auto& req, auto& res, ApiStyle) {
      handle_chat(req, res, ApiStyle::kOpenAI, true, false);
    });
    for (const char* p : {"/completions", "/v1/completions", "/beta/completions"})
      post(p, "completions", [this](auto& req, auto& res, ApiStyle) { handle_fim(req, res); });
    for (const char* p : {"/anthropic/v1/messages", "/anthropic/messages", "/v1/messages"})
      post(p, "messages", [this](auto& req, auto& res, ApiStyle) {
        handle_chat(req, res, ApiStyle::kAnthropic, false, false);
      });
    for (const char* p : {"/anthropic/v1/messages/count_tokens", "/anthropic/messages/count_tokens",
                          "/v1/messages/count_tokens"})
      post(p, "count_tokens", [this](auto& req, auto& res, ApiStyle) {
        handle_chat(req, res, ApiStyle::kAnthropic, false, true);
      });
    for (const char* p : {"/models", "/v1/models", "/beta/models"})
      get(p, "models", [this](auto& req, auto& res, ApiStyle) { handle_models(req, res); });
    get("/anthropic/v1/models", "models",
        [this](auto& req, auto& res, ApiStyle) { handle_anthropic_models(req, res); });
    get("/user/balance", "balance",
        [this](auto& req, auto& res, ApiStyle) { handle_balance(req, res); });
    for (const char* p : {"/health", "/v1/health"})
      get(p, "health", [this](auto&, auto& res, ApiStyle) {
        if (ready.load()) {
          res.set_content(R"({"status":"ok"})", "application/json");
        } else {
          res.status = 503;
          res.set_content(
              R"({"error":{"code":503,"message":"Loading model","type":"unavailable_error"}})",
              "application/json");
        }
      });
    get("/metrics", "metrics", [this](auto&, auto& res, ApiStyle) {
      std::shared_ptr<engine::Scheduler> s;
      {
        std::lock_guard<std::mutex> lock(attach_mu);
        s = scheduler;
      }
      std::string text =
          metrics.render(s ? s->queue_depth() : 0, s ? s->running() : 0, s ? context_limit(*s) : 0);
      if (const engine::PrefixCache* cache = s ? s->prefix_cache() : nullptr)
        text += prefix_cache_metrics(cache->stats(), cache->options().budget_bytes);
      res.set_content(text, "text/plain; version=0.0.4");
    });
    post("/tokenize", "tokenize",
         [this](auto& req, auto& res, ApiStyle) { handle_tokenize(req, res); });
    post("/detokenize", "detokenize",
         [this](auto& req, auto& res, ApiStyle) { handle_detokenize(req, res); });
  }

  // The context served: the model's, or less with --max-context.
  int64_t context_limit(const engine::Scheduler& s) const {
    const int64_t model_ctx = s.model().context_length();
    return opt.max_context > 0 ? std::min(model_ctx, opt.max_context) : model_ctx;
  }

  std::pair<std::shared_ptr<engine::Scheduler>, std::shared_ptr<const ChatBackend>> model() {
    require_ready();
    std::lock_guard<std::mutex> lock(attach_mu);
    return {scheduler, backend};
  }

  // ------------------------------------------------------ simple routes

  void handle_models(const httplib::Request& req, httplib::Response& res) {
    authenticate(req);
    auto [sched, backend] = model();
    const int64_t ctx = context_limit(*sched);
    json data = json::array();
    for (const auto& n : names.listed())
      data.push_back({{"id", n},
                      {"object", "model"},
                      {"owned_by", "deepseek"},
                      {"created", 1776988800},  // 2026-04-24, the V4 release
                      {"max_model_len", ctx},
                      {"context_length", ctx}});
    res.set_content(dump({{"object", "list"}, {"data", data}}), "application/json");
  }

  void handle_anthropic_models(const httplib::Request& req, httplib::Response& res) {
    authenticate(req);
    model();
    json data = json::array();
    for (const auto& n : names.listed())
      data.push_back({{"type", "model"},
                      {"id", n},
                      {"display_name", n},
                      {"created_at", "2026-04-24T00:00:00Z"}});
    res.set_content(dump({{"data", data},
                          {"has_more", false},
                          {"first_id", data.front()["id"]},
                          {"last_id", data.back()["id"]}}),
                    "application/json");
  }

  void handle_balance(const httplib::Request& req, httplib::Response& res) {
    const std::string key = authenticate(req);
    json info = {{"currency", "USD"}, {"granted_balance", "0.00"}};
    bool available = true;
    if (auto left = ledger.remaining(key)) {
      info["total_balance"] = fmt_usd(*left);
      info["topped_up_balance"] = fmt_usd(*left);
      available = *left > 0;
    } else {
      // No budget configured for this key: usage is not limited.
      info["total_balance"] = "0.00";
      info["topped_up_balance"] = "0.00";
    }
    res.set_content(dump({{"is_available", available}, {"balance_infos", json::array({info})}}),
                    "application/json");
  }

  void handle_tokenize(const httplib::Request& req, httplib::Response& res) {
    authenticate(req);
    auto [sched, backend] = model();
    json body = parse_body(req);
    if (!body.is_object()) throw_type_mismatch("body", body, "an object");
    std::vector<int32_t> ids;
    if (body.contains("messages")) {
      json b = body;
      if (!b.contains("model")) b["model"] = "deepseek-v4-flash";
      ChatJob job = parse_openai_chat(b, true, names);
      ids = backend->encode_chat(job.conversation);
    } else {
      const json* text = nullptr;
      for (const char* k : {"content", "prompt", "text"})
        if (body.contains(k)) text = &body[k];
      if (!text)
        throw ApiError(ErrorKind::kInvalidRequest, "missing field `content` (or `prompt`)");
      if (!text->is_string()) throw_type_mismatch("content", *text, "a string");
      ids = backend->encode_text(text->get<std::string>());
    }
    json tokens = ids;
    json out = {
        {"tokens", tokens}, {"count", ids.size()}, {"max_model_len", context_limit(*sched)}};
    if (body.value("with_pieces", false) || body.value("return_token_strs", false)) {
      json pieces = json::array();
      for (int32_t id : ids) pieces.push_back(backend->decode(std::span<const int32_t>(&id, 1)));
      out["token_strs"] = pieces;
    }
    res.set_content(dump(out), "application/json");
  }

  void handle_detokenize(const httplib::Request& req, httplib::Response& res) {
    authenticate(req);
    auto [sched, backend] = model();
    json body = parse_body(req);
    if (!body.is_object()) throw_type_mismatch("body", body, "an object");
    if (!body.contains("tokens"))
      throw ApiError(ErrorKind::kInvalidRequest, "missing field `tokens`");
    const json& t = body["tokens"];
    if (!t.is_array()) throw_type_mismatch("tokens", t, "a sequence of token ids");
    std::vector<int32_t> ids;
    for (size_t i = 0; i < t.size(); ++i) {
      if (!t[i].is_number_integer())
        throw_type_mismatch("tokens[" + std::to_string(i) + "]", t[i], "a token id");
      const int64_t id = t[i].get<int64_t>();
      if (id < 0 || id > INT32_MAX || !backend->valid_token(static_cast<int32_t>(id)))
        throw ApiError(ErrorKind::kInvalidRequest, "tokens[" + std::to_string(i) +
                                                       "]: " + std::to_string(id) +
                                                       " is not a token id of this model");
      ids.push_back(static_cast<int32_t>(id));
    }
    const std::string text = backend->decode(ids);
    res.set_content(dump({{"content", text}, {"prompt", text}}), "application/json");
  }

  // ------------------------------------------------------------ generation

  // Budget check before any work: 402 once a key's budget is spent.
  void check_balance(const std::string& key) {
    if (!ledger.has_balance(key)) throw ApiError(ErrorKind::kBalance, "Insufficient Balance");
  }

  void record_usage(const std::string& key, const std::string& price_key,
                    const engine::GenerationEvent& ev) {
    const int64_t prompt = ev.prompt_tokens, hit = ev.prompt_cache_hit_tokens;
    Usage u;
    u.prompt_cache_hit_tokens = hit;  // billed at the cache-hit input price
    u.prompt_cache_miss_tokens = prompt - hit;
    u.completion_tokens = ev.completion_tokens;
    ledger.record(key, u, cost_usd(prices.get(price_key), u));
    metrics.prompt_tokens += prompt;
    metrics.prompt_cache_hit_tokens += hit;
    metrics.prompt_cache_miss_tokens += prompt - hit;
    metrics.generation_tokens += ev.completion_tokens;
  }

  // Prefix-cache isolation: requests share cached prompts only under the same
  // API key and user_id (api-surface.md §10: each user's cache is isolated,
  // user_id isolates further).
  static std::string cache_space(const std::string& key, const std::string& user_id) {
    return key + '\n' + user_id;
  }

  // Context checks with the platform's texts, then the effective max_tokens.
  int64_t fit_context(ApiStyle style, int64_t prompt, std::optional<int64_t> max_tokens,
                      int64_t ctx, int64_t default_cap) {
    const int64_t want = max_tokens.value_or(0);
    if (style == ApiStyle::kAnthropic) {
      if (prompt >= ctx)
        throw ApiError(ErrorKind::kInvalidRequest, "prompt is too long: " + std::to_string(prompt) +
                                                       " tokens > " + std::to_string(ctx - 1) +
                                                       " maximum");
      if (prompt + want > ctx)
        throw ApiError(
            ErrorKind::kInvalidRequest,
            "input length and `max_tokens` exceed context limit: " + std::to_string(prompt) +
                " + " + std::to_string(want) + " > " + std::to_string(ctx) +
                ", decrease input length or `max_tokens` and try again");
    } else if (prompt >= ctx || prompt + want > ctx) {
      const int64_t completion = max_tokens ? want : 0;
      throw ApiError(ErrorKind::kInvalidRequest,
                     "This model's maximum context length is " + std::to_string(ctx) +
                         " tokens. However, you requested " + std::to_string(prompt + completion) +
                         " tokens (" + std::to_string(prompt) + " in the messages, " +
                         std::to_string(completion) +
                         " in the completion). Please reduce the length of the messages or "
                         "completion.",
                     "messages");
    }
    // Without max_tokens: whatever room the context leaves, up to the cap.
    return max_tokens ? want : std::min(default_cap, ctx - prompt);
  }

  std::shared_ptr<engine::RequestHandle> submit(engine::Scheduler& sched,
                                                engine::GenerationRequest gen) {
    if (sched.queue_depth() >= opt.max_queue)
      throw ApiError(ErrorKind::kRateLimit, "Rate Limit Reached: " + std::to_string(opt.max_queue) +
                                                " requests are already waiting; retry later");
    return sched.submit(std::move(gen));
  }

  void handle_chat(const httplib::Request& req, httplib::Response& res, ApiStyle style, bool beta,
                   bool count_only) {
    const auto t0 = Clock::now();
    const std::string key = authenticate(req);
    auto [sched, backend] = model();
    json body = parse_body(req);
    ChatJob job = style == ApiStyle::kOpenAI ? parse_openai_chat(body, beta, names)
                                             : parse_anthropic_messages(body, names, count_only);
    std::vector<int32_t> prompt;
    try {
      prompt = backend->encode_chat(job.conversation);
    } catch (const Error& e) {
      throw ApiError(ErrorKind::kInvalidRequest, std::string("Invalid messages: ") + e.what());
    }
    if (count_only) {
      res.set_content(dump({{"input_tokens", prompt.size()}}), "application/json");
      return;
    }
    check_balance(key);
    const int64_t ctx = context_limit(*sched);
    job.gen.max_tokens = fit_context(style, static_cast<int64_t>(prompt.size()), job.max_tokens,
                                     ctx, kMaxOutputTokens);
    job.gen.prompt = std::move(prompt);
    job.gen.stop_tokens = backend->stop_tokens();
    job.gen.sampling.logit_bias = opt.logit_bias;
    job.gen.cache_space = cache_space(key, job.user_id);
    if (!job.constrained_tools.empty() && !job.prefix)
      job.gen.constraint = std::make_shared<engine::ToolCallConstraint>(
          backend->token_table(), job.gen.stop_tokens,
          job.parser_thinking ? backend->think_end_token() : -1,
          engine::ToolCallMachine::compile(job.constrained_tools, job.tool_allowed),
          job.tool_required);
    else if (job.json_mode)
      job.gen.constraint = std::make_shared<engine::JsonObjectConstraint>(
          backend->token_table(), job.gen.stop_tokens,
          job.parser_thinking ? backend->think_end_token() : -1);
    const int64_t cached_now = sched->cached_prompt_tokens(job.gen);
    auto handle = submit(*sched, job.gen);
    auto state = std::make_shared<Run>(this, std::move(job), key, handle, backend, t0);
    state->cached_at_submit = cached_now;
    if (state->job.stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [state](size_t, httplib::DataSink& sink) {
            state->stream(sink);
            return true;
          },
          [state](bool) { state->handle->cancel(); });
    } else if (handle->state() == engine::RequestHandle::State::kQueued) {
      // Queued behind other requests: answer 200 now and send blank lines
      // while waiting, as the platform does for non-streaming requests (JSON
      // parsers skip leading whitespace). Clients' idle timers hold, and a
      // client that leaves is noticed and dropped from the queue.
      auto client = watch_client(req);
      res.set_chunked_content_provider(
          "application/json",
          [state, client](size_t, httplib::DataSink& sink) {
            if (state->collect_all(&sink, client.get()))
              Run::write(sink, dump(state->final_or_error()));
            sink.done();
            return true;
          },
          [state](bool) { state->handle->cancel(); });
    } else {
      if (!state->collect_all(nullptr, watch_client(req).get())) {
        // The client left: nobody reads this (499 as nginx logs it).
        res.status = 499;
        return;
      }
      if (state->final_ev.finish == engine::FinishReason::kError)
        throw ApiError(ErrorKind::kServer, "generation failed: " + state->final_ev.error);
      if (state->final_ev.finish == engine::FinishReason::kInsufficientResource &&
          style == ApiStyle::kAnthropic)
        throw ApiError(ErrorKind::kOverloaded,
                       "The request is interrupted due to insufficient resource of the inference "
                       "system");
      res.set_content(dump(state->final_body()), "application/json");
    }
  }

  // One chat generation: turns engine events into parsed output and into
  // either a final body or SSE events.
  struct Run {
    Impl* srv;
    ChatJob job;
    std::string key;
    std::shared_ptr<engine::RequestHandle> handle;
    std::shared_ptr<const ChatBackend> backend;
    std::shared_ptr<const engine::Detokenizer> detok;
    std::unique_ptr<OutputParser> parser;
    Clock::time_point t0, last_token;
    bool first_token = true;
    int64_t cached_at_submit = 0;  // prefix-cache hit expected when submitted
    Collected out;
    engine::GenerationEvent final_ev;
    std::string id;
    int64_t created;

    Run(Impl* s, ChatJob j, std::string k, std::shared_ptr<engine::RequestHandle> h,
        std::shared_ptr<const ChatBackend> b, Clock::time_point start)
        : srv(s),
          job(std::move(j)),
          key(std::move(k)),
          handle(std::move(h)),
          backend(std::move(b)),
          t0(start),
          id(uuid4()),
          created(unix_now()) {
      detok = backend->detokenizer();
      parser = backend->new_output_parser(job.parser_thinking);
      out.in_reasoning = job.parser_thinking;
    }

    json logprob_entry(const engine::SampledToken& t) const {
      const std::string bytes = detok->token_bytes(t.token);
      json top = json::array();
      for (const auto& c : t.top) {
        const std::string b = detok->token_bytes(c.token);
        top.push_back({{"token", b}, {"logprob", c.logprob}, {"bytes", bytes_array(b)}});
      }
      return {{"token", bytes},
              {"logprob", t.logprob},
              {"bytes", bytes_array(bytes)},
              {"top_logprobs", top}};
    }

    // Feeds one engine event through the parser; updates the accumulated
    // output and returns the parsed events plus this event's logprobs.
    std::vector<OutputEvent> absorb(const engine::GenerationEvent& ev, json* content_lp,
                                    json* reasoning_lp) {
      const auto now = ev.time;
      if (!ev.tokens.empty()) {
        if (first_token) {
          srv->metrics.ttft_seconds.observe(std::chrono::duration<double>(now - t0).count());
          first_token = false;
        } else {
          srv->metrics.inter_token_seconds.observe(
              std::chrono::duration<double>(now - last_token).count());
        }
        last_token = now;
      }
      std::vector<OutputEvent> evs = parser->push(ev.text);
      if (ev.done) {
        auto tail = parser->finish(ev.stopped_by_token);
        evs.insert(evs.end(), tail.begin(), tail.end());
      }
      // This event's tokens were reasoning if they produced reasoning text,
      // or produced nothing while the output was still in the reasoning
      // section (e.g. the tokens of "</think>").
      bool any_reasoning = false, any_other = false;
      for (const auto& e : evs)
        (e.kind == OutputEvent::Kind::kReasoning ? any_reasoning : any_other) = true;
      const bool was_reasoning = !any_other && (any_reasoning || out.in_reasoning);
      for (const auto& e : evs) {
        switch (e.kind) {
          case OutputEvent::Kind::kReasoning:
            out.reasoning += e.text;
            break;
          case OutputEvent::Kind::kContent:
            out.content += e.text;
            out.in_reasoning = false;
            break;
          case OutputEvent::Kind::kToolCallBegin: {
            char prefix[16];
            std::snprintf(prefix, sizeof prefix, "call_%02d_", int(out.calls.size() % 100));
            out.calls.push_back({prefix + random_alnum(24), e.text, ""});
            out.in_reasoning = false;
            break;
          }
          case OutputEvent::Kind::kToolCallArgs:
            if (!out.calls.empty()) out.calls.back().arguments += e.text;
            break;
          case OutputEvent::Kind::kToolCallEnd:
            break;
        }
      }
      if (was_reasoning) out.reasoning_tokens += static_cast<int64_t>(ev.tokens.size());
      if (job.logprobs) {
        json& dst = was_reasoning ? *reasoning_lp : *content_lp;
        for (const auto& t : ev.tokens) dst.push_back(logprob_entry(t));
        for (const auto& e : dst)
          (was_reasoning ? out.reasoning_logprobs : out.content_logprobs).push_back(e);
      }
      if (ev.done) finish(ev);
      return evs;
    }

    void finish(const engine::GenerationEvent& ev) {
      final_ev = ev;
      srv->metrics.e2e_seconds.observe(std::chrono::duration<double>(Clock::now() - t0).count());
      if (ev.finish != engine::FinishReason::kError)
        srv->record_usage(key, job.model.price_key, ev);
    }

    // Runs the request to its end. sink: the request waits in the queue
    // behind a 200, and gets a blank line every keep-alive interval.
    // client: the client's connection, polled between tokens (and every
    // 100 ms while queued) so that a client that leaves stops its request
    // within one token. False if the request was cancelled.
    bool collect_all(httplib::DataSink* sink, ClientWatch* client) {
      using std::chrono::milliseconds;
      const bool watched = client && client->available();
      const milliseconds keepalive = srv->opt.keepalive_interval;
      const milliseconds wait = watched ? std::min(keepalive, milliseconds(100))
                                        : (sink ? keepalive : milliseconds(1000));
      auto last_write = Clock::now();
      bool cancelled = false;
      while (true) {
        if (!cancelled && watched && client->gone()) {
          handle->cancel();  // the engine ends it with a kCancelled event
          cancelled = true;
        }
        auto ev = handle->next_event(wait);
        if (!ev) {
          if (sink && !cancelled && Clock::now() - last_write >= keepalive) {
            if (!write(*sink, "\n")) {
              handle->cancel();
              cancelled = true;
            }
            last_write = Clock::now();
          }
          continue;
        }
        json a = json::array(), b = json::array();
        absorb(*ev, &a, &b);
        if (ev->done) return !cancelled && ev->finish != engine::FinishReason::kCancelled;
      }
    }

    // The response body once the status is already 200: the result, or the
    // route's error body for a failed generation.
    json final_or_error() const {
      if (final_ev.finish == engine::FinishReason::kError)
        return error_body(ErrorKind::kServer, "generation failed: " + final_ev.error, "",
                          job.style);
      if (final_ev.finish == engine::FinishReason::kInsufficientResource &&
          job.style == ApiStyle::kAnthropic)
        return error_body(ErrorKind::kOverloaded,
                          "The request is interrupted due to insufficient resource of the "
                          "inference system",
                          "", job.style);
      return final_body();
    }

    bool tool_calls() const { return !out.calls.empty(); }

    json final_body() const {
      const auto& ev = final_ev;
      if (job.style == ApiStyle::kAnthropic) {
        json content = json::array();
        if (job.thinking && !job.prefix)
          content.push_back({{"type", "thinking"}, {"thinking", out.reasoning}, {"signature", id}});
        if (!out.content.empty() || out.calls.empty())
          content.push_back({{"type", "text"}, {"text", out.content}});
        for (const auto& c : out.calls)
          content.push_back({{"type", "tool_use"},
                             {"id", c.id},
                             {"name", c.name},
                             {"input", parse_args(c.arguments)}});
        return {{"id", id},
                {"type", "message"},
                {"role", "assistant"},
                {"model", job.model.name},
                {"content", content},
                {"stop_reason", anthropic_stop_reason(ev, tool_calls())},
                {"stop_sequence", ev.matched_stop.empty() ? json(nullptr) : json(ev.matched_stop)},
                {"usage", anthropic_usage(ev)}};
      }
      json msg = {{"role", "assistant"}, {"content", out.content}};
      if (job.thinking) msg["reasoning_content"] = out.reasoning;
      if (tool_calls()) {
        json calls = json::array();
        for (size_t i = 0; i < out.calls.size(); ++i)
          calls.push_back(
              {{"index", i},
               {"id", out.calls[i].id},
               {"type", "function"},
               {"function", {{"name", out.calls[i].name}, {"arguments", out.calls[i].arguments}}}});
        msg["tool_calls"] = calls;
      }
      json logprobs = nullptr;
      if (job.logprobs)
        logprobs = {
            {"content", out.content_logprobs},
            {"reasoning_content", job.thinking ? json(out.reasoning_logprobs) : json(nullptr)}};
      return {{"id", id},
              {"object", "chat.completion"},
              {"created", created},
              {"model", job.model.name},
              {"system_fingerprint", kFingerprint},
              {"choices", json::array({{{"index", 0},
                                        {"message", msg},
                                        {"logprobs", logprobs},
                                        {"finish_reason", finish_name(ev, tool_calls())}}})},
              {"usage", openai_usage(ev.prompt_tokens, ev.completion_tokens, out.reasoning_tokens,
                                     ev.prompt_cache_hit_tokens, true)}};
    }

    static json parse_args(const std::string& args) {
      // Anthropic needs an object; the model may have written anything.
      try {
        json j = json::parse(args.empty() ? "{}" : args);
        if (j.is_object()) return j;
      } catch (const json::exception&) {
      }
      return json::object();
    }

    json anthropic_usage(const engine::GenerationEvent& ev) const {
      // Anthropic semantics: input_tokens counts the non-cached prompt tokens.
      return {{"input_tokens", ev.prompt_tokens - ev.prompt_cache_hit_tokens},
              {"cache_creation_input_tokens", 0},
              {"cache_read_input_tokens", ev.prompt_cache_hit_tokens},
              {"output_tokens", ev.completion_tokens},
              {"service_tier", "standard"}};
    }

    // ----------------------------------------------------------- streaming

    json chunk(json delta, json finish = nullptr, json logprobs = nullptr) const {
      return {{"id", id},
              {"object", "chat.completion.chunk"},
              {"created", created},
              {"model", job.model.name},
              {"system_fingerprint", kFingerprint},
              {"choices", json::array({{{"index", 0},
                                        {"delta", std::move(delta)},
                                        {"logprobs", std::move(logprobs)},
                                        {"finish_reason", std::move(finish)}}})},
              {"usage", nullptr}};
    }

    static bool write(httplib::DataSink& sink, const std::string& s) {
      return sink.is_writable() && sink.write(s.data(), s.size());
    }
    static std::string data(const json& j) { return "data: " + dump(j) + "\n\n"; }
    static std::string named(const std::string& name, const json& j) {
      return "event: " + name + "\ndata: " + dump(j) + "\n\n";
    }

    // Waits for the next engine event, sending keep-alives while the request
    // is queued. nullopt: the client went away (the request is cancelled).
    std::optional<engine::GenerationEvent> next(httplib::DataSink& sink) {
      while (true) {
        auto ev = handle->next_event(srv->opt.keepalive_interval);
        if (ev) return ev;
        const std::string ka = job.style == ApiStyle::kAnthropic ? named("ping", {{"type", "ping"}})
                                                                 : std::string(": keep-alive\n\n");
        if (!write(sink, ka)) {
          handle->cancel();
          return std::nullopt;
        }
      }
    }

    void stream(httplib::DataSink& sink) {
      if (job.style == ApiStyle::kAnthropic)
        stream_anthropic(sink);
      else
        stream_openai(sink);
      sink.done();
    }

    void stream_openai(httplib::DataSink& sink) {
      // Tells a waiting client at once that the request is accepted.
      if (handle->state() == engine::RequestHandle::State::kQueued &&
          !write(sink, ": keep-alive\n\n"))
        return handle->cancel();
      json first = {{"role", "assistant"}, {"content", nullptr}};
      if (job.thinking)
        first["reasoning_content"] = "";
      else
        first["content"] = "";
      bool sent_first = false;
      while (true) {
        auto ev = next(sink);
        if (!ev) return;
        if (ev->finish == engine::FinishReason::kError) {
          finish(*ev);
          write(sink, data(error_body(ErrorKind::kServer, "generation failed: " + ev->error, "",
                                      ApiStyle::kOpenAI)));
          return;
        }
        if (!sent_first) {
          if (!write(sink, data(chunk(first)))) return handle->cancel();
          sent_first = true;
        }
        json clp = json::array(), rlp = json::array();
        const size_t calls_before = out.calls.size();
        auto evs = absorb(*ev, &clp, &rlp);
        std::string buf;
        json lp = nullptr;
        if (job.logprobs && (!clp.empty() || !rlp.empty()))
          lp = {{"content", clp.empty() ? json(nullptr) : clp},
                {"reasoning_content", rlp.empty() ? json(nullptr) : rlp}};
        size_t call_index = calls_before;
        for (const auto& e : evs) {
          json delta;
          switch (e.kind) {
            case OutputEvent::Kind::kReasoning:
              if (e.text.empty()) continue;
              delta = {{"content", nullptr}, {"reasoning_content", e.text}};
              break;
            case OutputEvent::Kind::kContent:
              if (e.text.empty()) continue;
              delta = {{"content", e.text}, {"reasoning_content", nullptr}};
              break;
            case OutputEvent::Kind::kToolCallBegin: {
              const auto& c = out.calls[call_index];
              delta = {{"tool_calls",
                        json::array({{{"index", call_index},
                                      {"id", c.id},
                                      {"type", "function"},
                                      {"function", {{"name", c.name}, {"arguments", ""}}}}})}};
              ++call_index;
              break;
            }
            case OutputEvent::Kind::kToolCallArgs:
              if (e.text.empty()) continue;
              delta = {{"tool_calls", json::array({{{"index", call_index - 1},
                                                    {"function", {{"arguments", e.text}}}}})}};
              break;
            case OutputEvent::Kind::kToolCallEnd:
              continue;
          }
          buf += data(chunk(delta, nullptr, lp));
          lp = nullptr;
        }
        if (!lp.is_null()) buf += data(chunk(json::object(), nullptr, lp));
        if (ev->done) {
          if (ev->finish == engine::FinishReason::kCancelled) return;
          json usage = openai_usage(ev->prompt_tokens, ev->completion_tokens, out.reasoning_tokens,
                                    ev->prompt_cache_hit_tokens, true);
          json last = chunk({{"content", ""}, {"reasoning_content", nullptr}},
                            finish_name(*ev, tool_calls()));
          last["usage"] = usage;
          buf += data(last);
          if (job.include_usage) {
            json u = chunk(json::object());
            u["choices"] = json::array();
            u["usage"] = usage;
            buf += data(u);
          }
          buf += "data: [DONE]\n\n";
          write(sink, buf);
          return;
        }
        if (!buf.empty() && !write(sink, buf)) return handle->cancel();
      }
    }

    void stream_anthropic(httplib::DataSink& sink) {
      // message_start goes out before the request runs: its cache figures
      // are what the cache holds now; message_delta carries the final ones.
      const int64_t cached = cached_at_submit;
      json start_usage = {{"input_tokens", static_cast<int64_t>(job.gen.prompt.size()) - cached},
                          {"cache_creation_input_tokens", 0},
                          {"cache_read_input_tokens", cached},
                          {"output_tokens", 0},
                          {"service_tier", "standard"}};
      std::string buf = named("message_start", {{"type", "message_start"},
                                                {"message",
                                                 {{"id", id},
                                                  {"type", "message"},
                                                  {"role", "assistant"},
                                                  {"model", job.model.name},
                                                  {"content", json::array()},
                                                  {"stop_reason", nullptr},
                                                  {"stop_sequence", nullptr},
                                                  {"usage", start_usage}}}});
      buf += named("ping", {{"type", "ping"}});
      if (!write(sink, buf)) return handle->cancel();
      enum class Block { kNone, kThinking, kText, kTool } open = Block::kNone;
      int index = -1;
      size_t call_index = out.calls.size();
      auto close = [&](std::string& b) {
        if (open == Block::kNone) return;
        if (open == Block::kThinking)
          b += named("content_block_delta",
                     {{"type", "content_block_delta"},
                      {"index", index},
                      {"delta", {{"type", "signature_delta"}, {"signature", id}}}});
        b += named("content_block_stop", {{"type", "content_block_stop"}, {"index", index}});
        open = Block::kNone;
      };
      auto open_block = [&](std::string& b, Block kind, json block) {
        close(b);
        ++index;
        open = kind;
        b += named("content_block_start",
                   {{"type", "content_block_start"}, {"index", index}, {"content_block", block}});
      };
      // In thinking mode the message opens with its thinking block even when the model then
      // thinks nothing, as the non-streamed body always has one: a client replays what it got,
      // and a tool-use turn replayed without a thinking block is refused (DeepSeek's rule).
      if (job.thinking && !job.prefix) {
        std::string b;
        open_block(b, Block::kThinking,
                   {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}});
        if (!write(sink, b)) return handle->cancel();
      }
      while (true) {
        auto ev = next(sink);
        if (!ev) return;
        if (ev->finish == engine::FinishReason::kError ||
            ev->finish == engine::FinishReason::kInsufficientResource) {
          finish(*ev);
          write(sink,
                named("error",
                      {{"type", "error"},
                       {"error",
                        {{"type", ev->finish == engine::FinishReason::kError ? "api_error"
                                                                             : "overloaded_error"},
                         {"message", ev->error.empty() ? "generation failed" : ev->error}}}}));
          return;
        }
        json clp = json::array(), rlp = json::array();
        auto evs = absorb(*ev, &clp, &rlp);
        buf.clear();
        for (const auto& e : evs) {
          switch (e.kind) {
            case OutputEvent::Kind::kReasoning:
              if (e.text.empty()) break;
              if (open != Block::kThinking)
                open_block(buf, Block::kThinking,
                           {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}});
              buf += named("content_block_delta",
                           {{"type", "content_block_delta"},
                            {"index", index},
                            {"delta", {{"type", "thinking_delta"}, {"thinking", e.text}}}});
              break;
            case OutputEvent::Kind::kContent:
              if (e.text.empty()) break;
              if (open != Block::kText)
                open_block(buf, Block::kText, {{"type", "text"}, {"text", ""}});
              buf += named("content_block_delta",
                           {{"type", "content_block_delta"},
                            {"index", index},
                            {"delta", {{"type", "text_delta"}, {"text", e.text}}}});
              break;
            case OutputEvent::Kind::kToolCallBegin: {
              const auto& c = out.calls[call_index++];
              open_block(buf, Block::kTool,
                         {{"type", "tool_use"},
                          {"id", c.id},
                          {"name", c.name},
                          {"input", json::object()}});
              break;
            }
            case OutputEvent::Kind::kToolCallArgs:
              if (e.text.empty() || open != Block::kTool) break;
              buf += named("content_block_delta",
                           {{"type", "content_block_delta"},
                            {"index", index},
                            {"delta", {{"type", "input_json_delta"}, {"partial_json", e.text}}}});
              break;
            case OutputEvent::Kind::kToolCallEnd:
              close(buf);
              break;
          }
        }
        if (ev->done) {
          if (ev->finish == engine::FinishReason::kCancelled) return;
          close(buf);
          buf += named("message_delta",
                       {{"type", "message_delta"},
                        {"delta",
                         {{"stop_reason", anthropic_stop_reason(*ev, tool_calls())},
                          {"stop_sequence",
                           ev->matched_stop.empty() ? json(nullptr) : json(ev->matched_stop)}}},
                        {"usage", anthropic_usage(*ev)}});
          buf += named("message_stop", {{"type", "message_stop"}});
          write(sink, buf);
          return;
        }
        if (!buf.empty() && !write(sink, buf)) return handle->cancel();
      }
    }
  };

  // -------------------------------------------------------------- FIM

  void handle_fim(const httplib::Request& req, httplib::Response& res) {
    const auto t0 = Clock::now();
    const std::string key = authenticate(req);
    auto [sched, backend] = model();
    FimJob job = parse_completion(parse_body(req), names);
    std::vector<int32_t> prompt = backend->encode_fim(job.prompt, job.suffix);
    check_balance(key);
    const int64_t ctx = context_limit(*sched);
    job.gen.max_tokens = fit_context(ApiStyle::kOpenAI, static_cast<int64_t>(prompt.size()),
                                     job.max_tokens, ctx, kMaxFimTokens);
    job.gen.prompt = std::move(prompt);
    job.gen.stop_tokens = backend->stop_tokens();
    job.gen.sampling.logit_bias = opt.logit_bias;
    job.gen.cache_space = cache_space(key, "");
    auto handle = submit(*sched, job.gen);
    const std::string id = uuid4();
    const int64_t created = unix_now();
    auto detok = backend->detokenizer();
    auto body_of = [=](const std::string& text, json finish, json logprobs) {
      return json{{"id", id},
                  {"object", "text_completion"},
                  {"created", created},
                  {"model", job.model.name},
                  {"system_fingerprint", kFingerprint},
                  {"choices", json::array({{{"index", 0},
                                            {"text", text},
                                            {"logprobs", logprobs},
                                            {"finish_reason", finish}}})}};
    };
    auto lp_of = [=](const std::vector<engine::SampledToken>& toks, size_t offset) {
      json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
      size_t off = offset;
      for (const auto& t : toks) {
        const std::string b = detok->token_bytes(t.token);
        tokens.push_back(b);
        lps.push_back(t.logprob);
        json top = json::object();
        for (const auto& c : t.top) top[detok->token_bytes(c.token)] = c.logprob;
        tops.push_back(top);
        offs.push_back(off);
        off += b.size();
      }
      return json{{"tokens", tokens},
                  {"token_logprobs", lps},
                  {"top_logprobs", tops},
                  {"text_offset", offs}};
    };
    auto done = [=, this](const engine::GenerationEvent& ev) {
      metrics_done(key, job.model.price_key, ev, t0);
    };
    if (!job.stream) {
      std::string text = job.echo ? job.prompt : std::string();
      std::vector<engine::SampledToken> toks;
      engine::GenerationEvent last;
      // As for chat: a client that leaves stops its request within one token.
      const auto client = watch_client(req);
      bool cancelled = false;
      while (true) {
        if (!cancelled && client->available() && client->gone()) {
          handle->cancel();
          cancelled = true;
        }
        auto ev = handle->next_event(std::chrono::milliseconds(client->available() ? 100 : 1000));
        if (!ev) continue;
        text += ev->text;
        toks.insert(toks.end(), ev->tokens.begin(), ev->tokens.end());
        if (ev->done) {
          last = std::move(*ev);
          break;
        }
      }
      if (cancelled || last.finish == engine::FinishReason::kCancelled) {
        done(last);
        res.status = 499;
        return;
      }
      if (last.finish == engine::FinishReason::kError)
        throw ApiError(ErrorKind::kServer, "generation failed: " + last.error);
      done(last);
      json body =
          body_of(text, finish_name(last, false),
                  job.logprobs ? lp_of(toks, job.echo ? job.prompt.size() : 0) : json(nullptr));
      body["usage"] = openai_usage(last.prompt_tokens, last.completion_tokens, 0,
                                   last.prompt_cache_hit_tokens, false);
      res.set_content(dump(body), "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto keepalive = opt.keepalive_interval;
    res.set_chunked_content_provider(
        "text/event-stream",
        [=](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) {
            return sink.is_writable() && sink.write(s.data(), s.size());
          };
          size_t offset = 0;
          if (job.echo) {
            write("data: " + dump(body_of(job.prompt, nullptr, nullptr)) + "\n\n");
            offset = job.prompt.size();
          }
          while (true) {
            auto ev = handle->next_event(keepalive);
            if (!ev) {
              if (!write(": keep-alive\n\n")) {
                handle->cancel();
                break;
              }
              continue;
            }
            if (ev->finish == engine::FinishReason::kError) {
              write("data: " +
                    dump(error_body(ErrorKind::kServer, ev->error, "", ApiStyle::kOpenAI)) +
                    "\n\n");
              break;
            }
            if (ev->done && ev->finish == engine::FinishReason::kCancelled) break;
            json lp = job.logprobs ? lp_of(ev->tokens, offset) : json(nullptr);
            offset += ev->text.size();
            std::string buf;
            if (!ev->text.empty() || ev->done)
              buf = "data: " +
                    dump(body_of(ev->text, ev->done ? json(finish_name(*ev, false)) : json(nullptr),
                                 lp)) +
                    "\n\n";
            if (ev->done) {
              done(*ev);
              json u = body_of("", nullptr, nullptr);
              u["choices"] = json::array();
              u["usage"] = openai_usage(ev->prompt_tokens, ev->completion_tokens, 0,
                                        ev->prompt_cache_hit_tokens, false);
              if (job.include_usage) buf += "data: " + dump(u) + "\n\n";
              buf += "data: [DONE]\n\n";
              write(buf);
              break;
            }
            if (!buf.empty() && !write(buf)) {
              handle->cancel();
              break;
            }
          }
          sink.done();
          return true;
        },
        [handle](bool) { handle->cancel(); });
  }

  void metrics_done(const std::string& key, const std::string& price_key,
                    const engine::GenerationEvent& ev, Clock::time_point t0) {
    metrics.e2e_seconds.observe(std::chrono::duration<double>(Clock::now() - t0).count());
    record_usage(key, price_key, ev);
  }
};

ApiServer::ApiServer(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

ApiServer::~ApiServer() {
  stop();
}

void ApiServer::attach(std::shared_ptr<engine::Scheduler> scheduler,
                       std::shared_ptr<const ChatBackend> backend) {
  std::lock_guard<std::mutex> lock(impl_->attach_mu);
  impl_->scheduler = std::move(scheduler);
  impl_->backend = std::move(backend);
  impl_->ready = impl_->scheduler && impl_->backend;
}

int ApiServer::bind() {
  const auto& o = impl_->opt;
  if (!impl_->keys.enabled() && !o.insecure && !is_loopback_host(o.host))
    fail("refusing to serve on ", o.host,
         " without an API key: anyone who can reach it could use the model. Pass --api-key "
         "(or set DSV4_API_KEYS), bind 127.0.0.1, or pass --insecure");
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
    if (port < 0) fail("cannot bind ", o.host, " on any port");
  } else if (!impl_->http.bind_to_port(o.host, port)) {
    fail("cannot bind ", o.host, ":", port, " (in use, or not an address of this machine?)");
  }
  impl_->bound_port = port;
  return port;
}

void ApiServer::serve() {
  impl_->http.listen_after_bind();
}

void ApiServer::stop() {
  if (impl_) impl_->http.stop();
}

}  // namespace dsv4::server
