#include "model/config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/error.h"

namespace dsv4 {

namespace {

using json = nlohmann::json;

class Reader {
 public:
  Reader(const json& j, const std::string& source) : j_(j), source_(source) {}

  const json* find(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  int64_t integer(const char* key, int64_t min_value) const {
    const json* v = find(key);
    if (!v) fail(source_, ": missing required field \"", key, "\"");
    return check_int(*v, key, min_value);
  }
  int64_t integer_or(const char* key, int64_t fallback, int64_t min_value) const {
    const json* v = find(key);
    return v ? check_int(*v, key, min_value) : fallback;
  }
  double number(const char* key) const {
    const json* v = find(key);
    if (!v) fail(source_, ": missing required field \"", key, "\"");
    return check_num(*v, key);
  }
  double number_or(const char* key, double fallback) const {
    const json* v = find(key);
    return v ? check_num(*v, key) : fallback;
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_string()) fail(source_, ": field \"", key, "\" must be a string, got ", v->dump());
    return v->get<std::string>();
  }
  bool boolean_or(const char* key, bool fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(source_, ": field \"", key, "\" must be true or false");
    return v->get<bool>();
  }

 private:
  int64_t check_int(const json& v, const char* key, int64_t min_value) const {
    int64_t x = 0;
    if (v.is_number_integer()) {
      x = v.get<int64_t>();
    } else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
      x = static_cast<int64_t>(v.get<double>());
    } else {
      fail(source_, ": field \"", key, "\" must be an integer, got ", v.dump());
    }
    if (x < min_value) fail(source_, ": field \"", key, "\" must be >= ", min_value, ", got ", x);
    return x;
  }
  double check_num(const json& v, const char* key) const {
    if (!v.is_number()) fail(source_, ": field \"", key, "\" must be a number, got ", v.dump());
    double x = v.get<double>();
    if (!std::isfinite(x)) fail(source_, ": field \"", key, "\" must be finite");
    return x;
  }
  const json& j_;
  const std::string& source_;
};

bool is_pow2(int64_t x) {
  return x > 0 && (x & (x - 1)) == 0;
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const std::exception& e) {
    fail(source, ": not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(source, ": expected a JSON object");
  Reader r(j, source);
  ModelConfig c;

  const std::string model_type = r.string_or("model_type", "deepseek_v4");
  if (model_type != "deepseek_v4")
    fail(source, ": model_type \"", model_type, "\" is not supported (expected \"deepseek_v4\")");
  if (const json* a = r.find("architectures")) {
    bool ok = a->is_array() && !a->empty();
    for (const auto& x : *a) ok = ok && x.is_string() && x == "DeepseekV4ForCausalLM";
    if (!ok)
      fail(source, ": architectures ", a->dump(),
           " is not supported (expected DeepseekV4ForCausalLM)");
  }
  // Later releases (V4.1: Engram, kv_source_layer_ids) are different models.
  for (const char* k : {"engram_layer_ids", "kv_source_layer_ids"})
    if (r.find(k))
      fail(source, ": field \"", k, "\" belongs to a later model family (V4.1), not supported");

  c.vocab_size = r.integer("vocab_size", 1);
  c.dim = r.integer("hidden_size", 1);
  c.n_layers = r.integer("num_hidden_layers", 1);
  c.n_mtp_layers = r.integer_or("num_nextn_predict_layers", 0, 0);
  c.n_heads = r.integer("num_attention_heads", 1);
  c.head_dim = r.integer("head_dim", 1);
  c.rope_head_dim = r.integer("qk_rope_head_dim", 2);
  c.q_lora_rank = r.integer("q_lora_rank", 1);
  c.o_groups = r.integer("o_groups", 1);
  c.o_lora_rank = r.integer("o_lora_rank", 1);
  c.window_size = r.integer("sliding_window", 1);
  c.index_n_heads = r.integer("index_n_heads", 1);
  c.index_head_dim = r.integer("index_head_dim", 1);
  c.index_topk = r.integer("index_topk", 1);
  c.n_routed_experts = r.integer("n_routed_experts", 1);
  c.n_shared_experts = r.integer_or("n_shared_experts", 1, 0);
  c.n_activated_experts = r.integer("num_experts_per_tok", 1);
  c.moe_inter_dim = r.integer("moe_intermediate_size", 1);
  c.n_hash_layers = r.integer_or("num_hash_layers", 0, 0);
  c.norm_topk_prob = r.boolean_or("norm_topk_prob", true);
  c.route_scale = r.number_or("routed_scaling_factor", 1.0);
  c.swiglu_limit = r.number_or("swiglu_limit", 0.0);
  c.hc_mult = r.integer("hc_mult", 1);
  c.hc_sinkhorn_iters = r.integer("hc_sinkhorn_iters", 1);
  c.hc_eps = r.number_or("hc_eps", 1e-6);
  c.norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  c.compress_rope_theta = r.number_or("compress_rope_theta", 160000.0);
  c.max_position_embeddings = r.integer_or("max_position_embeddings", 1 << 20, 1);
  c.bos_token_id = r.integer_or("bos_token_id", 0, 0);
  c.eos_token_id = r.integer_or("eos_token_id", 1, 0);

  const json* ratios = r.find("compress_ratios");
  if (!ratios || !ratios->is_array())
    fail(source, ": missing required field \"compress_ratios\" (array)");
  for (const auto& v : *ratios) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0)
      fail(source, ": compress_ratios must hold non-negative integers, got ", ratios->dump());
    c.compress_ratios.push_back(v.get<int64_t>());
  }
  if (static_cast<int64_t>(c.compress_ratios.size()) != c.n_layers + c.n_mtp_layers)
    fail(source, ": compress_ratios has ", c.compress_ratios.size(),
         " entries; expected num_hidden_layers + num_nextn_predict_layers = ",
         c.n_layers + c.n_mtp_layers);
  for (size_t i = 0; i < c.compress_ratios.size(); ++i) {
    int64_t x = c.compress_ratios[i];
    if (x == 1 || (x > 0 && !is_pow2(x)))
      fail(source, ": compress_ratios[", i, "] = ", x,
           " is not supported (0 = window only, 4 = CSA, other powers of two >= 2 = HCA)");
  }

