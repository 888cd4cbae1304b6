// `dsv4 inspect`: what a checkpoint holds and what it costs. Parameter counts
// (total and active per token), weight bytes read per decoded token, KV-cache
// bytes per token of context (architecture spec §6.3), tensors by dtype. The
// counting works from a ModelConfig alone (tensors as `dsv4 synth` writes them)
// or from an opened checkpoint (its real dtypes), so that benchmarks and tests
// can use it without weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "util/safetensors.h"

namespace dsv4 {

// One stored tensor, as far as counting is concerned.
struct TensorStat {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
};

struct LayerSummary {
  int64_t layer_id = 0;  // n_layers + k for MTP block k
  bool mtp = false;
  int64_t ratio = 0;
  std::string attention;  // "window", "CSA" (ratio 4: overlap + indexer) or "HCA"
  bool hash_routing = false;
  int64_t params = 0, params_active = 0;
  uint64_t bytes = 0, decode_bytes = 0;
};

struct DTypeSummary {
  std::string dtype;
  int64_t count = 0;
  uint64_t bytes = 0;
};

// Counting rules (also printed by `dsv4 inspect`):
//  * Parameters are logical weight elements: a packed FP4 byte counts 2; the
//    quantization scales and the hash-routing table tid2eid are not parameters.
//  * "Main model" = embedding, the n_layers blocks, final norm, hc_head and
//    head; the MTP block(s) are reported separately (they only serve
//    speculative decoding). The published 284B / 1.6T totals are main-model.
//  * Active per token: everything but the routed experts, plus
//    num_experts_per_tok of n_routed_experts per layer. The embedding matrix is
//    counted whole, as in the total.
//  * Decode bytes per token: the stored bytes (scales included) one decoded
//    token reads: all non-expert tensors, the shared expert, the active routed
//    experts, but only one row of the embedding and of tid2eid.
struct ModelSummary {
  ModelConfig config;
  std::vector<LayerSummary> layers;  // the n_layers blocks, then the MTP blocks
  int64_t num_tensors = 0;
  uint64_t bytes_total = 0;  // every tensor, MTP included (= index metadata.total_size)
  uint64_t bytes_mtp = 0;
  int64_t params_total = 0;           // main model
  int64_t params_active = 0;          // main model, per token
  int64_t params_embed = 0;           // embed.weight
  int64_t params_head = 0;            // head.weight
  int64_t params_routed_experts = 0;  // main model, all routed experts
  int64_t params_mtp = 0;
  int64_t params_mtp_active = 0;
  uint64_t decode_bytes_per_token = 0;      // main model
  uint64_t decode_bytes_mtp_per_token = 0;  // one MTP block step
  // KV cache (spec §6.3 layout).
  int64_t kv_row_bytes = 0;               // one compressed (or window) KV row
  int64_t indexer_key_bytes = 0;          // one CSA indexer key
  double kv_main_bytes_per_token = 0;     // sum over compressed layers of row / ratio
  double kv_indexer_bytes_per_token = 0;  // sum over CSA layers of key / ratio
  double kv_bytes_per_token = 0;          // main + indexer
  uint64_t window_bytes = 0;              // fixed: n_layers x sliding_window rows (per sequence)
  std::vector<DTypeSummary> dtypes;
};

// KV row of the production packed layout: (head_dim - rope) FP8 NoPE values,
// rope BF16 values, one UE8M0 per 64 NoPE values padded to 8 bytes
// (448 + 128 + 7 + 1 = 584 for V4).
int64_t kv_row_bytes(const ModelConfig& cfg);
// Indexer key: index_head_dim FP4 values + one UE8M0 per 32 (64 + 4 = 68 for V4).
int64_t indexer_key_bytes(const ModelConfig& cfg);

// The tensors `dsv4 synth` writes for a config (no files needed).
std::vector<TensorStat> synth_tensor_stats(const ModelConfig& cfg);
std::vector<TensorStat> checkpoint_tensor_stats(const Checkpoint& ckpt);

ModelSummary summarize(const ModelConfig& cfg, const std::vector<TensorStat>& tensors);
inline ModelSummary summarize_config(const ModelConfig& cfg) {
  return summarize(cfg, synth_tensor_stats(cfg));
}

std::string summary_to_text(const ModelSummary& s);
std::string summary_to_json(const ModelSummary& s);  // pretty-printed JSON object

}  // namespace dsv4
