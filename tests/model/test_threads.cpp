// The whole forward pass across thread counts: prefill and decode steps give the one-thread
// bits at two and three threads (decode runs wo_a's groups and the MoE experts as parallel
// tasks, the indexer splits the entries, prefill splits every matrix).
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <thread>
#include <vector>

#include "golden_checks.h"
#include "model/model.h"
#include "model/state.h"
#include "util/threadpool.h"

namespace dsv4 {
namespace {

TEST(ForwardThreads, DecodeAndPrefillGiveTheOneThreadBits) {
  const Model model(testing::golden_dir() + "/checkpoint");
  const int64_t vocab = model.config().vocab_size;
  std::vector<int32_t> prompt(40);
  for (size_t i = 0; i < prompt.size(); ++i)
    prompt[i] = static_cast<int32_t>((i * 7919 + 11) % static_cast<size_t>(vocab));
  auto run = [&](int threads) {
    ThreadPool::set_global_threads(threads);
    auto state = model.new_sequence();
    std::vector<float> logits, all;
    model.forward(*state, prompt, &logits);
    all = logits;
    for (int step = 0; step < 6; ++step) {
      const int32_t next = static_cast<int32_t>((step * 31 + 5) % vocab);
      model.forward(*state, std::span<const int32_t>(&next, 1), &logits);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  };
  const std::vector<float> one = run(1);
  for (int threads : {2, 3}) {
    const std::vector<float> many = run(threads);
    ASSERT_EQ(one.size(), many.size());
    for (size_t k = 0; k < one.size(); ++k)
      ASSERT_EQ(std::bit_cast<uint32_t>(one[k]), std::bit_cast<uint32_t>(many[k]))
          << threads << " threads, logit " << k;
  }
  ThreadPool::set_global_threads(static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace
}  // namespace dsv4
