// Number formats against independent float64 definitions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/numerics.h"

namespace dsv4::kernels {
namespace {

// e4m3fn from its bit fields, in double.
double fp8_reference(int code) {
  const int sign = code >> 7, exp = (code >> 3) & 0xf, man = code & 7;
  const double mag =
      exp == 0 ? man / 8.0 * std::pow(2.0, -6) : (1 + man / 8.0) * std::pow(2.0, exp - 7);
  return sign ? -mag : mag;
}

TEST(Fp8, AllCodesDecode) {
  for (int c = 0; c < 256; ++c) {
    const float v = fp8_e4m3_decode(static_cast<uint8_t>(c));
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    EXPECT_EQ(static_cast<double>(v), fp8_reference(c)) << "code " << c;
    EXPECT_EQ(fp8_e4m3_table()[c], v);
  }
  EXPECT_EQ(fp8_e4m3_decode(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_decode(0x01), std::ldexp(1.0f, -9));
}

TEST(Fp8, EncodeRoundTripsEveryFiniteCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    const float v = fp8_e4m3_decode(static_cast<uint8_t>(c));
    const uint8_t back = fp8_e4m3_encode(v);
    if (c == 0x80) {  // −0 keeps its sign
      EXPECT_EQ(back, 0x80);
      continue;
    }
    EXPECT_EQ(back, c) << "value " << v;
  }
}

TEST(Fp8, EncodeRoundsToNearestEvenAndSaturates) {
  // Between every pair of adjacent positive codes: just below, at and above the midpoint.
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = static_cast<float>(fp8_reference(c)),
                hi = static_cast<float>(fp8_reference(c + 1));
    const float mid = (lo + hi) / 2;  // exact in float
    EXPECT_EQ(fp8_e4m3_encode(std::nextafter(mid, lo)), c);
    EXPECT_EQ(fp8_e4m3_encode(std::nextafter(mid, hi)), c + 1);
    EXPECT_EQ(fp8_e4m3_encode(mid), (c % 2 == 0) ? c : c + 1) << "tie at " << mid;
    EXPECT_EQ(fp8_e4m3_encode(-mid), 0x80 | ((c % 2 == 0) ? c : c + 1));
  }
  EXPECT_EQ(fp8_e4m3_encode(1000.0f), 0x7e);
  EXPECT_EQ(fp8_e4m3_encode(-1e30f), 0xfe);
  EXPECT_EQ(fp8_e4m3_encode(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(fp8_e4m3_encode(std::numeric_limits<float>::quiet_NaN()), 0x7f);
}

TEST(E8m0, PowersOfTwo) {
  for (int b = 0; b < 255; ++b)
    EXPECT_EQ(static_cast<double>(e8m0_decode(static_cast<uint8_t>(b))), std::pow(2.0, b - 127))
        << b;
  EXPECT_TRUE(std::isnan(e8m0_decode(255)));
}

TEST(Fp4, AllSixteenCodes) {
  const double mags[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (int c = 0; c < 16; ++c) {
    const double want = (c & 8) ? -mags[c & 7] : mags[c & 7];
    EXPECT_EQ(static_cast<double>(fp4_e2m1_decode(static_cast<uint8_t>(c))), want) << c;
    EXPECT_EQ(std::signbit(fp4_e2m1_decode(static_cast<uint8_t>(c))), (c & 8) != 0) << c;
  }
}

TEST(Fp4, RoundingTiesToEvenCode) {
  EXPECT_EQ(fp4_e2m1_round(0.25f), 0.0f);
  EXPECT_EQ(fp4_e2m1_round(0.75f), 1.0f);
  EXPECT_EQ(fp4_e2m1_round(1.25f), 1.0f);
  EXPECT_EQ(fp4_e2m1_round(1.75f), 2.0f);
  EXPECT_EQ(fp4_e2m1_round(2.5f), 2.0f);
  EXPECT_EQ(fp4_e2m1_round(3.5f), 4.0f);
  EXPECT_EQ(fp4_e2m1_round(5.0f), 4.0f);
  EXPECT_EQ(fp4_e2m1_round(5.01f), 6.0f);
  EXPECT_EQ(fp4_e2m1_round(100.0f), 6.0f);
  EXPECT_EQ(fp4_e2m1_round(-2.6f), -3.0f);
}

TEST(Bf16, RoundToNearestEven) {
  EXPECT_EQ(bf16_round(1.0f + std::ldexp(1.0f, -8)), 1.0f);  // tie → even
  EXPECT_EQ(bf16_round(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(bf16_round(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)),
            1.0f + std::ldexp(1.0f, -7));
  EXPECT_EQ(bf16_to_float(float_to_bf16_bits(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(bf16_round(std::numeric_limits<float>::quiet_NaN())));
}

TEST(Pow2Ceil, ExponentBitTrick) {
  EXPECT_EQ(pow2_ceil(1.0f), 1.0f);
  EXPECT_EQ(pow2_ceil(1.0001f), 2.0f);
  EXPECT_EQ(pow2_ceil(0.75f), 1.0f);
  EXPECT_EQ(pow2_ceil(std::ldexp(1.0f, -20)), std::ldexp(1.0f, -20));
  for (int i = 1; i < 1000; ++i) {
    const float s = static_cast<float>(i) * 0.0137f;
    EXPECT_EQ(static_cast<double>(pow2_ceil(s)),
              std::pow(2.0, std::ceil(std::log2(static_cast<double>(s)))))
        << s;
  }
}

TEST(ActQuant, ZerosStayZeroWithTheFloorScale) {
  float x[128] = {};
  fp8_fake_quant(x, 128, 128);
  for (float v : x) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(fp8_block_scale(0.0f), pow2_ceil(1e-4f / 448.0f));
}

TEST(ActQuant, TinyValuesUseTheAmaxFloor) {
  // amax below 1e-4: the scale is that of amax = 1e-4, so values this small
  // land on the fp8 grid of that scale.
  float x[64];
  for (int i = 0; i < 64; ++i) x[i] = 1e-7f * static_cast<float>(i - 32);
  const float s = pow2_ceil(1e-4f / 448.0f);
  float y[64];
  std::copy(x, x + 64, y);
  fp8_fake_quant(y, 64, 64);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(y[i], bf16_round(fp8_e4m3_round(x[i] / s) * s)) << i;
}

TEST(ActQuant, SaturatesAt448TimesScale) {
  // amax exactly 448·2^k: scale 2^k and the largest element maps to code 448.
  float x[128];
  for (int i = 0; i < 128; ++i) x[i] = static_cast<float>(i) * 0.5f;
  x[7] = 448.0f * 4;
  fp8_fake_quant(x, 128, 128);
  EXPECT_EQ(x[7], 448.0f * 4);
  EXPECT_EQ(fp8_block_scale(448.0f * 4), 4.0f);
  // Just above 448·2^k the scale doubles.
  EXPECT_EQ(fp8_block_scale(448.0f * 4 * 1.001f), 8.0f);
}

TEST(ActQuant, BlocksAreIndependent) {
  float x[256];
  for (int i = 0; i < 256; ++i)
    x[i] = i < 128 ? 0.001f * static_cast<float>(i) : 100.0f + static_cast<float>(i);
  float y[256];
  std::copy(x, x + 256, y);
  fp8_fake_quant(y, 256, 128);
  const float s0 = fp8_block_scale(0.127f);
  for (int i = 0; i < 128; ++i) EXPECT_EQ(y[i], bf16_round(fp8_e4m3_round(x[i] / s0) * s0));
}

TEST(Fp4ActQuant, ScaleFromAmaxOverSix) {
  float x[32];
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i - 16) * 0.3f;  // amax 4.8 → scale 1
  fp4_fake_quant(x, 32, 32);
  for (int i = 0; i < 32; ++i)
    EXPECT_EQ(x[i], fp4_e2m1_round(static_cast<float>(i - 16) * 0.3f)) << i;
  EXPECT_EQ(fp4_block_scale(12.0f), 2.0f);
  EXPECT_EQ(fp4_block_scale(12.1f), 4.0f);
}

}  // namespace
}  // namespace dsv4::kernels
