// dsv4 synth and the inspect counts: number encoders against exhaustive decode
// tables derived here from the format definitions, synthesized checkpoints
// loaded by the real loader, and parameter/byte/KV counts against formulas
// written out from the architecture spec (§2, §4, §6.3).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "kernels/numerics.h"
#include "model/checkpoint.h"
#include "model/inspect.h"
#include "model/model.h"
#include "model/state.h"
#include "model/synth.h"
#include "model/weights.h"
#include "util/error.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

// The Flash/Pro-dimension synths write gigabytes; under ASan/TSan (.ci/sanitizers)
// they would take most of the test budget while exercising the same code paths
// as the tiny ones, so the sanitizer jobs skip them.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// ---------------------------------------------------------------------------
// Decoders from the format definitions (independent of src/kernels).

// e4m3 "fn": 1 sign, 4 exponent (bias 7), 3 mantissa; exponent 0 = subnormal;
// S.1111.111 = NaN; no infinities.
float e4m3_decode(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return static_cast<float>(s ? -mag : mag);
}

// e2m1: 1 sign (bit 3), 2 exponent (bias 1), 1 mantissa; exponent 0 = subnormal (0 or 0.5).
float e2m1_decode(uint8_t c) {
  const int s = (c >> 3) & 1, e = (c >> 1) & 3, m = c & 1;
  const double mag = e == 0 ? m * 0.5 : std::ldexp(1.0 + m / 2.0, e - 1);
  return static_cast<float>(s ? -mag : mag);
}

float bf16_decode(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even reference over a code table: the nearest finite
// value; at an exact tie the code with an even mantissa (bit 0 clear).
template <typename Decode>
int nearest_code(float x, int num_codes, Decode decode, float max_finite) {
  const float a = std::fabs(x);
  if (a >= max_finite) return -1;  // saturation: checked separately
  int best = -1;
  double best_d = 1e300;
  for (int c = 0; c < num_codes; ++c) {
    const float v = decode(static_cast<uint8_t>(c));
    if (std::isnan(v) || std::signbit(v) != std::signbit(x)) continue;
    const double d = std::fabs(static_cast<double>(v) - x);
    if (d < best_d || (d == best_d && (c & 1) == 0 && (best & 1) == 1)) {
      best = c;
      best_d = d;
    }
  }
  return best;
}

TEST(Fp8E4m3, EveryCodeRoundTrips) {
  for (int b = 0; b < 256; ++b) {
    const float v = e4m3_decode(static_cast<uint8_t>(b));
    if (std::isnan(v)) continue;
    EXPECT_EQ(fp8_e4m3_encode(v), b) << "code " << b << " value " << v;
  }
}

TEST(Fp8E4m3, MidpointsTieToEvenAndNeighboursRoundToNearest) {
  for (int sign : {0, 0x80}) {
    for (int b = 0; b < 0x7E; ++b) {
      const float lo = e4m3_decode(static_cast<uint8_t>(b | sign));
      const float hi = e4m3_decode(static_cast<uint8_t>((b + 1) | sign));
      const float mid = (lo + hi) / 2;  // exact: at most 5 significant bits
      const int even = (b & 1) == 0 ? b : b + 1;
      EXPECT_EQ(fp8_e4m3_encode(mid), even | sign) << "midpoint of codes " << b << ", " << b + 1;
      EXPECT_EQ(fp8_e4m3_encode(std::nextafter(mid, hi)), (b + 1) | sign);
      EXPECT_EQ(fp8_e4m3_encode(std::nextafter(mid, lo)), b | sign);
    }
  }
}

TEST(Fp8E4m3, SaturatesAndKeepsNaN) {
  EXPECT_EQ(fp8_e4m3_encode(448.0f), 0x7E);
  EXPECT_EQ(fp8_e4m3_encode(460.0f), 0x7E);
  EXPECT_EQ(fp8_e4m3_encode(480.0f), 0x7E);
  EXPECT_EQ(fp8_e4m3_encode(1e30f), 0x7E);
  EXPECT_EQ(fp8_e4m3_encode(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(fp8_e4m3_encode(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(fp8_e4m3_encode(-1000.0f), 0xFE);
  EXPECT_TRUE(std::isnan(e4m3_decode(fp8_e4m3_encode(std::nanf("")))));
  EXPECT_EQ(fp8_e4m3_encode(1e-30f), 0x00);
  EXPECT_EQ(fp8_e4m3_encode(-1e-30f), 0x80);
  EXPECT_EQ(fp8_e4m3_encode(std::numeric_limits<float>::denorm_min()), 0x00);
}

TEST(Fp8E4m3, RandomValuesMatchNearestTableEntry) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-14, 9);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(mant(rng), ex(rng));
    const int want = nearest_code(x, 256, e4m3_decode, 448.0f);
    const uint8_t got = fp8_e4m3_encode(x);
    if (want < 0) {
      EXPECT_EQ(got & 0x7F, 0x7E) << x;
    } else {
      EXPECT_EQ(got, want) << "x = " << x;
    }
  }
}

TEST(Fp4E2m1, TableRoundTripTiesAndSaturation) {
  // The decode table of the spec (§4.4), from the bit definition.
  const float expect[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(e2m1_decode(static_cast<uint8_t>(c)), expect[c]);
    EXPECT_EQ(fp4_e2m1_encode(e2m1_decode(static_cast<uint8_t>(c))), c) << c;
  }
  for (int sign : {0, 8}) {
    for (int c = 0; c < 7; ++c) {
      const float lo = e2m1_decode(static_cast<uint8_t>(c | sign));
      const float hi = e2m1_decode(static_cast<uint8_t>((c + 1) | sign));
      const float mid = (lo + hi) / 2;
      EXPECT_EQ(fp4_e2m1_encode(mid), ((c & 1) == 0 ? c : c + 1) | sign) << "mid " << mid;
      EXPECT_EQ(fp4_e2m1_encode(std::nextafter(mid, hi)), (c + 1) | sign);
      EXPECT_EQ(fp4_e2m1_encode(std::nextafter(mid, lo)), c | sign);
    }
  }
  EXPECT_EQ(fp4_e2m1_encode(6.5f), 7);
  EXPECT_EQ(fp4_e2m1_encode(100.0f), 7);
  EXPECT_EQ(fp4_e2m1_encode(-100.0f), 15);
  EXPECT_EQ(fp4_e2m1_encode(std::numeric_limits<float>::infinity()), 7);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-6.0f, 6.0f);
  for (int i = 0; i < 20000; ++i) {
    const float x = u(rng);
    const int want = nearest_code(x, 16, e2m1_decode, 6.0f);
    if (want >= 0) {
      EXPECT_EQ(fp4_e2m1_encode(x), want) << x;
    }
  }
}

TEST(Bf16, RoundsToNearestEven) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> bits(0, 0x7F7FFFFFu);
  for (int i = 0; i < 20000; ++i) {
    uint32_t u = bits(rng) | (i % 2 ? 0x80000000u : 0u);
    float x;
    std::memcpy(&x, &u, 4);
    const uint16_t down = static_cast<uint16_t>(u >> 16);
    const float a = bf16_decode(down), b = bf16_decode(static_cast<uint16_t>(down + 1));
    const double da = std::fabs(static_cast<double>(a) - x),
                 db = std::fabs(static_cast<double>(b) - x);
    const uint16_t want = da < db ? down : db < da ? down + 1 : (down & 1 ? down + 1 : down);
    EXPECT_EQ(bf16_encode(x), want) << x;
  }
  EXPECT_EQ(bf16_encode(1.0f), 0x3F80);
  EXPECT_TRUE(std::isnan(bf16_decode(bf16_encode(std::nanf("")))));
}

