// AVX-512 (F/BW/VL) linear kernels. They compute exactly what the scalar path
// in linear.cpp computes (docs/kernels.md): weights decoded to the same
// floats, products summed in double in linear_dot_f64's association order —
// or, for FP8 / FP4 tiles with E8M0 scales, whose sums are exact in any
// order, codes decoded straight to doubles with the scale applied to the
// exact tile sum (equal as real numbers, hence after rounding).
//
// Every function below the target pragma is compiled for AVX-512 and reached
// only through linear_rows_avx512, which linear.cpp calls only when the CPU
// has AVX-512; the FP4 fast path also needs AVX512-VBMI, so its functions
// carry their own target attribute and run only when use_vbmi() says so. All
// headers come before the pragma, so no inline library code is compiled for
// AVX-512 by accident (the linker could otherwise keep that copy for the
// whole program).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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
  return _mm512_cvtph_ps(h);  // the code's value × 2^-8
}

// The FP8 decode yields value × 2^-8, so multiplying by scale × 2^8 gives
// the float value × scale exactly as dequant_row rounds it (same real
// product) — unless scale × 2^8 overflows (scale ≥ 2^120, or NaN), when the
// two multiplies are kept apart.
inline bool fp8_scale_folds(float scale) {
  return std::isfinite(scale * 256.0f);
}
inline __m512 fp8_times_scale(__m512 v_2m8, float scale) {
  if (fp8_scale_folds(scale)) return _mm512_mul_ps(v_2m8, _mm512_set1_ps(scale * 256.0f));
  return _mm512_mul_ps(_mm512_mul_ps(v_2m8, _mm512_set1_ps(256.0f)), _mm512_set1_ps(scale));
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

// Decodes elements [k0, k1) of weight row r to doubles at dst[0, k1-k0),
// zeros up to the next multiple of 16. k0 is a multiple of the scale block
// (128 for FP8, 32 for FP4) or 0. Values equal dequant_row's floats exactly:
// the same code value times the same float scale, in float.
void decode_range(const WeightRef& w, int64_t r, int64_t k0, int64_t k1, double* dst) {
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
      for (int64_t b = k0 / 128; b * 128 < k1; ++b) {
        const float s = weight_block_scale(w, (r / 128) * scale_cols + b);
        const int64_t end = std::min(k1, (b + 1) * 128);
        for (int64_t k = b * 128; k < end; k += kGroup) {
          const uint8_t* p = group_src(codes + k, std::min(kGroup, end - k), 1);
          const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
          store_as_doubles(dst + (k - k0), fp8_times_scale(fp8_values(c), s));
        }
      }
      break;
    }
    case WeightFormat::kFP4: {
      const uint8_t* packed = base + r * (in / 2);
      const int64_t scale_cols = in / 32;
      const __m512 table = _mm512_loadu_ps(fp4_e2m1_table());
      for (int64_t b = k0 / 32; b * 32 < k1; ++b) {
        const __m512 s = _mm512_set1_ps(weight_block_scale(w, r * scale_cols + b));
        store_as_doubles(dst + (b * 32 - k0), _mm512_mul_ps(fp4_values(packed + b * 16, table), s));
        store_as_doubles(dst + (b * 32 + 16 - k0),
                         _mm512_mul_ps(fp4_values(packed + b * 16 + 8, table), s));
      }
      break;
    }
    case WeightFormat::kBF16: {
      const uint8_t* row = base + r * in * 2;
      for (int64_t k = k0; k < k1; k += kGroup)
        store_as_doubles(dst + (k - k0),
                         bf16_values(group_src(row + k * 2, std::min(kGroup, k1 - k), 2)));
      break;
    }
    case WeightFormat::kF32: {
      const uint8_t* row = base + r * in * 4;
      for (int64_t k = k0; k < k1; k += kGroup) {
        const uint8_t* p = group_src(row + k * 4, std::min(kGroup, k1 - k), 4);
        store_as_doubles(dst + (k - k0), _mm512_loadu_ps(p));
      }
      break;
    }
  }
  // Padding must be +0 whatever the scale (0 × inf would be NaN).
  const int64_t padded = padded_in(k1 - k0);
  for (int64_t k = k1 - k0; k < padded; ++k) dst[k] = 0.0;
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
// Both operands are zero-padded doubles, so whole 16-groups are read.
template <int MI, int NR>
inline __m512d tile_sums(const double* const* xs, int64_t x_off, const double* const* ws,
                         int64_t w_off, int64_t len) {
  __m512d lo[MI][NR], hi[MI][NR];
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) lo[i][j] = hi[i][j] = _mm512_setzero_pd();
  for (int64_t k = 0; k < len; k += kGroup) {
    __m512d x_lo[MI], x_hi[MI];
    for (int i = 0; i < MI; ++i) {
      x_lo[i] = _mm512_load_pd(xs[i] + x_off + k);
      x_hi[i] = _mm512_load_pd(xs[i] + x_off + k + 8);
    }
    for (int j = 0; j < NR; ++j) {
      const __m512d w_lo = _mm512_load_pd(ws[j] + w_off + k);
      const __m512d w_hi = _mm512_load_pd(ws[j] + w_off + k + 8);
      for (int i = 0; i < MI; ++i) {
        lo[i][j] = _mm512_fmadd_pd(x_lo[i], w_lo, lo[i][j]);
        hi[i][j] = _mm512_fmadd_pd(x_hi[i], w_hi, hi[i][j]);
      }
    }
  }
  __m512d v[8];
  for (int p = 0; p < 8; ++p) v[p] = _mm512_setzero_pd();
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) v[i * NR + j] = _mm512_add_pd(lo[i][j], hi[i][j]);
  return reduce8(v);
}

// Stores the MI×NR results (lane i·NR + j) into y.
inline void store_results(const LinearTask& t, __m256 result, int mi, int nr, int64_t i0,
                          int64_t r) {
  alignas(32) float out[8];
  _mm256_store_ps(out, result);
  for (int i = 0; i < mi; ++i)
    for (int j = 0; j < nr; ++j) {
      const float v = out[i * nr + j];
      t.y[(i0 + i) * t.ldy + (r + j - t.row_begin)] = t.round_bf16 ? bf16_round(v) : v;
    }
}

// ---- Matrix-vector (m = 1): weights decoded in registers, no buffer. ----

constexpr int kGemvRows = 8;  // weight rows at once: 16 accumulators, one full reduce8

// The matrix-vector kernels stream weight rows; measured on the development machine, the
// hardware prefetchers alone leave them waiting on memory (BF16: 20 % faster with this).
// A prefetch past the end of the mapping is harmless (it never faults). 8 KB ahead (session 7,
// FP8 m = 1 one row at a time, 1 thread): wq_b 1.25–1.34 ms at 2 KB, 1.13–1.19 at 4 KB,
// 1.03–1.10 at 8 KB, 1.08–1.10 at 12 KB, 1.15–1.24 at 16 KB.
constexpr int64_t kPrefetchBytes = 8192;
inline void prefetch_weights(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
}

// call(n, r) for the rows [r0, r1): groups of kGemvRows rows, then one group of the rest (each
// matrix-vector kernel has one instantiation per group size, called through a table).
template <typename Call>
inline void for_row_groups(int64_t r0, int64_t r1, Call call) {
  int64_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) call(kGemvRows, r);
  if (r < r1) call(static_cast<int>(r1 - r), r);
}

// 16 weights of one row starting at element k (n valid, the rest +0), as the
// floats dequant_row produces.
// For FP8, `scale` is the block scale × 256 (fp8_scale_folds), or with
// kUnfolded the plain block scale.
template <WeightFormat F, bool kUnfolded>
inline __m512 weights16(const uint8_t* row, int64_t k, int64_t n, __m512 scale, __m512 table) {
  const __mmask16 mask = n >= kGroup ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  __m512 v;
  if constexpr (F == WeightFormat::kFP8) {
    prefetch_weights(row + k);
    v = fp8_values(_mm_maskz_loadu_epi8(mask, row + k));
    if constexpr (kUnfolded) v = _mm512_mul_ps(v, _mm512_set1_ps(256.0f));
    v = _mm512_mul_ps(v, scale);
  } else if constexpr (F == WeightFormat::kFP4) {
    prefetch_weights(row + k / 2);
    v = _mm512_mul_ps(fp4_values(row + k / 2, table), scale);  // FP4 rows are whole 32-groups
  } else if constexpr (F == WeightFormat::kBF16) {
    prefetch_weights(row + 2 * k);
    const __m256i b = _mm256_maskz_loadu_epi16(mask, row + 2 * k);
    v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
  } else {
    prefetch_weights(row + 4 * k);
    v = _mm512_maskz_loadu_ps(mask, row + 4 * k);
  }
  // Lanes past the row end must be +0 whatever the scale (0 × inf is NaN).
  return n >= kGroup ? v : _mm512_maskz_mov_ps(mask, v);
}

// Sums over [k0, k0+len) of x · w_j for NR rows (lane j), decoding as it goes.
template <WeightFormat F, int NR, bool kUnfolded>
inline __m512d gemv_tile(const uint8_t* const* rows, const double* x, int64_t k0, int64_t len,
                         const __m512* scales, __m512 table) {
  __m512d lo[NR], hi[NR];
  for (int j = 0; j < NR; ++j) lo[j] = hi[j] = _mm512_setzero_pd();
  const int64_t end = k0 + len;
  for (int64_t k = k0; k < end; k += kGroup) {
    const int64_t n = end - k;
    const __m512d x_lo = _mm512_load_pd(x + k);
    const __m512d x_hi = _mm512_load_pd(x + k + 8);
    for (int j = 0; j < NR; ++j) {
      const __m512 f = weights16<F, kUnfolded>(rows[j], k, n, scales[j], table);
      const __m256 f_hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1));
      lo[j] = _mm512_fmadd_pd(x_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(f)), lo[j]);
      hi[j] = _mm512_fmadd_pd(x_hi, _mm512_cvtps_pd(f_hi), hi[j]);
    }
  }
  __m512d v[8];
  for (int p = 0; p < 8; ++p) v[p] = p < NR ? _mm512_add_pd(lo[p], hi[p]) : _mm512_setzero_pd();
  return reduce8(v);
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
  const __m512 table = _mm512_loadu_ps(fp4_e2m1_table());
  __m512 scales[NR];
  __m256 result;
  if constexpr (F == WeightFormat::kFP8 || F == WeightFormat::kFP4) {
    // quant_linear: the K tile is the scale block (128 for FP8, 32 for FP4).
    const int64_t scale_cols = F == WeightFormat::kFP8 ? (in + 127) / 128 : in / 32;
    result = _mm256_setzero_ps();
    for (int64_t b = 0, k0 = 0; k0 < in; ++b, k0 += t.tile) {
      bool folds = true;
      for (int j = 0; j < NR; ++j) {
        const int64_t block_row = F == WeightFormat::kFP8 ? (r + j) / 128 : r + j;
        const float scale = weight_block_scale(w, block_row * scale_cols + b);
        folds = folds && fp8_scale_folds(scale);
        scales[j] = _mm512_set1_ps(F == WeightFormat::kFP8 ? scale * 256.0f : scale);
      }
      const int64_t len = std::min(t.tile, in - k0);
      __m512d sums;
      if (F != WeightFormat::kFP8 || folds) {
        sums = gemv_tile<F, NR, false>(rows, t.xd, k0, len, scales, table);
      } else {
        for (int j = 0; j < NR; ++j)
          scales[j] =
              _mm512_set1_ps(weight_block_scale(w, ((r + j) / 128) * scale_cols + b));  // unfolded
        sums = gemv_tile<F, NR, true>(rows, t.xd, k0, len, scales, table);
      }
      result = _mm256_add_ps(result, _mm512_cvtpd_ps(sums));
    }
  } else {
    for (int j = 0; j < NR; ++j) scales[j] = _mm512_set1_ps(1.0f);
    result = _mm512_cvtpd_ps(gemv_tile<F, NR, false>(rows, t.xd, 0, in, scales, table));
  }
  store_results(t, result, 1, NR, 0, r);
}

