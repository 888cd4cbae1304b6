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

#include "kernels/avx2_helpers.h"
#include "kernels/linear_simd.h"
#include "kernels/numerics.h"
#include "util/threadpool.h"

namespace dsv4::kernels::detail {

namespace {

constexpr int64_t kBlockRows = 64;  // weight rows decoded per block
constexpr int64_t kChunkTiles = 8;  // tiles per K chunk: 64 rows × 256 floats = 64 KB (L2)
constexpr int kRowsPerStep = 6;     // activation rows per pass over a decoded chunk

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

// The 8 weight rows' exact tile sums in double, rounded to fp32 (a tile too wide for fp32).
[[gnu::noinline]] __m256 wide_tile_sums(const float* x, const float* w) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  for (int k = 0; k < 32; ++k) {
    const __m256d xv = _mm256_set1_pd(static_cast<double>(x[k]));
    lo = _mm256_fmadd_pd(xv, _mm256_cvtps_pd(_mm_load_ps(w + 8 * k)), lo);
    hi = _mm256_fmadd_pd(xv, _mm256_cvtps_pd(_mm_load_ps(w + 8 * k + 4)), hi);
  }
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}

// Activation rows i .. i + MI − 1 against the 8·NV weight rows at r (nr of them real) whose
// chunk of tiles c0 .. c0 + nc − 1 is decoded, transposed, at wt (vector v of a tile
// kChunkTiles·256 floats after vector v − 1): lane j of a vector is weight row r + 8v + j, so
// one broadcast activation times one vector of weights advances 8 tile sums and a tile needs
// no horizontal reduction. MI·NV independent chains cover the FMA latency (Zen 1: 5 cycles at
// one 256-bit FMA per cycle), and per K step MI broadcasts and NV loads feed MI·NV FMAs. The
// running fp32 sums live in `run` (L1) between tiles.
template <int MI, int NV>
inline void rows_step(const LinearTask& t, const Fp4F32Acts& acts, const float* wt, int64_t i,
                      int64_t r, int nr, int64_t c0, int64_t nc) {
  const int64_t tiles = acts.tiles;
  alignas(32) float run[MI][8 * NV];
  for (int ii = 0; ii < MI; ++ii) {
    const float* y = t.y + (i + ii) * t.ldy + (r - t.row_begin);
    if (nr == 8 * NV) {  // (a variable-length copy is a slow `rep movs` here)
      for (int v = 0; v < NV; ++v) _mm256_store_ps(run[ii] + 8 * v, _mm256_loadu_ps(y + 8 * v));
    } else {
      for (int j = 0; j < 8 * NV; ++j) run[ii][j] = j < nr ? y[j] : 0.0f;
    }
  }
  const float* x[MI];
  for (int ii = 0; ii < MI; ++ii) x[ii] = t.x + (i + ii) * t.ldx + 32 * c0;
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t b = c0 + c;
    const float* w = wt + c * 256;
    __m256 acc[MI][NV];
    for (int ii = 0; ii < MI; ++ii)
      for (int v = 0; v < NV; ++v) acc[ii][v] = _mm256_setzero_ps();
    for (int k = 0; k < 32; ++k) {
      __m256 wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = _mm256_load_ps(w + v * kChunkTiles * 256 + 8 * k);
      for (int ii = 0; ii < MI; ++ii) {
        const __m256 xv = _mm256_broadcast_ss(x[ii] + 32 * c + k);
        for (int v = 0; v < NV; ++v) acc[ii][v] = _mm256_fmadd_ps(xv, wv[v], acc[ii][v]);
      }
    }
    for (int ii = 0; ii < MI; ++ii) {
      // A tile that spans too much for fp32: its exact double sums (any order) instead.
      const bool wide = acts.wide[(i + ii) * tiles + b] != 0;
      for (int v = 0; v < NV; ++v) {
        float* run_v = run[ii] + 8 * v;
        const __m256 sum =
            wide ? wide_tile_sums(x[ii] + 32 * c, w + v * kChunkTiles * 256) : acc[ii][v];
        _mm256_store_ps(run_v, _mm256_add_ps(_mm256_load_ps(run_v), sum));
      }
    }
  }
  for (int ii = 0; ii < MI; ++ii) {
    float* y = t.y + (i + ii) * t.ldy + (r - t.row_begin);
    if (nr == 8 * NV) {
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(y + 8 * v, _mm256_load_ps(run[ii] + 8 * v));
    } else {
      for (int j = 0; j < nr; ++j) y[j] = run[ii][j];
    }
  }
}

// rows_step for 1 .. kRowsPerStep activation rows.
template <int NV>
inline void rows_step_any(int mi, const LinearTask& t, const Fp4F32Acts& acts, const float* wt,
                          int64_t i, int64_t r, int nr, int64_t c0, int64_t nc) {
  switch (mi) {
    case 1:
      return rows_step<1, NV>(t, acts, wt, i, r, nr, c0, nc);
    case 2:
      return rows_step<2, NV>(t, acts, wt, i, r, nr, c0, nc);
    case 3:
      return rows_step<3, NV>(t, acts, wt, i, r, nr, c0, nc);
    case 4:
      return rows_step<4, NV>(t, acts, wt, i, r, nr, c0, nc);
    case 5:
      return rows_step<5, NV>(t, acts, wt, i, r, nr, c0, nc);
    default:
      return rows_step<6, NV>(t, acts, wt, i, r, nr, c0, nc);
  }
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
  // [group of 8 rows][tile c of the chunk][32 elements][8 rows]
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
      // Decode, transposed: per group of 8 rows and tile, element k of the 8 rows at
      // wbuf + ((jg · kChunkTiles + c) · 32 + k) · 8 (rows past the block are +0).
      for (int64_t jg = 0; jg < nb; jg += 8) {
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t b = c0 + c;
          __m256 v[4][8];
          for (int j = 0; j < 8; ++j) {
            if (jg + j >= nb) {
              for (int q = 0; q < 4; ++q) v[q][j] = _mm256_setzero_ps();
              continue;
            }
            const uint8_t* row = static_cast<const uint8_t*>(w.data) + (rb + jg + j) * (in / 2);
            uint32_t sbits = static_cast<uint32_t>(scales[(rb + jg + j) * tiles + b]) << 23;
            float s;
            std::memcpy(&s, &sbits, 4);
            if (sbits == 0) s = std::ldexp(1.0f, -127);
            const __m256 sv = _mm256_set1_ps(s);
            for (int q = 0; q < 4; ++q)
              v[q][j] = _mm256_mul_ps(fp4_values(row + b * 16 + q * 4, magnitudes), sv);
          }
          float* dst = wbuf + ((jg / 8) * kChunkTiles + c) * 256;
          for (int q = 0; q < 4; ++q) {
            transpose8(v[q]);  // v[q][k]: element 8q + k of the 8 rows
            for (int k = 0; k < 8; ++k) _mm256_store_ps(dst + (8 * q + k) * 8, v[q][k]);
          }
        }
      }
      for (int64_t i = 0; i < t.m; i += kRowsPerStep) {
        const int mi = static_cast<int>(std::min<int64_t>(kRowsPerStep, t.m - i));
        for (int64_t jg = 0; jg < nb; jg += 16) {
          const float* wt = wbuf + (jg / 8) * kChunkTiles * 256;
          const int nr = static_cast<int>(std::min<int64_t>(16, nb - jg));
          if (nr > 8)
            rows_step_any<2>(mi, t, acts, wt, i, rb + jg, nr, c0, nc);
          else
            rows_step_any<1>(mi, t, acts, wt, i, rb + jg, nr, c0, nc);
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
