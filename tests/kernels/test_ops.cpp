// Transformer ops against exact / float64 computations.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "kernels/linear.h"
#include "kernels/numerics.h"
#include "kernels/ops.h"

namespace dsv4::kernels {
namespace {

std::vector<float> random_bf16(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_round(d(rng));
  return v;
}

TEST(Sinkhorn, DoublyStochasticComb) {
  const int64_t hc = 4, mixw = (2 + hc) * hc;
  const std::vector<float> mix = random_bf16(mixw, 1, 1.0f);
  const float scale[3] = {0.7f, 1.3f, 1.0f};
  const std::vector<float> base = random_bf16(mixw, 2);
  float pre[4], post[4], comb[16];
  hc_split_sinkhorn(mix.data(), hc, scale, base.data(), 20, 1e-6f, pre, post, comb);
  for (int j = 0; j < hc; ++j) {
    double row = 0, col = 0;
    for (int k = 0; k < hc; ++k) row += comb[j * hc + k], col += comb[k * hc + j];
    EXPECT_NEAR(col, 1.0, 1e-5) << "column " << j;  // the last step normalises columns
    EXPECT_NEAR(row, 1.0, 1e-2) << "row " << j;     // 20 iterations: close, not exact
    const double want_pre = 1 / (1 + std::exp(-(mix[j] * 0.7 + base[j]))) + 1e-6;
    const double want_post = 2 / (1 + std::exp(-(mix[hc + j] * 1.3 + base[hc + j])));
    EXPECT_NEAR(pre[j], want_pre, 1e-6);
    EXPECT_NEAR(post[j], want_post, 1e-6);
  }
}

TEST(Yarn, CorrectionRangeForBase160000) {
  int64_t low, high;
  yarn_correction_range(64, 160000, 65536, 32, 1, &low, &high);
  EXPECT_EQ(low, 15);
  EXPECT_EQ(high, 25);
}

TEST(Yarn, FrequenciesFollowTheRamp) {
  const RopeTable t(64, 160000, true, 16, 65536, 32, 1);
  const RopeTable plain(64, 160000, false, 16, 65536, 32, 1);
  for (int i = 0; i < 32; ++i) {
    const double f = std::pow(160000.0, -2.0 * i / 64);
    const double ramp = std::clamp((i - 15) / 10.0, 0.0, 1.0);  // 0 below 15, 1 from 25
    const double want = f / 16 * ramp + f * (1 - ramp);
    EXPECT_NEAR(t.freqs()[i], want, want * 1e-6) << i;
    EXPECT_NEAR(plain.freqs()[i], f, f * 1e-6) << i;
  }
}

TEST(Rope, InterleavedPairsAndInverse) {
  const RopeTable t(64, 10000, false, 1, 0, 32, 1);
  std::vector<float> x = random_bf16(64, 3), y = x;
  t.apply(y.data(), 37, false);
  for (int i = 0; i < 32; ++i) {
    const double a = 37.0 * static_cast<float>(std::pow(10000.0, -2.0 * i / 64));
    const double re = x[2 * i] * std::cos(a) - x[2 * i + 1] * std::sin(a);
    const double im = x[2 * i] * std::sin(a) + x[2 * i + 1] * std::cos(a);
    EXPECT_NEAR(y[2 * i], re, 1e-2 * (std::fabs(re) + 1e-3)) << i;
    EXPECT_NEAR(y[2 * i + 1], im, 1e-2 * (std::fabs(im) + 1e-3)) << i;
  }
  t.apply(y.data(), 37, true);  // back, up to bf16 rounding
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(y[i], x[i], 2e-2 * (std::fabs(x[i]) + 0.05)) << i;
  std::vector<float> z = x;
  t.apply(z.data(), 0, false);
  EXPECT_EQ(z, x);  // position 0 is the identity
}

TEST(Hadamard, MatchesSylvesterMatrix) {
  const int n = 16;
  std::vector<float> x = random_bf16(n, 4), y = x;
  hadamard(y.data(), n, 0.25f);
  for (int i = 0; i < n; ++i) {
    double want = 0;
    for (int j = 0; j < n; ++j) want += (__builtin_popcount(i & j) % 2 ? -1.0 : 1.0) * x[j];
    EXPECT_NEAR(y[i], want * 0.25, 1e-5) << i;
  }
}

TEST(TopK, LargestFirstTiesToLowerIndex) {
  const float s[] = {1, 5, 3, 5, NAN, 5, -1};
  EXPECT_EQ(topk(s, 7, 3), (std::vector<int32_t>{1, 3, 5}));
  EXPECT_EQ(topk(s, 7, 5), (std::vector<int32_t>{1, 3, 5, 2, 0}));
  EXPECT_EQ(topk(s, 7, 10).size(), 7u);
  EXPECT_EQ(topk(s, 7, 10).back(), 4);  // NaN last
}

TEST(RmsNorm, Fp32MathBf16Output) {
  const std::vector<float> x = random_bf16(256, 5), w = random_bf16(256, 6);
  std::vector<float> y(256);
  rms_norm(x.data(), 1, 256, w.data(), 1e-6f, y.data());
  double ss = 0;
  for (float v : x) ss += static_cast<double>(v) * v;
  const double r = 1 / std::sqrt(ss / 256 + 1e-6);
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(y[i], bf16_round(y[i]));
    EXPECT_NEAR(y[i], w[i] * x[i] * r, std::fabs(w[i] * x[i] * r) * 1e-2 + 1e-6);
  }
}

// Float64 softmax attention with the sink in the denominator.
std::vector<double> attention_reference(const std::vector<float>& q, const std::vector<float>& kv,
                                        const std::vector<int32_t>& idx, float sink, float scale,
                                        int dim) {
  double mx = sink;  // any shift works in float64
  std::vector<double> z;
  for (int32_t j : idx) {
    if (j < 0) continue;
    double d = 0;
    for (int c = 0; c < dim; ++c) d += static_cast<double>(q[c]) * kv[j * dim + c];
    z.push_back(d * scale);
    mx = std::max(mx, z.back());
  }
  std::vector<double> o(dim, 0.0);
  double den = std::exp(sink - mx);
  size_t k = 0;
  for (int32_t j : idx) {
    if (j < 0) continue;
    const double p = std::exp(z[k++] - mx);
    den += p;
    for (int c = 0; c < dim; ++c) o[c] += p * kv[j * dim + c];
  }
  for (double& v : o) v /= den;
  return o;
}

TEST(SparseAttention, MatchesFloat64SoftmaxAcrossTiles) {
  const int dim = 64, rows = 200, width = 150;  // three tiles of 64
  const std::vector<float> kv = random_bf16(rows * dim, 7), q = random_bf16(dim, 8, 0.5f);
  std::vector<int32_t> idx(width);
  for (int i = 0; i < width; ++i)
    idx[i] = (i % 11 == 3) ? -1 : (i * 7) % rows;  // masked entries too
  const float sink = 0.3f, scale = 0.125f;
  std::vector<float> out(dim);
  sparse_attention(q.data(), 1, 1, dim, kv.data(), idx.data(), width, &sink, scale, out.data());
  const std::vector<double> want = attention_reference(q, kv, idx, sink, scale, dim);
  double num = 0, den = 0;
  for (int c = 0; c < dim; ++c) {
    EXPECT_EQ(out[c], bf16_round(out[c]));
    num += (out[c] - want[c]) * (out[c] - want[c]);
    den += want[c] * want[c];
  }
  // bf16 numerators and output: about 2^-9 relative.
  EXPECT_LT(std::sqrt(num / den), 5e-3);
}

TEST(SparseAttention, HeadGroupsMatchTheReferenceBitForBit) {
  // sparse_attention walks each list once per group of 16 heads; it must give exactly what the
  // one-(query, head)-at-a-time definition gives: 20 heads (a partial group), 3 queries, lists
  // crossing tiles, masked entries, and a query whose whole first tile is masked.
  // 66: the dot products' tail past whole groups of 4 (and no AVX-512 head pairs); 21 heads:
  // an odd head left without a pair partner.
  // 68: AVX-512 head pairs with a masked last block of 16 dims in the P·V updates.
  for (const auto& [dim, heads] :
       {std::pair{64, 20}, std::pair{66, 20}, std::pair{64, 21}, std::pair{68, 20}}) {
    const int rows = 200, width = 150, m = 3;
    const std::vector<float> kv = random_bf16(rows * dim, 11);
    // Full-precision queries over a wide range of magnitudes, so that the double sums round and
    // any change in their association order would show.
    std::vector<float> q(m * heads * dim);
    std::mt19937 rng(12);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& v : q) v = std::ldexp(u(rng), static_cast<int>(rng() % 40) - 20);
    std::vector<int32_t> idx(m * width);
    for (int i = 0; i < m; ++i)
      for (int e = 0; e < width; ++e)
        idx[i * width + e] = (i == 2 && e < 64) || (e % 13 == 5) ? -1 : (e * 7 + i * 31) % rows;
    std::vector<float> sinks(heads);
    for (int h = 0; h < heads; ++h) sinks[h] = 0.1f * static_cast<float>(h) - 1.0f;
    std::vector<const float*> ptrs(rows);
    for (int r = 0; r < rows; ++r) ptrs[r] = kv.data() + r * dim;
    std::vector<float> got(m * heads * dim), want(m * heads * dim);
    sparse_attention(q.data(), m, heads, dim, ptrs.data(), idx.data(), width, sinks.data(), 0.125f,
                     got.data());
    sparse_attention_reference(q.data(), m, heads, dim, ptrs.data(), idx.data(), width,
                               sinks.data(), 0.125f, want.data());
    for (size_t k = 0; k < got.size(); ++k)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[k]), std::bit_cast<uint32_t>(want[k]))
          << "dim " << dim << " element " << k;
  }
}

