#include "model/weights.h"

#include <set>

#include "util/error.h"

namespace dsv4 {

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Walks the model's tensor layout once; each visit either records the spec
// (expected_tensors) or fetches and validates the tensor (bind_weights). Both
// callers share this single description of the checkpoint format.
class Walker {
 public:
  using Role = TensorSpec::Role;
  Walker(const ModelConfig& cfg, const Checkpoint* ckpt) : cfg_(cfg), ckpt_(ckpt) {}

  std::vector<TensorSpec> specs;
  std::set<std::string> used;

  TensorView tensor(const std::string& name, std::vector<DType> dtypes, std::vector<int64_t> shape,
                    Role role, int64_t fan_in = 0) {
    specs.push_back({name, dtypes, shape, role, fan_in});
    if (!ckpt_) return {};
    used.insert(name);
    const TensorView* t = ckpt_->find(name);
    if (!t)
      fail(ckpt_->dir(), ": tensor ", name, " is missing from the checkpoint (expected ",
           dtype_name(dtypes[0]), " ", shape_to_string(shape), ")");
    bool dtype_ok = false;
    for (DType d : dtypes) dtype_ok = dtype_ok || d == t->dtype;
    if (!dtype_ok) {
      std::string want;
      for (DType d : dtypes) want += (want.empty() ? "" : " or ") + std::string(dtype_name(d));
      fail(t->file, ": tensor ", name, " has dtype ", dtype_name(t->dtype), ", expected ", want);
    }
    if (t->shape != shape)
      fail(t->file, ": tensor ", name, " has shape ", t->shape_str(), ", expected ",
           shape_to_string(shape));
    return *t;
  }

  QuantLinear fp8_linear(const std::string& prefix, int64_t out, int64_t in) {
    QuantLinear l;
    l.format = QuantLinear::Format::kFP8;
    l.out = out;
    l.in = in;
    l.weight = tensor(prefix + ".weight", {DType::F8_E4M3}, {out, in}, Role::kWeight, in);
    l.scale = tensor(prefix + ".scale", {DType::F8_E8M0, DType::F32},
                     {ceil_div(out, 128), ceil_div(in, 128)}, Role::kScale);
    return l;
  }

  QuantLinear expert_linear(const std::string& prefix, int64_t out, int64_t in) {
    if (cfg_.expert_dtype == ExpertDType::kFP8) return fp8_linear(prefix, out, in);
    QuantLinear l;
    l.format = QuantLinear::Format::kFP4;
    l.out = out;
    l.in = in;
    l.weight = tensor(prefix + ".weight", {DType::I8}, {out, in / 2}, Role::kWeight, in);
    l.scale = tensor(prefix + ".scale", {DType::F8_E8M0}, {out, in / 32}, Role::kScale);
    return l;
  }

  TensorView norm(const std::string& name, int64_t n) {
    return tensor(name, {DType::BF16, DType::F32}, {n}, Role::kNorm);
  }

  HyperConnection hc(const std::string& prefix, int64_t mix, int64_t nscale) {
    HyperConnection h;
    h.fn = tensor(prefix + "_fn", {DType::F32}, {mix, cfg_.hc_dim()}, Role::kHcFn, cfg_.hc_dim());
    h.scale = tensor(prefix + "_scale", {DType::F32}, {nscale}, Role::kHcScale);
    h.base = tensor(prefix + "_base", {DType::F32}, {mix}, Role::kHcBase);
    return h;
  }

  CompressorWeights compressor(const std::string& prefix, int64_t ratio, int64_t head_dim,
                               bool rotate) {
    CompressorWeights c;
    c.ratio = ratio;
    c.head_dim = head_dim;
    c.overlap = ratio == 4;
    c.rotate = rotate;
    const int64_t width = (c.overlap ? 2 : 1) * head_dim;
    c.ape = tensor(prefix + ".ape", {DType::F32, DType::BF16}, {ratio, width}, Role::kApe);
    c.wkv =
        tensor(prefix + ".wkv.weight", {DType::BF16}, {width, cfg_.dim}, Role::kWeight, cfg_.dim);
    c.wgate =
        tensor(prefix + ".wgate.weight", {DType::BF16}, {width, cfg_.dim}, Role::kWeight, cfg_.dim);
    c.norm = norm(prefix + ".norm.weight", head_dim);
    return c;
  }

