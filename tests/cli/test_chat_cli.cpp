// `dsv4 render` and `dsv4 parse` on every golden chat case, through the binary.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "chat/json_py.h"

namespace fs = std::filesystem;
using dsv4::chat::py_json_dumps;
using dsv4::chat::py_json_loads;
using dsv4::chat::PyJson;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

struct RunResult {
  int exit_code;
  std::string out, err;
};

class ChatCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dsv4_chat_cli_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  RunResult run(const std::string& args, const std::string& stdin_data) {
    write_file(dir_ / "in", stdin_data);
    std::string cmd = std::string("'") + DSV4_BINARY + "' " + args + " < '" +
                      (dir_ / "in").string() + "' > '" + (dir_ / "out").string() + "' 2> '" +
                      (dir_ / "err").string() + "'";
    int status = std::system(cmd.c_str());
    RunResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_file(dir_ / "out");
    r.err = read_file(dir_ / "err");
    return r;
  }

  static std::vector<fs::path> cases(const std::string& prefix) {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(fs::path(DSV4_TEST_DATA) / "chat" / "cases"))
      if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
  }

  fs::path dir_;
};

TEST_F(ChatCli, RenderEveryEncodeCase) {
  auto files = cases("enc_");
  ASSERT_GE(files.size(), 40u);
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    PyJson c = py_json_loads(read_file(path));
    RunResult r = run("render", py_json_dumps(*c.find("input")));
    if (const PyJson* expected = c.find("expected_prompt")) {
      EXPECT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(r.out, expected->as_string());
    } else {
      EXPECT_EQ(r.exit_code, 2);
      EXPECT_TRUE(r.out.empty());
      EXPECT_NE(r.err.find("rejects"), std::string::npos) << r.err;
    }
  }
}

// The fixtures shipped with the official encoder (encoding/tests), as render
// input objects; fixture 4 is the chat-mode one.
TEST_F(ChatCli, RenderOfficialFixtures) {
  const fs::path dir = fs::path(DSV4_TEST_DATA) / "chat" / "official_tests";
  const char* modes[] = {"thinking", "thinking", "thinking", "chat"};
  for (int n = 1; n <= 4; ++n) {
    SCOPED_TRACE("test_input_" + std::to_string(n));
    PyJson fixture = py_json_loads(read_file(dir / ("test_input_" + std::to_string(n) + ".json")));
    PyJson input = PyJson::object({{"thinking_mode", PyJson::string(modes[n - 1])}});
    if (fixture.is_array()) {
      input.set("messages", fixture);
    } else {
      input.set("messages", *fixture.find("messages"));
      input.set("tools", *fixture.find("tools"));
      input.set("tools_attached_to", PyJson::integer(0));
    }
    RunResult r = run("render", py_json_dumps(input));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, read_file(dir / ("test_output_" + std::to_string(n) + ".txt")));
  }
}

TEST_F(ChatCli, ParseEveryParseCase) {
  auto files = cases("parse_");
  ASSERT_GE(files.size(), 20u);
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    PyJson c = py_json_loads(read_file(path));
    RunResult r = run("parse", py_json_dumps(*c.find("input")));
    if (const PyJson* expected = c.find("expected")) {
      EXPECT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(py_json_loads(r.out), *expected) << r.out;
    } else {
      EXPECT_EQ(r.exit_code, 2);
      EXPECT_TRUE(r.out.empty());
      std::string message = c.find("expected_error")->find("message")->as_string();
      EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    }
  }
}

// The streamed events (fed 3 bytes at a time) add up to the one-shot result.
TEST_F(ChatCli, ParseEventsAddUp) {
  for (const auto& path : cases("parse_tool_")) {
    SCOPED_TRACE(path.filename().string());
    PyJson c = py_json_loads(read_file(path));
    const PyJson* expected = c.find("expected");
    if (!expected) continue;
    RunResult r = run("parse --events --piece 3", py_json_dumps(*c.find("input")));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::string content, arguments;
    std::istringstream lines(r.out);
    std::string line, last_type;
    while (std::getline(lines, line)) {
      PyJson ev = py_json_loads(line);
      last_type = ev.find("type")->as_string();
      if (last_type == "content") content += ev.find("text")->as_string();
      if (last_type == "tool_call_arguments") arguments += ev.find("text")->as_string();
    }
    EXPECT_EQ(last_type, "end");
    EXPECT_EQ(content, expected->find("content")->as_string());
    std::string want;
    for (const auto& tc : expected->find("tool_calls")->items())
      want += tc.find("function")->find("arguments")->as_string();
    EXPECT_EQ(arguments, want);
  }
}

// render --ids: the tokenizer golden data holds the ids of rendered chat
// prompts (category chat_prompt, source "chat:<case id>"). Every fourth one
// keeps the test quick: it checks the wiring, the tokenizer has its own tests.
TEST_F(ChatCli, RenderIdsMatchTokenizerGolden) {
  std::ifstream in(fs::path(DSV4_TEST_DATA) / "tokenizer" / "cases.jsonl");
  ASSERT_TRUE(in);
  const std::string model = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";
  std::string line;
  int checked = 0, seen = 0;
  while (std::getline(in, line)) {
    PyJson tc = py_json_loads(line);
    const std::string& source = tc.find("source")->as_string();
    if (source.rfind("chat:", 0) != 0) continue;
    fs::path chat_case = fs::path(DSV4_TEST_DATA) / "chat" / "cases" / (source.substr(5) + ".json");
    if (!fs::exists(chat_case) || seen++ % 4 != 0) continue;
    SCOPED_TRACE(source);
    PyJson c = py_json_loads(read_file(chat_case));
    RunResult r = run("render --ids --model '" + model + "'", py_json_dumps(*c.find("input")));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(py_json_loads(r.out), *tc.find("ids"));
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST_F(ChatCli, ErrorsAreClear) {
  RunResult r = run("render", "{not json");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not valid JSON"), std::string::npos) << r.err;
  r = run("render", R"({"messages": [{"role": "user", "content": "hi"}]})");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("thinking_mode"), std::string::npos) << r.err;
  r = run("parse", R"({"thinking_mode": "chat"})");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("\"text\""), std::string::npos) << r.err;
}

}  // namespace
