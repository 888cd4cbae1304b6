// Every golden encode case (computed by the official encoding_dsv4.py) must
// render byte for byte, and every rejected input must be rejected.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "chat/encoder.h"

namespace fs = std::filesystem;
using dsv4::chat::EncodeError;
using dsv4::chat::PyJson;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> cases_with_prefix(const std::string& prefix) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(fs::path(DSV4_TEST_DATA) / "chat" / "cases"))
    if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Encoder, GoldenCases) {
  auto files = cases_with_prefix("enc_");
  ASSERT_GE(files.size(), 40u);
  int rendered = 0, rejected = 0;
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    PyJson c = dsv4::chat::py_json_loads(read_file(path));
    ASSERT_TRUE(c.is_object());
    const PyJson& input = *c.find("input");
    if (const PyJson* expected = c.find("expected_prompt")) {
      std::string got;
      try {
        got = dsv4::chat::render(input);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rejected: " << e.what();
        continue;
      }
      EXPECT_EQ(got, expected->as_string());
      ++rendered;
    } else {
      const PyJson* err = c.find("expected_error");
      ASSERT_NE(err, nullptr);
      try {
        std::string got = dsv4::chat::render(input);
        ADD_FAILURE() << "accepted an input the official encoder rejects: " << got;
      } catch (const EncodeError& e) {
        EXPECT_EQ(e.python_type(), err->find("type")->as_string()) << e.what();
        const PyJson* msg = err->find("message");
        if (msg && msg->is_string()) {
          EXPECT_EQ(std::string(e.what()), msg->as_string());
        } else {
          std::string prefix = err->find("message_prefix")->as_string();
          EXPECT_EQ(std::string(e.what()).substr(0, prefix.size()), prefix);
        }
      }
      ++rejected;
    }
  }
  EXPECT_GT(rendered, 0);
  EXPECT_GT(rejected, 0);
}

// The fixtures shipped next to the official encoder (encoding/tests): a list
// of messages, or {"tools", "messages"} with the tools on the first message as
// the official test script attaches them. Fixture 4 is the chat-mode one.
TEST(Encoder, OfficialTestFixtures) {
  const fs::path dir = fs::path(DSV4_TEST_DATA) / "chat" / "official_tests";
  const char* modes[] = {"thinking", "thinking", "thinking", "chat"};
  for (int n = 1; n <= 4; ++n) {
    SCOPED_TRACE("test_input_" + std::to_string(n));
    PyJson fixture =
        dsv4::chat::py_json_loads(read_file(dir / ("test_input_" + std::to_string(n) + ".json")));
    PyJson messages = fixture.is_array() ? fixture : *fixture.find("messages");
    if (fixture.is_object()) messages.items()[0].set("tools", *fixture.find("tools"));
    dsv4::chat::EncodeOptions options;
    options.thinking_mode = modes[n - 1];
    EXPECT_EQ(dsv4::chat::encode_messages(messages, options),
              read_file(dir / ("test_output_" + std::to_string(n) + ".txt")));
  }
}

// The nlohmann entry point gives the same prompts (the golden inputs carry
// no numbers nlohmann would change).
TEST(Encoder, NlohmannInput) {
  for (const auto& path : cases_with_prefix("enc_tools_")) {
    SCOPED_TRACE(path.filename().string());
    auto c = nlohmann::ordered_json::parse(read_file(path));
    EXPECT_EQ(dsv4::chat::render(c["input"]), c["expected_prompt"].get<std::string>());
  }
}

// Options the golden cases leave at their defaults: context continuation
// with tool results sorted by a call made in the context, and no BOS.
TEST(Encoder, ContextAndOptions) {
  PyJson context = dsv4::chat::py_json_loads(R"([
    {"role": "user", "content": "Q"},
    {"role": "assistant", "content": "", "tool_calls": [
      {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
      {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{\"x\": 1.50}"}}]}])");
  PyJson messages = dsv4::chat::py_json_loads(R"([
    {"role": "tool", "tool_call_id": "b", "content": "B"},
    {"role": "tool", "tool_call_id": "a", "content": "A"}])");
  dsv4::chat::EncodeOptions options;
  options.thinking_mode = "chat";
  options.context = context;
  EXPECT_EQ(dsv4::chat::encode_messages(messages, options),
            "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>"
            "<｜Assistant｜></think>");
  options.context = PyJson();
  options.add_default_bos_token = false;
  PyJson both = context;
  for (const auto& m : messages.items()) both.push_back(m);
  EXPECT_EQ(dsv4::chat::encode_messages(both, options),
            "<｜User｜>Q<｜Assistant｜></think>\n\n<｜DSML｜tool_calls>\n"
            "<｜DSML｜invoke name=\"f\">\n\n</｜DSML｜invoke>\n"
            "<｜DSML｜invoke name=\"g\">\n<｜DSML｜parameter name=\"x\" string=\"false\">1.5"
            "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"
            "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>"
            "<｜Assistant｜></think>");
}

}  // namespace
