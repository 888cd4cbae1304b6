// The prefix cache through HTTP: dsv4 serve over a random-weight tiny synth
// checkpoint with the V4 tokenizer and a prefix cache. A repeated request
// reports cache hits (whole 64-token units) and gives the same output at
// temperature 0; a second chat turn hits the first turn's prompt; hit + miss
// = prompt tokens on both APIs; the ledger charges hits at the hit price and
// /metrics counts them. Expected hits are derived from the rendered prompts.
#pragma GCC diagnostic ignored "-Wrestrict"  // g++ 12 false positive (GCC bug 105651)

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "engine/prefix_cache.h"
#include "engine/scheduler.h"
#include "engine/v4_backend.h"
#include "model/model.h"
#include "model/synth.h"
#include "server/requests.h"
#include "server/server.h"
#include "server/v4_chat_backend.h"

namespace dsv4::server {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kKey = "sk-prefix-cache-test";
constexpr int64_t kUnit = 64;

struct CachedServer {
  std::unique_ptr<ApiServer> api;
  std::shared_ptr<V4ChatBackend> backend;
  std::thread thread;
  fs::path dir, ledger;
  int port = 0;
  CachedServer() {
    dir = fs::temp_directory_path() / ("dsv4_prefix_cache_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    SynthOptions so;
    so.like = "tiny";
    so.seed = 5;
    so.tokenizer_dir = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";
    so.out = (dir / "model").string();
    synth_checkpoint(so);
    auto model = std::make_shared<const Model>(so.out);
    backend = std::make_shared<V4ChatBackend>(Tokenizer::load(so.out));
    auto lm = std::make_shared<engine::V4LanguageModel>(model);
    engine::PrefixCacheOptions co;  // the serve defaults: 64-token units
    co.budget_bytes = 256u << 20;
    ledger = dir / "ledger.json";
    ServerOptions opt;
    opt.port = 0;
    opt.api_keys = {kKey};
    opt.ledger_file = ledger.string();
    api = std::make_unique<ApiServer>(opt);
    api->attach(std::make_shared<engine::Scheduler>(lm, backend->detokenizer(),
                                                    std::make_shared<engine::PrefixCache>(co)),
                backend);
    port = api->bind();
    thread = std::thread([this] { api->serve(); });
  }
  ~CachedServer() {
    api->stop();
    thread.join();
    fs::remove_all(dir);
  }
  httplib::Result post(const std::string& path, const json& body) const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(300, 0);
    httplib::Headers h = {{"Authorization", std::string("Bearer ") + kKey}};
    return c.Post(path, h, body.dump(), "application/json");
  }
  std::string get(const std::string& path) const {
    httplib::Client c("127.0.0.1", port);
    auto r = c.Get(path, {{"Authorization", std::string("Bearer ") + kKey}});
    return r ? r->body : "";
  }
  std::vector<int32_t> prompt_of(const json& openai_body) const {
    return backend->encode_chat(
        parse_openai_chat(Json::parse(openai_body.dump()), false, ModelNames()).conversation);
  }
};

CachedServer& server() {
  static CachedServer s;
  return s;
}

// A system prompt of a few hundred tokens, so prompts span several units.
std::string long_system(const std::string& topic) {
  std::string s = "You are a careful assistant for " + topic + ". ";
  for (int i = 0; i < 30; ++i)
    s += "Rule " + std::to_string(i) + ": answer precisely, cite the source, keep it short. ";
  return s;
}

json chat(json messages, bool thinking, int max_tokens = 5) {
  return {{"model", "deepseek-v4-flash"},
          {"messages", std::move(messages)},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"thinking", {{"type", thinking ? "enabled" : "disabled"}}}};
}

// The hit the cache must give a prompt of n tokens repeated: the last unit
// end before its final token (always computed, for its logits).
int64_t repeat_hit(int64_t n) {
  return (n - 1) / kUnit * kUnit;
}

// Usage invariants shared by every OpenAI-route answer.
void check_openai_usage(const json& u) {
  EXPECT_EQ(
      u["prompt_cache_hit_tokens"].get<int64_t>() + u["prompt_cache_miss_tokens"].get<int64_t>(),
      u["prompt_tokens"].get<int64_t>());
  EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], u["prompt_cache_hit_tokens"]);
  EXPECT_EQ(u["prompt_cache_hit_tokens"].get<int64_t>() % kUnit, 0);
}

struct Totals {
  int64_t hit = 0, miss = 0, out = 0;
  void add(const json& u) {
    hit += u["prompt_cache_hit_tokens"].get<int64_t>();
    miss += u["prompt_cache_miss_tokens"].get<int64_t>();
    out += u["completion_tokens"].get<int64_t>();
  }
};

json post_chat(const json& body) {
  auto r = server().post("/v1/chat/completions", body);
  EXPECT_TRUE(r);
  if (!r) return json::object();
  EXPECT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  check_openai_usage(j["usage"]);
  return j;
}

