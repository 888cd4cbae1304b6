#include "model/synth.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "util/error.h"
#include "util/threadpool.h"

namespace dsv4 {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Number formats.

uint8_t fp8_e4m3_encode(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  if (std::isnan(x)) return sign | 0x7F;
  const float a = std::fabs(x);
  // Everything at or above the largest finite value saturates (the codes
  // above it would be 480 = NaN in the "fn" variant).
  if (!(a < 448.0f)) return sign | 0x7E;
  if (a < 0.015625f) {
    // Subnormal range: value = m * 2^-9, m = 0..7; m = 8 rounds up into the
    // smallest normal, whose code is 0x08 as well. a * 512 is exact.
    const float q = a * 512.0f;
    float m = std::floor(q);
    const float rem = q - m;
    if (rem > 0.5f || (rem == 0.5f && std::fmod(m, 2.0f) != 0.0f)) m += 1.0f;
    return sign | static_cast<uint8_t>(m);
  }
  // Normal range: keep 3 mantissa bits of the fp32 value, rounding the 20
  // dropped bits to nearest even; a mantissa overflow carries into the exponent.
  uint32_t u = bits & 0x7FFFFFFFu;
  u += 0x7FFFFu + ((u >> 20) & 1u);
  const int exp = static_cast<int>(u >> 23) - 127 + 7;
  const uint32_t mant = (u >> 20) & 7u;
  uint32_t code = (static_cast<uint32_t>(exp) << 3) | mant;
  if (code > 0x7E) code = 0x7E;
  return sign | static_cast<uint8_t>(code);
}

uint8_t fp4_e2m1_encode(float x) {
  if (std::isnan(x)) return 0;
  const uint8_t sign = std::signbit(x) ? 0x8 : 0x0;
  const float a = std::fabs(x);
  // Midpoints between neighbouring codes; at a tie the even code (mantissa
  // bit 0) wins, hence the alternating <= and <.
  uint8_t code;
  if (a <= 0.25f)
    code = 0;
  else if (a < 0.75f)
    code = 1;
  else if (a <= 1.25f)
    code = 2;
  else if (a < 1.75f)
    code = 3;
  else if (a <= 2.5f)
    code = 4;
  else if (a < 3.5f)
    code = 5;
  else if (a <= 5.0f)
    code = 6;
  else
    code = 7;
  return sign | code;
}

uint16_t bf16_encode(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

int e8m0_block_exponent(float amax, float max_code) {
  if (!(amax > 0.0f)) return -127;
  int k = 0;
  const double m = std::frexp(static_cast<double>(amax) / max_code, &k);  // ratio = m * 2^k
  int e = m == 0.5 ? k - 1 : k;
  while (std::ldexp(static_cast<double>(amax), -e) > max_code) ++e;
  return std::clamp(e, -127, 127);
}

void fp4_quantize_row(const float* x, int64_t n, uint8_t* packed, int* exps) {
  if (n % 32 != 0) fail("fp4_quantize_row: ", n, " values are not a whole number of 32-blocks");
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const int e = e8m0_block_exponent(amax, 6.0f);
    exps[b] = e;
    uint8_t* p = packed + b * 16;
    for (int i = 0; i < 16; ++i)
      p[i] = static_cast<uint8_t>(fp4_e2m1_encode(std::ldexp(xb[2 * i], -e)) |
                                  (fp4_e2m1_encode(std::ldexp(xb[2 * i + 1], -e)) << 4));
  }
}

// ---------------------------------------------------------------------------
// Configurations.

namespace {

ModelConfig common_config() {
  ModelConfig c;
  c.head_dim = 512;
  c.rope_head_dim = 64;
  c.index_head_dim = 128;
  c.n_mtp_layers = 1;
  c.n_shared_experts = 1;
  c.n_activated_experts = 6;
  c.n_hash_layers = 3;
  c.score_func = ScoreFunc::kSqrtSoftplus;
  c.norm_topk_prob = true;
  c.swiglu_limit = 10.0;
  c.hc_mult = 4;
  c.hc_sinkhorn_iters = 20;
  c.hc_eps = 1e-6;
  c.norm_eps = 1e-6;
  c.rope_theta = 10000;
  c.compress_rope_theta = 160000;
  c.yarn = true;
  c.rope_factor = 16;
  c.original_seq_len = 65536;
  c.beta_fast = 32;
  c.beta_slow = 1;
  c.max_position_embeddings = 1048576;
  c.expert_dtype = ExpertDType::kFP4;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  c.window_size = 128;
  return c;
}

// The schedule of a preset for `n` main layers (the MTP entry is added by the caller).
std::vector<int64_t> preset_schedule(const std::string& like, int64_t n) {
  std::vector<int64_t> r;
  for (int64_t i = 0; i < n; ++i) {
    if (like == "flash")
      r.push_back(i < 2 ? 0 : (i % 2 == 0 ? 4 : 128));
    else if (like == "pro")
      r.push_back(i < 2 ? 128 : (i % 2 == 0 ? 4 : 128));
    else
      r.push_back(i == 0 ? 0 : (i % 2 == 1 ? 4 : 128));  // tiny-a: 0, 4, 128, 4, ...
  }
  return r;
}

int64_t preset_layers(const std::string& like) {
  return like == "flash" ? 43 : like == "pro" ? 61 : 4;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

ModelConfig preset_config(const std::string& like) {
  ModelConfig c = common_config();
  if (like == "flash") {
    c.vocab_size = 129280;
    c.dim = 4096;
    c.n_heads = 64;
    c.q_lora_rank = 1024;
    c.o_groups = 8;
    c.o_lora_rank = 1024;
    c.index_n_heads = 64;
    c.index_topk = 512;
    c.n_routed_experts = 256;
    c.moe_inter_dim = 2048;
    c.route_scale = 1.5;
  } else if (like == "pro") {
    c.vocab_size = 129280;
    c.dim = 7168;
    c.n_heads = 128;
    c.q_lora_rank = 1536;
    c.o_groups = 16;
    c.o_lora_rank = 1024;
    c.index_n_heads = 64;
    c.index_topk = 1024;
    c.n_routed_experts = 384;
    c.moe_inter_dim = 3072;
    c.route_scale = 2.5;
  } else if (like == "tiny") {
    c.vocab_size = 512;
    c.dim = 256;
    c.n_heads = 4;
    c.q_lora_rank = 128;
    c.o_groups = 2;
    c.o_lora_rank = 128;
    c.window_size = 16;
    c.index_n_heads = 4;
    c.index_topk = 8;
    c.n_routed_experts = 8;
    c.n_activated_experts = 2;
    c.moe_inter_dim = 128;
    c.n_hash_layers = 2;
    c.route_scale = 1.5;
  } else {
    fail("--like ", like, " is not a known preset (tiny, flash or pro)");
  }
  c.n_layers = preset_layers(like);
  c.compress_ratios = preset_schedule(like, c.n_layers);
  c.compress_ratios.push_back(0);  // the MTP block is window-only in both releases
  return c;
}

int64_t tokenizer_vocab_size(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  int64_t max_id = -1;
  if (j.contains("model") && j["model"].is_object() && j["model"].contains("vocab")) {
    const auto& v = j["model"]["vocab"];
    if (v.is_object()) {
      for (const auto& [tok, id] : v.items())
        if (id.is_number_integer()) max_id = std::max(max_id, id.get<int64_t>());
    } else if (v.is_array()) {  // Unigram models list [piece, score] pairs; the id is the index
      max_id = static_cast<int64_t>(v.size()) - 1;
    }
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const auto& t : j["added_tokens"])
      if (t.is_object() && t.contains("id") && t["id"].is_number_integer())
        max_id = std::max(max_id, t["id"].get<int64_t>());
  if (max_id < 0) fail(path, ": no token ids found in model.vocab or added_tokens");
  return max_id + 1;
}

ModelConfig synth_config(const SynthOptions& opt) {
  ModelConfig c = preset_config(opt.like);
  const int64_t max_layers = opt.like == "tiny" ? 1 << 16 : preset_layers(opt.like);
  if (opt.layers < 0 || opt.layers > max_layers)
    fail("--layers ", opt.layers, " is out of range (1..", max_layers, " for --like ", opt.like,
         ")");
  if (opt.layers > 0) {
    const int64_t preset_hash = c.n_hash_layers;
    c.n_layers = opt.layers;
    c.compress_ratios = preset_schedule(opt.like, c.n_layers);
    c.compress_ratios.push_back(0);
    c.n_hash_layers = std::min(preset_hash, c.n_layers);
  }
  if (opt.experts < 0) fail("--experts must be positive, got ", opt.experts);
  if (opt.experts > 0) {
    c.n_routed_experts = opt.experts;
    c.n_activated_experts = std::min(c.n_activated_experts, opt.experts);
  }
  if (opt.dim < 0) fail("--dim must be positive, got ", opt.dim);
  if (opt.dim > 0) {
    if (opt.dim % 32 != 0)
      fail("--dim ", opt.dim, " must be a multiple of 32 (FP4 scale blocks of 32 along it)");
    c.dim = opt.dim;
  }
  if (opt.vocab < 0) fail("--vocab must be positive, got ", opt.vocab);
  if (!opt.tokenizer_dir.empty()) {
    const fs::path tok = fs::path(opt.tokenizer_dir) / "tokenizer.json";
    if (!fs::exists(tok)) fail("--tokenizer ", opt.tokenizer_dir, ": no tokenizer.json there");
    const int64_t n = tokenizer_vocab_size(tok.string());
    if (opt.vocab > 0 && opt.vocab < n)
      fail("--vocab ", opt.vocab, " is smaller than the tokenizer's ", n, " ids (", tok.string(),
           ")");
    c.vocab_size = opt.vocab > 0 ? opt.vocab : n;
  } else if (opt.vocab > 0) {
    c.vocab_size = opt.vocab;
  }
  if (c.vocab_size < 2) fail("--vocab must be at least 2 (BOS = 0, EOS = 1)");
  if (opt.expert_dtype == "fp4")
    c.expert_dtype = ExpertDType::kFP4;
  else if (opt.expert_dtype == "fp8")
    c.expert_dtype = ExpertDType::kFP8;
  else
    fail("--expert-dtype ", opt.expert_dtype, " is not supported (fp4 or fp8)");
  // Validate exactly as a loaded config.json would be.
  return parse_model_config(model_config_to_json(c), "synthesized config.json");
}

DType synth_dtype(const TensorSpec& spec, const ModelConfig& cfg) {
  if (spec.role == TensorSpec::Role::kScale && cfg.expert_dtype == ExpertDType::kFP8)
    for (DType d : spec.dtypes)
      if (d == DType::F32) return d;
  return spec.dtypes.front();
}

// ---------------------------------------------------------------------------
// Random values: counter-based, so element i of a tensor is a function of
// (seed, tensor name, i) only, whatever the chunking and thread count.

namespace {

uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t tensor_key(uint64_t seed, const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001B3ull;
  return mix64(mix64(seed) ^ h);
}

double uniform01(uint64_t key, uint64_t i) {  // in (0, 1)
  return (static_cast<double>(mix64(key ^ mix64(i)) >> 11) + 0.5) * 0x1.0p-53;
}

// Inverse of the standard normal CDF (Acklam's rational approximation,
// relative error < 1.2e-9): one uniform per value and no transcendental call
// in the central 95 %, several times faster than Box-Muller.
double inverse_normal_cdf(double p) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                                 -2.759285104469687e+02, 1.383577518672690e+02,
                                 -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                                 -1.556989798598866e+02, 6.680131188771972e+01,
                                 -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                                 -2.400758277161838e+00, -2.549671010422256e+00,
                                 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01,
                                 2.445134137142996e+00, 3.754408661907416e+00};
  constexpr double kLow = 0.02425;
  auto tail = [&](double q) {
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  };
  if (p < kLow) return tail(std::sqrt(-2 * std::log(p)));
  if (p > 1 - kLow) return -tail(std::sqrt(-2 * std::log(1 - p)));
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

// N(0, scale^2) values for elements [begin, begin + n).
void fill_normal(uint64_t key, uint64_t begin, size_t n, float scale, float* out) {
  for (size_t k = 0; k < n; ++k)
    out[k] = static_cast<float>(inverse_normal_cdf(uniform01(key, begin + k))) * scale;
}

void parallel_fill_normal(uint64_t key, uint64_t begin, size_t n, float scale, float* out) {
  parallel_for(
      static_cast<int64_t>(n),
      [&](int64_t b, int64_t e, int) {
        fill_normal(key, begin + b, static_cast<size_t>(e - b), scale, out + b);
      },
      1 << 14);
}

using Role = TensorSpec::Role;
using Sink = std::function<void(const void*, size_t)>;

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Generates every tensor of the checkpoint, one at a time, into a sink.
class Generator {
 public:
  Generator(const ModelConfig& cfg, uint64_t seed, const std::vector<TensorSpec>& specs)
      : cfg_(cfg), seed_(seed) {
    for (const auto& s : specs) by_name_[s.name] = &s;
  }

  void emit(const TensorSpec& spec, const Sink& sink) {
    const DType dt = synth_dtype(spec, cfg_);
    switch (spec.role) {
      case Role::kWeight:
        if (dt == DType::F8_E4M3 || dt == DType::I8) {
          if (dt == DType::F8_E4M3)
            fp8_weight(spec, &sink);
          else
            fp4_weight(spec, &sink);
          // Its scale may have gone out first (regenerated then): drop the copy.
          if (written_scales_.count(scale_name(spec))) pending_scales_.erase(scale_name(spec));
          return;
        }
        return plain_normal(spec, dt, 1.0f / std::sqrt(static_cast<float>(spec.fan_in)), 0.0f,
                            sink);
      case Role::kScale:
        return scale(spec, sink);
      // Norm weights near 1, as trained RMSNorm gains are.
      case Role::kNorm:
        return plain_normal(spec, dt, 0.1f, 1.0f, sink);
      // Small router bias: it shifts the top-k choice without dominating the scores.
      case Role::kBias:
        return plain_normal(spec, dt, 0.1f, 0.0f, sink);
      // mHC mixing projection: small so the Sinkhorn input stays O(1) and well conditioned.
      case Role::kHcFn:
        return plain_normal(spec, dt, 0.5f / std::sqrt(static_cast<float>(spec.fan_in)), 0.0f,
                            sink);
      case Role::kHcScale:
        return uniform(spec, dt, 0.5f, 1.5f, sink);
      case Role::kHcBase:
        return plain_normal(spec, dt, 0.5f, 0.0f, sink);
      case Role::kSink:
        return plain_normal(spec, dt, 0.5f, 0.0f, sink);
      case Role::kApe:
        return plain_normal(spec, dt, 0.5f, 0.0f, sink);
      case Role::kTable:
        return hash_table(spec, dt, sink);
    }
    fail("synth: no generator for tensor ", spec.name);
  }

 private:
  static void store(DType dt, const float* v, size_t n, std::vector<std::byte>* out) {
    out->resize(n * dtype_size(dt));
    if (dt == DType::F32) {
      std::memcpy(out->data(), v, n * 4);
    } else if (dt == DType::BF16) {
      auto* p = reinterpret_cast<uint16_t*>(out->data());
      for (size_t i = 0; i < n; ++i) p[i] = bf16_encode(v[i]);
    } else {
      fail("synth: cannot store floats as ", dtype_name(dt));
    }
  }

  // N(mean, std) values, written in row chunks so a [vocab, D] embedding
  // never sits in memory whole.
  void plain_normal(const TensorSpec& spec, DType dt, float stddev, float mean, const Sink& sink) {
    const uint64_t key = tensor_key(seed_, spec.name);
    const size_t n = static_cast<size_t>(numel(spec.shape));
    constexpr size_t kChunk = size_t(1) << 22;
    std::vector<float> v;
    std::vector<std::byte> bytes;
    for (size_t begin = 0; begin < n; begin += kChunk) {
      const size_t m = std::min(kChunk, n - begin);
      v.resize(m);
      parallel_fill_normal(key, begin, m, stddev, v.data());
      if (mean != 0.0f)
        for (auto& x : v) x += mean;
      store(dt, v.data(), m, &bytes);
      sink(bytes.data(), bytes.size());
    }
  }

  void uniform(const TensorSpec& spec, DType dt, float lo, float hi, const Sink& sink) {
    const uint64_t key = tensor_key(seed_, spec.name);
    std::vector<float> v(static_cast<size_t>(numel(spec.shape)));
    for (size_t i = 0; i < v.size(); ++i)
      v[i] = lo + (hi - lo) * static_cast<float>(uniform01(key, i));
    std::vector<std::byte> bytes;
    store(dt, v.data(), v.size(), &bytes);
    sink(bytes.data(), bytes.size());
  }

  // Hash-routing table: each token row names num_experts_per_tok distinct experts.
  void hash_table(const TensorSpec& spec, DType dt, const Sink& sink) {
    const uint64_t key = tensor_key(seed_, spec.name);
    const int64_t rows = spec.shape.at(0), k = spec.shape.at(1);
    const int64_t experts = cfg_.n_routed_experts;
    if (k > experts) fail("synth: ", spec.name, " needs ", k, " distinct experts of ", experts);
    std::vector<int64_t> ids(static_cast<size_t>(rows * k));
    for (int64_t r = 0; r < rows; ++r) {
      uint64_t state = mix64(key ^ mix64(static_cast<uint64_t>(r)));
      int64_t* row = &ids[static_cast<size_t>(r * k)];
      for (int64_t j = 0; j < k;) {
        state = mix64(state);
        const int64_t e = static_cast<int64_t>(state % static_cast<uint64_t>(experts));
        if (std::find(row, row + j, e) == row + j) row[j++] = e;
      }
    }
    if (dt == DType::I64) {
      sink(ids.data(), ids.size() * 8);
    } else if (dt == DType::I32) {
      std::vector<int32_t> narrow(ids.begin(), ids.end());
      sink(narrow.data(), narrow.size() * 4);
    } else {
      fail("synth: cannot store ", spec.name, " as ", dtype_name(dt));
    }
  }

  const TensorSpec& weight_of(const TensorSpec& scale) const {
    const std::string suffix = ".scale";
    const std::string& n = scale.name;
    if (n.size() <= suffix.size() || n.compare(n.size() - suffix.size(), suffix.size(), suffix))
      fail("synth: scale tensor ", n, " does not end in .scale");
    auto it = by_name_.find(n.substr(0, n.size() - suffix.size()) + ".weight");
    if (it == by_name_.end()) fail("synth: scale tensor ", n, " has no weight");
    return *it->second;
  }

  // A scale is produced together with its weight. The weight usually comes
  // first in the file and leaves its scale here; otherwise (F32 scales sort
  // before 1-byte weights) the weight is regenerated without being written.
  void scale(const TensorSpec& spec, const Sink& sink) {
    auto it = pending_scales_.find(spec.name);
    if (it == pending_scales_.end()) {
      const TensorSpec& w = weight_of(spec);
      if (synth_dtype(w, cfg_) == DType::F8_E4M3)
        fp8_weight(w, nullptr);
      else
        fp4_weight(w, nullptr);
      it = pending_scales_.find(spec.name);
    }
    const std::vector<int>& exps = it->second;
    if (static_cast<int64_t>(exps.size()) != numel(spec.shape))
      fail("synth: scale ", spec.name, " has ", exps.size(), " blocks, expected ",
           shape_to_string(spec.shape));
    const DType dt = synth_dtype(spec, cfg_);
    if (dt == DType::F8_E8M0) {
      std::vector<uint8_t> b(exps.size());
      for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(exps[i] + 127);
      sink(b.data(), b.size());
    } else if (dt == DType::F32) {
      std::vector<float> f(exps.size());
      for (size_t i = 0; i < f.size(); ++i) f[i] = std::ldexp(1.0f, exps[i]);
      sink(f.data(), f.size() * 4);
    } else {
      fail("synth: cannot store scale ", spec.name, " as ", dtype_name(dt));
    }
    pending_scales_.erase(it);
    written_scales_.insert(spec.name);
  }

  std::string scale_name(const TensorSpec& weight) const {
    return weight.name.substr(0, weight.name.size() - std::string(".weight").size()) + ".scale";
  }

  // FP8 e4m3 [out, in] with one power-of-two scale per 128x128 block, in
  // stripes of 128 rows. sink == nullptr: only compute the scales.
  void fp8_weight(const TensorSpec& spec, const Sink* sink) {
    const uint64_t key = tensor_key(seed_, spec.name);
    const int64_t out = spec.shape.at(0), in = spec.shape.at(1);
    const int64_t col_blocks = (in + 127) / 128;
    const float stddev = 1.0f / std::sqrt(static_cast<float>(spec.fan_in));
    std::vector<int>& exps = pending_scales_[scale_name(spec)];
    exps.assign(static_cast<size_t>(((out + 127) / 128) * col_blocks), 0);
    std::vector<float> v;
    std::vector<uint8_t> q;
    for (int64_t r0 = 0; r0 < out; r0 += 128) {
      const int64_t rows = std::min<int64_t>(128, out - r0);
      const size_t n = static_cast<size_t>(rows * in);
      v.resize(n);
      q.resize(n);
      parallel_fill_normal(key, static_cast<uint64_t>(r0 * in), n, stddev, v.data());
      const int64_t rb = r0 / 128;
      parallel_for(col_blocks, [&](int64_t cb0, int64_t cb1, int) {
        for (int64_t cb = cb0; cb < cb1; ++cb) {
          const int64_t c0 = cb * 128, c1 = std::min(in, c0 + 128);
          float amax = 0;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(v[r * in + c]));
          const int e = e8m0_block_exponent(amax, 448.0f);
          exps[static_cast<size_t>(rb * col_blocks + cb)] = e;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = c0; c < c1; ++c)
              q[r * in + c] = fp8_e4m3_encode(std::ldexp(v[r * in + c], -e));
        }
      });
      if (sink) (*sink)(q.data(), q.size());
    }
  }

