#include "model/inspect.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "model/synth.h"
#include "model/weights.h"
#include "util/error.h"

namespace dsv4 {

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool starts_with(const std::string& s, const std::string& p) {
  return s.compare(0, p.size(), p) == 0;
}

// Which block a tensor belongs to: 0..n_layers-1, n_layers + k for mtp.k, -1 for top level.
int64_t block_of(const std::string& name, const ModelConfig& cfg) {
  auto index_after = [&](const std::string& prefix) -> int64_t {
    if (!starts_with(name, prefix)) return -1;
    size_t end = name.find('.', prefix.size());
    if (end == std::string::npos || end == prefix.size()) return -1;
    int64_t v = 0;
    for (size_t i = prefix.size(); i < end; ++i) {
      if (name[i] < '0' || name[i] > '9') return -1;
      v = v * 10 + (name[i] - '0');
    }
    return v;
  };
  if (int64_t i = index_after("layers."); i >= 0) return i;
  if (int64_t k = index_after("mtp."); k >= 0) return cfg.n_layers + k;
  return -1;
}

std::string fmt_count(double x) {
  char buf[64];
  if (x >= 1e12)
    std::snprintf(buf, sizeof buf, "%.3fT", x / 1e12);
  else if (x >= 1e9)
    std::snprintf(buf, sizeof buf, "%.3fB", x / 1e9);
  else if (x >= 1e6)
    std::snprintf(buf, sizeof buf, "%.3fM", x / 1e6);
  else if (x >= 1e3)
    std::snprintf(buf, sizeof buf, "%.3fK", x / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

std::string fmt_bytes(double x) {
  char buf[64];
  if (x >= 1e9)
    std::snprintf(buf, sizeof buf, "%.3f GB", x / 1e9);
  else if (x >= 1e6)
    std::snprintf(buf, sizeof buf, "%.3f MB", x / 1e6);
  else if (x >= 1e3)
    std::snprintf(buf, sizeof buf, "%.3f kB", x / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", x);
  return buf;
}

std::string attention_kind(int64_t ratio) {
  return ratio == 0 ? "window" : ratio == 4 ? "CSA" : "HCA";
}

}  // namespace

int64_t kv_row_bytes(const ModelConfig& cfg) {
  const int64_t nope = cfg.nope_head_dim();
  const int64_t scales = (nope + 63) / 64;
  return nope + 2 * cfg.rope_head_dim + (scales + 7) / 8 * 8;
}

int64_t indexer_key_bytes(const ModelConfig& cfg) {
  return cfg.index_head_dim / 2 + (cfg.index_head_dim + 31) / 32;
}

std::vector<TensorStat> synth_tensor_stats(const ModelConfig& cfg) {
  std::vector<TensorStat> out;
  for (const TensorSpec& s : expected_tensors(cfg)) {
    const DType dt = synth_dtype(s, cfg);
    out.push_back({s.name, dt, s.shape, static_cast<uint64_t>(numel(s.shape)) * dtype_size(dt)});
  }
  return out;
}

std::vector<TensorStat> checkpoint_tensor_stats(const Checkpoint& ckpt) {
  std::vector<TensorStat> out;
  for (const auto& [name, t] : ckpt.tensors()) out.push_back({name, t->dtype, t->shape, t->nbytes});
  return out;
}

ModelSummary summarize(const ModelConfig& cfg, const std::vector<TensorStat>& tensors) {
  using Role = TensorSpec::Role;
  ModelSummary s;
  s.config = cfg;
  std::map<std::string, Role> roles;
  for (const TensorSpec& spec : expected_tensors(cfg)) roles[spec.name] = spec.role;

  const int64_t blocks = cfg.n_layers + cfg.n_mtp_layers;
  s.layers.resize(static_cast<size_t>(blocks));
  std::vector<int64_t> routed_params(static_cast<size_t>(blocks), 0);
  std::vector<uint64_t> routed_bytes(static_cast<size_t>(blocks), 0);
  for (int64_t i = 0; i < blocks; ++i) {
    LayerSummary& l = s.layers[static_cast<size_t>(i)];
    l.layer_id = i;
    l.mtp = i >= cfg.n_layers;
    l.ratio = cfg.ratio(i);
    l.attention = attention_kind(l.ratio);
    l.hash_routing = cfg.is_hash_layer(i);
  }

  std::map<std::string, DTypeSummary> by_dtype;
  int64_t top_params = 0;
  uint64_t top_decode = 0;
  for (const TensorStat& t : tensors) {
    auto r = roles.find(t.name);
    const Role role = r == roles.end() ? Role::kWeight : r->second;
    const bool routed = t.name.find(".ffn.experts.") != std::string::npos;
    int64_t params = 0;
    if (role != Role::kScale && role != Role::kTable)
      params = numel(t.shape) * (t.dtype == DType::I8 && role == Role::kWeight ? 2 : 1);
    // One token reads one row of a lookup table, all of every other tensor.
    const bool lookup = role == Role::kTable || t.name == "embed.weight";
    const uint64_t decode =
        lookup && !t.shape.empty() && t.shape[0] > 0 ? t.nbytes / t.shape[0] : t.nbytes;

    auto& d = by_dtype[std::string(dtype_name(t.dtype))];
    d.dtype = dtype_name(t.dtype);
    d.count++;
    d.bytes += t.nbytes;
    s.num_tensors++;
    s.bytes_total += t.nbytes;
    if (t.name == "embed.weight") s.params_embed += params;
    if (t.name == "head.weight") s.params_head += params;

    const int64_t b = block_of(t.name, cfg);
    if (b < 0 || b >= blocks) {
      top_params += params;
      top_decode += decode;
      continue;
    }
    LayerSummary& l = s.layers[static_cast<size_t>(b)];
    l.params += params;
    l.bytes += t.nbytes;
    if (routed) {
      routed_params[static_cast<size_t>(b)] += params;
      routed_bytes[static_cast<size_t>(b)] += t.nbytes;
    } else {
      l.params_active += params;
      l.decode_bytes += decode;
    }
  }

  // All routed experts of a layer have one size, so k of E is exact.
  const int64_t k = cfg.n_activated_experts, e = cfg.n_routed_experts;
  s.params_total = s.params_active = top_params;
  s.decode_bytes_per_token = top_decode;
  for (int64_t i = 0; i < blocks; ++i) {
    LayerSummary& l = s.layers[static_cast<size_t>(i)];
    l.params_active += routed_params[static_cast<size_t>(i)] * k / e;
    l.decode_bytes +=
        routed_bytes[static_cast<size_t>(i)] * static_cast<uint64_t>(k) / static_cast<uint64_t>(e);
    if (l.mtp) {
      s.params_mtp += l.params;
      s.params_mtp_active += l.params_active;
      s.bytes_mtp += l.bytes;
      s.decode_bytes_mtp_per_token += l.decode_bytes;
    } else {
      s.params_total += l.params;
      s.params_active += l.params_active;
      s.params_routed_experts += routed_params[static_cast<size_t>(i)];
      s.decode_bytes_per_token += l.decode_bytes;
    }
  }

  s.kv_row_bytes = kv_row_bytes(cfg);
  s.indexer_key_bytes = indexer_key_bytes(cfg);
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const int64_t ratio = cfg.ratio(i);
    if (ratio <= 0) continue;
    s.kv_main_bytes_per_token += static_cast<double>(s.kv_row_bytes) / ratio;
    if (cfg.is_csa(i))
      s.kv_indexer_bytes_per_token += static_cast<double>(s.indexer_key_bytes) / ratio;
  }
  s.kv_bytes_per_token = s.kv_main_bytes_per_token + s.kv_indexer_bytes_per_token;
  s.window_bytes = static_cast<uint64_t>(cfg.n_layers * cfg.window_size * s.kv_row_bytes);

  for (auto& [name, d] : by_dtype) s.dtypes.push_back(d);
  std::stable_sort(s.dtypes.begin(), s.dtypes.end(),
                   [](const DTypeSummary& a, const DTypeSummary& b) { return a.bytes > b.bytes; });
  return s;
}

std::string summary_to_text(const ModelSummary& s) {
  const ModelConfig& c = s.config;
  std::string o;
  auto line = [&](const std::string& text) { o += text + "\n"; };
  auto kv = [&](const char* key, const std::string& value) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "  %-28s %s", key, value.c_str());
    line(buf);
  };
  auto n = [](int64_t x) { return std::to_string(x); };
  line("Architecture");
  kv("vocab_size", n(c.vocab_size));
  kv("hidden_size", n(c.dim));
  kv("layers (+ MTP)", n(c.n_layers) + " (+ " + n(c.n_mtp_layers) + ")");
  kv("attention heads x head_dim", n(c.n_heads) + " x " + n(c.head_dim) + " (rope " +
                                       n(c.rope_head_dim) + ", one shared KV head)");
  kv("q_lora_rank", n(c.q_lora_rank));
  kv("o_groups x o_lora_rank", n(c.o_groups) + " x " + n(c.o_lora_rank));
  kv("sliding_window", n(c.window_size));
  kv("indexer",
     n(c.index_n_heads) + " heads x " + n(c.index_head_dim) + ", top-" + n(c.index_topk));
  kv("routed experts", n(c.n_routed_experts) + " (" + n(c.n_activated_experts) +
                           " per token), shared " + n(c.n_shared_experts) + ", inter " +
                           n(c.moe_inter_dim));
  kv("expert dtype", c.expert_dtype == ExpertDType::kFP4 ? "fp4 (packed e2m1, UE8M0 per 32)"
                                                         : "fp8 (e4m3, 128x128 block scales)");
  kv("hash-routed layers", n(c.n_hash_layers));
  kv("hyper-connections",
     n(c.hc_mult) + " streams, " + n(c.hc_sinkhorn_iters) + " Sinkhorn iterations");
  char buf[256];
  std::snprintf(buf, sizeof buf, "%g (compressed: %g)%s", c.rope_theta, c.compress_rope_theta,
                c.yarn ? "" : ", no YaRN");
  kv("rope_theta", buf);
  if (c.yarn) {
    std::snprintf(buf, sizeof buf, "factor %g, original %lld, beta %g/%g", c.rope_factor,
                  static_cast<long long>(c.original_seq_len), c.beta_fast, c.beta_slow);
    kv("YaRN", buf);
  }

