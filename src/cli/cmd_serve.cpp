// dsv4 serve: the DeepSeek platform API over a local model.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "engine/scheduler.h"
#include "engine/v4_backend.h"
#include "model/model.h"
#include "server/auth.h"
#include "server/client_watch.h"
#include "server/server.h"
#include "server/v4_chat_backend.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: dsv4 serve [--model DIR] [--host 127.0.0.1] [--port 8000] [options]

Serves the DeepSeek platform API (OpenAI chat completions and FIM completions,
Anthropic messages, models, balance) plus /health, /metrics, /tokenize and
/detokenize. Clients replace https://api.deepseek.com by http://HOST:PORT.
See docs/api.md.

options:
  --model DIR          checkpoint folder (default: the bundled demo model)
  --tokenizer DIR      folder with tokenizer.json (default: the model folder)
  --host H             address to bind (default 127.0.0.1)
  --port P             port (default 8000; 0 = any free port)
  --api-key K          accepted API key (repeatable; also DSV4_API_KEYS, comma
                       separated). Without keys only loopback binds are allowed
  --insecure           allow a non-loopback bind without API keys
  --served-name NAME   extra model name to answer to (repeatable)
  --prices FILE        JSON price overrides, USD per 1M tokens:
                       {"deepseek-v4-flash": {"input_cache_hit": 0.028,
                        "input_cache_miss": 0.14, "output": 0.28}}
  --budget KEY=USD     spending limit of an API key (repeatable); HTTP 402 after
  --ledger FILE        per-key token and cost ledger, kept across restarts
  --http-threads N     connections served at once (default 32)
  --max-queue N        queued requests before HTTP 429 (default 128)
  --max-context N      serve at most N tokens per sequence (prompt + output;
                       default: the model's max_position_embeddings)
  --keepalive S        seconds between keep-alives to queued streams (default 10)
  --logit-bias ID=B    add B (in [-100, 100]) to token ID's logit in every
                       request (repeatable; e.g. a large end-of-sequence bias
                       makes a random-weight test checkpoint answer briefly)
  --prefix-cache-bytes N
                       memory for the prefix (context) cache: snapshots of
                       prompts' model state reused by later requests that
                       start with the same tokens (suffix K, M, G allowed;
                       default: a quarter of physical memory, at most 8G;
                       0 disables). Hits are reported as
                       prompt_cache_hit_tokens and billed at the hit price
  --prefix-cache-block N
                       tokens per cache unit; hits are whole units (default 64)
  --prefix-cache-interval N
                       also snapshot every N tokens inside long prompts
                       (a multiple of the unit; default 1024)
  --no-preload         do not read the weights into the page cache at startup
                       (by default they are, with a progress bar, when they
                       take at most half of the physical memory)
  --log-requests       one stderr line per request: route, status, time, the
                       body's fields and the anthropic-beta/user-agent headers
)";

std::map<std::string, double> parse_budgets(const std::vector<std::string>& items) {
  std::map<std::string, double> out;
  for (const auto& item : items) {
    const auto eq = item.rfind('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
      fail("--budget expects KEY=USD, got \"", item, "\"");
    char* end = nullptr;
    const double usd = std::strtod(item.c_str() + eq + 1, &end);
    if (*end != '\0' || !(usd >= 0)) fail("--budget ", item, ": USD must be a number >= 0");
    out[item.substr(0, eq)] = usd;
  }
  return out;
}

std::vector<std::pair<int32_t, float>> parse_logit_bias(const std::vector<std::string>& items) {
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& item : items) {
    const auto eq = item.find('=');
    char* end = nullptr;
    const long id = eq == std::string::npos ? -1 : std::strtol(item.c_str(), &end, 10);
    if (eq == std::string::npos || end != item.c_str() + eq || id < 0 || id > INT32_MAX)
      fail("--logit-bias expects TOKEN_ID=BIAS, got \"", item, "\"");
    const double bias = std::strtod(item.c_str() + eq + 1, &end);
    if (*end != '\0' || eq + 1 == item.size() || !(bias >= -100 && bias <= 100))
      fail("--logit-bias ", item, ": BIAS must be a number in [-100, 100]");
    out.emplace_back(static_cast<int32_t>(id), static_cast<float>(bias));
  }
  return out;
}