TEST(PrefixCacheServe, RepeatedRequestHitsAndAnswersTheSame) {
  const json body = chat({{{"role", "system"}, {"content", long_system("repeats")}},
                          {{"role", "user"}, {"content", "What is a prefix cache?"}}},
                         false);
  const int64_t n = static_cast<int64_t>(server().prompt_of(body).size());
  ASSERT_GT(n, 2 * kUnit);
  json a = post_chat(body);
  EXPECT_EQ(a["usage"]["prompt_tokens"], n);
  EXPECT_EQ(a["usage"]["prompt_cache_hit_tokens"], 0);
  json b = post_chat(body);
  EXPECT_EQ(b["usage"]["prompt_cache_hit_tokens"], repeat_hit(n));
  EXPECT_EQ(b["usage"]["prompt_cache_miss_tokens"], n - repeat_hit(n));
  EXPECT_EQ(a["choices"][0]["message"], b["choices"][0]["message"]);
  EXPECT_EQ(a["usage"]["completion_tokens"], b["usage"]["completion_tokens"]);

  // Streaming reports the same usage on its last chunk.
  json s = body;
  s["stream"] = true;
  s["stream_options"] = {{"include_usage", true}};
  auto r = server().post("/v1/chat/completions", s);
  ASSERT_TRUE(r);
  const auto at = r->body.rfind("\"usage\":");
  ASSERT_NE(at, std::string::npos);
  const auto line_start = r->body.rfind("data: ", at) + 6;
  json last = json::parse(r->body.substr(line_start, r->body.find("\n\n", at) - line_start));
  check_openai_usage(last["usage"]);
  EXPECT_EQ(last["usage"]["prompt_cache_hit_tokens"], repeat_hit(n));
}

TEST(PrefixCacheServe, SecondTurnHitsTheFirstTurnsPrompt) {
  for (bool thinking : {true, false}) {
    SCOPED_TRACE(thinking ? "thinking" : "chat");
    json msgs = {
        {{"role", "system"}, {"content", long_system(thinking ? "turns/think" : "turns/chat")}},
        {{"role", "user"}, {"content", "First question: what is 2 + 2?"}}};
    const json t1 = chat(msgs, thinking);
    const std::vector<int32_t> p1 = server().prompt_of(t1);
    json a = post_chat(t1);
    const json& m = a["choices"][0]["message"];
    json assistant = {{"role", "assistant"}, {"content", m["content"]}};
    if (thinking && m.contains("reasoning_content") && m["reasoning_content"].is_string())
      assistant["reasoning_content"] = m["reasoning_content"];
    msgs.push_back(assistant);
    msgs.push_back({{"role", "user"}, {"content", "Second question: and 3 + 3?"}});
    const json t2 = chat(msgs, thinking);
    const std::vector<int32_t> p2 = server().prompt_of(t2);

    // Turn 1 left snapshots at its last two unit ends; turn 2 hits the
    // longest one inside the prompts' common prefix.
    size_t common = 0;
    while (common < p1.size() && common < p2.size() && p1[common] == p2[common]) ++common;
    const int64_t last = static_cast<int64_t>(p1.size()) / kUnit * kUnit;
    int64_t expect = 0;
    for (int64_t point : {last - kUnit, last})
      if (point > 0 && point <= static_cast<int64_t>(common) &&
          point < static_cast<int64_t>(p2.size()))
        expect = point;
    ASSERT_GT(expect, 0) << "the turns share " << common << " of " << p1.size() << " tokens";
    json b = post_chat(t2);
    EXPECT_EQ(b["usage"]["prompt_tokens"], p2.size());
    EXPECT_EQ(b["usage"]["prompt_cache_hit_tokens"], expect);
  }
}

