// The SIMD linear kernels against the scalar reference (bit for bit, every
// ISA this CPU runs) and the scalar reference against independent sums.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "isa_guard.h"
#include "kernels/isa.h"
#include "kernels/linear.h"
#include "kernels/linear_simd.h"
#include "kernels/numerics.h"
#include "util/error.h"
#include "util/threadpool.h"

namespace dsv4::kernels {
namespace {

// A weight with its own storage (unaligned on purpose: checkpoint tensors
// need not be aligned, and the kernels must not assume it).
struct TestWeight {
  std::vector<uint8_t> data, scale;
  WeightRef ref;
};

constexpr size_t kMisalign = 3;

std::vector<int64_t> g_fp8_codes = [] {
  std::vector<int64_t> codes;
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7f) != 0x7f) codes.push_back(c);  // every code but NaN
  return codes;
}();

// FP8 codes: uniform over the finite codes, with extra subnormals and ±0.
uint8_t random_fp8_code(std::mt19937& rng) {
  const uint32_t pick = rng() % 8;
  if (pick == 0) return static_cast<uint8_t>((rng() & 0x80) | (rng() & 7));  // subnormal or ±0
  return static_cast<uint8_t>(g_fp8_codes[rng() % g_fp8_codes.size()]);
}

TestWeight make_weight(WeightFormat format, int64_t out, int64_t in, uint32_t seed,
                       bool f32_scale = false) {
  std::mt19937 rng(seed);
  TestWeight w;
  w.ref.format = format;
  w.ref.out = out;
  w.ref.in = in;
  auto put_f32 = [](std::vector<uint8_t>& v, size_t index, float f) {
    std::memcpy(v.data() + kMisalign + index * 4, &f, 4);
  };
  switch (format) {
    case WeightFormat::kFP8: {
      w.data.resize(kMisalign + out * in);
      for (int64_t i = 0; i < out * in; ++i) w.data[kMisalign + i] = random_fp8_code(rng);
      const int64_t n_scale = ((out + 127) / 128) * ((in + 127) / 128);
      if (f32_scale) {
        // Base checkpoints: arbitrary positive F32 scales (not powers of
        // two), so the weight floats are rounded and the sums inexact.
        w.scale.resize(kMisalign + n_scale * 4);
        std::uniform_real_distribution<float> d(1e-4f, 3e-2f);
        for (int64_t i = 0; i < n_scale; ++i) put_f32(w.scale, i, d(rng));
        w.ref.scale_is_f32 = true;
      } else {
        w.scale.resize(kMisalign + n_scale);
        for (int64_t i = 0; i < n_scale; ++i)
          w.scale[kMisalign + i] = static_cast<uint8_t>(127 - 16 + rng() % 20);
      }
      break;
    }
    case WeightFormat::kFP4: {
      w.data.resize(kMisalign + out * in / 2);
      for (size_t i = kMisalign; i < w.data.size(); ++i) w.data[i] = static_cast<uint8_t>(rng());
      const int64_t n_scale = out * (in / 32);
      w.scale.resize(kMisalign + n_scale);
      for (int64_t i = 0; i < n_scale; ++i)
        w.scale[kMisalign + i] = static_cast<uint8_t>(127 - 12 + rng() % 16);
      break;
    }
    case WeightFormat::kBF16: {
      w.data.resize(kMisalign + out * in * 2);
      std::normal_distribution<float> d(0.0f, 0.05f);
      for (int64_t i = 0; i < out * in; ++i) {
        float f = d(rng);
        if (rng() % 50 == 0) f = (rng() & 1) ? 0.0f : -0.0f;
        const uint16_t b = float_to_bf16_bits(f);
        std::memcpy(w.data.data() + kMisalign + i * 2, &b, 2);
      }
      break;
    }
    case WeightFormat::kF32: {
      w.data.resize(kMisalign + out * in * 4);
      std::normal_distribution<float> d(0.0f, 0.05f);
      for (int64_t i = 0; i < out * in; ++i) put_f32(w.data, i, d(rng));
      break;
    }
  }
  w.ref.data = w.data.data() + kMisalign;
  w.ref.scale = w.scale.empty() ? nullptr : w.scale.data() + kMisalign;
  return w;
}

// Activations with magnitudes that vary by block (so the per-128 FP8 scales
// differ), some exact zeros of both signs, and an all −0 row.
std::vector<float> make_activations(int64_t m, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(m * ld);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < ld; ++k) {
      const float block_mag = std::ldexp(1.0f, static_cast<int>((k / 128 + i) % 7) - 3);
      float v = d(rng) * block_mag;
      if (rng() % 40 == 0) v = (rng() & 1) ? 0.0f : -0.0f;
      if (i == 3) v = -0.0f;
      x[i * ld + k] = v;
    }
  return x;
}

std::vector<Isa> simd_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512})
    if (isa_supported(isa)) isas.push_back(isa);
  return isas;
}

std::vector<float> run_quant(Isa isa, const std::vector<float>& x, int64_t m, const WeightRef& w) {
  set_isa(isa);
  std::vector<float> y(m * w.out, 12345.0f);
  quant_linear(x.data(), m, w, y.data());
  return y;
}

// Compares bit patterns (so −0 vs +0 counts); any NaN equals any NaN (NaN
// payloads are not part of the contract).
void expect_bits_equal(const std::vector<float>& want, const std::vector<float>& got,
                       const std::string& what) {
  ASSERT_EQ(want.size(), got.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (float_bits(want[i]) != float_bits(got[i]) && !(std::isnan(want[i]) && std::isnan(got[i])) &&
        mismatches++ < 5)
      ADD_FAILURE() << what << " element " << i << ": scalar " << want[i] << " simd " << got[i];
  EXPECT_EQ(mismatches, 0) << what;
}

const int64_t kMs[] = {1, 2, 5, 17, 64};

// Runs `linear(y)` (writing m rows of `width` outputs, `ldy` apart) on the scalar path and on
// every SIMD path this CPU has: the gaps between rows must stay untouched and the SIMD bits must
// equal the scalar ones.
template <typename Linear>
void expect_paths_agree(int64_t m, int64_t width, int64_t ldy, Linear linear,
                        const std::string& what) {
  auto run = [&](Isa isa) {
    set_isa(isa);
    std::vector<float> y(m * ldy, 777.0f);
    linear(y.data());
    return y;
  };
  const std::vector<float> want = run(Isa::kScalar);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = width; c < ldy; ++c) EXPECT_EQ(want[i * ldy + c], 777.0f) << what;
  for (Isa isa : simd_isas())
    expect_bits_equal(want, run(isa), what + " " + isa_name(isa) + " m=" + std::to_string(m));
}

// FP8 shapes and scales against the scalar path: Fp8Linear.SimdMatchesScalarFp32Accumulators.

