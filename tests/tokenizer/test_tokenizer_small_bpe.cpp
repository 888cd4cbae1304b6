// A small tokenizer of the V4 family with its own vocabulary, merges and
// added-token ids (tests/tokenizer/data/README.md), against Hugging Face
// tokenizers' output on it: nothing may depend on the V4 file's contents.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;

const std::string kDir = std::string(DSV4_SOURCE_DIR) + "/tests/tokenizer/data/small-bpe";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<json> rows;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

TEST(SmallBpe, Metadata) {
  auto tok = Tokenizer::load(kDir + "/tokenizer.json");  // the file itself works too
  std::ifstream in(kDir + "/tokenizer.json");
  const json doc = json::parse(in);
  int32_t max_id = -1;
  for (const auto& [token, id] : doc["model"]["vocab"].items()) {
    EXPECT_EQ(tok->token_id(token), id.get<int32_t>());
    max_id = std::max(max_id, id.get<int32_t>());
  }
  for (const json& a : doc["added_tokens"]) {
    const int32_t id = a["id"];
    EXPECT_EQ(tok->token_id(a["content"].get<std::string>()), id);
    EXPECT_EQ(tok->token_string(id), a["content"].get<std::string>());
    EXPECT_EQ(tok->is_special(id), a["special"].get<bool>());
    max_id = std::max(max_id, id);
  }
  EXPECT_EQ(tok->vocab_size(), max_id + 1);
  EXPECT_EQ(tok->bos_id(), tok->token_id("<｜begin▁of▁sentence｜>"));
  EXPECT_EQ(tok->eos_id(), tok->token_id("<｜end▁of▁sentence｜>"));
}

TEST(SmallBpe, EncodeCases) {
  auto tok = Tokenizer::load(kDir);
  const auto cases = read_jsonl(kDir + "/cases.jsonl");
  ASSERT_GT(cases.size(), 100u);
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const std::string text = c["text"];
    const auto ids = tok->encode(text);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << "text: " << text;
    EXPECT_EQ(tok->decode(ids), text);
  }
}

TEST(SmallBpe, DecodeCases) {
  auto tok = Tokenizer::load(kDir);
  const auto cases = read_jsonl(kDir + "/decode_cases.jsonl");
  ASSERT_GT(cases.size(), 100u);
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>());
    EXPECT_EQ(tok->decode(ids, true), c["decoded_skip_special"].get<std::string>());
    StreamingDetokenizer stream(tok);
    std::string text;
    for (int32_t id : ids) text += stream.push(id);
    EXPECT_EQ(text + stream.flush(), c["decoded"].get<std::string>());
  }
}

}  // namespace
}  // namespace dsv4
