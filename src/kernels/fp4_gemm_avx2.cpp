// FP4 (E8M0 scales) matrix-matrix product on AVX2 in fp32 FMAs, where fp32 is exact.
//
// The contract (docs/kernels.md) is each tile's exact dot product, rounded once to fp32, the
// tiles added in fp32 in ascending K. A tile's activations are X·2^u (X integers, u their
// lowest set bit) and its weights 2q·2^(e−128) (2q ∈ [−12, 12] integers, e the E8M0 byte), so
// every product and every partial sum, in any order, is an integer multiple of 2^(u+e−128);
// while |X| < 2^15 their magnitudes stay below 32·12·2^15 < 2^24 such units, so fp32 holds
// them exactly whenever that unit is at least 2^-149 (u + e ≥ −21) and 2^24 of it stays below
// 2^127 (u + e ≤ 231). Then fp32 FMAs, eight products per instruction where the double path
// has four, compute the exact tile sum, and its rounding is itself. Tiles whose activations
// span more (|X| ≥ 2^15: rare for fake-quantized activations) take an exact double sum; weight
// blocks whose scales leave the range take the double kernel.
//
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/linear_simd.h"
#include "kernels/numerics.h"
#include "util/threadpool.h"

namespace dsv4::kernels::detail {

namespace {

constexpr int64_t kBlockRows = 64;  // weight rows decoded per block
constexpr int64_t kChunkTiles = 8;  // tiles per K chunk: 64 rows × 256 floats = 64 KB (L2)
constexpr int kMI = 2, kNR = 4;     // register block: 8 (activation row, weight row) pairs

// Lowest set bit exponent of a nonzero finite float (value = odd integer × 2^lsb).
inline int lowest_bit(uint32_t bits) {
  const int exp = static_cast<int>((bits >> 23) & 0xFF);
  const uint32_t mant = (bits & 0x7FFFFF) | (exp != 0 ? 0x800000u : 0u);
  return (exp != 0 ? exp : 1) - 150 + __builtin_ctz(mant);
}

// One activation tile: true if fp32 is not exact for it (|X| may reach 2^15, or a value is not
// finite); else its u (0 for an all-zero tile, which fits any scale).
inline bool tile_unit(const float* a, int* u) {
  int lo = INT32_MAX, top = INT32_MIN;
  for (int k = 0; k < 32; ++k) {
    uint32_t bits;
    std::memcpy(&bits, a + k, 4);
    bits &= 0x7FFFFFFF;
    if (bits == 0) continue;
    if ((bits >> 23) == 0xFF) return true;
    lo = std::min(lo, lowest_bit(bits));
    // floor(log2 |a|), or −127 (an upper bound) for fp32 subnormals.
    top = std::max(top, std::max(static_cast<int>(bits >> 23), 0) - 127);
  }
  *u = lo == INT32_MAX ? 0 : lo;
  // |X| = |a| / 2^u < 2^(top + 1 − u): below 2^15 when top − u ≤ 14.
  return lo != INT32_MAX && top - lo > 14;
}

// Sum of the 8 lanes of each of a[0..7], as one vector (lane p: a[p]); exact inputs, any order.
inline __m256 lane_sums8(const __m256 a[8]) {
  const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  const __m256 lo = _mm256_insertf128_ps(q0, _mm256_castps256_ps128(q1), 1);
  const __m256 hi = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_extractf128_ps(q0, 1)),
                                         _mm256_extractf128_ps(q1, 1), 1);
  return _mm256_add_ps(lo, hi);
}