  // Packed FP4 e2m1 [out, in/2] (low nibble = even element) with one
  // power-of-two scale per 32 elements of a row, in chunks of rows.
  void fp4_weight(const TensorSpec& spec, const Sink* sink) {
    const uint64_t key = tensor_key(seed_, spec.name);
    const int64_t out = spec.shape.at(0), in = spec.shape.at(1) * 2;
    if (in % 32 != 0) fail("synth: ", spec.name, ": input width ", in, " is not a multiple of 32");
    const int64_t blocks = in / 32;
    const float stddev = 1.0f / std::sqrt(static_cast<float>(spec.fan_in));
    std::vector<int>& exps = pending_scales_[scale_name(spec)];
    exps.assign(static_cast<size_t>(out * blocks), 0);
    const int64_t chunk_rows = std::max<int64_t>(1, (int64_t(1) << 21) / in);
    std::vector<float> v;
    std::vector<uint8_t> q;
    for (int64_t r0 = 0; r0 < out; r0 += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, out - r0);
      v.resize(static_cast<size_t>(rows * in));
      q.resize(static_cast<size_t>(rows * in / 2));
      parallel_fill_normal(key, static_cast<uint64_t>(r0 * in), v.size(), stddev, v.data());
      parallel_for(rows, [&](int64_t ra, int64_t rz, int) {
        for (int64_t r = ra; r < rz; ++r) {
          fp4_quantize_row(&v[static_cast<size_t>(r * in)], in, &q[static_cast<size_t>(r * in / 2)],
                           &exps[static_cast<size_t>((r0 + r) * blocks)]);
        }
      });
      if (sink) (*sink)(q.data(), q.size());
    }
  }