  line("");
  line("Layer schedule");
  int64_t window = 0, csa = 0, hca = 0;
  for (const LayerSummary& l : s.layers) {
    std::snprintf(buf, sizeof buf, "  %-8s ratio %-4lld %-7s %-7s params %-10s active %s",
                  l.mtp ? ("mtp." + std::to_string(l.layer_id - c.n_layers)).c_str()
                        : ("layer " + std::to_string(l.layer_id)).c_str(),
                  static_cast<long long>(l.ratio), l.attention.c_str(),
                  l.hash_routing ? "hash" : "score",
                  fmt_count(static_cast<double>(l.params)).c_str(),
                  fmt_count(static_cast<double>(l.params_active)).c_str());
    line(buf);
    if (!l.mtp) (l.ratio == 0 ? window : l.ratio == 4 ? csa : hca)++;
  }
  line("  main layers: " + n(window) + " window-only, " + n(csa) + " CSA, " + n(hca) + " HCA");

  line("");
  line("Parameters (logical weights; packed FP4 byte = 2; scales and tid2eid excluded)");
  kv("total (main model)",
     fmt_count(static_cast<double>(s.params_total)) + " (" + n(s.params_total) + ")");
  kv("active per token", fmt_count(static_cast<double>(s.params_active)) + " (" +
                             n(s.params_active) + "; embedding counted whole)");
  kv("  of which embedding", fmt_count(static_cast<double>(s.params_embed)));
  kv("  of which head",
     fmt_count(static_cast<double>(s.params_head)) + " (the head is read whole for every token)");
  kv("routed experts (all)", fmt_count(static_cast<double>(s.params_routed_experts)));
  kv("MTP block(s), separate", fmt_count(static_cast<double>(s.params_mtp)) + " total, " +
                                   fmt_count(static_cast<double>(s.params_mtp_active)) + " active");

