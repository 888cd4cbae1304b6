// Small hand-made tokenizer.json files exercise what the V4 file does not
// use: Split behaviours other than Isolated, invert, String patterns,
// normalizers, added-token lstrip/rstrip/single_word/normalized flags, the
// [a, b] merge form, ByteLevel's own regex, and rejection of unsupported
// components. Expected ids are derived by hand from Hugging Face semantics.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// The GPT-2 byte-level string of raw bytes (independent of the library's table).
std::string byte_level(std::string_view raw) {
  std::string out;
  for (char c : raw) {
    const int b = static_cast<uint8_t>(c);
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    int cp = b;
    if (!printable) {
      int n = 0;
      for (int x = 0; x < b; ++x)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) ++n;
      cp = 256 + n;
    }
    utf8::append(out, static_cast<char32_t>(cp));
  }
  return out;
}

class Synthetic : public ::testing::Test {
 protected:
  // Vocab: the 256 byte symbols (id = byte value), then one id per merge result.
  json base(const std::vector<std::pair<std::string, std::string>>& merges, bool array_merges) {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_level(std::string(1, static_cast<char>(b)))] = b;
    json merge_list = json::array();
    int next = 256;
    for (const auto& [a, b] : merges) {
      const std::string ab = byte_level(a + b);
      if (!vocab.contains(ab)) vocab[ab] = next++;
      if (array_merges)
        merge_list.push_back({byte_level(a), byte_level(b)});
      else
        merge_list.push_back(byte_level(a) + " " + byte_level(b));
    }
    json doc = {{"version", "1.0"},
                {"added_tokens", json::array()},
                {"normalizer", nullptr},
                {"pre_tokenizer",
                 {{"type", "Sequence"},
                  {"pretokenizers",
                   {{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
                {"post_processor", nullptr},
                {"decoder", {{"type", "ByteLevel"}}},
                {"model",
                 {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"vocab", vocab},
                  {"merges", merge_list}}}};
    return doc;
  }

  std::shared_ptr<const Tokenizer> load(const json& doc, const json* config = nullptr) {
    const fs::path dir = fs::temp_directory_path() /
                         ("dsv4_tok_" + std::to_string(::getpid()) + "_" + std::to_string(n_++));
    fs::create_directories(dir);
    dirs_.push_back(dir);
    std::ofstream(dir / "tokenizer.json") << doc.dump();
    if (config) std::ofstream(dir / "tokenizer_config.json") << config->dump();
    return Tokenizer::load(dir.string());
  }

  void TearDown() override {
    for (const auto& d : dirs_) fs::remove_all(d);
  }

  // Ids of a sequence of byte-level pieces, looked up by their strings.
  static std::vector<int32_t> ids(const Tokenizer& tok, const std::vector<std::string>& pieces) {
    std::vector<int32_t> out;
    for (const auto& p : pieces) {
      auto id = tok.token_id(byte_level(p));
      if (!id) id = tok.token_id(p);  // added tokens
      EXPECT_TRUE(id.has_value()) << p;
      out.push_back(id.value_or(-1));
    }
    return out;
  }

  static void add_split(json& doc, const json& pattern, const std::string& behavior,
                        bool invert = false) {
    auto& steps = doc["pre_tokenizer"]["pretokenizers"];
    json step = json::object();
    step["type"] = "Split";
    step["pattern"] = pattern;
    step["behavior"] = behavior;
    step["invert"] = invert;
    steps.insert(steps.begin(), step);
  }

  int n_ = 0;
  std::vector<fs::path> dirs_;
};

const std::vector<std::pair<std::string, std::string>> kDashMerges = {
    {"a", "-"}, {"-", "b"}, {"b", "-"}, {"-", "c"}, {"-", "-"}, {"a", "b"}, {"ab", "c"}};

TEST_F(Synthetic, MergesByRankInBothForms) {
  for (bool array_form : {false, true}) {
    auto tok = load(base(kDashMerges, array_form));
    EXPECT_EQ(tok->encode("abc"), ids(*tok, {"abc"}));
    // "a-b": a- (rank 0) wins over -b (rank 1).
    EXPECT_EQ(tok->encode("a-b"), ids(*tok, {"a-", "b"}));
    EXPECT_EQ(tok->encode("b-b"), ids(*tok, {"b", "-b"}));  // -b (1) before b- (2)
    EXPECT_EQ(tok->decode(tok->encode("a-b c")), "a-b c");
    EXPECT_EQ(tok->vocab_size(), 256 + 7);
  }
}

TEST_F(Synthetic, SplitBehaviours) {
  const json dash = {{"String", "-"}};
  auto with = [&](const std::string& behavior, bool invert = false) {
    json doc = base(kDashMerges, false);
    add_split(doc, dash, behavior, invert);
    return load(doc);
  };
  auto isolated = with("Isolated");
  EXPECT_EQ(isolated->encode("a-b-c"), ids(*isolated, {"a", "-", "b", "-", "c"}));
  auto removed = with("Removed");
  EXPECT_EQ(removed->encode("a-b-c"), ids(*removed, {"a", "b", "c"}));
  auto previous = with("MergedWithPrevious");
  EXPECT_EQ(previous->encode("a-b-c"), ids(*previous, {"a-", "b-", "c"}));
  auto next = with("MergedWithNext");
  EXPECT_EQ(next->encode("a-b-c"), ids(*next, {"a", "-b", "-c"}));
  auto contiguous = with("Contiguous");
  EXPECT_EQ(contiguous->encode("a--b"), ids(*contiguous, {"a", "--", "b"}));
  EXPECT_EQ(isolated->encode("a--b"), ids(*isolated, {"a", "-", "-", "b"}));
  auto inverted = with("Removed", true);  // removes what does NOT match
  EXPECT_EQ(inverted->encode("a-b-c"), ids(*inverted, {"-", "-"}));
}

TEST_F(Synthetic, RegexSplitWithLookahead) {
  json doc = base({{"a", "b"}, {" ", "a"}}, false);
  add_split(doc, {{"Regex", "\\s+(?!\\S)|\\s+|[a-z]+"}}, "Isolated");
  auto tok = load(doc);
  // Two spaces before a word: \s+(?!\S) backtracks to the first space only;
  // the last one is then matched by the plain \s+ alternative on its own.
  EXPECT_EQ(tok->encode("ab  ab"), ids(*tok, {"ab", " ", " ", "ab"}));
}

TEST_F(Synthetic, OnigurumaUnicodeEscapeIsTranslated) {
  json doc = base({{"a", "b"}}, false);
  add_split(doc, {{"Regex", "[\\u4e00-\\u9fa5]+"}}, "Isolated");
  auto tok = load(doc);
  // "ab" would be one token; a CJK character between a and b splits them.
  EXPECT_EQ(tok->encode("a中b").size(), 1u + 3u + 1u);
  EXPECT_EQ(tok->encode("ab"), ids(*tok, {"ab"}));
}

TEST_F(Synthetic, ByteLevelRegexAndPrefixSpace) {
  json doc = base({{"a", "b"}, {" ", "ab"}}, false);
  doc["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  auto tok = load(doc);
  EXPECT_EQ(tok->encode("ab ab"), ids(*tok, {" ab", " ab"}));
  EXPECT_EQ(tok->encode("ab's"), ids(*tok, {" ab", "'", "s"}));
}

TEST_F(Synthetic, NormalizerAndNormalizedAddedTokens) {
  json doc = base({{"a", "b"}, {"ab", "c"}}, false);
  doc["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers", {{{"type", "Replace"}, {"pattern", {{"String", "x"}}}, {"content", "a"}}}}};
  doc["added_tokens"] = {{{"id", 258},
                          {"content", "<nx>"},
                          {"special", false},
                          {"normalized", true},
                          {"lstrip", false},
                          {"rstrip", false},
                          {"single_word", false}},
                         {{"id", 259},
                          {"content", "<rx>"},
                          {"special", true},
                          {"normalized", false},
                          {"lstrip", false},
                          {"rstrip", false},
                          {"single_word", false}}};
  auto tok = load(doc);
  EXPECT_EQ(tok->encode("xbc"), ids(*tok, {"abc"}));
  // The normalized token's content is normalized too ("<na>"), and matched on
  // normalized text; the raw token is matched before normalization only.
  EXPECT_EQ(tok->encode("<nx>"), std::vector<int32_t>{258});
  EXPECT_EQ(tok->encode("<na>"), std::vector<int32_t>{258});
  EXPECT_EQ(tok->encode("<rx>"), std::vector<int32_t>{259});
  EXPECT_EQ(tok->encode("<ra>"), ids(*tok, {"<", "r", "a", ">"}));
  // Hugging Face decodes a normalized token as its normalized content.
  EXPECT_EQ(tok->decode(std::vector<int32_t>{259, 258}), "<rx><na>");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{259, 258}, true), "<na>");
  EXPECT_EQ(tok->vocab_size(), 260);
  EXPECT_FALSE(tok->is_valid_id(260));                         // past the end
  EXPECT_EQ(tok->decode(std::vector<int32_t>{260, 97}), "a");  // skipped, as HF does
}

TEST_F(Synthetic, AddedTokenStripAndSingleWordFlags) {
  json doc = base({}, false);
  auto added = [](int id, const char* content, bool lstrip, bool rstrip, bool single_word) {
    return json{{"id", id},
                {"content", content},
                {"special", true},
                {"normalized", false},
                {"lstrip", lstrip},
                {"rstrip", rstrip},
                {"single_word", single_word}};
  };
  doc["added_tokens"] = {added(256, "<l>", true, false, false),
                         added(257, "<r>", false, true, false),
                         added(258, "[w]", false, false, true)};
  auto tok = load(doc);
  EXPECT_EQ(tok->encode("x  <l>y"), (std::vector<int32_t>{'x', 256, 'y'}));
  EXPECT_EQ(tok->encode("x<r> \t y"), (std::vector<int32_t>{'x', 257, 'y'}));
  EXPECT_EQ(tok->encode("a [w] b"), (std::vector<int32_t>{'a', ' ', 258, ' ', 'b'}));
  EXPECT_EQ(tok->encode("a[w]"), (std::vector<int32_t>{'a', '[', 'w', ']'}));
  EXPECT_EQ(tok->encode("[w]_"), (std::vector<int32_t>{'[', 'w', ']', '_'}));
}

// Hugging Face assigns added-token ids itself (its output on such a file was
// checked with tokenizers 0.23.2): the stored ids only agree for files it wrote.
TEST_F(Synthetic, AddedTokenIdsAreAssignedAsHuggingFaceDoes) {
  json doc = base({}, false);
  doc["model"]["vocab"]["<x>"] = 300;  // ids 256..299 are holes; 257 entries
  auto special = [](int id, const char* content) {
    return json{
        {"id", id},        {"content", content}, {"special", true},     {"normalized", false},
        {"lstrip", false}, {"rstrip", false},    {"single_word", false}};
  };
  doc["added_tokens"] = {special(301, "<x>"), special(400, "<y>"), special(7, "<z>")};
  auto tok = load(doc);
  EXPECT_EQ(tok->encode("a<x>"), (std::vector<int32_t>{'a', 300}));  // the vocab id
  // The others count on from the number of vocab entries (257).
  EXPECT_EQ(tok->encode("<y><z>"), (std::vector<int32_t>{257, 258}));
  EXPECT_EQ(tok->vocab_size(), 301);
  EXPECT_FALSE(tok->is_valid_id(256));
  EXPECT_FALSE(tok->is_valid_id(299));
  EXPECT_TRUE(tok->is_special(300));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{300, 97}), "<x>a");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{300, 97}, true), "a");
}

