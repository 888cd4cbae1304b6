#include "kernels/ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>

#include "kernels/dispatch.h"
#include "kernels/isa.h"
#include "kernels/numerics.h"
#include "util/error.h"
#include "util/threadpool.h"

namespace dsv4::kernels {

void rms_norm(const float* x, int64_t m, int64_t n, const float* weight, float eps, float* y) {
  parallel_for_rows(m, n, [&](int64_t i) {
    const float* xi = x + i * n;
    float* yi = y + i * n;
    double ss = 0;
    for (int64_t k = 0; k < n; ++k) ss += static_cast<double>(xi[k]) * xi[k];
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
    for (int64_t k = 0; k < n; ++k) yi[k] = bf16_round(weight[k] * (xi[k] * r));
  });
}

void rms_norm_bf16_noweight(float* x, int64_t n, float eps, bool exact_rsqrt) {
  double ss = 0;
  for (int64_t k = 0; k < n; ++k) ss += bf16_round(x[k] * x[k]);
  const float mean = bf16_round(static_cast<float>(ss / static_cast<double>(n)));
  const float sq = std::sqrt(bf16_round(mean + eps));
  const float r = bf16_round(1.0f / (exact_rsqrt ? sq : bf16_round(sq)));
  for (int64_t k = 0; k < n; ++k) x[k] = bf16_round(x[k] * r);
}

void yarn_correction_range(int64_t dim, double base, int64_t original_seq_len, double beta_fast,
                           double beta_slow, int64_t* low, int64_t* high) {
  auto correction_dim = [&](double rotations) {
    return dim * std::log(original_seq_len / (rotations * 2 * M_PI)) / (2 * std::log(base));
  };
  *low = std::max<int64_t>(static_cast<int64_t>(std::floor(correction_dim(beta_fast))), 0);
  *high = std::min<int64_t>(static_cast<int64_t>(std::ceil(correction_dim(beta_slow))), dim - 1);
}

RopeTable::RopeTable(int64_t rope_dim, double base, bool yarn, double factor,
                     int64_t original_seq_len, double beta_fast, double beta_slow)
    : dim_(rope_dim) {
  if (rope_dim <= 0 || rope_dim % 2)
    fail("rope dimension must be positive and even, got ", rope_dim);
  const int64_t half = rope_dim / 2;
  freqs_.resize(half);
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    freqs_[i] = 1.0f / static_cast<float>(std::pow(base, static_cast<double>(expo)));
  }
  if (yarn && original_seq_len > 0) {
    int64_t low, high;
    yarn_correction_range(rope_dim, base, original_seq_len, beta_fast, beta_slow, &low, &high);
    float lo = static_cast<float>(low), hi = static_cast<float>(high);
    if (lo == hi) hi += 0.001f;
    for (int64_t i = 0; i < half; ++i) {
      const float ramp = std::clamp((static_cast<float>(i) - lo) / (hi - lo), 0.0f, 1.0f);
      const float smooth = 1.0f - ramp;
      freqs_[i] = freqs_[i] / static_cast<float>(factor) * (1.0f - smooth) + freqs_[i] * smooth;
    }
  }
}

void RopeTable::apply(float* x, int64_t pos, bool inverse) const {
  const float t = static_cast<float>(pos);
  for (int64_t i = 0; i < dim_ / 2; ++i) {
    const float angle = t * freqs_[i];
    const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
    float s = static_cast<float>(std::sin(static_cast<double>(angle)));
    if (inverse) s = -s;
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = bf16_round(a * c - b * s);
    x[2 * i + 1] = bf16_round(a * s + b * c);
  }
}

