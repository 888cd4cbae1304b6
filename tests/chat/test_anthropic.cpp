// anthropic_to_conversation: Anthropic Messages requests written by hand to
// say the same as a golden case's OpenAI-form conversation must render to that
// case's expected prompt (computed by the official encoder).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "chat/encoder.h"

namespace fs = std::filesystem;
using dsv4::chat::anthropic_to_conversation;
using dsv4::chat::py_json_loads;
using dsv4::chat::PyJson;

namespace {

std::string expected_prompt(const std::string& case_id) {
  std::ifstream in(fs::path(DSV4_TEST_DATA) / "chat" / "cases" / (case_id + ".json"),
                   std::ios::binary);
  EXPECT_TRUE(in) << case_id;
  std::ostringstream ss;
  ss << in.rdbuf();
  return py_json_loads(ss.str()).find("expected_prompt")->as_string();
}

std::string render_anthropic(const std::string& request) {
  return dsv4::chat::render(anthropic_to_conversation(py_json_loads(request)));
}

const char* kWeatherTool =
    R"({"name": "get_weather", "description": "Get the current weather for a city.",
  "input_schema": {"type": "object", "properties": {"location": {"type": "string", "description": "City name"},
  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}})";

TEST(Anthropic, ToolRoundWithThinking) {
  std::string request = std::string(R"({
    "model": "deepseek-v4", "max_tokens": 100,
    "system": "You are a helpful assistant.",
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "tools": [)") + kWeatherTool +
                        R"(],
    "messages": [
      {"role": "user", "content": "What's the weather in Beijing?"},
      {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I should call get_weather.", "signature": "sig"},
        {"type": "tool_use", "id": "call_1", "name": "get_weather",
         "input": {"location": "Beijing", "unit": "celsius"}}]},
      {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1",
         "content": "{\"temperature\": 22, \"condition\": \"sunny\"}"}]},
      {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Format the answer.", "signature": "sig"},
        {"type": "text", "text": "It is 22°C and sunny in Beijing."}]},
      {"role": "user", "content": [{"type": "text", "text": "Thanks! And Shanghai?"}]}
    ]})";
  EXPECT_EQ(render_anthropic(request), expected_prompt("enc_tools_full_round_thinking"));
}

TEST(Anthropic, ParallelToolsChatModeSystemBlocks) {
  // Tool results arrive in the other order: the encoder sorts them by call order.
  std::string request = std::string(R"({
    "system": [{"type": "text", "text": "You are a helpful assistant.",
                "cache_control": {"type": "ephemeral"}}],
    "thinking": {"type": "disabled"},
    "tools": [{"name": "get_time", "description": "Current UTC time.",
               "input_schema": {"type": "object", "properties": {}}}, )") +
                        kWeatherTool + R"(],
    "messages": [
      {"role": "user", "content": "Time and weather in Oslo?"},
      {"role": "assistant", "content": [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "p1", "name": "get_time", "input": {}},
        {"type": "tool_use", "id": "p2", "name": "get_weather", "input": {"location": "Oslo"}}]},
      {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "p2", "content": [{"type": "text", "text": "rain"}]},
        {"type": "tool_result", "tool_use_id": "p1", "content": "09:00"}]},
      {"role": "assistant", "content": "It is 09:00 and raining."},
      {"role": "user", "content": "Thanks"}
    ]})";
  EXPECT_EQ(render_anthropic(request), expected_prompt("enc_tools_parallel_two_chat"));
}

TEST(Anthropic, PlainConversations) {
  EXPECT_EQ(render_anthropic(R"({"messages": [{"role": "user", "content": "Hello"}],
                                 "thinking": {"type": "enabled", "budget_tokens": 1024}})"),
            "<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜><think>");
  EXPECT_EQ(render_anthropic(R"({"system": "S", "messages": [{"role": "user", "content": "Hi"}],
                                 "thinking": {"type": "disabled"}})"),
            "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜></think>");
  // redacted_thinking carries no readable text and is dropped.
  EXPECT_EQ(render_anthropic(R"({"thinking": {"type": "disabled"},
      "messages": [{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xyz"},
                                        {"type": "text", "text": "Yo"}]},
      {"role": "user", "content": "Again"}]})"),
            "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜></think>Yo<｜end▁of▁sentence｜>"
            "<｜User｜>Again<｜Assistant｜></think>");
}