  const ModelConfig& cfg_;
  uint64_t seed_;
  std::map<std::string, const TensorSpec*> by_name_;
  std::map<std::string, std::vector<int>> pending_scales_;  // block exponents by scale name
  std::set<std::string> written_scales_;
};

// A file written under a temp name and renamed into place when complete.
class AtomicFile {
 public:
  explicit AtomicFile(const fs::path& path) : path_(path), tmp_(path.string() + ".tmp") {
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) fail(tmp_, ": cannot open for writing: ", std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 22);
  }
  ~AtomicFile() {
    if (f_) {  // not committed: an error is propagating
      std::fclose(f_);
      std::remove(tmp_.c_str());
    }
  }
  void write(const void* data, size_t n) {
    if (n && std::fwrite(data, 1, n, f_) != n)
      fail(tmp_, ": write failed (disk full?): ", std::strerror(errno));
    written_ += n;
  }
  uint64_t written() const { return written_; }
  void commit() {
    const bool ok = std::fflush(f_) == 0 && !std::ferror(f_);
    const int close_rc = std::fclose(f_);
    f_ = nullptr;
    if (!ok || close_rc != 0) {
      std::remove(tmp_.c_str());
      fail(tmp_, ": write failed (disk full?)");
    }
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
      fail(path_.string(), ": cannot rename ", tmp_, ": ", std::strerror(errno));
  }

 private:
  fs::path path_;
  std::string tmp_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
};