TEST(E8m0, SmallestExponentThatFits) {
  for (float amax : {1e-6f, 0.01f, 0.3f, 1.0f, 6.0f, 7.0f, 448.0f, 449.0f, 1e4f}) {
    for (float max_code : {6.0f, 448.0f}) {
      const int e = e8m0_block_exponent(amax, max_code);
      EXPECT_LE(std::ldexp(amax, -e), max_code) << amax << " " << max_code;
      EXPECT_GT(std::ldexp(amax, -(e - 1)), max_code) << amax << " " << max_code;
    }
  }
}

TEST(Fp4QuantizeRow, LowNibbleIsEvenElementAndScalePerBlockOf32) {
  std::vector<float> x(64, 0.0f);
  x[0] = 1.0f;    // low nibble of byte 0
  x[1] = -3.0f;   // high nibble of byte 0
  x[31] = 6.0f;   // block 0 amax 6 -> exponent 0
  x[32] = 0.25f;  // block 1 amax 0.25 -> exponent -5 (0.25 / 2^-5 = 8 > 6 -> -4: 4)
  std::vector<uint8_t> packed(32);
  int exps[2];
  fp4_quantize_row(x.data(), 64, packed.data(), exps);
  EXPECT_EQ(exps[0], 0);
  EXPECT_EQ(exps[1], e8m0_block_exponent(0.25f, 6.0f));
  EXPECT_EQ(packed[0] & 0xF, fp4_e2m1_encode(1.0f));
  EXPECT_EQ(packed[0] >> 4, fp4_e2m1_encode(-3.0f));
  EXPECT_EQ(packed[15] >> 4, fp4_e2m1_encode(6.0f));
  EXPECT_EQ(e2m1_decode(packed[16] & 0xF) * std::ldexp(1.0f, exps[1]), 0.25f);
}

// What synth writes is what the engine reads: the engine's decoders (src/kernels)
// agree with the tables above and with these encoders.
TEST(Encoders, AgreeWithTheEngineKernels) {
  for (int c = 0; c < 256; ++c) {
    const float mine = e4m3_decode(static_cast<uint8_t>(c));
    const float theirs = kernels::fp8_e4m3_decode(static_cast<uint8_t>(c));
    if (std::isnan(mine)) {
      EXPECT_TRUE(std::isnan(theirs)) << c;
    } else {
      EXPECT_EQ(theirs, mine) << c;
      EXPECT_EQ(std::signbit(theirs), std::signbit(mine)) << c;
    }
  }
  for (int c = 0; c < 16; ++c)
    EXPECT_EQ(kernels::fp4_e2m1_decode(static_cast<uint8_t>(c)),
              e2m1_decode(static_cast<uint8_t>(c)));
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-12, 10);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(mant(rng), ex(rng));
    EXPECT_EQ(fp8_e4m3_encode(x), kernels::fp8_e4m3_encode(x)) << x;
    EXPECT_EQ(e2m1_decode(fp4_e2m1_encode(x)), kernels::fp4_e2m1_round(x)) << x;
    const float amax = std::fabs(x) + 1e-4f;
    EXPECT_EQ(std::ldexp(1.0f, e8m0_block_exponent(amax, 448.0f)), kernels::fp8_block_scale(amax))
        << amax;
    EXPECT_EQ(std::ldexp(1.0f, e8m0_block_exponent(amax, 6.0f)), kernels::fp4_block_scale(amax))
        << amax;
  }
  for (int b = 0; b < 255; ++b)
    EXPECT_EQ(kernels::e8m0_decode(static_cast<uint8_t>(b)), std::ldexp(1.0f, b - 127)) << b;
}

