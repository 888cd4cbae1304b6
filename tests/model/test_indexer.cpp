// The lightning indexer: visibility (query t sees entries j < (t+1)/ratio),
// width, and deterministic tie-breaking (equal scores: lower entry first).
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "golden_checks.h"
#include "kernels/numerics.h"
#include "model/indexer.h"
#include "model/model.h"
#include "model/state.h"
#include "util/threadpool.h"

namespace dsv4 {
namespace {

class IndexerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<Model>(testing::golden_dir() + "/checkpoint");
    for (size_t l = 0; l < model_->weights().layers.size(); ++l)
      if (model_->weights().layers[l].attn.has_indexer) layer_ = static_cast<int64_t>(l);
    ASSERT_GE(layer_, 0) << "tiny-a has CSA layers";
    const ModelConfig& cfg = model_->config();
    std::mt19937 rng(11);
    std::normal_distribution<float> d;
    x_.resize(cfg.dim);
    qr_.resize(cfg.q_lora_rank);
    for (float& v : x_) v = kernels::bf16_round(d(rng));
    for (float& v : qr_) v = kernels::bf16_round(d(rng));
  }
  std::unique_ptr<Model> model_;
  int64_t layer_ = -1;
  std::vector<float> x_, qr_;
};

TEST_F(IndexerTest, EqualScoresGoToTheLowerEntry) {
  const ModelConfig& cfg = model_->config();
  const IndexerWeights& w = model_->weights().layers[layer_].attn.indexer;
  LayerState st = make_layer_state(cfg, layer_);
  // 3·topk identical keys: every one of them scores the same for any query.
  const int64_t copies = 3 * cfg.index_topk, hd = cfg.index_head_dim;
  // (Values on the FP4 grid of their 32-dim blocks: 0.5 = 4·2^-3, −0.25 = −2·2^-3.)
  std::vector<float> keys;
  for (int64_t i = 0; i < copies; ++i)
    for (int64_t c = 0; c < hd; ++c) keys.push_back((c % 3 == 0) ? 0.5f : -0.25f);
  st.append_index_keys(keys);
  // One query at the position that completes entry `copies` (one more key).
  const int64_t pos = (copies + 1) * 4 - 1;
  const IndexerSelection sel =
      indexer_forward(model_->context(), w, st, pos, 1, x_.data(), qr_.data());
  ASSERT_EQ(sel.width, cfg.index_topk);
  std::vector<int32_t> copies_chosen;
  for (int64_t k = 0; k < sel.width; ++k) {
    const int32_t e = sel.entries[k];
    ASSERT_GE(e, 0);
    ASSERT_LE(e, copies);
    if (e < copies) copies_chosen.push_back(e);
    if (k > 0) {
      EXPECT_GE(sel.scores[k - 1], sel.scores[k]);  // best first
    }
  }
  // The tied copies chosen are the lowest-numbered ones, in increasing order.
  for (size_t i = 0; i < copies_chosen.size(); ++i)
    EXPECT_EQ(copies_chosen[i], static_cast<int32_t>(i));
}

TEST_F(IndexerTest, QueriesSeeOnlyCompletedEntries) {
  const ModelConfig& cfg = model_->config();
  const IndexerWeights& w = model_->weights().layers[layer_].attn.indexer;
  LayerState st = make_layer_state(cfg, layer_);
  const int64_t n = 4 * cfg.index_topk + 6;
  std::vector<float> x(n * cfg.dim), qr(n * cfg.q_lora_rank);
  for (int64_t i = 0; i < n; ++i) {
    std::copy(x_.begin(), x_.end(), x.begin() + i * cfg.dim);
    std::copy(qr_.begin(), qr_.end(), qr.begin() + i * cfg.q_lora_rank);
  }
  const IndexerSelection sel = indexer_forward(model_->context(), w, st, 0, n, x.data(), qr.data());
  EXPECT_EQ(st.num_index_keys(), n / 4);
  EXPECT_EQ(sel.width, std::min<int64_t>(cfg.index_topk, n / 4));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t visible = (t + 1) / 4;
    std::set<int32_t> chosen;
    for (int64_t k = 0; k < sel.width; ++k) {
      const int32_t e = sel.entries[t * sel.width + k];
      if (e < 0) continue;
      EXPECT_LT(e, visible) << "query " << t;
      chosen.insert(e);
    }
    EXPECT_EQ(static_cast<int64_t>(chosen.size()), std::min(visible, sel.width)) << "query " << t;
  }
}

// Scoring is split across threads (over entries for a decode step, over
// queries for a prefill chunk): the selection must not depend on the split.
TEST_F(IndexerTest, SelectionDoesNotDependOnTheThreadCount) {
  const ModelConfig& cfg = model_->config();
  const IndexerWeights& w = model_->weights().layers[layer_].attn.indexer;
  LayerState st = make_layer_state(cfg, layer_);
  // 1500 random keys on the FP4 grid, a quarter of them repeats (ties).
  const int64_t hd = cfg.index_head_dim, n_keys = 1500;
  std::mt19937 rng(4);
  std::normal_distribution<float> d;
  std::vector<float> keys(n_keys * hd);
  for (int64_t j = 0; j < n_keys; ++j) {
    float* k = keys.data() + j * hd;
    if (j % 4 == 3) {
      std::copy_n(keys.data() + (j / 2) * hd, hd, k);
      continue;
    }
    for (int64_t c = 0; c < hd; ++c) k[c] = kernels::bf16_round(d(rng));
    kernels::fp4_fake_quant(k, hd, 32);
  }
  st.append_index_keys(keys);
  const int64_t pos = n_keys * 4;  // queries from here see all n_keys keys
  const int64_t n = 5;
  std::vector<float> x(n * cfg.dim), qr(n * cfg.q_lora_rank);
  for (float& v : x) v = kernels::bf16_round(d(rng));
  for (float& v : qr) v = kernels::bf16_round(d(rng));
  auto run = [&](int threads, int64_t count) {
    ThreadPool::set_global_threads(threads);
    LayerState copy = st;
    return indexer_forward(model_->context(), w, copy, pos, count, x.data(), qr.data());
  };
  // Decode steps (one query, entries split) and a chunk of n queries.
  const IndexerSelection one = run(1, 1), many = run(4, 1);
  EXPECT_EQ(one.entries, many.entries);
  EXPECT_EQ(one.scores, many.scores);
  const IndexerSelection chunk1 = run(1, n), chunk3 = run(3, n), chunk8 = run(8, n);
  EXPECT_EQ(chunk1.entries, chunk3.entries);  // 3 threads: 5 queries split across them
  EXPECT_EQ(chunk1.entries, chunk8.entries);  // 8 threads: entries split, per query
  EXPECT_EQ(chunk1.scores, chunk8.scores);
  // The first query of the chunk is the single decode step's query.
  ASSERT_EQ(chunk1.width, one.width);
  EXPECT_EQ(std::vector<int32_t>(chunk1.entries.begin(), chunk1.entries.begin() + one.width),
            one.entries);
  ThreadPool::set_global_threads(static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace
}  // namespace dsv4