// The 8 pairs' tile sums in double (exact for FP4 tiles with E8M0 scales, any order), as
// floats in lane ii·4 + jj: for tiles whose activations span too much for fp32.
inline __m256 wide_tile_sums(const float* xa, int64_t ldx, int mi, const float* wt, int nr) {
  __m256d acc[kMI][kNR];
  for (int ii = 0; ii < kMI; ++ii)
    for (int jj = 0; jj < kNR; ++jj) acc[ii][jj] = _mm256_setzero_pd();
  for (int k = 0; k < 32; k += 4) {
    __m256d wv[kNR];
    for (int jj = 0; jj < kNR; ++jj)
      wv[jj] = jj < nr ? _mm256_cvtps_pd(_mm_load_ps(wt + jj * kChunkTiles * 32 + k))
                       : _mm256_setzero_pd();
    for (int ii = 0; ii < kMI; ++ii) {
      const __m256d xv =
          ii < mi ? _mm256_cvtps_pd(_mm_loadu_ps(xa + ii * ldx + k)) : _mm256_setzero_pd();
      for (int jj = 0; jj < kNR; ++jj) acc[ii][jj] = _mm256_fmadd_pd(xv, wv[jj], acc[ii][jj]);
    }
  }
  // Horizontal sums: pairs (0, 1), (2, 3) per activation row, then the halves.
  __m128 out[kMI];
  for (int ii = 0; ii < kMI; ++ii) {
    const __m256d h01 = _mm256_hadd_pd(acc[ii][0], acc[ii][1]);  // 0a 1a 0b 1b
    const __m256d h23 = _mm256_hadd_pd(acc[ii][2], acc[ii][3]);
    const __m256d lo = _mm256_insertf128_pd(h01, _mm256_castpd256_pd128(h23), 1);
    const __m256d hi = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm256_extractf128_pd(h01, 1)),
                                            _mm256_extractf128_pd(h23, 1), 1);
    out[ii] = _mm256_cvtpd_ps(_mm256_add_pd(lo, hi));  // sums of weight rows 0..3
  }
  return _mm256_insertf128_ps(_mm256_castps128_ps256(out[0]), out[1], 1);
}

}  // namespace

void prepare_fp4_f32(const LinearTask& t, Fp4F32Acts* a, uint8_t* wide) {
  const int64_t tiles = t.w->in / 32;
  a->tiles = tiles;
  a->wide = wide;
  std::vector<int> lo(static_cast<size_t>(t.m), INT32_MAX), hi(static_cast<size_t>(t.m), INT32_MIN);
  parallel_for_rows(t.m, t.w->in, [&](int64_t i) {
    for (int64_t b = 0; b < tiles; ++b) {
      int u = 0;
      const bool w = tile_unit(t.x + i * t.ldx + 32 * b, &u);
      wide[i * tiles + b] = w ? 1 : 0;
      if (!w) {
        lo[i] = std::min(lo[i], u);
        hi[i] = std::max(hi[i], u);
      }
    }
  });
  a->u_lo = *std::min_element(lo.begin(), lo.end());
  a->u_hi = *std::max_element(hi.begin(), hi.end());
}

