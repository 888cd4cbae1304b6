// The HTTP layer end to end over loopback: routes, error shapes and statuses,
// SSE framing of both APIs, auth, budgets and the ledger across restarts,
// keep-alives while queued and cancellation on disconnect. The model and the
// chat layer are byte-level fakes (fake_backend.h), so every expected value
// is known exactly.
// g++ 12 reports a false -Wrestrict inside std::string's operator+ at -O3
// (GCC bug 105651); the TU concatenates many strings in test bodies.
#pragma GCC diagnostic ignored "-Wrestrict"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "engine/json_constraint.h"
#include "engine/scheduler.h"
#include "fake_backend.h"
#include "server/client_watch.h"
#include "server/requests.h"
#include "server/server.h"
#include "util/error.h"

namespace dsv4::server {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using testing::bytes_to_ids;
using testing::kEos;

// Writes `output` (bytes as tokens) then EOS, whatever the prompt.
class ScriptModel : public engine::LanguageModel {
 public:
  int vocab_size() const override { return testing::kVocab; }
  int64_t context_length() const override { return context; }
  std::unique_ptr<engine::ModelSequence> new_sequence() const override {
    std::lock_guard<std::mutex> lock(mu);
    auto ids = bytes_to_ids(output);
    if (!endless) ids.push_back(kEos);
    return std::make_unique<Seq>(this, ids);
  }
  void set(std::string out, bool forever = false) {
    std::lock_guard<std::mutex> lock(mu);
    output = std::move(out);
    endless = forever;
  }
  int64_t context = 100000;
  std::chrono::milliseconds delay{0};
  mutable std::atomic<int> steps{0};

 private:
  struct Seq : engine::ModelSequence {
    Seq(const ScriptModel* m, std::vector<int32_t> ids) : m(m), ids(std::move(ids)) {}
    void forward(std::span<const int32_t> t, std::vector<float>* logits) override {
      ++m->steps;
      if (m->delay.count()) std::this_thread::sleep_for(m->delay);
      if (pos == 0) prompt = static_cast<int64_t>(t.size());
      pos += static_cast<int64_t>(t.size());
      const size_t k = static_cast<size_t>(pos - prompt);
      const int32_t next = k < ids.size() ? ids[k] : int32_t('.') + 3;
      logits->assign(testing::kVocab, -40.0f);
      (*logits)[next] = 0.0f;
    }
    int64_t position() const override { return pos; }
    const ScriptModel* m;
    std::vector<int32_t> ids;
    int64_t pos = 0, prompt = 0;
  };
  mutable std::mutex mu;
  std::string output = "Hello";
  bool endless = false;
};

struct TestServer {
  std::shared_ptr<ScriptModel> model = std::make_shared<ScriptModel>();
  std::shared_ptr<testing::FakeChatBackend> backend = std::make_shared<testing::FakeChatBackend>();
  std::unique_ptr<ApiServer> server;
  std::thread thread;
  int port = 0;

  explicit TestServer(ServerOptions opt = {}, bool attach = true) {
    opt.host = "127.0.0.1";
    opt.port = 0;
    server = std::make_unique<ApiServer>(opt);
    if (attach) this->attach();
    port = server->bind();
    thread = std::thread([this] { server->serve(); });
  }
  void attach() {
    server->attach(std::make_shared<engine::Scheduler>(model, backend->detokenizer()), backend);
  }
  ~TestServer() {
    server->stop();
    thread.join();
  }
  httplib::Client client(const std::string& key = "") const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(20, 0);
    if (!key.empty()) c.set_bearer_token_auth(key);
    return c;
  }
  httplib::Result post(const std::string& path, const json& body,
                       const std::string& key = "") const {
    return client(key).Post(path, body.dump(), "application/json");
  }
};

json chat(const std::string& model = "deepseek-v4-flash") {
  return {{"model", model}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
}

json parse(const httplib::Result& r) {
  EXPECT_TRUE(r);
  return r ? json::parse(r->body) : json();
}

void expect_openai_error(const httplib::Result& r, int status, const std::string& message) {
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, status) << r->body;
  json j = json::parse(r->body);
  ASSERT_TRUE(j.contains("error")) << r->body;
  EXPECT_TRUE(j["error"]["type"].is_string());
  EXPECT_TRUE(j["error"].contains("param"));
  EXPECT_TRUE(j["error"].contains("code"));
  EXPECT_NE(j["error"]["message"].get<std::string>().find(message), std::string::npos)
      << j["error"]["message"];
}

void expect_anthropic_error(const httplib::Result& r, int status, const std::string& type,
                            const std::string& message = "") {
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, status) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["type"], "error") << r->body;
  EXPECT_EQ(j["error"]["type"], type) << r->body;
  EXPECT_NE(j["error"]["message"].get<std::string>().find(message), std::string::npos) << r->body;
}