// ---- FP4 with E8M0 scales, m = 1, on CPUs with AVX512-VBMI. ----
//
// Every e2m1 value, as a double, has all its set bits in the top two bytes
// (sign, exponent, one mantissa bit). So a tile of 32 codes becomes doubles
// with two byte-table lookups (vpshufb: code → byte 6, code → byte 7) and one
// two-source byte permute per 8 weights (vpermi2b, zeroing bytes 0..5) —
// no float step and no per-weight scaling. As with FP8, the scale multiplies
// the exact tile sum Σ x·q instead of each weight: equal to the scalar
// Σ x·(q·s) while q·s is exact in float (s ≤ 2^125: 6·2^125 < 2^128).
#define DSV4_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")))

constexpr uint8_t kMaxFoldedFp4Scale = 127 + 125;

// Byte 6 and byte 7 of the double value of each e2m1 code (0..15).
constexpr uint8_t kFp4Byte6[16] = {0x00, 0xE0, 0xF0, 0xF8, 0x00, 0x08, 0x10, 0x18,
                                   0x00, 0xE0, 0xF0, 0xF8, 0x00, 0x08, 0x10, 0x18};
constexpr uint8_t kFp4Byte7[16] = {0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40,
                                   0x80, 0xBF, 0xBF, 0xBF, 0xC0, 0xC0, 0xC0, 0xC0};

struct Fp4Permutes {
  // idx[c]: for the 8 weights 8c..8c+7 of a tile, byte 6 of qword j takes
  // table byte pos(8c+j) and byte 7 takes byte 64 + pos(8c+j), where the
  // nibble vector holds the low nibbles (even weights) in bytes 0..15 and the
  // high nibbles (odd weights) in bytes 16..31.
  alignas(64) uint8_t idx[4][64];
  constexpr Fp4Permutes() : idx{} {
    for (int c = 0; c < 4; ++c)
      for (int j = 0; j < 8; ++j) {
        const int w = 8 * c + j;
        const int pos = (w & 1) ? 16 + w / 2 : w / 2;
        idx[c][8 * j + 6] = static_cast<uint8_t>(pos);
        idx[c][8 * j + 7] = static_cast<uint8_t>(64 + pos);
      }
  }
};
constexpr Fp4Permutes kFp4Permutes;

// The same for a pair of tiles (64 weights, 32 bytes): low nibbles in bytes
// 0..31, high nibbles in bytes 32..63 of the nibble vector.
struct Fp4PairPermutes {
  alignas(64) uint8_t idx[8][64];
  constexpr Fp4PairPermutes() : idx{} {
    for (int c = 0; c < 8; ++c)
      for (int j = 0; j < 8; ++j) {
        const int w = 8 * c + j;
        const int pos = (w & 1) ? 32 + w / 2 : w / 2;
        idx[c][8 * j + 6] = static_cast<uint8_t>(pos);
        idx[c][8 * j + 7] = static_cast<uint8_t>(64 + pos);
      }
  }
};
constexpr Fp4PairPermutes kFp4PairPermutes;

// Two consecutive tiles at once: one load and one table lookup per 64
// weights instead of per 32. Returns the tile sums of both (lane j = row j).
template <int NR>
DSV4_VBMI inline void fp4_e8m0_tile_pair(const uint8_t* const* tiles, const double* x,
                                         const __m512i* idx, __m512i byte6, __m512i byte7,
                                         __m512d* sums_a, __m512d* sums_b) {
  const __m512i shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __mmask64 top2 = 0xC0C0C0C0C0C0C0C0ull;
  __m512d va[8], vb[8];
  for (int p = NR; p < 8; ++p) va[p] = vb[p] = _mm512_setzero_pd();
  for (int j = 0; j < NR; ++j) {
    const __m512i b =
        _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tiles[j])));
    const __m512i nibbles = _mm512_and_si512(_mm512_srlv_epi64(b, shifts), low4);
    const __m512i p6 = _mm512_shuffle_epi8(byte6, nibbles);
    const __m512i p7 = _mm512_shuffle_epi8(byte7, nibbles);
    __m512d acc_a = _mm512_setzero_pd(), acc_b = _mm512_setzero_pd();
    for (int c = 0; c < 4; ++c) {
      const __m512d w_a = _mm512_castsi512_pd(_mm512_maskz_permutex2var_epi8(top2, p6, idx[c], p7));
      const __m512d w_b =
          _mm512_castsi512_pd(_mm512_maskz_permutex2var_epi8(top2, p6, idx[c + 4], p7));
      acc_a = _mm512_fmadd_pd(_mm512_load_pd(x + 8 * c), w_a, acc_a);
      acc_b = _mm512_fmadd_pd(_mm512_load_pd(x + 32 + 8 * c), w_b, acc_b);
    }
    va[j] = acc_a;
    vb[j] = acc_b;
  }
  *sums_a = reduce8(va);
  *sums_b = reduce8(vb);
}

template <int NR>
DSV4_VBMI inline __m512d fp4_e8m0_tile(const uint8_t* const* tiles, const double* x,
                                       const __m512i* idx, __m512i byte6, __m512i byte7) {
  // Lanes 0 and 2 keep the low nibbles, lanes 1 and 3 the high nibbles.
  const __m512i shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __mmask64 top2 = 0xC0C0C0C0C0C0C0C0ull;
  __m512d v[8];
  for (int p = NR; p < 8; ++p) v[p] = _mm512_setzero_pd();
  for (int j = 0; j < NR; ++j) {
    const __m512i b =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tiles[j])));
    const __m512i nibbles = _mm512_and_si512(_mm512_srlv_epi64(b, shifts), low4);
    const __m512i p6 = _mm512_shuffle_epi8(byte6, nibbles);
    const __m512i p7 = _mm512_shuffle_epi8(byte7, nibbles);
    __m512d w[4];
    for (int c = 0; c < 4; ++c)
      w[c] = _mm512_castsi512_pd(_mm512_maskz_permutex2var_epi8(top2, p6, idx[c], p7));
    // One accumulator per row: with E8M0 scales the tile sum is exact in any
    // order (docs/kernels.md), so the lanes need not follow linear_dot_f64.
    __m512d acc = _mm512_mul_pd(_mm512_load_pd(x), w[0]);
    for (int c = 1; c < 4; ++c) acc = _mm512_fmadd_pd(_mm512_load_pd(x + 8 * c), w[c], acc);
    v[j] = acc;
  }
  return reduce8(v);
}

// Packed codes and E8M0 scale bytes of FP4 weight rows r .. r + n - 1.
inline void fp4_rows_and_scales(const WeightRef& w, int64_t r, int n, const uint8_t** rows,
                                const uint8_t** scales) {
  const int64_t in = w.in;
  for (int j = 0; j < n; ++j) {
    rows[j] = static_cast<const uint8_t*>(w.data) + (r + j) * (in / 2);
    scales[j] = static_cast<const uint8_t*>(w.scale) + (r + j) * (in / 32);
  }
}

template <int NR>
DSV4_VBMI void gemv_rows_fp4_e8m0(const LinearTask& t, int64_t r) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in, scale_cols = in / 32;
  const uint8_t* rows[NR];
  const uint8_t* scales[NR];
  fp4_rows_and_scales(w, r, NR, rows, scales);
  __m512i idx[4];
  for (int c = 0; c < 4; ++c) idx[c] = _mm512_load_si512(kFp4Permutes.idx[c]);
  const __m512i byte6 =
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Byte6)));
  const __m512i byte7 =
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Byte7)));
  const __m512 table = _mm512_loadu_ps(fp4_e2m1_table());
  __m512i pair_idx[8];
  for (int c = 0; c < 8; ++c) pair_idx[c] = _mm512_load_si512(kFp4PairPermutes.idx[c]);
  __m256 result = _mm256_setzero_ps();
  for (int64_t b = 0; b < scale_cols; ++b) {
    if (b + 1 < scale_cols) {  // two tiles at once when both scales fold
      alignas(64) int64_t bits_a[8] = {}, bits_b[8] = {};
      bool exact = true;
      const uint8_t* tiles[NR];
      for (int j = 0; j < NR; ++j) {
        const uint8_t ea = scales[j][b], eb = scales[j][b + 1];
        exact = exact && ea <= kMaxFoldedFp4Scale && eb <= kMaxFoldedFp4Scale;
        bits_a[j] = static_cast<int64_t>(ea + 896) << 52;
        bits_b[j] = static_cast<int64_t>(eb + 896) << 52;
        tiles[j] = rows[j] + b * 16;
      }
      if (exact) {
        __m512d sums_a, sums_b;
        fp4_e8m0_tile_pair<NR>(tiles, t.xd + b * 32, pair_idx, byte6, byte7, &sums_a, &sums_b);
        result = _mm256_add_ps(
            result,
            _mm512_cvtpd_ps(_mm512_mul_pd(sums_a, _mm512_castsi512_pd(_mm512_load_si512(bits_a)))));
        result = _mm256_add_ps(
            result,
            _mm512_cvtpd_ps(_mm512_mul_pd(sums_b, _mm512_castsi512_pd(_mm512_load_si512(bits_b)))));
        ++b;
        continue;
      }
    }
    alignas(64) int64_t scale_bits[8] = {};
    bool exact = true;
    const uint8_t* tiles[NR];
    for (int j = 0; j < NR; ++j) {
      const uint8_t e = scales[j][b];
      exact = exact && e <= kMaxFoldedFp4Scale;
      scale_bits[j] = static_cast<int64_t>(e + 896) << 52;  // 2^(e - 127) as a double
      tiles[j] = rows[j] + b * 16;
    }
    __m512d sums;
    if (exact) {
      sums = _mm512_mul_pd(fp4_e8m0_tile<NR>(tiles, t.xd + b * 32, idx, byte6, byte7),
                           _mm512_castsi512_pd(_mm512_load_si512(scale_bits)));
    } else {  // huge or NaN scale: decode to floats exactly as dequant_row does
      __m512 s[NR];
      for (int j = 0; j < NR; ++j)
        s[j] = _mm512_set1_ps(weight_block_scale(w, (r + j) * scale_cols + b));
      sums = gemv_tile<WeightFormat::kFP4, NR, false>(rows, t.xd, b * 32, 32, s, table);
    }
    result = _mm256_add_ps(result, _mm512_cvtpd_ps(sums));
  }
  store_results(t, result, 1, NR, 0, r);
}

DSV4_VBMI void gemv_fp4_e8m0(const LinearTask& t, int64_t r0, int64_t r1) {
  using RowsFn = void (*)(const LinearTask&, int64_t);
  static constexpr RowsFn kTails[kGemvRows] = {
      gemv_rows_fp4_e8m0<1>, gemv_rows_fp4_e8m0<2>, gemv_rows_fp4_e8m0<3>, gemv_rows_fp4_e8m0<4>,
      gemv_rows_fp4_e8m0<5>, gemv_rows_fp4_e8m0<6>, gemv_rows_fp4_e8m0<7>, gemv_rows_fp4_e8m0<8>};
  for_row_groups(r0, r1, [&](int n, int64_t r) { kTails[n - 1](t, r); });
}

std::atomic<bool> g_vbmi_allowed{true};

bool use_vbmi() {
  static const bool has = (__builtin_cpu_init(), __builtin_cpu_supports("avx512vbmi") != 0);
  return has && g_vbmi_allowed.load(std::memory_order_relaxed);
}

template <WeightFormat F>
void gemv(const LinearTask& t, int64_t r0, int64_t r1) {
  using RowsFn = void (*)(const LinearTask&, int64_t);
  static constexpr RowsFn kTails[kGemvRows] = {gemv_rows<F, 1>, gemv_rows<F, 2>, gemv_rows<F, 3>,
                                               gemv_rows<F, 4>, gemv_rows<F, 5>, gemv_rows<F, 6>,
                                               gemv_rows<F, 7>, gemv_rows<F, 8>};
  for_row_groups(r0, r1, [&](int n, int64_t r) { kTails[n - 1](t, r); });
}

