// FP4 (E8M0 scales) matrix-vector product on AVX2 integer multiplies: the m = 1 kernel of
// CPUs without AVX512-VNNI. Same function as the scalar path (docs/kernels.md: every FP4 tile
// sum is exact, rounded once to fp32, the tiles added in fp32 in ascending K).
//
// Each activation tile (32 fake-quantized FP8 values) is X·2^u with X integers (|X| < 2^21,
// u the lowest set bit of the tile), so its dot product with the doubled E2M1 codes 2q is an
// integer sum. vpmaddwd multiplies 16 pairs of 16-bit words per instruction: the activations
// are stored as words (X itself; a second word plane holds X >> 16 for the rare chunks with
// |X| ≥ 2^15), the weights become words 2q + 12 ∈ [0, 24] (one vpshufb table, zero-extended
// by unpacking), and 12·ΣX is subtracted per tile. vpmaddubsw (bytes) would need two digit
// planes for typical tiles plus a vpmaddwd to widen them: 1.5x the integer multiplies, the
// port that bounds this kernel (one 128-bit multiply per cycle on Zen 1).
//
// Layout: a 32-byte load of a row is a chunk of 64 elements (two tiles, one per 128-bit lane:
// bytes 0..15 tile 2c, 16..31 tile 2c + 1); its low nibbles are the even elements, the high
// nibbles the odd ones. Four chunks (a group of 8 tiles) reduce to one vector of 8 tile sums in
// lane order [t0 t2 t4 t6 | t1 t3 t5 t7]; each becomes fp32 (float(S)·2^(u−1+e−127), exact
// scaling while that power of two keeps |S| < 2^31 normal), goes to a buffer of 8 rows, and
// the buffer is transposed so that the ascending-K fp32 sums run with one row per lane.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/avx2_helpers.h"
#include "kernels/linear_simd.h"
#include "kernels/numerics.h"

