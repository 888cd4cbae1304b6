// FP4 (E8M0 scales) matrix-matrix product on AVX2 in fp32 FMAs, where fp32 is exact.
//
// The contract (docs/kernels.md) is each tile's exact dot product, rounded once to fp32, the
// tiles added in fp32 in ascending K. A tile's activations are X·2^u (X integers, u their
// lowest set bit) and its weights 2q·2^(e−128) (2q ∈ [−12, 12] integers, e the E8M0 byte), so
// every product and every partial sum, in any order, is an integer multiple of 2^(u+e−128) of
// magnitude at most 12·Σ|X| such units; while that is ≤ 2^24, fp32 holds them all exactly
// whenever the unit is at least 2^-149 (u + e ≥ −21) and 2^24 of it stays below 2^127
// (u + e ≤ 231). Then fp32 FMAs, eight products per instruction where the double path has
// four, compute the exact tile sum, and its rounding is itself. A tile that spans more (an
// FP8 activation of 448 beside a subnormal one) is split into two parts that each fit, and
// the two exact part sums are added once (tile_kind); weight blocks whose scales leave the
// range take the double kernel.
//
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/avx2_helpers.h"
#include "kernels/dispatch.h"
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

// Over the nonzero values of a tile whose exponents floor(log2 |v|) lie in [e_lo, e_hi] (fp32
// subnormals count as −127): their lowest set bit, largest exponent, and whether fp32 sums
// them exactly against any FP4 weights: with u that lowest bit, every product is an integer
// multiple of the unit 2^(u+e−128) (see the top) of magnitude ≤ 12·|X|, X = v / 2^u, so every
// partial sum in any order stays within 12·Σ|X| units, exact in fp32 while that is ≤ 2^24
// (the sum itself is exact in double: 32 values). False if there is no such value.
inline bool tile_span(const float* a, int e_lo, int e_hi, int* low, int* top, bool* exact) {
  int lo = INT32_MAX, hi = INT32_MIN;
  double sum = 0;
  for (int k = 0; k < 32; ++k) {
    uint32_t bits;
    std::memcpy(&bits, a + k, 4);
    bits &= 0x7FFFFFFF;
    if (bits == 0) continue;
    const int e = std::max(static_cast<int>(bits >> 23), 0) - 127;
    if (e < e_lo || e > e_hi) continue;
    lo = std::min(lo, lowest_bit(bits));
    hi = std::max(hi, e);
    sum += std::fabs(static_cast<double>(a[k]));
  }
  *low = lo;
  *top = hi;
  *exact = lo != INT32_MAX && 12.0 * sum <= std::ldexp(1.0, 24 + lo);
  return lo != INT32_MAX;
}

// How fp4_gemm_f32 sums one activation tile, and the lowest set bits of its parts (u[0], and
// u[1] for a split tile). fp32 where that is exact (tile_span). Else the tile is cut at 2^cut
// into the values ≥ 2^cut and those below, where both parts are exact (FP8 activations, 4
// significant bits spanning at most 2^17, always are): each part's sum is exact in fp32 and
// their one fp32 addition rounds the exact tile sum once, as the contract does. Else (or for
// non-finite values) the tile is summed in double.
inline uint8_t tile_kind(const float* a, int* cut, int u[2]) {
  for (int k = 0; k < 32; ++k)
    if (!std::isfinite(a[k])) return kFp4TileDouble;
  int lo = 0, top = 0;
  bool exact = false;
  if (!tile_span(a, -1000, 1000, &lo, &top, &exact)) {
    u[0] = 0;  // all zero: fits any scale
    return kFp4TileF32;
  }
  u[0] = lo;
  if (exact) return kFp4TileF32;
  *cut = top - 11;  // the high part: 12 exponents, X < 2^15 for 4 significant bits
  int lo_h = 0, top_h = 0, lo_l = 0, top_l = 0;
  bool exact_h = false, exact_l = false;
  if (!tile_span(a, *cut, 1000, &lo_h, &top_h, &exact_h) ||
      !tile_span(a, -1000, *cut - 1, &lo_l, &top_l, &exact_l) || !exact_h || !exact_l)
    return kFp4TileDouble;
  u[0] = lo_h;
  u[1] = lo_l;
  return kFp4TileSplit;
}