TEST(QuantLinear, SimdMatchesScalarWithHugeScales) {
  // Block scales ≥ 2^120: scale × 256 overflows, so the SIMD FP8 decode must
  // not fold its 2^8 into the scale there, and the paths that scale the tile
  // sum instead of each weight must fall back. Small codes keep the weights
  // finite.
  IsaGuard guard;
  const int64_t out = 150, in = 300;
  TestWeight w = make_weight(WeightFormat::kFP8, out, in, 77);
  std::mt19937 rng(78);
  for (int64_t i = 0; i < out * in; ++i)
    w.data[kMisalign + i] = static_cast<uint8_t>((rng() & 0x80) | (rng() & 0x17));  // < 2^-4
  // Block row 0 (weight rows 0..127) mixes huge and ordinary scales; block
  // row 1 (rows 128..149) is ordinary, so fast rows follow fallback rows.
  const int64_t scale_cols = (in + 127) / 128;
  for (int64_t i = 0; i < 2 * scale_cols; ++i)
    w.scale[kMisalign + i] =
        static_cast<uint8_t>(i < scale_cols && i % 2 == 0 ? 247 + rng() % 7 : 120 + rng() % 8);
  // FP4: scales up to 2^127 (the fast FP4 path stops at 2^125), all codes, so
  // 6·2^126 overflows to inf in the scalar decode and ±inf products make
  // NaN sums, which a path that scaled the tile sum instead would miss.
  // Rows of 256 (one partial group of the VNNI matrix-vector kernel) and of 1056 (two whole
  // groups of 16 tiles and a partial one).
  TestWeight w4 = make_weight(WeightFormat::kFP4, out, 256, 80);
  for (size_t i = kMisalign; i < w4.scale.size(); ++i)
    w4.scale[i] = static_cast<uint8_t>(i % 3 ? 250 + rng() % 5 : 120 + rng() % 8);
  TestWeight w4l = make_weight(WeightFormat::kFP4, out, 1056, 82);
  for (size_t i = kMisalign; i < w4l.scale.size(); ++i)
    w4l.scale[i] = static_cast<uint8_t>(i % 7 == 0 ? 250 + rng() % 5 : 120 + rng() % 8);
  // Ordinary scales except one huge scale in row 9 (mid-block: the VNNI kernel checks each
  // block of 16 rows' scales at once, then row by row) and one in row 37 (the partial last
  // block).
  TestWeight w4m = make_weight(WeightFormat::kFP4, 40, 512, 83);
  for (size_t i = kMisalign; i < w4m.scale.size(); ++i)
    w4m.scale[i] = static_cast<uint8_t>(120 + rng() % 8);
  w4m.scale[kMisalign + 9 * 16 + 5] = 252;
  w4m.scale[kMisalign + 37 * 16] = 253;
  // FP8 with all codes and scales up to 2^127: 448·2^127 overflows to inf in the scalar decode
  // (the fast FP8 paths stop folding at 2^119).
  TestWeight w8 = make_weight(WeightFormat::kFP8, out, in, 81);
  for (int64_t i = 0; i < 2 * scale_cols; ++i)
    w8.scale[kMisalign + i] = static_cast<uint8_t>(i % 2 ? 250 + rng() % 5 : 120 + rng() % 8);
  for (int64_t m : {1, 3, 17})
    for (const TestWeight* tw : {&w, &w4, &w4l, &w4m, &w8}) {
      const std::vector<float> x = make_activations(m, tw->ref.in, 79 + static_cast<uint32_t>(m));
      const std::vector<float> want = run_quant(Isa::kScalar, x, m, tw->ref);
      for (Isa isa : simd_isas())
        expect_bits_equal(want, run_quant(isa, x, m, tw->ref),
                          std::string("huge scales ") + isa_name(isa) + " m=" + std::to_string(m) +
                              (tw == &w4    ? " fp4"
                               : tw == &w4l ? " fp4 long rows"
                               : tw == &w4m ? " fp4 one huge scale per block"
                               : tw == &w8  ? " fp8 overflowing"
                                            : " fp8"));
    }
}

// A weight block whose scales leave the fast FP4 path's range takes the double kernel between
// fast blocks of the same call. Run on a new thread with a one-thread pool, so the kernels'
// per-thread scratch buffers start empty and the fallback's larger request reallocates them
// mid-call: a fast block after it must not use a buffer fetched before (under ASan a stale
// one reads freed memory).
TEST(QuantLinear, Fp4FallbackBlockBetweenFastBlocks) {
  IsaGuard guard;
  const int64_t out = 3 * 64, in = 256, m = 7;
  TestWeight w = make_weight(WeightFormat::kFP4, out, in, 84);
  std::mt19937 rng(85);
  for (size_t i = kMisalign; i < w.scale.size(); ++i)
    w.scale[i] = static_cast<uint8_t>(120 + rng() % 8);
  w.scale[kMisalign + 100 * (in / 32) + 3] = 253;  // one huge scale in rows 64..127
  const std::vector<float> x = make_activations(m, in, 86);
  const std::vector<float> want = run_quant(Isa::kScalar, x, m, w.ref);
  const int threads = ThreadPool::global().num_threads();
  ThreadPool::set_global_threads(1);
  for (Isa isa : simd_isas()) {
    std::vector<float> got;
    std::thread fresh([&] { got = run_quant(isa, x, m, w.ref); });
    fresh.join();
    expect_bits_equal(want, got, std::string("fallback block between fast ones ") + isa_name(isa));
  }
  ThreadPool::set_global_threads(threads);
}

// Checkpoint tensors start at any byte offset. Weights placed at every offset within a cache
// line: the VNNI FP4 kernel reads rows that start at a multiple of 4 bytes past a line with
// whole-line loads joined by a permute, and other rows with unaligned loads. Rows of 528 bytes
// (1056 elements: two whole groups and a partial one) start at a different offset each; rows
// of 1024 bytes all at the same one.
TEST(QuantLinear, QuantizedWeightsAtEveryAlignment) {
  IsaGuard guard;
  uint32_t seed = 300;
  for (WeightFormat format : {WeightFormat::kFP4, WeightFormat::kFP8})
    for (int64_t in : {1056, 2048}) {
      const TestWeight w = make_weight(format, 20, in, seed++);
      const size_t data_bytes = w.data.size() - kMisalign, scale_bytes = w.scale.size() - kMisalign;
      const std::vector<float> x = make_activations(1, in, seed++);
      const std::vector<float> want = run_quant(Isa::kScalar, x, 1, w.ref);
      std::vector<uint8_t> buffer(data_bytes + 128), scales(scale_bytes + 128);
      uint8_t* base = buffer.data() + (64 - reinterpret_cast<uintptr_t>(buffer.data()) % 64);
      uint8_t* sbase = scales.data() + (64 - reinterpret_cast<uintptr_t>(scales.data()) % 64);
      for (int64_t offset = 0; offset < 64; ++offset) {
        std::memset(buffer.data(), 0xEE, buffer.size());
        std::memcpy(base + offset, w.data.data() + kMisalign, data_bytes);
        std::memcpy(sbase + offset % 7, w.scale.data() + kMisalign, scale_bytes);
        WeightRef ref = w.ref;
        ref.data = base + offset;
        ref.scale = sbase + offset % 7;
        for (Isa isa : simd_isas())
          expect_bits_equal(want, run_quant(isa, x, 1, ref),
                            std::string(format == WeightFormat::kFP4 ? "fp4" : "fp8") +
                                " in=" + std::to_string(in) + " offset " + std::to_string(offset) +
                                " " + isa_name(isa));
      }
    }
}

TEST(QuantLinear, SimdMatchesScalarBitForBitFp4) {
  IsaGuard guard;
  const int64_t shapes[][2] = {{1, 32}, {5, 96}, {19, 320}, {27, 64}, {70, 2048}};
  uint32_t seed = 100;
  for (const auto& s : shapes) {
    const TestWeight w = make_weight(WeightFormat::kFP4, s[0], s[1], seed++);
    for (int64_t m : kMs) {
      const std::vector<float> x = make_activations(m, s[1], seed++);
      const std::vector<float> want = run_quant(Isa::kScalar, x, m, w.ref);
      for (Isa isa : simd_isas())
        expect_bits_equal(want, run_quant(isa, x, m, w.ref),
                          std::string("fp4 ") + isa_name(isa) + " out=" + std::to_string(s[0]) +
                              " in=" + std::to_string(s[1]) + " m=" + std::to_string(m));
    }
  }
}

// The FP4 semantics computed independently: per K tile the exact sum
// (long double holds it: ≤ 53 significant bits) of fake-quantized activation
// × decoded code × scale, rounded to float, tiles added in float, then bf16.
// (The FP8 branch is the old exact-tile definition, kept to show that the FP32
// contract differs from it: Fp8Linear.PairsOrderIsNotTheExactTileSum.)
std::vector<float> independent_quant(const std::vector<float>& x, int64_t m, const TestWeight& w) {
  const WeightRef& r = w.ref;
  const int64_t tile = r.format == WeightFormat::kFP8 ? 128 : 32;
  std::vector<float> y(m * r.out);
  for (int64_t i = 0; i < m; ++i) {
    std::vector<float> a(x.begin() + i * r.in, x.begin() + (i + 1) * r.in);
    fp8_fake_quant(a.data(), r.in, 128);
    for (int64_t o = 0; o < r.out; ++o) {
      float acc = 0;
      for (int64_t k0 = 0; k0 < r.in; k0 += tile) {
        long double sum = 0;
        for (int64_t k = k0; k < std::min(r.in, k0 + tile); ++k) {
          long double wv;
          if (r.format == WeightFormat::kFP8) {
            const uint8_t code = w.data[kMisalign + o * r.in + k];
            const int64_t sc = (o / 128) * ((r.in + 127) / 128) + k / 128;
            wv = static_cast<long double>(fp8_e4m3_decode(code)) *
                 std::ldexp(1.0L, static_cast<int>(w.scale[kMisalign + sc]) - 127);
          } else {
            const uint8_t byte = w.data[kMisalign + (o * r.in + k) / 2];
            const uint8_t code = (k % 2 == 0) ? (byte & 0xf) : (byte >> 4);
            wv = static_cast<long double>(fp4_e2m1_decode(code)) *
                 std::ldexp(1.0L,
                            static_cast<int>(w.scale[kMisalign + o * (r.in / 32) + k / 32]) - 127);
          }
          sum += static_cast<long double>(a[k]) * wv;
        }
        acc += static_cast<float>(static_cast<double>(sum));
      }
      y[i * r.out + o] = bf16_round(acc);
    }
  }
  return y;
}

