// Sampler statistics against exact probabilities, nucleus mass, the penalty
// formula, seed determinism and log-probabilities.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "engine/sampling.h"
#include "util/error.h"

namespace dsv4::engine {
namespace {

// Exact softmax in long double, written independently of the implementation.
std::vector<long double> exact_softmax(const std::vector<float>& logits, double temperature) {
  long double m = -INFINITY;
  for (float x : logits) m = std::max<long double>(m, x);
  std::vector<long double> p(logits.size());
  long double s = 0;
  for (size_t i = 0; i < logits.size(); ++i) s += p[i] = std::exp((logits[i] - m) / temperature);
  for (auto& x : p) x /= s;
  return p;
}

std::vector<float> random_logits(int n, uint32_t seed, float scale = 3.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

TEST(NucleusDistribution, FullMassIsTheTemperedSoftmax) {
  const auto logits = random_logits(50, 1);
  for (float t : {1.0f, 0.5f, 1.7f}) {
    auto exact = exact_softmax(logits, t);
    auto dist = nucleus_distribution(logits, t, 1.0f);
    ASSERT_EQ(dist.size(), logits.size());
    for (const auto& [id, p] : dist) EXPECT_NEAR(p, double(exact[id]), 1e-12) << "t=" << t;
    for (size_t i = 1; i < dist.size(); ++i) EXPECT_GE(dist[i - 1].second, dist[i].second);
  }
}

TEST(NucleusDistribution, KeepsSmallestSetReachingTopP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (as logits of their logs, shuffled).
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f),
                                     std::log(0.3f)};
  auto d = nucleus_distribution(logits, 1.0f, 0.79f);
  ASSERT_EQ(d.size(), 2u);  // 0.5 + 0.3 reaches 0.79
  EXPECT_EQ(d[0].first, 1);
  EXPECT_EQ(d[1].first, 3);
  EXPECT_NEAR(d[0].second, 0.5 / 0.8, 1e-6);
  EXPECT_NEAR(d[1].second, 0.3 / 0.8, 1e-6);
  d = nucleus_distribution(logits, 1.0f, 0.81f);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_NEAR(d[2].second, 0.15 / 0.95, 1e-6);
  d = nucleus_distribution(logits, 1.0f, 0.01f);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].first, 1);
}

TEST(NucleusDistribution, LargeVocabularyBeyondThePartialSort) {
  // A flat distribution over 5000 tokens: top_p 0.9 needs 4500 of them, more
  // than the first partial sort covers.
  std::vector<float> logits(5000, 0.0f);
  auto d = nucleus_distribution(logits, 1.0f, 0.9f);
  EXPECT_NEAR(double(d.size()), 4500.0, 1.0);
  double mass = 0;
  for (auto& [id, p] : d) mass += p;
  EXPECT_NEAR(mass, 1.0, 1e-9);
}

// Draws `n` tokens and checks every frequency is within 5 sigma of `expected`.
void expect_frequencies(const SamplingParams& params, const std::vector<float>& logits,
                        const std::map<int32_t, double>& expected, int n) {
  Sampler s(params);
  std::map<int32_t, int> hits;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    ++hits[s.sample(l).token];
  }
  for (const auto& [id, count] : hits)
    EXPECT_TRUE(expected.count(id))
        << "token " << id << " drawn " << count << " times but has probability 0";
  for (const auto& [id, p] : expected) {
    const double sigma = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(hits[id], n * p, 5 * sigma + 1) << "token " << id;
  }
}

TEST(Sampler, FrequenciesMatchExactProbabilities) {
  const auto logits = random_logits(12, 7, 1.0f);
  const auto exact = exact_softmax(logits, 1.0);
  std::map<int32_t, double> expected;
  for (size_t i = 0; i < exact.size(); ++i) expected[i] = double(exact[i]);
  SamplingParams p;
  p.seed = 123;
  expect_frequencies(p, logits, expected, 200000);
}

TEST(Sampler, TemperatureSharpensTheDistribution) {
  const auto logits = random_logits(8, 9, 1.0f);
  const auto exact = exact_softmax(logits, 0.5);
  std::map<int32_t, double> expected;
  for (size_t i = 0; i < exact.size(); ++i) expected[i] = double(exact[i]);
  SamplingParams p;
  p.temperature = 0.5f;
  p.seed = 5;
  expect_frequencies(p, logits, expected, 100000);
}

TEST(Sampler, TopPFrequenciesStayInsideTheNucleus) {
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f),
                                     std::log(0.3f)};
  SamplingParams p;
  p.top_p = 0.79f;
  p.seed = 99;
  expect_frequencies(p, logits, {{1, 0.625}, {3, 0.375}}, 100000);
}

TEST(Sampler, GreedyPicksArgmax) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p);
  for (uint32_t seed = 0; seed < 20; ++seed) {
    auto logits = random_logits(100, seed);
    const int32_t want = std::max_element(logits.begin(), logits.end()) - logits.begin();
    EXPECT_EQ(s.sample(logits).token, want);
  }
}