// A content defined twice keeps its first id and takes the later flags; the
// skip decision looks at the decoded string (checked with tokenizers 0.23.2).
TEST_F(Synthetic, RepeatedAddedTokenContent) {
  json doc = base({}, false);
  doc["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", "x"}}}, {"content", "a"}};
  auto token = [](int id, const char* content, bool special, bool normalized) {
    return json{
        {"id", id},        {"content", content}, {"special", special},  {"normalized", normalized},
        {"lstrip", false}, {"rstrip", false},    {"single_word", false}};
  };
  doc["added_tokens"] = {token(256, "<nx>", false, true), token(257, "<rx>", true, false),
                         token(258, "<x>", false, false), token(259, "<x>", true, true)};
  auto tok = load(doc);
  EXPECT_EQ(tok->encode("<x>"), std::vector<int32_t>{258});
  EXPECT_EQ(tok->encode("<a>"), std::vector<int32_t>{258});  // now normalized: "<a>"
  EXPECT_EQ(tok->vocab_size(), 259);
  EXPECT_EQ(tok->decode(std::vector<int32_t>{256, 257}), "<na><rx>");
  // 258 decodes to "<a>", which is not a special token's content.
  EXPECT_EQ(tok->decode(std::vector<int32_t>{256, 257, 258}, true), "<na><a>");
}