// SSE body -> list of (event name, data) in order; comments kept as ":".
std::vector<std::pair<std::string, std::string>> sse(const std::string& body) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event: " << body.substr(pos);
    if (end == std::string::npos) break;
    std::string block = body.substr(pos, end - pos);
    pos = end + 2;
    std::string name, data;
    size_t lp = 0;
    while (lp <= block.size()) {
      size_t le = block.find('\n', lp);
      std::string line = block.substr(lp, le == std::string::npos ? std::string::npos : le - lp);
      if (line.rfind("event: ", 0) == 0)
        name = line.substr(7);
      else if (line.rfind("data: ", 0) == 0)
        data = line.substr(6);
      else if (line.rfind(":", 0) == 0)
        name = ":";
      else
        ADD_FAILURE() << "unexpected SSE line: " << line;
      if (le == std::string::npos) break;
      lp = le + 1;
    }
    out.emplace_back(name, data);
  }
  return out;
}

// ------------------------------------------------------------------ basics

TEST(Server, HealthIs503UntilTheModelIsAttached) {
  TestServer s({}, /*attach=*/false);
  auto r = s.client().Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(json::parse(r->body)["error"]["message"], "Loading model");
  expect_openai_error(s.post("/chat/completions", chat()), 503, "Loading model");
  s.attach();
  r = s.client().Get("/health");
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["status"], "ok");
}

TEST(Server, ChatThinkingNonStream) {
  TestServer s;
  s.model->set("Let me think.</think>Hello!");
  for (const char* path : {"/chat/completions", "/v1/chat/completions", "/v1/chat/completions/"}) {
    auto r = s.post(path, chat());
    ASSERT_EQ(r->status, 200) << r->body;
    json j = json::parse(r->body);
    EXPECT_EQ(j["object"], "chat.completion");
    EXPECT_EQ(j["model"], "deepseek-v4-flash");
    EXPECT_TRUE(j["system_fingerprint"].is_string());
    auto& c = j["choices"][0];
    EXPECT_EQ(c["message"]["role"], "assistant");
    EXPECT_EQ(c["message"]["reasoning_content"], "Let me think.");
    EXPECT_EQ(c["message"]["content"], "Hello!");
    EXPECT_EQ(c["finish_reason"], "stop");
    EXPECT_TRUE(c["logprobs"].is_null());
    auto& u = j["usage"];
    const int64_t prompt =
        static_cast<int64_t>(s.backend->encode_chat(s.backend->last_conversation).size());
    EXPECT_EQ(u["prompt_tokens"], prompt);
    EXPECT_EQ(u["completion_tokens"], 27 + 1);  // the bytes + EOS
    EXPECT_EQ(u["total_tokens"], prompt + 28);
    EXPECT_EQ(u["prompt_cache_hit_tokens"], 0);
    EXPECT_EQ(u["prompt_cache_miss_tokens"], prompt);
    EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], 0);
    EXPECT_EQ(u["completion_tokens_details"]["reasoning_tokens"],
              21);  // up to and incl. "</think>"
  }
  EXPECT_EQ(s.backend->last_conversation["thinking_mode"], "thinking");
}

TEST(Server, ThinkingDisabledAndLegacyAliases) {
  TestServer s;
  s.model->set("Plain answer");
  json req = chat();
  req["thinking"] = {{"type", "disabled"}};
  json j = parse(s.post("/chat/completions", req));
  EXPECT_FALSE(j["choices"][0]["message"].contains("reasoning_content"));
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Plain answer");
  EXPECT_EQ(s.backend->last_conversation["thinking_mode"], "chat");

  j = parse(s.post("/chat/completions", chat("deepseek-chat")));
  EXPECT_EQ(s.backend->last_conversation["thinking_mode"], "chat");
  EXPECT_EQ(j["model"], "deepseek-chat");
  s.model->set("r</think>a");
  req = chat("deepseek-reasoner");
  req["thinking"] = {{"type", "disabled"}};  // the alias wins
  j = parse(s.post("/chat/completions", req));
  EXPECT_EQ(s.backend->last_conversation["thinking_mode"], "thinking");
  EXPECT_EQ(j["choices"][0]["message"]["reasoning_content"], "r");
}

TEST(Server, EffortSpellingsMapToHighOrMax) {
  TestServer s;
  for (auto [in, want] : std::vector<std::pair<std::string, std::string>>{{"low", "high"},
                                                                          {"medium", "high"},
                                                                          {"high", "high"},
                                                                          {"xhigh", "max"},
                                                                          {"max", "max"}}) {
    json req = chat();
    req["reasoning_effort"] = in;
    ASSERT_EQ(s.post("/chat/completions", req)->status, 200);
    EXPECT_EQ(s.backend->last_conversation["reasoning_effort"], want) << in;
  }
}

