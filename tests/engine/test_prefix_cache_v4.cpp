// The prefix cache over the real V4 forward (a random-weight tiny synth
// checkpoint): a prompt continued from another prompt's snapshot gives the
// same logits, bit for bit, as its cold prefill, and a generation over a hit
// gives the same tokens. Also measures what snapshots the cache does NOT take
// would give (frame-dependent rounding): printed as a figure, loosely bounded.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "engine/generation.h"
#include "engine/prefix_cache.h"
#include "engine/v4_backend.h"
#include "fakes.h"
#include "model/model.h"
#include "model/synth.h"

namespace dsv4::engine {
namespace {

namespace fs = std::filesystem;

class PrefixCacheV4 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("dsv4-test-prefix-cache-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    SynthOptions o;
    o.like = "tiny";
    o.seed = 11;
    o.out = dir_.string();
    synth_checkpoint(o);
    lm_ = new V4LanguageModel(std::make_shared<const Model>(dir_.string()));
  }
  static void TearDownTestSuite() {
    delete lm_;
    lm_ = nullptr;
    fs::remove_all(dir_);
  }

  static std::vector<int32_t> random_tokens(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int32_t> d(0, lm_->vocab_size() - 1);
    std::vector<int32_t> v(n);
    for (auto& t : v) t = d(rng);
    return v;
  }

  // Logits after a cold whole-prompt prefill.
  static std::vector<float> cold(const std::vector<int32_t>& prompt) {
    auto seq = lm_->new_sequence();
    seq->set_prompt_length(static_cast<int64_t>(prompt.size()));
    std::vector<float> logits;
    seq->forward(prompt, &logits);
    return logits;
  }

  // Logits of `prompt` continued from `seq` (which holds its first tokens).
  static std::vector<float> continued(ModelSequence& seq, const std::vector<int32_t>& prompt) {
    seq.set_prompt_length(static_cast<int64_t>(prompt.size()));
    std::vector<float> logits;
    seq.forward(std::span<const int32_t>(prompt).subspan(seq.position()), &logits);
    return logits;
  }

  static PrefixCacheOptions options() {
    PrefixCacheOptions o;
    o.block_tokens = 16;
    o.interval_tokens = 32;
    o.budget_bytes = 1ull << 30;
    return o;
  }

  // Relative L2 distance and whether the argmax agrees.
  static void compare(const char* what, const std::vector<float>& a, const std::vector<float>& b,
                      double* rel, bool* top1) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
      den += double(b[i]) * b[i];
    }
    *rel = std::sqrt(num / den);
    *top1 = std::max_element(a.begin(), a.end()) - a.begin() ==
            std::max_element(b.begin(), b.end()) - b.begin();
    std::printf("[ figure ] %s: rel L2 %.3g, top-1 %s\n", what, *rel, *top1 ? "agrees" : "differs");
  }

  static fs::path dir_;
  static V4LanguageModel* lm_;
};

fs::path PrefixCacheV4::dir_;
V4LanguageModel* PrefixCacheV4::lm_ = nullptr;

