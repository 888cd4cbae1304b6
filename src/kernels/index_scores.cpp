#include "kernels/index_scores.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/isa.h"
#include "kernels/linear_simd.h"
#include "kernels/numerics.h"

namespace dsv4::kernels {

// Integer form. Per 32-dim block b a query value is qc·2^(sq_b − 1) and a key value
// kc·2^(sk_b − 1), with qc, kc ∈ {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12} (twice the E2M1 values), so
// the block's dot product is (Σ qc·kc)·2^(sq_b + sk_b − 2): one VNNI dot product over the
// codes (keys biased by +12 to be unsigned, the bias removed with 12·Σ qc), exact in int32.
// The blocks' values, scaled in double, add exactly when the scales span at most 2^40: every
// partial sum is then a multiple of the smallest block's 2^(sq + sk − 2) below 2^(53 + that),
// so it equals the double dot product of the float values in any order. Sixteen keys share a
// vector: lane e holds key e's four codes of one 4-dim group.
#define DSV4_IDX_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))

// GCC 12's AVX-512 headers fill "don't care" lanes from `__m512d __Y = __Y;`, which
// -W(maybe-)uninitialized flags once inlined (a false positive, as in linear_avx512.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

constexpr int64_t kBlock = 32, kLanes = 16;
constexpr int kMaxSpan = 40;

int twice_e2m1_code(float v) {  // v on the doubled grid: its integer, else 99
  const float a = std::fabs(v);
  for (int c = 0; c < 8; ++c)
    if (a == static_cast<float>(detail::kFp4Twice[c]))
      return v < 0 ? -detail::kFp4Twice[c] : detail::kFp4Twice[c];
  return 99;
}

// The query as codes; false if a value is off its block's grid.
bool query_codes(const float* q, int64_t heads, int64_t dim, Fp4IndexQuery* out) {
  const int64_t blocks = dim / kBlock;
  out->codes.resize(heads * dim);
  out->bias.resize(heads * blocks);
  out->scale.resize(heads * blocks);
  out->span = 0;
  for (int64_t h = 0; h < heads; ++h) {
    int lo = 1 << 20, hi = -(1 << 20);
    for (int64_t b = 0; b < blocks; ++b) {
      const float* v = q + h * dim + b * kBlock;
      float amax = 0;
      for (int64_t d = 0; d < kBlock; ++d) {
        if (!std::isfinite(v[d])) return false;
        amax = std::max(amax, std::fabs(v[d]));
      }
      // The smallest power of two s with every |v| ≤ 6·s (what fp4_fake_quant used, or half
      // of it); the codes are then v / (s/2).
      int e = 0;
      if (amax > 0) {
        std::frexp(amax / 6.0f, &e);  // amax/6 in [2^(e-1), 2^e)
        if (std::ldexp(1.0f, e - 1) == amax / 6.0f) --e;
      }
      const float half = std::ldexp(1.0f, e - 1);
      int32_t sum = 0;
      for (int64_t d = 0; d < kBlock; ++d) {
        const int c = twice_e2m1_code(v[d] / half);
        if (c == 99 || static_cast<float>(c) * half != v[d]) return false;
        out->codes[h * dim + b * kBlock + d] = static_cast<int8_t>(c);
        sum += c;
      }
      out->bias[h * blocks + b] = 12 * sum;
      out->scale[h * blocks + b] = std::ldexp(1.0, e - 1);
      if (amax > 0) lo = std::min(lo, e), hi = std::max(hi, e);  // zero blocks add nothing
    }
    if (hi >= lo) out->span = std::max(out->span, hi - lo);
  }
  return true;
}

DSV4_IDX_VNNI inline __m512 bf16_round16(__m512 v) {  // bf16_round per lane (inf/NaN kept)
  const __m512i u = _mm512_castps_si512(v);
  const __m512i r = _mm512_and_si512(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                       _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))),
      _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  const __mmask16 special = _mm512_cmpeq_epi32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7f800000)), _mm512_set1_epi32(0x7f800000));
  return _mm512_castsi512_ps(_mm512_mask_blend_epi32(special, r, u));
}

