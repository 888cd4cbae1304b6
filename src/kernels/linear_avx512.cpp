// AVX-512 (F/BW/VL) linear kernels. They compute exactly what the scalar path
// in linear.cpp computes (docs/kernels.md): weights decoded to the same
// floats, products summed in double in linear_dot_f64's association order.
//
// Every function below the target pragma is compiled for AVX-512 and reached
// only through linear_rows_avx512, which linear.cpp calls only when the CPU
// has AVX-512. All headers come before the pragma, so no inline library code
// is compiled for AVX-512 by accident (the linker could otherwise keep that
// copy for the whole program).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/linear_simd.h"
#include "kernels/numerics.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
// GCC 12's AVX-512 headers fill "don't care" lanes from _mm512_undefined_pd(),
// written as `__m512d __Y = __Y;`, which -W(maybe-)uninitialized flags once
// inlined here (a false positive: those lanes are masked off or overwritten).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace dsv4::kernels::detail {

namespace {

constexpr int kMI = 2;  // activation rows per microkernel call
constexpr int kNR = 4;  // weight rows per microkernel call
constexpr int64_t kGroup = 16;

// 16 floats to 16 doubles at dst (64-byte aligned).
inline void store_as_doubles(double* dst, __m512 f) {
  const __m256 lo = _mm512_castps512_ps256(f);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1));
  _mm512_store_pd(dst, _mm512_cvtps_pd(lo));
  _mm512_store_pd(dst + 8, _mm512_cvtps_pd(hi));
}

// 16 FP8 e4m3 codes to their exact values without a table: the 7 magnitude
// bits shifted left by 7 form an fp16 with the e4m3 exponent in its low four
// exponent bits (fp16 subnormals cover the e4m3 ones), i.e. the value times
// 2^(7-15); the sign moves from bit 7 to bit 15. 0x7f/0xff (NaN, absent from
// valid checkpoints) decode to ±480 here.
inline __m512 fp8_values(__m128i codes) {
  const __m256i w = _mm256_cvtepu8_epi16(codes);
  // (w << 8) puts the sign in bit 15 and the magnitude in bits 14..8; an
  // arithmetic shift right by 1 moves the magnitude to bits 13..7 and copies
  // the sign into bit 14, which the mask clears.
  const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w, 8), 1),
                                     _mm256_set1_epi16(static_cast<short>(0xBFFF)));
  return _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));
}

// 16 FP4 e2m1 values from 8 packed bytes (low nibble first).
inline __m512 fp4_values(const uint8_t* p, __m512 table) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i pairs = _mm_unpacklo_epi8(b, b);  // b0 b0 b1 b1 ...
  const __m512i shifts = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
  const __m512i idx = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(pairs), shifts);
  return _mm512_permutexvar_ps(idx, table);  // uses the low 4 bits of each index
}

inline __m512 bf16_values(const uint8_t* p) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// Decodes weight row r to doubles at dst[0, in), zeros up to the next
// multiple of 16. Values equal dequant_row's floats exactly: the same code
// value times the same float scale, in float.
void decode_row(const WeightRef& w, int64_t r, double* dst) {
  const int64_t in = w.in;
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  // A partial last group is decoded from a zero-padded copy.
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
        const __m512 s = _mm512_set1_ps(weight_block_scale(w, (r / 128) * scale_cols + b));
        const int64_t end = std::min(in, (b + 1) * 128);
        for (int64_t k = b * 128; k < end; k += kGroup) {
          const uint8_t* p = group_src(codes + k, std::min(kGroup, end - k), 1);
          const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
          store_as_doubles(dst + k, _mm512_mul_ps(fp8_values(c), s));
        }
      }
      break;
    }
    case WeightFormat::kFP4: {
      const uint8_t* packed = base + r * (in / 2);
      const int64_t scale_cols = in / 32;
      const __m512 table = _mm512_loadu_ps(fp4_e2m1_table());
      for (int64_t b = 0; b < scale_cols; ++b) {
        const __m512 s = _mm512_set1_ps(weight_block_scale(w, r * scale_cols + b));
        store_as_doubles(dst + b * 32, _mm512_mul_ps(fp4_values(packed + b * 16, table), s));
        store_as_doubles(dst + b * 32 + 16,
                         _mm512_mul_ps(fp4_values(packed + b * 16 + 8, table), s));
      }
      break;
    }
    case WeightFormat::kBF16: {
      const uint8_t* row = base + r * in * 2;
      for (int64_t k = 0; k < in; k += kGroup)
        store_as_doubles(dst + k, bf16_values(group_src(row + k * 2, std::min(kGroup, in - k), 2)));
      break;
    }
    case WeightFormat::kF32: {
      const uint8_t* row = base + r * in * 4;
      for (int64_t k = 0; k < in; k += kGroup) {
        const uint8_t* p = group_src(row + k * 4, std::min(kGroup, in - k), 4);
        store_as_doubles(dst + k, _mm512_loadu_ps(p));
      }
      break;
    }
  }
  // Padding must be +0 whatever the scale (0 × inf would be NaN).
  const int64_t padded = (in + kGroup - 1) / kGroup * kGroup;
  for (int64_t k = in; k < padded; ++k) dst[k] = 0.0;
}

// Level 1 of linear_dot_f64's tree for two pairs: lanes j and j+4 of each.
inline __m512d fold4(__m512d a, __m512d b) {
  return _mm512_add_pd(_mm512_shuffle_f64x2(a, b, 0x44), _mm512_shuffle_f64x2(a, b, 0xEE));
}
// Level 2 for four pairs (inputs from fold4): lanes j and j+2.
inline __m512d fold2(__m512d a, __m512d b) {
  return _mm512_add_pd(_mm512_shuffle_f64x2(a, b, 0x88), _mm512_shuffle_f64x2(a, b, 0xDD));
}

