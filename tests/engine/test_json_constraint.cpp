// JSON-constrained decoding: the recognizer against a table of documents,
// and sampling under the constraint from random logits over a toy vocabulary
// always yields JSON that an independent parser (nlohmann) accepts.
// g++ 12 false -Wrestrict in std::string operator+ (GCC bug 105651).
#pragma GCC diagnostic ignored "-Wrestrict"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "engine/json_constraint.h"
#include "engine/sampling.h"

namespace dsv4::engine {
namespace {

bool accepts_prefix(const std::string& s) {
  JsonMachine m;
  return m.feed(s);
}
bool accepts_whole(const std::string& s) {
  JsonMachine m;
  return m.feed(s) && m.complete();
}

TEST(JsonMachine, AcceptsValidObjects) {
  for (const char* doc :
       {R"({})", R"( { "a" : 1 } )", R"({"a":[1,2.5,-3e+2,0,0.0e1,true,false,null,"x\"\\\u00e9"]})",
        R"({"nested":{"b":{"c":[[],[{}]]}},"s":"é ü 中"})", "{\"a\":-0.5E-3}"}) {
    EXPECT_TRUE(accepts_whole(doc)) << doc;
  }
}

TEST(JsonMachine, RejectsInvalidText) {
  for (const char* doc : {"[1]", "\"s\"", "1", "{a:1}", "{\"a\" 1}", "{\"a\":01}", "{\"a\":1,}",
                          "{\"a\":tru}", "{\"a\":1}}", "{\"a\":\"\x01\"}", "{\"a\":\"\\x\"}",
                          "{\"a\":1.}", "{\"a\":-}", "{\"a\":1e}", "{\"a\":[1 2]}", "{} x"}) {
    EXPECT_FALSE(accepts_whole(doc)) << doc;
  }
  EXPECT_TRUE(accepts_prefix("{\"a\": [1, {\"b\": \"x"));  // a prefix, not complete
  EXPECT_FALSE(accepts_whole("{\"a\": [1, {\"b\": \"x"));
}

TEST(JsonMachine, CapsWhitespaceRuns) {
  EXPECT_TRUE(accepts_prefix("{" + std::string(8, ' ')));
  EXPECT_FALSE(accepts_prefix("{" + std::string(9, ' ')));
  EXPECT_TRUE(accepts_prefix("{\"" + std::string(100, ' ')));  // inside strings: any
  EXPECT_TRUE(accepts_whole("{}" + std::string(8, ' ')));
  EXPECT_FALSE(accepts_whole("{}" + std::string(9, ' ')));
}

TEST(JsonObjectConstraint, RandomSamplingAlwaysGivesValidJson) {
  const std::vector<std::string> vocab = {
      "<eos>",  "{",   "}",   "[",     "]",   ":",   ",",     "\"",      "\"a\"",
      "\"b\":", "1",   "0",   ".5",    "-",   "e3",  "true",  "fa",      "lse",
      "null",   " ",   "\n",  "x",     "y z", "\\n", "\\u00", "e9",      "<｜User｜>",
      "",       "{\"", "\":", "\",\"", "12",  "}}",  "]}",    "</think>"};
  auto table = std::make_shared<const std::vector<std::string>>(vocab);
  std::mt19937 g(3);
  int complete = 0;
  for (int run = 0; run < 300; ++run) {
    JsonObjectConstraint c(table, {0}, -1);
    SamplingParams p;
    p.seed = run;
    Sampler s(p);
    std::string out;
    bool ended = false;
    for (int step = 0; step < 400 && !ended; ++step) {
      std::vector<float> logits(vocab.size());
      std::normal_distribution<float> d(0.0f, 2.0f);
      for (auto& x : logits) x = d(g);
      logits[2] += 2.0f;  // make closing likely enough to finish
      logits[0] += 4.0f;
      c.mask(logits);
      const int32_t t = s.sample(logits).token;
      c.accept(t);
      if (t == 0)
        ended = true;
      else
        out += vocab[t];
      ASSERT_NE(vocab[t], "<｜User｜>");
      ASSERT_NE(vocab[t], "</think>");
      ASSERT_TRUE(accepts_prefix(out)) << out;
    }
    if (ended) {
      ++complete;
      try {
        EXPECT_TRUE(nlohmann::json::parse(out).is_object()) << out;
      } catch (const nlohmann::json::out_of_range& e) {
        // 406: a number beyond double range (e.g. 1e312) is valid JSON that
        // nlohmann declines to convert; anything else is a real failure.
        EXPECT_EQ(e.id, 406) << out << ": " << e.what();
      }
    }
  }
  EXPECT_GT(complete, 100);
}

TEST(JsonObjectConstraint, InactiveUntilTheStartToken) {
  auto table = std::make_shared<const std::vector<std::string>>(
      std::vector<std::string>{"<eos>", "{", "}", "hm", "</think>"});
  JsonObjectConstraint c(table, {0}, 4);
  std::vector<float> l(5, 0.0f);
  c.mask(l);
  for (float x : l) EXPECT_EQ(x, 0.0f);  // reasoning is free
  c.accept(3);
  c.accept(4);  // </think>: the answer starts, and must be JSON
  c.mask(l);
  EXPECT_EQ(l[1], 0.0f);
  EXPECT_EQ(l[3], -INFINITY);
  EXPECT_EQ(l[0], -INFINITY);  // no end before the object is closed
}

}  // namespace
}  // namespace dsv4::engine