void write_text_file(const fs::path& path, const std::string& text) {
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

// The reference's inference/config.json (ModelArgs field names), as the
// official repos ship it next to the HF config.
std::string inference_config_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["vocab_size"] = c.vocab_size;
  j["dim"] = c.dim;
  j["moe_inter_dim"] = c.moe_inter_dim;
  j["n_layers"] = c.n_layers;
  j["n_hash_layers"] = c.n_hash_layers;
  j["n_heads"] = c.n_heads;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["n_activated_experts"] = c.n_activated_experts;
  j["score_func"] = c.score_func == ScoreFunc::kSqrtSoftplus ? "sqrtsoftplus"
                    : c.score_func == ScoreFunc::kSigmoid    ? "sigmoid"
                                                             : "softmax";
  j["route_scale"] = c.route_scale;
  j["swiglu_limit"] = c.swiglu_limit;
  j["q_lora_rank"] = c.q_lora_rank;
  j["head_dim"] = c.head_dim;
  j["rope_head_dim"] = c.rope_head_dim;
  j["o_groups"] = c.o_groups;
  j["o_lora_rank"] = c.o_lora_rank;
  j["window_size"] = c.window_size;
  j["original_seq_len"] = c.original_seq_len;
  j["rope_theta"] = c.rope_theta;
  j["rope_factor"] = c.rope_factor;
  j["beta_fast"] = c.beta_fast;
  j["beta_slow"] = c.beta_slow;
  j["index_n_heads"] = c.index_n_heads;
  j["index_head_dim"] = c.index_head_dim;
  j["index_topk"] = c.index_topk;
  j["hc_mult"] = c.hc_mult;
  j["hc_sinkhorn_iters"] = c.hc_sinkhorn_iters;
  j["dtype"] = "fp8";
  j["scale_fmt"] = "ue8m0";
  j["expert_dtype"] = c.expert_dtype == ExpertDType::kFP4 ? "fp4" : "fp8";
  j["compress_rope_theta"] = c.compress_rope_theta;
  j["compress_ratios"] = c.compress_ratios;
  return j.dump(4) + "\n";
}

