#include "model/mhc.h"

#include <cmath>

#include "kernels/numerics.h"
#include "util/threadpool.h"

namespace dsv4 {

namespace {

// mix[n, m] = (x_flat · fnᵀ) · rsqrt(mean(x_flat²) + eps), all fp32.
std::vector<float> hc_mix(const ModelContext& ctx, const HyperConnection& w, const float* x,
                          int64_t n) {
  const int64_t flat = ctx.cfg.hc_dim();
  const int64_t m = w.fn.dim(0);
  std::vector<float> mix(n * m);
  kernels::plain_linear(x, n, flat, weight_ref(w.fn), 0, m, mix.data(), m, false);
  parallel_for_rows(n, flat, [&](int64_t i) {
    const float* xi = x + i * flat;
    double ss = 0;
    for (int64_t k = 0; k < flat; ++k) ss += static_cast<double>(xi[k]) * xi[k];
    const float r =
        1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(flat)) + ctx.eps());
    for (int64_t k = 0; k < m; ++k) mix[i * m + k] *= r;
  });
  return mix;
}

}  // namespace

void hc_pre(const ModelContext& ctx, const HyperConnection& w, const float* x, int64_t n, float* y,
            HcMix* out_mix) {
  const int64_t hc = ctx.cfg.hc_mult, dim = ctx.cfg.dim;
  const std::vector<float> mix = hc_mix(ctx, w, x, n);
  const int64_t m = ctx.cfg.hc_mix_dim();
  const std::vector<float> scale_v = to_f32(w.scale), base_v = to_f32(w.base);
  const float* scale = scale_v.data();
  const float* base = base_v.data();
  out_mix->post.resize(n * hc);
  out_mix->comb.resize(n * hc * hc);
  parallel_for_rows(n, hc * dim, [&](int64_t i) {
    std::vector<float> pre(hc);
    kernels::hc_split_sinkhorn(mix.data() + i * m, hc, scale, base, ctx.cfg.hc_sinkhorn_iters,
                               static_cast<float>(ctx.cfg.hc_eps), pre.data(),
                               out_mix->post.data() + i * hc, out_mix->comb.data() + i * hc * hc);
    for (int64_t c = 0; c < dim; ++c) {
      float acc = 0;
      for (int64_t s = 0; s < hc; ++s) acc += pre[s] * x[(i * hc + s) * dim + c];
      y[i * dim + c] = kernels::bf16_round(acc);
    }
  });
}

void hc_post(const ModelContext& ctx, const float* x, const float* residual, const HcMix& mix,
             int64_t n, float* out) {
  const int64_t hc = ctx.cfg.hc_mult, dim = ctx.cfg.dim;
  // (out may alias residual: each row is built aside, then copied.)
  parallel_for_rows(n, hc * dim, [&](int64_t i) {
    std::vector<float> row(hc * dim);
    const float* post = mix.post.data() + i * hc;
    const float* comb = mix.comb.data() + i * hc * hc;
    const float* res = residual + i * hc * dim;
    for (int64_t j = 0; j < hc; ++j)
      for (int64_t c = 0; c < dim; ++c) {
        float acc = 0;
        for (int64_t s = 0; s < hc; ++s) acc += comb[s * hc + j] * res[s * dim + c];
        row[j * dim + c] = kernels::bf16_round(post[j] * x[i * dim + c] + acc);
      }
    std::copy(row.begin(), row.end(), out + i * hc * dim);
  });
}

void hc_head_reduce(const ModelContext& ctx, const HyperConnection& w, const float* x, int64_t n,
                    float* y) {
  const int64_t hc = ctx.cfg.hc_mult, dim = ctx.cfg.dim;
  const std::vector<float> mix = hc_mix(ctx, w, x, n);
  const float scale = w.scale.at<float>(0);
  const std::vector<float> base_v = to_f32(w.base);
  const float* base = base_v.data();
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> pre(hc);
    for (int64_t s = 0; s < hc; ++s)
      pre[s] = 1.0f / (1.0f + std::exp(-(mix[i * hc + s] * scale + base[s]))) +
               static_cast<float>(ctx.cfg.hc_eps);
    for (int64_t c = 0; c < dim; ++c) {
      float acc = 0;
      for (int64_t s = 0; s < hc; ++s) acc += pre[s] * x[(i * hc + s) * dim + c];
      y[i * dim + c] = kernels::bf16_round(acc);
    }
  }
}

}  // namespace dsv4