// ---------------------------------------------------------------------------
// Configurations.

TEST(SynthConfig, PresetsAreThePublishedConfigs) {
  const ModelConfig f = preset_config("flash");
  EXPECT_EQ(f.vocab_size, 129280);
  EXPECT_EQ(f.dim, 4096);
  EXPECT_EQ(f.n_layers, 43);
  EXPECT_EQ(f.n_heads, 64);
  EXPECT_EQ(f.q_lora_rank, 1024);
  EXPECT_EQ(f.o_groups, 8);
  EXPECT_EQ(f.index_topk, 512);
  EXPECT_EQ(f.n_routed_experts, 256);
  EXPECT_EQ(f.moe_inter_dim, 2048);
  EXPECT_EQ(f.route_scale, 1.5);
  ASSERT_EQ(f.compress_ratios.size(), 44u);
  // §2.3: window-only 0, 1; CSA even 2..42; HCA odd 3..41; MTP window-only.
  for (int64_t i = 0; i < 44; ++i) {
    const int64_t want = i < 2 || i == 43 ? 0 : i % 2 == 0 ? 4 : 128;
    EXPECT_EQ(f.compress_ratios[i], want) << i;
  }
  const ModelConfig p = preset_config("pro");
  EXPECT_EQ(p.dim, 7168);
  EXPECT_EQ(p.n_layers, 61);
  EXPECT_EQ(p.n_heads, 128);
  EXPECT_EQ(p.q_lora_rank, 1536);
  EXPECT_EQ(p.o_groups, 16);
  EXPECT_EQ(p.n_routed_experts, 384);
  EXPECT_EQ(p.moe_inter_dim, 3072);
  EXPECT_EQ(p.index_topk, 1024);
  EXPECT_EQ(p.route_scale, 2.5);
  ASSERT_EQ(p.compress_ratios.size(), 62u);
  for (int64_t i = 0; i < 62; ++i) {
    const int64_t want = i == 61 ? 0 : i < 2 ? 128 : i % 2 == 0 ? 4 : 128;
    EXPECT_EQ(p.compress_ratios[i], want) << i;
  }
  // tiny: the dims of tests/data/golden/tiny-a.
  const ModelConfig t = preset_config("tiny");
  const ModelConfig golden =
      load_model_config(std::string(DSV4_TEST_DATA) + "/golden/tiny-a/checkpoint/config.json");
  EXPECT_EQ(model_config_to_json(t), model_config_to_json(golden));
  EXPECT_THROW(preset_config("huge"), Error);
}

TEST(SynthConfig, CutsTheScheduleAndResizes) {
  SynthOptions o;
  o.like = "flash";
  o.layers = 2;
  o.experts = 16;
  ModelConfig c = synth_config(o);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.compress_ratios, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(c.n_hash_layers, 2);
  EXPECT_EQ(c.n_routed_experts, 16);
  EXPECT_EQ(c.n_activated_experts, 6);
  o.layers = 5;
  o.experts = 4;
  c = synth_config(o);
  EXPECT_EQ(c.compress_ratios, (std::vector<int64_t>{0, 0, 4, 128, 4, 0}));
  EXPECT_EQ(c.n_hash_layers, 3);
  EXPECT_EQ(c.n_activated_experts, 4);
  o.like = "pro";
  o.layers = 2;
  c = synth_config(o);
  EXPECT_EQ(c.compress_ratios, (std::vector<int64_t>{128, 128, 0}));
  o.layers = 62;
  EXPECT_THROW(synth_config(o), Error);
  o.layers = 2;
  o.dim = 100;
  EXPECT_THROW(synth_config(o), Error);
  o.dim = 0;
  o.expert_dtype = "fp16";
  EXPECT_THROW(synth_config(o), Error);
}

