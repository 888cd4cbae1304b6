// AVX2 + FMA + F16C linear kernels (the build's x86-64-v3 baseline, so no
// target attributes are needed). Same function and same association order as
// the scalar path and the AVX-512 kernels (docs/kernels.md); 4-double
// registers hold the sixteen partial sums of linear_dot_f64 as four vectors.
#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/avx2_helpers.h"
#include "kernels/dispatch.h"
#include "kernels/linear_simd.h"
#include "kernels/numerics.h"

namespace dsv4::kernels::detail {

namespace {

constexpr int kNR = 2;  // weight rows per microkernel call (one activation row)
constexpr int64_t kGroup = 16;

inline void store_as_doubles(double* dst, __m256 f) {
  _mm256_store_pd(dst, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
  _mm256_store_pd(dst + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
}

// 8 FP8 e4m3 codes to exact values via fp16 (see linear_avx512.cpp).
inline __m256 fp8_values(const uint8_t* p) {
  const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i h = _mm_and_si128(_mm_srai_epi16(_mm_slli_epi16(w, 8), 1),
                                  _mm_set1_epi16(static_cast<short>(0xBFFF)));
  return _mm256_cvtph_ps(h);  // the code's value × 2^-8
}

// value × 2^-8 times scale × 2^8 is value × scale rounded as dequant_row
// rounds it, unless scale × 2^8 overflows (see linear_avx512.cpp).
inline __m256 fp8_times_scale(__m256 v_2m8, float scale) {
  if (std::isfinite(scale * 256.0f)) return _mm256_mul_ps(v_2m8, _mm256_set1_ps(scale * 256.0f));
  return _mm256_mul_ps(_mm256_mul_ps(v_2m8, _mm256_set1_ps(256.0f)), _mm256_set1_ps(scale));
}

inline __m256 bf16_values(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// Decodes elements [k0, k1) of weight row r to doubles at dst[0, k1-k0),
// zeros up to the next multiple of 16; k0 is a multiple of the scale block
// (128 for FP8, 32 for FP4) or 0. The floats equal dequant_row's exactly.
void decode_range(const WeightRef& w, int64_t r, int64_t k0, int64_t k1, double* dst) {
  const int64_t in = w.in;
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  alignas(64) uint8_t tail[64];
  auto group_src = [&](const uint8_t* p, int64_t n, int64_t bytes_per) -> const uint8_t* {
    if (n == kGroup) return p;
    std::memset(tail, 0, sizeof tail);
    std::memcpy(tail, p, static_cast<size_t>(n * bytes_per));
    return tail;
  };
  switch (w.format) {
    case WeightFormat::kFP8: {
      const uint8_t* codes = base + r * in;
      const int64_t scale_cols = (in + 127) / 128;
      for (int64_t b = k0 / 128; b * 128 < k1; ++b) {
        const float s = weight_block_scale(w, (r / 128) * scale_cols + b);
        const int64_t end = std::min(k1, (b + 1) * 128);
        for (int64_t k = b * 128; k < end; k += kGroup) {
          const uint8_t* p = group_src(codes + k, std::min(kGroup, end - k), 1);
          store_as_doubles(dst + (k - k0), fp8_times_scale(fp8_values(p), s));
          store_as_doubles(dst + (k - k0) + 8, fp8_times_scale(fp8_values(p + 8), s));
        }
      }
      break;
    }
    case WeightFormat::kFP4: {
      const uint8_t* packed = base + r * (in / 2);
      const int64_t scale_cols = in / 32;
      const __m256 magnitudes = _mm256_loadu_ps(fp4_e2m1_table());
      for (int64_t b = k0 / 32; b * 32 < k1; ++b) {
        const __m256 s = _mm256_set1_ps(weight_block_scale(w, r * scale_cols + b));
        for (int q = 0; q < 4; ++q)
          store_as_doubles(dst + (b * 32 - k0) + q * 8,
                           _mm256_mul_ps(fp4_values(packed + b * 16 + q * 4, magnitudes), s));
      }
      break;
    }
    case WeightFormat::kBF16: {
      const uint8_t* row = base + r * in * 2;
      for (int64_t k = k0; k < k1; k += kGroup) {
        const uint8_t* p = group_src(row + k * 2, std::min(kGroup, k1 - k), 2);
        store_as_doubles(dst + (k - k0), bf16_values(p));
        store_as_doubles(dst + (k - k0) + 8, bf16_values(p + 16));
      }
      break;
    }
    case WeightFormat::kF32: {
      const uint8_t* row = base + r * in * 4;
      for (int64_t k = k0; k < k1; k += kGroup) {
        const uint8_t* p = group_src(row + k * 4, std::min(kGroup, k1 - k), 4);
        store_as_doubles(dst + (k - k0), _mm256_loadu_ps(reinterpret_cast<const float*>(p)));
        store_as_doubles(dst + (k - k0) + 8,
                         _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 8));
      }
      break;
    }
  }
  // Padding must be +0 whatever the scale (0 × inf would be NaN).
  const int64_t padded = padded_in(k1 - k0);
  for (int64_t k = k1 - k0; k < padded; ++k) dst[k] = 0.0;
}

// linear_dot_f64's tree for NR ≤ 2 rows whose sixteen lane sums are in four
// 4-double registers: v_j = s_j + s_(j+8) is acc0+acc2 (lanes 0-3) and
// acc1+acc3 (lanes 4-7); u_j = v_j + v_(j+4); then (u0+u2) + (u1+u3).
template <int NR>
inline void reduce_rows(const __m256d (*acc)[4], double* out) {
  __m256d u[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
  for (int j = 0; j < NR; ++j)
    u[j] = _mm256_add_pd(_mm256_add_pd(acc[j][0], acc[j][2]), _mm256_add_pd(acc[j][1], acc[j][3]));
  const __m256d t = _mm256_add_pd(_mm256_permute2f128_pd(u[0], u[1], 0x20),
                                  _mm256_permute2f128_pd(u[0], u[1], 0x31));
  alignas(32) double h[4];
  _mm256_store_pd(h, _mm256_hadd_pd(t, t));  // [row0, row0, row1, row1]
  for (int j = 0; j < NR; ++j) out[j] = h[2 * j];
}

// Sums of x[k0, k0+len) · w_j[k0, k0+len) for NR weight rows, with
// linear_dot_f64's lanes (four 4-double accumulators per row) and tree. Both
// operands are zero-padded doubles, so whole 16-groups are read.
template <int NR>
inline void tile_sums(const double* x, const double* const* ws, int64_t k0, int64_t len,
                      double* out) {
  __m256d acc[NR][4];
  for (int j = 0; j < NR; ++j)
    for (int q = 0; q < 4; ++q) acc[j][q] = _mm256_setzero_pd();
  for (int64_t k = k0; k < k0 + len; k += kGroup) {
    const __m256d xv[4] = {_mm256_load_pd(x + k), _mm256_load_pd(x + k + 4),
                           _mm256_load_pd(x + k + 8), _mm256_load_pd(x + k + 12)};
    for (int j = 0; j < NR; ++j)
      for (int q = 0; q < 4; ++q)
        acc[j][q] = _mm256_fmadd_pd(xv[q], _mm256_load_pd(ws[j] + k + 4 * q), acc[j][q]);
  }
  reduce_rows<NR>(acc, out);
}

template <int NR>
void block(const LinearTask& t, const double* wbuf, int64_t ldw, int64_t i, int64_t rb,
           int64_t j0) {
  const double* x = t.xd + i * ldw;
  const double* ws[NR];
  for (int j = 0; j < NR; ++j) ws[j] = wbuf + (j0 + j) * ldw;
  const int64_t in = t.w->in;
  float result[NR];
  double sums[NR];
  if (t.tile > 0) {
    for (int j = 0; j < NR; ++j) result[j] = 0;
    for (int64_t k0 = 0; k0 < in; k0 += t.tile) {
      tile_sums<NR>(x, ws, k0, std::min(t.tile, in - k0), sums);
      for (int j = 0; j < NR; ++j) result[j] += static_cast<float>(sums[j]);
    }
  } else {
    tile_sums<NR>(x, ws, 0, in, sums);
    for (int j = 0; j < NR; ++j) result[j] = static_cast<float>(sums[j]);
  }
  for (int j = 0; j < NR; ++j)
    t.y[i * t.ldy + (rb + j0 + j - t.row_begin)] = t.round_bf16 ? bf16_round(result[j]) : result[j];
}

// ---- Matrix-vector (m = 1): weights decoded in registers, no buffer. ----

// Mask of the first n (clamped to 0..8) float lanes.
// As on AVX-512 (linear_avx512.cpp): a software prefetch 2 KB ahead in each streamed row.
constexpr int64_t kPrefetchBytes = 2048;
inline void prefetch_weights(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
}

inline __m256 lane_mask(int64_t n) {
  const __m256i iota = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  const int c = static_cast<int>(std::clamp<int64_t>(n, 0, 8));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(c), iota));
}

// 16 weights of one row from element k (n valid, the rest +0) as the floats
// dequant_row produces. FP8 `scale` is the block scale × 256 unless kUnfolded.
template <WeightFormat F, bool kUnfolded>
inline void weights16(const uint8_t* row, int64_t k, int64_t n, __m256 scale, __m256 magnitudes,
                      __m256* f) {
  constexpr int64_t bytes_per = F == WeightFormat::kFP8    ? 1
                                : F == WeightFormat::kBF16 ? 2
                                : F == WeightFormat::kF32  ? 4
                                                           : 0;
  alignas(64) uint8_t tail[64];
  const uint8_t* p = row + (F == WeightFormat::kFP4 ? k / 2 : k * bytes_per);
  prefetch_weights(p);
  if (F != WeightFormat::kFP4 && n < kGroup) {  // FP4 rows are whole 32-groups
    std::memset(tail, 0, sizeof tail);
    std::memcpy(tail, p, static_cast<size_t>(n * bytes_per));
    p = tail;
  }
  if constexpr (F == WeightFormat::kFP8) {
    f[0] = fp8_values(p);
    f[1] = fp8_values(p + 8);
    if constexpr (kUnfolded) {
      f[0] = _mm256_mul_ps(f[0], _mm256_set1_ps(256.0f));
      f[1] = _mm256_mul_ps(f[1], _mm256_set1_ps(256.0f));
    }
    f[0] = _mm256_mul_ps(f[0], scale);
    f[1] = _mm256_mul_ps(f[1], scale);
  } else if constexpr (F == WeightFormat::kFP4) {
    f[0] = _mm256_mul_ps(fp4_values(p, magnitudes), scale);
    f[1] = _mm256_mul_ps(fp4_values(p + 4, magnitudes), scale);
  } else if constexpr (F == WeightFormat::kBF16) {
    f[0] = bf16_values(p);
    f[1] = bf16_values(p + 16);
  } else {
    f[0] = _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    f[1] = _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 8);
  }
  if (n < kGroup) {  // +0 past the row end whatever the scale (0 × inf is NaN)
    f[0] = _mm256_and_ps(f[0], lane_mask(n));
    f[1] = _mm256_and_ps(f[1], lane_mask(n - 8));
  }
}

// Adds x · w_j over [k0, k0+len) to the rows' linear_dot_f64 lane sums `acc` (k0 a multiple of
// 16), decoding as it goes.
template <WeightFormat F, int NR, bool kUnfolded>
inline void gemv_accumulate(const uint8_t* const* rows, const double* x, int64_t k0, int64_t len,
                            const __m256* scales, __m256 magnitudes, __m256d (*acc)[4]) {
  const int64_t end = k0 + len;
  for (int64_t k = k0; k < end; k += kGroup) {
    for (int j = 0; j < NR; ++j) {
      __m256 f[2];
      weights16<F, kUnfolded>(rows[j], k, end - k, scales[j], magnitudes, f);
      const __m256d d[4] = {_mm256_cvtps_pd(_mm256_castps256_ps128(f[0])),
                            _mm256_cvtps_pd(_mm256_extractf128_ps(f[0], 1)),
                            _mm256_cvtps_pd(_mm256_castps256_ps128(f[1])),
                            _mm256_cvtps_pd(_mm256_extractf128_ps(f[1], 1))};
      for (int q = 0; q < 4; ++q)
        acc[j][q] = _mm256_fmadd_pd(d[q], _mm256_load_pd(x + k + 4 * q), acc[j][q]);
    }
  }
}

template <WeightFormat F, int NR, bool kUnfolded>
inline void gemv_tile(const uint8_t* const* rows, const double* x, int64_t k0, int64_t len,
                      const __m256* scales, __m256 magnitudes, double* out) {
  __m256d acc[NR][4];
  for (int j = 0; j < NR; ++j)
    for (int q = 0; q < 4; ++q) acc[j][q] = _mm256_setzero_pd();
  gemv_accumulate<F, NR, kUnfolded>(rows, x, k0, len, scales, magnitudes, acc);
  reduce_rows<NR>(acc, out);
}

template <WeightFormat F, int NR>
void gemv_rows(const LinearTask& t, int64_t r) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in;
  const int64_t row_bytes = F == WeightFormat::kFP8    ? in
                            : F == WeightFormat::kFP4  ? in / 2
                            : F == WeightFormat::kBF16 ? in * 2
                                                       : in * 4;
  const uint8_t* rows[NR];
  for (int j = 0; j < NR; ++j) rows[j] = static_cast<const uint8_t*>(w.data) + (r + j) * row_bytes;
  const __m256 magnitudes = _mm256_loadu_ps(fp4_e2m1_table());
  __m256 scales[NR];
  float result[NR];
  double sums[NR];
  if constexpr (F == WeightFormat::kFP8 || F == WeightFormat::kFP4) {
    // quant_linear: the K tile is the scale block (128 for FP8, 32 for FP4).
    const int64_t scale_cols = F == WeightFormat::kFP8 ? (in + 127) / 128 : in / 32;
    for (int j = 0; j < NR; ++j) result[j] = 0;
    for (int64_t b = 0, k0 = 0; k0 < in; ++b, k0 += t.tile) {
      float raw[NR];
      bool folds = true;
      for (int j = 0; j < NR; ++j) {
        const int64_t block_row = F == WeightFormat::kFP8 ? (r + j) / 128 : r + j;
        raw[j] = weight_block_scale(w, block_row * scale_cols + b);
        folds = folds && std::isfinite(raw[j] * 256.0f);
      }
      const int64_t len = std::min(t.tile, in - k0);
      if (F != WeightFormat::kFP8 || folds) {
        for (int j = 0; j < NR; ++j)
          scales[j] = _mm256_set1_ps(F == WeightFormat::kFP8 ? raw[j] * 256.0f : raw[j]);
        gemv_tile<F, NR, false>(rows, t.xd, k0, len, scales, magnitudes, sums);
      } else {
        for (int j = 0; j < NR; ++j) scales[j] = _mm256_set1_ps(raw[j]);
        gemv_tile<F, NR, true>(rows, t.xd, k0, len, scales, magnitudes, sums);
      }
      for (int j = 0; j < NR; ++j) result[j] += static_cast<float>(sums[j]);
    }
  } else {
    for (int j = 0; j < NR; ++j) scales[j] = _mm256_set1_ps(1.0f);
    gemv_tile<F, NR, false>(rows, t.xd, 0, in, scales, magnitudes, sums);
    for (int j = 0; j < NR; ++j) result[j] = static_cast<float>(sums[j]);
  }
  for (int j = 0; j < NR; ++j)
    t.y[r + j - t.row_begin] = t.round_bf16 ? bf16_round(result[j]) : result[j];
}

// ---- FP4 with E8M0 scales, m = 1: codes straight to doubles. ----
// Every e2m1 value as a double has all its set bits in the top 16 (sign,
// exponent, one mantissa bit): two vpshufb tables give those two bytes per
// code, an unpack pairs them into 16-bit words, and zero-extension plus a
// shift by 48 makes the doubles — equal to the code values, so the scale
// multiplies the exact tile sum (while s ≤ 2^125, as in linear_avx512.cpp).
constexpr uint8_t kMaxFoldedFp4Scale = 127 + 125;
constexpr uint8_t kFp4Byte6[16] = {0x00, 0xE0, 0xF0, 0xF8, 0x00, 0x08, 0x10, 0x18,
                                   0x00, 0xE0, 0xF0, 0xF8, 0x00, 0x08, 0x10, 0x18};
constexpr uint8_t kFp4Byte7[16] = {0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40,
                                   0x80, 0xBF, 0xBF, 0xBF, 0xC0, 0xC0, 0xC0, 0xC0};

// 8 words (top 16 bits of 8 doubles) → 2 × 4 doubles.
inline void words_to_doubles(__m128i words, __m256d* d) {
  d[0] = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_cvtepu16_epi64(words), 48));
  d[1] =
      _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_cvtepu16_epi64(_mm_srli_si128(words, 8)), 48));
}