void hadamard(float* x, int64_t n, float scale) {
  if (n <= 0 || (n & (n - 1))) fail("Hadamard transform needs a power-of-two length, got ", n);
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

void hc_split_sinkhorn(const float* mix, int64_t hc, const float* scale, const float* base,
                       int64_t iters, float eps, float* pre, float* post, float* comb) {
  auto sigmoid = [](float v) { return 1.0f / (1.0f + std::exp(-v)); };
  for (int64_t j = 0; j < hc; ++j) {
    pre[j] = sigmoid(mix[j] * scale[0] + base[j]) + eps;
    post[j] = 2.0f * sigmoid(mix[hc + j] * scale[1] + base[hc + j]);
  }
  float* c = comb;
  for (int64_t k = 0; k < hc * hc; ++k) c[k] = mix[2 * hc + k] * scale[2] + base[2 * hc + k];
  auto col_normalise = [&] {
    for (int64_t j = 0; j < hc; ++j) {
      float sum = 0;
      for (int64_t i = 0; i < hc; ++i) sum += c[i * hc + j];
      for (int64_t i = 0; i < hc; ++i) c[i * hc + j] /= sum + eps;
    }
  };
  for (int64_t i = 0; i < hc; ++i) {  // the first row normalisation is a softmax
    softmax(c + i * hc, hc);
    for (int64_t j = 0; j < hc; ++j) c[i * hc + j] += eps;
  }
  col_normalise();
  for (int64_t it = 1; it < iters; ++it) {
    for (int64_t i = 0; i < hc; ++i) {
      float sum = 0;
      for (int64_t j = 0; j < hc; ++j) sum += c[i * hc + j];
      for (int64_t j = 0; j < hc; ++j) c[i * hc + j] /= sum + eps;
    }
    col_normalise();
  }
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] /= sum;
}

std::vector<int32_t> topk(const float* s, int64_t n, int64_t k) {
  k = std::clamp<int64_t>(k, 0, n);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  auto better = [s](int32_t a, int32_t b) {
    const float va = s[a], vb = s[b];
    const bool na = std::isnan(va), nb = std::isnan(vb);
    if (na != nb) return nb;  // a wins only if b is NaN
    if (!na && va != vb) return va > vb;
    return a < b;
  };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
  order.resize(k);
  return order;
}

void sparse_attention(const float* q, int64_t m, int64_t heads, int64_t dim, const float* kv,
                      const int32_t* idx, int64_t width, const float* sink, float scale,
                      float* out) {
  int32_t n_rows = 0;
  for (int64_t i = 0; i < m * width; ++i) n_rows = std::max(n_rows, idx[i] + 1);
  std::vector<const float*> rows(n_rows);
  for (int32_t r = 0; r < n_rows; ++r) rows[r] = kv + static_cast<int64_t>(r) * dim;
  sparse_attention(q, m, heads, dim, rows.data(), idx, width, sink, scale, out);
}

namespace {

// dot_f64(a + g·dim, b, dim) for g < n (n ≤ 16), the same four lane sums in the same order per
// row, but eight rows at a time so that their FMA chains overlap (one chain alone waits on the
// FMA latency), and b converted to double once for all of them. Products of two floats are
// exact in double, so an FMA adds exactly what the scalar `s += double(a)·b` adds.
void dot_f64_heads(const float* a, int64_t dim, int64_t n, const float* b, double* out) {
  const int64_t body = dim / 4 * 4;
  for (int64_t g0 = 0; g0 < n; g0 += 8) {
    const int64_t ng = std::min<int64_t>(8, n - g0);
    __m256d acc[8];
    for (int g = 0; g < 8; ++g) acc[g] = _mm256_setzero_pd();
    for (int64_t k = 0; k < body; k += 4) {
      const __m256d bd = _mm256_cvtps_pd(_mm_loadu_ps(b + k));
      for (int64_t g = 0; g < ng; ++g)
        acc[g] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + (g0 + g) * dim + k)), bd, acc[g]);
    }
    for (int64_t g = 0; g < ng; ++g) {
      alignas(32) double s[4];
      _mm256_store_pd(s, acc[g]);
      const float* ag = a + (g0 + g) * dim;
      for (int64_t k = body; k < dim; ++k) s[0] += static_cast<double>(ag[k]) * b[k];
      out[g0 + g] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  }
}

