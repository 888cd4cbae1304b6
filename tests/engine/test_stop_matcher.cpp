// Stop strings: not returned, found across fragment boundaries, possible
// prefixes held back until resolved.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/stop_matcher.h"

namespace dsv4::engine {
namespace {

TEST(StopMatcher, NoStopsPassesThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.push("abc").text, "abc");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, StopSplitAcrossFragments) {
  StopMatcher m({"END"});
  auto r = m.push("hello E");
  EXPECT_EQ(r.text, "hello ");  // "E" might start "END": held back
  EXPECT_FALSE(r.stopped);
  r = m.push("N");
  EXPECT_EQ(r.text, "");
  r = m.push("D and more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
  EXPECT_EQ(r.matched, "END");
  EXPECT_EQ(m.push("x").text, "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, FalseStartIsReleased) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.push("EN").text, "");
  EXPECT_EQ(m.push("Z").text, "ENZ");
  EXPECT_EQ(m.push("EN").text, "");
  EXPECT_EQ(m.flush(), "EN");  // generation ended: the held prefix is real text
}

TEST(StopMatcher, FirstCompletedStopWins) {
  StopMatcher m({"world", "lo w"});
  auto r = m.push("hello world");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "hel");
  EXPECT_EQ(r.matched, "lo w");
  // "abc" starts first but "b" completes first: streaming token by token,
  // "b" is seen before "c" arrives, so it must win in one push too.
  StopMatcher m2({"abc", "b"});
  r = m2.push("xabc");
  EXPECT_EQ(r.text, "xa");
  EXPECT_EQ(r.matched, "b");
}

TEST(StopMatcher, OverlappingPrefix) {
  StopMatcher m({"aab"});
  std::string out;
  for (char c : std::string("aaab")) {
    auto r = m.push(std::string(1, c));
    out += r.text;
    if (r.stopped) break;
  }
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "a");
}

TEST(StopMatcher, MultibyteStop) {
  StopMatcher m({"好的"});
  EXPECT_EQ(m.push("你好").text, "你");
  auto r = m.push("的呀");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
}

// Randomised: any split of the text gives the same output as cutting the
// whole text before the stop occurrence that ends first, and no emitted
// prefix ever contains text that a later fragment turns into a stop.
TEST(StopMatcher, AnySplitEqualsWholeText) {
  std::mt19937 g(17);
  auto rand_str = [&](int lo, int hi) {
    std::string s(std::uniform_int_distribution<int>(lo, hi)(g), 'a');
    for (auto& c : s) c = "abc"[std::uniform_int_distribution<int>(0, 2)(g)];
    return s;
  };
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<std::string> stops = {rand_str(1, 4), rand_str(2, 5)};
    std::string text = rand_str(0, 30);
    size_t cut = std::string::npos, first_end = std::string::npos;
    for (const auto& s : stops) {
      // The first occurrence of s is also the one that ends first.
      const size_t pos = text.find(s);
      if (pos == std::string::npos) continue;
      if (pos + s.size() < first_end || (pos + s.size() == first_end && pos < cut)) {
        first_end = pos + s.size();
        cut = pos;
      }
    }
    const std::string want = text.substr(0, cut);

    StopMatcher m(stops);
    std::string out;
    size_t pos = 0;
    bool stopped = false;
    while (pos < text.size() && !stopped) {
      size_t len = std::uniform_int_distribution<size_t>(1, 4)(g);
      auto r = m.push(text.substr(pos, len));
      pos += len;
      out += r.text;
      stopped = r.stopped;
      ASSERT_EQ(want.compare(0, out.size(), out), 0) << "emitted past a stop: " << text;
    }
    if (!stopped) out += m.flush();
    EXPECT_EQ(out, want) << "text=" << text << " stops=" << stops[0] << "," << stops[1];
    EXPECT_EQ(stopped, cut != std::string::npos);
  }
}

}  // namespace
}  // namespace dsv4::engine