// Sums of x · q over one 32-weight tile for NR rows (any order: exact).
template <int NR>
inline void fp4_e8m0_tile(const uint8_t* const* tiles, const double* x, __m128i byte6,
                          __m128i byte7, double* out) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  __m256d acc[NR][4];
  for (int j = 0; j < NR; ++j) {
    prefetch_weights(tiles[j]);
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tiles[j]));
    const __m128i lo = _mm_and_si128(b, low4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
    const __m128i n[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};  // in order
    for (int h = 0; h < 2; ++h) {
      const __m128i p6 = _mm_shuffle_epi8(byte6, n[h]);
      const __m128i p7 = _mm_shuffle_epi8(byte7, n[h]);
      __m256d d[4];
      words_to_doubles(_mm_unpacklo_epi8(p6, p7), d);
      words_to_doubles(_mm_unpackhi_epi8(p6, p7), d + 2);
      for (int q = 0; q < 4; ++q) {
        const __m256d xv = _mm256_load_pd(x + 16 * h + 4 * q);
        acc[j][q] = h == 0 ? _mm256_mul_pd(xv, d[q]) : _mm256_fmadd_pd(xv, d[q], acc[j][q]);
      }
    }
  }
  reduce_rows<NR>(acc, out);
}

template <int NR>
void gemv_rows_fp4_e8m0(const LinearTask& t, int64_t r) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in, scale_cols = in / 32;
  const uint8_t* rows[NR];
  const uint8_t* scales[NR];
  for (int j = 0; j < NR; ++j) {
    rows[j] = static_cast<const uint8_t*>(w.data) + (r + j) * (in / 2);
    scales[j] = static_cast<const uint8_t*>(w.scale) + (r + j) * scale_cols;
  }
  const __m128i byte6 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Byte6));
  const __m128i byte7 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Byte7));
  const __m256 magnitudes = _mm256_loadu_ps(fp4_e2m1_table());
  float result[NR] = {};
  for (int64_t b = 0; b < scale_cols; ++b) {
    bool exact = true;
    const uint8_t* tiles[NR];
    for (int j = 0; j < NR; ++j) {
      exact = exact && scales[j][b] <= kMaxFoldedFp4Scale;
      tiles[j] = rows[j] + b * 16;
    }
    double sums[NR];
    if (exact) {
      fp4_e8m0_tile<NR>(tiles, t.xd + b * 32, byte6, byte7, sums);
      for (int j = 0; j < NR; ++j) sums[j] *= std::ldexp(1.0, static_cast<int>(scales[j][b]) - 127);
    } else {  // huge or NaN scale: decode to floats exactly as dequant_row does
      __m256 s[NR];
      for (int j = 0; j < NR; ++j)
        s[j] = _mm256_set1_ps(weight_block_scale(w, (r + j) * scale_cols + b));
      gemv_tile<WeightFormat::kFP4, NR, false>(rows, t.xd, b * 32, 32, s, magnitudes, sums);
    }
    for (int j = 0; j < NR; ++j) result[j] += static_cast<float>(sums[j]);
  }
  for (int j = 0; j < NR; ++j)
    t.y[r + j - t.row_begin] = t.round_bf16 ? bf16_round(result[j]) : result[j];
}

