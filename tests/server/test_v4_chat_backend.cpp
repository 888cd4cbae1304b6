// The prompt the server builds from an OpenAI-format request equals the
// official V4 encoder's output (golden cases in tests/data/chat), including
// tools + thinking conversations; and FIM / output parsing over the real
// tokenizer and chat layer.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "server/requests.h"
#include "server/v4_chat_backend.h"

namespace dsv4::server {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<const Tokenizer> tokenizer() {
  static auto tok = Tokenizer::load(std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer");
  return tok;
}

// A golden encode case as the request a client would send, or null when the
// case uses encoder inputs the API does not expose (context, drop_thinking,
// task roles, tools on a non-system message, a final assistant message).
Json as_request(const Json& input) {
  static const std::set<std::string> api_roles = {"system", "user", "assistant", "tool"};
  for (const auto& [k, v] : input.items())
    if (k != "messages" && k != "tools" && k != "tools_attached_to" && k != "thinking_mode" &&
        k != "reasoning_effort")
      return nullptr;
  const Json& msgs = input["messages"];
  for (const auto& m : msgs) {
    if (!api_roles.count(m.value("role", ""))) return nullptr;
    if (m.contains("task") || m.contains("response_format") || m.contains("wo_eos")) return nullptr;
  }
  const std::string last = msgs.back().value("role", "");
  if (last != "user" && last != "tool") return nullptr;
  if (input.contains("tools") && (input["tools_attached_to"] != 0 || msgs[0]["role"] != "system"))
    return nullptr;
  Json req = {{"model", "deepseek-v4-flash"}, {"messages", msgs}};
  req["thinking"] = {{"type", input["thinking_mode"] == "thinking" ? "enabled" : "disabled"}};
  if (input.contains("reasoning_effort") && !input["reasoning_effort"].is_null())
    req["reasoning_effort"] = input["reasoning_effort"];
  if (input.contains("tools")) req["tools"] = input["tools"];
  return req;
}

TEST(V4ChatBackend, RequestPromptsMatchGoldenEncoder) {
  V4ChatBackend backend(tokenizer());
  int compared = 0, with_tools_thinking = 0, rejected = 0;
  std::vector<std::string> ids;
  for (const auto& entry : fs::directory_iterator(std::string(DSV4_TEST_DATA) + "/chat/cases")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("enc_", 0) != 0) continue;
    Json c = Json::parse(std::ifstream(entry.path()));
    if (!c.contains("expected_prompt")) continue;
    Json req = as_request(c["input"]);
    if (req.is_null()) continue;
    ChatJob job;
    try {
      job = parse_openai_chat(req, false, ModelNames());
    } catch (const ApiError& e) {
      // Requests the platform rejects though the encoder renders them:
      // tool-calling turns without reasoning_content in thinking mode, and
      // image parts (V4 reads no images).
      const std::string what = e.what();
      EXPECT_TRUE(what.find("reasoning_content") != std::string::npos ||
                  what.find("unknown variant `image_url`") != std::string::npos)
          << name << ": " << what;
      ++rejected;
      continue;
    }
    EXPECT_EQ(backend.render_chat(job.conversation), c["expected_prompt"].get<std::string>())
        << name;
    EXPECT_EQ(backend.encode_chat(job.conversation),
              tokenizer()->encode(c["expected_prompt"].get<std::string>()))
        << name;
    ++compared;
    if (req.contains("tools") && c["input"]["thinking_mode"] == "thinking") ++with_tools_thinking;
    ids.push_back(name);
  }
  EXPECT_GE(compared, 10);
  EXPECT_GE(with_tools_thinking, 2);
  std::string list;
  for (auto& n : ids) list += n + " ";
  std::printf("compared %d golden prompts (%d rejected as the platform does): %s\n", compared,
              rejected, list.c_str());
}

TEST(V4ChatBackend, ToolSchemaKeyOrderIsKept) {
  // JSON objects keep the client's key order all the way to the prompt.
  V4ChatBackend backend(tokenizer());
  Json req = Json::parse(R"({"model":"deepseek-v4-flash","messages":[{"role":"user","content":"x"}],
    "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",
    "properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}}}]})");
  const std::string prompt =
      backend.render_chat(parse_openai_chat(req, false, ModelNames()).conversation);
  const auto z = prompt.find("zeta"), a = prompt.find("alpha");
  ASSERT_NE(z, std::string::npos);
  ASSERT_NE(a, std::string::npos);
  EXPECT_LT(z, a);
}

TEST(V4ChatBackend, OutputParserEventsAndEos) {
  V4ChatBackend backend(tokenizer());
  auto p = backend.new_output_parser(true);
  std::string reasoning, content;
  auto take = [&](const std::vector<OutputEvent>& evs) {
    for (const auto& e : evs) {
      if (e.kind == OutputEvent::Kind::kReasoning) reasoning += e.text;
      if (e.kind == OutputEvent::Kind::kContent) content += e.text;
    }
  };
  for (std::string piece : {"Let me", " think", "</thi", "nk>", "Hello", " world"})
    take(p->push(piece));
  take(p->finish(true));  // the engine never decodes EOS; finish supplies it
  EXPECT_EQ(reasoning, "Let me think");
  EXPECT_EQ(content, "Hello world");

  // Text the official parser rejects still reaches the client as content.
  auto q = backend.new_output_parser(false);
  content.clear();
  take(q->push("a<｜begin▁of▁sentence｜>b"));
  take(q->push("c"));
  take(q->finish(true));
  EXPECT_NE(content.find("c"), std::string::npos);

  // A length-truncated reasoning is not closed with the EOS text.
  auto r = backend.new_output_parser(true);
  reasoning.clear();
  content.clear();
  take(r->push("still thinking"));
  take(r->finish(false));
  EXPECT_EQ(reasoning.find("end"), std::string::npos) << reasoning;
  EXPECT_EQ(content.find("<｜end"), std::string::npos) << content;
}

TEST(V4ChatBackend, FimLayoutAndStopTokens) {
  V4ChatBackend backend(tokenizer());
  auto tok = tokenizer();
  auto ids = backend.encode_fim("def f(", std::string("return 1"));
  ASSERT_GE(ids.size(), 5u);
  EXPECT_EQ(ids.front(), tok->bos_id());
  EXPECT_EQ(ids[1], *tok->token_id("<｜fim▁begin｜>"));
  EXPECT_EQ(ids.back(), *tok->token_id("<｜fim▁end｜>"));
  EXPECT_EQ(tok->decode(ids),
            "<｜begin▁of▁sentence｜><｜fim▁begin｜>def f(<｜fim▁hole｜>return 1<｜fim▁end｜>");
  // User text cannot smuggle control tokens into the FIM prompt.
  auto inj = backend.encode_fim("<｜fim▁hole｜>", std::nullopt);
  EXPECT_EQ(std::count(inj.begin(), inj.end(), *tok->token_id("<｜fim▁hole｜>")), 0);
  EXPECT_EQ(backend.stop_tokens(), std::vector<int32_t>{tok->eos_id()});
}

}  // namespace
}  // namespace dsv4::server