// AVX-512 forms of the two inner loops, with the same arithmetic (every product here is exact
// in double, so an FMA adds exactly what `s += double(a)·b` adds, and each lane keeps its
// order): eight doubles per instruction instead of four.
#define DSV4_ATTN_AVX512 __attribute__((target("avx512f,avx2,fma")))
// GCC 12's AVX-512 headers fill "don't care" lanes from `__m512d __Y = __Y;`, which
// -W(maybe-)uninitialized flags once inlined (a false positive, as in linear_avx512.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// The group's query rows (n ≤ 16, dim a multiple of 4) as doubles, two heads per 8-double
// vector: pair p, step k/4 holds q[2p][k .. k+3] then q[2p+1][k .. k+3] (a missing odd head +0).
DSV4_ATTN_AVX512 void pack_head_pairs(const float* a, int64_t dim, int64_t n, double* qp) {
  const int64_t steps = dim / 4;
  for (int64_t p = 0; 2 * p < n; ++p)
    for (int64_t s = 0; s < steps; ++s) {
      const __m128 lo = _mm_loadu_ps(a + 2 * p * dim + 4 * s);
      const __m128 hi =
          2 * p + 1 < n ? _mm_loadu_ps(a + (2 * p + 1) * dim + 4 * s) : _mm_setzero_ps();
      _mm512_storeu_pd(
          qp + (p * steps + s) * 8,
          _mm512_insertf64x4(_mm512_zextpd256_pd512(_mm256_cvtps_pd(lo)), _mm256_cvtps_pd(hi), 1));
    }
}

constexpr int64_t kRowsPerPass = 4;

// dot_f64_heads over packed head pairs for four kv rows at once: lanes 0..3 of pair p are head
// 2p's four lane sums, lanes 4..7 head 2p + 1's, each in dot_f64_heads' order; every packed
// query load serves four rows. out[j][g]: row j, head g.
DSV4_ATTN_AVX512 void dot_f64_head_pairs4(const double* qp, int64_t dim, int64_t n,
                                          const float* const* b, double (*out)[16]) {
  const int64_t steps = dim / 4, pairs = (n + 1) / 2;
  for (int64_t p0 = 0; p0 < pairs; p0 += 4) {
    const int64_t np = std::min<int64_t>(4, pairs - p0);
    __m512d acc[4][kRowsPerPass];
    for (auto& per_pair : acc)
      for (__m512d& a : per_pair) a = _mm512_setzero_pd();
    for (int64_t s = 0; s < steps; ++s) {
      __m512d bb[kRowsPerPass];
      for (int64_t j = 0; j < kRowsPerPass; ++j)
        bb[j] = _mm512_broadcast_f64x4(_mm256_cvtps_pd(_mm_loadu_ps(b[j] + 4 * s)));
      for (int64_t p = 0; p < 4; ++p) {
        if (p >= np) break;
        const __m512d qv = _mm512_loadu_pd(qp + ((p0 + p) * steps + s) * 8);
        for (int64_t j = 0; j < kRowsPerPass; ++j)
          acc[p][j] = _mm512_fmadd_pd(qv, bb[j], acc[p][j]);
      }
    }
    for (int64_t p = 0; p < np; ++p)
      for (int64_t j = 0; j < kRowsPerPass; ++j) {
        alignas(64) double v[8];
        _mm512_store_pd(v, acc[p][j]);
        out[j][2 * (p0 + p)] = (v[0] + v[1]) + (v[2] + v[3]);
        if (2 * (p0 + p) + 1 < n) out[j][2 * (p0 + p) + 1] = (v[4] + v[5]) + (v[6] + v[7]);
      }
  }
}

