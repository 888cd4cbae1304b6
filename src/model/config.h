// Model configuration, read from a Hugging Face config.json with the field
// names DeepSeek publishes (architecture spec §2.1) and validated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsv4 {

enum class ScoreFunc { kSqrtSoftplus, kSigmoid, kSoftmax };
enum class ExpertDType { kFP4, kFP8 };

struct ModelConfig {
  // Field names follow the reference ModelArgs; comments give the HF key.
  int64_t vocab_size = 0;                // vocab_size
  int64_t dim = 0;                       // hidden_size
  int64_t n_layers = 0;                  // num_hidden_layers
  int64_t n_mtp_layers = 0;              // num_nextn_predict_layers
  int64_t n_heads = 0;                   // num_attention_heads
  int64_t head_dim = 0;                  // head_dim
  int64_t rope_head_dim = 0;             // qk_rope_head_dim
  int64_t q_lora_rank = 0;               // q_lora_rank
  int64_t o_groups = 0;                  // o_groups
  int64_t o_lora_rank = 0;               // o_lora_rank
  int64_t window_size = 0;               // sliding_window
  int64_t index_n_heads = 0;             // index_n_heads
  int64_t index_head_dim = 0;            // index_head_dim
  int64_t index_topk = 0;                // index_topk
  std::vector<int64_t> compress_ratios;  // compress_ratios: n_layers + n_mtp_layers entries
  int64_t n_routed_experts = 0;          // n_routed_experts
  int64_t n_shared_experts = 0;          // n_shared_experts
  int64_t n_activated_experts = 0;       // num_experts_per_tok
  int64_t moe_inter_dim = 0;             // moe_intermediate_size
  int64_t n_hash_layers = 0;             // num_hash_layers
  ScoreFunc score_func = ScoreFunc::kSqrtSoftplus;  // scoring_func
  bool norm_topk_prob = true;                       // norm_topk_prob
  double route_scale = 1.0;                         // routed_scaling_factor
  double swiglu_limit = 0.0;                        // swiglu_limit (0 = no clamp)
  int64_t hc_mult = 0;                              // hc_mult
  int64_t hc_sinkhorn_iters = 0;                    // hc_sinkhorn_iters
  double hc_eps = 1e-6;                             // hc_eps
  double norm_eps = 1e-6;                           // rms_norm_eps
  double rope_theta = 10000;                        // rope_theta
  double compress_rope_theta = 160000;              // compress_rope_theta
  bool yarn = false;                                // rope_scaling.type == "yarn"
  double rope_factor = 1;                           // rope_scaling.factor
  int64_t original_seq_len = 0;                     // rope_scaling.original_max_position_embeddings
  double beta_fast = 32;                            // rope_scaling.beta_fast
  double beta_slow = 1;                             // rope_scaling.beta_slow
  int64_t max_position_embeddings = 0;              // max_position_embeddings
  ExpertDType expert_dtype = ExpertDType::kFP4;     // expert_dtype
  int64_t bos_token_id = 0;                         // bos_token_id
  int64_t eos_token_id = 1;                         // eos_token_id

  // Derived.
  int64_t nope_head_dim() const { return head_dim - rope_head_dim; }
  int64_t hc_dim() const { return hc_mult * dim; }                // flattened streams
  int64_t hc_mix_dim() const { return (2 + hc_mult) * hc_mult; }  // pre + post + comb
  int64_t group_in_dim() const { return n_heads * head_dim / o_groups; }
  // Compression ratio of layer `layer` (0..n_layers-1) or of MTP block k (n_layers + k).
  int64_t ratio(int64_t layer) const { return compress_ratios.at(static_cast<size_t>(layer)); }
  bool is_csa(int64_t layer) const { return ratio(layer) == 4; }  // overlapping + indexer
  bool is_hash_layer(int64_t layer) const { return layer < n_hash_layers; }
};

// Parses and validates; throws Error naming the file and the field.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
ModelConfig load_model_config(const std::string& path);
// The HF config.json for a config (used by `dsv4 synth`).
std::string model_config_to_json(const ModelConfig& cfg);

}  // namespace dsv4