TEST(QuantLinear, Avx512FallbackFp4PathsMatchScalar) {
  // The FP4 matrix-vector paths for AVX-512 CPUs without VNNI (VBMI: doubles from byte tables)
  // and without either (e.g. Skylake-X: float decode).
  if (!isa_supported(Isa::kAvx512)) GTEST_SKIP() << "no AVX-512";
  IsaGuard guard;
  uint32_t seed = 150;
  for (bool vbmi : {true, false}) {
    detail::set_avx512_vnni_allowed(false);
    detail::set_avx512_vbmi_allowed(vbmi);
    for (const auto& s : {std::array<int64_t, 2>{5, 96}, std::array<int64_t, 2>{70, 2048}}) {
      const TestWeight w = make_weight(WeightFormat::kFP4, s[0], s[1], seed++);
      for (int64_t m : {1, 5}) {
        const std::vector<float> x = make_activations(m, s[1], seed++);
        expect_bits_equal(
            run_quant(Isa::kScalar, x, m, w.ref), run_quant(Isa::kAvx512, x, m, w.ref),
            std::string(vbmi ? "fp4 avx512 without vnni" : "fp4 avx512 without vnni and vbmi") +
                " m=" + std::to_string(m));
      }
    }
  }
  detail::set_avx512_vnni_allowed(true);
  detail::set_avx512_vbmi_allowed(true);
}

TEST(QuantLinear, Fp4IntegerPathAcrossActivationRanges) {
  // The VNNI matrix-vector path splits each tile's activations, as integers over the tile's
  // smallest set bit, into 1, 2 or 3 byte planes. Tiles here: all zero; one value repeated
  // (1 plane); a 2^10 spread (2 planes); the whole FP8 range down to its subnormals after
  // fake quantization (3 planes); negative and −0 values; an odd number of tiles (half chunk).
  // m > 1: the matrix-matrix kernel puts 16 rows in the lanes of a vector and picks the planes
  // per 16-row block, so rows of different kinds share blocks.
  IsaGuard guard;
  uint32_t seed = 170;
  for (int64_t in : {int64_t{32}, int64_t{96}, int64_t{544}, int64_t{2048}})
    for (int64_t m : {int64_t{1}, int64_t{3}, int64_t{21}}) {
      const TestWeight w = make_weight(WeightFormat::kFP4, 37, in, seed++);
      std::mt19937 rng(seed++);
      std::vector<float> x(m * in);
      for (int64_t k = 0; k < m * in; ++k) {
        const int64_t kind = (k / 32 + k / in) % 5;
        const float sign = (rng() & 1) ? -1.0f : 1.0f;
        switch (kind) {
          case 0:
            x[k] = (rng() & 1) ? 0.0f : -0.0f;
            break;
          case 1:
            x[k] = sign * 0.75f;
            break;
          case 2:
            x[k] = sign * std::ldexp(1.0f + static_cast<float>(rng() % 8) / 8,
                                     -static_cast<int>(rng() % 10));
            break;
          case 3:
            // 448 at the top of the 128-block forces the block scale; the rest reach its
            // FP8 subnormals (2^-9 of the scale) and everything between.
            x[k] = k % 32 == 0 ? 448.0f
                               : sign * std::ldexp(static_cast<float>(1 + rng() % 15),
                                                   -static_cast<int>(rng() % 12));
            break;
          default:
            x[k] = sign * static_cast<float>(rng() % 1000) / 7.0f;
            break;
        }
      }
      const std::vector<float> want = run_quant(Isa::kScalar, x, m, w.ref);
      for (Isa isa : simd_isas())
        expect_bits_equal(want, run_quant(isa, x, m, w.ref),
                          std::string("fp4 activation ranges ") + isa_name(isa) +
                              " in=" + std::to_string(in) + " m=" + std::to_string(m));
    }
}

TEST(QuantLinear, Fp4IntegerPathScalesOutsideFloatRange) {
  // The VNNI matrix-matrix kernel scales its integer tile sums in fp32 only while every
  // 2^(u − 1 + e − 127) keeps them normal floats; scales near 2^100 (sums past 2^96) and near
  // 2^-120 (fp32 subnormal results) must take the double route and still match bit for bit.
  IsaGuard guard;
  // Rows of 1056: the matrix-vector kernel checks whole rows' scales first and only then
  // per tile; here some rows have one outlying scale, the others none.
  for (int big : {0, 1})
    for (int64_t in : {int64_t{256}, int64_t{1056}}) {
      TestWeight w = make_weight(WeightFormat::kFP4, 40, in, 190 + static_cast<uint32_t>(big));
      for (size_t i = kMisalign; i < w.scale.size(); ++i)
        if (in == 256 ? i % 2 != 0 : i % 97 == 0)
          w.scale[i] = static_cast<uint8_t>(big ? 127 + 100 : 127 - 120);
      for (int64_t m : {1, 6, 19}) {
        const std::vector<float> x = make_activations(m, in, 191 + static_cast<uint32_t>(m));
        const std::vector<float> want = run_quant(Isa::kScalar, x, m, w.ref);
        for (Isa isa : simd_isas())
          expect_bits_equal(want, run_quant(isa, x, m, w.ref),
                            std::string("fp4 extreme scales ") + isa_name(isa) +
                                " m=" + std::to_string(m) + (big ? " 2^100" : " 2^-120"));
      }
    }
}

TEST(QuantLinear, Fp4WideTilesSumExactly) {
  // The AVX2 matrix-matrix kernel sums tiles in fp32, exact only while the activations span
  // less than 2^15 of their lowest set bit; wider tiles (FP8 values of 448 beside an FP8
  // subnormal) must take the exact double sum. Two tiles, each exactly 2^-10, which fp32 loses
  // in one summation order each. Tile 0 (elements k, 8 + k, 16 + k, 24 + k in one lane): lane
  // 0 holds 4·2688, lane 1 3·2688 + 2^-10, lanes 2 and 3 the same negated without the 2^-10,
  // and lanes 0 + 1 round the 2^-10 away (a tie, to even). Tile 1 (elements in order): seven
  // products of 2688, then 2^-10 (lost the same way), then seven of −2688.
  IsaGuard guard;
  const int64_t in = 64, out = 5, m = 3;
  TestWeight w = make_weight(WeightFormat::kFP4, out, in, 81);
  std::fill(w.data.begin() + kMisalign, w.data.end(), uint8_t{0});
  std::fill(w.scale.begin() + kMisalign, w.scale.end(), uint8_t{127});
  std::vector<uint8_t> codes(in, 0);  // e2m1: 7 = 6, 15 = -6, 1 = 0.5
  std::vector<float> row_x(in, 0.0f);
  for (int k : {0, 8, 16, 24, 1, 9, 17}) codes[k] = 7, row_x[k] = 448.0f;
  for (int k : {2, 10, 18, 26, 3, 11, 19}) codes[k] = 15, row_x[k] = 448.0f;
  codes[25] = 1;
  row_x[25] = std::ldexp(1.0f, -9);
  for (int k = 32; k < 39; ++k) codes[k] = 7, row_x[k] = 448.0f;
  codes[39] = 1;
  row_x[39] = std::ldexp(1.0f, -9);
  for (int k = 40; k < 47; ++k) codes[k] = 15, row_x[k] = 448.0f;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t k = 0; k < in; k += 2)
      w.data[kMisalign + r * in / 2 + k / 2] = static_cast<uint8_t>(codes[k] | codes[k + 1] << 4);
  // Row 0 all zero (a tile that fits fp32) in the same block of rows as the wide ones.
  std::vector<float> x(in, 0.0f);
  for (int64_t i = 1; i < m; ++i) x.insert(x.end(), row_x.begin(), row_x.end());
  const std::vector<float> want = run_quant(Isa::kScalar, x, m, w.ref);
  for (int64_t k = 0; k < m * out; ++k)
    ASSERT_EQ(want[k], k < out ? 0.0f : std::ldexp(1.0f, -9)) << k;
  for (Isa isa : simd_isas())
    expect_bits_equal(want, run_quant(isa, x, m, w.ref),
                      std::string("fp4 wide tiles ") + isa_name(isa));
}