// One tile's P·V updates for a group of heads, with acc (nh rows of dim doubles; the last block
// of dims masked) held in registers: per block of 8 heads and 16 dims, the rescale, then every
// listed
// row e in order, acc += p[g][e]·v[e] (exact products, so each fused add is the scalar loop's
// add, per element in the same order; heads that skip the tile are computed but not stored). The
// group's accumulators (16 heads × 512 dims: 64 KB) no longer stream through L1 once per row.
DSV4_ATTN_AVX512 void pv_tile_avx512(double* acc, int64_t nh, int64_t dim, const float* const* rows,
                                     int64_t n_rows, const double* p, int64_t ldp,
                                     const float* rescale, const bool* active) {
  for (int64_t g0 = 0; g0 < nh; g0 += 8) {
    const int64_t ng = std::min<int64_t>(8, nh - g0);
    for (int64_t d0 = 0; d0 < dim; d0 += 16) {
      const int64_t nd = std::min<int64_t>(16, dim - d0);
      const auto m16 = static_cast<__mmask16>((1u << nd) - 1);
      const auto m_lo = static_cast<__mmask8>(m16 & 0xFF), m_hi = static_cast<__mmask8>(m16 >> 8);
      __m512d a[8][2];
      for (int64_t g = 0; g < 8; ++g) {
        if (g < ng) {
          const __m512d r = _mm512_set1_pd(rescale[g0 + g]);
          const double* src = acc + (g0 + g) * dim + d0;
          a[g][0] = _mm512_mul_pd(_mm512_maskz_loadu_pd(m_lo, src), r);
          a[g][1] = _mm512_mul_pd(_mm512_maskz_loadu_pd(m_hi, src + 8), r);
        } else {
          a[g][0] = a[g][1] = _mm512_setzero_pd();
        }
      }
      for (int64_t e = 0; e < n_rows; ++e) {
        const __m512 v = _mm512_maskz_loadu_ps(m16, rows[e] + d0);
        const __m512d v0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d v1 =
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        for (int64_t g = 0; g < 8; ++g) {
          const __m512d pb = _mm512_set1_pd(p[(g0 + g) * ldp + e]);
          a[g][0] = _mm512_fmadd_pd(pb, v0, a[g][0]);
          a[g][1] = _mm512_fmadd_pd(pb, v1, a[g][1]);
        }
      }
      for (int64_t g = 0; g < ng; ++g)
        if (active[g0 + g]) {
          double* dst = acc + (g0 + g) * dim + d0;
          _mm512_mask_storeu_pd(dst, m_lo, a[g][0]);
          _mm512_mask_storeu_pd(dst + 8, m_hi, a[g][1]);
        }
    }
  }
}
#pragma GCC diagnostic pop

// AVX2 forms of the two inner loops (dim a multiple of 8), the same arithmetic as the scalar
// ones: register blocks instead of one head's accumulators streamed through L1 per row.