void copy_file_atomic(const fs::path& from, const fs::path& to) {
  write_text_file(to, read_file(from.string()));
}

// The safetensors metadata key that marks a file as written by `dsv4 synth`.
constexpr const char* kSynthMarker = "dsv4_synth";

bool written_by_synth(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  uint64_t n = 0;
  if (!in.read(reinterpret_cast<char*>(&n), 8) || n > (uint64_t(1) << 30)) return false;
  std::string header(n, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(n))) return false;
  try {
    const auto j = nlohmann::json::parse(header);
    return j.contains("__metadata__") && j["__metadata__"].contains(kSynthMarker);
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

// Removes the model files an earlier synth left, so that the folder describes
// exactly one checkpoint (a stale index would otherwise win). Refuses to touch
// a folder whose model files synth did not write (a real checkpoint).
// model-NNNNN-of-NNNNN.safetensors, optionally with our .tmp suffix. (No
// std::regex: GCC 12 warns inside it under -fsanitize, which -Werror breaks.)
bool is_shard_name(const std::string& name) {
  const std::string pattern = "model-#####-of-#####.safetensors";
  if (name.size() != pattern.size() && name.size() != pattern.size() + 4) return false;
  if (name.size() > pattern.size() && name.compare(pattern.size(), 4, ".tmp") != 0) return false;
  for (size_t i = 0; i < pattern.size(); ++i)
    if (pattern[i] == '#' ? !(name[i] >= '0' && name[i] <= '9') : name[i] != pattern[i])
      return false;
  return true;
}

void remove_stale_model_files(const fs::path& dir) {
  std::vector<fs::path> stale;
  std::string foreign;
  bool any_synth = false, any_final = false;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool weights = name == "model.safetensors" || is_shard_name(name);
    if (!weights && name != "config.json" && name != "model.safetensors.index.json") continue;
    stale.push_back(entry.path());
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) continue;
    any_final = true;
    if (!weights) continue;
    if (written_by_synth(entry.path()))
      any_synth = true;
    else if (foreign.empty())
      foreign = name;
  }
  if (any_final && (!foreign.empty() || !any_synth))
    fail(dir.string(), ": already holds a model (", foreign.empty() ? "config.json" : foreign,
         ") that dsv4 synth did not write; refusing to overwrite it (choose an empty --out "
         "folder)");
  for (const fs::path& p : stale) fs::remove(p);
}

}  // namespace

