// Oniguruma → PCRE2 translation: the constructs whose meaning differs.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tokenizer/regex.h"
#include "util/error.h"

namespace dsv4 {
namespace {

// The matched substrings of `subject`.
std::vector<std::string> matches(const std::string& pattern, const std::string& subject) {
  Regex re(pattern, "test");
  std::vector<Match> m;
  re.find_all(subject, m);
  std::vector<std::string> out;
  for (const Match& x : m) out.push_back(subject.substr(x.start, x.end - x.start));
  return out;
}

using V = std::vector<std::string>;

TEST(OnigurumaRegex, WhitespaceIsUnicodeWhiteSpace) {
  // U+0085 (NEL) is White_Space; PCRE2's own \s lacks it.
  EXPECT_EQ(matches("\\s+", "a\u0085\u00a0\u3000b"), V({"\u0085\u00a0\u3000"}));
  EXPECT_EQ(matches("\\S+", "a\u0085b"), V({"a", "b"}));
  EXPECT_EQ(matches("[\\s,]+", "a, \u0085b"), V({", \u0085"}));
  EXPECT_EQ(matches("\\s", "\u200b"), V());  // zero-width space is not White_Space
}

TEST(OnigurumaRegex, PropertiesIncludeNewerUnicode) {
  // U+13BDF (Egyptian Hieroglyphs Extended-A, Unicode 16) and U+31350 (CJK
  // Extension H, Unicode 15) are letters for Hugging Face's Oniguruma.
  EXPECT_EQ(matches("\\p{L}+", "x\U00013BDF\U00031350y"), V({"x\U00013BDF\U00031350y"}));
  EXPECT_EQ(matches("[^\\p{L}]+", "1\U00013BDF2"), V({"1", "2"}));
  EXPECT_EQ(matches("\\P{L}+", "1\U00013BDF2"), V({"1", "2"}));
  EXPECT_EQ(matches("\\p{^L}+", "1\U00013BDF2"), V({"1", "2"}));
  EXPECT_EQ(matches("\\pL+", "ab\U00013BDF"), V({"ab\U00013BDF"}));
  EXPECT_EQ(matches("\\d+", "1\U00016130"), V({"1\U00016130"}));  // Gurung Khema digit zero
  EXPECT_EQ(matches("\\w+", "a_\U00013BDF-"), V({"a_\U00013BDF"}));
  EXPECT_EQ(matches("\\p{Han}+", "x中文y"), V({"中文"}));  // scripts pass through
}

TEST(OnigurumaRegex, EscapesAndClasses) {
  EXPECT_EQ(matches("[\\u4e00-\\u9fa5]+", "a中文b"), V({"中文"}));
  EXPECT_EQ(matches("\\h+", "xx0aFgh"), V({"0aF"}));  // Oniguruma \h: hex digit
  EXPECT_EQ(matches("[]a]+", "]a]b"), V({"]a]"}));
  EXPECT_EQ(matches("[[:digit:]]+", "ab12"), V({"12"}));
  EXPECT_EQ(matches(regex_escape("a.b*(c)"), "xa.b*(c)a.bb"), V({"a.b*(c)"}));
  EXPECT_THROW(matches("[a-z&&[^c]]", "abc"), Error);
  EXPECT_THROW(matches("\\u12", "x"), Error);
  EXPECT_THROW(matches("(", "x"), Error);
}

TEST(OnigurumaRegex, EmptyMatchesFollowTheOnigCrate) {
  // An empty match right after a match is skipped; elsewhere it is reported.
  EXPECT_EQ(matches("a*", "baab"), V({"", "aa", ""}));
  EXPECT_EQ(matches("x*", "ab"), V({"", "", ""}));
}

}  // namespace
}  // namespace dsv4