  AttentionWeights attention(const std::string& p, int64_t ratio) {
    const auto& c = cfg_;
    AttentionWeights a;
    a.ratio = ratio;
    a.attn_sink = tensor(p + ".attn_sink", {DType::F32}, {c.n_heads}, Role::kSink);
    a.wq_a = fp8_linear(p + ".wq_a", c.q_lora_rank, c.dim);
    a.q_norm = norm(p + ".q_norm.weight", c.q_lora_rank);
    a.wq_b = fp8_linear(p + ".wq_b", c.n_heads * c.head_dim, c.q_lora_rank);
    a.wkv = fp8_linear(p + ".wkv", c.head_dim, c.dim);
    a.kv_norm = norm(p + ".kv_norm.weight", c.head_dim);
    a.wo_a = fp8_linear(p + ".wo_a", c.o_groups * c.o_lora_rank, c.group_in_dim());
    a.wo_b = fp8_linear(p + ".wo_b", c.dim, c.o_groups * c.o_lora_rank);
    if (ratio > 0) {
      a.has_compressor = true;
      a.compressor = compressor(p + ".compressor", ratio, c.head_dim, false);
    }
    if (ratio == 4) {
      a.has_indexer = true;
      a.indexer.wq_b =
          fp8_linear(p + ".indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank);
      a.indexer.weights_proj = tensor(p + ".indexer.weights_proj.weight", {DType::BF16},
                                      {c.index_n_heads, c.dim}, Role::kWeight, c.dim);
      a.indexer.compressor = compressor(p + ".indexer.compressor", ratio, c.index_head_dim, true);
    }
    return a;
  }

  ExpertWeights expert(const std::string& p, bool routed) {
    const auto& c = cfg_;
    ExpertWeights e;
    if (routed) {
      e.w1 = expert_linear(p + ".w1", c.moe_inter_dim, c.dim);
      e.w2 = expert_linear(p + ".w2", c.dim, c.moe_inter_dim);
      e.w3 = expert_linear(p + ".w3", c.moe_inter_dim, c.dim);
    } else {
      e.w1 = fp8_linear(p + ".w1", c.moe_inter_dim, c.dim);
      e.w2 = fp8_linear(p + ".w2", c.dim, c.moe_inter_dim);
      e.w3 = fp8_linear(p + ".w3", c.moe_inter_dim, c.dim);
    }
    return e;
  }

  MoeWeights moe(const std::string& p, int64_t layer_id) {
    const auto& c = cfg_;
    MoeWeights m;
    m.hash = layer_id < c.n_hash_layers;
    m.gate_weight = tensor(p + ".gate.weight", {DType::BF16}, {c.n_routed_experts, c.dim},
                           Role::kWeight, c.dim);
    if (m.hash) {
      m.tid2eid = tensor(p + ".gate.tid2eid", {DType::I64, DType::I32},
                         {c.vocab_size, c.n_activated_experts}, Role::kTable);
      if (ckpt_) check_expert_table(m.tid2eid);
    } else
      m.gate_bias = tensor(p + ".gate.bias", {DType::F32}, {c.n_routed_experts}, Role::kBias);
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      m.experts.push_back(expert(p + ".experts." + std::to_string(e), true));
    if (c.n_shared_experts > 0) {
      m.has_shared = true;
      m.shared = expert(p + ".shared_experts", false);
    }
    return m;
  }

  // Hash routing indexes experts by these entries: reject out-of-range ones at
  // load rather than reading outside the expert list later.
  void check_expert_table(const TensorView& t) const {
    const int64_t n = t.numel(), k = cfg_.n_activated_experts;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t e = t.dtype == DType::I64 ? t.at<int64_t>(i) : t.at<int32_t>(i);
      if (e < 0 || e >= cfg_.n_routed_experts)
        fail(t.file, ": tensor ", t.name, " maps token ", i / k, " to expert ", e, ", outside [0, ",
             cfg_.n_routed_experts, ")");
    }
  }

  BlockWeights block(const std::string& p, int64_t layer_id) {
    BlockWeights b;
    b.layer_id = layer_id;
    b.attn_norm = norm(p + ".attn_norm.weight", cfg_.dim);
    b.ffn_norm = norm(p + ".ffn_norm.weight", cfg_.dim);
    b.hc_attn = hc(p + ".hc_attn", cfg_.hc_mix_dim(), 3);
    b.hc_ffn = hc(p + ".hc_ffn", cfg_.hc_mix_dim(), 3);
    b.attn = attention(p + ".attn", cfg_.ratio(layer_id));
    b.ffn = moe(p + ".ffn", layer_id);
    return b;
  }

  ModelWeights model() {
    const auto& c = cfg_;
    ModelWeights w;
    w.embed = tensor("embed.weight", {DType::BF16}, {c.vocab_size, c.dim}, Role::kWeight, 1);
    for (int64_t i = 0; i < c.n_layers; ++i)
      w.layers.push_back(block("layers." + std::to_string(i), i));
    w.norm = norm("norm.weight", c.dim);
    w.hc_head = hc("hc_head", c.hc_mult, 1);
    w.head = tensor("head.weight", {DType::BF16}, {c.vocab_size, c.dim}, Role::kWeight, c.dim);
    for (int64_t k = 0; k < c.n_mtp_layers; ++k) {
      const std::string p = "mtp." + std::to_string(k);
      MtpWeights m;
      m.block = block(p, c.n_layers + k);
      m.e_proj = fp8_linear(p + ".e_proj", c.dim, c.dim);
      m.h_proj = fp8_linear(p + ".h_proj", c.dim, c.dim);
      m.enorm = norm(p + ".enorm.weight", c.dim);
      m.hnorm = norm(p + ".hnorm.weight", c.dim);
      m.norm = norm(p + ".norm.weight", c.dim);
      m.hc_head = hc(p + ".hc_head", c.hc_mult, 1);
      w.mtp.push_back(std::move(m));
    }
    return w;
  }

 private:
  const ModelConfig& cfg_;
  const Checkpoint* ckpt_;
};

}  // namespace

std::vector<TensorSpec> expected_tensors(const ModelConfig& cfg) {
  Walker w(cfg, nullptr);
  w.model();
  return std::move(w.specs);
}

ModelWeights bind_weights(const Checkpoint& ckpt) {
  Walker w(ckpt.config(), &ckpt);
  ModelWeights m = w.model();
  for (const auto& [name, t] : ckpt.tensors())
    if (!w.used.count(name))
      fail(t->file, ": unexpected tensor ", name,
           " (not part of a DeepSeek V4 checkpoint with this config.json)");
  return m;
}

}  // namespace dsv4
