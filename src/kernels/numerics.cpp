#include "kernels/numerics.h"

#include <immintrin.h>
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace dsv4::kernels {

void bf16_round_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = bf16_round(x[i]);
}

float fp8_e4m3_decode(uint8_t code) {
  const bool neg = code & 0x80;
  const int exp = (code >> 3) & 0xf;
  const int man = code & 0x7;
  if (exp == 0xf && man == 0x7) return std::numeric_limits<float>::quiet_NaN();
  float v = exp == 0 ? std::ldexp(static_cast<float>(man), -9)  // subnormal: man/8 · 2^-6
                     : std::ldexp(1.0f + man / 8.0f, exp - 7);
  return neg ? -v : v;
}

const float* fp8_e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = fp8_e4m3_decode(static_cast<uint8_t>(c));
    return t;
  }();
  return table.data();
}

float fp8_e4m3_round(float x) {
  if (std::isnan(x)) return x;
  const float a = std::min(std::fabs(x), 448.0f);
  if (a == 0) return std::copysign(0.0f, x);
  int e;
  std::frexp(a, &e);  // a = m · 2^e, m in [0.5, 1): the leading bit has weight 2^(e-1)
  // Three mantissa bits below the leading one; below the smallest normal
  // exponent (-6) the spacing stays 2^-9.
  const int lead = std::max(e - 1, -6);
  const float ulp = std::ldexp(1.0f, lead - 3);
  float q = std::nearbyint(a / ulp) * ulp;  // default rounding mode: ties to even
  q = std::min(q, 448.0f);
  return std::copysign(q, x);
}

uint8_t fp8_e4m3_encode(float x) {
  if (std::isnan(x)) return 0x7f;
  const float q = fp8_e4m3_round(x);
  const uint8_t sign = std::signbit(q) ? 0x80 : 0;
  const float a = std::fabs(q);
  if (a == 0) return sign;
  int e;
  std::frexp(a, &e);
  int exp = e - 1 + 7;
  if (exp <= 0) return sign | static_cast<uint8_t>(std::lround(a / std::ldexp(1.0f, -9)));
  const int man = static_cast<int>(std::lround((a / std::ldexp(1.0f, e - 1) - 1.0f) * 8));
  return sign | static_cast<uint8_t>(exp << 3) | static_cast<uint8_t>(man);
}

float e8m0_decode(uint8_t b) {
  if (b == 255) return std::numeric_limits<float>::quiet_NaN();
  if (b == 0) return bits_float(0x00400000u);  // 2^-127 is subnormal
  return bits_float(static_cast<uint32_t>(b) << 23);
}