// ---- FP4 with E8M0 scales, m = 1, on CPUs with AVX512-VNNI: integer sums, rows read in order.
//
// A tile's sum Σ x·q (q the e2m1 values) is exact in any order (docs/kernels.md), so it can be
// computed in integers: within a tile every activation is an integer multiple X of one power of
// two 2^u (the smallest set bit among them), every 2q is an integer in [-12, 12], and
// Σ x·q = 2^(u-1)·Σ X·2q exactly. vpdpbusd multiplies unsigned by signed bytes (four products
// per 32-bit lane): the weights enter as 2q + 12 (0..24, a vpshufb table), the activations as
// signed base-256 digits X = d0 + 2^8·d1 + 2^16·d2 (one to three planes, as many as the group's
// largest |X| needs; the third only in the chunks whose tiles need it: Gaussian activations
// need it in a quarter of the groups but a few percent of the chunks, so this took a 2048×4096
// matrix from 0.183–0.198 to 0.162–0.174 ms on one thread), and
// Σ X·2q = Σ X·(2q + 12) − 12·ΣX, the last term prepared once per call.
// |X| < 2^21 keeps every int32 partial sum below 2^31.
//
// Layout: one 64-byte load of a weight row is a chunk of 128 elements (4 tiles); its low
// nibbles are the even elements, its high nibbles the odd ones, and the digit planes are laid
// out the same way, so both halves add into one accumulator whose 128-bit lane t holds tile t.
// Four chunks (a group of 16 tiles) reduce to one vector of 16 tile sums with three
// unpack-and-add steps. Each row is read front to back (one sequential stream per thread: the
// fastest read pattern measured here) and its tile sums, scaled to fp32, go to a small buffer;
// every 16 rows the buffer is transposed so that the ascending-K fp32 sums run with one row per
// lane. The tile sum S·2^(u−1+e−127) rounds to fp32 as float(S)·2^(u−1+e−127) while that
// power of two keeps every |S| < 2^31 a normal float; a row with a scale outside that range
// (or past 2^125, a NaN scale) is recomputed by the double paths, as is a call whose
// activations do not fit (non-finite, fp32 subnormal, |X| ≥ 2^21 — fake-quantized FP8 stays
// below 2^18).
#define DSV4_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

constexpr int kVnniMaxBits = 21;

std::atomic<bool> g_vnni_allowed{true};

bool use_vnni() {
  static const bool has = (__builtin_cpu_init(), __builtin_cpu_supports("avx512vnni") != 0);
  return has && g_vnni_allowed.load(std::memory_order_relaxed);
}

constexpr int64_t kVecChunk = 128;              // elements per 64-byte weight load
constexpr int64_t kVecGroup = 4 * kVecChunk;    // 16 tiles: one vector of tile sums
constexpr int64_t kVecChunkBytes = 3 * 2 * 64;  // digit planes × (even, odd) × 64
// Software prefetch distance of the row stream (session 6: 2 KB 17.6–18.0 GB/s, 4 KB 19.8–20.2,
// 8 KB 18.8–20.6, none 14–15 on one thread; session 7, alternating: w1 4 KB 0.205–0.209 ms,
// 6 KB 0.178–0.193, 8 KB 0.181–0.183, 12 KB 0.187–0.189).
constexpr int64_t kVecPrefetch = 8192;
// Groups per step of a row: 2 gave 18-19.6 GB/s, 1 14.8-15.4, 3 19.2-19.7, 4 15.8-16.8
// (w1, one thread).
constexpr int kVecPair = 2;
constexpr int kVecRows = 16;  // rows per transposed block

// Lane of tile k (0..15) of a group after the reduction: chunk j = k / 4 lands in position j of
// 128-bit lane k % 4.
constexpr int vec_lane(int k) {
  return 4 * (k % 4) + k / 4;
}

}  // namespace

int64_t fp4_vec_bytes(int64_t in) {
  const int64_t groups = (in + kVecGroup - 1) / kVecGroup;
  return groups * (4 * kVecChunkBytes + 16 * 4 * 2 + 1 + 4) + 64;
}

namespace {

// Sets X (the integers over 2^u), its magnitude and the lane mask of nonzero values for 16
// activations v, and returns each lane's lowest set bit exponent (INT32_MAX where v = ±0).
// `bad` collects lanes that are not finite or are fp32 subnormals.
DSV4_VNNI inline __m512i lowest_set_bits(__m512 v, __mmask16* nonzero, __mmask16* bad) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i mag = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i exp = _mm512_srli_epi32(mag, 23);
  *nonzero = _mm512_test_epi32_mask(mag, mag);
  *bad |= _mm512_mask_cmpeq_epi32_mask(*nonzero, exp, _mm512_setzero_si512()) |
          _mm512_cmpeq_epi32_mask(exp, _mm512_set1_epi32(255));
  const __m512i mant = _mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFF)),
                                       _mm512_set1_epi32(0x800000));
  // The lowest set bit as a power of two, converted exactly to float: its exponent field.
  const __m512i low = _mm512_and_si512(mant, _mm512_sub_epi32(_mm512_setzero_si512(), mant));
  const __m512i tz = _mm512_sub_epi32(
      _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(low)), 23), _mm512_set1_epi32(127));
  const __m512i lsb = _mm512_add_epi32(_mm512_sub_epi32(exp, _mm512_set1_epi32(150)), tz);
  return _mm512_mask_mov_epi32(_mm512_set1_epi32(INT32_MAX), *nonzero, lsb);
}

// |X| = mantissa × 2^(exp − 150 − u) for the nonzero lanes (0 elsewhere); `bad` gets lanes
// with |X| ≥ 2^21, i.e. exp − 150 − u > −3 (the mantissa's top bit is bit 23).
DSV4_VNNI inline __m512i tile_integer_values(__m512 v, __mmask16 nonzero, __m512i u,
                                             __mmask16* bad) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i exp = _mm512_and_si512(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(0xFF));
  const __m512i d = _mm512_sub_epi32(_mm512_sub_epi32(exp, _mm512_set1_epi32(150)), u);
  *bad |= _mm512_mask_cmpgt_epi32_mask(nonzero, d, _mm512_set1_epi32(kVnniMaxBits - 24));
  const __m512i mant = _mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFF)),
                                       _mm512_set1_epi32(0x800000));
  const __m512i mag = _mm512_srlv_epi32(mant, _mm512_sub_epi32(_mm512_setzero_si512(), d));
  const __m512i x = _mm512_mask_sub_epi32(
      mag, _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512()), _mm512_setzero_si512(), mag);
  return _mm512_maskz_mov_epi32(nonzero, x);
}

// Stores the signed base-256 digits of X (three planes) as bytes at dst, dst + 128, dst + 256.
DSV4_VNNI inline void store_digits(__m512i x, int8_t* dst) {
  const __m512i d0 = _mm512_srai_epi32(_mm512_slli_epi32(x, 24), 24);
  const __m512i x1 = _mm512_srai_epi32(_mm512_sub_epi32(x, d0), 8);
  const __m512i d1 = _mm512_srai_epi32(_mm512_slli_epi32(x1, 24), 24);
  const __m512i d2 = _mm512_srai_epi32(_mm512_sub_epi32(x1, d1), 8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(d0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 128), _mm512_cvtepi32_epi8(d1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 256), _mm512_cvtepi32_epi8(d2));
}

DSV4_VNNI bool prepare_fp4_vec_impl(const float* x, int64_t in, Fp4VecActs* a, uint8_t* buffer) {
  const int64_t tiles = in / 32, groups = (in + kVecGroup - 1) / kVecGroup;
  a->tiles = tiles;
  a->groups = groups;
  uint8_t* p =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buffer) + 63) & ~uintptr_t{63});
  a->digits = reinterpret_cast<int8_t*>(p);
  a->unit = reinterpret_cast<int32_t*>(p + groups * 4 * kVecChunkBytes);
  a->bias = a->unit + groups * 16;
  a->planes = reinterpret_cast<uint8_t*>(a->bias + groups * 16);
  a->third = a->planes + groups;
  // The last group's missing tiles: zero digits, unit and bias.
  const int64_t last = (groups - 1) * 16;
  std::memset(a->digits + last / 4 * kVecChunkBytes, 0, 4 * kVecChunkBytes);
  std::memset(a->unit + last, 0, 16 * 4);
  std::memset(a->bias + last, 0, 16 * 4);
  std::memset(a->planes, 1, static_cast<size_t>(groups));
  std::memset(a->third, 0, static_cast<size_t>(groups) * 4);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t t = 0; t < tiles; ++t) {
    const __m512 lo = _mm512_loadu_ps(x + 32 * t), hi = _mm512_loadu_ps(x + 32 * t + 16);
    const __m512 ve = _mm512_permutex2var_ps(lo, even, hi),
                 vo = _mm512_permutex2var_ps(lo, odd, hi);
    __mmask16 nze, nzo, bad = 0;
    const __m512i lsb =
        _mm512_min_epi32(lowest_set_bits(ve, &nze, &bad), lowest_set_bits(vo, &nzo, &bad));
    int32_t u = _mm512_reduce_min_epi32(lsb);
    if ((nze | nzo) == 0) u = 0;
    const __m512i uv = _mm512_set1_epi32(u);
    const __m512i xe = tile_integer_values(ve, nze, uv, &bad);
    const __m512i xo = tile_integer_values(vo, nzo, uv, &bad);
    if (bad != 0 || u < -1000 || u > 1000) return false;
    const int32_t max_abs =
        _mm512_reduce_max_epi32(_mm512_max_epi32(_mm512_abs_epi32(xe), _mm512_abs_epi32(xo)));
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(xe, xo));
    const int64_t g = t / 16, k = t % 16, chunk = t / 4;
    int8_t* d = a->digits + chunk * kVecChunkBytes + 16 * (t % 4);
    store_digits(xe, d);
    store_digits(xo, d + 64);
    a->unit[g * 16 + vec_lane(static_cast<int>(k))] = u - 1;
    a->unit_min = t == 0 ? u - 1 : std::min(a->unit_min, u - 1);
    a->unit_max = t == 0 ? u - 1 : std::max(a->unit_max, u - 1);
    a->bias[g * 16 + vec_lane(static_cast<int>(k))] = 12 * sum;
    // One digit holds [-128, 127]; two hold [-32896, 32639].
    const uint8_t need = max_abs <= 127 ? 1 : max_abs <= 32639 ? 2 : 3;
    a->planes[g] = std::max(a->planes[g], need);
    if (need == 3) a->third[chunk] = 1;
  }
  return true;
}

// A weight row that starts `delta` bytes past a 64-byte boundary (checkpoint tensors sit at
// any offset the safetensors header leaves): a 64-byte load from it spans two cache lines,
// which made the kernel 1.2x slower (2048×4096, in cache, one thread: 0.139 ms at offset 20,
// 0.115 at 0). With delta a multiple of 4, kShift reads whole lines instead and joins each pair
// with one two-source dword permute (idx: delta / 4 + 0..15).
struct RowShift {
  int64_t delta = 0;
  __m512i idx;
};

// Σ X·(2q + 12) of one 128-element chunk (64 weight bytes at w; kTail: only `bytes` of them
// belong to the row) for NP digit planes; 128-bit lane t holds tile t of the chunk. The planes
// run as independent chains, joined by shifts at the end. NP = 3: the third plane only where
// `third` (a group needs three planes for its widest tile, and few tiles are that wide).
template <int NP, bool kTail, bool kShift>
DSV4_VNNI inline __m512i fp4_vec_chunk(const uint8_t* w, const int8_t* d, int64_t bytes, bool third,
                                       const RowShift& shift) {
  const __m512i table =
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4TwicePlus12)));
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512i raw;
  if constexpr (kTail) {
    const int64_t n = std::clamp<int64_t>(bytes, 0, 64);
    raw = _mm512_maskz_loadu_epi8(n == 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1, w);
  } else if constexpr (kShift) {
    _mm_prefetch(reinterpret_cast<const char*>(w + kVecPrefetch), _MM_HINT_T0);
    const uint8_t* line = w - shift.delta;
    raw =
        _mm512_permutex2var_epi32(_mm512_load_si512(line), shift.idx, _mm512_load_si512(line + 64));
  } else {
    _mm_prefetch(reinterpret_cast<const char*>(w + kVecPrefetch), _MM_HINT_T0);
    raw = _mm512_loadu_si512(w);
  }
  const __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(raw, low4));
  const __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4));
  auto plane = [&](int p) {
    return _mm512_dpbusd_epi32(
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_load_si512(d + 128 * p)), hi,
        _mm512_load_si512(d + 128 * p + 64));
  };
  const __m512i p0 = plane(0);
  if constexpr (NP == 1) return p0;
  const __m512i sum = _mm512_add_epi32(_mm512_slli_epi32(plane(1), 8), p0);
  if (NP == 2 || !third) return sum;
  return _mm512_add_epi32(_mm512_slli_epi32(plane(2), 16), sum);
}

