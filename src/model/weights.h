// The model's tensors, bound by name from a checkpoint, each checked against
// the dtype and shape the config implies (architecture spec §4). Weights stay
// in their published quantized form; the structs hold views into the mmapped
// shards.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "util/safetensors.h"

namespace dsv4 {

// A linear layer's weight in its stored format.
//   kFP8:  weight F8_E4M3 [out, in], scale [ceil(out/128), ceil(in/128)] (E8M0, or F32 in Base
//   checkpoints) kFP4:  weight I8 [out, in/2] (two E2M1 codes, low nibble first), scale E8M0 [out,
//   in/32] kBF16: weight BF16 [out, in], no scale
struct QuantLinear {
  enum class Format { kFP8, kFP4, kBF16 };
  Format format = Format::kFP8;
  int64_t out = 0, in = 0;
  TensorView weight;
  TensorView scale;  // empty for kBF16
};

// mHC parameters of one sub-layer (or of a head): fn [mix, hc*D], scale [3 or 1], base [mix].
struct HyperConnection {
  TensorView fn, scale, base;
};

struct CompressorWeights {
  int64_t ratio = 0, head_dim = 0;
  bool overlap = false;   // ratio == 4: two blocks' halves pooled together
  bool rotate = false;    // indexer keys: Hadamard + FP4
  TensorView wkv, wgate;  // BF16 [coff*head_dim, D]
  TensorView ape;         // F32 (or BF16) [ratio, coff*head_dim]
  TensorView norm;        // BF16 [head_dim]
};

struct IndexerWeights {
  QuantLinear wq_b;         // FP8 [index_n_heads*index_head_dim, q_lora]
  TensorView weights_proj;  // BF16 [index_n_heads, D]
  CompressorWeights compressor;
};

struct AttentionWeights {
  int64_t ratio = 0;
  TensorView attn_sink;  // F32 [H]
  QuantLinear wq_a, wq_b, wkv, wo_a, wo_b;
  TensorView q_norm, kv_norm;
  bool has_compressor = false, has_indexer = false;
  CompressorWeights compressor;
  IndexerWeights indexer;
};

struct ExpertWeights {
  QuantLinear w1, w2, w3;
};

struct MoeWeights {
  TensorView gate_weight;  // BF16 [E, D]
  TensorView gate_bias;    // F32 [E] (non-hash layers)
  TensorView tid2eid;      // I64 [vocab, k] (hash layers)
  bool hash = false;
  std::vector<ExpertWeights> experts;
  bool has_shared = false;
  ExpertWeights shared;
};

struct BlockWeights {
  int64_t layer_id = 0;
  HyperConnection hc_attn, hc_ffn;
  TensorView attn_norm, ffn_norm;
  AttentionWeights attn;
  MoeWeights ffn;
};

struct MtpWeights {
  BlockWeights block;
  QuantLinear e_proj, h_proj;
  TensorView enorm, hnorm, norm;
  HyperConnection hc_head;
};

struct ModelWeights {
  TensorView embed;  // BF16 [vocab, D]
  TensorView head;   // BF16 [vocab, D]
  TensorView norm;   // BF16 [D]
  HyperConnection hc_head;
  std::vector<BlockWeights> layers;
  std::vector<MtpWeights> mtp;
};

// What the config implies for one tensor.
struct TensorSpec {
  std::string name;
  std::vector<DType> dtypes;  // accepted dtypes; the first is what `dsv4 synth` writes
  std::vector<int64_t> shape;
  // Role, for synthesis and statistics.
  enum class Role { kWeight, kScale, kNorm, kBias, kHcFn, kHcScale, kHcBase, kSink, kApe, kTable };
  Role role = Role::kWeight;
  int64_t fan_in = 0;  // for kWeight: the input width (to scale random init)
};

// Every tensor a checkpoint with this config must hold, in a stable order.
std::vector<TensorSpec> expected_tensors(const ModelConfig& cfg);

// Binds every tensor, validating presence, dtype and shape, and rejects extra
// tensors. Errors name the shard file and the tensor.
ModelWeights bind_weights(const Checkpoint& ckpt);

}  // namespace dsv4
