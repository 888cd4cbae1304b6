// The indexer's integer FP4 scores against the float definition, bit for bit.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "isa_guard.h"
#include "kernels/index_scores.h"
#include "kernels/isa.h"
#include "kernels/numerics.h"

namespace dsv4::kernels {
namespace {

// A packed key row (dim / 2 code bytes, then one E8M0 byte per 32) from codes and scale bytes.
std::vector<uint8_t> pack_key(const std::vector<uint8_t>& codes, const std::vector<uint8_t>& sb) {
  std::vector<uint8_t> row(codes.size() / 2 + sb.size(), 0);
  for (size_t d = 0; d < codes.size(); ++d)
    row[d / 2] |= static_cast<uint8_t>(codes[d] << (4 * (d % 2)));
  for (size_t b = 0; b < sb.size(); ++b) row[codes.size() / 2 + b] = sb[b];
  return row;
}

// The indexer's float definition (model/indexer.cpp): decoded keys, double dot products.
float reference_score(const std::vector<float>& q, const std::vector<float>& w, int64_t heads,
                      int64_t dim, const uint8_t* row) {
  std::vector<float> k(dim);
  for (int64_t d = 0; d < dim; ++d)
    k[d] =
        fp4_e2m1_table()[(row[d / 2] >> (4 * (d % 2))) & 0xf] * e8m0_decode(row[dim / 2 + d / 32]);
  float sum = 0;
  for (int64_t h = 0; h < heads; ++h) {
    const float dot = bf16_round(static_cast<float>(dot_f64(q.data() + h * dim, k.data(), dim)));
    sum += bf16_round(std::max(dot, 0.0f) * w[h]);
  }
  return bf16_round(sum);
}

TEST(Fp4IndexScores, MatchTheFloatDefinitionBitForBit) {
  if (!isa_supported(Isa::kAvx512)) GTEST_SKIP() << "no AVX-512 on this CPU";
  IsaGuard guard;
  set_isa(Isa::kAvx512);
  std::mt19937 rng(77);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [heads, dim] : {std::pair<int64_t, int64_t>{64, 128}, {5, 32}, {3, 96}}) {
    // Queries: per 32 a scale from 2^-6 to 2^6 (so blocks differ), FP4 fake-quantized.
    std::vector<float> q(heads * dim), w(heads);
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t b = 0; b < dim / 32; ++b) {
        const float s = std::ldexp(1.0f, static_cast<int>(rng() % 13) - 6);
        for (int64_t d = 0; d < 32; ++d) q[h * dim + b * 32 + d] = bf16_round(normal(rng) * s);
      }
    for (int64_t h = 0; h < heads; ++h) fp4_fake_quant(q.data() + h * dim, dim, 32);
    for (float& v : w) v = bf16_round(normal(rng) * 0.1f);
    // 37 keys (two whole vectors of 16 and a partial one): random codes (both zero signs
    // included), scale bytes 115..139 (with the queries' spread at most 2^36); key 5 spans 2^60
    // (beyond the exact range with these queries when there are two or more blocks), key 20 has
    // a NaN scale, key 33 a zero scale byte: those fall back.
    const int64_t n = 37;
    std::vector<std::vector<uint8_t>> rows;
    for (int64_t j = 0; j < n; ++j) {
      std::vector<uint8_t> codes(dim), sb(dim / 32);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() % 16);
      for (auto& s : sb) s = static_cast<uint8_t>(115 + rng() % 25);
      if (j == 5) sb[0] = 60;
      if (j == 20) sb[sb.size() - 1] = 255;
      if (j == 33) sb[0] = 0;
      rows.push_back(pack_key(codes, sb));
    }
    std::vector<const uint8_t*> ptrs;
    for (const auto& r : rows) ptrs.push_back(r.data());
    std::vector<float> score(n, 12345.0f);
    std::vector<uint8_t> fallback(n, 7);
    Fp4IndexQuery prepared;
    prepare_fp4_index_query(q.data(), heads, dim, &prepared);
    ASSERT_TRUE(fp4_index_scores(prepared, w.data(), ptrs.data(), n, score.data(), fallback.data()))
        << "the AVX-512 VNNI kernel should apply";
    int64_t positive = 0;
    for (int64_t j = 0; j < n; ++j) {
      const bool expect_fallback = (j == 5 && dim > 32) || j == 20 || j == 33;
      EXPECT_EQ(fallback[j], expect_fallback ? 1 : 0) << "key " << j;
      if (expect_fallback) continue;
      const float want = reference_score(q, w, heads, dim, rows[j].data());
      EXPECT_EQ(std::bit_cast<uint32_t>(score[j]), std::bit_cast<uint32_t>(want))
          << "heads " << heads << " dim " << dim << " key " << j << ": " << score[j] << " vs "
          << want;
      positive += want > 0;
    }
    EXPECT_GT(positive, 0);
  }
}

TEST(Fp4IndexScores, DeclinesOffGridQueriesAndOtherIsas) {
  const int64_t heads = 2, dim = 32;
  std::vector<float> q(heads * dim, 0.5f), w(heads, 1.0f);
  std::vector<uint8_t> codes(dim, 2), sb(1, 127);
  const std::vector<uint8_t> row = pack_key(codes, sb);
  const uint8_t* ptr = row.data();
  float score = 0;
  uint8_t fallback = 0;
  IsaGuard guard;
  Fp4IndexQuery prepared;
  const auto scores = [&](int64_t d) {
    prepare_fp4_index_query(q.data(), heads, d, &prepared);
    return fp4_index_scores(prepared, w.data(), &ptr, 1, &score, &fallback);
  };
  set_isa(Isa::kAvx2);
  EXPECT_FALSE(scores(dim));
  if (!isa_supported(Isa::kAvx512)) return;
  set_isa(Isa::kAvx512);
  EXPECT_TRUE(scores(dim) || !__builtin_cpu_supports("avx512vnni"));
  EXPECT_FALSE(scores(16));  // not a whole 32-dim block
  q[3] = 0.3f;               // not on an E2M1 grid
  EXPECT_FALSE(scores(dim));
}

}  // namespace
}  // namespace dsv4::kernels