namespace dsv4::kernels::detail {

namespace {

constexpr int64_t kChunk = 64;           // elements per 32-byte weight load
constexpr int64_t kGroupTiles = 8;       // tiles per vector of tile sums
constexpr int64_t kChunkWords = 2 * 64;  // two word planes of 64 per chunk
constexpr int kRows = 8;                 // rows per transposed block
constexpr int kMaxBits = 21;             // |X| < 2^21 (fake-quantized FP8 stays below 2^18)
constexpr uint8_t kMaxFoldedScale = 127 + 125;
// Software prefetch distance of the row stream (AMD EPYC Zen 1, one thread: 2 KB and 4 KB
// equal within noise, both above none).
constexpr int64_t kPrefetch = 4096;

// Position of tile k (0..7) of a group in the reduced vector.
constexpr int lane_of(int k) {
  return (k % 2) * 4 + k / 2;
}

}  // namespace

int64_t fp4_words_bytes(int64_t in) {
  const int64_t groups = (in / 32 + kGroupTiles - 1) / kGroupTiles;
  return groups * (4 * kChunkWords * 2 + kGroupTiles * 4 * 2 + 4 + 1) + 64;
}

bool prepare_fp4_words(const float* x, int64_t in, Fp4WordActs* a, uint8_t* buffer) {
  const int64_t tiles = in / 32, groups = (tiles + kGroupTiles - 1) / kGroupTiles;
  a->tiles = tiles;
  a->groups = groups;
  uint8_t* p =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buffer) + 63) & ~uintptr_t{63});
  a->words = reinterpret_cast<int16_t*>(p);
  a->unit = reinterpret_cast<int32_t*>(p + groups * 4 * kChunkWords * 2);
  a->bias = a->unit + groups * kGroupTiles;
  a->wide = reinterpret_cast<uint8_t*>(a->bias + groups * kGroupTiles);
  a->group_wide = a->wide + groups * 4;
  // The last group's missing tiles: zero words, unit and bias.
  const int64_t last = (groups - 1) * kGroupTiles;
  std::memset(a->words + last / 2 * kChunkWords, 0, 4 * kChunkWords * 2);
  std::memset(a->unit + last, 0, kGroupTiles * 4);
  std::memset(a->bias + last, 0, kGroupTiles * 4);
  std::memset(a->wide, 0, static_cast<size_t>(groups) * 5);
  for (int64_t t = 0; t < tiles; ++t) {
    const float* v = x + 32 * t;
    uint32_t bits[32];
    std::memcpy(bits, v, sizeof bits);
    // u: the lowest set bit over the tile's nonzero values.
    int32_t u = INT32_MAX;
    for (int k = 0; k < 32; ++k) {
      const uint32_t mag = bits[k] & 0x7FFFFFFFu;
      if (mag == 0) continue;
      const int32_t exp = static_cast<int32_t>(mag >> 23);
      if (exp == 0 || exp == 255) return false;  // fp32 subnormal, inf or NaN
      const uint32_t mant = (mag & 0x7FFFFF) | 0x800000;
      u = std::min(u, exp - 150 + __builtin_ctz(mant));
    }
    if (u == INT32_MAX) u = 0;
    if (u < -1000 || u > 1000) return false;
    int32_t X[32];
    int32_t sum = 0, max_abs = 0;
    for (int k = 0; k < 32; ++k) {
      const uint32_t mag = bits[k] & 0x7FFFFFFFu;
      if (mag == 0) {
        X[k] = 0;
        continue;
      }
      const int32_t d = static_cast<int32_t>(mag >> 23) - 150 - u;  // ≤ 0 unless X ≥ 2^24
      if (d > kMaxBits - 24) return false;
      const int32_t m = static_cast<int32_t>(((mag & 0x7FFFFF) | 0x800000) >> -d);
      X[k] = (bits[k] >> 31) != 0 ? -m : m;
      sum += X[k];
      max_abs = std::max(max_abs, m);
    }
    const int64_t c = t / 2, h = t % 2, g = t / kGroupTiles;
    int16_t* lo = a->words + c * kChunkWords;
    int16_t* hi = lo + 64;
    for (int j = 0; j < 8; ++j) {
      // Word order of the kernel's unpacked weights: even elements 2j, 16 + 2j, then odd ones.
      const int src[4] = {2 * j, 16 + 2 * j, 2 * j + 1, 16 + 2 * j + 1};
      for (int q = 0; q < 4; ++q) {
        const int32_t value = X[src[q]];
        const auto low = static_cast<int16_t>(value);
        lo[16 * q + 8 * h + j] = low;
        hi[16 * q + 8 * h + j] = static_cast<int16_t>((value - low) >> 16);
      }
    }
    const int pos = lane_of(static_cast<int>(t % kGroupTiles));
    a->unit[g * kGroupTiles + pos] = u - 1;
    a->bias[g * kGroupTiles + pos] = 12 * sum;
    a->unit_min = t == 0 ? u - 1 : std::min(a->unit_min, u - 1);
    a->unit_max = t == 0 ? u - 1 : std::max(a->unit_max, u - 1);
    if (max_abs > 32767) {
      a->wide[c] = 1;
      a->group_wide[g] = 1;
    }
  }
  return true;
}

namespace {

// Σ X·(2q + 12) of one chunk (weights at w), 128-bit lane h holding tile 2c + h as four
// partial sums. kWide: the high word plane too, where the chunk needs it. kTail: w is the
// zero-padded copy of a row's last group (nothing to prefetch).
template <bool kWide, bool kTail>
inline __m256i words_chunk(const uint8_t* w, const int16_t* d, bool wide, __m256i table) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
  if constexpr (!kTail) _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetch), _MM_HINT_T0);
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(raw, low4));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4));
  const __m256i q[4] = {_mm256_unpacklo_epi8(lo, zero), _mm256_unpackhi_epi8(lo, zero),
                        _mm256_unpacklo_epi8(hi, zero), _mm256_unpackhi_epi8(hi, zero)};
  auto plane = [&](const int16_t* p) {
    const __m256i* v = reinterpret_cast<const __m256i*>(p);
    return _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(q[0], _mm256_load_si256(v)),
                                             _mm256_madd_epi16(q[1], _mm256_load_si256(v + 1))),
                            _mm256_add_epi32(_mm256_madd_epi16(q[2], _mm256_load_si256(v + 2)),
                                             _mm256_madd_epi16(q[3], _mm256_load_si256(v + 3))));
  };
  const __m256i s = plane(d);
  if (!kWide || !wide) return s;
  return _mm256_add_epi32(s, _mm256_slli_epi32(plane(d + 64), 16));
}

