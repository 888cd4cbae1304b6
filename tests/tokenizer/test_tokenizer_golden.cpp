// The V4 tokenizer against golden data computed by Hugging Face `tokenizers`
// (tests/data/tokenizer/README.md): ids, token strings, decode with and
// without special tokens, and the ids when added tokens are not recognised.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<json> rows;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

std::shared_ptr<const Tokenizer> v4() {
  static std::shared_ptr<const Tokenizer> tok = Tokenizer::load(kModelDir);
  return tok;
}

TEST(TokenizerGolden, LoadsQuicklyAndKnowsKeyIds) {
  const auto t0 = std::chrono::steady_clock::now();
  auto tok = Tokenizer::load(kModelDir);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("load time: %.3f s\n", seconds);
  // Generous bound so a loaded CI machine does not flake; the target is < 0.5 s.
  EXPECT_LT(seconds, 3.0);
  EXPECT_EQ(tok->vocab_size(), 129280);
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->token_id("<｜User｜>"), 128803);
  EXPECT_EQ(tok->token_id("<｜Assistant｜>"), 128804);
  EXPECT_EQ(tok->token_id("<think>"), 128821);
  EXPECT_EQ(tok->token_id("</think>"), 128822);
  EXPECT_EQ(tok->token_id("｜DSML｜"), 128825);
  EXPECT_EQ(tok->token_id("<｜latest_reminder｜>"), 128828);
  EXPECT_FALSE(tok->token_id("<｜System｜>").has_value());
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_FALSE(tok->is_special(128803));
  EXPECT_FALSE(tok->is_special(1000));
  EXPECT_THROW(tok->token_string(-1), Error);
  EXPECT_THROW(tok->token_string(tok->vocab_size()), Error);
}

TEST(TokenizerGolden, EncodeCases) {
  auto tok = v4();
  const auto cases = read_jsonl(std::string(DSV4_TEST_DATA) + "/tokenizer/cases.jsonl");
  ASSERT_GT(cases.size(), 100u);
  int checked_plain = 0;
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const std::string text = c["text"];
    const auto ids = tok->encode(text);
    ASSERT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << "text: " << text;
    std::vector<std::string> tokens;
    for (int32_t id : ids) tokens.push_back(tok->token_string(id));
    EXPECT_EQ(tokens, c["tokens"].get<std::vector<std::string>>());
    EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>());
    EXPECT_EQ(tok->decode(ids, true), c["decoded_skip_special"].get<std::string>());
    if (c.value("roundtrip", false)) {
      EXPECT_EQ(tok->decode(ids), text);
    }
    if (c.contains("ids_without_added_tokens")) {
      EXPECT_EQ(tok->encode_without_added_tokens(text),
                c["ids_without_added_tokens"].get<std::vector<int32_t>>());
      ++checked_plain;
    } else {
      // No added-token string in the text: both modes agree.
      EXPECT_EQ(tok->encode_without_added_tokens(text), ids);
    }
  }
  EXPECT_GT(checked_plain, 0);
}

TEST(TokenizerGolden, DecodeCases) {
  auto tok = v4();
  const auto cases = read_jsonl(std::string(DSV4_TEST_DATA) + "/tokenizer/decode_cases.jsonl");
  ASSERT_GT(cases.size(), 10u);
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>());
    EXPECT_EQ(tok->decode(ids, true), c["decoded_skip_special"].get<std::string>());
    std::vector<std::string> tokens;
    for (int32_t id : ids) tokens.push_back(tok->token_string(id));
    EXPECT_EQ(tokens, c["tokens"].get<std::vector<std::string>>());
    // Streaming gives the same text, whatever the token boundaries.
    for (bool skip : {false, true}) {
      StreamingDetokenizer stream(tok, skip);
      std::string text;
      for (int32_t id : ids) text += stream.push(id);
      text += stream.flush();
      EXPECT_EQ(text, tok->decode(ids, skip));
    }
  }
}

TEST(TokenizerGolden, ArchitectureSpecExample) {
  auto tok = v4();
  const std::vector<int32_t> expected = {128803, 30594, 128804, 128821, 36101, 128822, 7624, 1};
  EXPECT_EQ(
      tok->encode("<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>"),
      expected);
}

TEST(TokenizerGolden, RejectsInvalidUtf8) {
  auto tok = v4();
  EXPECT_THROW(tok->encode(std::string("ab\xff")), Error);
  EXPECT_THROW(tok->encode(std::string("\xe2\x82")), Error);      // truncated
  EXPECT_THROW(tok->encode(std::string("\xed\xa0\x80")), Error);  // surrogate
}

}  // namespace
}  // namespace dsv4

namespace dsv4 {
namespace {

// Random and Unicode-15/16 texts tokenized by Hugging Face tokenizers 0.23.2
// (tests/tokenizer/data/README.md).
TEST(TokenizerGolden, HuggingFaceFuzzCases) {
  auto tok = v4();
  const auto cases =
      read_jsonl(std::string(DSV4_SOURCE_DIR) + "/tests/tokenizer/data/hf_fuzz_cases.jsonl");
  ASSERT_GT(cases.size(), 300u);
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const std::string text = c["text"];
    const auto ids = tok->encode(text);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << "text: " << text;
    EXPECT_EQ(tok->decode(ids), text);
  }
}

}  // namespace
}  // namespace dsv4