const float* fp4_e2m1_table() {
  static const float table[16] = {0,     0.5f,  1,  1.5f,  2,  3,  4,  6,
                                  -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  return table;
}
float fp4_e2m1_decode(uint8_t code) {
  return fp4_e2m1_table()[code & 0xf];
}

float fp4_e2m1_round(float x) {
  if (std::isnan(x)) return x;
  const float a = std::min(std::fabs(x), 6.0f);
  // Grid spacing: 0.5 below 2, 1 in [2, 4), 2 in [4, 6].
  const float ulp = a < 2 ? 0.5f : (a < 4 ? 1.0f : 2.0f);
  float q = std::nearbyint(a / ulp) * ulp;  // ties to even code (even multiple of ulp)
  q = std::min(q, 6.0f);
  return std::copysign(q, x);
}

float pow2_ceil(float s) {
  uint32_t u = float_bits(s);
  uint32_t exp = (u >> 23) & 0xffu;
  if (u & 0x7fffffu) ++exp;
  return bits_float(exp << 23);
}

float fp8_block_scale(float amax) {
  return pow2_ceil(std::max(amax, 1e-4f) / 448.0f);
}
float fp4_block_scale(float amax) {
  return pow2_ceil(std::max(amax, 6.0f * std::ldexp(1.0f, -126)) / 6.0f);
}

void fp8_fake_quant_reference(float* x, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t b1 = std::min(n, b0 + block);
    float amax = 0;
    for (int64_t i = b0; i < b1; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = fp8_block_scale(amax);
    for (int64_t i = b0; i < b1; ++i)
      x[i] = bf16_round(fp8_e4m3_round(std::clamp(x[i] / s, -448.0f, 448.0f)) * s);
  }
}

// The same function as fp8_fake_quant_reference, eight lanes at a time (AVX2, the
// baseline ISA: it runs on every activation row before every quantized linear; the compiler
// left the plain loop scalar). Why it is the same:
// - s is a power of two in [2^-22, 2^120], so x·(1/s) is the exactly
//   rounded x/s (both round the same real number);
// - for |v| ≥ 2^-6 (e4m3 normals) rounding to 3 mantissa bits, ties to
//   even, is the integer rounding of the float's low 20 bits (a carry into
//   the exponent is the correct result); below 2^-6 the spacing is 2^-9 and
//   (|v| + 1.5·2^14) − 1.5·2^14 rounds to it, ties to even (the float ulp
//   at 1.5·2^14 is 2^-9); |v| ≤ 448 after the clamp, so nothing saturates;
// - q·s is exact (3 significant bits, between 2^-31 and 448·2^120) and
//   bf16_round leaves it unchanged, so the vector lanes skip it.
// Blocks with an infinity or NaN take the reference.
namespace {

constexpr float kFp8Magic = 24576.0f;  // 1.5 · 2^14

float fake_quant_one(float x, float inv, float s) {
  const float v = std::min(std::max(x * inv, -448.0f), 448.0f);
  const float a = std::fabs(v);
  uint32_t bits = float_bits(a);
  bits = (bits + 0x7ffffu + ((bits >> 20) & 1u)) & 0xfff00000u;
  const float normal = bits_float(bits);
  const float subnormal = (a + kFp8Magic) - kFp8Magic;
  const float q = a >= 0.015625f ? normal : subnormal;  // 2^-6
  return bf16_round(std::copysign(q, v) * s);
}

__m256 fake_quant_8(__m256 x, __m256 inv, __m256 s) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x, inv), _mm256_set1_ps(-448.0f)),
                                 _mm256_set1_ps(448.0f));
  const __m256 a = _mm256_andnot_ps(sign_bit, v);
  const __m256i bits = _mm256_castps_si256(a);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 20), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7ffff)), odd),
                       _mm256_set1_epi32(static_cast<int>(0xfff00000u)));
  const __m256 magic = _mm256_set1_ps(kFp8Magic);
  const __m256 subnormal = _mm256_sub_ps(_mm256_add_ps(a, magic), magic);
  const __m256 is_normal = _mm256_cmp_ps(a, _mm256_set1_ps(0.015625f), _CMP_GE_OQ);
  const __m256 q = _mm256_blendv_ps(subnormal, _mm256_castsi256_ps(rounded), is_normal);
  return _mm256_mul_ps(_mm256_or_ps(q, _mm256_and_ps(v, sign_bit)), s);
}

// The largest |x[i]| of a block, and whether every value is finite.
float block_amax(const float* x, int64_t n, bool* finite) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 big = _mm256_set1_ps(std::numeric_limits<float>::max());
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(x + i));
    vmax = _mm256_max_ps(vmax, a);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, big, _CMP_NLE_UQ));  // inf or NaN
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float amax = 0;
  for (float v : lanes) amax = std::max(amax, v);
  *finite = _mm256_movemask_ps(bad) == 0;
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    amax = std::max(amax, a);
    *finite = *finite && a <= std::numeric_limits<float>::max();
  }
  return amax;
}

}  // namespace

void fp8_fake_quant(float* x, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t len = std::min(n, b0 + block) - b0;
    float* xb = x + b0;
    bool finite;
    const float amax = block_amax(xb, len, &finite);
    if (!finite) {
      fp8_fake_quant_reference(xb, len, block);
      continue;
    }
    const float s = fp8_block_scale(amax);
    const float inv = 1.0f / s;
    const __m256 vs = _mm256_set1_ps(s), vinv = _mm256_set1_ps(inv);
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
      _mm256_storeu_ps(xb + i, fake_quant_8(_mm256_loadu_ps(xb + i), vinv, vs));
    for (; i < len; ++i) xb[i] = fake_quant_one(xb[i], inv, s);
  }
}

void fp8_quantize(const float* x, int64_t n, int64_t block, float* q, float* scales) {
  std::copy(x, x + n, q);
  fp8_fake_quant(q, n, block);
  for (int64_t b0 = 0, b = 0; b0 < n; b0 += block, ++b) {
    const int64_t b1 = std::min(n, b0 + block);
    bool finite;
    const float s = fp8_block_scale(block_amax(x + b0, b1 - b0, &finite));
    scales[b] = s;
    // q·s is exact (a power of two times an e4m3 value, normal), so dividing recovers q.
    for (int64_t i = b0; i < b1; ++i)
      q[i] = finite ? q[i] / s : std::numeric_limits<float>::quiet_NaN();
  }
}

void fp4_fake_quant(float* x, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t b1 = std::min(n, b0 + block);
    float amax = 0;
    for (int64_t i = b0; i < b1; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = fp4_block_scale(amax);
    for (int64_t i = b0; i < b1; ++i)
      x[i] = bf16_round(fp4_e2m1_round(std::clamp(x[i] / s, -6.0f, 6.0f)) * s);
  }
}

}  // namespace dsv4::kernels