void gemv_fp4_e8m0(const LinearTask& t, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) gemv_rows_fp4_e8m0<2>(t, r);
  if (r < r1) gemv_rows_fp4_e8m0<1>(t, r);
}

template <WeightFormat F>
void gemv(const LinearTask& t, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) gemv_rows<F, 2>(t, r);
  if (r < r1) gemv_rows<F, 1>(t, r);
}

// ---- Quantized matrix-matrix with E8M0 scales: K in chunks, any order. ----
//
// With E8M0 scales every tile sum is exact in any order (docs/kernels.md; an
// infinite or NaN weight gives the same inf / NaN in any order too), so one
// 4-double accumulator per (activation row, weight row) pair suffices: a 2 × 4
// block keeps 8 accumulators and reuses each loaded vector 2 or 4 times. As on
// AVX-512, K is cut into chunks of whole tiles so a decoded block of 64 rows ×
// 512 columns (256 KB) stays in L2 and each activation chunk in L1; the only
// state between tiles is each output's fp32 accumulator, added in ascending K.
constexpr int kQuantMI = 2, kQuantNR = 4;
constexpr int64_t kQuantRows = 64, kQuantChunk = 512;

template <int MI, int NR>
void quant_chunk(const LinearTask& t, const double* wbuf, int64_t i0, int64_t j0, int64_t kc,
                 int64_t klen, float* acc, int64_t ld_acc) {
  const int64_t ldx = padded_in(t.w->in);
  const double* xs[MI];
  const double* ws[NR];
  for (int i = 0; i < MI; ++i) xs[i] = t.xd + (i0 + i) * ldx + kc;
  for (int j = 0; j < NR; ++j) ws[j] = wbuf + (j0 + j) * kQuantChunk;
  float result[MI][NR];
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) result[i][j] = acc[(i0 + i) * ld_acc + j0 + j];
  for (int64_t k0 = 0; k0 < klen; k0 += t.tile) {
    const int64_t k1 = k0 + padded_in(std::min(t.tile, klen - k0));
    __m256d a[MI][NR];
    for (int i = 0; i < MI; ++i)
      for (int j = 0; j < NR; ++j) a[i][j] = _mm256_setzero_pd();
    for (int64_t k = k0; k < k1; k += 4) {
      __m256d x[MI];
      for (int i = 0; i < MI; ++i) x[i] = _mm256_load_pd(xs[i] + k);
      for (int j = 0; j < NR; ++j) {
        const __m256d w = _mm256_load_pd(ws[j] + k);
        for (int i = 0; i < MI; ++i) a[i][j] = _mm256_fmadd_pd(x[i], w, a[i][j]);
      }
    }
    for (int i = 0; i < MI; ++i) {
      // Horizontal sums of the NR accumulators (any order: exact).
      __m256d v[4];
      for (int j = 0; j < 4; ++j) v[j] = j < NR ? a[i][j] : _mm256_setzero_pd();
      const __m256d h01 = _mm256_hadd_pd(v[0], v[1]);
      const __m256d h23 = _mm256_hadd_pd(v[2], v[3]);
      const __m256d sums = _mm256_add_pd(_mm256_permute2f128_pd(h01, h23, 0x20),
                                         _mm256_permute2f128_pd(h01, h23, 0x31));
      alignas(16) float f[4];
      _mm_store_ps(f, _mm256_cvtpd_ps(sums));
      for (int j = 0; j < NR; ++j) result[i][j] += f[j];
    }
  }
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) acc[(i0 + i) * ld_acc + j0 + j] = result[i][j];
}

using ChunkFn = void (*)(const LinearTask&, const double*, int64_t, int64_t, int64_t, int64_t,
                         float*, int64_t);
constexpr ChunkFn kChunks[kQuantMI][kQuantNR] = {
    {quant_chunk<1, 1>, quant_chunk<1, 2>, quant_chunk<1, 3>, quant_chunk<1, 4>},
    {quant_chunk<2, 1>, quant_chunk<2, 2>, quant_chunk<2, 3>, quant_chunk<2, 4>},
};

