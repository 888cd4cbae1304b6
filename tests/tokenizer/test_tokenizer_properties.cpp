// Properties of the V4 tokenizer that must hold for any input: lossless round
// trips for valid UTF-8 (including special-token look-alikes), streaming
// decode == one-shot decode, thread safety, and the lossy UTF-8 rule.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace dsv4 {
namespace {

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";

std::shared_ptr<const Tokenizer> v4() {
  static std::shared_ptr<const Tokenizer> tok = Tokenizer::load(kModelDir);
  return tok;
}

// Random valid UTF-8 built from fragments that stress the pre-tokenizer and
// the added-token matcher, plus random code points from every plane.
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> fragments = {"a",
                                                     "Z",
                                                     "hello",
                                                     " world",
                                                     "  ",
                                                     "   ",
                                                     "\t",
                                                     "\n",
                                                     "\r\n",
                                                     "\n\n",
                                                     " \n ",
                                                     "0",
                                                     "12345",
                                                     "3.14",
                                                     "٣",
                                                     "、",
                                                     "你好",
                                                     "推理",
                                                     "ひらがな",
                                                     "カタカナ",
                                                     "한국어",
                                                     "שלום",
                                                     "مرحبا",
                                                     "😀",
                                                     "👍🏽",
                                                     "e\u0301",
                                                     "é",
                                                     "\u0085",
                                                     "\u00a0",
                                                     "\u3000",
                                                     "\u2028",
                                                     "\u200b",
                                                     "\ufeff",
                                                     "\ufffd",
                                                     std::string(1, '\0'),
                                                     "\x01",
                                                     "\x7f",
                                                     "'s",
                                                     "'ll",
                                                     "!",
                                                     "?!",
                                                     "...",
                                                     "(",
                                                     ")",
                                                     "{\"k\": 1}",
                                                     "<",
                                                     ">",
                                                     "|",
                                                     "｜",
                                                     "▁",
                                                     "<｜User｜>",
                                                     "<｜Assistant｜>",
                                                     "<think>",
                                                     "</think>",
                                                     "<｜end▁of▁sentence｜>",
                                                     "<｜begin▁of▁sentence｜>",
                                                     "｜DSML｜",
                                                     "<｜/table>｜",
                                                     "<|place_holder_mm_span_0021|>",
                                                     "<｜User",
                                                     "User｜>",
                                                     "<thin",
                                                     "think>",
                                                     "｜DSM",
                                                     "<｜end▁of▁sen",
                                                     "<|place_holder_mm_span_00",
                                                     "<|EOT|>",
                                                     "<|EOT|",
                                                     "<<think>>",
                                                     "<｜｜>"};
  std::uniform_int_distribution<int> count(0, 12), kind(0, 9), pick(0, fragments.size() - 1);
  std::string s;
  for (int n = count(rng); n > 0; --n) {
    if (kind(rng) < 8) {
      s += fragments[pick(rng)];
      continue;
    }
    // A random scalar value (no surrogates), biased towards small ones.
    static const char32_t limits[] = {0x80, 0x800, 0x10000, 0x110000};
    std::uniform_int_distribution<int> band(0, 3);
    std::uniform_int_distribution<uint32_t> cp_dist(0, limits[band(rng)] - 1);
    char32_t cp;
    do cp = cp_dist(rng);
    while (cp >= 0xD800 && cp <= 0xDFFF);
    utf8::append(s, cp);
  }
  return s;
}

TEST(TokenizerProperties, RoundTripRandomText) {
  auto tok = v4();
  std::mt19937 rng(1234);
  for (int i = 0; i < 3000; ++i) {
    const std::string text = random_text(rng);
    const auto ids = tok->encode(text);
    ASSERT_EQ(tok->decode(ids), text) << "case " << i;
    for (int32_t id : ids) ASSERT_TRUE(tok->is_valid_id(id));
    const auto plain = tok->encode_without_added_tokens(text);
    ASSERT_EQ(tok->decode(plain), text) << "case " << i;
    // Without added-token matching no special token can appear: the V4 merges
    // never build a special token's string.
    for (int32_t id : plain) ASSERT_FALSE(tok->is_special(id)) << "case " << i;
  }
}