// dot_f64_heads for NR kv rows against NH heads (h0 ..) of the group's queries packed as
// doubles (qd: row g at g·dim): per (row, head) the same four lane sums in the same order.
template <int NR, int NH>
void dot_f64_block_avx2(const double* qd, int64_t dim, int64_t h0, const float* const* b,
                        double (*out)[16]) {
  __m256d acc[NR][NH];
  for (int r = 0; r < NR; ++r)
    for (int h = 0; h < NH; ++h) acc[r][h] = _mm256_setzero_pd();
  for (int64_t k = 0; k < dim; k += 4) {
    __m256d bv[NR];
    for (int r = 0; r < NR; ++r) bv[r] = _mm256_cvtps_pd(_mm_loadu_ps(b[r] + k));
    for (int h = 0; h < NH; ++h) {
      const __m256d qv = _mm256_loadu_pd(qd + (h0 + h) * dim + k);
      for (int r = 0; r < NR; ++r) acc[r][h] = _mm256_fmadd_pd(qv, bv[r], acc[r][h]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int h = 0; h < NH; ++h) {
      alignas(32) double v[4];
      _mm256_store_pd(v, acc[r][h]);
      out[r][h0 + h] = (v[0] + v[1]) + (v[2] + v[3]);
    }
}

constexpr int64_t kRowsPerPassAvx2 = 2, kHeadsPerBlockAvx2 = 6;

// dot_f64_heads for two kv rows against all n ≤ 16 heads.
void dot_f64_heads2_avx2(const double* qd, int64_t dim, int64_t n, const float* const* b,
                         double (*out)[16]) {
  for (int64_t h0 = 0; h0 < n; h0 += kHeadsPerBlockAvx2) {
    detail::with_block_size<kHeadsPerBlockAvx2>(static_cast<int>(n - h0), [&](auto heads) {
      dot_f64_block_avx2<2, decltype(heads)::value>(qd, dim, h0, b, out);
    });
  }
}

// pv_tile_avx512's updates for NG heads (g0 ..) and 8 dims at a time: the rescale as acc is
// loaded, then acc += p·v for every listed row in order (exact products: each fused add is the
// scalar loop's add); heads that skip the tile are computed but not stored.
template <int NG>
void pv_block_avx2(double* acc, int64_t g0, int64_t dim, const float* const* rows, int64_t n_rows,
                   const double* p, int64_t ldp, const float* rescale, const bool* active) {
  for (int64_t d0 = 0; d0 < dim; d0 += 8) {
    __m256d a[NG][2];
    for (int g = 0; g < NG; ++g) {
      const __m256d r = _mm256_set1_pd(rescale[g0 + g]);
      const double* src = acc + (g0 + g) * dim + d0;
      a[g][0] = _mm256_mul_pd(_mm256_loadu_pd(src), r);
      a[g][1] = _mm256_mul_pd(_mm256_loadu_pd(src + 4), r);
    }
    for (int64_t e = 0; e < n_rows; ++e) {
      const __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(rows[e] + d0));
      const __m256d v1 = _mm256_cvtps_pd(_mm_loadu_ps(rows[e] + d0 + 4));
      for (int g = 0; g < NG; ++g) {
        const __m256d pb = _mm256_broadcast_sd(p + (g0 + g) * ldp + e);
        a[g][0] = _mm256_fmadd_pd(pb, v0, a[g][0]);
        a[g][1] = _mm256_fmadd_pd(pb, v1, a[g][1]);
      }
    }
    for (int g = 0; g < NG; ++g)
      if (active[g0 + g]) {
        double* dst = acc + (g0 + g) * dim + d0;
        _mm256_storeu_pd(dst, a[g][0]);
        _mm256_storeu_pd(dst + 4, a[g][1]);
      }
  }
}

void pv_tile_avx2(double* acc, int64_t nh, int64_t dim, const float* const* rows, int64_t n_rows,
                  const double* p, int64_t ldp, const float* rescale, const bool* active) {
  for (int64_t g0 = 0; g0 < nh; g0 += kHeadsPerBlockAvx2) {
    detail::with_block_size<kHeadsPerBlockAvx2>(static_cast<int>(nh - g0), [&](auto heads) {
      pv_block_avx2<decltype(heads)::value>(acc, g0, dim, rows, n_rows, p, ldp, rescale, active);
    });
  }
}

}  // namespace