// The 16 fp32 tile values (lane order vec_lane) of NG consecutive groups of one row (at w and
// s), NP digit planes, stored at out. kTail: one group, the row's last and partial one
// (`tail_bytes` of it belong to the row, `scale_mask` selects its tiles' scale bytes and
// `valid` their lanes). kCheck: `unfit` gets the lanes whose scale is NaN, past 2^125 or takes
// the tile sum outside the range where the fp32 scaling is exact (rows whose scales are all
// inside it skip the check).
template <int NP, int NG, bool kTail, bool kCheck, bool kShift>
DSV4_VNNI inline void fp4_vec_groups(const uint8_t* w, const uint8_t* s, const Fp4VecActs& a,
                                     int64_t g, int64_t tail_bytes, __mmask16 scale_mask,
                                     __mmask16 valid, const RowShift& shift, __mmask16* unfit,
                                     float* out) {
  // All chunks of the NG groups first: 4·NG independent chains in flight.
  __m512i acc[4 * NG];
  for (int c = 0; c < 4 * NG; ++c)
    acc[c] = fp4_vec_chunk<NP, kTail, kShift>(w + 64 * c, a.digits + (g * 4 + c) * kVecChunkBytes,
                                              tail_bytes - 64 * c, a.third[g * 4 + c] != 0, shift);
  // The scale bytes in lane order: lane 4t + j takes tile 4j + t.
  const __m128i order = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (int h = 0; h < NG; ++h) {
    const __m512i* q = acc + 4 * h;
    const __m512i ab =
        _mm512_add_epi32(_mm512_unpacklo_epi32(q[0], q[1]), _mm512_unpackhi_epi32(q[0], q[1]));
    const __m512i cd =
        _mm512_add_epi32(_mm512_unpacklo_epi32(q[2], q[3]), _mm512_unpackhi_epi32(q[2], q[3]));
    __m512i sums = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    sums = _mm512_sub_epi32(sums, _mm512_load_si512(a.bias + (g + h) * 16));
    const __m128i raw_scales = kTail
                                   ? _mm_maskz_loadu_epi8(scale_mask, s)
                                   : _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * h));
    const __m512i e = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(raw_scales, order));
    // u − 1 + e − 127 + 127: the fp32 exponent field of the tile's factor.
    const __m512i biased = _mm512_add_epi32(e, _mm512_load_si512(a.unit + (g + h) * 16));
    if constexpr (kCheck)
      *unfit |= _mm512_mask_cmpgt_epi32_mask(valid, e, _mm512_set1_epi32(kMaxFoldedFp4Scale)) |
                _mm512_mask_cmplt_epi32_mask(valid, biased, _mm512_set1_epi32(1)) |
                _mm512_mask_cmpgt_epi32_mask(valid, biased, _mm512_set1_epi32(127 + 96));
    _mm512_store_ps(out + 16 * h,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(sums),
                                  _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23))));
  }
}

// The 16 × 16 floats r[i] (row i) transposed in place: r[j] becomes column j.
DSV4_VNNI inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4b + c], 128-bit lane k: rows 4b .. 4b + 3 of column 4k + c.
  for (int b = 0; b < 4; ++b) {
    u[4 * b] = _mm512_shuffle_ps(t[4 * b], t[4 * b + 2], 0x44);
    u[4 * b + 1] = _mm512_shuffle_ps(t[4 * b], t[4 * b + 2], 0xEE);
    u[4 * b + 2] = _mm512_shuffle_ps(t[4 * b + 1], t[4 * b + 3], 0x44);
    u[4 * b + 3] = _mm512_shuffle_ps(t[4 * b + 1], t[4 * b + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// NG whole groups from group g with the planes they need.
template <int NG, bool kCheck, bool kShift>
DSV4_VNNI inline void fp4_vec_full_groups(const Fp4VecActs& a, const uint8_t* wr, const uint8_t* sr,
                                          int64_t g, const RowShift& shift, __mmask16* unfit,
                                          float* out) {
  const uint8_t* w = wr + g * (kVecGroup / 2);
  uint8_t planes = a.planes[g];
  for (int h = 1; h < NG; ++h) planes = std::max(planes, a.planes[g + h]);
  switch (planes) {
    case 1:
      return fp4_vec_groups<1, NG, false, kCheck, kShift>(w, sr + g * 16, a, g, 0, 0, 0xFFFF, shift,
                                                          unfit, out + g * 16);
    case 2:
      return fp4_vec_groups<2, NG, false, kCheck, kShift>(w, sr + g * 16, a, g, 0, 0, 0xFFFF, shift,
                                                          unfit, out + g * 16);
    default:
      return fp4_vec_groups<3, NG, false, kCheck, kShift>(w, sr + g * 16, a, g, 0, 0, 0xFFFF, shift,
                                                          unfit, out + g * 16);
  }
}

// One row's tile values: groups in pairs (eight chunk chains in flight: measured 1.3x faster
// than one group at a time), then the rest.
template <bool kCheck, bool kShift>
DSV4_VNNI inline void fp4_vec_row(const Fp4VecActs& a, const uint8_t* wr, const uint8_t* sr,
                                  int64_t full, int64_t tail_bytes, __mmask16 scale_mask,
                                  __mmask16 tail_valid, const RowShift& shift, __mmask16* unfit,
                                  float* out) {
  int64_t g = 0;
  for (; g + kVecPair <= full; g += kVecPair)
    fp4_vec_full_groups<kVecPair, kCheck, kShift>(a, wr, sr, g, shift, unfit, out);
  for (; g < full; ++g) fp4_vec_full_groups<1, kCheck, kShift>(a, wr, sr, g, shift, unfit, out);
  if (g < a.groups) {  // the partial last group
    const uint8_t* w = wr + g * (kVecGroup / 2);
    switch (a.planes[g]) {
      case 1:
        return fp4_vec_groups<1, 1, true, true, false>(w, sr + g * 16, a, g, tail_bytes, scale_mask,
                                                       tail_valid, shift, unfit, out + g * 16);
      case 2:
        return fp4_vec_groups<2, 1, true, true, false>(w, sr + g * 16, a, g, tail_bytes, scale_mask,
                                                       tail_valid, shift, unfit, out + g * 16);
      default:
        return fp4_vec_groups<3, 1, true, true, false>(w, sr + g * 16, a, g, tail_bytes, scale_mask,
                                                       tail_valid, shift, unfit, out + g * 16);
    }
  }
}

// Whether every tile of the rows whose scale bytes are the `count` bytes at sr scales exactly
// in fp32 (then those rows need no per-tile check): e ≤ 2^125 and u − 1 + e within [1, 223]
// for every unit u − 1 of the call.
DSV4_VNNI inline bool fp4_scales_fit(const Fp4VecActs& a, const uint8_t* sr, int64_t count) {
  __m512i lo = _mm512_set1_epi8(static_cast<char>(0xFF)), hi = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= count; k += 64) {
    const __m512i v = _mm512_loadu_si512(sr + k);
    lo = _mm512_min_epu8(lo, v);
    hi = _mm512_max_epu8(hi, v);
  }
  if (k < count) {
    const __mmask64 m = (__mmask64{1} << (count - k)) - 1;
    lo = _mm512_mask_min_epu8(lo, m, lo, _mm512_maskz_loadu_epi8(m, sr + k));
    hi = _mm512_max_epu8(hi, _mm512_maskz_loadu_epi8(m, sr + k));
  }
  // Bytes to 16-bit lanes, then the horizontal extremes.
  const int emin = _mm512_reduce_min_epu32(_mm512_cvtepu8_epi32(_mm_min_epu8(
      _mm_min_epu8(_mm512_castsi512_si128(lo), _mm512_extracti32x4_epi32(lo, 1)),
      _mm_min_epu8(_mm512_extracti32x4_epi32(lo, 2), _mm512_extracti32x4_epi32(lo, 3)))));
  const int emax = _mm512_reduce_max_epu32(_mm512_cvtepu8_epi32(_mm_max_epu8(
      _mm_max_epu8(_mm512_castsi512_si128(hi), _mm512_extracti32x4_epi32(hi, 1)),
      _mm_max_epu8(_mm512_extracti32x4_epi32(hi, 2), _mm512_extracti32x4_epi32(hi, 3)))));
  return emax <= kMaxFoldedFp4Scale && a.unit_min + emin >= 1 && a.unit_max + emax <= 127 + 96;
}

// Rows [r, r + n) (n ≤ 16) of the call; buf holds 16 rows of per-group tile values.
DSV4_VNNI void gemv_fp4_vec_rows(const LinearTask& t, int64_t r, int n, float* buf) {
  const Fp4VecActs& a = *t.fp4_vec;
  const WeightRef& w = *t.w;
  const int64_t row_bytes = w.in / 2, groups = a.groups;
  const int64_t full = w.in / kVecGroup;  // groups wholly inside a row
  const int tail_tiles = static_cast<int>(a.tiles - full * 16);
  const int64_t tail_bytes = row_bytes - full * (kVecGroup / 2);
  const auto scale_mask = static_cast<__mmask16>((1u << tail_tiles) - 1);
  __mmask16 tail_valid = 0;
  for (int k = 0; k < tail_tiles; ++k) tail_valid |= static_cast<__mmask16>(1u << vec_lane(k));
  uint32_t unfit_rows = 0;
  // One check for the block's scales (they are contiguous); the rows of a block that fails it
  // are checked one by one.
  const uint8_t* scales = static_cast<const uint8_t*>(w.scale) + r * a.tiles;
  const bool block_fits = fp4_scales_fit(a, scales, n * a.tiles);
  for (int i = 0; i < n; ++i) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + (r + i) * row_bytes;
    const uint8_t* sr = scales + i * a.tiles;
    // The scale bytes are a second, slower stream: fetch the next block's before its check.
    for (int64_t k = 0; k < a.tiles; k += 64)
      _mm_prefetch(reinterpret_cast<const char*>(sr + kVecRows * a.tiles + k), _MM_HINT_T0);
    __mmask16 unfit = 0;
    RowShift shift;
    shift.delta = static_cast<int64_t>(reinterpret_cast<uintptr_t>(wr) % 64);
    shift.idx =
        _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(static_cast<int>(shift.delta / 4)));
    const bool shifted = shift.delta != 0 && shift.delta % 4 == 0;
    float* out = buf + i * groups * 16;
    const bool fits = block_fits || fp4_scales_fit(a, sr, a.tiles);
    if (fits && shifted)
      fp4_vec_row<false, true>(a, wr, sr, full, tail_bytes, scale_mask, tail_valid, shift, &unfit,
                               out);
    else if (fits)
      fp4_vec_row<false, false>(a, wr, sr, full, tail_bytes, scale_mask, tail_valid, shift, &unfit,
                                out);
    else if (shifted)
      fp4_vec_row<true, true>(a, wr, sr, full, tail_bytes, scale_mask, tail_valid, shift, &unfit,
                              out);
    else
      fp4_vec_row<true, false>(a, wr, sr, full, tail_bytes, scale_mask, tail_valid, shift, &unfit,
                               out);
    if (unfit != 0) unfit_rows |= 1u << i;
  }
  for (int i = n; i < kVecRows; ++i)
    std::memset(buf + i * groups * 16, 0, static_cast<size_t>(groups) * 16 * 4);
  // Tiles in ascending K, one row per lane (the scalar path's fp32 order).
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 col[16];
    for (int i = 0; i < kVecRows; ++i) col[i] = _mm512_load_ps(buf + (i * groups + g) * 16);
    transpose16(col);
    const int count = g < full ? 16 : tail_tiles;
    for (int k = 0; k < count; ++k) acc = _mm512_add_ps(acc, col[vec_lane(k)]);
  }
  alignas(64) float result[16];
  _mm512_store_ps(result, acc);
  for (int i = 0; i < n; ++i) {
    if ((unfit_rows >> i) & 1) {  // a scale the fp32 scaling cannot take: the double paths
      if (use_vbmi())
        gemv_fp4_e8m0(t, r + i, r + i + 1);
      else
        gemv<WeightFormat::kFP4>(t, r + i, r + i + 1);
      continue;
    }
    t.y[r + i - t.row_begin] = t.round_bf16 ? bf16_round(result[i]) : result[i];
  }
}