TEST_F(Synthetic, BosEosFromConfigOrWellKnownNames) {
  json doc = base({}, false);
  doc["added_tokens"] = {{{"id", 256}, {"content", "<s>"}, {"special", true}},
                         {{"id", 257}, {"content", "</s>"}, {"special", true}}};
  auto guessed = load(doc);
  EXPECT_EQ(guessed->bos_id(), 256);
  EXPECT_EQ(guessed->eos_id(), 257);
  const json config = {{"bos_token", "</s>"}, {"eos_token", {{"content", "<s>"}}}};
  auto configured = load(doc, &config);
  EXPECT_EQ(configured->bos_id(), 257);
  EXPECT_EQ(configured->eos_id(), 256);
  auto plain = load(base({}, false));
  EXPECT_EQ(plain->bos_id(), -1);
}

TEST_F(Synthetic, RejectsUnsupportedComponentsByName) {
  auto expect_error = [&](const json& doc, const std::string& needle) {
    try {
      load(doc);
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json doc = base({}, false);
  doc["normalizer"] = {{"type", "NFKC"}};
  expect_error(doc, "NFKC");
  doc = base({}, false);
  doc["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(doc, "Whitespace");
  doc = base({}, false);
  doc["decoder"] = {{"type", "WordPiece"}};
  expect_error(doc, "WordPiece");
  doc = base({}, false);
  doc["model"]["type"] = "Unigram";
  expect_error(doc, "Unigram");
  doc = base({{"a", "b"}}, false);
  doc["model"]["merges"] = {"a q"};
  expect_error(doc, "missing from the vocab");
  doc = base({}, false);
  doc["pre_tokenizer"] = {{"type", "Split"},
                          {"pattern", {{"Regex", "(unclosed"}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
  expect_error(doc, "(unclosed");
  EXPECT_THROW(Tokenizer::load("/nonexistent/dsv4/tokenizer"), Error);
}

}  // namespace
}  // namespace dsv4