void sparse_attention(const float* q, int64_t m, int64_t heads, int64_t dim,
                      const float* const* kv_rows, const int32_t* idx, int64_t width,
                      const float* sink, float scale, float* out) {
  // sparse_attention_reference's arithmetic, per (query, head) in the same order; only the loop
  // nest differs. V4 attention is multi-query (every head reads the same kv rows), so a task
  // takes one query and a group of heads and walks the list once: each row is fetched once for
  // the whole group (it stays in L1) instead of once per head.
  constexpr int64_t kTile = 64, kGroup = 16;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t groups = (heads + kGroup - 1) / kGroup;
  const bool avx512 = active_isa() == Isa::kAvx512 && dim % 4 == 0;
  const bool avx2 = !avx512 && active_isa() != Isa::kScalar && dim % 8 == 0;
  const bool blocked = avx512 || avx2;  // probabilities first, then the P·V kernel
  parallel_for(m * groups, [&](int64_t t0, int64_t t1, int) {
    std::vector<double> acc(kGroup * dim);
    std::vector<float> z(kGroup * kTile);
    std::vector<double> qp(blocked ? kGroup * dim : 0), probs(blocked ? kGroup * kTile : 0);
    const float* tile_rows[kTile];
    float run_max[kGroup], denom[kGroup], new_max[kGroup], rescale[kGroup];
    bool active[kGroup];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / groups, h0 = (task % groups) * kGroup;
      const int64_t nh = std::min(kGroup, heads - h0);
      const int32_t* row = idx + i * width;
      std::fill(acc.begin(), acc.begin() + nh * dim, 0.0);
      for (int64_t g = 0; g < nh; ++g) run_max[g] = kNegInf, denom[g] = 0;
      if (avx512) pack_head_pairs(q + (i * heads + h0) * dim, dim, nh, qp.data());
      if (avx2) {
        const float* qg = q + (i * heads + h0) * dim;
        for (int64_t k = 0; k < nh * dim; ++k) qp[k] = qg[k];
      }
      for (int64_t b0 = 0; b0 < width; b0 += kTile) {
        const int64_t b1 = std::min(width, b0 + kTile);
        // The tile's listed rows in passes of R over the group's queries (AVX-512: 4, one pass
        // per row read the group's 64 KB of packed queries from L2 for every row; AVX2: 2).
        const auto score_listed = [&](auto rows_per_pass, auto dot) {
          constexpr int64_t R = decltype(rows_per_pass)::value;
          int64_t listed[R], n = 0;
          const auto flush = [&] {
            const float* rows_r[R];
            for (int64_t j = 0; j < R; ++j) rows_r[j] = kv_rows[row[listed[j < n ? j : 0]]];
            double dots[R][kGroup];
            dot(rows_r, dots);
            for (int64_t j = 0; j < n; ++j)
              for (int64_t g = 0; g < nh; ++g)
                z[g * kTile + listed[j] - b0] = static_cast<float>(dots[j][g]) * scale;
            n = 0;
          };
          for (int64_t e = b0; e < b1; ++e) {
            if (row[e] < 0) {
              for (int64_t g = 0; g < nh; ++g) z[g * kTile + e - b0] = kNegInf;
              continue;
            }
            listed[n++] = e;
            if (n == R) flush();
          }
          if (n > 0) flush();
        };
        if (avx512) {
          score_listed(std::integral_constant<int64_t, kRowsPerPass>{},
                       [&](const float* const* rows_r, double(*dots)[kGroup]) {
                         dot_f64_head_pairs4(qp.data(), dim, nh, rows_r, dots);
                       });
        } else if (avx2) {
          score_listed(std::integral_constant<int64_t, kRowsPerPassAvx2>{},
                       [&](const float* const* rows_r, double(*dots)[kGroup]) {
                         dot_f64_heads2_avx2(qp.data(), dim, nh, rows_r, dots);
                       });
        } else {
          for (int64_t e = b0; e < b1; ++e) {
            const float* kr = row[e] >= 0 ? kv_rows[row[e]] : nullptr;
            double dots[kGroup];
            if (kr) dot_f64_heads(q + (i * heads + h0) * dim, dim, nh, kr, dots);
            for (int64_t g = 0; g < nh; ++g)
              z[g * kTile + e - b0] = kr ? static_cast<float>(dots[g]) * scale : kNegInf;
          }
        }
        bool any = false;
        for (int64_t g = 0; g < nh; ++g) {
          float tile_max = kNegInf;
          for (int64_t e = b0; e < b1; ++e) tile_max = std::max(tile_max, z[g * kTile + e - b0]);
          new_max[g] = std::max(run_max[g], tile_max);
          active[g] = new_max[g] != kNegInf;
          if (!active[g]) continue;  // nothing visible yet (for any head)
          any = true;
          rescale[g] = run_max[g] == kNegInf ? 0.0f : std::exp(run_max[g] - new_max[g]);
          denom[g] *= rescale[g];
          if (blocked) continue;  // the P·V kernels rescale as they load
          double* a = acc.data() + g * dim;
          for (int64_t d = 0; d < dim; ++d) a[d] *= rescale[g];
        }
        if (!any) continue;
        if (blocked) {
          // The probabilities first (per head in row order, as below), then all P·V updates.
          int64_t n_rows = 0;
          for (int64_t e = b0; e < b1; ++e) {
            if (row[e] < 0) continue;
            for (int64_t g = 0; g < nh; ++g) {
              double pb = 0;
              if (active[g]) {
                const float p = std::exp(z[g * kTile + e - b0] - new_max[g]);
                denom[g] += p;
                pb = bf16_round(p);
              }
              probs[g * kTile + n_rows] = pb;
            }
            tile_rows[n_rows++] = kv_rows[row[e]];
          }
          if (avx512)
            pv_tile_avx512(acc.data(), nh, dim, tile_rows, n_rows, probs.data(), kTile, rescale,
                           active);
          else
            pv_tile_avx2(acc.data(), nh, dim, tile_rows, n_rows, probs.data(), kTile, rescale,
                         active);
          for (int64_t g = 0; g < nh; ++g) run_max[g] = new_max[g];
          continue;
        }
        for (int64_t e = b0; e < b1; ++e) {
          if (row[e] < 0) continue;
          const float* vr = kv_rows[row[e]];
          for (int64_t g = 0; g < nh; ++g) {
            if (new_max[g] == kNegInf) continue;  // this head skips the tile, as the reference
            const float p = std::exp(z[g * kTile + e - b0] - new_max[g]);
            denom[g] += p;
            const double pb = bf16_round(p);
            double* a = acc.data() + g * dim;
            for (int64_t d = 0; d < dim; ++d) a[d] += pb * vr[d];
          }
        }
        for (int64_t g = 0; g < nh; ++g) run_max[g] = new_max[g];
      }
      for (int64_t g = 0; g < nh; ++g) {
        float* o = out + (i * heads + h0 + g) * dim;
        if (run_max[g] == kNegInf) {  // no visible key: only the sink, output zero
          std::fill(o, o + dim, 0.0f);
          continue;
        }
        const float den = denom[g] + std::exp(sink[h0 + g] - run_max[g]);
        const double* a = acc.data() + g * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] = bf16_round(static_cast<float>(a[d]) / den);
      }
    }
  });
}