  const std::string sf = r.string_or("scoring_func", "sqrtsoftplus");
  if (sf == "sqrtsoftplus")
    c.score_func = ScoreFunc::kSqrtSoftplus;
  else if (sf == "sigmoid")
    c.score_func = ScoreFunc::kSigmoid;
  else if (sf == "softmax")
    c.score_func = ScoreFunc::kSoftmax;
  else
    fail(source, ": scoring_func \"", sf, "\" is not supported (sqrtsoftplus, sigmoid, softmax)");

  const std::string tm = r.string_or("topk_method", "noaux_tc");
  if (tm != "noaux_tc")
    fail(source, ": topk_method \"", tm, "\" is not supported (expected \"noaux_tc\")");
  const std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu")
    fail(source, ": hidden_act \"", act, "\" is not supported (expected \"silu\")");
  if (r.boolean_or("tie_word_embeddings", false))
    fail(source, ": tie_word_embeddings = true is not supported (V4 has a separate head)");
  if (r.boolean_or("attention_bias", false))
    fail(source, ": attention_bias = true is not supported");
  const int64_t kv_heads = r.integer_or("num_key_value_heads", 1, 1);
  if (kv_heads != 1)
    fail(source, ": num_key_value_heads = ", kv_heads,
         " is not supported (V4 uses one shared KV head)");

  const std::string ed = r.string_or("expert_dtype", "fp4");
  if (ed == "fp4")
    c.expert_dtype = ExpertDType::kFP4;
  else if (ed == "fp8")
    c.expert_dtype = ExpertDType::kFP8;
  else
    fail(source, ": expert_dtype \"", ed, "\" is not supported (fp4 or fp8)");

  if (const json* q = r.find("quantization_config")) {
    if (!q->is_object()) fail(source, ": quantization_config must be an object");
    auto want = [&](const char* key, const char* value) {
      if (q->contains(key) && !(*q)[key].is_null() && (*q)[key] != value)
        fail(source, ": quantization_config.", key, " = ", (*q)[key].dump(),
             " is not supported (expected \"", value, "\")");
    };
    want("quant_method", "fp8");
    want("fmt", "e4m3");
    want("activation_scheme", "dynamic");
    if (q->contains("scale_fmt") && !(*q)["scale_fmt"].is_null() && (*q)["scale_fmt"] != "ue8m0")
      fail(source, ": quantization_config.scale_fmt = ", (*q)["scale_fmt"].dump(),
           " is not supported (expected \"ue8m0\")");
    if (q->contains("weight_block_size") && (*q)["weight_block_size"] != json::array({128, 128}))
      fail(source, ": quantization_config.weight_block_size = ", (*q)["weight_block_size"].dump(),
           " is not supported (expected [128, 128])");
  }