void gemv_fp4_vec(const LinearTask& t, int64_t r0, int64_t r1) {
  float* buf = reinterpret_cast<float*>(thread_scratch(kVecRows * t.fp4_vec->groups * 16 / 2, 1));
  for (int64_t r = r0; r < r1; r += kVecRows)
    gemv_fp4_vec_rows(t, r, static_cast<int>(std::min<int64_t>(kVecRows, r1 - r)), buf);
}

// ---- Quantized matrix-matrix: K in chunks, so both operands stay in cache. ----
//
// The only state carried from one K tile to the next is each output's fp32
// accumulator, so K can be cut into chunks of whole tiles: a block of
// kQuantRows weight rows × kQuantChunk columns is decoded (256 KB of
// doubles, L2) and applied to every activation row (whose chunk, 4 KB, stays
// in L1), tiles still added in ascending K.
constexpr int64_t kQuantRows = 64;
constexpr int64_t kQuantChunk = 512;  // a multiple of both tiles (128, 32)

template <int MI, int NR>
void quant_chunk(const LinearTask& t, const double* wbuf, int64_t i0, int64_t j0, int64_t kc,
                 int64_t klen, float* acc, int64_t ld_acc) {
  const int64_t ldx = padded_in(t.w->in);
  const double* xs[MI];
  const double* ws[NR];
  for (int i = 0; i < MI; ++i) xs[i] = t.xd + (i0 + i) * ldx;
  for (int j = 0; j < NR; ++j) ws[j] = wbuf + (j0 + j) * kQuantChunk;
  alignas(32) float a[8] = {};
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) a[i * NR + j] = acc[(i0 + i) * ld_acc + j0 + j];
  __m256 result = _mm256_load_ps(a);
  for (int64_t k0 = 0; k0 < klen; k0 += t.tile)
    result = _mm256_add_ps(result, _mm512_cvtpd_ps(tile_sums<MI, NR>(xs, kc + k0, ws, k0,
                                                                     std::min(t.tile, klen - k0))));
  _mm256_store_ps(a, result);
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) acc[(i0 + i) * ld_acc + j0 + j] = a[i * NR + j];
}

using ChunkFn = void (*)(const LinearTask&, const double*, int64_t, int64_t, int64_t, int64_t,
                         float*, int64_t);
constexpr ChunkFn kChunks[kMI][kNR] = {
    {quant_chunk<1, 1>, quant_chunk<1, 2>, quant_chunk<1, 3>, quant_chunk<1, 4>},
    {quant_chunk<2, 1>, quant_chunk<2, 2>, quant_chunk<2, 3>, quant_chunk<2, 4>},
};

void quant_gemm(const LinearTask& t, int64_t r0, int64_t r1) {
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
      for (int64_t i0 = 0; i0 < t.m; i0 += kMI) {
        const int64_t mi = std::min<int64_t>(kMI, t.m - i0);
        for (int64_t j0 = 0; j0 < nrb; j0 += kNR) {
          const int64_t nr = std::min<int64_t>(kNR, nrb - j0);
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

// ---- FP4 with E8M0 scales, m > 1, AVX512-VNNI: integer sums, activation rows in lanes. ----
//
// The same integer tile sums as the matrix-vector path, laid out for reuse: a vector holds 16
// activation rows × 4 consecutive K of one digit plane (prepared once per call,
// prepare_fp4_batch), and vpdpbusd multiplies it by one weight row's 4 values broadcast from
// memory (2q as signed bytes, decoded once per task into a row buffer). Each 32-bit lane then
// accumulates one (activation row, weight row) pair over the tile with no horizontal sum. The
// activations enter as unsigned digits of X + off (off = 2^(8·planes−1), planes chosen per
// 16-row block and tile), so Σ X·2q = Σ (X + off)·2q − off·Σ 2q, the last sum once per weight
// row and tile. |X| < 2^21 keeps every int32 below 2^31. The tile sums convert to double,
// are scaled by 2^(u − 1 + e − 127) per lane and added in fp32 in ascending K, as the scalar
// path does.
constexpr int kBatchLanes = 16;
constexpr int64_t kBatchPlaneBytes = 8 * 64;  // one digit plane of a 16-row × 32-K tile

inline uint8_t* batch_digits(const Fp4BatchActs& a, int64_t b, int64_t t) {
  return a.digits + (b * a.tiles + t) * 3 * kBatchPlaneBytes;
}

// Fills one 16-row block of `a` from rows [i0, i0 + 16) of xd (rows past m are zero). False if a
// value does not fit the integer path.
DSV4_VNNI bool prepare_fp4_batch_block_impl(const LinearTask& t, Fp4BatchActs* a, int64_t b) {
  for (int64_t tile = 0; tile < a->tiles; ++tile) {
    // The tile's integers X per row (as in the matrix-vector layout: lowest set bits, then
    // shifted mantissas), kept as int32 (|X| < 2^21).
    alignas(64) int32_t X[kBatchLanes][32];
    int32_t u_of[kBatchLanes];
    int32_t max_abs = 0;
    for (int i = 0; i < kBatchLanes; ++i) {
      const int64_t row = b * kBatchLanes + i;
      u_of[i] = 0;
      if (row >= t.m) {  // padding rows: zero
        std::fill(X[i], X[i] + 32, 0);
        continue;
      }
      const float* v = t.x + row * t.ldx + tile * 32;
      const __m512 lo = _mm512_loadu_ps(v), hi = _mm512_loadu_ps(v + 16);
      __mmask16 nzl, nzh, bad = 0;
      const __m512i lsb =
          _mm512_min_epi32(lowest_set_bits(lo, &nzl, &bad), lowest_set_bits(hi, &nzh, &bad));
      const int32_t u = (nzl | nzh) == 0 ? 0 : _mm512_reduce_min_epi32(lsb);
      const __m512i xl = tile_integer_values(lo, nzl, _mm512_set1_epi32(u), &bad);
      const __m512i xh = tile_integer_values(hi, nzh, _mm512_set1_epi32(u), &bad);
      if (bad != 0 || u < -1000 || u > 1000) return false;
      _mm512_store_si512(X[i], xl);
      _mm512_store_si512(X[i] + 16, xh);
      max_abs = std::max(max_abs, _mm512_reduce_max_epi32(_mm512_max_epi32(_mm512_abs_epi32(xl),
                                                                           _mm512_abs_epi32(xh))));
      u_of[i] = u;
    }
    // Digits of X + off must be unsigned bytes: off = 2^7 (|X| < 2^7), 2^15, or 2^21.
    const int planes = max_abs < 128 ? 1 : max_abs < 32768 ? 2 : 3;
    const int32_t off = planes == 1 ? 128 : planes == 2 ? 32768 : (int32_t{1} << 21);
    const int64_t bt = b * a->tiles + tile;
    a->planes[bt] = static_cast<uint8_t>(planes);
    a->offset[bt] = off;
    for (int i = 0; i < kBatchLanes; ++i)  // double exponent field of 2^(u − 1 − 127)
      a->unit_bits[bt * kBatchLanes + i] = int64_t{u_of[i]} - 1 - 127 + 1023;
    // Plane p of row i as 8 dwords (4 consecutive K each), then transposed so that the 64
    // bytes for K = 4s .. 4s + 3 hold the 16 rows in order (gathers of one dword per row).
    uint8_t* d = batch_digits(*a, b, tile);
    const __m512i rows =
        _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           _mm512_set1_epi32(8));
    for (int p = 0; p < planes; ++p) {
      alignas(64) uint32_t dwords[kBatchLanes][8];
      for (int i = 0; i < kBatchLanes; ++i)
        for (int h = 0; h < 2; ++h) {
          const __m512i y =
              _mm512_add_epi32(_mm512_load_si512(X[i] + 16 * h), _mm512_set1_epi32(off));
          _mm_store_si128(reinterpret_cast<__m128i*>(dwords[i] + 4 * h),
                          _mm512_cvtepi32_epi8(_mm512_srli_epi32(y, 8 * p)));
        }
      for (int s = 0; s < 8; ++s)
        _mm512_store_si512(
            d + p * kBatchPlaneBytes + s * 64,
            _mm512_i32gather_epi32(_mm512_add_epi32(rows, _mm512_set1_epi32(s)), dwords, 4));
    }
  }
  return true;
}

// Tile t of one 16-row block against JB weight rows (2q bytes at w[j] + 32·t, their tile sums
// of 2q in wsum[j]): JB vectors of 16 int32 tile sums Σ X·2q (lane = activation row).
template <int NP, int JB>
DSV4_VNNI inline void fp4_batch_tile(const __m512i* digits, const uint8_t* const* w,
                                     const int32_t* wsum, int64_t off, __m512i* out) {
  // One accumulator per plane and weight row: each 4-weight broadcast (a memory operand) meets
  // every plane's digits while it is in a register, and the digits stay in registers.
  if constexpr (NP == 3) {  // 24 digit registers leave too few: one chain per row, shifted
    __m512i acc[JB];
    for (int j = 0; j < JB; ++j) acc[j] = _mm512_setzero_si512();
    for (int p = NP - 1; p >= 0; --p) {
      if (p < NP - 1)
        for (int j = 0; j < JB; ++j) acc[j] = _mm512_slli_epi32(acc[j], 8);
      for (int s = 0; s < 8; ++s)
        for (int j = 0; j < JB; ++j) {
          int32_t four;
          std::memcpy(&four, w[j] + 4 * s, 4);
          acc[j] = _mm512_dpbusd_epi32(acc[j], digits[p * 8 + s], _mm512_set1_epi32(four));
        }
    }
    for (int j = 0; j < JB; ++j)
      out[j] = _mm512_sub_epi32(acc[j], _mm512_set1_epi32(static_cast<int32_t>(off * wsum[j])));
    return;
  }
  __m512i d[NP * 8];
  for (int q = 0; q < NP * 8; ++q) d[q] = digits[q];
  __m512i acc[NP][JB];
  for (int p = 0; p < NP; ++p)
    for (int j = 0; j < JB; ++j) acc[p][j] = _mm512_setzero_si512();
  for (int s = 0; s < 8; ++s)
    for (int j = 0; j < JB; ++j) {
      int32_t four;
      std::memcpy(&four, w[j] + 4 * s, 4);
      const __m512i wv = _mm512_set1_epi32(four);
      for (int p = 0; p < NP; ++p) acc[p][j] = _mm512_dpbusd_epi32(acc[p][j], d[p * 8 + s], wv);
    }
  for (int j = 0; j < JB; ++j) {
    __m512i sum = acc[NP - 1][j];
    for (int p = NP - 2; p >= 0; --p) sum = _mm512_add_epi32(_mm512_slli_epi32(sum, 8), acc[p][j]);
    out[j] = _mm512_sub_epi32(sum, _mm512_set1_epi32(static_cast<int32_t>(off * wsum[j])));
  }
}

constexpr int64_t kBatchRows = 64;  // weight rows decoded per block (≤ 64 × in bytes)

struct BatchTileArgs {
  const __m512i* digits;  // the tile's digit planes of one 16-row block
  const int8_t* wbuf;     // decoded rows (2q), `in` apart
  const int32_t* wsum;    // their tile sums, `tiles` apart
  float* facc;            // fp32 accumulators, 16 per weight row
  const uint8_t* scales;  // E8M0 bytes of the block's first row, `tiles` per row
  int64_t in, tiles, tile, off;
  __m512i units_lo, units_hi;  // per lane u − 1 − 127 + 1023 (int64)
  __m512i units32;             // per lane u − 1 (int32)
};

// Adds the tile of weight rows [j, end) (as many groups of JB as fit) to their fp32
// accumulators; returns the first row not done.
// kFloat: every 2^(u − 1 + e − 127) of the task lies in [2^-126, 2^96], so a tile sum S
// (|S| < 2^31) scaled by it stays a normal float, and rounding S to float first and scaling
// after (exact) gives the same float as scaling in double and rounding once.
template <int NP, int JB, bool kFloat>
DSV4_VNNI inline int64_t fp4_batch_rows(const BatchTileArgs& g, int64_t j, int64_t end) {
  for (; j + JB <= end; j += JB) {
    const uint8_t* wr[JB];
    int32_t ws[JB];
    for (int q = 0; q < JB; ++q) {
      wr[q] = reinterpret_cast<const uint8_t*>(g.wbuf + (j + q) * g.in + g.tile * 32);
      ws[q] = g.wsum[(j + q) * g.tiles + g.tile];
    }
    __m512i out[JB];
    fp4_batch_tile<NP, JB>(g.digits, wr, ws, g.off, out);
    for (int q = 0; q < JB; ++q) {
      float* f = g.facc + (j + q) * kBatchLanes;
      if constexpr (kFloat) {
        const __m512i e = _mm512_set1_epi32(g.scales[(j + q) * g.tiles + g.tile]);
        const __m512 scale =
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(g.units32, e), 23));
        _mm512_store_ps(
            f, _mm512_add_ps(_mm512_load_ps(f), _mm512_mul_ps(_mm512_cvtepi32_ps(out[q]), scale)));
        continue;
      }
      const __m512i e = _mm512_set1_epi64(g.scales[(j + q) * g.tiles + g.tile]);
      const __m512d s_lo =
          _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(g.units_lo, e), 52));
      const __m512d s_hi =
          _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(g.units_hi, e), 52));
      const __m256 f_lo =
          _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(out[q])), s_lo));
      const __m256 f_hi = _mm512_cvtpd_ps(
          _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(out[q], 1)), s_hi));
      const __m512 both = _mm512_castpd_ps(_mm512_insertf64x4(
          _mm512_castpd256_pd512(_mm256_castps_pd(f_lo)), _mm256_castps_pd(f_hi), 1));
      _mm512_store_ps(f, _mm512_add_ps(_mm512_load_ps(f), both));
    }
  }
  return j;
}