SynthResult synth_checkpoint(const SynthOptions& opt,
                             const std::function<void(const std::string&)>& progress) {
  if (opt.out.empty()) fail("missing --out DIR");
  if (opt.shard_bytes == 0) fail("--shard-bytes must be positive");
  SynthResult result;
  result.config = synth_config(opt);
  const ModelConfig& cfg = result.config;
  const std::vector<TensorSpec> specs = expected_tensors(cfg);

  const fs::path dir(opt.out);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) fail(opt.out, ": cannot create the output folder");
  remove_stale_model_files(dir);

  // Shards in the walk order (embedding, layer by layer, head, MTP), a new
  // one whenever the next tensor would overflow the current one.
  std::vector<std::vector<const TensorSpec*>> shards(1);
  std::vector<uint64_t> sizes(specs.size());
  uint64_t in_shard = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    sizes[i] =
        static_cast<uint64_t>(numel(specs[i].shape)) * dtype_size(synth_dtype(specs[i], cfg));
    if (!shards.back().empty() && in_shard + sizes[i] > opt.shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&specs[i]);
    in_shard += sizes[i];
    result.tensor_bytes += sizes[i];
  }
  result.num_tensors = specs.size();
  const bool sharded = shards.size() > 1;
  auto shard_name = [&](size_t s) {
    if (!sharded) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    return std::string(buf);
  };

  // Recorded in every shard: marks the files as synthetic (see
  // remove_stale_model_files) and says how to make them again.
  const std::string provenance =
      str_cat("--like ", opt.like, " --layers ", cfg.n_layers, " --experts ", cfg.n_routed_experts,
              " --dim ", cfg.dim, " --vocab ", cfg.vocab_size, " --seed ", opt.seed,
              " --expert-dtype ", opt.expert_dtype, " --shard-bytes ", opt.shard_bytes);
  Generator gen(cfg, opt.seed, specs);
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    // Within a shard, wider element types first: every tensor then starts at
    // a multiple of its element size (the data region is 8-aligned), so
    // readers may use the mapped bytes as typed arrays.
    std::vector<const TensorSpec*> order = shards[s];
    std::stable_sort(order.begin(), order.end(), [&](const TensorSpec* a, const TensorSpec* b) {
      return dtype_size(synth_dtype(*a, cfg)) > dtype_size(synth_dtype(*b, cfg));
    });
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    header["__metadata__"] = {{"format", "pt"}, {kSynthMarker, provenance}};
    uint64_t offset = 0;
    for (const TensorSpec* t : order) {
      const uint64_t n = static_cast<uint64_t>(numel(t->shape)) * dtype_size(synth_dtype(*t, cfg));
      header[t->name] = {{"dtype", std::string(dtype_name(synth_dtype(*t, cfg)))},
                         {"shape", t->shape},
                         {"data_offsets", {offset, offset + n}}};
      offset += n;
    }
    std::string h = header.dump();
    while (h.size() % 8) h.push_back(' ');  // 8 + header: data region 8-aligned
    const std::string name = shard_name(s);
    AtomicFile f(dir / name);
    const uint64_t hlen = h.size();
    f.write(&hlen, 8);
    f.write(h.data(), h.size());
    for (const TensorSpec* t : order) {
      const uint64_t before = f.written();
      gen.emit(*t, [&](const void* p, size_t n) { f.write(p, n); });
      const uint64_t want =
          static_cast<uint64_t>(numel(t->shape)) * dtype_size(synth_dtype(*t, cfg));
      if (f.written() - before != want)
        fail("synth: internal error: tensor ", t->name, " wrote ", f.written() - before,
             " bytes, expected ", want);
      weight_map[t->name] = name;
    }
    f.commit();
    result.files.push_back(name);
    if (progress)
      progress(str_cat("wrote ", name, " (", order.size(), " tensors, ", offset, " bytes)"));
  }
  if (sharded) {
    nlohmann::json index;
    index["metadata"] = {{"total_size", result.tensor_bytes}};
    index["weight_map"] = weight_map;
    write_text_file(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  fs::create_directories(dir / "inference");
  write_text_file(dir / "inference" / "config.json", inference_config_json(cfg));
  if (!opt.tokenizer_dir.empty()) {
    const fs::path tok(opt.tokenizer_dir);
    copy_file_atomic(tok / "tokenizer.json", dir / "tokenizer.json");
    if (fs::exists(tok / "tokenizer_config.json"))
      copy_file_atomic(tok / "tokenizer_config.json", dir / "tokenizer_config.json");
  }
  // config.json last: until it exists the folder is not a loadable model.
  write_text_file(dir / "config.json", model_config_to_json(cfg));
  if (progress)
    progress(str_cat("wrote config.json (", specs.size(), " tensors in ", shards.size(),
                     " file(s), ", result.tensor_bytes, " bytes)"));
  return result;
}

}  // namespace dsv4