TEST(Sampler, LogitBiasShiftsTheDistribution) {
  // Bias +ln(4) on token 2 of three equal logits: exp weights 1, 1, 4 ->
  // 1/6, 1/6, 4/6. Token 3 masked (-inf) stays masked whatever its bias; ids
  // outside the vocabulary are ignored.
  const std::vector<float> logits = {0.0f, 0.0f, 0.0f, -INFINITY};
  SamplingParams p;
  p.seed = 17;
  p.logit_bias = {{2, std::log(4.0f)}, {3, 100.0f}, {4, 100.0f}, {-1, 5.0f}};
  expect_frequencies(p, logits, {{0, 1.0 / 6}, {1, 1.0 / 6}, {2, 4.0 / 6}}, 100000);
}

TEST(Sampler, LogitBiasDoesNotChangeReportedLogprobs) {
  const auto logits = random_logits(50, 3);
  SamplingParams p;
  p.temperature = 0.0f;
  p.logprobs = true;
  p.logit_bias = {{7, 100.0f}};
  Sampler s(p);
  auto work = logits;
  const SampledToken t = s.sample(work);
  EXPECT_EQ(t.token, 7);
  const auto exact = exact_softmax(logits, 1.0);
  EXPECT_NEAR(t.logprob, std::log(double(exact[7])), 1e-4);
}

TEST(Penalties, OpenAIFormula) {
  std::vector<float> logits = {1.0f, 2.0f, 3.0f, 4.0f};
  apply_penalties(logits, {{1, 1}, {2, 3}}, 0.5f, 0.25f);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);
  EXPECT_FLOAT_EQ(logits[1], 2.0f - 1 * 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[2], 3.0f - 3 * 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[3], 4.0f);
  std::vector<float> neg = {0.0f, 0.0f};
  apply_penalties(neg, {{0, 2}}, -1.0f, -0.5f);  // negative penalties encourage repetition
  EXPECT_FLOAT_EQ(neg[0], 2.5f);
}

TEST(Sampler, PenaltiesCountItsOwnTokens) {
  // Greedy over constant logits {1.0, 0.9}: with frequency_penalty 0.2 the
  // sampler alternates 0,1,0,1 (after each pick that token drops by 0.2).
  SamplingParams p;
  p.temperature = 0.0f;
  p.frequency_penalty = 0.2f;
  Sampler s(p);
  std::vector<int32_t> got;
  for (int i = 0; i < 4; ++i) {
    std::vector<float> l = {1.0f, 0.9f};
    got.push_back(s.sample(l).token);
  }
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0, 1}));
  // presence_penalty only counts once: 1.0 - 0.2 = 0.8 < 0.9, then 0.8 vs 0.7.
  SamplingParams q;
  q.temperature = 0.0f;
  q.presence_penalty = 0.2f;
  Sampler s2(q);
  got.clear();
  for (int i = 0; i < 4; ++i) {
    std::vector<float> l = {1.0f, 0.9f};
    got.push_back(s2.sample(l).token);
  }
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0, 0}));
}

std::vector<int32_t> draw(SamplingParams p, int n) {
  Sampler s(p);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    auto l = random_logits(1000, i, 1.0f);
    out.push_back(s.sample(l).token);
  }
  return out;
}

TEST(Sampler, SameSeedSameTokens) {
  SamplingParams p;
  p.seed = 42;
  p.top_p = 0.9f;
  p.frequency_penalty = 0.1f;
  EXPECT_EQ(draw(p, 200), draw(p, 200));
  SamplingParams q = p;
  q.seed = 43;
  EXPECT_NE(draw(p, 200), draw(q, 200));
}

TEST(Sampler, LogprobsDescribeTheRawDistribution) {
  const auto logits = random_logits(30, 3);
  const auto exact = exact_softmax(logits, 1.0);
  SamplingParams p;
  p.temperature = 0.3f;  // must not change the reported numbers
  p.presence_penalty = 1.0f;
  p.logprobs = true;
  p.top_logprobs = 5;
  p.seed = 1;
  Sampler s(p);
  std::vector<float> l = logits;
  SampledToken t = s.sample(l);
  EXPECT_NEAR(t.logprob, std::log(double(exact[t.token])), 1e-5);
  ASSERT_EQ(t.top.size(), 5u);
  std::vector<int> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return exact[a] > exact[b]; });
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(t.top[i].token, order[i]);
    EXPECT_NEAR(t.top[i].logprob, std::log(double(exact[order[i]])), 1e-5);
  }
}

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p.top_p = 1.0f;
  p.temperature = -1.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p.temperature = 1.0f;
  p.top_logprobs = 21;
  EXPECT_THROW(Sampler{p}, Error);
}

TEST(Sampler, AllMaskedIsAnError) {
  Sampler s(SamplingParams{});
  std::vector<float> l(4, -INFINITY);
  EXPECT_THROW(s.sample(l), Error);
}

}  // namespace
}  // namespace dsv4::engine