void quant_gemm_e8m0(const LinearTask& t, int64_t r0, int64_t r1) {
  const int64_t in = t.w->in;
  double* wbuf = thread_scratch(kQuantRows * kQuantChunk, 0);
  float* acc = reinterpret_cast<float*>(thread_scratch((t.m * kQuantRows + 1) / 2, 1));
  for (int64_t rb = r0; rb < r1; rb += kQuantRows) {
    const int64_t nrb = std::min(kQuantRows, r1 - rb);
    for (int64_t i = 0; i < t.m * nrb; ++i) acc[i] = 0.0f;
    for (int64_t kc = 0; kc < in; kc += kQuantChunk) {
      const int64_t klen = std::min(kQuantChunk, in - kc);
      for (int64_t j = 0; j < nrb; ++j)
        decode_range(*t.w, rb + j, kc, kc + klen, wbuf + j * kQuantChunk);
      for (int64_t i0 = 0; i0 < t.m; i0 += kQuantMI) {
        const int64_t mi = std::min<int64_t>(kQuantMI, t.m - i0);
        for (int64_t j0 = 0; j0 < nrb; j0 += kQuantNR) {
          const int64_t nr = std::min<int64_t>(kQuantNR, nrb - j0);
          kChunks[mi - 1][nr - 1](t, wbuf, i0, j0, kc, klen, acc, nrb);
        }
      }
    }
    for (int64_t i = 0; i < t.m; ++i)
      for (int64_t j = 0; j < nrb; ++j) {
        const float v = acc[i * nrb + j];
        t.y[i * t.ldy + (rb + j - t.row_begin)] = t.round_bf16 ? bf16_round(v) : v;
      }
  }
}

}  // namespace

void gemv_fp4_e8m0_avx2(const LinearTask& t, int64_t r0, int64_t r1) {
  gemv_fp4_e8m0(t, r0, r1);
}

void quant_gemm_e8m0_avx2(const LinearTask& t, int64_t r0, int64_t r1) {
  quant_gemm_e8m0(t, r0, r1);
}

namespace {

// Plain matrix-matrix (m > 1): weight rows in the lanes. linear_dot_f64's order is per pair
// sixteen lane chains (lane j: elements k ≡ j mod 16 in ascending k, exact products added in
// double) and a fixed tree; here a block of 12 weight rows is decoded once, transposed into
// vectors of 4 rows ([vector][lane j][step][4 rows]), and a register block of kPlainRows
// activation rows × kPlainVecs vectors runs lane j's chains side by side: per step 3 loads and
// 3 broadcasts feed 9 FMAs, where pairing rows needed one or two loads per FMA.
constexpr int kPlainRows = 3, kPlainVecs = 3;

template <int MI, int NV>
void plain_lanes_block(const LinearTask& t, const double* wt, int64_t steps, int64_t i, int64_t r,
                       int nr) {
  const int64_t ldw = 16 * steps;
  const double* x = t.xd + i * ldw;
  alignas(32) double lane[16][MI][NV][4];
  for (int j = 0; j < 16; ++j) {
    __m256d acc[MI][NV];
    for (int ii = 0; ii < MI; ++ii)
      for (int v = 0; v < NV; ++v) acc[ii][v] = _mm256_setzero_pd();
    const double* wj = wt + j * steps * 4;
    for (int64_t st = 0; st < steps; ++st) {
      __m256d wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = _mm256_load_pd(wj + v * ldw * 4 + st * 4);
      for (int ii = 0; ii < MI; ++ii) {
        const __m256d xv = _mm256_broadcast_sd(x + ii * ldw + 16 * st + j);
        for (int v = 0; v < NV; ++v) acc[ii][v] = _mm256_fmadd_pd(xv, wv[v], acc[ii][v]);
      }
    }
    for (int ii = 0; ii < MI; ++ii)
      for (int v = 0; v < NV; ++v) _mm256_store_pd(lane[j][ii][v], acc[ii][v]);
  }
  for (int ii = 0; ii < MI; ++ii)
    for (int v = 0; v < NV; ++v) {
      __m256d s[8];  // linear_dot_f64's tree, four weight rows at a time
      for (int j = 0; j < 8; ++j)
        s[j] = _mm256_add_pd(_mm256_load_pd(lane[j][ii][v]), _mm256_load_pd(lane[j + 8][ii][v]));
      const __m256d sum =
          _mm256_add_pd(_mm256_add_pd(_mm256_add_pd(s[0], s[4]), _mm256_add_pd(s[2], s[6])),
                        _mm256_add_pd(_mm256_add_pd(s[1], s[5]), _mm256_add_pd(s[3], s[7])));
      alignas(32) double out[4];
      _mm256_store_pd(out, sum);
      for (int l = 0; l < 4 && 4 * v + l < nr; ++l) {
        const float f = static_cast<float>(out[l]);
        t.y[(i + ii) * t.ldy + (r + 4 * v + l - t.row_begin)] = t.round_bf16 ? bf16_round(f) : f;
      }
    }
}

void plain_gemm_lanes(const LinearTask& t, int64_t r0, int64_t r1) {
  const int64_t in = t.w->in, ldw = padded_in(in), steps = ldw / 16;
  constexpr int64_t kRows = 4 * kPlainVecs;
  double* wt = thread_scratch(kRows * ldw, 0);
  double* row = thread_scratch(ldw, 1);
  for (int64_t rb = r0; rb < r1; rb += kRows) {
    const int nb = static_cast<int>(std::min(kRows, r1 - rb));
    for (int jr = 0; jr < kRows; ++jr) {
      if (jr < nb)
        decode_range(*t.w, rb + jr, 0, in, row);
      else
        std::fill(row, row + ldw, 0.0);
      double* dst = wt + (jr / 4) * ldw * 4 + jr % 4;
      for (int64_t k = 0; k < ldw; ++k) dst[((k % 16) * steps + k / 16) * 4] = row[k];
    }
    const int nv = (nb + 3) / 4;
    for (int64_t i = 0; i < t.m; i += kPlainRows) {
      const int mi = static_cast<int>(std::min<int64_t>(kPlainRows, t.m - i));
      with_block_size<kPlainVecs>(nv, [&](auto vectors) {
        with_block_size<kPlainRows>(mi, [&](auto rows) {
          plain_lanes_block<decltype(rows)::value, decltype(vectors)::value>(t, wt, steps, i, rb,
                                                                             nb);
        });
      });
    }
  }
}

}  // namespace

void linear_rows_avx2(const LinearTask& t, int64_t r0, int64_t r1) {
  const WeightFormat format = t.w->format;
  const bool quantized = format == WeightFormat::kFP8 || format == WeightFormat::kFP4;
  if (t.m == 1 && quantized == (t.tile > 0)) {
    switch (format) {
      case WeightFormat::kFP8:  // quant_linear's FP8 weights run in fp8_rows_avx2 instead
        break;
      case WeightFormat::kFP4:
        if (t.fp4_words != nullptr) return gemv_fp4_words(t, r0, r1);
        if (!t.w->scale_is_f32) return gemv_fp4_e8m0(t, r0, r1);
        return gemv<WeightFormat::kFP4>(t, r0, r1);
      case WeightFormat::kBF16:
        return gemv<WeightFormat::kBF16>(t, r0, r1);
      case WeightFormat::kF32:
        return gemv<WeightFormat::kF32>(t, r0, r1);
    }
  }
  if (t.fp4_f32 != nullptr) return fp4_gemm_f32(t, r0, r1);
  if (t.tile > 0 && !t.w->scale_is_f32) return quant_gemm_e8m0(t, r0, r1);
  if (t.tile == 0) return plain_gemm_lanes(t, r0, r1);
  // F32-scale quantized ones keep linear_dot_f64's lanes per tile.
  const int64_t in = t.w->in;
  const int64_t ldw = padded_in(in);
  const int64_t block_rows = decode_block_rows(in, kNR);
  double* wbuf = thread_scratch(block_rows * ldw, 0);
  for (int64_t rb = r0; rb < r1; rb += block_rows) {
    const int64_t nrb = std::min(block_rows, r1 - rb);
    for (int64_t j = 0; j < nrb; ++j) decode_range(*t.w, rb + j, 0, in, wbuf + j * ldw);
    for (int64_t i = 0; i < t.m; ++i)
      for (int64_t j0 = 0; j0 < nrb; j0 += kNR) {
        if (nrb - j0 >= 2)
          block<2>(t, wbuf, ldw, i, rb, j0);
        else
          block<1>(t, wbuf, ldw, i, rb, j0);
      }
  }
}