// Reads the checkpoint's safetensors files once, so that the mapped weights
// are in the page cache before the first request instead of faulting in
// during the first forward passes. Shows a progress bar on a TTY stderr, a
// few plain lines otherwise. Skipped when the files take more than half of
// the physical memory (they would evict each other).
void preload_weights(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  uintmax_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") {
      files.push_back(e.path());
      total += e.file_size();
    }
  std::sort(files.begin(), files.end());
  if (files.empty() || total == 0) return;
  const double mb = 1.0 / (1 << 20);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && total > static_cast<uintmax_t>(pages) * page / 2) {
    std::fprintf(stderr, "dsv4 serve: weights %.0f MB > half of RAM: not preloading\n", total * mb);
    return;
  }
  const bool tty = isatty(fileno(stderr));
  const auto t0 = std::chrono::steady_clock::now();
  auto last_draw = t0 - std::chrono::seconds(1);
  int last_quarter = -1;
  uintmax_t done = 0;
  auto report = [&](bool final) {
    const double frac = static_cast<double>(done) / total;
    const auto now = std::chrono::steady_clock::now();
    const double secs = std::chrono::duration<double>(now - t0).count();
    if (tty) {
      if (!final && now - last_draw < std::chrono::milliseconds(100)) return;
      last_draw = now;
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(frac * kWidth);
      std::string bar(filled, '#');
      bar.resize(kWidth, '-');
      std::fprintf(stderr, "\rdsv4 serve: loading weights [%s] %3d%% %.0f/%.0f MB %.0f MB/s%s",
                   bar.c_str(), static_cast<int>(frac * 100), done * mb, total * mb,
                   secs > 0 ? done * mb / secs : 0.0, final ? "\n" : "");
    } else {
      const int quarter = static_cast<int>(frac * 4);
      if (quarter == last_quarter) return;
      last_quarter = quarter;
      std::fprintf(stderr, "dsv4 serve: loading weights: %d%% (%.0f of %.0f MB)\n", quarter * 25,
                   done * mb, total * mb);
    }
    std::fflush(stderr);
  };
  report(false);
  std::vector<char> buf(8 << 20);
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      done += static_cast<uintmax_t>(in.gcount());
      report(false);
    }
  }
  done = total;
  report(true);
}

// "8G", "512M", "1000000" -> bytes.
uint64_t parse_bytes(const std::string& option, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  double unit = 1;
  const std::string suffix = end ? std::string(end) : "";
  if (suffix == "K" || suffix == "k")
    unit = 1024.0;
  else if (suffix == "M" || suffix == "m")
    unit = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "g")
    unit = 1024.0 * 1024 * 1024;
  else if (!suffix.empty() || text.empty())
    fail("--", option, " expects a byte count such as 4G, 512M or 1000000, got \"", text, "\"");
  if (!(v >= 0) || v * unit > 1e19)
    fail("--", option, " must be a byte count >= 0, got \"", text, "\"");
  return static_cast<uint64_t>(v * unit);
}

uint64_t default_prefix_cache_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const uint64_t ram = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
  return std::min<uint64_t>(ram / 4, 8ull << 30);
}

