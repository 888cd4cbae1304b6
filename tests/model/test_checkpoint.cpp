// Loading the golden tiny-a checkpoint (official format, sharded) and the
// config checks.
#include <gtest/gtest.h>

#include "model/checkpoint.h"
#include "model/weights.h"
#include "util/error.h"

namespace dsv4 {
namespace {

const std::string kTinyA = std::string(DSV4_TEST_DATA) + "/golden/tiny-a/checkpoint";

TEST(Checkpoint, LoadsShardedTinyA) {
  Checkpoint ckpt(kTinyA);
  EXPECT_EQ(ckpt.num_shards(), 3u);
  const ModelConfig& c = ckpt.config();
  EXPECT_EQ(c.dim, 256);
  EXPECT_EQ(c.n_layers, 4);
  EXPECT_EQ(c.n_mtp_layers, 1);
  EXPECT_EQ(c.window_size, 16);
  EXPECT_TRUE(c.yarn);
  EXPECT_EQ(c.original_seq_len, 65536);
  ASSERT_EQ(c.compress_ratios.size(), 5u);
  EXPECT_TRUE(c.is_csa(1));
  EXPECT_FALSE(c.is_csa(2));
  EXPECT_EQ(ckpt.total_bytes(), 11659556u);
}

TEST(Checkpoint, BindsEveryTensor) {
  Checkpoint ckpt(kTinyA);
  ModelWeights w = bind_weights(ckpt);
  ASSERT_EQ(w.layers.size(), 4u);
  ASSERT_EQ(w.mtp.size(), 1u);
  EXPECT_FALSE(w.layers[0].attn.has_compressor);
  EXPECT_TRUE(w.layers[1].attn.has_indexer);
  EXPECT_TRUE(w.layers[2].attn.has_compressor);
  EXPECT_FALSE(w.layers[2].attn.has_indexer);
  EXPECT_TRUE(w.layers[1].ffn.hash);
  EXPECT_FALSE(w.layers[2].ffn.hash);
  EXPECT_EQ(w.layers[3].ffn.experts.size(), 8u);
  EXPECT_EQ(w.layers[3].ffn.experts[5].w2.weight.shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(expected_tensors(ckpt.config()).size(), ckpt.tensors().size());
}

TEST(Config, RejectsUnsupportedValuesByName) {
  auto expect_error = [](const std::string& json, const std::string& needle) {
    try {
      parse_model_config(json, "config.json");
      FAIL() << "accepted: " << json;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("{", "not valid JSON");
  expect_error(R"({"model_type": "deepseek_v3"})", "model_type");
  expect_error(R"({"hidden_size": 256})", "vocab_size");
}

}  // namespace
}  // namespace dsv4