// The 8 weight rows' exact tile sums in double, rounded to fp32 (a tile too wide for fp32).
[[gnu::noinline]] __m256 wide_tile_sums(const float* x, int64_t stride, const float* w) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  for (int k = 0; k < 32; ++k) {
    const __m256d xv = _mm256_set1_pd(static_cast<double>(x[k * stride]));
    lo = _mm256_fmadd_pd(xv, _mm256_cvtps_pd(_mm_load_ps(w + 8 * k)), lo);
    hi = _mm256_fmadd_pd(xv, _mm256_cvtps_pd(_mm_load_ps(w + 8 * k + 4)), hi);
  }
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}

// The 8 weight rows' sums of a split tile's low part (exact in fp32 in any order: four chains).
[[gnu::noinline]] __m256 low_tile_sums(const float* x, const float* w) {
  __m256 s[4];
  for (int q = 0; q < 4; ++q) s[q] = _mm256_setzero_ps();
  for (int k = 0; k < 32; ++k)
    s[k % 4] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + k), _mm256_load_ps(w + 8 * k), s[k % 4]);
  return _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
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
                      float* y0, int64_t ldy, int nr, int64_t c0, int64_t nc) {
  const int64_t tiles = acts.tiles;
  alignas(32) float run[MI][8 * NV];
  for (int ii = 0; ii < MI; ++ii) {
    const float* y = y0 + ii * ldy;
    if (nr == 8 * NV) {  // (a variable-length copy is a slow `rep movs` here)
      for (int v = 0; v < NV; ++v) _mm256_store_ps(run[ii] + 8 * v, _mm256_loadu_ps(y + 8 * v));
    } else {
      for (int j = 0; j < 8 * NV; ++j) run[ii][j] = j < nr ? y[j] : 0.0f;
    }
  }
  const int64_t in = t.w->in;
  // The packed activations of rows i .. i + kRowsPerStep − 1 (prepare_fp4_f32), from tile c0.
  const float* xp = acts.x_hi + ((i / kRowsPerStep) * tiles + c0) * 32 * kRowsPerStep;
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
        const __m256 xv = _mm256_broadcast_ss(xp + (32 * c + k) * kRowsPerStep + ii);
        for (int v = 0; v < NV; ++v) acc[ii][v] = _mm256_fmadd_ps(xv, wv[v], acc[ii][v]);
      }
    }
    // Through memory: the calls below would otherwise keep the accumulators on the stack in
    // the loop above (every ymm register is caller-saved).
    alignas(32) float part[MI][NV][8];
    for (int ii = 0; ii < MI; ++ii)
      for (int v = 0; v < NV; ++v) _mm256_store_ps(part[ii][v], acc[ii][v]);
    for (int ii = 0; ii < MI; ++ii) {
      const uint8_t kind = acts.kind[(i + ii) * tiles + b];
      for (int v = 0; v < NV; ++v) {
        float* run_v = run[ii] + 8 * v;
        const float* wv = w + v * kChunkTiles * 256;
        __m256 sum = _mm256_load_ps(part[ii][v]);
        if (kind == kFp4TileSplit)  // high part + low part, one rounding
          sum = _mm256_add_ps(sum, low_tile_sums(acts.x_lo + (i + ii) * in + 32 * b, wv));
        else if (kind == kFp4TileDouble)  // its exact double sums (any order) instead
          sum = wide_tile_sums(xp + 32 * c * kRowsPerStep + ii, kRowsPerStep, wv);
        _mm256_store_ps(run_v, _mm256_add_ps(_mm256_load_ps(run_v), sum));
      }
    }
  }
  for (int ii = 0; ii < MI; ++ii) {
    float* y = y0 + ii * ldy;
    if (nr == 8 * NV) {
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(y + 8 * v, _mm256_load_ps(run[ii] + 8 * v));
    } else {
      for (int j = 0; j < nr; ++j) y[j] = run[ii][j];
    }
  }
}

}  // namespace