TEST(PrefixCacheServe, AnthropicReportsCacheReads) {
  json a = {{"model", "deepseek-v4-flash"},
            {"max_tokens", 4},
            {"temperature", 0},
            {"thinking", {{"type", "disabled"}}},  // thinking mode samples regardless
            {"system", long_system("anthropic")},
            {"messages", {{{"role", "user"}, {"content", "Hello there"}}}}};
  json count =
      json::parse(server().post("/anthropic/v1/messages/count_tokens", a)->body)["input_tokens"];
  const int64_t n = count.get<int64_t>();
  json first = json::parse(server().post("/anthropic/v1/messages", a)->body);
  ASSERT_EQ(first["type"], "message") << first;
  EXPECT_EQ(first["usage"]["cache_read_input_tokens"], 0);
  EXPECT_EQ(first["usage"]["input_tokens"], n);
  json second = json::parse(server().post("/anthropic/v1/messages", a)->body);
  // Anthropic semantics: input_tokens are the tokens not read from the cache.
  EXPECT_EQ(second["usage"]["cache_read_input_tokens"], repeat_hit(n));
  EXPECT_EQ(second["usage"]["input_tokens"], n - repeat_hit(n));
  EXPECT_EQ(second["usage"]["cache_creation_input_tokens"], 0);
  EXPECT_EQ(first["content"], second["content"]);
  // Streaming: message_start already shows the hit the cache holds.
  a["stream"] = true;
  auto r = server().post("/anthropic/v1/messages", a);
  ASSERT_TRUE(r);
  const auto start = r->body.find("data: ", r->body.find("event: message_start")) + 6;
  json ms = json::parse(r->body.substr(start, r->body.find('\n', start) - start));
  EXPECT_EQ(ms["message"]["usage"]["cache_read_input_tokens"], repeat_hit(n));
  EXPECT_EQ(ms["message"]["usage"]["input_tokens"], n - repeat_hit(n));
  const auto d = r->body.find("data: ", r->body.find("event: message_delta")) + 6;
  json md = json::parse(r->body.substr(d, r->body.find('\n', d) - d));
  EXPECT_EQ(md["usage"]["cache_read_input_tokens"], repeat_hit(n));
}

// Self-contained (ctest runs each test in its own process): the ledger and
// /metrics are compared before and after this test's own requests.
TEST(PrefixCacheServe, LedgerChargesTheHitPriceAndMetricsCount) {
  auto ledger_account = [] {
    std::ifstream in(server().ledger);
    if (!in.good()) return json::object();
    json led = json::parse(in);
    return led["accounts"].contains(kKey) ? led["accounts"][kKey] : json::object();
  };
  auto field = [](const json& acc, const char* name) {
    return acc.contains(name) ? acc[name].get<double>() : 0.0;
  };
  auto metric = [](const std::string& name) {
    std::istringstream ss(server().get("/metrics"));
    std::string line;
    while (std::getline(ss, line))
      if (line.rfind(name + " ", 0) == 0) return std::stoll(line.substr(name.size() + 1));
    return -1LL;
  };
  const json before = ledger_account();
  const long long hit0 = metric("dsv4_prompt_cache_hit_tokens_total");
  const long long miss0 = metric("dsv4_prompt_cache_miss_tokens_total");

  Totals t;
  const json body = chat({{{"role", "system"}, {"content", long_system("the ledger")}},
                          {{"role", "user"}, {"content", "How much does a hit cost?"}}},
                         false);
  for (int i = 0; i < 2; ++i) t.add(post_chat(body)["usage"]);
  json a = {{"model", "deepseek-v4-flash"},
            {"max_tokens", 3},
            {"thinking", {{"type", "disabled"}}},
            {"system", long_system("the ledger, Anthropic")},
            {"messages", {{{"role", "user"}, {"content", "And on this route?"}}}}};
  for (int i = 0; i < 2; ++i) {
    json m = json::parse(server().post("/anthropic/v1/messages", a)->body);
    t.hit += m["usage"]["cache_read_input_tokens"].get<int64_t>();
    t.miss += m["usage"]["input_tokens"].get<int64_t>();
    t.out += m["usage"]["output_tokens"].get<int64_t>();
  }
  ASSERT_GT(t.hit, 0);

  const json after = ledger_account();
  EXPECT_EQ(field(after, "prompt_cache_hit_tokens") - field(before, "prompt_cache_hit_tokens"),
            t.hit);
  EXPECT_EQ(field(after, "prompt_cache_miss_tokens") - field(before, "prompt_cache_miss_tokens"),
            t.miss);
  EXPECT_EQ(field(after, "completion_tokens") - field(before, "completion_tokens"), t.out);
  // deepseek-v4-flash list prices per 1M tokens: hit 0.028, miss 0.14, output 0.28.
  const double spent = field(after, "spent_usd") - field(before, "spent_usd");
  EXPECT_NEAR(spent, (t.hit * 0.028 + t.miss * 0.14 + t.out * 0.28) / 1e6, 1e-12);
  EXPECT_LT(spent, ((t.hit + t.miss) * 0.14 + t.out * 0.28) / 1e6);

  EXPECT_EQ(metric("dsv4_prompt_cache_hit_tokens_total") - hit0, t.hit);
  EXPECT_EQ(metric("dsv4_prompt_cache_miss_tokens_total") - miss0, t.miss);
  EXPECT_GT(metric("dsv4_prefix_cache_entries"), 0);
  EXPECT_GT(metric("dsv4_prefix_cache_bytes"), 0);
  EXPECT_LE(metric("dsv4_prefix_cache_bytes"), metric("dsv4_prefix_cache_budget_bytes"));
  EXPECT_GT(metric("dsv4_prefix_cache_hits_total"), 0);
  EXPECT_GE(metric("dsv4_prefix_cache_lookups_total"), metric("dsv4_prefix_cache_hits_total"));
}

}  // namespace
}  // namespace dsv4::server
