// The scratch cache: large blocks are reused (best fit, at most twice the
// request), kept within the limit, aligned, and safe to use from many threads.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "util/scratch.h"

namespace dsv4 {
namespace {

constexpr size_t kMB = size_t{1} << 20;

class Scratch : public ::testing::Test {
 protected:
  void SetUp() override {
    scratch_release();
    scratch_set_limit(size_t{1} << 30);
  }
  void TearDown() override { scratch_release(); }
};

TEST_F(Scratch, BufferLeavesItsBlockUninitialisedAndReturnsIt) {
  {
    void* a = scratch_alloc(8 * kMB);
    std::memset(a, 0x5A, 8 * kMB);
    scratch_free(a, 8 * kMB);
  }
  const ScratchStats before = scratch_stats();
  {
    ScratchBuffer<uint8_t> b(8 * kMB);  // the cached block, as it was: no zeroing pass
    ASSERT_EQ(b.size(), 8 * kMB);
    EXPECT_EQ(b[0], 0x5A);
    EXPECT_EQ(b[8 * kMB - 1], 0x5A);
    EXPECT_EQ(scratch_stats().reused, before.reused + 1);
    EXPECT_EQ(scratch_stats().cached_blocks, 0u);
  }
  EXPECT_EQ(scratch_stats().cached_blocks, 1u);  // back in the cache
  ScratchBuffer<float> empty(0);
  EXPECT_EQ(empty.data(), nullptr);
}

TEST_F(Scratch, ReusesAFreedLargeBlock) {
  const ScratchStats before = scratch_stats();
  void* a = scratch_alloc(8 * kMB);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  std::memset(a, 1, 8 * kMB);
  scratch_free(a, 8 * kMB);
  EXPECT_EQ(scratch_stats().cached_blocks, 1u);
  void* b = scratch_alloc(6 * kMB);  // fits in the cached 8 MB block
  EXPECT_EQ(a, b);
  EXPECT_EQ(scratch_stats().reused, before.reused + 1);
  EXPECT_EQ(scratch_stats().cached_blocks, 0u);
  scratch_free(b, 6 * kMB);  // cached again at its real capacity
  EXPECT_EQ(scratch_stats().cached_bytes, 8 * kMB);
  void* c = scratch_alloc(8 * kMB);
  EXPECT_EQ(c, a);
  scratch_free(c, 8 * kMB);
}

TEST_F(Scratch, BestFitAndNoMoreThanTwiceTheRequest) {
  void* big = scratch_alloc(64 * kMB);
  void* mid = scratch_alloc(10 * kMB);
  scratch_free(big, 64 * kMB);
  scratch_free(mid, 10 * kMB);
  void* p = scratch_alloc(9 * kMB);  // both fit; the 10 MB block is the best fit
  EXPECT_EQ(p, mid);
  void* q = scratch_alloc(4 * kMB);  // the 64 MB block is more than twice 4 MB: fresh
  EXPECT_NE(q, big);
  EXPECT_EQ(scratch_stats().cached_blocks, 1u);
  scratch_free(p, 9 * kMB);
  scratch_free(q, 4 * kMB);
}

TEST_F(Scratch, SmallBlocksAreNotCached) {
  void* s = scratch_alloc(1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s) % 64, 0u);
  scratch_free(s, 1000);
  EXPECT_EQ(scratch_stats().cached_blocks, 0u);
}

TEST_F(Scratch, StaysWithinTheLimit) {
  scratch_set_limit(20 * kMB);
  void* a = scratch_alloc(12 * kMB);
  void* b = scratch_alloc(12 * kMB);
  scratch_free(a, 12 * kMB);
  scratch_free(b, 12 * kMB);  // would make 24 MB: freed instead
  EXPECT_EQ(scratch_stats().cached_blocks, 1u);
  EXPECT_LE(scratch_stats().cached_bytes, 20 * kMB);
  scratch_set_limit(4 * kMB);  // lowering the limit below the cache empties it
  EXPECT_EQ(scratch_stats().cached_bytes, 0u);
}

TEST_F(Scratch, VectorKeepsItsContentsAcrossGrowth) {
  ScratchVector<float> v(300000, 1.5f);  // 1.2 MB: from the cache
  v.resize(800000, 2.5f);
  EXPECT_EQ(v[299999], 1.5f);
  EXPECT_EQ(v[300000], 2.5f);
  ScratchVector<float> w(v);
  EXPECT_EQ(w, v);
}

TEST_F(Scratch, ManyThreads) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) {
        const size_t n = (1 + (i + t) % 5) * kMB;
        auto* p = static_cast<unsigned char*>(scratch_alloc(n));
        p[0] = p[n - 1] = static_cast<unsigned char>(i);  // the block is ours alone
        EXPECT_EQ(p[0], p[n - 1]);
        scratch_free(p, n);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_LE(scratch_stats().cached_bytes, size_t{1} << 30);
}

}  // namespace
}  // namespace dsv4
