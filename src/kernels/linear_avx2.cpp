// AVX2 + FMA + F16C linear kernels (the build's x86-64-v3 baseline, so no
// target attributes are needed). Same function and same association order as
// the scalar path and the AVX-512 kernels (docs/kernels.md); 4-double
// registers hold the sixteen partial sums of linear_dot_f64 as four vectors.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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

// 8 FP4 e2m1 values from 4 packed bytes: magnitude from an 8-entry permute,
// sign from bit 3.
inline __m256 fp4_values(const uint8_t* p, __m256 magnitudes) {
  uint32_t bytes;
  std::memcpy(&bytes, p, 4);
  const __m128i b = _mm_cvtsi32_si128(static_cast<int>(bytes));
  const __m256i idx = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(b, b)),
                                        _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0));
  const __m256 mag = _mm256_permutevar8x32_ps(magnitudes, idx);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(idx, _mm256_set1_epi32(8)), 28);
  return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
}

inline __m256 bf16_values(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

void decode_row(const WeightRef& w, int64_t r, double* dst) {
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
      for (int64_t b = 0; b < scale_cols; ++b) {
        const float s = weight_block_scale(w, (r / 128) * scale_cols + b);
        const int64_t end = std::min(in, (b + 1) * 128);
        for (int64_t k = b * 128; k < end; k += kGroup) {
          const uint8_t* p = group_src(codes + k, std::min(kGroup, end - k), 1);
          store_as_doubles(dst + k, fp8_times_scale(fp8_values(p), s));
          store_as_doubles(dst + k + 8, fp8_times_scale(fp8_values(p + 8), s));
        }
      }
      break;
    }
    case WeightFormat::kFP4: {
      const uint8_t* packed = base + r * (in / 2);
      const int64_t scale_cols = in / 32;
      const __m256 magnitudes = _mm256_loadu_ps(fp4_e2m1_table());
      for (int64_t b = 0; b < scale_cols; ++b) {
        const __m256 s = _mm256_set1_ps(weight_block_scale(w, r * scale_cols + b));
        for (int q = 0; q < 4; ++q)
          store_as_doubles(dst + b * 32 + q * 8,
                           _mm256_mul_ps(fp4_values(packed + b * 16 + q * 4, magnitudes), s));
      }
      break;
    }
    case WeightFormat::kBF16: {
      const uint8_t* row = base + r * in * 2;
      for (int64_t k = 0; k < in; k += kGroup) {
        const uint8_t* p = group_src(row + k * 2, std::min(kGroup, in - k), 2);
        store_as_doubles(dst + k, bf16_values(p));
        store_as_doubles(dst + k + 8, bf16_values(p + 16));
      }
      break;
    }
    case WeightFormat::kF32: {
      const uint8_t* row = base + r * in * 4;
      for (int64_t k = 0; k < in; k += kGroup) {
        const uint8_t* p = group_src(row + k * 4, std::min(kGroup, in - k), 4);
        store_as_doubles(dst + k, _mm256_loadu_ps(reinterpret_cast<const float*>(p)));
        store_as_doubles(dst + k + 8, _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 8));
      }
      break;
    }
  }
  const int64_t padded = (in + kGroup - 1) / kGroup * kGroup;
  for (int64_t k = in; k < padded; ++k) dst[k] = 0.0;
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
  // Per row: v_j = s_j + s_(j+8) is acc0+acc2 (lanes 0-3) and acc1+acc3
  // (lanes 4-7); u_j = v_j + v_(j+4); then (u0+u2) + (u1+u3).
  __m256d u[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
  for (int j = 0; j < NR; ++j)
    u[j] = _mm256_add_pd(_mm256_add_pd(acc[j][0], acc[j][2]), _mm256_add_pd(acc[j][1], acc[j][3]));
  const __m256d t = _mm256_add_pd(_mm256_permute2f128_pd(u[0], u[1], 0x20),
                                  _mm256_permute2f128_pd(u[0], u[1], 0x31));
  alignas(32) double h[4];
  _mm256_store_pd(h, _mm256_hadd_pd(t, t));  // [row0, row0, row1, row1]
  for (int j = 0; j < NR; ++j) out[j] = h[2 * j];
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

}  // namespace

void linear_rows_avx2(const LinearTask& t, int64_t r0, int64_t r1) {
  const int64_t in = t.w->in;
  const int64_t ldw = padded_in(in);
  const int64_t block_rows = decode_block_rows(in, kNR);
  double* wbuf = thread_scratch(block_rows * ldw, 0);
  for (int64_t rb = r0; rb < r1; rb += block_rows) {
    const int64_t nrb = std::min(block_rows, r1 - rb);
    for (int64_t j = 0; j < nrb; ++j) decode_row(*t.w, rb + j, wbuf + j * ldw);
    for (int64_t i = 0; i < t.m; ++i)
      for (int64_t j0 = 0; j0 < nrb; j0 += kNR) {
        if (nrb - j0 >= 2)
          block<2>(t, wbuf, ldw, i, rb, j0);
        else
          block<1>(t, wbuf, ldw, i, rb, j0);
      }
  }
}

}  // namespace dsv4::kernels::detail