// DeepSeek's API thinks unless told not to; Claude Code's effort setting
// arrives as output_config.effort.
TEST(Anthropic, ThinkingDefaultsAndEffort) {
  const std::string hi = R"("messages": [{"role": "user", "content": "Hi"}])";
  EXPECT_EQ(render_anthropic("{" + hi + "}"),
            "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>");
  PyJson conv = anthropic_to_conversation(py_json_loads("{" + hi + "}"), false);
  EXPECT_EQ(conv.find("thinking_mode")->as_string(), "chat");
  conv = anthropic_to_conversation(py_json_loads(
      "{" + hi + R"(, "thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}})"));
  EXPECT_EQ(conv.find("thinking_mode")->as_string(), "thinking");
  EXPECT_EQ(conv.find("reasoning_effort")->as_string(), "max");
  EXPECT_EQ(dsv4::chat::render(conv).substr(0, 60),
            expected_prompt("enc_effort_max_no_system").substr(0, 60));
  conv = anthropic_to_conversation(py_json_loads(
      "{" + hi + R"(, "thinking": {"type": "disabled"}, "output_config": {"effort": "max"}})"));
  EXPECT_EQ(conv.find("reasoning_effort"), nullptr);
  EXPECT_THROW(anthropic_to_conversation(py_json_loads("{" + hi + R"(, "thinking": true})")),
               dsv4::Error);
  EXPECT_THROW(anthropic_to_conversation(
                   py_json_loads("{" + hi + R"(, "output_config": {"effort": "huge"}})")),
               dsv4::Error);
}

// The OpenAI-side helper: top-level tools land on the system message (one is
// created when missing), prefix completion leaves the last turn open.
TEST(OpenAi, ToolsThinkingAndPrefix) {
  std::ifstream in(fs::path(DSV4_TEST_DATA) / "chat" / "cases" / "enc_tools_single_thinking.json",
                   std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  PyJson c = py_json_loads(ss.str());
  const PyJson& input = *c.find("input");
  PyJson request = PyJson::object({{"messages", *input.find("messages")},
                                   {"tools", *input.find("tools")},
                                   {"reasoning_effort", PyJson::string("medium")}});
  EXPECT_EQ(dsv4::chat::render(dsv4::chat::openai_to_conversation(request)),
            c.find("expected_prompt")->as_string());

  PyJson no_system = py_json_loads(R"({"messages": [{"role": "user", "content": "Hi"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
      "thinking": {"type": "disabled"}})");
  std::string prompt = dsv4::chat::render(dsv4::chat::openai_to_conversation(no_system));
  EXPECT_EQ(prompt.rfind("<｜begin▁of▁sentence｜>\n\n## Tools\n", 0), 0u) << prompt;
  EXPECT_NE(prompt.find(R"({"name": "f", "parameters": {}})"), std::string::npos);

  PyJson prefix = py_json_loads(R"({"thinking": {"type": "disabled"}, "messages": [
      {"role": "user", "content": "Write quick sort"},
      {"role": "assistant", "content": "```python\n", "prefix": true}]})");
  EXPECT_EQ(dsv4::chat::render(dsv4::chat::openai_to_conversation(prefix)),
            "<｜begin▁of▁sentence｜><｜User｜>Write quick sort<｜Assistant｜></think>```python\n");
}

TEST(Anthropic, RejectsWhatTheModelCannotRead) {
  auto expect_error = [](const std::string& request, const std::string& needle) {
    try {
      render_anthropic(request);
      ADD_FAILURE() << "accepted: " << request;
    } catch (const dsv4::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(R"({"messages": [{"role": "user", "content": [
      {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]})",
               "image");
  expect_error(R"({"messages": [{"role": "system", "content": "x"}]})", "role");
  expect_error(R"({"messages": "hi"})", "messages");
  expect_error(R"({"tools": [{"type": "web_search_20250305", "name": "web_search"}],
                   "messages": [{"role": "user", "content": "x"}]})",
               "web_search_20250305");
}

}  // namespace