// The 8 fp32 tile values of group g of one row (weights at w, scale bytes at s, lane order),
// stored at out. kCheck: `unfit` gets the valid lanes whose scale is NaN, past 2^125, or takes
// the tile sum outside the range where the fp32 scaling is exact.
template <bool kWide, bool kCheck, bool kTail>
inline void words_group(const uint8_t* w, const uint8_t* s, const Fp4WordActs& a, int64_t g,
                        __m256i table, int valid, int* unfit, float* out) {
  const int16_t* d = a.words + g * 4 * kChunkWords;
  const uint8_t* wide = a.wide + g * 4;
  // Pairs of chunks, each pair folded at once (four live chunk sums spill registers).
  auto pair = [&](int c) {
    const __m256i q0 =
        words_chunk<kWide, kTail>(w + 32 * c, d + c * kChunkWords, wide[c] != 0, table);
    const __m256i q1 = words_chunk<kWide, kTail>(w + 32 * (c + 1), d + (c + 1) * kChunkWords,
                                                 wide[c + 1] != 0, table);
    return _mm256_add_epi32(_mm256_unpacklo_epi32(q0, q1), _mm256_unpackhi_epi32(q0, q1));
  };
  const __m256i ab = pair(0);
  const __m256i cd = pair(2);
  __m256i sums = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
  sums = _mm256_sub_epi32(
      sums, _mm256_load_si256(reinterpret_cast<const __m256i*>(a.bias + g * kGroupTiles)));
  // The scale bytes in lane order: lane 4h + j takes tile 2j + h.
  uint64_t raw;
  std::memcpy(&raw, s, 8);
  const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i e =
      _mm256_cvtepu8_epi32(_mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<int64_t>(raw)), order));
  // u − 1 + e − 127 + 127: the fp32 exponent field of the tile's factor.
  const __m256i biased = _mm256_add_epi32(
      e, _mm256_load_si256(reinterpret_cast<const __m256i*>(a.unit + g * kGroupTiles)));
  if constexpr (kCheck) {
    const __m256i bad =
        _mm256_or_si256(_mm256_or_si256(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(kMaxFoldedScale)),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32(1), biased)),
                        _mm256_cmpgt_epi32(biased, _mm256_set1_epi32(127 + 96)));
    *unfit |= _mm256_movemask_ps(_mm256_castsi256_ps(bad)) & valid;
  }
  _mm256_store_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(sums),
                                     _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23))));
}

template <bool kCheck>
inline void words_row(const Fp4WordActs& a, const uint8_t* wr, const uint8_t* sr, int64_t full,
                      int64_t tail_bytes, int tail_tiles, __m256i table, int* unfit, float* out) {
  for (int64_t g = 0; g < full; ++g) {
    const uint8_t* w = wr + g * (kGroupTiles * 16);
    if (a.group_wide[g] != 0)
      words_group<true, kCheck, false>(w, sr + g * kGroupTiles, a, g, table, 0xFF, unfit,
                                       out + g * 8);
    else
      words_group<false, kCheck, false>(w, sr + g * kGroupTiles, a, g, table, 0xFF, unfit,
                                        out + g * 8);
  }
  if (full < a.groups) {  // the partial last group, from zero-padded copies
    alignas(32) uint8_t w[kGroupTiles * 16] = {};
    uint8_t s[kGroupTiles] = {};
    std::memcpy(w, wr + full * (kGroupTiles * 16), static_cast<size_t>(tail_bytes));
    std::memcpy(s, sr + full * kGroupTiles, static_cast<size_t>(tail_tiles));
    int valid = 0;
    for (int k = 0; k < tail_tiles; ++k) valid |= 1 << lane_of(k);
    words_group<true, true, true>(w, s, a, full, table, valid, unfit, out + full * 8);
  }
}