int64_t fp4_f32_bytes(int64_t m, int64_t in) {
  const int64_t padded = (m + kRowsPerStep - 1) / kRowsPerStep * kRowsPerStep;
  return (m * (in / 32) + 63) / 64 * 64 + (padded + m) * in * 4;
}

void prepare_fp4_f32(const LinearTask& t, Fp4F32Acts* a, uint8_t* buffer) {
  const int64_t in = t.w->in, tiles = in / 32;
  const int64_t padded = (t.m + kRowsPerStep - 1) / kRowsPerStep * kRowsPerStep;
  uint8_t* kind = buffer;
  float* x_hi = reinterpret_cast<float*>(buffer + (t.m * tiles + 63) / 64 * 64);
  float* x_lo = x_hi + padded * in;
  // x_hi packed for the register blocks' broadcasts: per block of kRowsPerStep rows and tile,
  // element k of row i at ((i / kRowsPerStep · tiles + b) · 32 + k) · kRowsPerStep + i mod
  // kRowsPerStep (one base pointer; rows a multiple of 4 KB apart alias in L1). Rows past m: +0.
  const auto hi_at = [&](int64_t i, int64_t b, int q) -> float& {
    return x_hi[((i / kRowsPerStep * tiles + b) * 32 + q) * kRowsPerStep + i % kRowsPerStep];
  };
  for (int64_t i = t.m; i < padded; ++i)
    for (int64_t b = 0; b < tiles; ++b)
      for (int q = 0; q < 32; ++q) hi_at(i, b, q) = 0.0f;
  a->tiles = tiles;
  a->kind = kind;
  a->x_hi = x_hi;
  a->x_lo = x_lo;
  std::vector<int> lo(static_cast<size_t>(t.m), INT32_MAX), hi(static_cast<size_t>(t.m), INT32_MIN);
  parallel_for_rows(t.m, in, [&](int64_t i) {
    for (int64_t b = 0; b < tiles; ++b) {
      const float* x = t.x + i * t.ldx + 32 * b;
      int cut = 0, u[2] = {0, 0};
      const uint8_t k = tile_kind(x, &cut, u);
      kind[i * tiles + b] = k;
      for (int q = 0; q < 32; ++q) hi_at(i, b, q) = x[q];
      if (k == kFp4TileDouble) continue;
      lo[i] = std::min(lo[i], u[0]);
      hi[i] = std::max(hi[i], u[0]);
      if (k != kFp4TileSplit) continue;
      lo[i] = std::min(lo[i], u[1]);
      hi[i] = std::max(hi[i], u[1]);
      float* l = x_lo + i * in + 32 * b;
      for (int q = 0; q < 32; ++q) {
        uint32_t bits;
        std::memcpy(&bits, x + q, 4);
        const bool high = std::max(static_cast<int>((bits & 0x7FFFFFFF) >> 23), 0) - 127 >= cut;
        hi_at(i, b, q) = high ? x[q] : 0.0f;
        l[q] = high ? 0.0f : x[q];
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
    // Fetched per block: the double kernel above takes the same scratch slots, and a larger
    // request reallocates them.
    // [group of 8 rows][tile c of the chunk][32 elements][8 rows]
    auto* wbuf = reinterpret_cast<float*>(thread_scratch(kBlockRows * kChunkTiles * 32 / 2, 0));
    // The block's outputs, [m][kBlockRows]: y's own rows lie `out` floats apart (a TLB miss
    // per row and chunk on long batches).
    auto* ybuf = reinterpret_cast<float*>(thread_scratch(t.m * kBlockRows / 2, 1));
    std::fill_n(ybuf, t.m * kBlockRows, 0.0f);
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
          with_block_size<2>((nr + 7) / 8, [&](auto vectors) {
            with_block_size<kRowsPerStep>(mi, [&](auto rows) {
              rows_step<decltype(rows)::value, decltype(vectors)::value>(
                  t, acts, wt, i, ybuf + i * kBlockRows + jg, kBlockRows, nr, c0, nc);
            });
          });
        }
      }
    }
    store_block_outputs(ybuf, kBlockRows, t.m, nb, t.y + (rb - t.row_begin), t.ldy, t.round_bf16);
  }
}

}  // namespace dsv4::kernels::detail
