// The prefix cache over a fake model whose logits are a hash of every token
// it has consumed: longest-prefix lookup, block granularity, isolation,
// LRU eviction by bytes, concurrent use, and generate() reusing snapshots
// (same logits as a cold prefill, fewer tokens computed, hits reported).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include "engine/generation.h"
#include "engine/prefix_cache.h"
#include "engine/scheduler.h"
#include "fakes.h"
#include "util/error.h"

namespace dsv4::engine {
namespace {

// State = the tokens consumed. Logits put the mass on a token derived from a
// hash of the whole history, so a wrongly restored state changes the output.
class HistoryModel : public LanguageModel {
 public:
  explicit HistoryModel(int vocab = 50, uint64_t seq_bytes = 1000)
      : vocab_(vocab), seq_bytes_(seq_bytes) {}
  int vocab_size() const override { return vocab_; }
  int64_t context_length() const override { return 1 << 20; }
  std::unique_ptr<ModelSequence> new_sequence() const override {
    return std::make_unique<Seq>(this);
  }
  int64_t snapshot_granularity() const override { return granularity; }
  int64_t prefix_class(int64_t prompt_length) const override {
    return std::min<int64_t>(prompt_length, class_cap);
  }

  static int32_t next_token(const std::vector<int32_t>& history, int vocab) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t t : history) h = (h ^ static_cast<uint32_t>(t)) * 1099511628211ull;
    return static_cast<int32_t>(h % static_cast<uint64_t>(vocab - 2)) + 2;  // never 0/1
  }

  mutable std::atomic<int64_t> tokens_computed{0};
  int64_t granularity = 1;
  int64_t class_cap = 0;  // 0: one class for every prompt
  bool decoded_exact = false;
  bool decoded_snapshots_exact(int64_t) const override { return decoded_exact; }

 private:
  struct Seq : ModelSequence {
    explicit Seq(const HistoryModel* m) : m(m) {}
    void forward(std::span<const int32_t> tokens, std::vector<float>* logits) override {
      m->tokens_computed += static_cast<int64_t>(tokens.size());
      history.insert(history.end(), tokens.begin(), tokens.end());
      if (logits) {
        logits->assign(m->vocab_, -30.0f);
        (*logits)[next_token(history, m->vocab_)] = 0.0f;
      }
    }
    int64_t position() const override { return static_cast<int64_t>(history.size()); }
    std::unique_ptr<ModelSequence> clone() const override { return std::make_unique<Seq>(*this); }
    void set_prompt_length(int64_t n) override { prompt_len = n; }
    uint64_t memory_bytes() const override { return m->seq_bytes_; }
    const HistoryModel* m;
    std::vector<int32_t> history;
    int64_t prompt_len = 0;
  };
  int vocab_;
  uint64_t seq_bytes_;
};

std::vector<int32_t> tokens(int64_t n, int32_t start = 100) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

// A sequence that has consumed `prefix`.
std::unique_ptr<ModelSequence> fed(const HistoryModel& m, std::span<const int32_t> prefix) {
  auto s = m.new_sequence();
  s->forward(prefix, nullptr);
  return s;
}

PrefixCacheOptions small_blocks(uint64_t budget = 1 << 20) {
  PrefixCacheOptions o;
  o.budget_bytes = budget;
  o.block_tokens = 4;
  o.interval_tokens = 8;
  return o;
}