// Whether every tile of the rows whose scale bytes are the `count` bytes at sr scales exactly
// in fp32: e ≤ 2^125 and u − 1 + e within [1, 223] for every unit u − 1 of the call.
inline bool scales_fit(const Fp4WordActs& a, const uint8_t* sr, int64_t count) {
  __m256i lo = _mm256_set1_epi8(static_cast<char>(0xFF)), hi = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 32 <= count; k += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sr + k));
    lo = _mm256_min_epu8(lo, v);
    hi = _mm256_max_epu8(hi, v);
  }
  alignas(32) uint8_t l[32], h[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l), lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(h), hi);
  int emin = 255, emax = 0;
  for (int i = 0; i < 32; ++i) {
    emin = std::min<int>(emin, l[i]);
    emax = std::max<int>(emax, h[i]);
  }
  for (; k < count; ++k) {
    emin = std::min<int>(emin, sr[k]);
    emax = std::max<int>(emax, sr[k]);
  }
  return emax <= kMaxFoldedScale && a.unit_min + emin >= 1 && a.unit_max + emax <= 127 + 96;
}

// Rows [r, r + n) (n ≤ 8) of the call; buf holds 8 rows of per-group tile values.
void words_rows(const LinearTask& t, int64_t r, int n, float* buf) {
  const Fp4WordActs& a = *t.fp4_words;
  const WeightRef& w = *t.w;
  const int64_t row_bytes = w.in / 2, groups = a.groups;
  const int64_t full = a.tiles / kGroupTiles;  // groups wholly inside a row
  const int tail_tiles = static_cast<int>(a.tiles - full * kGroupTiles);
  const int64_t tail_bytes = row_bytes - full * (kGroupTiles * 16);
  const __m256i table = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4TwicePlus12)));
  uint32_t unfit_rows = 0;
  const uint8_t* scales = static_cast<const uint8_t*>(w.scale) + r * a.tiles;
  const bool block_fits = scales_fit(a, scales, n * a.tiles);
  for (int i = 0; i < n; ++i) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + (r + i) * row_bytes;
    const uint8_t* sr = scales + i * a.tiles;
    for (int64_t k = 0; k < a.tiles; k += 64)
      _mm_prefetch(reinterpret_cast<const char*>(sr + kRows * a.tiles + k), _MM_HINT_T0);
    int unfit = 0;
    float* out = buf + i * groups * 8;
    if (block_fits || scales_fit(a, sr, a.tiles))
      words_row<false>(a, wr, sr, full, tail_bytes, tail_tiles, table, &unfit, out);
    else
      words_row<true>(a, wr, sr, full, tail_bytes, tail_tiles, table, &unfit, out);
    if (unfit != 0) unfit_rows |= 1u << i;
  }
  for (int i = n; i < kRows; ++i)
    std::memset(buf + i * groups * 8, 0, static_cast<size_t>(groups) * 8 * 4);
  // Tiles in ascending K, one row per lane (the scalar path's fp32 order).
  __m256 acc = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256 col[8];
    for (int i = 0; i < kRows; ++i) col[i] = _mm256_load_ps(buf + (i * groups + g) * 8);
    transpose8(col);
    const int count = g < full ? 8 : tail_tiles;
    for (int k = 0; k < count; ++k) acc = _mm256_add_ps(acc, col[lane_of(k)]);
  }
  alignas(32) float result[8];
  _mm256_store_ps(result, acc);
  for (int i = 0; i < n; ++i) {
    if ((unfit_rows >> i) & 1) {  // a scale the fp32 scaling cannot take: the double path
      gemv_fp4_e8m0_avx2(t, r + i, r + i + 1);
      continue;
    }
    t.y[r + i - t.row_begin] = t.round_bf16 ? bf16_round(result[i]) : result[i];
  }
}

}  // namespace

void gemv_fp4_words(const LinearTask& t, int64_t r0, int64_t r1) {
  float* buf = reinterpret_cast<float*>(thread_scratch(kRows * t.fp4_words->groups * 8 / 2, 1));
  for (int64_t r = r0; r < r1; r += kRows)
    words_rows(t, r, static_cast<int>(std::min<int64_t>(kRows, r1 - r)), buf);
}

}  // namespace dsv4::kernels::detail