  line("");
  line("Bytes");
  kv("stored tensors", fmt_bytes(static_cast<double>(s.bytes_total)) + " (" +
                           n(static_cast<int64_t>(s.bytes_total)) + ", MTP " +
                           fmt_bytes(static_cast<double>(s.bytes_mtp)) + ")");
  kv("read per decoded token", fmt_bytes(static_cast<double>(s.decode_bytes_per_token)) + " (" +
                                   n(static_cast<int64_t>(s.decode_bytes_per_token)) +
                                   "; main model, scales incl., one embedding row)");
  kv("  + one MTP step", fmt_bytes(static_cast<double>(s.decode_bytes_mtp_per_token)));

  line("");
  line("KV cache (spec 6.3 layout)");
  std::snprintf(buf, sizeof buf, "%lld B = %lld FP8 NoPE + %lld BF16 RoPE + UE8M0 per 64 (pad 8)",
                static_cast<long long>(s.kv_row_bytes), static_cast<long long>(c.nope_head_dim()),
                static_cast<long long>(2 * c.rope_head_dim));
  kv("KV row", buf);
  std::snprintf(buf, sizeof buf, "%lld B = %lld FP4 + UE8M0 per 32",
                static_cast<long long>(s.indexer_key_bytes),
                static_cast<long long>(c.index_head_dim / 2));
  kv("indexer key", buf);
  line("  per token of context = sum over layers with ratio r > 0 of row/r, + key/4 per CSA layer");
  std::snprintf(buf, sizeof buf, "%.2f B", s.kv_main_bytes_per_token);
  kv("compressed KV per token", buf);
  std::snprintf(buf, sizeof buf, "%.2f B", s.kv_indexer_bytes_per_token);
  kv("indexer keys per token", buf);
  std::snprintf(buf, sizeof buf, "%.2f B", s.kv_bytes_per_token);
  kv("total per token", buf);
  kv("fixed window (per sequence)", fmt_bytes(static_cast<double>(s.window_bytes)) + " (" +
                                        n(c.n_layers) + " layers x " + n(c.window_size) +
                                        " rows x " + n(s.kv_row_bytes) + " B)");