TEST(PrefixCache, LongestCachedPrefixWins) {
  HistoryModel m;
  PrefixCache cache(small_blocks());
  const auto p = tokens(20);
  for (int64_t n : {4, 8, 12})
    cache.insert(std::span(p).first(n), "", 0, *fed(m, std::span(p).first(n)));
  EXPECT_EQ(cache.stats().entries, 3u);

  auto q = p;
  q[10] = 7;  // differs inside the third block: blocks 0..1 (8 tokens) match
  auto hit = cache.lookup(q, 100, "", 0);
  ASSERT_TRUE(hit.sequence);
  EXPECT_EQ(hit.tokens, 8);
  EXPECT_EQ(hit.sequence->position(), 8);

  hit = cache.lookup(p, 100, "", 0);
  EXPECT_EQ(hit.tokens, 12);
  // max_tokens caps the hit (the engine passes prompt - 1).
  hit = cache.lookup(p, 11, "", 0);
  EXPECT_EQ(hit.tokens, 8);
  hit = cache.lookup(p, 3, "", 0);
  EXPECT_EQ(hit.tokens, 0);
  EXPECT_FALSE(hit.sequence);

  // A snapshot handed over is kept as it is.
  cache.insert(std::span(p).first(16), "", 0, fed(m, std::span(p).first(16)));
  EXPECT_EQ(cache.lookup(p, 100, "", 0).tokens, 16);
  EXPECT_EQ(cache.stats().entries, 4u);

  // The copy is private: feeding it leaves the snapshot untouched.
  hit = cache.lookup(p, 100, "", 0);
  hit.sequence->forward(std::span(p).subspan(16, 4), nullptr);
  EXPECT_EQ(cache.lookup(p, 100, "", 0).sequence->position(), 16);
}

TEST(PrefixCache, OnlyWholeBlocksHit) {
  HistoryModel m;
  PrefixCache cache(small_blocks());
  const auto p = tokens(8);
  cache.insert(p, "", 0, *fed(m, p));
  auto q = p;
  q[7] = 3;  // last token of the only cached unit differs: partial match is no hit
  EXPECT_EQ(cache.lookup(q, 100, "", 0).tokens, 0);
  q[7] = p[7];
  q.push_back(1);
  EXPECT_EQ(cache.lookup(q, 100, "", 0).tokens, 8);
  // Snapshots must cover whole blocks and match the sequence's position.
  EXPECT_THROW(cache.insert(std::span(p).first(6), "", 0, *fed(m, std::span(p).first(6))), Error);
  EXPECT_THROW(cache.insert(std::span(p).first(4), "", 0, *fed(m, p)), Error);
}

TEST(PrefixCache, SnapshotPoints) {
  PrefixCache cache(small_blocks());  // blocks of 4, interval 8
  EXPECT_EQ(cache.snapshot_points(3), (std::vector<int64_t>{}));
  EXPECT_EQ(cache.snapshot_points(4), (std::vector<int64_t>{4}));
  EXPECT_EQ(cache.snapshot_points(7), (std::vector<int64_t>{4}));
  EXPECT_EQ(cache.snapshot_points(21), (std::vector<int64_t>{8, 16, 20}));
  EXPECT_EQ(cache.snapshot_points(26), (std::vector<int64_t>{8, 16, 20, 24}));
  PrefixCacheOptions o;
  PrefixCache dflt(o);
  EXPECT_EQ(dflt.options().block_tokens, 64);
  EXPECT_EQ(dflt.snapshot_points(2100), (std::vector<int64_t>{1024, 1984, 2048}));
  PrefixCacheOptions bad = small_blocks();
  bad.interval_tokens = 6;
  EXPECT_THROW(PrefixCache{bad}, Error);
  bad.block_tokens = 0;
  EXPECT_THROW(PrefixCache{bad}, Error);
}

TEST(PrefixCache, SpacesAndClassesAreIsolated) {
  HistoryModel m;
  PrefixCache cache(small_blocks());
  const auto p = tokens(9);
  cache.insert(std::span(p).first(8), "key-a", 5, *fed(m, std::span(p).first(8)));
  EXPECT_EQ(cache.lookup(p, 100, "key-a", 5).tokens, 8);
  EXPECT_EQ(cache.lookup(p, 100, "key-b", 5).tokens, 0);
  EXPECT_EQ(cache.lookup(p, 100, "key-a", 6).tokens, 0);
  EXPECT_EQ(cache.lookup(p, 100, "", 5).tokens, 0);
}