// All weight rows [0, nr) of a tile, in groups that keep enough independent vpdpbusd chains in
// flight (8 when the digit planes leave room in the 32 registers).
template <bool kFloat>
DSV4_VNNI inline void fp4_batch_tile_rows(const BatchTileArgs& g, int np, int64_t nr) {
  int64_t j;
  if (np == 1) {
    j = fp4_batch_rows<1, 8, kFloat>(g, 0, nr);
    fp4_batch_rows<1, 1, kFloat>(g, j, nr);
  } else if (np == 2) {
    j = fp4_batch_rows<2, 4, kFloat>(g, 0, nr);
    fp4_batch_rows<2, 1, kFloat>(g, j, nr);
  } else {
    j = fp4_batch_rows<3, 4, kFloat>(g, 0, nr);
    fp4_batch_rows<3, 1, kFloat>(g, j, nr);
  }
}

DSV4_VNNI void fp4_vnni_gemm(const LinearTask& t, const Fp4BatchActs& a, int64_t r0, int64_t r1) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in, tiles = in / 32;
  const auto* scale_bytes = static_cast<const uint8_t*>(w.scale);
  // Every scale must fold (and every unit stay in range) for this task's rows; otherwise the
  // general path takes the whole task.
  bool in_float = true;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int e = scale_bytes[r * tiles + tile];
      if (e > kMaxFoldedFp4Scale || a.unit_min - 1 + e - 127 < -1022 ||
          a.unit_max - 1 + e - 127 > 990)
        return quant_gemm(t, r0, r1);
      in_float = in_float && a.unit_min - 1 + e - 127 >= -126 && a.unit_max - 1 + e - 127 <= 96;
    }
  // Decoded weights (2q as signed bytes, natural order) and their tile sums.
  auto* wbuf = reinterpret_cast<int8_t*>(thread_scratch((kBatchRows * in + 7) / 8, 0));
  auto* wsum = reinterpret_cast<int32_t*>(thread_scratch((kBatchRows * tiles + 1) / 2, 2));
  float* facc = reinterpret_cast<float*>(thread_scratch(kBatchRows * kBatchLanes / 2, 1));
  const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Twice));
  for (int64_t rb = r0; rb < r1; rb += kBatchRows) {
    const int64_t nr = std::min(kBatchRows, r1 - rb);
    for (int64_t j = 0; j < nr; ++j) {
      const uint8_t* packed = static_cast<const uint8_t*>(w.data) + (rb + j) * (in / 2);
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + tile * 16));
        const __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(bytes, _mm_set1_epi8(0x0F)));
        const __m128i hi =
            _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F)));
        int8_t* dst = wbuf + j * in + tile * 32;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_unpacklo_epi8(lo, hi));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16), _mm_unpackhi_epi8(lo, hi));
        // Σ 2q = Σ (2q + 12) − 32·12, the biased bytes summed by vpsadbw.
        const __m128i twelve = _mm_set1_epi8(12), zero = _mm_setzero_si128();
        const __m128i sad = _mm_add_epi64(_mm_sad_epu8(_mm_add_epi8(lo, twelve), zero),
                                          _mm_sad_epu8(_mm_add_epi8(hi, twelve), zero));
        const int32_t sum =
            static_cast<int32_t>(_mm_cvtsi128_si64(sad) + _mm_extract_epi64(sad, 1)) - 32 * 12;
        wsum[j * tiles + tile] = sum;
      }
    }
    for (int64_t b = 0; b < a.blocks; ++b) {
      std::fill(facc, facc + nr * kBatchLanes, 0.0f);
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t bt = b * a.tiles + tile;
        const int np = a.planes[bt];
        const int64_t off = a.offset[bt];
        __m512i digits[24];
        const uint8_t* d = batch_digits(a, b, tile);
        for (int p = 0; p < np; ++p)
          for (int s = 0; s < 8; ++s)
            digits[p * 8 + s] = _mm512_load_si512(d + p * kBatchPlaneBytes + s * 64);
        const __m512i units_lo = _mm512_loadu_si512(a.unit_bits + bt * kBatchLanes);
        const __m512i units_hi = _mm512_loadu_si512(a.unit_bits + bt * kBatchLanes + 8);
        const __m512i units32 = _mm512_sub_epi32(
            _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(units_lo)),
                               _mm512_cvtepi64_epi32(units_hi), 1),
            _mm512_set1_epi32(896));
        const BatchTileArgs args{digits,   wbuf,   wsum, facc, scale_bytes + rb * tiles,
                                 in,       tiles,  tile, off,  units_lo,
                                 units_hi, units32};
        if (in_float)
          fp4_batch_tile_rows<true>(args, np, nr);
        else
          fp4_batch_tile_rows<false>(args, np, nr);
      }
      for (int64_t j = 0; j < nr; ++j)
        for (int i = 0; i < kBatchLanes; ++i) {
          const int64_t row = b * kBatchLanes + i;
          if (row >= t.m) break;
          const float v = facc[j * kBatchLanes + i];
          t.y[row * t.ldy + (rb + j - t.row_begin)] = t.round_bf16 ? bf16_round(v) : v;
        }
    }
  }
}

}  // namespace

bool avx512_vnni_usable() {
  return use_vnni();
}

bool fp4_batch_available() {
  return use_vnni();
}

bool prepare_fp4_batch_block(const LinearTask& t, Fp4BatchActs* a, int64_t b) {
  return prepare_fp4_batch_block_impl(t, a, b);
}

bool fp4_vec_available() {
  return use_vnni();
}

bool prepare_fp4_vec(const float* x, int64_t in, Fp4VecActs* a, uint8_t* buffer) {
  return prepare_fp4_vec_impl(x, in, a, buffer);
}

void set_avx512_vbmi_allowed(bool allowed) {
  g_vbmi_allowed.store(allowed);
}

void set_avx512_vnni_allowed(bool allowed) {
  g_vnni_allowed.store(allowed);
}

namespace {

constexpr int kPlainMI = 4;           // activation rows per pass
constexpr int64_t kPlainChunk = 512;  // K per chunk (a multiple of 16)

// Adds [kc, kc + klen) to the lane sums of MI activation rows × NR weight rows (state: 16
// doubles per pair, s_0..7 then s_8..15, pairs (i, j) at (i·nrb + j)·16).
template <int MI, int NR>
inline void plain_chunk(const double* const* xs, const double* const* ws, int64_t kc, int64_t klen,
                        double* state, int64_t nrb, int64_t j0) {
  __m512d lo[MI][NR], hi[MI][NR];
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) {
      lo[i][j] = _mm512_load_pd(state + (i * nrb + j0 + j) * 16);
      hi[i][j] = _mm512_load_pd(state + (i * nrb + j0 + j) * 16 + 8);
    }
  for (int64_t k = kc; k < kc + klen; k += kGroup) {
    __m512d x_lo[MI], x_hi[MI];
    for (int i = 0; i < MI; ++i) {
      x_lo[i] = _mm512_load_pd(xs[i] + k);
      x_hi[i] = _mm512_load_pd(xs[i] + k + 8);
    }
    for (int j = 0; j < NR; ++j) {
      const __m512d w_lo = _mm512_load_pd(ws[j] + k);
      const __m512d w_hi = _mm512_load_pd(ws[j] + k + 8);
      for (int i = 0; i < MI; ++i) {
        lo[i][j] = _mm512_fmadd_pd(x_lo[i], w_lo, lo[i][j]);
        hi[i][j] = _mm512_fmadd_pd(x_hi[i], w_hi, hi[i][j]);
      }
    }
  }
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NR; ++j) {
      _mm512_store_pd(state + (i * nrb + j0 + j) * 16, lo[i][j]);
      _mm512_store_pd(state + (i * nrb + j0 + j) * 16 + 8, hi[i][j]);
    }
}

// y for activation rows [i0, i0 + MI) and the nrb decoded weight rows of the block at rb.
template <int MI>
void plain_rows(const LinearTask& t, const double* wbuf, int64_t ldw, int64_t i0, int64_t rb,
                int64_t nrb, double* state) {
  const double* xs[MI];
  for (int i = 0; i < MI; ++i) xs[i] = t.xd + (i0 + i) * ldw;
  std::fill(state, state + MI * nrb * 16, 0.0);
  for (int64_t kc = 0; kc < ldw; kc += kPlainChunk) {
    const int64_t klen = std::min(kPlainChunk, ldw - kc);
    int64_t j0 = 0;
    for (; j0 + 2 <= nrb; j0 += 2) {
      const double* ws[2] = {wbuf + j0 * ldw, wbuf + (j0 + 1) * ldw};
      plain_chunk<MI, 2>(xs, ws, kc, klen, state, nrb, j0);
    }
    if (j0 < nrb) {
      const double* ws[1] = {wbuf + j0 * ldw};
      plain_chunk<MI, 1>(xs, ws, kc, klen, state, nrb, j0);
    }
  }
  // linear_dot_f64's tree, eight pairs at a time (v = s_j + s_(j+8), then reduce8).
  const int64_t pairs = MI * nrb;
  for (int64_t p0 = 0; p0 < pairs; p0 += 8) {
    __m512d v[8];
    for (int q = 0; q < 8; ++q)
      v[q] = p0 + q < pairs ? _mm512_add_pd(_mm512_load_pd(state + (p0 + q) * 16),
                                            _mm512_load_pd(state + (p0 + q) * 16 + 8))
                            : _mm512_setzero_pd();
    alignas(32) float out[8];
    _mm256_store_ps(out, _mm512_cvtpd_ps(reduce8(v)));
    for (int q = 0; q < 8 && p0 + q < pairs; ++q) {
      const int64_t i = (p0 + q) / nrb, j = (p0 + q) % nrb;
      t.y[(i0 + i) * t.ldy + (rb + j - t.row_begin)] = t.round_bf16 ? bf16_round(out[q]) : out[q];
    }
  }
}

}  // namespace

