// The golden README §7 acceptance figures, asserted on a TraceComparison.
// Shared by the library tests (tests/model) and the CLI tests (tests/cli).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "model/trace.h"

namespace dsv4::testing {

inline std::string golden_dir() {
  return std::string(DSV4_TEST_DATA) + "/golden/tiny-a";
}

// Teacher-forced tolerances (golden README §7).
inline void expect_teacher_forced_ok(const TraceComparison& c) {
  EXPECT_LE(c.head_logits_rel_max, 1e-5) << "head-only logits";
  EXPECT_TRUE(c.head_top1_all) << "head-only logits top-1";
  for (size_t l = 0; l < c.prefill_block_rel.size(); ++l) {
    SCOPED_TRACE("block " + std::to_string(l));
    EXPECT_LE(c.prefill_block_rel[l], 2e-2) << "prefill block output";
    EXPECT_LE(c.decode_block_rel_max[l], 0.1) << "decode block output";
    EXPECT_LE(c.attn_rel[l], 8e-2) << "attn_out";
    EXPECT_LE(c.ffn_rel[l], 8e-2) << "ffn_out";
    if (c.indexer_agree[l] >= 0) {
      EXPECT_GE(c.indexer_agree[l], 0.99) << "indexer selections";
    }
    EXPECT_GE(c.moe_agree[l], 0.99) << "MoE selections";
  }
  EXPECT_LE(c.mtp_rel_max, 2e-2) << "MTP logits";
  EXPECT_TRUE(c.mtp_top1) << "MTP top-1";
}

// Free-running sanity figures (golden README §7).
inline void expect_free_running_ok(const TraceComparison& c) {
  EXPECT_LE(c.logits_rel_median, 0.15) << "free-running logits median rel L2";
  EXPECT_GE(c.logits_top1_fraction, 0.65) << "free-running top-1 agreement";
}

}  // namespace dsv4::testing
