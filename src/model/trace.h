// Replaying a golden scenario (tests/data/golden/README.md §4–§5) and
// comparing the result with the golden outputs (§7). Used by `dsv4 trace`
// and by the golden tests.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/model.h"
#include "util/safetensors.h"

namespace dsv4 {

struct TraceTensor {
  std::vector<int64_t> shape;
  bool is_int = false;
  std::vector<float> f32;
  std::vector<int32_t> i32;
};
using TraceTensors = std::map<std::string, TraceTensor>;

struct TraceOptions {
  // Teacher forcing: every block runs on the golden output of the previous
  // block (its caches built from those inputs) and the logits come from the
  // golden final streams. Otherwise the ordinary forward pass.
  bool teacher_forced = true;
  int64_t chunk = 0;  // prompt chunk size; 0 = the whole prompt at once
};

// Replays the scenario of `golden` (its `tokens`; prompt length from
// prefill.hidden.layer0) and returns what dsv4 computes, under the golden
// tensor names.
TraceTensors run_trace(const Model& model, const SafetensorsFile& golden,
                       const TraceOptions& options);
void write_trace(const TraceTensors& tensors, const std::string& path);

// The golden README §7 figures for one trace. Rows are skipped as §7 says
// (indexer gap < 1e-2, MoE gap < 1e-3 of the compared block).
struct TraceComparison {
  bool teacher_forced = true;
  // Head-only logits (teacher-forced): worst rel L2 and top-1 agreement.
  double head_logits_rel_max = 0;
  bool head_top1_all = true;
  std::vector<double> prefill_block_rel;     // per block
  std::vector<double> decode_block_rel_max;  // per block, worst unskipped step
  std::vector<double> attn_rel, ffn_rel;     // per block, at prefill.sub_positions
  std::vector<double> indexer_agree;         // per block (CSA; −1 elsewhere), fraction of rows
  std::vector<double> moe_agree;             // per block
  std::vector<int64_t> skipped_prefill, skipped_decode;  // per block
  double mtp_rel_max = 0;
  bool mtp_top1 = true;
  double mtp_hidden_rel_max = 0;
  // All logits vectors (1 + T), as the free-running check uses them.
  double logits_rel_median = 0;
  double logits_top1_fraction = 0;
  std::string summary() const;
};

// `ours` and `golden` hold the same tensor names (ours from write_trace).
TraceComparison compare_trace(const SafetensorsFile& golden, const SafetensorsFile& ours,
                              bool teacher_forced);

}  // namespace dsv4