// An FP4 weight of `out` equal rows: e2m1 codes per element (7 = 6, 6 = 4, 1 = 0.5, +8
// negates) and one E8M0 scale byte for every tile.
TestWeight fp4_equal_rows(int64_t out, const std::vector<uint8_t>& codes, uint8_t scale) {
  const int64_t in = static_cast<int64_t>(codes.size());
  TestWeight w = make_weight(WeightFormat::kFP4, out, in, 82);
  std::fill(w.scale.begin() + kMisalign, w.scale.end(), scale);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t k = 0; k < in; k += 2)
      w.data[kMisalign + r * in / 2 + k / 2] = static_cast<uint8_t>(codes[k] | codes[k + 1] << 4);
  return w;
}

// One FP4 tile case of the AVX2 matrix-matrix kernel's fp32 bounds: every output row holds
// `codes` (E8M0 scale byte `scale`), both activation rows are row_x; the scalar path must give
// `expected` everywhere and every SIMD path its bits.
namespace {
void expect_fp4_rows(const std::vector<uint8_t>& codes, const std::vector<float>& row_x,
                     uint8_t scale, float expected, const std::string& what) {
  const int64_t out = 3, m = 2;
  const TestWeight w = fp4_equal_rows(out, codes, scale);
  std::vector<float> x;
  for (int64_t i = 0; i < m; ++i) x.insert(x.end(), row_x.begin(), row_x.end());
  const std::vector<float> want = run_quant(Isa::kScalar, x, m, w.ref);
  for (float v : want) ASSERT_EQ(v, expected) << what << ", scalar";
  for (Isa isa : simd_isas())
    expect_bits_equal(want, run_quant(isa, x, m, w.ref), what + " " + isa_name(isa));
}
}  // namespace

TEST(QuantLinear, Fp4SplitTileIsRoundedOnce) {
  // The AVX2 matrix-matrix kernel sums a tile too wide for fp32 as two parts, each exact in
  // fp32, and must add their sum to the row's running fp32 sum (one rounding of the exact tile
  // sum), not the parts one after the other. Scales 2^2. Tile 0: 8·256·(−16) + 64·2 = −32640.
  // Tile 1: 16·256·16 = 2^16 and 2^-9·2 = 2^-8: the exact sum rounds to 2^16 (a tie, to even),
  // so the row is −32640 + 2^16 = 32896, bf16 32768; adding the parts in turn gives
  // 32896 + 2^-8 (exact), bf16 33024.
  IsaGuard guard;
  std::vector<uint8_t> codes(64, 0);
  std::vector<float> row_x(64, 0.0f);
  for (int k = 0; k < 8; ++k) codes[k] = 14, row_x[k] = 256.0f;
  codes[8] = 1, row_x[8] = 64.0f;
  for (int k = 32; k < 48; ++k) codes[k] = 6, row_x[k] = 256.0f;
  codes[48] = 1, row_x[48] = std::ldexp(1.0f, -9);
  expect_fp4_rows(codes, row_x, 129, 32768.0f, "fp4 split tile");
}

TEST(QuantLinear, Fp4TileExactInFp32OnlyWithinItsBound) {
  // fp32 sums a tile exactly while 12·Σ|X| ≤ 2^24 units (X the activations over their lowest
  // set bit). Tile 1 is just past that: sixteen products 256·4 = 2^24 units of 2^-10, then two
  // of one unit. In fp32 in order the units are lost (ties to even), the exact sum 2^14 + 2^-9
  // is a float. After tile 0 (128·0.5 = 64) the row is 16448 + 2^-9, bf16 16512; with the
  // units lost 16448, bf16 16384.
  IsaGuard guard;
  std::vector<uint8_t> codes(64, 0);
  std::vector<float> row_x(64, 0.0f);
  codes[0] = 1, row_x[0] = 128.0f;
  for (int k = 32; k < 48; ++k) codes[k] = 6, row_x[k] = 256.0f;
  for (int k : {48, 49}) codes[k] = 1, row_x[k] = std::ldexp(1.0f, -9);
  expect_fp4_rows(codes, row_x, 127, 16512.0f, "fp4 fp32 bound");
}

TEST(QuantLinear, Fp4TilesAddInFp32InAscendingK) {
  // The integer kernels compute tile sums out of order and then add them in fp32; the order of
  // those adds is part of the contract. Per row three tiles a < b < c hold 1, 2^24 and −2^24:
  // ascending K gives (1 + 2^24) − 2^24 = 0 in fp32, any other order 1. Rows of 33 tiles (the
  // last in a partial group of every kernel), tiles anywhere in the row, 20 rows (a partial
  // block of rows), m = 1 and 3.
  IsaGuard guard;
  const int64_t in = 1056, out = 20, tiles = in / 32;
  TestWeight w = make_weight(WeightFormat::kFP4, out, in, 77);
  std::fill(w.data.begin() + kMisalign, w.data.end(), uint8_t{0});
  std::fill(w.scale.begin() + kMisalign, w.scale.end(), uint8_t{127});
  for (int64_t r = 0; r < out; ++r) {
    const int64_t a = r % 5, b = a + 1 + (r * 7) % 20, c = r % 2 ? tiles - 1 : b + 1 + r % 3;
    uint8_t* row = w.data.data() + kMisalign + r * in / 2;
    uint8_t* scale = w.scale.data() + kMisalign + r * tiles;
    row[a * 16] = 0x02;  // element 0 of the tile: code 2 = 1.0
    row[b * 16] = 0x02;
    row[c * 16] = 0x0A;  // −1.0
    scale[b] = scale[c] = 127 + 24;
  }
  for (int64_t m : {int64_t{1}, int64_t{3}}) {
    std::vector<float> x(m * in, 0.0f);
    for (int64_t k = 0; k < m * in; k += 32) x[k] = 1.0f;
    const std::vector<float> want = run_quant(Isa::kScalar, x, m, w.ref);
    for (int64_t i = 0; i < m * out; ++i) ASSERT_EQ(want[i], 0.0f) << "scalar, output " << i;
    for (Isa isa : simd_isas())
      expect_bits_equal(want, run_quant(isa, x, m, w.ref),
                        std::string("fp4 tile order ") + isa_name(isa) + " m=" + std::to_string(m));
  }
}

TEST(QuantLinear, ScalarMatchesIndependentExactSumsFp4) {
  IsaGuard guard;
  uint32_t seed = 200;
  for (WeightFormat f : {WeightFormat::kFP4}) {
    const int64_t out = 45, in = f == WeightFormat::kFP8 ? 300 : 256;
    const TestWeight w = make_weight(f, out, in, seed++);
    for (int64_t m : {1, 5}) {
      const std::vector<float> x = make_activations(m, in, seed++);
      expect_bits_equal(independent_quant(x, m, w), run_quant(Isa::kScalar, x, m, w.ref),
                        f == WeightFormat::kFP8 ? "fp8 independent" : "fp4 independent");
    }
  }
}

// ---- FP8 weights: the FP32-accumulation contract (docs/kernels.md). Compared on the fp32
// accumulators (before the bf16 rounding, which hides most order differences).

std::vector<float> run_fp8_f32(Isa isa, const std::vector<float>& x, int64_t m,
                               const WeightRef& w) {
  set_isa(isa);
  std::vector<float> y(m * w.out, 12345.0f);
  detail::fp8_quant_linear_f32(x.data(), m, w, y.data());
  return y;
}