void sparse_attention_reference(const float* q, int64_t m, int64_t heads, int64_t dim,
                                const float* const* kv_rows, const int32_t* idx, int64_t width,
                                const float* sink, float scale, float* out) {
  constexpr int64_t kTile = 64;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  parallel_for(m * heads, [&](int64_t t0, int64_t t1, int) {
    std::vector<double> acc(dim);
    std::vector<float> z(kTile);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / heads, h = task % heads;
      const float* qv = q + (i * heads + h) * dim;
      const int32_t* row = idx + i * width;
      std::fill(acc.begin(), acc.end(), 0.0);
      float run_max = kNegInf, denom = 0;
      for (int64_t b0 = 0; b0 < width; b0 += kTile) {
        const int64_t b1 = std::min(width, b0 + kTile);
        float tile_max = kNegInf;
        for (int64_t e = b0; e < b1; ++e) {
          float v = kNegInf;
          if (row[e] >= 0) {
            const float* kr = kv_rows[row[e]];
            v = static_cast<float>(dot_f64(qv, kr, dim)) * scale;
          }
          z[e - b0] = v;
          tile_max = std::max(tile_max, v);
        }
        const float new_max = std::max(run_max, tile_max);
        if (new_max == kNegInf) continue;  // nothing visible yet
        const float rescale = run_max == kNegInf ? 0.0f : std::exp(run_max - new_max);
        denom *= rescale;
        for (int64_t d = 0; d < dim; ++d) acc[d] *= rescale;
        for (int64_t e = b0; e < b1; ++e) {
          if (row[e] < 0) continue;
          const float p = std::exp(z[e - b0] - new_max);
          denom += p;
          const float pb = bf16_round(p);
          const float* vr = kv_rows[row[e]];
          for (int64_t d = 0; d < dim; ++d) acc[d] += static_cast<double>(pb) * vr[d];
        }
        run_max = new_max;
      }
      float* o = out + (i * heads + h) * dim;
      if (run_max == kNegInf) {  // no visible key: only the sink, output zero
        std::fill(o, o + dim, 0.0f);
        continue;
      }
      denom += std::exp(sink[h] - run_max);
      for (int64_t d = 0; d < dim; ++d) o[d] = bf16_round(static_cast<float>(acc[d]) / denom);
    }
  });
}

}  // namespace dsv4::kernels