TEST(Server, StreamFramingOpenAI) {
  TestServer s;
  s.model->set("ab</think>Hi!");
  json req = chat();
  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  auto r = s.post("/chat/completions", req);
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  auto events = sse(r->body);
  ASSERT_GE(events.size(), 5u);
  EXPECT_EQ(events.back().second, "[DONE]");
  std::string reasoning, content;
  bool seen_content = false, seen_finish = false, seen_usage_chunk = false;
  std::string id;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    if (events[i].first == ":") continue;  // keep-alive comment
    EXPECT_EQ(events[i].first, "") << "OpenAI chunks carry no event name";
    json c = json::parse(events[i].second);
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    if (id.empty()) id = c["id"];
    EXPECT_EQ(c["id"], id);
    if (c["choices"].empty()) {
      seen_usage_chunk = true;
      EXPECT_EQ(c["usage"]["completion_tokens"], 14);
      continue;
    }
    auto& d = c["choices"][0]["delta"];
    if (!seen_finish && reasoning.empty() && content.empty() && d.contains("role")) {
      EXPECT_EQ(d["role"], "assistant");
    }
    if (d.contains("reasoning_content") && d["reasoning_content"].is_string()) {
      EXPECT_FALSE(seen_content) << "reasoning after content";
      reasoning += d["reasoning_content"].get<std::string>();
    }
    if (d.contains("content") && d["content"].is_string() &&
        !d["content"].get<std::string>().empty()) {
      seen_content = true;
      content += d["content"].get<std::string>();
    }
    if (!c["choices"][0]["finish_reason"].is_null()) {
      seen_finish = true;
      EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
      EXPECT_EQ(c["usage"]["completion_tokens"], 14);  // 13 bytes + EOS
      EXPECT_EQ(c["usage"]["completion_tokens_details"]["reasoning_tokens"], 10);
    } else {
      EXPECT_TRUE(c["usage"].is_null());
    }
  }
  EXPECT_EQ(reasoning, "ab");
  EXPECT_EQ(content, "Hi!");
  EXPECT_TRUE(seen_finish);
  EXPECT_TRUE(seen_usage_chunk);
}