TEST_F(PrefixCacheV4, HitReproducesColdPrefillBitForBit) {
  const Model& model = lm_->model();
  const int64_t window = model.config().window_size;
  ASSERT_GT(window, 0);
  ASSERT_EQ(16 % lm_->snapshot_granularity(), 0);
  // Both prompts at least a window long: one prefix class.
  const auto a = random_tokens(static_cast<size_t>(std::max<int64_t>(100, window + 5)), 1);
  auto b = a;
  b.resize(a.size() - 10);
  const auto tail = random_tokens(60, 2);
  b.insert(b.end(), tail.begin(), tail.end());
  ASSERT_EQ(lm_->prefix_class(static_cast<int64_t>(a.size())),
            lm_->prefix_class(static_cast<int64_t>(b.size())));

  // Request a fills the cache (snapshots at 32, 64, ... and its last two
  // block ends); b shares all but a's last 10 tokens.
  PrefixCache cache(options());
  const auto run = [&](const std::vector<int32_t>& prompt, PrefixCache* c) {
    testing::PieceDetokenizer detok({});
    GenerationRequest req;
    req.prompt = prompt;
    req.max_tokens = 4;
    req.sampling.temperature = 0;
    std::atomic<bool> cancelled{false};
    std::vector<int32_t> out;
    int64_t hit = -1;
    generate(
        *lm_, detok, req, cancelled,
        [&](GenerationEvent&& ev) {
          for (const auto& t : ev.tokens) out.push_back(t.token);
          if (ev.done) {
            EXPECT_NE(ev.finish, FinishReason::kError) << ev.error;
            hit = ev.prompt_cache_hit_tokens;
          }
        },
        c);
    return std::make_pair(out, hit);
  };
  const auto a_cold = run(a, nullptr);
  const auto a_first = run(a, &cache);
  EXPECT_EQ(a_first.second, 0);
  EXPECT_EQ(a_first.first, a_cold.first);  // chunked prefill at snapshot points: same tokens
  EXPECT_GT(cache.stats().entries, 0u);

  const int64_t shared = static_cast<int64_t>(a.size()) - 10;
  const int64_t expect_hit = shared / 16 * 16;
  auto hit = cache.lookup(b, static_cast<int64_t>(b.size()) - 1, "",
                          lm_->prefix_class(static_cast<int64_t>(b.size())));
  ASSERT_TRUE(hit.sequence);
  EXPECT_EQ(hit.tokens, expect_hit);
  // Snapshots are charged their caches: more tokens, more compressed rows.
  const uint64_t bytes_at_hit = hit.sequence->memory_bytes();
  EXPECT_GT(bytes_at_hit, 0u);
  const std::vector<float> warm = continued(*hit.sequence, b);
  EXPECT_GT(hit.sequence->memory_bytes(), bytes_at_hit);
  const std::vector<float> ref = cold(b);
  ASSERT_EQ(warm.size(), ref.size());
  EXPECT_EQ(warm, ref) << "a cache hit must reproduce the cold prefill bit for bit";

  // Through generate(): the same tokens as a cold run, hit reported.
  const auto b_warm = run(b, &cache);
  EXPECT_EQ(b_warm.second, expect_hit);
  EXPECT_EQ(b_warm.first, run(b, nullptr).first);
  // The repeated prompt a hits its own snapshots too.
  const auto a_again = run(a, &cache);
  EXPECT_GT(a_again.second, 0);
  EXPECT_EQ(a_again.first, a_cold.first);
}

TEST_F(PrefixCacheV4, SnapshotsTheCacheAvoidsWouldDiffer) {
  // What the cache's rules avoid, measured: (1) a snapshot at a position
  // that is not a whole snapshot unit, (2) a snapshot of tokens that were
  // decoded one at a time (a previous answer) rather than prefilled, (3) a
  // snapshot from a prompt shorter than the window (another prefix class).
  const int64_t window = lm_->model().config().window_size;
  const auto b = random_tokens(static_cast<size_t>(std::max<int64_t>(120, 2 * window + 8)), 3);
  const std::vector<float> ref = cold(b);
  double rel = 0;
  bool top1 = false;

  {  // (1): the whole of a 37-token prompt (its last rows' norms are the
     // reference's scalar tail, which depends on the prompt's length).
    auto seq = lm_->new_sequence();
    seq->set_prompt_length(37);
    seq->forward(std::span<const int32_t>(b).first(37), nullptr);
    compare("snapshot off the unit grid", continued(*seq, b), ref, &rel, &top1);
    EXPECT_LT(rel, 0.5);  // a measurement, bounded loosely
  }
  {  // (2): 48 prompt tokens, then 32 fed one by one as decoding does.
    auto seq = lm_->new_sequence();
    seq->set_prompt_length(48);
    seq->forward(std::span<const int32_t>(b).first(48), nullptr);
    for (int64_t i = 48; i < 80; ++i)
      seq->forward(std::span<const int32_t>(b).subspan(i, 1), nullptr);
    compare("snapshot after decoding (answer tokens)", continued(*seq, b), ref, &rel, &top1);
    EXPECT_LT(rel, 0.5);  // a measurement, bounded loosely
  }
  if (window > 12) {  // (3): an 8-token unit from a 12-token prompt.
    auto seq = lm_->new_sequence();
    seq->set_prompt_length(12);
    seq->forward(std::span<const int32_t>(b).first(8), nullptr);
    compare("snapshot from a shorter-than-window prompt", continued(*seq, b), ref, &rel, &top1);
    EXPECT_LT(rel, 0.5);  // a measurement, bounded loosely
  }
  // And the rule the cache does follow: a unit boundary in a prompt of the
  // same class is exact.
  auto seq = lm_->new_sequence();
  seq->set_prompt_length(static_cast<int64_t>(b.size()) + 40);
  seq->forward(std::span<const int32_t>(b).first(64), nullptr);
  EXPECT_EQ(continued(*seq, b), ref);
}