void linear_rows_avx512(const LinearTask& t, int64_t r0, int64_t r1) {
  const WeightFormat format = t.w->format;
  const bool quantized = format == WeightFormat::kFP8 || format == WeightFormat::kFP4;
  // Matrix-vector: decode in registers. (A quantized weight in plain_linear,
  // where scale blocks do not match the single K tile, takes the general path.)
  if (t.m == 1 && quantized == (t.tile > 0)) {
    switch (format) {
      case WeightFormat::kFP8:  // quant_linear's FP8 weights run in fp8_rows_avx512 instead
        break;
      case WeightFormat::kFP4:
        if (t.fp4_vec != nullptr) return gemv_fp4_vec(t, r0, r1);
        if (t.fp4_words != nullptr) return gemv_fp4_words(t, r0, r1);
        if (!t.w->scale_is_f32 && use_vbmi()) return gemv_fp4_e8m0(t, r0, r1);
        return gemv<WeightFormat::kFP4>(t, r0, r1);
      case WeightFormat::kBF16:
        return gemv<WeightFormat::kBF16>(t, r0, r1);
      case WeightFormat::kF32:
        return gemv<WeightFormat::kF32>(t, r0, r1);
    }
  }
  if (t.fp4_batch != nullptr) return fp4_vnni_gemm(t, *t.fp4_batch, r0, r1);
  if (t.tile > 0) return quant_gemm(t, r0, r1);
  // Plain matrix-matrix: decode a block of whole rows once (≤ 512 KB of doubles, L2), apply it
  // to every activation row. The sixteen lane sums of each pair run over the whole row, so
  // they are carried in a small state buffer from one K chunk to the next (still ascending K
  // per lane); within a chunk, 4 activation rows (16 KB, L1) meet each pair of weight rows.
  const int64_t in = t.w->in;
  const int64_t ldw = padded_in(in);
  const int64_t block_rows = decode_block_rows(in, kNR);
  double* wbuf = thread_scratch(block_rows * ldw, 0);
  double* state = thread_scratch(kPlainMI * block_rows * 16, 1);
  using RowsFn =
      void (*)(const LinearTask&, const double*, int64_t, int64_t, int64_t, int64_t, double*);
  static constexpr RowsFn kRows[kPlainMI] = {plain_rows<1>, plain_rows<2>, plain_rows<3>,
                                             plain_rows<4>};
  for (int64_t rb = r0; rb < r1; rb += block_rows) {
    const int64_t nrb = std::min(block_rows, r1 - rb);
    for (int64_t j = 0; j < nrb; ++j) decode_range(*t.w, rb + j, 0, in, wbuf + j * ldw);
    for (int64_t i0 = 0; i0 < t.m; i0 += kPlainMI)
      kRows[std::min<int64_t>(kPlainMI, t.m - i0) - 1](t, wbuf, ldw, i0, rb, nrb, state);
  }
}

namespace {

// ---- fp32_bf16_linear: one weight load (32 bf16, 64 bytes) splits into its odd
// elements (the high halves of the 32-bit lanes) and even ones (shifted up), which meet the
// activations' odd and even halves in two FMAs per lane; consecutive groups go to four
// accumulators in turn (linear_dot_pairs4_f32's order), so four dependent FMA pairs are in
// flight instead of one. One row at a time: a thread then reads one stream in address order,
// which this machine serves ~1.3x faster than four interleaved row streams (docs/kernels.md,
// "Row order"). The weights are prefetched 4 KB ahead (2 KB: 0.85x as fast, 1 thread).

inline float pairs_tree(__m512 acc) {
  alignas(64) float s[16];
  _mm512_store_ps(s, acc);
  return pairs_tree_f32(s);
}

inline void pair_row_bf16(const PairTask& t, int64_t r) {
  constexpr int64_t kAhead = 4096;
  const int64_t in = t.w->in, groups = (in + 31) / 32;
  const uint8_t* row = static_cast<const uint8_t*>(t.w->data) + r * in * 2;
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t i = 0; i < t.m; ++i) {
    const float* xo = t.xo + i * t.ldp;
    const float* xe = t.xe + i * t.ldp;
    // Four named accumulators (an array indexed in the tail loop would live in memory).
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const auto group = [&](__m512& a, int64_t g) {
      const int64_t n = std::min<int64_t>(32, in - 32 * g);
      const __mmask32 mask = n == 32 ? ~__mmask32(0) : (__mmask32(1) << n) - 1;
      _mm_prefetch(reinterpret_cast<const char*>(row + 64 * g + kAhead), _MM_HINT_T0);
      const __m512i v = _mm512_maskz_loadu_epi16(mask, row + 64 * g);
      const __m512 o = _mm512_load_ps(xo + 16 * g), e = _mm512_load_ps(xe + 16 * g);
      a = _mm512_fmadd_ps(o, _mm512_castsi512_ps(_mm512_and_si512(v, high)), a);
      a = _mm512_fmadd_ps(e, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), a);
    };
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) {
      group(a0, g);
      group(a1, g + 1);
      group(a2, g + 2);
      group(a3, g + 3);
    }
    if (g < groups) group(a0, g++);  // the last one to three groups, still in turn
    if (g < groups) group(a1, g++);
    if (g < groups) group(a2, g++);
    t.y[i * t.ldy + (r - t.row_begin)] =
        pairs_tree(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

}  // namespace

void pair_rows_avx512(const PairTask& t, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) pair_row_bf16(t, r);
}

// ---- FP8 quant_linear in the FP32-accumulation contract with the AVX512-BF16 dot product.
//
// vdpbf16ps adds, per fp32 lane j, the product of elements 2j+1 and then that of 2j, each
// rounded once (checked below before first use): linear_dot_pairs_f32's order over 32 elements
// per instruction. FP8 values are exact in bf16 and their products exact in fp32, never
// subnormal (≥ 2^-18), so the instruction's flushing of denormals never applies. Weights turn
// into bf16 with two 128-entry byte tables (vpermi2b: low and high byte of each magnitude's
// bf16), the sign OR-ed in, and one two-source byte permute per 32 weights interleaving them.
// A matrix-vector product walks each row from start to end (one stream per thread: see
// fp32_bf16_linear); a batch decodes each row once and runs every activation row over it.
#define DSV4_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16,avx2,fma,f16c")))

namespace {

struct Bf16Tables {
  alignas(64) uint8_t lo[128], hi[128], interleave[2][64];
  Bf16Tables() {
    const float* table = fp8_e4m3_table();
    for (int c = 0; c < 128; ++c) {
      const uint16_t b = static_cast<uint16_t>(float_bits(table[c]) >> 16);  // exact (NaN: quiet)
      lo[c] = static_cast<uint8_t>(b & 0xff);
      hi[c] = static_cast<uint8_t>(b >> 8);
    }
    for (int i = 0; i < 32; ++i)
      for (int h = 0; h < 2; ++h) {
        interleave[h][2 * i] = static_cast<uint8_t>(32 * h + i);           // low byte: lo[.]
        interleave[h][2 * i + 1] = static_cast<uint8_t>(64 + 32 * h + i);  // high byte: hi[.]
      }
  }
};
const Bf16Tables& bf16_tables() {
  static const Bf16Tables t;
  return t;
}

struct Fp8Bf16 {
  __m512i lo0, lo1, hi0, hi1, il0, il1;
};

DSV4_BF16 inline Fp8Bf16 load_fp8_bf16() {
  const Bf16Tables& t = bf16_tables();
  return {_mm512_load_si512(t.lo),
          _mm512_load_si512(t.lo + 64),
          _mm512_load_si512(t.hi),
          _mm512_load_si512(t.hi + 64),
          _mm512_load_si512(t.interleave[0]),
          _mm512_load_si512(t.interleave[1])};
}

// 64 FP8 codes → their bf16 values: elements 0..31 in *a, 32..63 in *b.
DSV4_BF16 inline void fp8_to_bf16(const Fp8Bf16& k, __m512i c, __m512i* a, __m512i* b) {
  const __m512i lo = _mm512_permutex2var_epi8(k.lo0, c, k.lo1);  // index bit 7 is ignored
  __m512i hi = _mm512_permutex2var_epi8(k.hi0, c, k.hi1);
  hi = _mm512_ternarylogic_epi32(hi, c, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
  *a = _mm512_permutex2var_epi8(lo, k.il0, hi);
  *b = _mm512_permutex2var_epi8(lo, k.il1, hi);
}

DSV4_BF16 inline __m512 dot_bf16(__m512 acc, __m512i x, __m512i w) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(x), reinterpret_cast<__m512bh&>(w));
}

// pairs_tree_f32 over the sixteen lanes.
DSV4_BF16 inline float pairs_tree16(__m512 s) {
  const __m256 v = _mm256_add_ps(_mm512_castps512_ps256(s),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
  const __m128 w = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 u = _mm_add_ps(w, _mm_movehl_ps(w, w));
  return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}

// The products of the two block scales per tile, in double (exact: powers of two times a
// float) — the activation scale of row i times the weight scale of row r's block.
inline void tile_scales(const Fp8Task& t, int64_t i, int64_t r, int64_t tiles, double* out) {
  for (int64_t b = 0; b < tiles; ++b)
    out[b] = static_cast<double>(t.scales[i * tiles + b]) *
             static_cast<double>(weight_block_scale(*t.w, (r / 128) * tiles + b));
}

// pairs_tree_f32 of eight accumulators at once: lane 4q holds the sum of s[q], lane 4q + 2
// that of s[4 + q] (q = 0..3). The same three pairwise levels and the last add as
// pairs_tree16, done across registers.
DSV4_BF16 inline __m512 tree_halves(__m512 a, __m512 b) {  // v_j = s_j + s_(j+8) of a, then b
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
}
DSV4_BF16 inline __m512 tree_quarters(__m512 a, __m512 b) {  // w_k = v_k + v_(k+4), four at once
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}
DSV4_BF16 inline __m512 pairs_tree8x(const __m512* s) {
  const __m512 e0 = tree_quarters(tree_halves(s[0], s[1]), tree_halves(s[2], s[3]));
  const __m512 e1 = tree_quarters(tree_halves(s[4], s[5]), tree_halves(s[6], s[7]));
  const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(e0, e1, 0x44), _mm512_shuffle_ps(e0, e1, 0xEE));
  return _mm512_add_ps(u, _mm512_movehdup_ps(u));
}