TEST(SynthConfig, TokenizerSizesTheVocab) {
  const std::string tok = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";
  // Independent count: max id over model.vocab and added_tokens.
  std::ifstream in(tok + "/tokenizer.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  int64_t max_id = 0;
  for (const auto& [k, v] : j["model"]["vocab"].items()) max_id = std::max<int64_t>(max_id, v);
  for (const auto& t : j["added_tokens"]) max_id = std::max<int64_t>(max_id, t["id"]);
  SynthOptions o;
  o.tokenizer_dir = tok;
  EXPECT_EQ(synth_config(o).vocab_size, max_id + 1);
  EXPECT_EQ(max_id + 1, 129280);  // the V4 vocabulary (§2.1)
  o.vocab = 100;
  EXPECT_THROW(synth_config(o), Error);
}

// ---------------------------------------------------------------------------
// Independent counts from the spec's shapes (§2.4, §4.2).

struct Acc {
  int64_t params = 0, active = 0;
  uint64_t bytes = 0, decode = 0;
  int64_t scale_bytes = 1;  // E8M0, or 4 for the F32 scales of Base checkpoints
  // `copies` tensors of this kind, `read` of them touched per token.
  void add(int64_t p, int64_t b, int64_t copies = 1, int64_t read = 1) {
    params += copies * p;
    active += read * p;
    bytes += static_cast<uint64_t>(copies * b);
    decode += static_cast<uint64_t>(read * b);
  }
  void fp8(int64_t out, int64_t in, int64_t copies = 1, int64_t read = 1) {
    add(out * in, out * in + ((out + 127) / 128) * ((in + 127) / 128) * scale_bytes, copies, read);
  }
  void fp4(int64_t out, int64_t in, int64_t copies, int64_t read) {
    add(out * in, out * in / 2 + out * (in / 32), copies, read);
  }
  void bf16(int64_t n) { add(n, 2 * n); }
  void f32(int64_t n) { add(n, 4 * n); }
};

struct Expected {
  Acc main, mtp;
};

Expected expected_counts(const ModelConfig& c) {
  const int64_t D = c.dim, H = c.n_heads, hd = c.head_dim, E = c.n_routed_experts;
  const int64_t k = c.n_activated_experts, I = c.moe_inter_dim, V = c.vocab_size;
  const int64_t mix = (2 + c.hc_mult) * c.hc_mult, hcD = c.hc_mult * D;
  const bool fp8_experts = c.expert_dtype == ExpertDType::kFP8;
  auto block = [&](Acc& a, int64_t ratio, bool hash) {
    a.bf16(D);                                               // attn_norm
    a.bf16(D);                                               // ffn_norm
    for (int i = 0; i < 2; ++i) a.f32(mix * hcD + 3 + mix);  // hc_attn, hc_ffn: fn, scale, base
    a.f32(H);                                                // attn_sink
    a.fp8(c.q_lora_rank, D);                                 // wq_a
    a.bf16(c.q_lora_rank);                                   // q_norm
    a.fp8(H * hd, c.q_lora_rank);                            // wq_b
    a.fp8(hd, D);                                            // wkv
    a.bf16(hd);                                              // kv_norm
    a.fp8(c.o_groups * c.o_lora_rank, H * hd / c.o_groups);  // wo_a
    a.fp8(D, c.o_groups * c.o_lora_rank);                    // wo_b
    if (ratio > 0) {
      const int64_t coff = ratio == 4 ? 2 : 1;
      a.f32(ratio * coff * hd);   // ape
      a.bf16(2 * coff * hd * D);  // wkv, wgate
      a.bf16(hd);                 // norm
    }
    if (ratio == 4) {
      const int64_t ih = c.index_n_heads, ihd = c.index_head_dim;
      a.fp8(ih * ihd, c.q_lora_rank);  // indexer.wq_b
      a.bf16(ih * D);                  // weights_proj
      a.f32(4 * 2 * ihd);              // indexer compressor ape
      a.bf16(2 * 2 * ihd * D);         // wkv, wgate
      a.bf16(ihd);                     // norm
    }
    a.bf16(E * D);  // gate.weight
    if (hash) {
      a.bytes += static_cast<uint64_t>(V * k * 8);  // tid2eid: no parameters; one row per token
      a.decode += static_cast<uint64_t>(k * 8);
    } else {
      a.f32(E);  // gate.bias
    }
    for (int w = 0; w < 3; ++w) {  // routed w1, w2, w3: k of E read per token
      const int64_t out = w == 1 ? D : I, in = w == 1 ? I : D;
      if (fp8_experts)
        a.fp8(out, in, E, k);
      else
        a.fp4(out, in, E, k);
    }
    for (int w = 0; w < 3 * c.n_shared_experts; ++w) w % 3 == 1 ? a.fp8(D, I) : a.fp8(I, D);
  };
  Expected x;
  x.main.scale_bytes = x.mtp.scale_bytes = fp8_experts ? 4 : 1;
  x.main.add(V * D, 2 * V * D);  // embed: whole in the parameter counts ...
  x.main.decode -= static_cast<uint64_t>(2 * V * D - 2 * D);  // ... one row read per token
  for (int64_t i = 0; i < c.n_layers; ++i) block(x.main, c.compress_ratios[i], i < c.n_hash_layers);
  x.main.bf16(D);                               // norm
  x.main.f32(c.hc_mult * hcD + 1 + c.hc_mult);  // hc_head
  x.main.bf16(V * D);                           // head
  for (int64_t m = 0; m < c.n_mtp_layers; ++m) {
    block(x.mtp, c.compress_ratios[c.n_layers + m], false);
    x.mtp.fp8(D, D);                            // e_proj
    x.mtp.fp8(D, D);                            // h_proj
    for (int i = 0; i < 3; ++i) x.mtp.bf16(D);  // enorm, hnorm, norm
    x.mtp.f32(c.hc_mult * hcD + 1 + c.hc_mult);
  }
  return x;
}

void expect_matches_formulas(const ModelSummary& s, const ModelConfig& c) {
  const Expected x = expected_counts(c);
  EXPECT_EQ(s.params_total, x.main.params);
  EXPECT_EQ(s.params_active, x.main.active);
  EXPECT_EQ(s.params_mtp, x.mtp.params);
  EXPECT_EQ(s.params_mtp_active, x.mtp.active);
  EXPECT_EQ(s.bytes_total, x.main.bytes + x.mtp.bytes);
  EXPECT_EQ(s.bytes_mtp, x.mtp.bytes);
  EXPECT_EQ(s.decode_bytes_per_token, x.main.decode);
  EXPECT_EQ(s.decode_bytes_mtp_per_token, x.mtp.decode);
  EXPECT_EQ(s.params_embed, c.vocab_size * c.dim);
}

TEST(Inspect, FlashCountsMatchSpecFormulasAndPublishedFigures) {
  const ModelConfig c = preset_config("flash");
  const ModelSummary s = summarize_config(c);
  expect_matches_formulas(s, c);
  // Published: 284B total, 13B activated (§1).
  EXPECT_NEAR(s.params_total / 1e9, 284, 1.0);
  EXPECT_NEAR((s.params_active - s.params_embed) / 1e9, 13, 0.5);
  // §6.3: 21 x 584/4 + 20 x 584/128 = 3157 B; + 21 x 68/4 = 3514 B.
  EXPECT_EQ(s.kv_row_bytes, 584);
  EXPECT_EQ(s.indexer_key_bytes, 68);
  EXPECT_DOUBLE_EQ(s.kv_main_bytes_per_token, 21 * 584.0 / 4 + 20 * 584.0 / 128);
  EXPECT_EQ(std::lround(std::floor(s.kv_main_bytes_per_token)), 3157);
  EXPECT_EQ(std::lround(std::floor(s.kv_bytes_per_token)), 3514);
  EXPECT_EQ(s.window_bytes, 43u * 128 * 584);  // ≈ 3.2 MB
  int csa = 0, hca = 0, window = 0, hash = 0;
  for (const auto& l : s.layers) {
    if (l.mtp) continue;
    (l.attention == "CSA" ? csa : l.attention == "HCA" ? hca : window)++;
    hash += l.hash_routing;
  }
  EXPECT_EQ(csa, 21);
  EXPECT_EQ(hca, 20);
  EXPECT_EQ(window, 2);
  EXPECT_EQ(hash, 3);
}

TEST(Inspect, ProCountsMatchSpecFormulasAndPublishedFigures) {
  const ModelConfig c = preset_config("pro");
  const ModelSummary s = summarize_config(c);
  expect_matches_formulas(s, c);
  EXPECT_NEAR(s.params_total / 1e12, 1.6, 0.05);  // "1.6T total"
  EXPECT_NEAR(s.params_active / 1e9, 49, 1.0);    // "49B activated"
  EXPECT_EQ(std::lround(std::floor(s.kv_main_bytes_per_token)), 4521);
  EXPECT_EQ(std::lround(std::floor(s.kv_bytes_per_token)), 5031);
  EXPECT_EQ(s.window_bytes, 61u * 128 * 584);
}

TEST(Inspect, OfficialTinyCheckpointCounts) {
  // The official-format files: the real dtypes and total_size of the index.
  const std::string dir = std::string(DSV4_TEST_DATA) + "/golden/tiny-a/checkpoint";
  Checkpoint ckpt(dir);
  const ModelSummary s = summarize(ckpt.config(), checkpoint_tensor_stats(ckpt));
  expect_matches_formulas(s, ckpt.config());
  std::ifstream in(dir + "/model.safetensors.index.json");
  EXPECT_EQ(s.bytes_total, nlohmann::json::parse(in)["metadata"]["total_size"].get<uint64_t>());
  // tiny-a: layers 1, 3 CSA; 2 HCA (ratio 128); 4 index heads of 128 (§2 of the golden README).
  EXPECT_DOUBLE_EQ(s.kv_main_bytes_per_token, 2 * 584.0 / 4 + 584.0 / 128);
  EXPECT_DOUBLE_EQ(s.kv_indexer_bytes_per_token, 2 * 68.0 / 4);
  EXPECT_EQ(s.window_bytes, 4u * 16 * 584);
}

// ---------------------------------------------------------------------------
// Synthesized checkpoints.

class TempDir {
 public:
  explicit TempDir(const std::string& tag)
      : path_(fs::temp_directory_path() /
              ("dsv4-test-synth-" + tag + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Dequantizes an FP8 linear and checks every block's scale is the smallest
// power of two that fits (as the reference quantizes); returns the values.
std::vector<double> check_fp8_linear(const QuantLinear& l) {
  const auto* w = l.weight.as<uint8_t>();
  const int64_t cb = (l.in + 127) / 128;
  std::vector<double> out(static_cast<size_t>(l.out * l.in));
  for (int64_t rb = 0; rb < (l.out + 127) / 128; ++rb) {
    for (int64_t b = 0; b < cb; ++b) {
      double scale;
      if (l.scale.dtype == DType::F32) {
        float f;
        std::memcpy(&f, l.scale.data + 4 * (rb * cb + b), 4);
        scale = f;
      } else {
        scale = std::ldexp(1.0, static_cast<int>(l.scale.as<uint8_t>()[rb * cb + b]) - 127);
      }
      float amax_code = 0;
      for (int64_t r = rb * 128; r < std::min(l.out, rb * 128 + 128); ++r)
        for (int64_t c = b * 128; c < std::min(l.in, b * 128 + 128); ++c) {
          const float v = e4m3_decode(w[r * l.in + c]);
          EXPECT_FALSE(std::isnan(v));
          amax_code = std::max(amax_code, std::fabs(v));
          out[static_cast<size_t>(r * l.in + c)] = v * scale;
        }
      EXPECT_GT(amax_code, 448.0f / 2 * 0.9f) << l.weight.name << " block " << rb << "," << b;
      EXPECT_LE(amax_code, 448.0f);
    }
  }
  return out;
}

std::vector<double> check_fp4_linear(const QuantLinear& l) {
  const auto* w = l.weight.as<uint8_t>();
  const auto* s = l.scale.as<uint8_t>();
  std::vector<double> out(static_cast<size_t>(l.out * l.in));
  for (int64_t r = 0; r < l.out; ++r) {
    for (int64_t b = 0; b < l.in / 32; ++b) {
      const double scale = std::ldexp(1.0, static_cast<int>(s[r * (l.in / 32) + b]) - 127);
      float amax_code = 0;
      for (int64_t i = b * 32; i < b * 32 + 32; ++i) {
        const uint8_t byte = w[r * (l.in / 2) + i / 2];
        const float v = e2m1_decode(i % 2 == 0 ? byte & 0xF : byte >> 4);  // low nibble = even
        amax_code = std::max(amax_code, std::fabs(v));
        out[static_cast<size_t>(r * l.in + i)] = v * scale;
      }
      // The block maximum lands on 4 or 6 (3 < amax/scale <= 6 before rounding).
      EXPECT_GE(amax_code, 3.0f) << l.weight.name << " row " << r << " block " << b;
    }
  }
  return out;
}

void expect_std(const std::vector<double>& v, double want, const std::string& what) {
  double ss = 0, sum = 0;
  for (double x : v) {
    ss += x * x;
    sum += x;
  }
  const double n = static_cast<double>(v.size());
  EXPECT_NEAR(sum / n, 0.0, 4 * want / std::sqrt(n) + 1e-3 * want) << what;
  EXPECT_NEAR(std::sqrt(ss / n), want, 0.06 * want) << what;
}

float read_scalar(const TensorView& t, int64_t i) {
  if (t.dtype == DType::F32) {
    float f;
    std::memcpy(&f, t.data + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, t.data + 2 * i, 2);
  return bf16_decode(h);
}

// Runs a prompt and a few decode steps through the real forward pass and
// checks the logits are finite and not degenerate, and the residual streams
// stay O(1) (the synthesized weights are scaled for that). Returns the RMS of
// the last position's streams.
double expect_sane_forward(const std::string& dir, int64_t prompt_len, int64_t decode_steps) {
  Model model(dir);
  const ModelConfig& c = model.config();
  auto state = model.new_sequence();
  std::vector<int32_t> tokens;
  for (int64_t i = 0; i < prompt_len + decode_steps + 1; ++i)
    tokens.push_back(static_cast<int32_t>((i * 7919 + 13) % c.vocab_size));
  std::vector<float> logits, hidden;
  Model::ForwardOptions opts;
  opts.hidden = &hidden;
  auto check = [&](const std::string& what) {
    EXPECT_EQ(static_cast<int64_t>(logits.size()), c.vocab_size) << what;
    double sum = 0, ss = 0;
    for (float x : logits) {
      EXPECT_TRUE(std::isfinite(x)) << what;
      sum += x;
      ss += double(x) * x;
    }
    const double n = static_cast<double>(logits.size());
    EXPECT_GT(ss / n - (sum / n) * (sum / n), 1e-6) << what << ": constant logits";
  };
  model.forward(*state, std::span<const int32_t>(tokens.data(), prompt_len), &logits, opts);
  check("prefill");
  for (int64_t t = 0; t < decode_steps; ++t) {
    model.forward(*state, std::span<const int32_t>(&tokens[prompt_len + t], 1), &logits, opts);
    check("decode step " + std::to_string(t));
  }
  EXPECT_EQ(state->pos, prompt_len + decode_steps);
  double ss = 0;
  for (float x : hidden) ss += double(x) * x;
  const double rms = std::sqrt(ss / static_cast<double>(hidden.size()));
  EXPECT_GT(rms, 0.05);
  EXPECT_LT(rms, 50.0);
  std::printf("%s: final residual stream RMS %.3f\n", dir.c_str(), rms);
  // The MTP block on the last main-model hidden state.
  std::vector<float> mtp_logits;
  model.mtp(*state, 0, hidden.data(),
            std::span<const int32_t>(&tokens[prompt_len + decode_steps], 1), nullptr, &mtp_logits,
            nullptr);
  logits = mtp_logits;
  check("mtp");
  return rms;
}

TEST(Synth, TinyLoadsShardsAndHasRealisticValues) {
  TempDir dir("tiny");
  SynthOptions o;
  o.like = "tiny";
  o.out = dir.str();
  o.seed = 11;
  o.shard_bytes = 4 << 20;
  const SynthResult r = synth_checkpoint(o);
  EXPECT_GE(r.files.size(), 3u);
  Checkpoint ckpt(dir.str());
  EXPECT_EQ(ckpt.num_shards(), r.files.size());
  const ModelWeights w = bind_weights(ckpt);
  EXPECT_EQ(ckpt.tensors().size(), expected_tensors(ckpt.config()).size());
  EXPECT_EQ(model_config_to_json(ckpt.config()), model_config_to_json(preset_config("tiny")));
  // Shards respect the limit (each holds more than one tensor here) and the index total.
  std::ifstream in(dir.path() / "model.safetensors.index.json");
  const nlohmann::json index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), ckpt.total_bytes());
  EXPECT_EQ(ckpt.total_bytes(), r.tensor_bytes);
  for (const auto& f : r.files) {
    EXPECT_LE(fs::file_size(dir.path() / f), o.shard_bytes + 65536) << f;
    EXPECT_EQ(f.size(), std::string("model-00001-of-00003.safetensors").size()) << f;
    EXPECT_EQ(f.rfind("model-0000", 0), 0u) << f;
    EXPECT_EQ(f.substr(11, 8), "-of-0000") << f;
  }
  EXPECT_TRUE(fs::exists(dir.path() / "inference" / "config.json"));
  // Every tensor starts at a multiple of its element size.
  for (const auto& [name, t] : ckpt.tensors())
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % dtype_size(t->dtype), 0u) << name;

  // Linears: N(0, 1/fan_in) after dequantization, reference-style scales.
  const auto& l0 = w.layers[0];
  expect_std(check_fp8_linear(l0.attn.wq_b), 1 / std::sqrt(double(l0.attn.wq_b.in)), "wq_b");
  expect_std(check_fp8_linear(l0.attn.wo_a), 1 / std::sqrt(double(l0.attn.wo_a.in)), "wo_a");
  std::vector<double> experts;
  for (const auto& e : l0.ffn.experts) {
    auto v = check_fp4_linear(e.w1);
    experts.insert(experts.end(), v.begin(), v.end());
  }
  expect_std(experts, 1 / std::sqrt(double(ckpt.config().dim)), "experts w1");
  // Norm gains near 1, hc scales positive, tid2eid rows of distinct valid experts.
  const TensorView& norm = l0.attn_norm;
  for (int64_t i = 0; i < norm.numel(); ++i) EXPECT_NEAR(read_scalar(norm, i), 1.0f, 0.6f);
  for (int64_t i = 0; i < l0.hc_attn.scale.numel(); ++i)
    EXPECT_GT(read_scalar(l0.hc_attn.scale, i), 0.0f);
  const int64_t k = ckpt.config().n_activated_experts;
  for (const auto& layer : w.layers) {
    if (!layer.ffn.hash) continue;
    ASSERT_EQ(layer.ffn.tid2eid.dtype, DType::I64);
    const auto* t = layer.ffn.tid2eid.as<int64_t>();
    for (int64_t row = 0; row < ckpt.config().vocab_size; ++row) {
      std::set<int64_t> ids(t + row * k, t + row * k + k);
      EXPECT_EQ(static_cast<int64_t>(ids.size()), k) << "row " << row;
      EXPECT_GE(*ids.begin(), 0);
      EXPECT_LT(*ids.rbegin(), ckpt.config().n_routed_experts);
    }
  }
  expect_matches_formulas(summarize(ckpt.config(), checkpoint_tensor_stats(ckpt)), ckpt.config());
  // 40 tokens: the 16-row window wraps, each CSA layer makes 10 entries (more
  // than index_topk = 8, so the indexer selects); then decode steps.
  expect_sane_forward(dir.str(), 40, 3);
}

TEST(Synth, DeterministicPerSeedAndReplacesEarlierOutput) {
  TempDir a("det-a"), b("det-b");
  SynthOptions o;
  o.like = "tiny";
  o.layers = 2;
  o.seed = 5;
  o.out = a.str();
  o.shard_bytes = 1 << 20;  // sharded
  synth_checkpoint(o);
  o.out = b.str();
  synth_checkpoint(o);
  for (const auto& e : fs::directory_iterator(a.path()))
    if (e.is_regular_file()) {
      EXPECT_EQ(slurp(e.path()), slurp(b.path() / e.path().filename())) << e.path();
    }
  // Another seed, single file: the old shards and index must go.
  o.seed = 6;
  o.shard_bytes = 1ull << 40;
  const SynthResult r = synth_checkpoint(o);
  ASSERT_EQ(r.files, std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(b.path() / "model.safetensors.index.json"));
  for (const auto& e : fs::directory_iterator(b.path()))
    EXPECT_EQ(e.path().filename().string().find("model-"), std::string::npos) << e.path();
  Checkpoint c1(a.str()), c2(b.str());
  bind_weights(c2);
  const TensorView* x = c1.find("layers.0.attn.wq_a.weight");
  const TensorView* y = c2.find("layers.0.attn.wq_a.weight");
  ASSERT_TRUE(x && y);
  EXPECT_NE(std::memcmp(x->data, y->data, x->nbytes), 0);
}

TEST(Synth, RefusesToOverwriteARealCheckpoint) {
  TempDir dir("foreign");
  const fs::path golden = fs::path(DSV4_TEST_DATA) / "golden" / "tiny-a" / "checkpoint";
  fs::copy(golden, dir.path(), fs::copy_options::recursive);
  SynthOptions o;
  o.like = "tiny";
  o.out = dir.str();
  try {
    synth_checkpoint(o);
    ADD_FAILURE() << "synth overwrote a checkpoint it did not write";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did not write"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(dir.str()), std::string::npos) << e.what();
  }
  for (const auto& e : fs::directory_iterator(golden))
    if (e.is_regular_file()) {
      EXPECT_EQ(slurp(e.path()), slurp(dir.path() / e.path().filename())) << e.path();
    }
  Checkpoint ckpt(dir.str());  // still the golden model
  bind_weights(ckpt);
}

TEST(Synth, BaseVariantHasFp8ExpertsWithF32Scales) {
  TempDir dir("fp8");
  SynthOptions o;
  o.like = "tiny";
  o.expert_dtype = "fp8";
  o.out = dir.str();
  synth_checkpoint(o);
  Checkpoint ckpt(dir.str());
  EXPECT_EQ(ckpt.config().expert_dtype, ExpertDType::kFP8);
  const ModelWeights w = bind_weights(ckpt);
  const auto& e = w.layers.back().ffn.experts.back();
  EXPECT_EQ(e.w1.weight.dtype, DType::F8_E4M3);
  EXPECT_EQ(e.w1.scale.dtype, DType::F32);
  EXPECT_EQ(w.layers[0].attn.wq_a.scale.dtype, DType::F32);
  expect_std(check_fp8_linear(e.w2), 1 / std::sqrt(double(e.w2.in)), "fp8 expert w2");
  expect_matches_formulas(summarize(ckpt.config(), checkpoint_tensor_stats(ckpt)), ckpt.config());
  expect_sane_forward(dir.str(), 20, 2);
}

TEST(Synth, FlashDimsTwoLayersSixteenExperts) {
  if (kSanitized) GTEST_SKIP() << "gigabyte synth skipped under sanitizers";
  TempDir dir("flash");
  SynthOptions o;
  o.like = "flash";
  o.layers = 2;
  o.experts = 16;
  o.out = dir.str();
  o.shard_bytes = 1000000000;  // real-repo-like shards
  const SynthResult r = synth_checkpoint(o);
  EXPECT_GT(r.files.size(), 1u);
  Checkpoint ckpt(dir.str());
  const ModelWeights w = bind_weights(ckpt);
  const ModelConfig& c = ckpt.config();
  EXPECT_EQ(c.dim, 4096);
  EXPECT_EQ(c.vocab_size, 129280);
  // Spec §4.2 shapes.
  EXPECT_EQ(w.layers[1].attn.wq_b.weight.shape, (std::vector<int64_t>{32768, 1024}));
  EXPECT_EQ(w.layers[1].attn.wq_b.scale.shape, (std::vector<int64_t>{256, 8}));
  EXPECT_EQ(w.layers[1].ffn.experts[3].w2.weight.shape, (std::vector<int64_t>{4096, 1024}));
  EXPECT_EQ(w.layers[1].ffn.experts[3].w2.scale.shape, (std::vector<int64_t>{4096, 64}));
  EXPECT_EQ(w.layers[0].ffn.tid2eid.shape, (std::vector<int64_t>{129280, 6}));
  expect_std(check_fp4_linear(w.layers[1].ffn.experts[15].w2), 1 / std::sqrt(2048.0), "w2");
  expect_std(check_fp8_linear(w.mtp[0].e_proj), 1 / 64.0, "e_proj");
  const ModelSummary s = summarize(c, checkpoint_tensor_stats(ckpt));
  expect_matches_formulas(s, c);
  EXPECT_EQ(s.bytes_total, r.tensor_bytes);
  expect_sane_forward(dir.str(), 6, 2);
}

TEST(Synth, ProDimsTwoLayers) {
  if (kSanitized) GTEST_SKIP() << "gigabyte synth skipped under sanitizers";
  TempDir dir("pro");
  SynthOptions o;
  o.like = "pro";
  o.layers = 2;
  o.experts = 4;
  o.vocab = 1024;  // keeps the test's embedding small; every per-layer dim is Pro's
  o.out = dir.str();
  synth_checkpoint(o);
  Checkpoint ckpt(dir.str());
  const ModelWeights w = bind_weights(ckpt);
  EXPECT_EQ(w.layers[0].attn.ratio, 128);
  EXPECT_EQ(w.layers[0].attn.compressor.ape.shape, (std::vector<int64_t>{128, 512}));
  EXPECT_EQ(w.layers[0].attn.wo_b.weight.shape, (std::vector<int64_t>{7168, 16384}));
  EXPECT_EQ(w.layers[0].attn.wo_b.scale.shape, (std::vector<int64_t>{56, 128}));
  EXPECT_EQ(w.layers[1].ffn.experts[0].w1.weight.shape, (std::vector<int64_t>{3072, 3584}));
  EXPECT_EQ(w.layers[1].ffn.experts[0].w1.scale.shape, (std::vector<int64_t>{3072, 224}));
  expect_matches_formulas(summarize(ckpt.config(), checkpoint_tensor_stats(ckpt)), ckpt.config());
  expect_sane_forward(dir.str(), 4, 1);
}

}  // namespace
}  // namespace dsv4