  line("");
  line("Tensors by dtype");
  for (const DTypeSummary& d : s.dtypes) {
    std::snprintf(buf, sizeof buf, "  %-8s %7lld tensors  %s", d.dtype.c_str(),
                  static_cast<long long>(d.count), fmt_bytes(static_cast<double>(d.bytes)).c_str());
    line(buf);
  }
  std::snprintf(buf, sizeof buf, "  %-8s %7lld tensors  %s", "all",
                static_cast<long long>(s.num_tensors),
                fmt_bytes(static_cast<double>(s.bytes_total)).c_str());
  line(buf);
  return o;
}

std::string summary_to_json(const ModelSummary& s) {
  const ModelConfig& c = s.config;
  nlohmann::ordered_json j;
  j["config"] = nlohmann::ordered_json::parse(model_config_to_json(c));
  auto& layers = j["layers"] = nlohmann::ordered_json::array();
  for (const LayerSummary& l : s.layers)
    layers.push_back({{"layer_id", l.layer_id},
                      {"mtp", l.mtp},
                      {"compress_ratio", l.ratio},
                      {"attention", l.attention},
                      {"routing", l.hash_routing ? "hash" : "score"},
                      {"params", l.params},
                      {"params_active", l.params_active},
                      {"bytes", l.bytes},
                      {"decode_bytes", l.decode_bytes}});
  j["params"] = {{"total", s.params_total},
                 {"active_per_token", s.params_active},
                 {"embedding", s.params_embed},
                 {"head", s.params_head},
                 {"routed_experts", s.params_routed_experts},
                 {"mtp", s.params_mtp},
                 {"mtp_active", s.params_mtp_active},
                 {"convention",
                  "main model (MTP separate); packed FP4 byte = 2 params; scales and tid2eid "
                  "excluded; active = all but routed experts + num_experts_per_tok of "
                  "n_routed_experts per layer, embedding counted whole"}};
  j["bytes"] = {{"total", s.bytes_total},
                {"mtp", s.bytes_mtp},
                {"decode_per_token", s.decode_bytes_per_token},
                {"decode_mtp_per_token", s.decode_bytes_mtp_per_token},
                {"convention",
                 "stored bytes incl. scales read for one decoded token by the main model: all "
                 "non-expert tensors, shared and active routed experts, one row of embed.weight "
                 "and of tid2eid"}};
  j["kv"] = {{"row_bytes", s.kv_row_bytes},
             {"indexer_key_bytes", s.indexer_key_bytes},
             {"main_bytes_per_token", s.kv_main_bytes_per_token},
             {"indexer_bytes_per_token", s.kv_indexer_bytes_per_token},
             {"bytes_per_token", s.kv_bytes_per_token},
             {"window_bytes", s.window_bytes},
             {"formula",
              "sum over main layers with ratio r > 0 of row_bytes / r, plus indexer_key_bytes / "
              "r for CSA layers; window = n_layers * sliding_window * row_bytes"}};
  auto& dt = j["dtypes"] = nlohmann::ordered_json::array();
  for (const DTypeSummary& d : s.dtypes)
    dt.push_back({{"dtype", d.dtype}, {"count", d.count}, {"bytes", d.bytes}});
  j["num_tensors"] = s.num_tensors;
  return j.dump(2) + "\n";
}

}  // namespace dsv4