int run_serve(int argc, char** argv) {
  Args args("serve", argc, argv,
            {{"help", false},
             {"model", true},
             {"tokenizer", true},
             {"host", true},
             {"port", true},
             {"api-key", true, true},
             {"insecure", false},
             {"served-name", true, true},
             {"prices", true},
             {"budget", true, true},
             {"ledger", true},
             {"http-threads", true},
             {"max-queue", true},
             {"keepalive", true},
             {"max-context", true},
             {"log-requests", false},
             {"logit-bias", true, true},
             {"prefix-cache-bytes", true},
             {"prefix-cache-block", true},
             {"prefix-cache-interval", true},
             {"no-preload", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  const std::string model_dir = args.has("model") ? args.get("model") : default_model_dir();
  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "config.json"))
    fail("no config.json in ", model_dir, ": --model must name a V4 checkpoint folder");
  const std::string tok_dir = args.get("tokenizer", model_dir);
  if (!std::filesystem::exists(std::filesystem::path(tok_dir) / "tokenizer.json") &&
      !std::filesystem::is_regular_file(tok_dir))
    fail("no tokenizer.json in ", tok_dir,
         "; pass --tokenizer DIR (e.g. models/deepseek-v4-tokenizer)");

  server::ServerOptions opt;
  opt.host = args.get("host", "127.0.0.1");
  const int64_t port = args.get_int("port", 8000);
  if (port < 0 || port > 65535) fail("--port must be in [0, 65535], got ", port);
  opt.port = static_cast<int>(port);
  opt.api_keys = args.all("api-key");
  if (const char* env = std::getenv("DSV4_API_KEYS"))
    for (auto& k : server::split_keys(env)) opt.api_keys.push_back(k);
  opt.insecure = args.has("insecure");
  opt.served_names = args.all("served-name");
  opt.prices_file = args.get("prices");
  opt.budgets = parse_budgets(args.all("budget"));
  for (const auto& [key, usd] : opt.budgets) {
    bool known = false;
    for (const auto& k : opt.api_keys) known |= k == key;
    if (!known) fail("--budget names a key that is not an --api-key: ", server::mask_key(key));
  }
  opt.ledger_file = args.get("ledger");
  opt.http_threads = static_cast<int>(args.get_int("http-threads", 32));
  if (opt.http_threads < 2) fail("--http-threads must be >= 2");
  const int64_t max_queue = args.get_int("max-queue", 128);
  if (max_queue < 1) fail("--max-queue must be >= 1");
  opt.max_queue = static_cast<size_t>(max_queue);
  opt.max_context = args.get_int("max-context", 0);
  if (opt.max_context < 0) fail("--max-context must be >= 1");
  const double ka = args.get_double("keepalive", 10.0);
  if (!(ka > 0)) fail("--keepalive must be > 0 seconds");
  opt.keepalive_interval = std::chrono::milliseconds(static_cast<int64_t>(ka * 1000));
  opt.log_requests = args.has("log-requests");
  opt.logit_bias = parse_logit_bias(args.all("logit-bias"));
  engine::PrefixCacheOptions cache_opt;
  cache_opt.budget_bytes = args.has("prefix-cache-bytes")
                               ? parse_bytes("prefix-cache-bytes", args.get("prefix-cache-bytes"))
                               : default_prefix_cache_bytes();
  cache_opt.block_tokens = args.get_int("prefix-cache-block", 64);
  cache_opt.interval_tokens = args.get_int("prefix-cache-interval", 1024);
  if (cache_opt.interval_tokens % std::max<int64_t>(cache_opt.block_tokens, 1) != 0 &&
      !args.has("prefix-cache-interval"))
    cache_opt.interval_tokens = (1024 / cache_opt.block_tokens + 1) * cache_opt.block_tokens;
  std::shared_ptr<engine::PrefixCache> prefix_cache;
  try {
    prefix_cache = std::make_shared<engine::PrefixCache>(cache_opt);  // validates
  } catch (const Error& e) {
    fail("--prefix-cache-block / --prefix-cache-interval: ", e.what());
  }

  // SIGINT/SIGTERM are taken by sigwait below, in every thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Serve /health (503 "Loading model") while the weights load.
  server::ApiServer api(opt);
  const int bound = api.bind();
  std::thread http([&] { api.serve(); });
  const std::string host =
      opt.host.find(':') != std::string::npos ? "[" + opt.host + "]" : opt.host;
  std::printf("dsv4 serve: http://%s:%d  (loading %s ...)\n", host.c_str(), bound,
              model_dir.c_str());
  std::fflush(stdout);
  if (!server::ClientWatch::supported())
    std::fprintf(stderr,
                 "dsv4 serve: this system has no socket diagnostics (NETLINK_SOCK_DIAG): a "
                 "non-streamed request keeps generating after its client disconnects\n");

  const auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<const Tokenizer> tok;
  std::shared_ptr<const Model> model;
  try {
    if (!args.has("no-preload")) preload_weights(model_dir);
    tok = Tokenizer::load(tok_dir);
    model = std::make_shared<const Model>(model_dir);
  } catch (...) {
    api.stop();
    http.join();
    throw;
  }
  auto lm = std::make_shared<engine::V4LanguageModel>(model);
  auto backend = std::make_shared<server::V4ChatBackend>(tok);
  if (prefix_cache->enabled() && !engine::prefix_cache_usable(*lm, prefix_cache.get())) {
    api.stop();
    http.join();
    fail("--prefix-cache-block ", cache_opt.block_tokens, " is not a multiple of ",
         lm->snapshot_granularity(), " tokens, the unit this model can snapshot exactly");
  }
  auto scheduler = std::make_shared<engine::Scheduler>(lm, backend->detokenizer(), prefix_cache);
  api.attach(scheduler, backend);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t ctx =
      opt.max_context > 0 ? std::min(opt.max_context, lm->context_length()) : lm->context_length();
  std::printf("dsv4 serve: ready in %.1f s: model %s, context %lld tokens, vocab %d, %s\n", secs,
              model_dir.c_str(), static_cast<long long>(ctx), lm->vocab_size(),
              opt.api_keys.empty() ? "no API keys (loopback only)" : "API keys required");
  if (prefix_cache->enabled())
    std::printf("dsv4 serve: prefix cache %.2f GiB in units of %lld tokens\n",
                double(cache_opt.budget_bytes) / double(1ull << 30),
                static_cast<long long>(cache_opt.block_tokens));
  else
    std::printf("dsv4 serve: prefix cache off\n");
  std::printf(
      "dsv4 serve: OpenAI base URL http://%s:%d (or /v1), Anthropic base URL "
      "http://%s:%d/anthropic\n",
      host.c_str(), bound, host.c_str(), bound);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  std::printf("dsv4 serve: %s, stopping\n", sig == SIGINT ? "interrupted" : "terminated");
  api.stop();
  http.join();
  return 0;
}

}  // namespace

DSV4_COMMAND("serve", "serve the DeepSeek platform API (OpenAI + Anthropic formats)", run_serve);

}  // namespace dsv4::cli