// Reduces eight pairs' v vectors (v_j = s_j + s_(j+8)) with linear_dot_f64's
// tree; lane l of the result is the sum of pair l.
inline __m512d reduce8(const __m512d v[8]) {
  // fold4/fold2/unpack produce lanes in the order of inputs 0,4,1,5,2,6,3,7.
  const __m512d w0 = fold2(fold4(v[0], v[2]), fold4(v[4], v[6]));
  const __m512d w1 = fold2(fold4(v[1], v[3]), fold4(v[5], v[7]));
  return _mm512_add_pd(_mm512_unpacklo_pd(w0, w1), _mm512_unpackhi_pd(w0, w1));
}

// Sums of x_i[k0, k0+len) · w_j[k0, k0+len) for MI×NR pairs (lane i·NR + j).
// w rows are zero-padded decoded doubles; x rows are floats read with a mask
// past len, so nothing beyond the tile is touched.
template <int MI, int NR>
inline __m512d tile_sums(const float* const* xs, const double* const* ws, int64_t k0, int64_t len) {
  __m512d lo[MI][NR], hi[MI][NR];
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) lo[i][j] = hi[i][j] = _mm512_setzero_pd();
  auto step = [&](int64_t k, __mmask16 mask) {
    __m512d x_lo[MI], x_hi[MI];
    for (int i = 0; i < MI; ++i) {
      const __m512 f = _mm512_maskz_loadu_ps(mask, xs[i] + k);
      x_lo[i] = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
      x_hi[i] = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
    }
    for (int j = 0; j < NR; ++j) {
      const __m512d w_lo = _mm512_load_pd(ws[j] + k);
      const __m512d w_hi = _mm512_load_pd(ws[j] + k + 8);
      for (int i = 0; i < MI; ++i) {
        lo[i][j] = _mm512_fmadd_pd(x_lo[i], w_lo, lo[i][j]);
        hi[i][j] = _mm512_fmadd_pd(x_hi[i], w_hi, hi[i][j]);
      }
    }
  };
  const int64_t end = k0 + len;
  int64_t k = k0;
  for (; k + kGroup <= end; k += kGroup) step(k, 0xffff);
  if (k < end) step(k, static_cast<__mmask16>((1u << (end - k)) - 1));
  __m512d v[8];
  for (int p = 0; p < 8; ++p) v[p] = _mm512_setzero_pd();
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) v[i * NR + j] = _mm512_add_pd(lo[i][j], hi[i][j]);
  return reduce8(v);
}

// y for activation rows [i0, i0+MI) and decoded weight rows [j0, j0+NR) of
// the block starting at weight row rb.
template <int MI, int NR>
void block(const LinearTask& t, const double* wbuf, int64_t ldw, int64_t i0, int64_t rb,
           int64_t j0) {
  const float* xs[MI];
  const double* ws[NR];
  for (int i = 0; i < MI; ++i) xs[i] = t.x + (i0 + i) * t.ldx;
  for (int j = 0; j < NR; ++j) ws[j] = wbuf + (j0 + j) * ldw;
  const int64_t in = t.w->in;
  __m256 result;
  if (t.tile > 0) {
    // Tile sums are rounded to float and accumulated in float, in ascending K.
    result = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < in; k0 += t.tile)
      result = _mm256_add_ps(
          result, _mm512_cvtpd_ps(tile_sums<MI, NR>(xs, ws, k0, std::min(t.tile, in - k0))));
  } else {
    result = _mm512_cvtpd_ps(tile_sums<MI, NR>(xs, ws, 0, in));
  }
  alignas(32) float out[8];
  _mm256_store_ps(out, result);
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) {
      const float v = out[i * NR + j];
      t.y[(i0 + i) * t.ldy + (rb + j0 + j - t.row_begin)] = t.round_bf16 ? bf16_round(v) : v;
    }
}

using BlockFn = void (*)(const LinearTask&, const double*, int64_t, int64_t, int64_t, int64_t);
constexpr BlockFn kBlocks[kMI][kNR] = {
    {block<1, 1>, block<1, 2>, block<1, 3>, block<1, 4>},
    {block<2, 1>, block<2, 2>, block<2, 3>, block<2, 4>},
};

}  // namespace

void linear_rows_avx512(const LinearTask& t, int64_t r0, int64_t r1) {
  const int64_t in = t.w->in;
  const int64_t ldw = (in + kGroup - 1) / kGroup * kGroup;
  const int64_t block_rows = decode_block_rows(in, kNR);
  double* wbuf = thread_scratch(block_rows * ldw);
  for (int64_t rb = r0; rb < r1; rb += block_rows) {
    const int64_t nrb = std::min(block_rows, r1 - rb);
    // Decode once, then apply to every activation row.
    for (int64_t j = 0; j < nrb; ++j) decode_row(*t.w, rb + j, wbuf + j * ldw);
    for (int64_t i0 = 0; i0 < t.m; i0 += kMI) {
      const int64_t mi = std::min<int64_t>(kMI, t.m - i0);
      for (int64_t j0 = 0; j0 < nrb; j0 += kNR) {
        const int64_t nr = std::min<int64_t>(kNR, nrb - j0);
        kBlocks[mi - 1][nr - 1](t, wbuf, ldw, i0, rb, j0);
      }
    }
  }
}

}  // namespace dsv4::kernels::detail

#pragma GCC diagnostic pop
#pragma GCC pop_options