TEST(SparseAttention, ScoreLaneSumsAddInDotF64sOrder) {
  // The scores' double lane sums (dot_f64: lanes k mod 4, then (s0 + s1) + (s2 + s3)) decide a
  // float rounding here: lane 0 holds 2^20 + 2^-4 (a float tie), lanes 2 and 3 hold 2^-33
  // each (half a double ulp there). In dot_f64's order the two add to 2^-32 first and lift the
  // sum above the tie: row 1 scores 2^20 + 2^-3, as row 0 does, and the two rows share the
  // weight equally. Any other pairing rounds the 2^-33s away and row 1 scores 2^20, a visible
  // exp(-1/8) in its weight.
  const int dim = 64;
  std::vector<float> q(dim, 0.0f), kv(2 * dim, 0.0f);
  q[0] = std::ldexp(1.0f, 20), q[4] = std::ldexp(1.0f, -4);
  q[2] = q[3] = std::ldexp(1.0f, -33);
  kv[0] = 1.0f, kv[4] = 2.0f, kv[8] = 1.0f;       // row 0: 2^20 + 2^-3 exactly; value 1 at dim 8
  for (int k : {0, 2, 3, 4}) kv[dim + k] = 1.0f;  // row 1
  kv[dim + 9] = 1.0f;                             // value 1 at dim 9
  const int32_t idx[2] = {0, 1};
  const float sink = -1e30f;
  const float* rows[2] = {kv.data(), kv.data() + dim};
  std::vector<float> out(dim), want(dim);
  sparse_attention(q.data(), 1, 1, dim, rows, idx, 2, &sink, 1.0f, out.data());
  sparse_attention_reference(q.data(), 1, 1, dim, rows, idx, 2, &sink, 1.0f, want.data());
  EXPECT_EQ(out[8], 0.5f);
  EXPECT_EQ(out[9], 0.5f);
  for (int d = 0; d < dim; ++d) EXPECT_EQ(out[d], want[d]) << d;
}