  if (const json* rs = r.find("rope_scaling")) {
    if (!rs->is_object()) fail(source, ": rope_scaling must be an object or null");
    Reader rr(*rs, source);
    std::string type = rr.string_or("type", rr.string_or("rope_type", ""));
    if (type == "yarn") {
      c.yarn = true;
      c.rope_factor = rr.number("factor");
      c.original_seq_len = rr.integer("original_max_position_embeddings", 1);
      c.beta_fast = rr.number_or("beta_fast", 32);
      c.beta_slow = rr.number_or("beta_slow", 1);
      for (const char* k : {"mscale", "mscale_all_dim"})
        if (rr.find(k) && rr.number(k) != 0.0 && rr.number(k) != 1.0)
          fail(source, ": rope_scaling.", k, " is not supported by V4 (no YaRN mscale)");
    } else if (type != "" && type != "default") {
      fail(source, ": rope_scaling.type \"", type, "\" is not supported (expected \"yarn\")");
    }
  }

  // Structural constraints the forward pass relies on.
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) fail(source, ": unsupported dimensions: ", what);
  };
  require(c.rope_head_dim % 2 == 0, "qk_rope_head_dim must be even");
  require(c.head_dim > c.rope_head_dim, "head_dim must exceed qk_rope_head_dim");
  require(c.nope_head_dim() % 64 == 0,
          "head_dim - qk_rope_head_dim must be a multiple of 64 (FP8 KV blocks of 64)");
  require(c.n_heads % c.o_groups == 0, "num_attention_heads must be divisible by o_groups");
  require(
      c.index_head_dim > c.rope_head_dim && is_pow2(c.index_head_dim) && c.index_head_dim % 32 == 0,
      "index_head_dim must be a power of two >= 32 and exceed qk_rope_head_dim");
  require(c.n_activated_experts <= c.n_routed_experts,
          "num_experts_per_tok must not exceed n_routed_experts");
  require(c.n_shared_experts <= 1, "at most one shared expert is supported");
  require(c.dim % 32 == 0 && c.moe_inter_dim % 32 == 0,
          "hidden_size and moe_intermediate_size must be multiples of 32 (FP4 scale blocks)");
  require(c.n_hash_layers <= c.n_layers, "num_hash_layers must not exceed num_hidden_layers");
  require(c.hc_mult >= 1, "hc_mult must be >= 1");
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open model config");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path);
}

std::string model_config_to_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {"DeepseekV4ForCausalLM"};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["expert_dtype"] = c.expert_dtype == ExpertDType::kFP4 ? "fp4" : "fp8";
  j["hc_eps"] = c.hc_eps;
  j["hc_mult"] = c.hc_mult;
  j["hc_sinkhorn_iters"] = c.hc_sinkhorn_iters;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.dim;
  j["index_head_dim"] = c.index_head_dim;
  j["index_n_heads"] = c.index_n_heads;
  j["index_topk"] = c.index_topk;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["model_type"] = "deepseek_v4";
  j["moe_intermediate_size"] = c.moe_inter_dim;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["num_attention_heads"] = c.n_heads;
  j["num_experts_per_tok"] = c.n_activated_experts;
  j["num_hidden_layers"] = c.n_layers;
  j["num_hash_layers"] = c.n_hash_layers;
  j["num_key_value_heads"] = 1;
  j["num_nextn_predict_layers"] = c.n_mtp_layers;
  j["o_groups"] = c.o_groups;
  j["o_lora_rank"] = c.o_lora_rank;
  j["q_lora_rank"] = c.q_lora_rank;
  j["qk_rope_head_dim"] = c.rope_head_dim;
  j["quantization_config"] = {{"activation_scheme", "dynamic"},
                              {"fmt", "e4m3"},
                              {"quant_method", "fp8"},
                              {"scale_fmt", "ue8m0"},
                              {"weight_block_size", {128, 128}}};
  j["rms_norm_eps"] = c.norm_eps;
  if (c.yarn) {
    j["rope_scaling"] = {{"beta_fast", c.beta_fast},
                         {"beta_slow", c.beta_slow},
                         {"factor", c.rope_factor},
                         {"original_max_position_embeddings", c.original_seq_len},
                         {"type", "yarn"}};
  }
  j["rope_theta"] = c.rope_theta;
  j["routed_scaling_factor"] = c.route_scale;
  const char* sf = c.score_func == ScoreFunc::kSqrtSoftplus ? "sqrtsoftplus"
                   : c.score_func == ScoreFunc::kSigmoid    ? "sigmoid"
                                                            : "softmax";
  j["scoring_func"] = sf;
  j["sliding_window"] = c.window_size;
  j["swiglu_limit"] = c.swiglu_limit;
  j["tie_word_embeddings"] = false;
  j["topk_method"] = "noaux_tc";
  j["torch_dtype"] = "bfloat16";
  j["transformers_version"] = "4.57.1";
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  j["compress_rope_theta"] = c.compress_rope_theta;
  j["compress_ratios"] = c.compress_ratios;
  return j.dump(2) + "\n";
}

}  // namespace dsv4