TEST(TokenizerProperties, SpecialTokenStringsBecomeSingleTokens) {
  auto tok = v4();
  for (const char* s : {"<｜User｜>", "<think>", "｜DSML｜", "<｜end▁of▁sentence｜>"}) {
    const auto id = tok->token_id(s);
    ASSERT_TRUE(id.has_value()) << s;
    EXPECT_EQ(tok->encode(s), std::vector<int32_t>{*id});
    EXPECT_EQ(tok->encode(std::string("x ") + s + " y").size(), 4u)  // x, Ġ, token, Ġy
        << s;
    EXPECT_GT(tok->encode_without_added_tokens(s).size(), 1u) << s;
  }
}

TEST(TokenizerProperties, StreamingEqualsOneShotDecode) {
  auto tok = v4();
  std::mt19937 rng(99);
  // Byte tokens (partial UTF-8), ordinary tokens, added tokens and ids that
  // are not in the vocabulary, in random order.
  std::vector<int32_t> byte_ids;
  for (int b = 0; b < 256; ++b) {
    for (int32_t id = 0; id < 1000 && byte_ids.size() <= static_cast<size_t>(b); ++id)
      if (tok->token_bytes(id) == std::string(1, static_cast<char>(b))) byte_ids.push_back(id);
  }
  ASSERT_EQ(byte_ids.size(), 256u);
  std::uniform_int_distribution<int> kind(0, 9), len(0, 40);
  std::uniform_int_distribution<int32_t> any(-5, tok->vocab_size() + 5);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int32_t> added(128000, tok->vocab_size() - 1);
  for (int i = 0; i < 2000; ++i) {
    std::vector<int32_t> ids;
    for (int n = len(rng); n > 0; --n) {
      const int k = kind(rng);
      ids.push_back(k < 5 ? byte_ids[byte(rng)] : k < 8 ? any(rng) : added(rng));
    }
    for (bool skip : {false, true}) {
      StreamingDetokenizer stream(tok, skip);
      std::string text;
      for (int32_t id : ids) {
        const std::string piece = stream.push(id);
        // Every emitted piece is complete UTF-8 on its own.
        ASSERT_EQ(utf8::find_invalid(piece), std::string::npos);
        text += piece;
      }
      text += stream.flush();
      ASSERT_EQ(text, tok->decode(ids, skip)) << "case " << i << " skip " << skip;
    }
  }
}

TEST(TokenizerProperties, StreamingHoldsBackIncompleteCharacters) {
  auto tok = v4();
  const auto ids = tok->encode("😀");  // one 4-byte character, several byte tokens
  ASSERT_GT(ids.size(), 1u);
  StreamingDetokenizer stream(tok);
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(stream.push(ids[i]), "");
  EXPECT_EQ(stream.push(ids.back()), "😀");
  EXPECT_EQ(stream.flush(), "");
  // A truncated character is rendered as one U+FFFD at the end.
  StreamingDetokenizer cut(tok);
  std::string text;
  for (size_t i = 0; i + 1 < ids.size(); ++i) text += cut.push(ids[i]);
  EXPECT_EQ(text + cut.flush(), "\ufffd");
}

TEST(TokenizerProperties, ConcurrentEncodingIsConsistent) {
  auto tok = v4();
  std::mt19937 rng(7);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back(random_text(rng));
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok->encode(t));
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep)
        for (size_t i = 0; i < texts.size(); ++i)
          if (tok->encode(texts[(i + t * 37) % texts.size()]) !=
              expected[(i + t * 37) % texts.size()])
            ++failures[t];
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

// Expected strings from Python's bytes.decode("utf-8", "replace"), which
// follows the same maximal-subpart rule as Rust's from_utf8_lossy.
TEST(Utf8Lossy, MaximalSubparts) {
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x98"), "\ufffd");
  EXPECT_EQ(utf8_lossy("\xe0\x80"), "\ufffd\ufffd");
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80"), "\ufffd\ufffd\ufffd");
  EXPECT_EQ(utf8_lossy("a\xff"
                       "b"),
            "a\ufffd"
            "b");
  EXPECT_EQ(utf8_lossy("\xf4\x90\x80\x80"), "\ufffd\ufffd\ufffd\ufffd");
  EXPECT_EQ(utf8_lossy("\xc3"), "\ufffd");
  EXPECT_EQ(utf8_lossy("\xe2\x82\xac\xe2\x82"), "\u20ac\ufffd");
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x98\x80\x80"), "\U0001F600\ufffd");
  EXPECT_EQ(utf8_lossy(""), "");
}

}  // namespace
}  // namespace dsv4