TEST(PrefixCache, EvictsLeastRecentlyUsedWithinBudget) {
  HistoryModel m(50, 1000);
  const auto p = tokens(4, 10), q = tokens(4, 20), r = tokens(4, 30);
  // Learn what one entry costs, then allow exactly two.
  PrefixCache probe(small_blocks());
  probe.insert(p, "", 0, *fed(m, p));
  const uint64_t one = probe.stats().bytes;
  ASSERT_GE(one, 1000u);

  PrefixCache cache(small_blocks(2 * one));
  cache.insert(p, "", 0, *fed(m, p));
  cache.insert(q, "", 0, *fed(m, q));
  EXPECT_EQ(cache.stats().bytes, 2 * one);
  EXPECT_EQ(cache.lookup(p, 4, "", 0).tokens, 4);  // p is now the most recent
  cache.insert(r, "", 0, *fed(m, r));              // evicts q
  EXPECT_EQ(cache.stats().entries, 2u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_LE(cache.stats().bytes, 2 * one);
  EXPECT_EQ(cache.lookup(q, 4, "", 0).tokens, 0);
  EXPECT_EQ(cache.lookup(p, 4, "", 0).tokens, 4);
  EXPECT_EQ(cache.lookup(r, 4, "", 0).tokens, 4);

  // A snapshot larger than the whole budget is not kept (nothing evicted).
  PrefixCache tiny(small_blocks(one - 1));
  tiny.insert(p, "", 0, *fed(m, p));
  EXPECT_EQ(tiny.stats().entries, 0u);
  // Budget 0 disables the cache.
  PrefixCache off(small_blocks(0));
  EXPECT_FALSE(off.enabled());
  off.insert(p, "", 0, *fed(m, p));
  EXPECT_EQ(off.lookup(p, 4, "", 0).tokens, 0);
  EXPECT_TRUE(off.snapshot_points(100).empty());
}

TEST(PrefixCache, ConcurrentLookupsAndInsertsStayConsistent) {
  HistoryModel m(50, 1000);
  PrefixCache probe(small_blocks());
  const auto base = tokens(4);
  probe.insert(base, "", 0, *fed(m, base));
  // Room for ~6 entries: constant eviction under contention.
  PrefixCache cache(small_blocks(6 * probe.stats().bytes));
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        // Prompts from a small family sharing prefixes.
        std::vector<int32_t> p = tokens(16, 100);
        p[4 + (i + t) % 12] = static_cast<int32_t>((i * 7 + t) % 5);
        for (int64_t n : {4, 8, 12, 16})
          if ((i + n) % 3 != 0)
            cache.insert(std::span(p).first(n), "", 0, *fed(m, std::span(p).first(n)));
        auto hit = cache.lookup(p, 16, "", 0);
        if (hit.sequence) {
          auto* seq = hit.sequence.get();
          if (seq->position() != hit.tokens) ++bad;
          // The restored state continues like a cold one.
          std::vector<float> warm, cold;
          seq->forward(std::span(p).subspan(hit.tokens), &warm);
          fed(m, {})->forward(p, &cold);
          if (warm != cold) ++bad;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  const auto s = cache.stats();
  EXPECT_LE(s.bytes, 6 * probe.stats().bytes);
  EXPECT_GT(s.hits, 0u);
  EXPECT_GT(s.evictions, 0u);
}

struct Outcome {
  std::vector<int32_t> tokens;
  GenerationEvent last;
};

Outcome run(const HistoryModel& m, std::vector<int32_t> prompt, PrefixCache* cache,
            std::string space = "", int64_t max_tokens = 5) {
  testing::PieceDetokenizer detok({});
  GenerationRequest req;
  req.prompt = std::move(prompt);
  req.max_tokens = max_tokens;
  req.sampling.temperature = 0;
  req.cache_space = std::move(space);
  std::atomic<bool> cancelled{false};
  Outcome r;
  generate(
      m, detok, req, cancelled,
      [&](GenerationEvent&& ev) {
        for (const auto& t : ev.tokens) r.tokens.push_back(t.token);
        if (ev.done) r.last = ev;
      },
      cache);
  return r;
}

TEST(PrefixCacheGeneration, RepeatedPromptHitsAndMatchesColdRun) {
  HistoryModel m;
  PrefixCache cache(small_blocks());
  const auto prompt = tokens(22);
  const Outcome cold = run(m, prompt, nullptr);
  EXPECT_EQ(cold.last.prompt_cache_hit_tokens, 0);

  m.tokens_computed = 0;
  const Outcome first = run(m, prompt, &cache);
  EXPECT_EQ(first.last.prompt_cache_hit_tokens, 0);
  EXPECT_EQ(first.tokens, cold.tokens);
  EXPECT_EQ(m.tokens_computed.load(), 22 + 4);  // prompt + 4 decode steps
  // Snapshots at 8, 16 (interval) and 16, 20 (the last two block ends).
  EXPECT_EQ(cache.stats().entries, 3u);

  m.tokens_computed = 0;
  const Outcome second = run(m, prompt, &cache);
  EXPECT_EQ(second.last.prompt_cache_hit_tokens, 20);
  EXPECT_EQ(second.last.prompt_tokens, 22);
  EXPECT_EQ(second.tokens, cold.tokens);
  EXPECT_EQ(m.tokens_computed.load(), 2 + 4);
}

TEST(PrefixCacheGeneration, ExtendedPromptHitsAndIsolationHolds) {
  HistoryModel m;
  PrefixCache cache(small_blocks());
  auto turn1 = tokens(13);
  run(m, turn1, &cache, "alice");
  // Turn 2 = turn 1 with its last token changed (as a chat template does at
  // the end of the prompt) plus more: hits the second-to-last block end.
  auto turn2 = turn1;
  turn2.back() = 9;
  for (int32_t t : tokens(10, 500)) turn2.push_back(t);
  const Outcome warm = run(m, turn2, &cache, "alice");
  EXPECT_EQ(warm.last.prompt_cache_hit_tokens, 12);
  EXPECT_EQ(warm.tokens, run(m, turn2, nullptr).tokens);
  EXPECT_EQ(run(m, turn2, &cache, "bob").last.prompt_cache_hit_tokens, 0);

  // A prompt that is exactly one block never hits itself (the last token is
  // always computed), and a model that cannot snapshot at this block size is
  // never cached.
  PrefixCache c2(small_blocks());
  run(m, tokens(4), &c2);
  EXPECT_EQ(run(m, tokens(4), &c2).last.prompt_cache_hit_tokens, 0);
  HistoryModel coarse;
  coarse.granularity = 8;  // blocks of 4 are not a multiple
  PrefixCache c3(small_blocks());
  run(coarse, tokens(30), &c3);
  EXPECT_EQ(c3.stats().entries, 0u);
  EXPECT_EQ(run(coarse, tokens(30), &c3).last.prompt_cache_hit_tokens, 0);
}

TEST(PrefixCacheGeneration, NextTurnHitsTheDecodedAnswerWhenExact) {
  for (bool exact : {false, true}) {
    SCOPED_TRACE(exact ? "decoded snapshots exact" : "prompt snapshots only");
    HistoryModel m;
    m.decoded_exact = exact;
    PrefixCache cache(small_blocks());
    const auto prompt = tokens(10);
    // 12 tokens sampled, 11 fed back: positions 11..21 pass unit ends 12,
    // 16 and 20; the last two are kept.
    const Outcome answer = run(m, prompt, &cache, "", 12);
    ASSERT_EQ(answer.tokens.size(), 12u);
    EXPECT_EQ(cache.stats().entries, exact ? 4u : 2u);  // + prompt's 4 and 8
    auto turn2 = prompt;
    turn2.insert(turn2.end(), answer.tokens.begin(), answer.tokens.end());
    for (int32_t t : {7, 8, 9}) turn2.push_back(t);
    const Outcome next = run(m, turn2, &cache);
    EXPECT_EQ(next.last.prompt_cache_hit_tokens, exact ? 20 : 8);
    EXPECT_EQ(next.tokens, run(m, turn2, nullptr).tokens);
  }
}

TEST(PrefixCacheGeneration, DivergingRequestsPersistTheirCommonPrefix) {
  // The platform's example: A+B, then A+C (no hit) persists A, so A+D hits A.
  HistoryModel m;
  PrefixCacheOptions o = small_blocks();
  o.interval_tokens = 64;  // no interval snapshots in these short prompts
  PrefixCache cache(o);
  const auto a = tokens(10);
  auto with = [&](int32_t start) {
    auto p = a;
    for (int32_t t : tokens(9, start)) p.push_back(t);
    return p;
  };
  EXPECT_EQ(run(m, with(500), &cache).last.prompt_cache_hit_tokens, 0);  // units 12, 16
  auto probe = cache.lookup(with(600), 18, "", 0);
  EXPECT_EQ(probe.tokens, 0);
  EXPECT_EQ(probe.shared_tokens, 8);                                     // A's whole units
  EXPECT_EQ(run(m, with(600), &cache).last.prompt_cache_hit_tokens, 0);  // persists 8
  const Outcome third = run(m, with(700), &cache);
  EXPECT_EQ(third.last.prompt_cache_hit_tokens, 8);
  EXPECT_EQ(third.tokens, run(m, with(700), nullptr).tokens);
  // Evicted entries no longer count as shared prefixes.
  PrefixCache sizing(small_blocks());
  const std::vector<int32_t> a500 = with(500);
  const std::vector<int32_t> p16(a500.begin(), a500.begin() + 16);
  sizing.insert(p16, "", 0, *fed(m, p16));
  PrefixCache one(small_blocks(sizing.stats().bytes + 100));  // room for one entry
  run(m, with(500), &one);
  EXPECT_EQ(one.stats().entries, 1u);
  EXPECT_EQ(one.lookup(with(600), 18, "", 0).shared_tokens, 8);
  const auto other = tokens(16, 900);
  one.insert(other, "", 0, *fed(m, other));
  EXPECT_EQ(one.stats().entries, 1u);
  EXPECT_EQ(one.lookup(with(600), 18, "", 0).shared_tokens, 0);
}

TEST(PrefixCacheGeneration, PrefixClassesDoNotMix) {
  HistoryModel m;
  m.class_cap = 16;  // prompts shorter than 16 tokens each form their own class
  PrefixCache cache(small_blocks());
  run(m, tokens(10), &cache);
  EXPECT_EQ(run(m, tokens(11), &cache).last.prompt_cache_hit_tokens, 0);
  EXPECT_EQ(run(m, tokens(10), &cache).last.prompt_cache_hit_tokens, 8);
  run(m, tokens(17), &cache);
  EXPECT_EQ(run(m, tokens(30), &cache).last.prompt_cache_hit_tokens, 16);
}

TEST(PrefixCacheGeneration, SchedulerSharesTheCache) {
  auto m = std::make_shared<HistoryModel>();
  auto detok = std::make_shared<testing::PieceDetokenizer>(std::map<int32_t, std::string>{});
  auto cache = std::make_shared<PrefixCache>(small_blocks());
  Scheduler sched(m, detok, cache);
  EXPECT_EQ(sched.prefix_cache(), cache.get());
  auto one = [&] {
    GenerationRequest req;
    req.prompt = tokens(30);
    req.max_tokens = 2;
    req.sampling.temperature = 0;
    auto h = sched.submit(std::move(req));
    while (true) {
      auto ev = h->next_event(std::chrono::milliseconds(5000));
      if (!ev) return int64_t{-1};
      if (ev->done) return ev->prompt_cache_hit_tokens;
    }
  };
  EXPECT_EQ(one(), 0);
  GenerationRequest probe;
  probe.prompt = tokens(30);
  EXPECT_EQ(sched.cached_prompt_tokens(probe), 28);
  probe.cache_space = "other";
  EXPECT_EQ(sched.cached_prompt_tokens(probe), 0);
  EXPECT_EQ(one(), 28);
}

}  // namespace
}  // namespace dsv4::engine