// The contract written out from its definition, independently of the kernels' helpers.
// The FP8 contract's tile sum written out: tile b of weight row o (FP8 code values) against
// the activation values qa(k), sixteen lanes of fused multiply-adds (per group of 32, lane j
// takes element 2j + 1, then 2j; +0 past `in`), then the fixed tree.
template <typename Qa>
float pairs_tile_sum(const TestWeight& w, int64_t o, int64_t b, Qa qa) {
  const WeightRef& r = w.ref;
  float lane[16] = {};
  for (int64_t g = 128 * b; g < std::min(r.in, 128 * b + 128); g += 32)
    for (int j = 0; j < 16; ++j)
      for (int64_t k : {g + 2 * j + 1, g + 2 * j}) {  // odd element first
        const float a = k < r.in ? qa(k) : 0.0f;
        const float q = k < r.in ? fp8_e4m3_decode(w.data[kMisalign + o * r.in + k]) : 0.0f;
        lane[j] = std::fma(a, q, lane[j]);
      }
  float v[8];
  for (int j = 0; j < 8; ++j) v[j] = lane[j] + lane[j + 8];
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

std::vector<float> fp8_contract(const std::vector<float>& x, int64_t m, const TestWeight& w) {
  const WeightRef& r = w.ref;
  const int64_t tiles = (r.in + 127) / 128;
  std::vector<float> y(m * r.out);
  for (int64_t i = 0; i < m; ++i) {
    std::vector<float> a(x.begin() + i * r.in, x.begin() + (i + 1) * r.in);
    fp8_fake_quant(a.data(), r.in, 128);
    for (int64_t o = 0; o < r.out; ++o) {
      float acc = 0;
      for (int64_t b = 0; b < tiles; ++b) {
        float amax = 0;
        for (int64_t k = 128 * b; k < std::min(r.in, 128 * b + 128); ++k)
          amax = std::max(amax, std::fabs(x[i * r.in + k]));
        const float sa = fp8_block_scale(amax);
        const int64_t sc = (o / 128) * tiles + b;
        float sw;
        if (r.scale_is_f32)
          std::memcpy(&sw, w.scale.data() + kMisalign + sc * 4, 4);
        else
          sw = std::ldexp(1.0f, static_cast<int>(w.scale[kMisalign + sc]) - 127);
        const float sum = pairs_tile_sum(w, o, b, [&](int64_t k) { return a[k] / sa; });
        acc += static_cast<float>(static_cast<double>(sum) * (static_cast<double>(sa) * sw));
      }
      y[i * r.out + o] = acc;
    }
  }
  return y;
}

TEST(Fp8Linear, ScalarIsTheContract) {
  IsaGuard guard;
  uint32_t seed = 300;
  for (bool f32_scale : {false, true})
    for (const auto& s : {std::array<int64_t, 2>{45, 300}, std::array<int64_t, 2>{130, 257}}) {
      const TestWeight w = make_weight(WeightFormat::kFP8, s[0], s[1], seed++, f32_scale);
      for (int64_t m : {1, 5}) {
        const std::vector<float> x = make_activations(m, s[1], seed++);
        expect_bits_equal(fp8_contract(x, m, w), run_fp8_f32(Isa::kScalar, x, m, w.ref),
                          std::string("fp8 contract") + (f32_scale ? " f32 scales" : ""));
      }
    }
}

TEST(Fp8Linear, PairsOrderIsNotTheExactTileSum) {
  // The test above would also pass for a kernel that summed tiles exactly if random FP8 data
  // never rounded: show that it does, so the order is really checked.
  const TestWeight w = make_weight(WeightFormat::kFP8, 64, 1024, 310);
  const std::vector<float> x = make_activations(4, 1024, 311);
  const std::vector<float> pairs = fp8_contract(x, 4, w);
  int64_t differ = 0;
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t o = 0; o < 64; ++o) {
      std::vector<float> a(x.begin() + i * 1024, x.begin() + (i + 1) * 1024), row(1024);
      fp8_fake_quant(a.data(), 1024, 128);
      dequant_row(w.ref, o, row.data());
      float acc = 0;
      for (int64_t k0 = 0; k0 < 1024; k0 += 128) {
        long double sum = 0;
        for (int64_t k = k0; k < k0 + 128; ++k) sum += static_cast<long double>(a[k]) * row[k];
        acc += static_cast<float>(static_cast<double>(sum));
      }
      differ += float_bits(acc) != float_bits(pairs[i * 64 + o]);
    }
  EXPECT_GT(differ, 16) << "random FP8 tiles should often round differently in fp32";
}

TEST(Fp8Linear, SimdMatchesScalarFp32Accumulators) {
  IsaGuard guard;
  // in = 1700 and 2176: whole blocks of eight and four tiles, single tiles and a partial one
  // (the matrix-vector kernel's three loops). in = 4736: the AVX2 matrix-vector kernel's K
  // chunks (8 four-tile steps, then 1, then single tiles) over blocks of rows, 140 rows
  // crossing a 128-row scale block.
  const int64_t shapes[][2] = {{1, 1},     {3, 100},  {7, 128},  {131, 300}, {260, 257},
                               {33, 1000}, {9, 1700}, {4, 2176}, {140, 4736}};
  uint32_t seed = 320;
  for (const auto& s : shapes)
    for (bool f32_scale : {false, true}) {
      const TestWeight w = make_weight(WeightFormat::kFP8, s[0], s[1], seed++, f32_scale);
      for (int64_t m : kMs) {
        const std::vector<float> x = make_activations(m, s[1], seed++);
        const std::vector<float> want = run_fp8_f32(Isa::kScalar, x, m, w.ref);
        const std::string what = " out=" + std::to_string(s[0]) + " in=" + std::to_string(s[1]) +
                                 " m=" + std::to_string(m) + (f32_scale ? " f32 scales" : "");
        for (Isa isa : simd_isas())
          expect_bits_equal(want, run_fp8_f32(isa, x, m, w.ref), isa_name(isa) + what);
        if (isa_supported(Isa::kAvx512)) {  // AVX-512 without the BF16 dot product: FMAs
          detail::set_avx512_bf16_allowed(false);
          expect_bits_equal(want, run_fp8_f32(Isa::kAvx512, x, m, w.ref), "avx512-fma" + what);
          detail::set_avx512_bf16_allowed(true);
        }
      }
    }
}

// A tile's two block scales times 2^8 as one factor past float's range (weight scale 2^127,
// activations up to 2^12: the factor is 2^139) while the tile value stays finite (tiny weights):
// a kernel that scaled in fp32 with the factor rounded to float would give inf. (With E8M0
// scales the factor never falls below 2^-141: activation scales stop at 1e-4 / 448.)
TEST(Fp8Linear, TileFactorsPastFloatRangeMatchScalar) {
  IsaGuard guard;
  const int64_t out = 16, in = 512;
  TestWeight w = make_weight(WeightFormat::kFP8, out, in, 90);
  std::mt19937 rng(91);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < in; ++k) {
      uint8_t code = 0;
      if (o < 8 && k >= 128 && k < 256 && k != 130) code = 0x01;              // 2^-9
      if (o >= 8 && k >= 256 && k < 384) code = static_cast<uint8_t>(rng());  // any
      if ((code & 0x7f) == 0x7f) code = 0x7e;
      w.data[kMisalign + o * in + k] = code;
    }
  const uint8_t scales[4] = {127, 254, 127, 127};  // 1, 2^127, 1, 1
  for (int b = 0; b < 4; ++b) w.scale[kMisalign + b] = scales[b];
  // m = 1 (matrix-vector) and m > 1 (the matrix-matrix kernels), every row alike.
  for (int64_t m : {1, 3, 7}) {
    std::vector<float> x = make_activations(m, in, 92);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t k = 128; k < 256; ++k) x[i * in + k] = std::ldexp(1.0f, -5);
      x[i * in + 130] = std::ldexp(1.0f, 12);
    }
    const std::vector<float> want = run_fp8_f32(Isa::kScalar, x, m, w.ref);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t o = 0; o < 8; ++o) {
        ASSERT_TRUE(std::isfinite(want[i * out + o])) << "m " << m << " row " << o;
        ASSERT_GT(std::fabs(want[i * out + o]), std::ldexp(1.0f, 100)) << "m " << m << " row " << o;
      }
    for (Isa isa : simd_isas())
      expect_bits_equal(want, run_fp8_f32(isa, x, m, w.ref),
                        std::string(isa_name(isa)) + " m=" + std::to_string(m));
  }
}

// The other end: F32 weight scales that are powers of two (a Base checkpoint may hold any
// float) below E8M0's 2^-127, times an activation scale, give a factor under float's smallest
// subnormal 2^-149, while the tile value itself is a float (a normal or subnormal one).
TEST(Fp8Linear, TileFactorsBelowFloatRangeMatchScalar) {
  IsaGuard guard;
  const int64_t out = 16, in = 128;
  TestWeight w = make_weight(WeightFormat::kFP8, out, in, 93, /*f32_scale=*/true);
  const float scale = std::ldexp(1.0f, -140);
  std::memcpy(w.scale.data() + kMisalign, &scale, 4);
  for (int64_t m : {1, 3, 7}) {
    std::vector<float> x = make_activations(m, in, 94);
    for (float& v : x) v *= 1e-3f;  // an activation scale near 2^-17
    const std::vector<float> want = run_fp8_f32(Isa::kScalar, x, m, w.ref);
    int64_t nonzero = 0;
    for (float v : want) nonzero += v != 0.0f;
    ASSERT_GT(nonzero, m * out / 2) << "the tile values must be subnormal floats, not zero";
    for (Isa isa : simd_isas())
      expect_bits_equal(want, run_fp8_f32(isa, x, m, w.ref),
                        std::string(isa_name(isa)) + " m=" + std::to_string(m));
  }
}

