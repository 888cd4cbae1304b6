// The demo-model data tooling (tools/demo, Python) against the C++ chat layer
// and tokenizer the engine uses: a tokenizer trained by train_tokenizer.py must
// load in dsv4::Tokenizer and give the Python ids, every generated conversation
// must render identically with dsv4::chat::render, and every assistant turn the
// model is trained to produce must parse back into that turn with
// dsv4::chat::parse. The data comes from `tests/demo/check_demo.py export`.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/encoder.h"
#include "chat/parser.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
// ordered_json: the rendered tool schemas keep the key order of the input.
using json = nlohmann::ordered_json;

namespace {

class DemoData : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new fs::path(fs::temp_directory_path() / ("dsv4_demo_cpp_" + std::to_string(::getpid())));
    const std::string cmd = std::string("/usr/bin/python3 '") + DSV4_SOURCE_DIR +
                            "/tests/demo/check_demo.py' export --out '" + dir_->string() +
                            "' > /dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "failed: " << cmd;
    std::ifstream in(*dir_ / "cases.jsonl");
    ASSERT_TRUE(in) << "no cases.jsonl in " << *dir_;
    cases_ = new std::vector<json>();
    for (std::string line; std::getline(in, line);) cases_->push_back(json::parse(line));
  }
  static void TearDownTestSuite() {
    if (dir_) fs::remove_all(*dir_);
    delete dir_;
    delete cases_;
    dir_ = nullptr;
    cases_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cases_, nullptr);
    ASSERT_GE(cases_->size(), 300u);
  }

  static fs::path* dir_;
  static std::vector<json>* cases_;
};

fs::path* DemoData::dir_ = nullptr;
std::vector<json>* DemoData::cases_ = nullptr;

TEST_F(DemoData, EncoderRendersLikeThePythonTools) {
  for (const auto& c : *cases_) {
    EXPECT_EQ(dsv4::chat::render_json_text(c["input"].dump()), c["text"].get<std::string>())
        << c["input"].dump();
  }
}

TEST_F(DemoData, TokenizerGivesThePythonIds) {
  const auto tok = dsv4::Tokenizer::load((*dir_ / "tok").string());
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->vocab_size(), 1024);
  for (const auto& c : *cases_) {
    const auto text = c["text"].get<std::string>();
    const auto expected = c["ids"].get<std::vector<int32_t>>();
    const auto ids = tok->encode(text);
    EXPECT_EQ(ids, expected) << text;
    EXPECT_EQ(tok->decode(ids), text);
  }
}

TEST_F(DemoData, ParserRecoversEveryTrainedAssistantTurn) {
  size_t turns = 0, calls = 0;
  for (const auto& c : *cases_) {
    for (const auto& out : c["outputs"]) {
      const auto& msg = out["message"];
      const auto text = out["output"].get<std::string>();
      const bool thinking = out["thinking"].get<bool>();
      dsv4::chat::ParsedMessage parsed;
      try {
        parsed = dsv4::chat::parse(text, thinking);
      } catch (const dsv4::chat::ParseError& e) {
        ADD_FAILURE() << e.what() << " on " << text;
        continue;
      }
      ++turns;
      EXPECT_EQ(parsed.content, msg.value("content", "")) << text;
      if (thinking) {
        EXPECT_EQ(parsed.reasoning_content, msg["reasoning_content"].get<std::string>()) << text;
      }
      const json calls_expected = msg.value("tool_calls", json::array());
      ASSERT_EQ(parsed.tool_calls.size(), calls_expected.size()) << text;
      for (size_t i = 0; i < parsed.tool_calls.size(); ++i) {
        const auto& fn = calls_expected[i]["function"];
        EXPECT_EQ(parsed.tool_calls[i].name, fn["name"].get<std::string>());
        EXPECT_EQ(json::parse(parsed.tool_calls[i].arguments),
                  json::parse(fn["arguments"].get<std::string>()))
            << text;
        ++calls;
      }
    }
  }
  EXPECT_GE(turns, 300u);
  EXPECT_GE(calls, 30u);  // the mix has ~18 % tool conversations
}

}  // namespace