DSV4_IDX_VNNI void score_keys(const Fp4IndexQuery& qc, const float* w, const uint8_t* const* keys,
                              int64_t n, float* score, uint8_t* fallback) {
  const int64_t heads = qc.heads, dim = qc.dim;
  const int64_t blocks = dim / kBlock, groups = dim / 4;  // 4-dim groups
  // Per 16 keys: codes + 12 by 4-dim group, lanes = keys; 2^(sk − 1) per block, 8 keys per
  // double vector.
  std::vector<uint32_t> kt(groups * kLanes);
  std::vector<double> ks(blocks * kLanes);
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const int64_t nk = std::min(kLanes, n - j0);
    bool any = false;
    for (int64_t e = 0; e < kLanes; ++e) {
      const int64_t j = j0 + std::min(e, nk - 1);  // missing lanes repeat the last key
      const uint8_t* row = keys[j];
      const uint8_t* sb = row + dim / 2;
      int lo = 255, hi = 0;
      for (int64_t b = 0; b < blocks; ++b)
        lo = std::min<int>(lo, sb[b]), hi = std::max<int>(hi, sb[b]);
      const bool ok = hi != 255 && lo != 0 && hi - lo + qc.span <= kMaxSpan;
      if (e < nk) fallback[j] = ok ? 0 : 1;
      any = any || (ok && e < nk);
      for (int64_t b = 0; b < blocks; ++b)
        ks[b * kLanes + e] = ok ? std::ldexp(1.0, static_cast<int>(sb[b]) - 128) : 0.0;
      // 16 code bytes → 32 dims: nibbles through the table of code + 12, low nibble first.
      const __m128i table =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(detail::kFp4TwicePlus12));
      const __m128i nibble = _mm_set1_epi8(0x0f);
      for (int64_t c = 0; c < dim / 2; c += 16) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
        const __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(bytes, nibble));
        const __m128i hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble));
        alignas(16) uint32_t words[8];
        _mm_store_si128(reinterpret_cast<__m128i*>(words), _mm_unpacklo_epi8(lo, hi));
        _mm_store_si128(reinterpret_cast<__m128i*>(words + 4), _mm_unpackhi_epi8(lo, hi));
        for (int64_t t = 0; t < 8; ++t) kt[(c / 2 + t) * kLanes + e] = words[t];
      }
    }
    if (!any) continue;
    __m512 total = _mm512_setzero_ps();
    for (int64_t h = 0; h < heads; ++h) {
      const int8_t* qh = qc.codes.data() + h * dim;
      __m512d lo_sum = _mm512_setzero_pd(), hi_sum = _mm512_setzero_pd();
      __m512d part_lo = _mm512_setzero_pd(), part_hi = part_lo;
      for (int64_t b = 0; b < blocks; ++b) {
        __m512i acc = _mm512_setzero_si512();
        for (int64_t g = 8 * b; g < 8 * b + 8; ++g) {
          int32_t qword;
          __builtin_memcpy(&qword, qh + 4 * g, 4);
          acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(kt.data() + g * kLanes),
                                    _mm512_set1_epi32(qword));
        }
        acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(qc.bias[h * blocks + b]));
        const __m512d sq = _mm512_set1_pd(qc.scale[h * blocks + b]);
        const __m512d vlo =
            _mm512_mul_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(acc)), sq),
                          _mm512_loadu_pd(ks.data() + b * kLanes));
        const __m512d vhi =
            _mm512_mul_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(acc, 1)), sq),
                          _mm512_loadu_pd(ks.data() + b * kLanes + 8));
        // Exact in any order (see above): pairs, then the pairs' sums.
        if (b % 2 == 0) {
          part_lo = vlo, part_hi = vhi;
        } else {
          lo_sum = _mm512_add_pd(lo_sum, _mm512_add_pd(part_lo, vlo));
          hi_sum = _mm512_add_pd(hi_sum, _mm512_add_pd(part_hi, vhi));
        }
      }
      if (blocks % 2 == 1) {
        lo_sum = _mm512_add_pd(lo_sum, part_lo);
        hi_sum = _mm512_add_pd(hi_sum, part_hi);
      }
      const __m512 dot = _mm512_castpd_ps(
          _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm512_cvtpd_ps(lo_sum))),
                             _mm256_castps_pd(_mm512_cvtpd_ps(hi_sum)), 1));
      // std::max(x, 0.0f): x unless x < 0 (so −0 and NaN stay).
      const __m512 rounded = bf16_round16(dot);
      const __m512 relu =
          _mm512_mask_blend_ps(_mm512_cmp_ps_mask(rounded, _mm512_setzero_ps(), _CMP_LT_OQ),
                               rounded, _mm512_setzero_ps());
      total = _mm512_add_ps(total, bf16_round16(_mm512_mul_ps(relu, _mm512_set1_ps(w[h]))));
    }
    alignas(64) float out[kLanes];
    _mm512_store_ps(out, bf16_round16(total));
    for (int64_t e = 0; e < nk; ++e)
      if (!fallback[j0 + e]) score[j0 + e] = out[e];
  }
}

}  // namespace

#pragma GCC diagnostic pop

void prepare_fp4_index_query(const float* q, int64_t heads, int64_t dim, Fp4IndexQuery* out) {
  out->heads = heads;
  out->dim = dim;
  out->usable = active_isa() == Isa::kAvx512 && detail::avx512_vnni_usable() && dim % kBlock == 0 &&
                dim > 0 && query_codes(q, heads, dim, out);
}

bool fp4_index_scores(const Fp4IndexQuery& q, const float* w, const uint8_t* const* keys, int64_t n,
                      float* score, uint8_t* fallback) {
  if (!q.usable) return false;
  score_keys(q, w, keys, n, score, fallback);
  return true;
}

}  // namespace dsv4::kernels