TEST(Fp8Linear, Bf16DotPathIsUsedWhereAvailable) {
  if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512vbmi"))
    GTEST_SKIP() << "no AVX512-BF16 + VBMI on this CPU";
  EXPECT_TRUE(detail::fp8_bf16_dot_available())
      << "vdpbf16ps did not add in linear_dot_pairs_f32's order on this CPU";
}

// fp8_bf16_linear (wo_a) over weight rows [r0, r1), y rows `ldy` apart, without the bf16
// rounding (x rows `ldx` apart).
std::vector<float> run_fp8_plain(Isa isa, const std::vector<float>& x, int64_t m, int64_t ldx,
                                 const WeightRef& w, int64_t r0, int64_t r1, int64_t ldy) {
  set_isa(isa);
  std::vector<float> y(m * ldy, 777.0f);
  fp8_bf16_linear(x.data(), m, ldx, w, r0, r1, y.data(), ldy, false);
  return y;
}

// The fp8_bf16_linear contract written out: per 128-block the activations over the power of
// two 2^floor(log2 max|x|), lanes of odd-then-even fused multiply-adds with the weight codes,
// the fixed tree, times (that power of two · the weight's block scale) in double, tiles added
// in fp32.
std::vector<float> fp8_plain_contract(const std::vector<float>& x, int64_t m, int64_t ldx,
                                      const TestWeight& w, int64_t r0, int64_t r1, int64_t ldy) {
  const WeightRef& r = w.ref;
  const int64_t tiles = (r.in + 127) / 128;
  std::vector<float> y(m * ldy, 777.0f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = r0; o < r1; ++o) {
      float acc = 0;
      for (int64_t b = 0; b < tiles; ++b) {
        float amax = 0;
        for (int64_t k = 128 * b; k < std::min(r.in, 128 * b + 128); ++k)
          amax = std::max(amax, std::fabs(x[i * ldx + k]));
        int e = 0;
        if (amax > 0) std::frexp(amax, &e), --e;  // amax in [2^e, 2^(e+1))
        const float sa = std::ldexp(1.0f, e);
        const float sw =
            std::ldexp(1.0f, static_cast<int>(w.scale[kMisalign + (o / 128) * tiles + b]) - 127);
        const float sum = pairs_tile_sum(w, o, b, [&](int64_t k) { return x[i * ldx + k] / sa; });
        acc += static_cast<float>(static_cast<double>(sum) * (static_cast<double>(sa) * sw));
      }
      y[i * ldy + (o - r0)] = acc;
    }
  return y;
}

TEST(Fp8PlainLinear, ScalarIsTheContractAndSimdMatchesIt) {
  // Row ranges that start off the multiples of 8 and cross 128-row scale blocks (wo_a's
  // groups); activations that are bf16 values (the AVX512-BF16 kernel), plain floats (the FMA
  // kernels), and blocks spanning more than 2^100 (subnormal partial sums: the scalar path).
  IsaGuard guard;
  uint32_t seed = 600;
  const int64_t ranges[][3] = {{300, 37, 290}, {260, 0, 260}, {200, 128, 200}};
  for (const auto& rg : ranges)
    for (int64_t in : {int64_t{100}, int64_t{1000}, int64_t{1700}}) {
      const TestWeight w = make_weight(WeightFormat::kFP8, rg[0], in, seed++);
      const int64_t r0 = rg[1], r1 = rg[2], ldx = in + 5, ldy = r1 - r0 + 3;
      for (int kind = 0; kind < 3; ++kind)
        for (int64_t m : {int64_t{1}, int64_t{3}, int64_t{17}}) {
          std::vector<float> x = make_activations(m, ldx, seed++);
          for (float& v : x)
            if (kind != 1) v = bf16_round(v);
          if (kind == 2) x[in / 2] = std::ldexp(1.0f, -120);  // with values near 1: a 2^120 spread
          const std::string what = " rows " + std::to_string(r0) + ".." + std::to_string(r1) +
                                   " in=" + std::to_string(in) + " m=" + std::to_string(m) +
                                   (kind == 0   ? " bf16"
                                    : kind == 1 ? " f32"
                                                : " wide");
          const std::vector<float> want =
              run_fp8_plain(Isa::kScalar, x, m, ldx, w.ref, r0, r1, ldy);
          expect_bits_equal(fp8_plain_contract(x, m, ldx, w, r0, r1, ldy), want, "contract" + what);
          for (Isa isa : simd_isas())
            expect_bits_equal(want, run_fp8_plain(isa, x, m, ldx, w.ref, r0, r1, ldy),
                              isa_name(isa) + what);
          if (isa_supported(Isa::kAvx512)) {
            detail::set_avx512_bf16_allowed(false);
            expect_bits_equal(want, run_fp8_plain(Isa::kAvx512, x, m, ldx, w.ref, r0, r1, ldy),
                              "avx512-fma" + what);
            detail::set_avx512_bf16_allowed(true);
          }
        }
    }
}

TEST(Fp8PlainLinear, IsTheFp32SumNotTheDoubleOne) {
  // The same weights through plain_linear (one double sum, rounded once) differ in some
  // outputs: fp8_bf16_linear really accumulates in fp32.
  const int64_t out = 256, in = 4096;
  const TestWeight w = make_weight(WeightFormat::kFP8, out, in, 650);
  std::vector<float> x = make_activations(2, in, 651);
  for (float& v : x) v = bf16_round(v);
  std::vector<float> a(2 * out), b(2 * out);
  fp8_bf16_linear(x.data(), 2, in, w.ref, 0, out, a.data(), out, false);
  plain_linear(x.data(), 2, in, w.ref, 0, out, b.data(), out, false);
  int64_t differ = 0;
  for (int64_t k = 0; k < 2 * out; ++k) differ += a[k] != b[k];
  EXPECT_GT(differ, 0);
  for (int64_t k = 0; k < 2 * out; ++k) EXPECT_NEAR(a[k], b[k], 1e-4f * (1 + std::fabs(b[k])));
}

TEST(Fp8Linear, NonFiniteActivationsMatchScalar) {
  IsaGuard guard;
  const TestWeight w = make_weight(WeightFormat::kFP8, 40, 300, 330);
  std::vector<float> x = make_activations(3, 300, 331);
  x[5] = std::numeric_limits<float>::infinity();
  x[300 + 200] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> want = run_fp8_f32(Isa::kScalar, x, 3, w.ref);
  for (Isa isa : simd_isas()) expect_bits_equal(want, run_fp8_f32(isa, x, 3, w.ref), "non-finite");
}

// Makes column b of every weight row equal to column a (same code, same
// scale block), non-zero. With activations +2^30 at a and -2^30 at b the two
// products cancel exactly, but only where their lanes meet in the reduction
// tree: the partial sums they sat in have already rounded the small products
// at 2^30 magnitude, so the float result depends on the association order,
// which a bit-for-bit comparison then checks (random data alone would almost
// never show a double-order difference after rounding to float).
constexpr int64_t kBig1 = 1, kBig2 = 6;
void tie_columns(TestWeight& w, int64_t a, int64_t b) {
  const WeightRef& r = w.ref;
  const size_t elem = r.format == WeightFormat::kFP8 ? 1 : r.format == WeightFormat::kBF16 ? 2 : 4;
  for (int64_t o = 0; o < r.out; ++o) {
    uint8_t* row = w.data.data() + kMisalign + o * r.in * elem;
    if (r.format == WeightFormat::kFP8) {
      if ((row[a] & 0x7f) == 0) row[a] = 0x38;  // 1.0
    } else {
      std::vector<float> v(r.in);
      dequant_row(r, o, v.data());
      if (v[a] == 0) {
        const float half = 0.5f;
        const uint16_t bf = float_to_bf16_bits(half);
        std::memcpy(row + a * elem, elem == 2 ? static_cast<const void*>(&bf) : &half, elem);
      }
    }
    std::memcpy(row + b * elem, row + a * elem, elem);
  }
}