TEST(Server, ToolCallsOpenAI) {
  TestServer s;
  s.model->set("need weather</think><<call get_weather {\"city\": \"Paris\"}>>");
  json req = chat();
  req["tools"] = {
      {{"type", "function"},
       {"function",
        {{"name", "get_weather"},
         {"parameters", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}}}};
  json j = parse(s.post("/chat/completions", req));
  auto& m = j["choices"][0]["message"];
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  ASSERT_EQ(m["tool_calls"].size(), 1u);
  EXPECT_EQ(m["tool_calls"][0]["index"], 0);
  EXPECT_EQ(m["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(m["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(m["tool_calls"][0]["id"].get<std::string>().rfind("call_00_", 0), 0u);
  EXPECT_TRUE(s.backend->last_conversation.contains("tools"));

  req["stream"] = true;
  auto events = sse(s.post("/chat/completions", req)->body);
  std::string args;
  bool header = false;
  for (auto& [name, data] : events) {
    if (name == ":" || data == "[DONE]") continue;
    json c = json::parse(data);
    if (c["choices"].empty()) continue;
    auto& d = c["choices"][0]["delta"];
    if (!d.contains("tool_calls")) continue;
    auto& tc = d["tool_calls"][0];
    EXPECT_EQ(tc["index"], 0);
    if (tc.contains("id")) {
      EXPECT_FALSE(header);
      header = true;
      EXPECT_EQ(tc["function"]["name"], "get_weather");
      EXPECT_EQ(tc["function"]["arguments"], "");
    } else {
      EXPECT_TRUE(header);
      args += tc["function"]["arguments"].get<std::string>();
    }
  }
  EXPECT_EQ(args, "{\"city\": \"Paris\"}");

  // The tool round trip: the answer request needs the reasoning back.
  json round = chat();
  round["tools"] = req["tools"];
  round["messages"].push_back(
      {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", m["tool_calls"]}});
  round["messages"].push_back(
      {{"role", "tool"}, {"tool_call_id", m["tool_calls"][0]["id"]}, {"content", "sunny"}});
  expect_openai_error(
      s.post("/chat/completions", round), 400,
      "The `reasoning_content` in the thinking mode must be passed back to the API.");
  round["messages"][1]["reasoning_content"] = "need weather";
  s.model->set("ok</think>It is sunny.");
  j = parse(s.post("/chat/completions", round));
  EXPECT_EQ(j["choices"][0]["message"]["content"], "It is sunny.");
  EXPECT_EQ(s.backend->last_conversation["messages"][2]["role"], "tool");
  EXPECT_EQ(s.backend->last_conversation["messages"][1]["reasoning_content"], "need weather");
}

TEST(Server, StopSequencesMaxTokensSeedLogprobs) {
  TestServer s;
  s.model->set("one two STOP three");
  json req = chat();
  req["thinking"] = {{"type", "disabled"}};
  req["stop"] = {"STOP", "zzz"};
  json j = parse(s.post("/chat/completions", req));
  EXPECT_EQ(j["choices"][0]["message"]["content"], "one two ");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");

  req.erase("stop");
  req["max_tokens"] = 5;
  j = parse(s.post("/chat/completions", req));
  EXPECT_EQ(j["choices"][0]["message"]["content"], "one t");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);

  req["logprobs"] = true;
  req["top_logprobs"] = 2;
  j = parse(s.post("/chat/completions", req));
  auto& lp = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(lp.size(), 5u);
  EXPECT_EQ(lp[0]["token"], "o");
  EXPECT_EQ(lp[0]["bytes"], json::array({int('o')}));
  EXPECT_NEAR(lp[0]["logprob"].get<double>(), 0.0, 1e-6);  // the fake puts all mass on it
  EXPECT_EQ(lp[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(lp[0]["top_logprobs"][0]["token"], "o");
}

TEST(Server, JsonObjectOutputIsConstrained) {
  TestServer s;
  json req = chat();
  req["thinking"] = {{"type", "disabled"}};
  req["response_format"] = {{"type", "json_object"}};
  // Valid JSON from the model passes through unchanged.
  s.model->set("{\"a\": [1, true]}");
  json j = parse(s.post("/chat/completions", req));
  EXPECT_EQ(j["choices"][0]["message"]["content"], "{\"a\": [1, true]}");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(s.backend->last_conversation["response_format"]["type"], "json_object");
  // A model that wants to write prose is held to the grammar: whatever it
  // writes is a prefix of a JSON object, and a complete one if it stopped.
  s.model->set("Hello, here is your JSON!");
  for (int seed = 0; seed < 5; ++seed) {
    req["seed"] = seed;
    req["max_tokens"] = 40;
    j = parse(s.post("/chat/completions", req));
    const std::string content = j["choices"][0]["message"]["content"];
    engine::JsonMachine m;
    EXPECT_TRUE(m.feed(content)) << content;
    if (j["choices"][0]["finish_reason"] == "stop") {
      EXPECT_TRUE(m.complete()) << content;
    }
  }
}

// ------------------------------------------------------------------ errors

TEST(Server, ValidationErrorsOpenAI) {
  TestServer s;
  auto raw = [&](const std::string& body) {
    return s.client().Post("/chat/completions", body, "application/json");
  };
  expect_openai_error(raw("{not json"), 400, "Failed to parse the request body as JSON");
  expect_openai_error(raw(std::string("{\"model\":\"deepseek-v4-flash\",\"messages\":[{\"role\":"
                                      "\"user\",\"content\":\"\xff\"}]}")),
                      400, "JSON");
  json req = chat();
  req["thinking"] = true;
  expect_openai_error(s.post("/chat/completions", req), 422, "thinking");
  req = chat();
  req["temperature"] = "hot";
  expect_openai_error(s.post("/chat/completions", req), 422,
                      "Failed to deserialize the JSON body into the target type: temperature");
  expect_openai_error(s.post("/chat/completions", chat("gpt-4o")), 400, "Model Not Exist");
  req = chat();
  req["max_tokens"] = 393217;
  expect_openai_error(s.post("/chat/completions", req), 400,
                      "Invalid max_tokens value, the valid range of max_tokens is [1, 393216]");
  req["max_tokens"] = 0;
  expect_openai_error(s.post("/chat/completions", req), 400, "the valid range of max_tokens");
  req = chat();
  req["messages"][0]["content"] = {{{"type", "image_url"}, {"image_url", {{"url", "x"}}}}};
  expect_openai_error(s.post("/chat/completions", req), 400,
                      "unknown variant `image_url`, expected `text`");
  req = {{"model", "deepseek-v4-flash"}};
  expect_openai_error(s.post("/chat/completions", req), 422, "missing field `messages`");
  req = chat();
  req["tool_choice"] = "required";
  req["tools"] = {{{"type", "function"}, {"function", {{"name", "f"}}}}};
  expect_openai_error(s.post("/chat/completions", req), 400, "thinking mode");
  // Unknown fields are accepted and ignored.
  req = chat();
  req["some_future_field"] = {1, 2};
  req["user"] = "u";
  req["parallel_tool_calls"] = true;
  EXPECT_EQ(s.post("/chat/completions", req)->status, 200);
  // Unknown routes keep the shape.
  expect_openai_error(s.client().Get("/nope"), 404, "Not found");
  // The server is still serving.
  EXPECT_EQ(s.post("/chat/completions", chat())->status, 200);
}

TEST(Server, ContextOverflowTexts) {
  TestServer s;
  s.model->context = 200;
  json req = chat();
  req["max_tokens"] = 150;
  const int64_t prompt = static_cast<int64_t>(
      s.backend
          ->encode_chat(
              parse_openai_chat(Json::parse(req.dump()), false, ModelNames()).conversation)
          .size());
  expect_openai_error(s.post("/chat/completions", req), 400,
                      "This model's maximum context length is 200 tokens. However, you requested " +
                          std::to_string(prompt + 150) + " tokens (" + std::to_string(prompt) +
                          " in the messages, 150 in the completion). Please reduce the length of "
                          "the messages or completion.");
  json a = {{"model", "claude-sonnet-4-5"},
            {"max_tokens", 150},
            {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  auto r = s.post("/v1/messages", a);
  expect_anthropic_error(r, 400, "invalid_request_error",
                         "input length and `max_tokens` exceed context limit: ");
  a["messages"][0]["content"] = std::string(300, 'x');
  expect_anthropic_error(s.post("/v1/messages", a), 400, "invalid_request_error",
                         "prompt is too long: ");
}

TEST(Server, OversizedBody) {
  ServerOptions o;
  o.max_body_bytes = 1000;
  TestServer s(o);
  json req = chat();
  req["messages"][0]["content"] = std::string(5000, 'x');
  expect_openai_error(s.post("/chat/completions", req), 413, "too large");
  expect_anthropic_error(s.post("/anthropic/v1/messages", req), 413, "request_too_large");
  EXPECT_EQ(s.post("/chat/completions", chat())->status, 200);
}

// -------------------------------------------------------------------- auth

TEST(Server, AuthBearerAndXApiKey) {
  ServerOptions o;
  o.api_keys = {"sk-good-1234", "sk-other"};
  TestServer s(o);
  expect_openai_error(s.post("/chat/completions", chat()), 401, "Authentication Fails");
  expect_openai_error(s.post("/chat/completions", chat(), "sk-bad-e78f"), 401,
                      "Your api key: ****e78f is invalid");
  EXPECT_EQ(s.post("/chat/completions", chat(), "sk-good-1234")->status, 200);
  EXPECT_EQ(s.post("/chat/completions", chat(), "sk-other")->status, 200);
  json a = {{"model", "deepseek-v4-pro"},
            {"max_tokens", 100},
            {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  expect_anthropic_error(s.post("/anthropic/v1/messages", a), 401, "authentication_error");
  httplib::Headers h = {{"x-api-key", "sk-good-1234"},
                        {"anthropic-version", "2023-06-01"},
                        {"anthropic-beta", "claude-code-20250219,unknown-beta-2099"}};
  auto r = s.client().Post("/anthropic/v1/messages?beta=true", h, a.dump(), "application/json");
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_FALSE(r->get_header_value("request-id").empty());
  EXPECT_EQ(s.client().Get("/health")->status, 200);  // public
  EXPECT_EQ(s.client().Get("/metrics")->status, 200);
  EXPECT_EQ(s.client().Get("/models")->status, 401);
  EXPECT_EQ(s.client("sk-other").Get("/models")->status, 200);
}

TEST(Server, RefusesPublicBindWithoutKeys) {
  ServerOptions o;
  o.host = "0.0.0.0";
  ApiServer server(o);
  EXPECT_THROW(server.bind(), Error);
  EXPECT_TRUE(is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("::1"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
}

// ------------------------------------------------------- ledger and budgets

TEST(Server, BudgetsBalanceAndLedgerAcrossRestart) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("dsv4_ledger_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string ledger = (dir / "ledger.json").string();
  const std::string prices = (dir / "prices.json").string();
  std::filesystem::remove(ledger);
  // Output priced so that one request of 6 tokens costs $0.6 (1e5 $/1M tokens).
  {
    std::ofstream(prices) << R"({"deepseek-v4-flash": {"input_cache_miss": 0, "output": 100000}})";
  }
  ServerOptions o;
  o.api_keys = {"k1", "k2"};
  o.budgets = {{"k1", 1.0}};
  o.ledger_file = ledger;
  o.prices_file = prices;
  {
    TestServer s(o);
    s.model->set("Hello");  // 5 bytes + EOS = 6 output tokens
    json b = parse(s.client("k1").Get("/user/balance"));
    EXPECT_EQ(b["is_available"], true);
    EXPECT_EQ(b["balance_infos"][0]["total_balance"], "1.00");
    EXPECT_EQ(s.post("/chat/completions", chat(), "k1")->status, 200);
    b = parse(s.client("k1").Get("/user/balance"));
    EXPECT_EQ(b["balance_infos"][0]["total_balance"], "0.40");
    EXPECT_EQ(s.post("/chat/completions", chat(), "k1")->status, 200);  // 0.40 left: allowed
    b = parse(s.client("k1").Get("/user/balance"));
    EXPECT_EQ(b["balance_infos"][0]["total_balance"], "0.00");
    EXPECT_EQ(b["is_available"], false);
    expect_openai_error(s.post("/chat/completions", chat(), "k1"), 402, "Insufficient Balance");
    EXPECT_EQ(s.post("/chat/completions", chat(), "k2")->status, 200);  // no budget
  }
  json saved = json::parse(std::ifstream(ledger));
  EXPECT_EQ(saved["accounts"]["k1"]["requests"], 2);
  EXPECT_EQ(saved["accounts"]["k1"]["completion_tokens"], 12);
  EXPECT_NEAR(saved["accounts"]["k1"]["spent_usd"].get<double>(), 1.2, 1e-9);
  EXPECT_FALSE(std::filesystem::exists(ledger + ".tmp"));
  {
    TestServer s(o);  // restart: the spend is remembered
    json a = {{"model", "deepseek-v4-flash"},
              {"max_tokens", 10},
              {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
    httplib::Headers h = {{"x-api-key", "k1"}};
    expect_anthropic_error(s.client().Post("/v1/messages", h, a.dump(), "application/json"), 402,
                           "billing_error", "Insufficient Balance");
  }
  std::filesystem::remove_all(dir);
}

// -------------------------------------------------------------- Anthropic

TEST(Server, AnthropicMessagesNonStream) {
  TestServer s;
  s.model->set("hmm</think>Sure.<<call read_file {\"path\": \"README.md\"}>>");
  json a = {
      {"model", "claude-opus-4-1[1m]"},
      {"max_tokens", 100},
      {"system",
       {{{"type", "text"}, {"text", "Be brief."}, {"cache_control", {{"type", "ephemeral"}}}}}},
      {"messages",
       {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Read it"}}}}},
        {{"role", "system"}, {"content", "mid-conversation system"}}}},
      {"tools",
       {{{"name", "read_file"},
         {"description", "Read"},
         {"input_schema",
          {{"type", "object"}, {"properties", {{"path", {{"type", "string"}}}}}}}}}},
      {"thinking", {{"type", "adaptive"}}},
      {"output_config", {{"effort", "max"}}},
      {"context_management", {{"edits", json::array()}}},
      {"metadata", {{"user_id", "u1"}}}};
  json j = parse(s.post("/v1/messages?beta=true", a));
  EXPECT_EQ(j["type"], "message");
  EXPECT_EQ(j["model"], "deepseek-v4-pro");
  EXPECT_EQ(j["stop_reason"], "tool_use");
  ASSERT_EQ(j["content"].size(), 3u);
  EXPECT_EQ(j["content"][0]["type"], "thinking");
  EXPECT_EQ(j["content"][0]["thinking"], "hmm");
  EXPECT_EQ(j["content"][0]["signature"], j["id"]);
  EXPECT_EQ(j["content"][1]["text"], "Sure.");
  EXPECT_EQ(j["content"][2]["type"], "tool_use");
  EXPECT_EQ(j["content"][2]["input"]["path"], "README.md");
  EXPECT_EQ(j["usage"]["cache_read_input_tokens"], 0);
  const auto& conv = s.backend->last_conversation;
  EXPECT_EQ(conv["reasoning_effort"], "max");
  EXPECT_EQ(conv["messages"][0]["role"], "system");
  EXPECT_EQ(conv["messages"][0]["content"], "Be brief.");
  EXPECT_EQ(conv["messages"][2]["role"], "system");

  // Replay without the thinking block: the platform's 400.
  json round = a;
  round["messages"] = {
      {{"role", "user"}, {"content", "Read it"}},
      {{"role", "assistant"},
       {"content",
        {{{"type", "tool_use"}, {"id", "t1"}, {"name", "read_file"}, {"input", {{"path", "x"}}}}}}},
      {{"role", "user"},
       {"content", {{{"type", "tool_result"}, {"tool_use_id", "t1"}, {"content", "data"}}}}}};
  expect_anthropic_error(
      s.post("/anthropic/v1/messages", round), 400, "invalid_request_error",
      "The `content[].thinking` in the thinking mode must be passed back to the API.");
  const json thinking_block = {{"type", "thinking"}, {"thinking", "t"}, {"signature", "anything"}};
  round["messages"][1]["content"].insert(round["messages"][1]["content"].begin(), thinking_block);
  s.model->set("done</think>Here.");
  j = parse(s.post("/anthropic/v1/messages", round));
  EXPECT_EQ(j["stop_reason"], "end_turn");
  EXPECT_EQ(s.backend->last_conversation["messages"][3]["role"], "tool");
  EXPECT_EQ(s.backend->last_conversation["messages"][3]["content"], "data");

  // count_tokens counts what would be prefilled.
  json ct = parse(s.post("/v1/messages/count_tokens?beta=true", a));
  json counted = a;
  EXPECT_EQ(
      ct["input_tokens"],
      s.backend
          ->encode_chat(
              parse_anthropic_messages(Json::parse(a.dump()), ModelNames(), true).conversation)
          .size());
  // Unknown non-claude model: 404 not_found_error.
  a["model"] = "gpt-4o";
  expect_anthropic_error(s.post("/v1/messages", a), 404, "not_found_error");
}

TEST(Server, AnthropicStreamEvents) {
  TestServer s;
  s.model->set("think</think>Text<<call f {\"a\": 1}>>");
  json a = {{"model", "deepseek-v4-flash"},
            {"max_tokens", 100},
            {"stream", true},
            {"tools", {{{"name", "f"}, {"input_schema", {{"type", "object"}}}}}},
            {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  auto r = s.post("/anthropic/v1/messages", a);
  ASSERT_EQ(r->status, 200);
  auto events = sse(r->body);
  std::vector<std::string> names;
  std::string thinking, text, partial;
  int64_t last_output = -1;
  for (auto& [name, data] : events) {
    ASSERT_NE(name, "") << "every Anthropic event is named";
    if (name == ":") continue;
    json j = json::parse(data);
    EXPECT_EQ(j["type"], name);
    if (names.empty() || names.back() != name || name != "content_block_delta")
      names.push_back(name);
    if (name == "content_block_delta") {
      auto& d = j["delta"];
      if (d["type"] == "thinking_delta") thinking += d["thinking"].get<std::string>();
      if (d["type"] == "text_delta") text += d["text"].get<std::string>();
      if (d["type"] == "input_json_delta") partial += d["partial_json"].get<std::string>();
    }
    if (name == "message_delta") {
      EXPECT_EQ(j["delta"]["stop_reason"], "tool_use");
      last_output = j["usage"]["output_tokens"];
    }
    if (name == "content_block_start" && j["content_block"]["type"] == "tool_use") {
      EXPECT_EQ(j["content_block"]["name"], "f");
      EXPECT_EQ(j["content_block"]["input"], json::object());
    }
  }
  EXPECT_EQ(thinking, "think");
  EXPECT_EQ(text, "Text");
  EXPECT_EQ(partial, "{\"a\": 1}");
  EXPECT_EQ(last_output, 37);  // 36 bytes + EOS
  const std::vector<std::string> want = {"message_start",       "ping",
                                         "content_block_start", "content_block_delta",
                                         "content_block_stop",  // thinking (+signature)
                                         "content_block_start", "content_block_delta",
                                         "content_block_stop",  // text
                                         "content_block_start", "content_block_delta",
                                         "content_block_stop",  // tool_use
                                         "message_delta",       "message_stop"};
  EXPECT_EQ(names, want);
}

// ------------------------------------------------------------ other routes

TEST(Server, ModelsBalanceTokenizeMetricsFim) {
  ServerOptions o;
  o.served_names = {"my-model"};
  TestServer s(o);
  json m = parse(s.client().Get("/v1/models"));
  EXPECT_EQ(m["object"], "list");
  std::vector<std::string> ids;
  for (auto& d : m["data"]) ids.push_back(d["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"deepseek-v4-flash", "deepseek-v4-pro", "my-model"}));
  EXPECT_EQ(m["data"][0]["owned_by"], "deepseek");
  EXPECT_EQ(parse(s.post("/chat/completions", chat("my-model")))["model"], "my-model");

  json b = parse(s.client().Get("/user/balance"));
  EXPECT_EQ(b["is_available"], true);
  EXPECT_TRUE(b["balance_infos"][0]["total_balance"].is_string());

  json t = parse(s.post("/tokenize", {{"content", "héllo"}}));
  EXPECT_EQ(t["count"], 6);
  json d = parse(s.post("/detokenize", {{"tokens", t["tokens"]}}));
  EXPECT_EQ(d["content"], "héllo");
  EXPECT_EQ(d["prompt"], "héllo");
  expect_openai_error(s.post("/detokenize", {{"tokens", {1, 99999}}}), 400, "not a token id");

  s.model->set("    return a");
  json f = parse(s.post("/beta/completions", {{"model", "deepseek-v4-pro"},
                                              {"prompt", "def fib(a):"},
                                              {"suffix", "    return fib(a-1)"},
                                              {"max_tokens", 128}}));
  EXPECT_EQ(f["object"], "text_completion");
  EXPECT_EQ(f["choices"][0]["text"], "    return a");
  EXPECT_EQ(f["choices"][0]["finish_reason"], "stop");
  expect_openai_error(s.post("/beta/completions",
                             {{"model", "deepseek-v4-pro"}, {"prompt", "x"}, {"max_tokens", 5000}}),
                      400, "the valid range of max_tokens is [1, 4096]");

  auto r = s.client().Get("/metrics");
  EXPECT_NE(r->body.find("dsv4_requests_total{route=\"chat_completions\",status=\"200\"} 1"),
            std::string::npos)
      << r->body;
  EXPECT_NE(r->body.find("# TYPE dsv4_time_to_first_token_seconds histogram"), std::string::npos);
  EXPECT_NE(r->body.find("dsv4_num_requests_waiting 0"), std::string::npos);
  EXPECT_NE(r->body.find("dsv4_generation_tokens_total"), std::string::npos);
}

// ------------------------------------------------- queueing and disconnects

TEST(Server, KeepAliveWhileQueuedAndCancelOnDisconnect) {
  ServerOptions o;
  o.keepalive_interval = 50ms;
  TestServer s(o);
  s.model->delay = 5ms;
  s.model->set("x", /*forever=*/true);
  // A long request occupies the worker; its client goes away after a few
  // chunks, which must stop the generation.
  std::atomic<int> chunks{0};
  std::thread first([&] {
    json req = chat();
    req["stream"] = true;
    req["thinking"] = {{"type", "disabled"}};
    httplib::Client c("127.0.0.1", s.port);
    httplib::Request hr;
    hr.method = "POST";
    hr.path = "/chat/completions";
    hr.body = req.dump();
    hr.set_header("Content-Type", "application/json");
    hr.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 20; };
    c.send(hr);
  });
  while (chunks < 3) std::this_thread::sleep_for(1ms);
  // Meanwhile a second streaming request waits in the queue and gets
  // keep-alive comments; it completes once the first is cancelled.
  json req = chat();
  req["stream"] = true;
  req["max_tokens"] = 3;
  auto r = s.post("/chat/completions", req);
  first.join();
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->body.rfind(": keep-alive\n\n", 0), 0u) << r->body.substr(0, 200);
  EXPECT_NE(r->body.find("data: [DONE]"), std::string::npos);
  const int steps = s.model->steps;
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(s.model->steps.load(), steps) << "the abandoned request kept generating";
}

TEST(Server, QueuedNonStreamGetsBlankLinesAndIsDroppedOnDisconnect) {
  ServerOptions o;
  o.keepalive_interval = 30ms;
  TestServer s(o);
  s.model->delay = 2ms;
  s.model->set("y", /*forever=*/true);
  json long_req = chat();
  long_req["thinking"] = {{"type", "disabled"}};
  long_req["max_tokens"] = 100;
  std::thread first([&] { EXPECT_EQ(s.post("/chat/completions", long_req)->status, 200); });
  while (s.model->steps < 2) std::this_thread::sleep_for(1ms);
  // Queued: blank lines first, then the JSON body.
  json req = chat();
  req["max_tokens"] = 2;
  auto r = s.post("/chat/completions", req);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->body.front(), '\n');
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["usage"]["completion_tokens"], 2);
  first.join();

  // A queued client that goes away is dropped without ever running.
  std::thread second([&] { s.post("/chat/completions", long_req); });
  while (s.model->steps < 110) std::this_thread::sleep_for(1ms);
  {
    httplib::Client c("127.0.0.1", s.port);
    httplib::Request hr;
    hr.method = "POST";
    hr.path = "/chat/completions";
    hr.body = long_req.dump();
    hr.set_header("Content-Type", "application/json");
    hr.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return false; };
    c.send(hr);  // gives up at the first blank line
  }
  second.join();
  const int steps = s.model->steps;
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(s.model->steps.load(), steps) << "the abandoned queued request ran";
  EXPECT_EQ(steps, 1 + 99 + 1 + 99 + 1 + 1);  // two 100-token runs and the 2-token one
}

// Sends `body` as a POST on a raw socket and returns the socket (the caller
// closes it to play a client that leaves).
int raw_post(int port, const std::string& path, const json& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string text = body.dump();
  const std::string req =
      "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
      "Content-Type: application/json\r\nContent-Length: " + std::to_string(text.size()) +
      "\r\n\r\n" + text;
  EXPECT_EQ(send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  return fd;
}

TEST(Server, RunningNonStreamStopsWhenItsClientLeaves) {
  if (!ClientWatch::supported()) GTEST_SKIP() << "no NETLINK_SOCK_DIAG on this system";
  TestServer s;
  s.model->delay = 5ms;
  s.model->set("z", /*forever=*/true);
  for (const char* path : {"/chat/completions", "/completions"}) {
    json req = std::string(path) == "/completions"
                   ? json{{"model", "deepseek-v4-flash"}, {"prompt", "a"}, {"max_tokens", 4000}}
                   : chat();
    req["max_tokens"] = 4000;
    req["thinking"] = {{"type", "disabled"}};
    const int before = s.model->steps;
    const int fd = raw_post(s.port, path, req);
    while (s.model->steps < before + 10) std::this_thread::sleep_for(1ms);
    close(fd);
    const int at_close = s.model->steps;
    std::this_thread::sleep_for(300ms);
    const int after = s.model->steps;
    // Stopped within a token or two of the close (one may be in flight),
    // far from the 4000 requested.
    EXPECT_LE(after - at_close, 3) << path;
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(s.model->steps.load(), after) << path << ": still generating";
  }
  // The worker is free: the next request runs.
  s.model->set("ok");
  json req = chat();
  req["thinking"] = {{"type", "disabled"}};
  auto r = s.post("/chat/completions", req);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(parse(r)["choices"][0]["message"]["content"], "ok");
}

}  // namespace
}  // namespace dsv4::server