namespace {

// ---- fp32_bf16_linear (see linear_avx512.cpp): sixteen lanes as two 8-float registers, the
// lanes of each 64-byte weight group split into odd elements (high halves) and even ones;
// groups go to four accumulator sets in turn (linear_dot_pairs4_f32's order).

inline float pairs_tree(__m256 lo, __m256 hi) {
  alignas(32) float s[16];
  _mm256_store_ps(s, lo);
  _mm256_store_ps(s + 8, hi);
  return pairs_tree_f32(s);
}

// 32 bytes of a weight row at p. kAlign > 0: p sits kAlign bytes past a 16-byte boundary, and
// two 16-byte-aligned loads joined by vpalignr replace the load that would cross a cache line
// every fourth 16-byte half (Zen 1 splits 32-byte loads in two): the head's rows, at a
// checkpoint offset of 44, read 10.0 GB/s with straddling loads and 11.1–11.4 joined (one
// thread, one row stream).
template <int kAlign>
inline __m256i row_bytes32(const uint8_t* p) {
  if constexpr (kAlign == 0) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  } else {
    const uint8_t* line = p - kAlign;
    return _mm256_alignr_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + 16)),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line)), kAlign);
  }
}

// kBf16: the activations come as t.xb (bf16 pairs in the weights' layout), split like the
// weights — odd elements are the high halves, even ones move up by a byte shuffle (off the
// single vector-shift port of Zen 1).
template <bool kBf16, int kAlign>
inline void pair_row_bf16(const PairTask& t, int64_t r) {
  const int64_t in = t.w->in, groups = (in + 31) / 32;
  const uint8_t* row = static_cast<const uint8_t*>(t.w->data) + r * in * 2;
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i low_up = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 4, 5, -1, -1, 8, 9, -1, -1, 12, 13,
                                          -1, -1, 0, 1, -1, -1, 4, 5, -1, -1, 8, 9, -1, -1, 12, 13);
  alignas(32) uint8_t tail[64];
  for (int64_t i = 0; i < t.m; ++i) {
    const float* xo = t.xo + i * t.ldp;
    const float* xe = t.xe + i * t.ldp;
    const uint8_t* xb = reinterpret_cast<const uint8_t*>(t.xb + i * 2 * t.ldp);
    __m256 acc[4][2];
    for (int c = 0; c < 4; ++c) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    const auto group = [&](__m256* a, int64_t g, auto whole) {
      const uint8_t* src = row + 64 * g;
      _mm_prefetch(reinterpret_cast<const char*>(src + 2048), _MM_HINT_T0);
      for (int h = 0; h < 2; ++h) {
        __m256i v;
        if constexpr (decltype(whole)::value) {
          v = row_bytes32<kAlign>(src + 32 * h);
        } else {  // the last group: zero-padded copy (+0 weights, as the scalar pads)
          const int64_t n = std::min<int64_t>(32, in - 32 * g);
          std::memset(tail, 0, 64);
          std::memcpy(tail, src, static_cast<size_t>(n) * 2);
          v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail + 32 * h));
        }
        __m256 o, e;
        if constexpr (kBf16) {
          const __m256i x =
              _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + 64 * g + 32 * h));
          o = _mm256_castsi256_ps(_mm256_and_si256(x, high));
          e = _mm256_castsi256_ps(_mm256_shuffle_epi8(x, low_up));
        } else {
          o = _mm256_load_ps(xo + 16 * g + 8 * h);
          e = _mm256_load_ps(xe + 16 * g + 8 * h);
        }
        const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, high));
        const __m256 we =
            _mm256_castsi256_ps(kBf16 ? _mm256_shuffle_epi8(v, low_up) : _mm256_slli_epi32(v, 16));
        a[h] = _mm256_fmadd_ps(o, wo, a[h]);
        a[h] = _mm256_fmadd_ps(e, we, a[h]);
      }
    };
    const std::true_type whole;
    const int64_t full = in / 32;  // groups wholly inside the row
    int64_t g = 0;
    for (; g + 4 <= full; g += 4)
      for (int c = 0; c < 4; ++c) group(acc[c], g + c, whole);
    for (; g < groups; ++g) {  // the last one to three groups, still in turn
      if (g < full)
        group(acc[g % 4], g, whole);
      else
        group(acc[g % 4], g, std::false_type{});
    }
    __m256 lane[2];
    for (int h = 0; h < 2; ++h)
      lane[h] =
          _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[1][h]), _mm256_add_ps(acc[2][h], acc[3][h]));
    t.y[i * t.ldy + (r - t.row_begin)] = pairs_tree(lane[0], lane[1]);
  }
}

template <bool kBf16>
void pair_rows(const PairTask& t, int64_t r0, int64_t r1) {
  // One row at a time: a thread then reads one stream in address order, which this machine
  // serves ~1.3x faster than four interleaved row streams (docs/kernels.md, "Row order").
  // Rows are in·2 bytes apart: their offset within 16 bytes is the tensor's for even `in`.
  for (int64_t r = r0; r < r1; ++r) {
    const auto address = reinterpret_cast<uintptr_t>(t.w->data) +
                         static_cast<uintptr_t>(r) * static_cast<uintptr_t>(t.w->in) * 2;
    switch (address % 16) {
      case 4:
        pair_row_bf16<kBf16, 4>(t, r);
        break;
      case 8:
        pair_row_bf16<kBf16, 8>(t, r);
        break;
      case 12:
        pair_row_bf16<kBf16, 12>(t, r);
        break;
      default:
        pair_row_bf16<kBf16, 0>(t, r);
    }
  }
}

}  // namespace

void pair_rows_avx2(const PairTask& t, int64_t r0, int64_t r1) {
  if (t.xb != nullptr)
    pair_rows<true>(t, r0, r1);
  else
    pair_rows<false>(t, r0, r1);
}

}  // namespace dsv4::kernels::detail

// ---- FP8 quant_linear in the FP32-accumulation contract, with FMAs (also the AVX-512 path on
// CPUs without AVX512-BF16 or VBMI). Per group of 32 weights, lane j adds the odd element's
// product, then the even one's: linear_dot_pairs_f32's order. Weights decode to value × 2^-8
// (fp8_values' construction) and activations come times 2^8, so every product is the exact
// product of the two FP8 values and each FMA rounds exactly what the scalar one rounds.

namespace dsv4::kernels::detail {

namespace {

// Words holding an FP8 code in their low byte → fp16 bits of value × 2^-8.
inline __m256i fp8_words_to_half(__m256i w) {
  return _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w, 8), 1),
                          _mm256_set1_epi16(static_cast<short>(0xBFFF)));
}

// The 32 weights of a group (n valid, +0 past them): odd elements in wo (lanes 0..7, 8..15),
// even ones in we.
inline void fp8_group_odd_even(const uint8_t* p, int64_t n, __m256 wo[2], __m256 we[2]) {
  __m256i v;
  if (n >= 32) {
    v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  } else {
    alignas(32) uint8_t tail[32] = {};
    std::memcpy(tail, p, static_cast<size_t>(n));
    v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
  }
  const __m256i even = fp8_words_to_half(_mm256_and_si256(v, _mm256_set1_epi16(0x00FF)));
  const __m256i odd = fp8_words_to_half(_mm256_srli_epi16(v, 8));
  we[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(even));
  we[1] = _mm256_cvtph_ps(_mm256_extracti128_si256(even, 1));
  wo[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(odd));
  wo[1] = _mm256_cvtph_ps(_mm256_extracti128_si256(odd, 1));
}

// pairs_tree_f32 over lanes 0..7 (lo) and 8..15 (hi).
inline float pairs_tree8(__m256 lo, __m256 hi) {
  const __m256 v = _mm256_add_ps(lo, hi);  // v_j = s_j + s_(j+8)
  const __m128 w = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 u = _mm_add_ps(w, _mm_movehl_ps(w, w));  // (v0+v4)+(v2+v6), (v1+v5)+(v3+v7)
  return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}

// One tile's pair sums for activation row (xo, xe) against weights given per group by `get`.
template <typename Get>
inline float fp8_tile_fma(const float* xo, const float* xe, int64_t g0, int64_t g1, Get get) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (int64_t g = g0; g < g1; ++g) {
    __m256 wo[2], we[2];
    get(g, wo, we);
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(xo + 16 * g), wo[0], lo);
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(xe + 16 * g), we[0], lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(xo + 16 * g + 8), wo[1], hi);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(xe + 16 * g + 8), we[1], hi);
  }
  return pairs_tree8(lo, hi);
}