TEST(PlainLinear, SimdMatchesScalarBitForBit) {
  IsaGuard guard;
  // (out, in, row_begin, row_end); ldx and ldy wider than needed.
  const int64_t shapes[][4] = {{1, 1, 0, 1},     {9, 100, 2, 9},    {64, 257, 0, 64},
                               {37, 512, 5, 36}, {20, 4096, 0, 20}, {3, 17, 1, 2}};
  uint32_t seed = 300;
  for (WeightFormat f : {WeightFormat::kBF16, WeightFormat::kF32, WeightFormat::kFP8})
    for (const auto& s : shapes) {
      const uint32_t weight_seed = seed++;
      TestWeight w = make_weight(f, s[0], s[1], weight_seed, /*f32_scale=*/weight_seed % 2 == 0);
      const bool cancel = s[1] >= 7;
      if (cancel) tie_columns(w, kBig1, kBig2);
      const int64_t width = s[3] - s[2], ldx = s[1] + 3, ldy = width + 2;
      for (int64_t m : kMs)
        for (bool round : {false, true}) {
          std::vector<float> x = make_activations(m, ldx, seed++);
          if (cancel)
            for (int64_t i = 0; i < m; ++i) {
              x[i * ldx + kBig1] = std::ldexp(1.0f, 30);
              x[i * ldx + kBig2] = -std::ldexp(1.0f, 30);
            }
          expect_paths_agree(
              m, width, ldy,
              [&](float* y) { plain_linear(x.data(), m, ldx, w.ref, s[2], s[3], y, ldy, round); },
              "plain format=" + std::to_string(static_cast<int>(f)) +
                  " in=" + std::to_string(s[1]));
        }
    }
}

TEST(PlainLinear, ScalarIsTheRoundedDotProduct) {
  IsaGuard guard;
  set_isa(Isa::kScalar);
  const int64_t out = 13, in = 777, m = 3;
  const TestWeight w = make_weight(WeightFormat::kBF16, out, in, 400);
  const std::vector<float> x = make_activations(m, in, 401);
  std::vector<float> y(m * out);
  plain_linear(x.data(), m, in, w.ref, 0, out, y.data(), out, false);
  std::vector<float> row(in);
  for (int64_t o = 0; o < out; ++o) {
    dequant_row(w.ref, o, row.data());
    for (int64_t i = 0; i < m; ++i) {
      long double exact = 0;
      for (int64_t k = 0; k < in; ++k) exact += static_cast<long double>(x[i * in + k]) * row[k];
      // Double accumulation, then one rounding to float: within half an ulp
      // of float plus a negligible double error.
      const double want = static_cast<double>(exact);
      EXPECT_NEAR(y[i * out + o], want, std::fabs(want) * 1e-7 + 1e-30) << o << "," << i;
    }
  }
}

TEST(LinearDot, FixedAssociationOrder) {
  // Lanes 4 and 12 meet (v_4 = s_4 + s_12 = 2^-52) before joining lane 0's 1,
  // so 1 + 2^-52 survives; a sequential sum (or the 4-lane dot_f64) adds each
  // 2^-53 to 1 separately and rounds both away (ties to even): 1.
  std::vector<float> a(32, 0.0f), b(32, 1.0f);
  a[0] = 1.0f;
  a[4] = std::ldexp(1.0f, -53);
  a[12] = std::ldexp(1.0f, -53);
  EXPECT_EQ(linear_dot_f64(a.data(), b.data(), 32), 1.0 + std::ldexp(1.0, -52));
  // A tail shorter than 16 goes to lanes 0.. of the same tree.
  std::vector<float> c(20, 0.0f), d(20, 1.0f);
  c[0] = 1.0f;
  c[4] = std::ldexp(1.0f, -53);
  c[12] = std::ldexp(1.0f, -53);
  EXPECT_EQ(linear_dot_f64(c.data(), d.data(), 20), 1.0 + std::ldexp(1.0, -52));
}

TEST(Fp32Bf16Linear, SimdMatchesScalarBitForBit) {
  IsaGuard guard;
  // (out, in, row_begin, row_end): tails of every length class, rows not a multiple of 4.
  const int64_t shapes[][4] = {{1, 1, 0, 1},    {9, 31, 2, 9},    {6, 32, 0, 6},
                               {7, 33, 1, 7},   {37, 100, 5, 36}, {20, 4096, 0, 20},
                               {5, 4097, 0, 5}, {64, 257, 0, 64}};
  uint32_t seed = 900;
  for (const auto& s : shapes) {
    TestWeight w = make_weight(WeightFormat::kBF16, s[0], s[1], seed++);
    if (s[1] >= 7) tie_columns(w, kBig1, kBig2);
    const int64_t width = s[3] - s[2], ldx = s[1] + 3, ldy = width + 2;
    for (int64_t m : {1, 2, 5}) {
      std::vector<float> x = make_activations(m, ldx, seed++);
      // With m = 2 two huge products cancel across lanes; otherwise not, since in fp32 they
      // would swallow every other product of their lanes and hide the order of the rest.
      if (s[1] >= 7 && m == 2)
        for (int64_t i = 0; i < m; ++i) {
          x[i * ldx + kBig1] = std::ldexp(1.0f, 30);
          x[i * ldx + kBig2] = -std::ldexp(1.0f, 30);
        }
      expect_paths_agree(
          m, width, ldy,
          [&](float* y) { fp32_bf16_linear(x.data(), m, ldx, w.ref, s[2], s[3], y, ldy); },
          "fp32_bf16 in=" + std::to_string(s[1]));
    }
  }
}

TEST(Fp32Bf16Linear, WeightsAtEveryAlignmentWithBf16Activations) {
  // The AVX2 kernel joins aligned 16-byte loads for rows 4, 8 or 12 bytes past a 16-byte
  // boundary and takes bf16-valued activations in the weights' own pair layout: every offset
  // (odd `in` staggers the rows' offsets within one call), activations bf16-valued or not,
  // and a cancelling 2^30 pair that makes the lanes' order show.
  IsaGuard guard;
  uint32_t seed = 960;
  for (int64_t in : {int64_t{100}, int64_t{1057}}) {
    TestWeight w = make_weight(WeightFormat::kBF16, 11, in, seed++);
    tie_columns(w, kBig1, kBig2);
    // Lane 2 of set 0 (rows of 1057): weights 1 at columns 4, 5, 132, 133 (see below).
    const int64_t odd_first[4] = {5, 4, 133, 132};
    if (in > 256)
      for (int64_t o = 0; o < w.ref.out; ++o)
        for (int64_t k : odd_first) {
          const uint16_t one = float_to_bf16_bits(1.0f);
          std::memcpy(w.data.data() + kMisalign + (o * in + k) * 2, &one, 2);
        }
    const size_t bytes = static_cast<size_t>(w.ref.out * in * 2);
    std::vector<uint8_t> storage(bytes + 64);
    const uintptr_t base = (reinterpret_cast<uintptr_t>(storage.data()) + 15) & ~uintptr_t{15};
    for (int64_t m : {int64_t{1}, int64_t{3}}) {
      std::vector<float> x = make_activations(m, in, seed++);
      for (int rounded = 0; rounded < 2; ++rounded) {
        std::vector<float> xr = x;
        if (rounded != 0)
          for (float& v : xr) v = bf16_round(v);
        for (int64_t i = 0; i < m; ++i) {
          xr[i * in + kBig1] = std::ldexp(1.0f, 30);
          xr[i * in + kBig2] = -std::ldexp(1.0f, 30);
          // Odd element before even (LinearDotPairs4): 2^20, 2^-4, 2^-4, -2^20 leave 0 in
          // lane 2 of set 0; the even element first would leave 2^-4. Nothing else in that lane.
          if (in > 256) {
            const float values[4] = {std::ldexp(1.0f, 20), std::ldexp(1.0f, -4),
                                     std::ldexp(1.0f, -4), -std::ldexp(1.0f, 20)};
            for (int q = 0; q < 4; ++q) xr[i * in + odd_first[q]] = values[q];
            for (int64_t k = 256; k + 5 < in; k += 128) xr[i * in + k + 4] = xr[i * in + k + 5] = 0;
          }
        }
        for (uintptr_t offset = 0; offset < 16; ++offset) {
          auto* data = reinterpret_cast<uint8_t*>(base + offset);
          std::memcpy(data, w.ref.data, bytes);
          WeightRef ref = w.ref;
          ref.data = data;
          expect_paths_agree(
              m, ref.out, ref.out,
              [&](float* y) { fp32_bf16_linear(xr.data(), m, in, ref, 0, ref.out, y, ref.out); },
              "fp32_bf16 in=" + std::to_string(in) + " offset " + std::to_string(offset) +
                  (rounded != 0 ? " bf16 activations" : ""));
        }
      }
    }
  }
}