// One row against one activation row, decoding as it goes (m = 1); `scale` from tile_scales.
template <bool kShift>
DSV4_BF16 float fp8_row_bf16(const Fp8Task& t, int64_t r, const double* scale) {
  const Fp8Bf16 k = load_fp8_bf16();
  const int64_t in = t.w->in, tiles = (in + 127) / 128;
  const uint8_t* row = static_cast<const uint8_t*>(t.w->data) + r * in;
  // kShift: the row starts `delta` bytes past a cache line; whole lines are loaded and each
  // pair joined with one two-source byte permute (a 64-byte load across two lines cost 12 %
  // from memory, one thread: docs/kernels.md).
  const int64_t delta = static_cast<int64_t>(reinterpret_cast<uintptr_t>(row) % 64);
  const uint8_t* lines = row - delta;
  const __m512i shift = _mm512_add_epi8(
      _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45,
                      44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26,
                      25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,
                      4, 3, 2, 1, 0),
      _mm512_set1_epi8(static_cast<char>(delta)));
  float acc = 0;
  int64_t b = 0;
  // Four whole tiles at a time: four independent dot-product chains in flight (one chain per
  // tile keeps each tile's lane order), their trees reduced together.
  for (; b + 4 <= in / 128; b += 4) {
    __m512 s[8];
    for (int q = 0; q < 4; ++q) s[q] = _mm512_setzero_ps();
    for (int h = 0; h < 2; ++h)
      for (int q = 0; q < 4; ++q) {
        const int64_t k0 = 128 * (b + q) + 64 * h;
        const __m512i c = kShift ? _mm512_permutex2var_epi8(_mm512_load_si512(lines + k0), shift,
                                                            _mm512_load_si512(lines + k0 + 64))
                                 : _mm512_loadu_si512(row + k0);
        prefetch_weights(row + k0);
        __m512i wa, wb;
        fp8_to_bf16(k, c, &wa, &wb);
        s[q] = dot_bf16(s[q], _mm512_loadu_si512(t.xb + k0), wa);
        s[q] = dot_bf16(s[q], _mm512_loadu_si512(t.xb + k0 + 32), wb);
      }
    for (int q = 0; q < 4; ++q) s[4 + q] = s[q];
    alignas(64) float sums[16];  // lane 4q: tile b + q
    _mm512_store_ps(sums, pairs_tree8x(s));
    for (int q = 0; q < 4; ++q)
      acc += static_cast<float>(static_cast<double>(sums[4 * q]) * scale[b + q]);
  }
  for (; b < tiles; ++b) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t k0 = 128 * b; k0 < std::min(in, 128 * b + 128); k0 += 64) {
      const int64_t n = in - k0;
      const __m512i c = n >= 64 ? _mm512_loadu_si512(row + k0)
                                : _mm512_maskz_loadu_epi8((__mmask64(1) << n) - 1, row + k0);
      prefetch_weights(row + k0);
      __m512i wa, wb;
      fp8_to_bf16(k, c, &wa, &wb);
      s = dot_bf16(s, _mm512_loadu_si512(t.xb + k0), wa);
      if (n > 32) s = dot_bf16(s, _mm512_loadu_si512(t.xb + k0 + 32), wb);
    }
    acc += static_cast<float>(static_cast<double>(pairs_tree16(s)) * scale[b]);
  }
  return acc;
}

// Where pairs_tree8x leaves accumulator p, for sixteen accumulators in two calls.
constexpr int kTree16Lanes[16] = {0, 4, 8, 12, 2, 6, 10, 14, 16, 20, 24, 28, 18, 22, 26, 30};

// A batch, 4 activation rows × 4 weight rows at a time (sixteen accumulators, one per pair,
// lane sums in the contract's order); the weight rows come decoded to bf16 (`wb`, ldq apart)
// and share one 128-row scale block, whose tile scales are `wscale`.
DSV4_BF16 void fp8_bf16_4x4(const Fp8Task& t, const uint16_t* wb, const double* wscale, int64_t i0,
                            int64_t r) {
  const int64_t in = t.w->in, tiles = (in + 127) / 128, groups = t.ldq / 32;
  const __m512i gather = _mm512_loadu_si512(kTree16Lanes);
  const uint16_t* x[4];
  const uint16_t* w[4];
  for (int i = 0; i < 4; ++i) x[i] = t.xb + (i0 + i) * t.ldq;
  for (int j = 0; j < 4; ++j) w[j] = wb + j * t.ldq;
  __m512 acc = _mm512_setzero_ps();  // lane 4i + j: activation row i0 + i, weight row r + j
  for (int64_t b = 0; b < tiles; ++b) {
    __m512 s[16];
    for (int p = 0; p < 16; ++p) s[p] = _mm512_setzero_ps();
    for (int64_t g = 4 * b; g < std::min(groups, 4 * b + 4); ++g) {
      __m512i xv[4];
      for (int i = 0; i < 4; ++i) xv[i] = _mm512_loadu_si512(x[i] + 32 * g);
      for (int j = 0; j < 4; ++j) {
        const __m512i wv = _mm512_load_si512(w[j] + 32 * g);
        for (int i = 0; i < 4; ++i) s[4 * i + j] = dot_bf16(s[4 * i + j], xv[i], wv);
      }
    }
    const __m512 sums = _mm512_permutex2var_ps(pairs_tree8x(s), gather, pairs_tree8x(s + 8));
    // × (activation scale · weight scale) in double, rounded to float, added in fp32.
    const double ws = wscale[b];
    const __m512d lo =
        _mm512_set_pd(t.scales[(i0 + 1) * tiles + b] * ws, t.scales[(i0 + 1) * tiles + b] * ws,
                      t.scales[(i0 + 1) * tiles + b] * ws, t.scales[(i0 + 1) * tiles + b] * ws,
                      t.scales[i0 * tiles + b] * ws, t.scales[i0 * tiles + b] * ws,
                      t.scales[i0 * tiles + b] * ws, t.scales[i0 * tiles + b] * ws);
    const __m512d hi =
        _mm512_set_pd(t.scales[(i0 + 3) * tiles + b] * ws, t.scales[(i0 + 3) * tiles + b] * ws,
                      t.scales[(i0 + 3) * tiles + b] * ws, t.scales[(i0 + 3) * tiles + b] * ws,
                      t.scales[(i0 + 2) * tiles + b] * ws, t.scales[(i0 + 2) * tiles + b] * ws,
                      t.scales[(i0 + 2) * tiles + b] * ws, t.scales[(i0 + 2) * tiles + b] * ws);
    const __m256 vlo =
        _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(sums)), lo));
    const __m256 vhi = _mm512_cvtpd_ps(_mm512_mul_pd(
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sums), 1))), hi));
    acc = _mm512_add_ps(
        acc, _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(vlo)),
                                                 _mm256_castps_pd(vhi), 1)));
  }
  alignas(64) float out[16];
  _mm512_store_ps(out, acc);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const float v = out[4 * i + j];
      t.y[(i0 + i) * t.ldy + (r + j - t.row_begin)] = t.round_bf16 ? bf16_round(v) : v;
    }
}

// One activation row against one decoded weight row (the edges of a batch).
DSV4_BF16 void fp8_bf16_1x1(const Fp8Task& t, const uint16_t* wrow, const double* wscale, int64_t i,
                            int64_t r) {
  const int64_t in = t.w->in, tiles = (in + 127) / 128, groups = t.ldq / 32;
  const uint16_t* x = t.xb + i * t.ldq;
  float acc = 0;
  for (int64_t b = 0; b < tiles; ++b) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t g = 4 * b; g < std::min(groups, 4 * b + 4); ++g)
      s = dot_bf16(s, _mm512_loadu_si512(x + 32 * g), _mm512_load_si512(wrow + 32 * g));
    const double scale = static_cast<double>(t.scales[i * tiles + b]) * wscale[b];
    acc += static_cast<float>(static_cast<double>(pairs_tree16(s)) * scale);
  }
  t.y[i * t.ldy + (r - t.row_begin)] = t.round_bf16 ? bf16_round(acc) : acc;
}

DSV4_BF16 void fp8_rows_bf16(const Fp8Task& t, int64_t r0, int64_t r1) {
  const int64_t in = t.w->in, tiles = (in + 127) / 128;
  if (t.m == 1) {
    double* scale = thread_scratch(tiles, 1);
    for (int64_t r = r0; r < r1; ++r) {
      if (r == r0 || r % 128 == 0) tile_scales(t, 0, r, tiles, scale);
      const uint8_t* row = static_cast<const uint8_t*>(t.w->data) + r * in;
      const bool off_line = reinterpret_cast<uintptr_t>(row) % 64 != 0;
      const float v = off_line ? fp8_row_bf16<true>(t, r, scale) : fp8_row_bf16<false>(t, r, scale);
      t.y[r - t.row_begin] = t.round_bf16 ? bf16_round(v) : v;
    }
    return;
  }
  // Blocks of up to 32 weight rows (never across a 128-row scale block) decoded once to bf16
  // (≤ 256 KB: they stay in L2), then every activation row over them: each group of four
  // activation rows, read from L3 at long prefills, serves 32 weight rows (8 rows: 0.95x as
  // fast at m = 512).
  const int64_t kRows = std::clamp<int64_t>((int64_t{256} << 10) / (2 * t.ldq) / 4 * 4, 4, 32);
  const Fp8Bf16 k = load_fp8_bf16();
  auto* wb = reinterpret_cast<uint16_t*>(thread_scratch(kRows * t.ldq / 4 + 8, 0));
  double* wscale = thread_scratch(tiles, 1);
  for (int64_t rb = r0, nr = 0; rb < r1; rb += nr) {
    // Never across a 128-row scale block (row ranges may start anywhere).
    nr = std::min({kRows, r1 - rb, 128 - rb % 128});
    for (int64_t b = 0; b < tiles; ++b)
      wscale[b] = static_cast<double>(weight_block_scale(*t.w, (rb / 128) * tiles + b));
    for (int64_t j = 0; j < nr; ++j) {
      const uint8_t* row = static_cast<const uint8_t*>(t.w->data) + (rb + j) * in;
      uint16_t* dst = wb + j * t.ldq;
      for (int64_t k0 = 0; k0 < t.ldq; k0 += 64) {
        const int64_t n = std::max<int64_t>(0, in - k0);
        const __m512i c = n >= 64 ? _mm512_loadu_si512(row + k0)
                                  : _mm512_maskz_loadu_epi8((__mmask64(1) << n) - 1, row + k0);
        __m512i wa, wb2;
        fp8_to_bf16(k, c, &wa, &wb2);
        _mm512_store_si512(dst + k0, wa);
        if (k0 + 32 < t.ldq) _mm512_store_si512(dst + k0 + 32, wb2);
      }
    }
    int64_t i = 0;
    for (; i + 4 <= t.m; i += 4) {
      int64_t j = 0;
      for (; j + 4 <= nr; j += 4) fp8_bf16_4x4(t, wb + j * t.ldq, wscale, i, rb + j);
      for (; j < nr; ++j)
        for (int64_t ii = i; ii < i + 4; ++ii) fp8_bf16_1x1(t, wb + j * t.ldq, wscale, ii, rb + j);
    }
    for (; i < t.m; ++i)
      for (int64_t j = 0; j < nr; ++j) fp8_bf16_1x1(t, wb + j * t.ldq, wscale, i, rb + j);
  }
}

// Whether vdpbf16ps adds as linear_dot_pairs_f32 does, on FP8-valued operands whose lanes
// round differently in the other orders (odd product first, each add rounded).
DSV4_BF16 bool bf16_dot_order_holds() {
  const float* table = fp8_e4m3_table();
  uint32_t state = 12345;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  for (int rep = 0; rep < 64; ++rep) {
    alignas(64) uint16_t a[32], b[32];
    alignas(64) float acc[16], got[16];
    float fa[32], fb[32];
    for (int e = 0; e < 32; ++e) {
      uint8_t ca = static_cast<uint8_t>(next() >> 24), cb = static_cast<uint8_t>(next() >> 24);
      if ((ca & 0x7f) == 0x7f) ca ^= 1;
      if ((cb & 0x7f) == 0x7f) cb ^= 1;
      fa[e] = table[ca];
      fb[e] = table[cb];
      a[e] = static_cast<uint16_t>(float_bits(fa[e]) >> 16);
      b[e] = static_cast<uint16_t>(float_bits(fb[e]) >> 16);
    }
    for (int j = 0; j < 16; ++j)
      acc[j] = std::ldexp(static_cast<float>(next() >> 8), static_cast<int>(next() % 24) - 30);
    _mm512_store_ps(got, dot_bf16(_mm512_load_ps(acc), _mm512_load_si512(a), _mm512_load_si512(b)));
    for (int j = 0; j < 16; ++j) {
      const float want =
          std::fma(fa[2 * j], fb[2 * j], std::fma(fa[2 * j + 1], fb[2 * j + 1], acc[j]));
      if (float_bits(want) != float_bits(got[j])) return false;
    }
  }
  return true;
}

std::atomic<bool> g_bf16_allowed{true};

}  // namespace

bool fp8_bf16_dot_available() {
  static const bool works = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi") &&
           bf16_dot_order_holds();
  }();
  return works && g_bf16_allowed.load(std::memory_order_relaxed);
}

void set_avx512_bf16_allowed(bool allowed) {
  g_bf16_allowed.store(allowed);
}

void fp8_rows_avx512(const Fp8Task& t, int64_t r0, int64_t r1) {
  fp8_rows_bf16(t, r0, r1);
}

}  // namespace dsv4::kernels::detail

#pragma GCC diagnostic pop
#pragma GCC pop_options