// m = 1, four whole tiles of a row at once. 32 weights per load become floats of value × 2^-120
// without a conversion instruction (vcvtph2ps costs two cycles per 8 on Zen 1, on the FMA
// ports): the float's top byte (sign, exponent bits 3..1) is a table lookup of the code's high
// nibble, the next byte (exponent bit 0, mantissa) one of its low nibble (two vpshufb for 32
// codes, subnormal codes landing on fp32 subnormals with the same factor); unpacking the two
// byte vectors gives each weight's bf16 bits in element order, whose odd elements are the
// dwords' high halves and even ones move up by a byte shuffle. Lanes then hold pairs 0-3 and
// 8-11 (first vector), 4-7 and 12-15 (second): the activations come in that order, × 2^112,
// so every product is the exact FP8 product × 2^-8 and each FMA rounds what the scalar
// one rounds, scaled by 2^-8 (no result comes near the subnormal range: products ≥ 2^-26).
// Then linear_dot_pairs_f32's two FMAs per lane. The four tiles' chains (8 accumulators) run
// side by side — one tile at a time left each group behind two dependent FMAs — and their
// trees reduce together: the tile sums × 2^-8 of tiles b0 .. b0 + 3.
inline __m128 fp8_quad_sums(const uint8_t* row, const float* xo, const float* xe, int64_t b0,
                            int64_t prefetch = kPrefetchBytes) {
  const __m256i low4 = _mm256_set1_epi8(0x0F),
                high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  // Byte 2 of the float: low nibble << 4; byte 3: sign and exponent bits 3..1 (high nibble).
  const __m256i byte2 =
      _mm256_setr_epi8(0, 16, 32, 48, 64, 80, 96, 112, -128, -112, -96, -80, -64, -48, -32, -16, 0,
                       16, 32, 48, 64, 80, 96, 112, -128, -112, -96, -80, -64, -48, -32, -16);
  const __m256i byte3 =
      _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -128, -127, -126, -125, -124, -123, -122, -121, 0, 1,
                       2, 3, 4, 5, 6, 7, -128, -127, -126, -125, -124, -123, -122, -121);
  const __m256i low_up = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 4, 5, -1, -1, 8, 9, -1, -1, 12, 13,
                                          -1, -1, 0, 1, -1, -1, 4, 5, -1, -1, 8, 9, -1, -1, 12, 13);
  __m256 lo[4], hi[4];
  for (int q = 0; q < 4; ++q) lo[q] = hi[q] = _mm256_setzero_ps();
  for (int g = 0; g < 4; ++g)
    for (int q = 0; q < 4; ++q) {
      const int64_t gg = 4 * (b0 + q) + g;
      const uint8_t* p = row + 32 * gg;
      _mm_prefetch(reinterpret_cast<const char*>(p + prefetch), _MM_HINT_T0);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i b2 = _mm256_shuffle_epi8(byte2, _mm256_and_si256(v, low4));
      const __m256i b3 =
          _mm256_shuffle_epi8(byte3, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
      const __m256i w0 = _mm256_unpacklo_epi8(b2, b3), w1 = _mm256_unpackhi_epi8(b2, b3);
      lo[q] = _mm256_fmadd_ps(_mm256_load_ps(xo + 16 * gg),
                              _mm256_castsi256_ps(_mm256_and_si256(w0, high)), lo[q]);
      lo[q] = _mm256_fmadd_ps(_mm256_load_ps(xe + 16 * gg),
                              _mm256_castsi256_ps(_mm256_shuffle_epi8(w0, low_up)), lo[q]);
      hi[q] = _mm256_fmadd_ps(_mm256_load_ps(xo + 16 * gg + 8),
                              _mm256_castsi256_ps(_mm256_and_si256(w1, high)), hi[q]);
      hi[q] = _mm256_fmadd_ps(_mm256_load_ps(xe + 16 * gg + 8),
                              _mm256_castsi256_ps(_mm256_shuffle_epi8(w1, low_up)), hi[q]);
    }
  // pairs_tree8 of each tile: v_j = s_j + s_(j+8) is lo's halves added (j < 4) or hi's (j ≥ 4),
  // w_j = v_j + v_(j+4), then (w0+w2) + (w1+w3), four tiles at once after a transpose.
  __m128 w[4];
  for (int q = 0; q < 4; ++q)
    w[q] = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(lo[q]), _mm256_extractf128_ps(lo[q], 1)),
                      _mm_add_ps(_mm256_castps256_ps128(hi[q]), _mm256_extractf128_ps(hi[q], 1)));
  _MM_TRANSPOSE4_PS(w[0], w[1], w[2], w[3]);
  return _mm_add_ps(_mm_add_ps(w[0], w[2]), _mm_add_ps(w[1], w[3]));
}

// m > 1 (prefill, batched decode). Weight rows sit in the lanes: a block of weight rows is
// decoded once per chunk of tiles, transposed, so that one vector holds one element of 8
// weight rows, and a broadcast activation times it advances 8 (activation row, weight row)
// pairs. linear_dot_pairs_f32's order is per pair sixteen lane chains (lane j: per group the
// odd element 2j+1, then the even one 2j) and a fixed tree over them; here each of those
// chains runs in the vector lanes — a register block of MI activation rows × NV vectors of
// weight rows keeps MI·NV chains of lane j in flight (per step MI broadcasts and NV loads
// feed MI·NV FMAs, where pairing activation and weight vectors needed one load per FMA) —
// and the finished lane sums go to L1 until the tree adds them, vector by vector as the scalar
// tree adds numbers.

// Whether a set of scales are all positive powers of two (E8M0 block scales and the
// activations' power-of-two scales are), and their exponent range.
struct Pow2Range {
  bool all_pow2 = true;
  int lo = INT_MAX, hi = INT_MIN;
  void add(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    const uint32_t field = bits >> 23, mantissa = bits & 0x7FFFFF;  // field: sign and exponent
    int e;
    if (field >= 1 && field <= 254 && mantissa == 0) {
      e = static_cast<int>(field) - 127;
    } else if (field == 0 && mantissa != 0 && (mantissa & (mantissa - 1)) == 0) {
      e = __builtin_ctz(mantissa) - 149;  // a subnormal power of two
    } else {                              // zero, negative, non-finite, or not a power of two
      all_pow2 = false;
      return;
    }
    lo = std::min(lo, e);
    hi = std::max(hi, e);
  }
  // Whether every product of one of these by one of `other`'s is a float (2^-149 .. 2^127).
  bool product_is_float(const Pow2Range& other) const {
    return all_pow2 && other.all_pow2 && lo <= hi && other.lo <= other.hi &&
           lo + other.lo >= -149 && hi + other.hi <= 127;
  }
};

// Weight rows per decoded block and tiles per K chunk: 64 rows × 2 tiles of floats (64 KB)
// stay in L2 while every activation row meets them; one chunk of all activation rows
// (2048 × 256 × 4 B = 2 MB) stays in the last-level cache while every block is decoded once.
constexpr int64_t kFp8BlockRows = 64, kFp8ChunkTiles = 2;
// Floats per decoded tile of 8 weight rows: [lane j][group g][odd, even][8 rows].
constexpr int64_t kFp8TileFloats = 16 * 4 * 2 * 8;

constexpr int kFp8RowsPerStep = kFp8PackRowBlock;  // activation rows per register block
// Floats per packed tile of a block of activation rows.
constexpr int64_t kFp8PackFloats = 128 * kFp8RowsPerStep;

// m = 1: four-tile steps per K chunk (4096 values: 16 KB of activations, half of Zen 1's L1)
// and rows per block that meet a chunk in turn.
constexpr int64_t kFp8ChunkQuads = 8, kFp8BlockRowsM1 = 8;