void fp4_gemm_f32(const LinearTask& t, int64_t r0, int64_t r1) {
  const WeightRef& w = *t.w;
  const Fp4F32Acts& acts = *t.fp4_f32;
  const int64_t in = w.in, tiles = in / 32;
  const auto* scales = static_cast<const uint8_t*>(w.scale);
  const __m256 magnitudes = _mm256_loadu_ps(fp4_e2m1_table());
  // [row j][tile c of the chunk][32 floats]
  auto* wbuf = reinterpret_cast<float*>(thread_scratch(kBlockRows * kChunkTiles * 32 / 2, 0));
  for (int64_t rb = r0; rb < r1; rb += kBlockRows) {
    const int64_t nb = std::min(kBlockRows, r1 - rb);
    // The block's scales against the call's activation bounds (see the top of the file).
    int emin = 255, emax = 0;
    for (int64_t k = rb * tiles; k < (rb + nb) * tiles; ++k) {
      emin = std::min<int>(emin, scales[k]);
      emax = std::max<int>(emax, scales[k]);
    }
    const bool fits = acts.u_lo == INT32_MAX ||  // every tile wide or zero
                      (emax <= 252 && acts.u_lo + emin >= -21 && acts.u_hi + emax <= 231);
    if (!fits) {
      quant_gemm_e8m0_avx2(t, rb, rb + nb);
      continue;
    }
    for (int64_t i = 0; i < t.m; ++i)
      for (int64_t j = 0; j < nb; ++j) t.y[i * t.ldy + (rb + j - t.row_begin)] = 0.0f;
    for (int64_t c0 = 0; c0 < tiles; c0 += kChunkTiles) {
      const int64_t nc = std::min(kChunkTiles, tiles - c0);
      for (int64_t j = 0; j < nb; ++j) {  // decode: exact floats (e ≤ 252)
        const uint8_t* row = static_cast<const uint8_t*>(w.data) + (rb + j) * (in / 2);
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t b = c0 + c;
          uint32_t sbits = static_cast<uint32_t>(scales[(rb + j) * tiles + b]) << 23;
          float s;
          std::memcpy(&s, &sbits, 4);
          if (sbits == 0) s = std::ldexp(1.0f, -127);
          const __m256 sv = _mm256_set1_ps(s);
          float* dst = wbuf + (j * kChunkTiles + c) * 32;
          for (int q = 0; q < 4; ++q) {
            uint32_t bytes;
            std::memcpy(&bytes, row + b * 16 + q * 4, 4);
            const __m128i bv = _mm_cvtsi32_si128(static_cast<int>(bytes));
            const __m256i idx = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(bv, bv)),
                                                  _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0));
            const __m256 mag = _mm256_permutevar8x32_ps(magnitudes, idx);
            const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(idx, _mm256_set1_epi32(8)), 28);
            _mm256_store_ps(dst + 8 * q,
                            _mm256_mul_ps(_mm256_xor_ps(mag, _mm256_castsi256_ps(sign)), sv));
          }
        }
      }
      for (int64_t i = 0; i < t.m; i += kMI) {
        const int mi = static_cast<int>(std::min<int64_t>(kMI, t.m - i));
        for (int64_t j = 0; j < nb; j += kNR) {
          const int nr = static_cast<int>(std::min<int64_t>(kNR, nb - j));
          // Running fp32 sums of the 8 pairs (lane ii·4 + jj), tiles in ascending K.
          alignas(32) float run[8] = {};
          for (int ii = 0; ii < mi; ++ii)
            for (int jj = 0; jj < nr; ++jj)
              run[ii * 4 + jj] = t.y[(i + ii) * t.ldy + (rb + j + jj - t.row_begin)];
          __m256 acc_run = _mm256_load_ps(run);
          for (int64_t c = 0; c < nc; ++c) {
            const int64_t b = c0 + c;
            const float* wt = wbuf + (j * kChunkTiles + c) * 32;
            const float* xa = t.x + i * t.ldx + 32 * b;
            const bool wide =
                acts.wide[i * tiles + b] != 0 || (mi == 2 && acts.wide[(i + 1) * tiles + b] != 0);
            if (wide) {  // exact double sums (docs/kernels.md: any order is exact)
              acc_run = _mm256_add_ps(acc_run, wide_tile_sums(xa, t.ldx, mi, wt, nr));
              continue;
            }
            __m256 acc[8];
            for (int p = 0; p < 8; ++p) acc[p] = _mm256_setzero_ps();
            for (int q = 0; q < 4; ++q) {
              __m256 wv[kNR];
              for (int jj = 0; jj < kNR; ++jj)
                wv[jj] = jj < nr ? _mm256_load_ps(wt + jj * kChunkTiles * 32 + 8 * q)
                                 : _mm256_setzero_ps();
              for (int ii = 0; ii < kMI; ++ii) {
                const __m256 xv =
                    ii < mi ? _mm256_loadu_ps(xa + ii * t.ldx + 8 * q) : _mm256_setzero_ps();
                for (int jj = 0; jj < kNR; ++jj)
                  acc[ii * 4 + jj] = _mm256_fmadd_ps(xv, wv[jj], acc[ii * 4 + jj]);
              }
            }
            acc_run = _mm256_add_ps(acc_run, lane_sums8(acc));
          }
          _mm256_store_ps(run, acc_run);
          for (int ii = 0; ii < mi; ++ii)
            for (int jj = 0; jj < nr; ++jj)
              t.y[(i + ii) * t.ldy + (rb + j + jj - t.row_begin)] = run[ii * 4 + jj];
        }
      }
    }
    if (t.round_bf16)
      for (int64_t i = 0; i < t.m; ++i)
        for (int64_t j = 0; j < nb; ++j) {
          float& v = t.y[i * t.ldy + (rb + j - t.row_begin)];
          v = bf16_round(v);
        }
  }
}

}  // namespace dsv4::kernels::detail
