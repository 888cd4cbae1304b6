// `dsv4 bench-serve` against a real server in this process (tiny synth
// checkpoint, V4 tokenizer, the real forward): every request succeeds, the
// output token count equals the sum of the same requests' non-streamed
// usage (same seed = same output), latencies are ordered and bounded by the
// run, and an unreachable server is an error naming the cause.
#pragma GCC diagnostic ignored "-Wrestrict"  // g++ 12 false positive (GCC bug 105651)

#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/scheduler.h"
#include "engine/v4_backend.h"
#include "model/model.h"
#include "model/synth.h"
#include "server/server.h"
#include "server/v4_chat_backend.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct CmdResult {
  int rc = -1;
  std::string out;
};

CmdResult run(const std::string& args) {
  const std::string cmd = std::string(DSV4_BINARY) + " " + args + " 2>&1";
  CmdResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

struct TinyServer {
  std::unique_ptr<server::ApiServer> api;
  std::thread thread;
  int port = 0;
  TinyServer() {
    const fs::path dir =
        fs::temp_directory_path() / ("dsv4_bench_serve_" + std::to_string(::getpid()));
    SynthOptions so;
    so.like = "tiny";
    so.tokenizer_dir = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";
    so.out = dir.string();
    synth_checkpoint(so);
    auto model = std::make_shared<const Model>(dir.string());
    auto backend = std::make_shared<server::V4ChatBackend>(Tokenizer::load(dir.string()));
    auto lm = std::make_shared<engine::V4LanguageModel>(model);
    server::ServerOptions opt;
    opt.port = 0;
    api = std::make_unique<server::ApiServer>(opt);
    api->attach(std::make_shared<engine::Scheduler>(lm, backend->detokenizer()), backend);
    port = api->bind();
    thread = std::thread([this] { api->serve(); });
    fs::remove_all(dir);  // the weights are mapped; the files are not needed by name
  }
  ~TinyServer() {
    api->stop();
    thread.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
};

TEST(BenchServe, ReportsLatenciesAndTheServersTokenCount) {
  TinyServer s;
  const std::string prompt = "Say hi.";
  const CmdResult r = run("bench-serve --json --url " + s.url() +
                          " --clients 2 --requests 4 --max-tokens 5 --prompt '" + prompt + "'");
  ASSERT_EQ(r.rc, 0) << r.out;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["succeeded"].get<int>(), 4);
  EXPECT_EQ(j["failed"].get<int>(), 0);
  EXPECT_EQ(j["url"].get<std::string>(), s.url() + "/v1/chat/completions");

  // The same requests, not streamed: request i carries seed i.
  httplib::Client c("127.0.0.1", s.port);
  c.set_read_timeout(120, 0);
  int64_t tokens = 0;
  for (int i = 0; i < 4; ++i) {
    const json body = {{"model", "deepseek-v4-flash"},
                       {"messages", {{{"role", "user"}, {"content", prompt}}}},
                       {"max_tokens", 5},
                       {"seed", i}};
    auto res = c.Post("/v1/chat/completions", body.dump(), "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    tokens += json::parse(res->body)["usage"]["completion_tokens"].get<int64_t>();
  }
  EXPECT_EQ(j["output_tokens"].get<int64_t>(), tokens);
  const double wall = j["wall_seconds"];
  EXPECT_NEAR(j["output_tokens_per_second"].get<double>(), tokens / wall, 1e-9);
  EXPECT_GT(j["ttft_p50_seconds"].get<double>(), 0);
  EXPECT_LE(j["ttft_p50_seconds"].get<double>(), j["ttft_p99_seconds"].get<double>());
  EXPECT_LT(j["ttft_p99_seconds"].get<double>(), wall);
  EXPECT_LE(j["inter_token_p50_seconds"].get<double>(), j["inter_token_p99_seconds"].get<double>());
  EXPECT_LT(j["inter_token_p99_seconds"].get<double>(), wall);

  const CmdResult text =
      run("bench-serve --url " + s.url() + "/v1 --clients 1 --requests 1 " + "--max-tokens 2");
  ASSERT_EQ(text.rc, 0) << text.out;
  for (const char* k : {"TTFT", "inter-token latency", "tokens/s aggregate", "1/1 requests"})
    EXPECT_NE(text.out.find(k), std::string::npos) << k << "\n" << text.out;
}

TEST(BenchServe, UnreachableServerAndBadOptionsAreErrors) {
  // A port nothing listens on: bind one and close it.
  int port = 0;
  {
    httplib::Server probe;
    port = probe.bind_to_any_port("127.0.0.1");
  }
  const CmdResult r = run("bench-serve --url http://127.0.0.1:" + std::to_string(port) +
                          " --requests 2 --clients 2 --timeout 5");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("every request failed"), std::string::npos) << r.out;
  const CmdResult bad = run("bench-serve --url 127.0.0.1:80");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.out.find("--url must look like"), std::string::npos) << bad.out;
  const CmdResult zero = run("bench-serve --url http://127.0.0.1:1 --clients 0");
  EXPECT_EQ(zero.rc, 1);
  EXPECT_NE(zero.out.find("--clients must be between"), std::string::npos) << zero.out;
}

}  // namespace
}  // namespace dsv4