// The decoded tile of MI activation rows, packed at xp (lane j, group g, h = 0 odd / 1 even,
// row ii at ((j·4 + g)·2 + h)·kFp8RowsPerStep + ii: one base pointer, and no 4 KB-aliased row
// strides in L1), against NV vectors of 8 weight rows (wt, vectors vstride floats apart), ng
// groups; then per pair y += float(tile sum · (xs[ii] · ws[8v + lane])) as the scalar path
// rounds it, into y (rows ldy apart; only nr weight rows are real). With float_factors the
// caller has checked that every xs[ii] · ws[lane] is a power of two inside float's range: the
// factor is then exact in fp32 (xsf, wsf: the same scales as floats), and the fp32 product of
// the tile sum (24 significant bits) by it rounds the exact product once, as the double
// product's rounding to float does (subnormal results included).
template <int MI, int NV>
inline void fp8_lanes_tile(const float* wt, int64_t vstride, const float* xp, int64_t ng,
                           const double* xs, const double* ws, const float* xsf, const float* wsf,
                           bool float_factors, float* y, int64_t ldy, int nr) {
  alignas(32) float lane[16][MI * NV * 8];
  for (int j = 0; j < 16; ++j) {
    __m256 acc[MI][NV];
    for (int ii = 0; ii < MI; ++ii)
      for (int v = 0; v < NV; ++v) acc[ii][v] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g)
      for (int h = 0; h < 2; ++h) {  // the odd element, then the even one
        const int64_t step = (j * 4 + g) * 2 + h;
        __m256 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm256_load_ps(wt + v * vstride + step * 8);
        for (int ii = 0; ii < MI; ++ii) {
          const __m256 xv = _mm256_broadcast_ss(xp + step * kFp8RowsPerStep + ii);
          for (int v = 0; v < NV; ++v) acc[ii][v] = _mm256_fmadd_ps(xv, wv[v], acc[ii][v]);
        }
      }
    for (int ii = 0; ii < MI; ++ii)
      for (int v = 0; v < NV; ++v) _mm256_store_ps(lane[j] + (ii * NV + v) * 8, acc[ii][v]);
  }
  for (int ii = 0; ii < MI; ++ii) {
    const __m256d xsv = _mm256_set1_pd(xs[ii]);
    for (int v = 0; v < NV; ++v) {
      // pairs_tree_f32, a vector at a time.
      const int q = ii * NV + v;
      __m256 s[8];
      for (int j = 0; j < 8; ++j)
        s[j] = _mm256_add_ps(_mm256_load_ps(lane[j] + 8 * q), _mm256_load_ps(lane[j + 8] + 8 * q));
      const __m256 sum =
          _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s[0], s[4]), _mm256_add_ps(s[2], s[6])),
                        _mm256_add_ps(_mm256_add_ps(s[1], s[5]), _mm256_add_ps(s[3], s[7])));
      __m256 add;
      if (float_factors) {
        add = _mm256_mul_ps(sum,
                            _mm256_mul_ps(_mm256_set1_ps(xsf[ii]), _mm256_loadu_ps(wsf + 8 * v)));
      } else {
        const __m128 lo =
            _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(sum)),
                                          _mm256_mul_pd(xsv, _mm256_load_pd(ws + 8 * v))));
        const __m128 hi =
            _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(sum, 1)),
                                          _mm256_mul_pd(xsv, _mm256_load_pd(ws + 8 * v + 4))));
        add = _mm256_set_m128(hi, lo);
      }
      float* yv = y + ii * ldy + 8 * v;
      if (v < NV - 1 || nr == 8 * NV) {
        _mm256_storeu_ps(yv, _mm256_add_ps(_mm256_loadu_ps(yv), add));
      } else {
        alignas(32) float a8[8];
        _mm256_store_ps(a8, add);
        for (int l = 0; l < nr - 8 * v; ++l) yv[l] += a8[l];
      }
    }
  }
}

// Blocks of kFp8BlockRows weight rows in turn; per block, K in chunks of kFp8ChunkTiles tiles
// decoded to floats, each met by every activation row. The block's outputs gather in a
// contiguous [m][kFp8BlockRows] buffer: written straight into y, whose rows lie `out` floats
// apart, every 6-row step touched 6 pages (2048 per sweep, past Zen 1's L2 TLB) and the
// epilogue's reads of y stalled for 15 % of the kernel's time.
void fp8_gemm(const Fp8Task& t, int64_t r0, int64_t r1) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in, tiles = (in + 127) / 128, groups = t.ldq / 32;
  const int64_t row_blocks = (t.m + kFp8RowsPerStep - 1) / kFp8RowsPerStep;
  constexpr int64_t kVectors = kFp8BlockRows / 8;
  // [vector of 8 rows][tile c][kFp8TileFloats], then the rows' weight scales [row][c] (double).
  float* wbuf = reinterpret_cast<float*>(thread_scratch(
      kVectors * kFp8ChunkTiles * kFp8TileFloats / 2 + kFp8BlockRows * kFp8ChunkTiles, 0));
  double* ws = reinterpret_cast<double*>(wbuf + kVectors * kFp8ChunkTiles * kFp8TileFloats);
  // The same scales as floats, and per tile of the chunk whether they are all powers of two
  // (E8M0 scales always are) with their exponent range, for the fp32 epilogue.
  alignas(32) float wsf[kFp8ChunkTiles * kFp8BlockRows];
  Pow2Range wrange[kFp8ChunkTiles];
  float* ybuf = reinterpret_cast<float*>(thread_scratch(t.m * kFp8BlockRows / 2, 1));
  const int64_t vstride = kFp8ChunkTiles * kFp8TileFloats;
  for (int64_t rb = r0; rb < r1; rb += kFp8BlockRows) {
    const int64_t nb = std::min(kFp8BlockRows, r1 - rb);
    std::fill_n(ybuf, t.m * kFp8BlockRows, 0.0f);
    for (int64_t c0 = 0; c0 < tiles; c0 += kFp8ChunkTiles) {
      const int64_t nc = std::min(kFp8ChunkTiles, tiles - c0);
      for (int64_t c = 0; c < nc; ++c) {
        wrange[c] = Pow2Range();
        for (int64_t j = 0; j < kFp8BlockRows; ++j) {
          const float scale =
              j < nb ? weight_block_scale(w, ((rb + j) / 128) * tiles + c0 + c) : 0.0f;
          ws[c * kFp8BlockRows + j] = static_cast<double>(scale);
          wsf[c * kFp8BlockRows + j] = scale;
          if (j < nb) wrange[c].add(scale);
        }
      }
      // Decode, transposed (rows past the block are +0).
      for (int64_t v = 0; v * 8 < nb; ++v)
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t b = c0 + c;
          float* dst = wbuf + v * vstride + c * kFp8TileFloats;
          for (int64_t g = 4 * b; g < std::min(groups, 4 * b + 4); ++g) {
            __m256 part[4][8];  // wo[0], wo[1], we[0], we[1] of 8 rows
            for (int rr = 0; rr < 8; ++rr) {
              const int64_t r = rb + 8 * v + rr;
              if (r >= rb + nb) {
                for (int q = 0; q < 4; ++q) part[q][rr] = _mm256_setzero_ps();
                continue;
              }
              __m256 wo[2], we[2];
              fp8_group_odd_even(static_cast<const uint8_t*>(w.data) + r * in + 32 * g, in - 32 * g,
                                 wo, we);
              part[0][rr] = wo[0];
              part[1][rr] = wo[1];
              part[2][rr] = we[0];
              part[3][rr] = we[1];
            }
            for (int q = 0; q < 4; ++q) transpose8(part[q]);  // part[q][l]: lane l (+8) of the rows
            const int64_t gl = g - 4 * b;
            for (int l = 0; l < 8; ++l)
              for (int q = 0; q < 4; ++q) {
                const int64_t j = l + 8 * (q % 2), h = q / 2;
                _mm256_store_ps(dst + ((j * 4 + gl) * 2 + h) * 8, part[q][l]);
              }
          }
        }
      for (int64_t i = 0; i < t.m; i += kFp8RowsPerStep) {
        const int mi = static_cast<int>(std::min<int64_t>(kFp8RowsPerStep, t.m - i));
        alignas(32) double xs[kFp8ChunkTiles][kFp8RowsPerStep];
        float xsf[kFp8ChunkTiles][kFp8RowsPerStep];
        bool float_factors[kFp8ChunkTiles];
        for (int64_t c = 0; c < nc; ++c) {
          Pow2Range xrange;
          for (int ii = 0; ii < mi; ++ii) {
            xsf[c][ii] = t.scales[(i + ii) * tiles + c0 + c];
            xs[c][ii] = static_cast<double>(xsf[c][ii]);
            xrange.add(xsf[c][ii]);
          }
          float_factors[c] = xrange.product_is_float(wrange[c]);
        }
        for (int64_t v = 0; v * 8 < nb; v += 2) {
          const int nv = (v + 1) * 8 < nb ? 2 : 1;
          for (int64_t c = 0; c < nc; ++c) {
            const int64_t b = c0 + c, ng = std::min(groups, 4 * b + 4) - 4 * b;
            const float* wt = wbuf + v * vstride + c * kFp8TileFloats;
            const float* xp = t.xpack + (b * row_blocks + i / kFp8RowsPerStep) * kFp8PackFloats;
            const int nr = static_cast<int>(std::min<int64_t>(8 * nv, nb - 8 * v));
            float* y = ybuf + i * kFp8BlockRows + 8 * v;
            const int64_t wo = c * kFp8BlockRows + 8 * v;
            with_block_size<2>(nv, [&](auto vectors) {
              with_block_size<kFp8RowsPerStep>(mi, [&](auto rows) {
                fp8_lanes_tile<decltype(rows)::value, decltype(vectors)::value>(
                    wt, vstride, xp, ng, xs[c], ws + wo, xsf[c], wsf + wo, float_factors[c], y,
                    kFp8BlockRows, nr);
              });
            });
          }
        }
      }
    }
    store_block_outputs(ybuf, kFp8BlockRows, t.m, nb, t.y + (rb - t.row_begin), t.ldy,
                        t.round_bf16);
  }
}

}  // namespace

