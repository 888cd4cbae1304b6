// Scalar number formats of the DeepSeek V4 reference: bf16 rounding, FP8 e4m3
// and E8M0 scales, FP4 e2m1, and the activation fake-quantisation the
// reference applies before every quantized GEMM (architecture spec §3.0).
// These are the slow, exact definitions; faster kernels must agree with them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace dsv4::kernels {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even to bfloat16, returned as the (exactly representable) float.
inline float bf16_round(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return f;  // inf / NaN unchanged
  u += 0x7fffu + ((u >> 16) & 1u);
  return bits_float(u & 0xffff0000u);
}
inline float bf16_to_float(uint16_t b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}
inline uint16_t float_to_bf16_bits(float f) {
  return static_cast<uint16_t>(float_bits(bf16_round(f)) >> 16);
}

// Σ a[k]·b[k] in double (four interleaved partial sums, so the compiler can
// vectorise it): with float inputs this is the exactly rounded dot product up
// to ~1e-16 relative, the closest stand-in for the reference's blocked fp32 sums.
inline double dot_f64(const float* a, const float* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += static_cast<double>(a[k]) * b[k];
    s1 += static_cast<double>(a[k + 1]) * b[k + 1];
    s2 += static_cast<double>(a[k + 2]) * b[k + 2];
    s3 += static_cast<double>(a[k + 3]) * b[k + 3];
  }
  for (; k < n; ++k) s0 += static_cast<double>(a[k]) * b[k];
  return (s0 + s1) + (s2 + s3);
}

// Σ a[k]·b[k] in double, in the one association order every linear path
// (scalar, AVX2, AVX-512) uses, so they agree bit for bit: sixteen partial
// sums, lane j taking the k ≡ j (mod 16) in ascending k, combined as
// ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7)) with v_j = s_j + s_(j+8) — the tree a
// pair of 8-double registers (or four 4-double ones) reduces in. Products of
// floats are exact in double, so fused multiply-adds give the same sums.
inline double linear_dot_f64(const float* a, const float* b, int64_t n) {
  double s[16] = {};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    for (int j = 0; j < 16; ++j) s[j] += static_cast<double>(a[k + j]) * b[k + j];
  for (int j = 0; k + j < n; ++j) s[j] += static_cast<double>(a[k + j]) * b[k + j];
  double v[8];
  for (int j = 0; j < 8; ++j) v[j] = s[j] + s[j + 8];
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

// fp32 dot product in the order of the AVX512-BF16 dot-product instruction:
// sixteen fp32 lanes; for each group of 32 elements (the last one padded with
// +0 products), lane j adds the product of element 2j+1 and then that of
// element 2j, each with one fused multiply-add (one rounding); the lanes then
// reduce with linear_dot_f64's tree in fp32. (docs/kernels.md: the BF16
// head.)
// linear_dot_f64's reduction tree over sixteen fp32 lane sums.
inline float pairs_tree_f32(const float s[16]) {
  float v[8];
  for (int j = 0; j < 8; ++j) v[j] = s[j] + s[j + 8];
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

inline float linear_dot_pairs_f32(const float* a, const float* b, int64_t n) {
  float s[16] = {};
  for (int64_t k0 = 0; k0 < n; k0 += 32)
    for (int j = 0; j < 16; ++j) {
      const int64_t odd = k0 + 2 * j + 1, even = k0 + 2 * j;
      s[j] = std::fma(odd < n ? a[odd] : 0.0f, odd < n ? b[odd] : 0.0f, s[j]);
      s[j] = std::fma(even < n ? a[even] : 0.0f, even < n ? b[even] : 0.0f, s[j]);
    }
  return pairs_tree_f32(s);
}

// fp32 dot product in fp32_bf16_linear's order: linear_dot_pairs_f32's step per group of 32
// elements (lane j adds the product of element 2j+1, then that of element 2j, each fused), but
// the groups are dealt round robin to four sets of sixteen lane sums (group g to set g mod 4),
// so that a SIMD kernel keeps four independent accumulator chains; per lane the sets add as
// (s0 + s1) + (s2 + s3), then pairs_tree_f32. (docs/kernels.md: the BF16 head.)
inline float linear_dot_pairs4_f32(const float* a, const float* b, int64_t n) {
  float s[4][16] = {};
  for (int64_t k0 = 0; k0 < n; k0 += 32) {
    float* set = s[(k0 / 32) % 4];
    for (int j = 0; j < 16; ++j) {
      const int64_t odd = k0 + 2 * j + 1, even = k0 + 2 * j;
      set[j] = std::fma(odd < n ? a[odd] : 0.0f, odd < n ? b[odd] : 0.0f, set[j]);
      set[j] = std::fma(even < n ? a[even] : 0.0f, even < n ? b[even] : 0.0f, set[j]);
    }
  }
  float lanes[16];
  for (int j = 0; j < 16; ++j) lanes[j] = (s[0][j] + s[1][j]) + (s[2][j] + s[3][j]);
  return pairs_tree_f32(lanes);
}

// Rounds every element of x[0..n) to bf16 in place.
void bf16_round_inplace(float* x, int64_t n);

// FP8 e4m3fn: bias 7, no infinities, 0x7f / 0xff are NaN, max finite 448.
float fp8_e4m3_decode(uint8_t code);
// Round-to-nearest-even with saturation to ±448 (NaN maps to the NaN code 0x7f).
uint8_t fp8_e4m3_encode(float x);
// The value fp8_e4m3_encode would store, as a float (same rounding).
float fp8_e4m3_round(float x);
// Table of all 256 decoded codes (NaN for 0x7f / 0xff).
const float* fp8_e4m3_table();

// E8M0 scale byte: 2^(b - 127); 255 is NaN.
float e8m0_decode(uint8_t b);

// FP4 e2m1: codes 0..7 = 0, .5, 1, 1.5, 2, 3, 4, 6; bit 3 = sign.
float fp4_e2m1_decode(uint8_t code);
const float* fp4_e2m1_table();  // 16 entries
// Round-to-nearest-even onto the e2m1 grid with saturation to ±6.
float fp4_e2m1_round(float x);

// 2^ceil(log2(s)) for a positive normal s, computed as the reference does
// (the float's exponent, plus one when the mantissa is non-zero).
float pow2_ceil(float s);

// The reference's act_quant scale for one block: amax floored at 1e-4,
// then pow2_ceil(amax / 448).
float fp8_block_scale(float amax);
// fp4_act_quant's scale: amax floored at 6·2^-126, pow2_ceil(amax / 6).
float fp4_block_scale(float amax);

// act_quant(x, block, "ue8m0", inplace=True) on one row of n values: per
// block, x ← bf16(fp8(clamp(x/s, ±448)) · s). (Values are exactly
// representable, so the bf16 rounding is a no-op kept for clarity.)
void fp8_fake_quant(float* x, int64_t n, int64_t block);
// The same, element by element from the definitions above (the fast version
// is tested against it).
void fp8_fake_quant_reference(float* x, int64_t n, int64_t block);
// The same quantisation as FP8 values and scales: per block, scales[b] = s and q[i] =
// e4m3(clamp(x/s, ±448)), so that fp8_fake_quant's result is q·s exactly. A block holding an
// infinity or NaN gives NaN values (its products are not finite either way).
void fp8_quantize(const float* x, int64_t n, int64_t block, float* q, float* scales);
// fp4_act_quant(x, block, inplace=True): x ← bf16(e2m1(clamp(x/s, ±6)) · s).
void fp4_fake_quant(float* x, int64_t n, int64_t block);

}  // namespace dsv4::kernels
