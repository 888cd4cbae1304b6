// The one thread pool: full coverage of ranges, nesting, exceptions.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "util/error.h"
#include "util/threadpool.h"

namespace dsv4 {
namespace {

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  ThreadPool pool(4);
  for (int64_t n : {1, 2, 7, 64, 1000, 4097}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << n;
  }
}

TEST(ThreadPool, RespectsGrainAndThreadIndex) {
  ThreadPool pool(3);
  std::atomic<int> bad{0};
  pool.parallel_for(
      1000,
      [&](int64_t b, int64_t e, int t) {
        if (b % 16 != 0 || (e % 16 != 0 && e != 1000) || t < 0 || t >= 3) bad++;
      },
      16);
  EXPECT_EQ(bad.load(), 0);
}

TEST(ThreadPool, NestedCallsRunInlineOnTheCallingThread) {
  ThreadPool pool(2);
  std::atomic<int64_t> sum{0};
  pool.parallel_for(8, [&](int64_t b, int64_t e, int t) {
    for (int64_t i = b; i < e; ++i) {
      pool.parallel_for(10, [&](int64_t b2, int64_t e2, int t2) {
        EXPECT_EQ(t2, t);
        sum += e2 - b2;
      });
    }
  });
  EXPECT_EQ(sum.load(), 80);
}

TEST(ThreadPool, PropagatesTheFirstException) {
  ThreadPool pool(4);
  EXPECT_THROW(pool.parallel_for(100,
                                 [&](int64_t b, int64_t, int) {
                                   if (b == 0) fail("boom");
                                 }),
               Error);
  // The pool stays usable.
  std::atomic<int64_t> n{0};
  pool.parallel_for(100, [&](int64_t b, int64_t e, int) { n += e - b; });
  EXPECT_EQ(n.load(), 100);
}

}  // namespace
}  // namespace dsv4