int64_t fp8_pack_floats_avx2(int64_t m, int64_t in) {
  return (m + kFp8RowsPerStep - 1) / kFp8RowsPerStep * ((in + 127) / 128) * kFp8PackFloats;
}

// Per block of kFp8RowsPerStep activation rows and tile (rows past m are +0), the odd and even
// elements × 2^8 (exact: the kernel decodes the weights to value × 2^-8) in the order
// fp8_lanes_tile reads them: [tile][row block][lane j][group g][odd, even][row]. Done once per
// call, straight from the values. Tile-major, so that the kernel's sweeps over the rows read
// each tile as one contiguous stretch.
void fp8_pack_avx2(const Fp8Task& t, const float* q, int64_t b0, int64_t b1, float* out) {
  const int64_t tiles = (t.w->in + 127) / 128, groups = t.ldq / 32;
  const int64_t row_blocks = (t.m + kFp8RowsPerStep - 1) / kFp8RowsPerStep;
  for (int64_t blk = b0; blk < b1; ++blk)
    for (int64_t b = 0; b < tiles; ++b) {
      float* dst = out + (b * row_blocks + blk) * kFp8PackFloats;
      const int64_t ng = std::min(groups, 4 * b + 4) - 4 * b;
      for (int64_t ii = 0; ii < kFp8RowsPerStep; ++ii) {
        const int64_t i = blk * kFp8RowsPerStep + ii;
        const bool real = i < t.m;
        const float* x = real ? q + i * t.ldq + 128 * b : nullptr;
        for (int64_t g = 0; g < ng; ++g)
          for (int j = 0; j < 16; ++j) {
            const int64_t step = (j * 4 + g) * 2;
            dst[step * kFp8RowsPerStep + ii] = real ? x[32 * g + 2 * j + 1] * 256.0f : 0.0f;
            dst[(step + 1) * kFp8RowsPerStep + ii] = real ? x[32 * g + 2 * j] * 256.0f : 0.0f;
          }
      }
    }
}

void fp8_rows_avx2(const Fp8Task& t, int64_t r0, int64_t r1) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in, tiles = (in + 127) / 128, groups = t.ldq / 32;
  if (t.m > 1) return fp8_gemm(t, r0, r1);
  // m = 1: run_fp8 always lays the activations out for the four-tile step (xo_q, xe_q).
  // Both block scales of a tile as one double factor, per block of 128 weight rows (× 2^8 for
  // the four-tile step's sums, which come × 2^-8: exact, as is their conversion to double).
  // Where that factor is a float (always with E8M0 scales inside float's range), one fp32
  // multiply rounds the same exact product as the double one: T has 24 significant bits and
  // the factor 24, so double(T) · factor is exact and its rounding to float is the IEEE float
  // product's rounding (subnormal results included).
  double* factor = thread_scratch(2 * tiles + tiles / 2 + 1, 0);
  double* factor_q = factor + tiles;
  float* factor_qf = reinterpret_cast<float*>(factor_q + tiles);
  bool float_factors = false;
  // The tile values of a block of rows, [tile][row in block]: each row's tiles are added in
  // ascending K as the scalar path does, eight rows a vector at a time.
  float* tile_values = reinterpret_cast<float*>(thread_scratch(tiles * kFp8BlockRowsM1 / 2, 1));
  // A partial block leaves lanes unwritten; they are added too (and discarded), so they must
  // hold numbers.
  std::fill_n(tile_values, tiles * kFp8BlockRowsM1, 0.0f);
  const int64_t quads = in / 512;  // whole 4-tile steps
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  // Rows wider than kFp8ChunkQuads steps (wo_b: 8192) would stream 32 KB of activations per
  // row through L1 beside the weights; a block of rows takes them a K chunk at a time instead
  // (each row's tiles still added in ascending K), so a chunk's activations stay in L1. Each
  // row chunk prefetches the one read after it.
  const int64_t chunk = quads > kFp8ChunkQuads ? kFp8ChunkQuads : std::max<int64_t>(quads, 1);
  for (int64_t rb = r0; rb < r1;) {
    // A block never straddles a 128-row scale block.
    const int64_t re = std::min({r1, rb + kFp8BlockRowsM1, (rb / 128 + 1) * 128});
    if (rb == r0 || rb % 128 == 0) {
      float_factors = true;
      for (int64_t b = 0; b < tiles; ++b) {
        factor[b] = static_cast<double>(t.scales[b]) *
                    static_cast<double>(weight_block_scale(w, (rb / 128) * tiles + b));
        factor_q[b] = factor[b] * 256.0;
        factor_qf[b] = static_cast<float>(factor_q[b]);
        float_factors = float_factors && static_cast<double>(factor_qf[b]) == factor_q[b];
      }
    }
    for (int64_t q0 = 0; q0 < quads; q0 += chunk) {
      const int64_t q1 = std::min(quads, q0 + chunk);
      for (int64_t r = rb; r < re; ++r) {
        const uint8_t* row = data + r * in;
        // The next row chunk read: the next row's, the block's first row's next chunk, or the
        // next block's first chunk (none past the task).
        const int64_t next = r + 1 < re   ? in
                             : q1 < quads ? (rb - r) * in + 512 * (q1 - q0)
                             : re < r1    ? (re - r) * in - 512 * q0
                                          : 0;
        const int64_t prefetch = chunk == quads ? kPrefetchBytes : next;
        float* tv = tile_values + (r - rb);
        for (int64_t qd = q0; qd < q1; ++qd) {
          const __m128 sums = fp8_quad_sums(row, t.xo_q, t.xe_q, 4 * qd, prefetch);
          const __m128 v = float_factors
                               ? _mm_mul_ps(sums, _mm_loadu_ps(factor_qf + 4 * qd))
                               : _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(sums),
                                                               _mm256_loadu_pd(factor_q + 4 * qd)));
          float* dst = tv + 4 * qd * kFp8BlockRowsM1;
          _mm_store_ss(dst, v);
          dst[kFp8BlockRowsM1] = _mm_cvtss_f32(_mm_movehdup_ps(v));
          dst[2 * kFp8BlockRowsM1] = _mm_cvtss_f32(_mm_movehl_ps(v, v));
          dst[3 * kFp8BlockRowsM1] = _mm_cvtss_f32(_mm_shuffle_ps(v, v, 3));
        }
      }
    }
    for (int64_t r = rb; r < re; ++r) {
      const uint8_t* row = data + r * in;
      for (int64_t b = 4 * quads; b < tiles; ++b) {  // the rest, a tile at a time
        const float sum = fp8_tile_fma(t.xo, t.xe, 4 * b, std::min(groups, 4 * b + 4),
                                       [&](int64_t g, __m256 wo[2], __m256 we[2]) {
                                         fp8_group_odd_even(row + 32 * g, in - 32 * g, wo, we);
                                       });
        tile_values[b * kFp8BlockRowsM1 + (r - rb)] =
            static_cast<float>(static_cast<double>(sum) * factor[b]);
      }
    }
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < tiles; ++b)
      acc = _mm256_add_ps(acc, _mm256_load_ps(tile_values + b * kFp8BlockRowsM1));
    alignas(32) float out[kFp8BlockRowsM1];
    _mm256_store_ps(out, acc);
    for (int64_t r = rb; r < re; ++r)
      t.y[r - t.row_begin] = t.round_bf16 ? bf16_round(out[r - rb]) : out[r - rb];
    rb = re;
  }
}

}  // namespace dsv4::kernels::detail