TEST(SparseAttention, OnlyMaskedGivesZeroAndSinkScalesSingleKey) {
  const int dim = 8;
  const std::vector<float> kv = random_bf16(2 * dim, 9), q = random_bf16(dim, 10);
  const int32_t masked[2] = {-1, -1};
  const float sink = 1.0f;
  std::vector<float> out(dim, 7.0f);
  sparse_attention(q.data(), 1, 1, dim, kv.data(), masked, 2, &sink, 1.0f, out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  const int32_t one[2] = {1, -1};
  sparse_attention(q.data(), 1, 1, dim, kv.data(), one, 2, &sink, 1.0f, out.data());
  double z = 0;
  for (int c = 0; c < dim; ++c) z += static_cast<double>(q[c]) * kv[dim + c];
  const double share = 1 / (1 + std::exp(sink - z));  // exp(z−m)=1 over 1 + exp(sink−m)
  for (int c = 0; c < dim; ++c)
    EXPECT_NEAR(out[c], kv[dim + c] * share, std::fabs(kv[dim + c]) * 1e-2);
}

// FP8 weight [out, in] with 128×128 E8M0 scales, from random codes.
struct Fp8Weight {
  std::vector<uint8_t> codes, scales;
  WeightRef ref;
};
Fp8Weight make_fp8(int64_t out, int64_t in, uint32_t seed) {
  Fp8Weight w;
  std::mt19937 rng(seed);
  w.codes.resize(out * in);
  for (auto& c : w.codes) {
    c = static_cast<uint8_t>(rng() & 0xff);
    if ((c & 0x7f) == 0x7f) c = 0x30;  // no NaN
  }
  const int64_t so = (out + 127) / 128, si = (in + 127) / 128;
  for (int64_t i = 0; i < so * si; ++i) w.scales.push_back(static_cast<uint8_t>(120 + rng() % 6));
  w.ref = {WeightFormat::kFP8, out, in, w.codes.data(), w.scales.data(), false};
  return w;
}

TEST(QuantLinear, Fp8MatchesQuantizedFloat64Product) {
  const int64_t m = 3, out = 130, in = 256;  // partial row block of scales
  Fp8Weight w = make_fp8(out, in, 11);
  const std::vector<float> x = random_bf16(m * in, 12, 2.0f);
  std::vector<float> y(m * out);
  quant_linear(x.data(), m, w.ref, y.data());
  for (int64_t i = 0; i < m; ++i) {
    std::vector<float> xq(x.begin() + i * in, x.begin() + (i + 1) * in);
    fp8_fake_quant(xq.data(), in, 128);
    for (int64_t r = 0; r < out; ++r) {
      double acc = 0;
      for (int64_t k = 0; k < in; ++k)
        acc += static_cast<double>(xq[k]) * fp8_e4m3_decode(w.codes[r * in + k]) *
               e8m0_decode(w.scales[(r / 128) * 2 + k / 128]);
      EXPECT_NEAR(y[i * out + r], acc, std::fabs(acc) * 4e-3 + 1e-30) << i << "," << r;
      EXPECT_EQ(y[i * out + r], bf16_round(y[i * out + r]));
    }
  }
}

TEST(QuantLinear, Fp4LowNibbleIsTheEvenElement) {
  const int64_t out = 2, in = 64;
  std::vector<uint8_t> packed(out * in / 2), scales(out * in / 32, 127);  // scale 1
  packed[0] = 0x72;   // element 0 = code 2 (1.0), element 1 = code 7 (6.0)
  scales[1] = 128;    // second 32-block of row 0 scaled by 2
  packed[16] = 0x0a;  // element 32 = code 10 (−1.0) → −2 after scale
  const WeightRef w{WeightFormat::kFP4, out, in, packed.data(), scales.data(), false};
  std::vector<float> row(in);
  dequant_row(w, 0, row.data());
  EXPECT_EQ(row[0], 1.0f);
  EXPECT_EQ(row[1], 6.0f);
  EXPECT_EQ(row[32], -2.0f);
  std::vector<float> x(in, 0.0f), y(out);
  x[0] = 1;
  x[1] = 0.5f;
  x[32] = 0.25f;
  quant_linear(x.data(), 1, w, y.data());
  EXPECT_EQ(y[0], 1.0f + 3.0f - 0.5f);
  EXPECT_EQ(y[1], 0.0f);
}

}  // namespace
}  // namespace dsv4::kernels