// V4-Flash attention dimensions (64 heads, window 128; 3 layers, one of them
// CSA, small experts and hidden size): decoded tokens are on the exact grid
// too, so the next turn of a conversation hits the previous answer, bit for
// bit. The tiny model (4 heads) must not keep decoded snapshots.
TEST_F(PrefixCacheV4, NextTurnHitsTheAnswerOnFlashHeads) {
  EXPECT_FALSE(lm_->decoded_snapshots_exact(1000));
  const fs::path dir =
      fs::temp_directory_path() / ("dsv4-test-prefix-cache-flash-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  SynthOptions o;
  o.like = "flash";
  o.layers = 3;
  o.experts = 4;
  o.dim = 256;
  o.vocab = 1000;
  o.seed = 4;
  o.out = dir.string();
  synth_checkpoint(o);
  V4LanguageModel flash(std::make_shared<const Model>(dir.string()));
  const int64_t window = flash.model().config().window_size;
  ASSERT_EQ(flash.model().config().n_heads % 32, 0);
  ASSERT_TRUE(flash.decoded_snapshots_exact(window));
  ASSERT_FALSE(flash.decoded_snapshots_exact(window - 1));

  std::mt19937 rng(9);
  std::uniform_int_distribution<int32_t> d(0, flash.vocab_size() - 1);
  std::vector<int32_t> turn1(static_cast<size_t>(window + 22));
  for (auto& t : turn1) t = d(rng);

  PrefixCache cache(options());  // units of 16
  testing::PieceDetokenizer detok({});
  auto run = [&](const std::vector<int32_t>& prompt, PrefixCache* c, int64_t max_tokens,
                 std::vector<int32_t>* out) {
    GenerationRequest req;
    req.prompt = prompt;
    req.max_tokens = max_tokens;
    req.sampling.temperature = 0;
    std::atomic<bool> cancelled{false};
    int64_t hit = -1;
    generate(
        flash, detok, req, cancelled,
        [&](GenerationEvent&& ev) {
          for (const auto& t : ev.tokens) out->push_back(t.token);
          if (ev.done) hit = ev.prompt_cache_hit_tokens;
        },
        c);
    return hit;
  };
  // Turn 1 decodes 40 tokens: positions L+1 .. L+39 pass two or three unit ends.
  std::vector<int32_t> answer;
  run(turn1, &cache, 40, &answer);
  ASSERT_EQ(answer.size(), 40u);
  const int64_t fed = static_cast<int64_t>(turn1.size()) + 39;
  const int64_t last_unit = fed / 16 * 16;

  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), answer.begin(), answer.end());
  for (int i = 0; i < 20; ++i) turn2.push_back(d(rng));
  auto hit = cache.lookup(turn2, static_cast<int64_t>(turn2.size()) - 1, "",
                          flash.prefix_class(static_cast<int64_t>(turn2.size())));
  ASSERT_TRUE(hit.sequence);
  EXPECT_EQ(hit.tokens, last_unit);
  hit.sequence->set_prompt_length(static_cast<int64_t>(turn2.size()));
  std::vector<float> warm, ref;
  hit.sequence->forward(std::span<const int32_t>(turn2).subspan(hit.tokens), &warm);
  auto seq = flash.new_sequence();
  seq->set_prompt_length(static_cast<int64_t>(turn2.size()));
  seq->forward(turn2, &ref);
  EXPECT_EQ(warm, ref) << "a hit on decoded tokens must reproduce the cold prefill bit for bit";

  std::vector<int32_t> warm_out, cold_out;
  EXPECT_EQ(run(turn2, &cache, 3, &warm_out), last_unit);
  run(turn2, nullptr, 3, &cold_out);
  EXPECT_EQ(warm_out, cold_out);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv4::engine