TEST(Fp32Bf16Linear, RejectsOtherFormats) {
  const TestWeight w = make_weight(WeightFormat::kF32, 2, 8, 950);
  std::vector<float> x(8, 1.0f), y(2);
  EXPECT_THROW(fp32_bf16_linear(x.data(), 1, 8, w.ref, 0, 2, y.data(), 2), Error);
}

TEST(LinearDotPairs, OddElementFirstThenEven) {
  // Lane 0 sees, in order, 1 (element 1), 2^-24 (element 0: lost to the tie-to-even), 2^-24
  // (element 33: lost again), -1 (element 32): 0. Adding the even element of each pair first
  // would keep a 2^-24: 2^-24, 1 + 2^-24 = 1, 1 - 1 = 0, 0 + 2^-24.
  std::vector<float> a(64, 0.0f), b(64, 1.0f);
  a[1] = 1.0f;
  a[0] = std::ldexp(1.0f, -24);
  a[33] = std::ldexp(1.0f, -24);
  a[32] = -1.0f;
  EXPECT_EQ(float_bits(linear_dot_pairs_f32(a.data(), b.data(), 64)), float_bits(0.0f));
  // Products are fused into the lane sum (one rounding): -1 + (1 + 2^-12)^2 keeps the 2^-24
  // that rounding the product to fp32 first would lose (a tie, to even).
  std::vector<float> c(32, 0.0f), d(32, 0.0f);
  c[1] = 1.0f, d[1] = -1.0f;  // lane 0: -1, then the product
  c[0] = d[0] = 1.0f + std::ldexp(1.0f, -12);
  EXPECT_EQ(linear_dot_pairs_f32(c.data(), d.data(), 32),
            std::ldexp(1.0f, -11) + std::ldexp(1.0f, -24));
}

TEST(LinearDotPairs4, GroupsGoToFourSetsInTurn) {
  // Lane 0 of groups 0, 2, 3 holds 1, 2^-24, 2^-24: in four sets (1 + 0) + (2^-24 + 2^-24)
  // keeps 2^-23, where one chain would round both away. Group 4 returns to set 0 (1 - 1 = 0).
  std::vector<float> a(160, 0.0f), b(160, 1.0f);
  a[1] = 1.0f;
  a[65] = a[96] = std::ldexp(1.0f, -24);
  EXPECT_EQ(linear_dot_pairs4_f32(a.data(), b.data(), 128), 1.0f + std::ldexp(1.0f, -23));
  EXPECT_EQ(linear_dot_pairs_f32(a.data(), b.data(), 128), 1.0f);
  a[129] = -1.0f;
  EXPECT_EQ(linear_dot_pairs4_f32(a.data(), b.data(), 160), std::ldexp(1.0f, -23));
  // The sets add as (s0 + s1) + (s2 + s3): with s0 = 1, s1 = -1, s2 = s3 = 2^-25 the 2^-24
  // survives, where ((s0 + s2) + s1) + s3 would give 2^-25.
  std::vector<float> c(128, 0.0f);
  c[1] = 1.0f, c[33] = -1.0f, c[65] = c[97] = std::ldexp(1.0f, -25);
  EXPECT_EQ(linear_dot_pairs4_f32(c.data(), b.data(), 128), std::ldexp(1.0f, -24));
}

#if defined(__GNUC__)
// The AVX512-BF16 dot-product instruction on bf16 operands in the normal range: what
// linear_dot_pairs_f32 emulates (the hardware as an independent oracle for the order).
__attribute__((target("avx512f,avx512bf16"))) float bf16_instruction_dot(const uint16_t* a,
                                                                         const uint16_t* b,
                                                                         int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += 32)
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(a + k),
                           (__m512bh)_mm512_loadu_si512(b + k));
  alignas(64) float s[16];
  _mm512_store_ps(s, acc);
  return pairs_tree_f32(s);
}

TEST(LinearDotPairs, IsTheBf16DotInstructionsOrder) {
  if (!__builtin_cpu_supports("avx512bf16")) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937 rng(960);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t n = 4096;
  std::vector<uint16_t> ab(n), bb(n);
  std::vector<float> af(n), bf(n);
  int64_t same = 0;
  for (int trial = 0; trial < 200; ++trial) {
    for (int64_t k = 0; k < n; ++k) {
      // Magnitudes over 2^±12: sums lose bits, so a different order shows.
      ab[k] = float_to_bf16_bits(d(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 25) - 12));
      bb[k] = float_to_bf16_bits(d(rng));
      af[k] = bf16_to_float(ab[k]);
      bf[k] = bf16_to_float(bb[k]);
    }
    same += float_bits(bf16_instruction_dot(ab.data(), bb.data(), n)) ==
            float_bits(linear_dot_pairs_f32(af.data(), bf.data(), n));
  }
  EXPECT_EQ(same, 200);
}
#endif

TEST(FakeQuant, FastFp8MatchesReference) {
  // Random blocks with magnitudes from subnormal floats to 1e30, and "tie"
  // blocks whose scale is exactly 2^e (amax = 448·2^e) holding values exactly
  // halfway between neighbouring e4m3 values (subnormal and normal, both
  // signs; ties must round to the even code); zeros of both signs; an
  // infinity and a NaN block (reference fallback).
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t block : {32, 64, 128}) {
    const int64_t n = 40 * block + 17;
    std::vector<float> x(n);
    for (int64_t b0 = 0; b0 < n; b0 += block) {
      const int64_t b1 = std::min(n, b0 + block);
      const bool ties = (b0 / block) % 2 == 1;
      const int e = static_cast<int>((b0 / block) * 7 % 260) - 140;
      for (int64_t i = b0; i < b1; ++i) {
        float v;
        if (ties) {
          const int scale_exp = std::clamp(e, -20, 100);
          const int c = static_cast<int>(rng() % 126);  // c and c + 1 are finite, positive
          const float mid = (fp8_e4m3_decode(static_cast<uint8_t>(c)) +
                             fp8_e4m3_decode(static_cast<uint8_t>(c + 1))) /
                            2;
          v = std::ldexp(i == b0 ? 448.0f : mid, scale_exp) * ((rng() & 1) ? 1 : -1);
        } else {
          v = std::ldexp(d(rng), std::clamp(e, -149, 100));
        }
        if (i != b0 && rng() % 50 == 0) v = (rng() & 1) ? 0.0f : -0.0f;
        x[i] = v;
      }
    }
    x[2 * block + 1] = std::numeric_limits<float>::infinity();
    x[4 * block + 2] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> want = x, got = x;
    fp8_fake_quant_reference(want.data(), n, block);
    fp8_fake_quant(got.data(), n, block);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(want[i])) {
        EXPECT_TRUE(std::isnan(got[i])) << i;
        continue;
      }
      ASSERT_EQ(float_bits(want[i]), float_bits(got[i]))
          << "block " << block << " element " << i << ": input " << x[i] << " reference " << want[i]
          << " fast " << got[i];
    }
  }
}

TEST(Isa, NamesParseAndUnknownNamesFail) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) EXPECT_EQ(parse_isa(isa_name(isa)), isa);
  EXPECT_THROW(parse_isa("sse2"), Error);
  EXPECT_TRUE(isa_supported(Isa::kScalar));
  EXPECT_TRUE(isa_supported(best_isa()));
}

TEST(Isa, EnvironmentSetting) {
  EXPECT_EQ(isa_for_setting(nullptr), best_isa());
  EXPECT_EQ(isa_for_setting(""), best_isa());
  EXPECT_EQ(isa_for_setting("scalar"), Isa::kScalar);
  if (isa_supported(Isa::kAvx2)) {
    EXPECT_EQ(isa_for_setting("avx2"), Isa::kAvx2);
  }
  if (!isa_supported(Isa::kAvx512)) {
    EXPECT_THROW(isa_for_setting("avx512"), Error);
  }
  EXPECT_THROW(isa_for_setting("fast"), Error);
}

}  // namespace
}  // namespace dsv4::kernels
