// moe_forward across thread counts (the decode path runs whole experts as parallel tasks).
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "golden_checks.h"
#include "kernels/numerics.h"
#include "model/model.h"
#include "model/moe.h"
#include "util/threadpool.h"

namespace dsv4 {
namespace {

TEST(MoeThreads, ExpertsInParallelGiveTheSerialBits) {
  // Decode-sized calls run whole experts as parallel tasks (moe.cpp), prefill-sized ones split
  // every matrix; either way the output must be the one-thread bits (the routed experts are
  // summed in expert order, then the shared one). Every layer: hash-routed and scored ones.
  const Model model(testing::golden_dir() + "/checkpoint");
  const ModelConfig& cfg = model.config();
  for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{9}}) {
    std::mt19937 rng(static_cast<uint32_t>(40 + n));
    std::normal_distribution<float> d;
    std::vector<float> x(n * cfg.dim);
    for (float& v : x) v = kernels::bf16_round(d(rng));
    std::vector<int32_t> tokens(n);
    for (int64_t i = 0; i < n; ++i)
      tokens[i] = static_cast<int32_t>((i * 977 + 13) % cfg.vocab_size);
    for (size_t l = 0; l < model.weights().layers.size(); ++l) {
      auto run = [&](int threads) {
        ThreadPool::set_global_threads(threads);
        std::vector<float> out(n * cfg.dim);
        moe_forward(model.context(), model.weights().layers[l].ffn, static_cast<int64_t>(l), 0, n,
                    x.data(), tokens, out.data(), nullptr);
        return out;
      };
      const std::vector<float> one = run(1), three = run(3);
      ASSERT_EQ(one.size(), three.size());
      for (size_t k = 0; k < one.size(); ++k)
        ASSERT_EQ(std::bit_cast<uint32_t>(one[k]), std::bit_cast<uint32_t>(three[k]))
            << "layer " << l << " n=" << n << " element " << k;
    }
  }
  ThreadPool::set_global_threads(static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace
}  // namespace dsv4
