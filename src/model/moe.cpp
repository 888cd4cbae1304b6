#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/numerics.h"
#include "util/error.h"
#include "util/scratch.h"

namespace dsv4 {

void expert_forward(const ModelContext& ctx, const ExpertWeights& w, const float* x, int64_t m,
                    const float* route_weights, float* out) {
  const int64_t inter = w.w1.out;
  ScratchVector<float> g(m * inter), u(m * inter);
  kernels::quant_linear(x, m, weight_ref(w.w1), g.data());
  kernels::quant_linear(x, m, weight_ref(w.w3), u.data());
  const float limit = static_cast<float>(ctx.cfg.swiglu_limit);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < inter; ++k) {
      float gv = g[i * inter + k], uv = u[i * inter + k];
      if (limit > 0) {
        uv = std::clamp(uv, -limit, limit);
        gv = std::min(gv, limit);
      }
      float h = kernels::silu(gv) * uv;
      if (route_weights) h = route_weights[i] * h;
      g[i * inter + k] = kernels::bf16_round(h);
    }
  kernels::quant_linear(g.data(), m, weight_ref(w.w2), out);
}

void moe_forward(const ModelContext& ctx, const MoeWeights& w, int64_t layer, int64_t pos,
                 int64_t n, const float* x, std::span<const int32_t> tokens, float* out,
                 ForwardObserver* observer) {
  const ModelConfig& cfg = ctx.cfg;
  const int64_t dim = cfg.dim, n_exp = cfg.n_routed_experts, k = cfg.n_activated_experts;

  // Router scores in fp32.
  std::vector<float> scores(n * n_exp);
  kernels::plain_linear(x, n, dim, weight_ref(w.gate_weight), 0, n_exp, scores.data(), n_exp,
                        false);
  for (int64_t i = 0; i < n; ++i) {
    float* s = scores.data() + i * n_exp;
    switch (cfg.score_func) {
      case ScoreFunc::kSqrtSoftplus:
        for (int64_t e = 0; e < n_exp; ++e)  // torch softplus: linear above 20
          s[e] = std::sqrt(s[e] > 20.0f ? s[e] : std::log1p(std::exp(s[e])));
        break;
      case ScoreFunc::kSigmoid:
        for (int64_t e = 0; e < n_exp; ++e) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
        break;
      case ScoreFunc::kSoftmax:
        kernels::softmax(s, n_exp);
        break;
    }
  }

  // Selection (bias or table) and weights (from the unbiased scores).
  std::vector<int32_t> experts(n * k);
  std::vector<float> weights(n * k);
  const std::vector<float> bias = w.hash ? std::vector<float>() : to_f32(w.gate_bias);
  for (int64_t i = 0; i < n; ++i) {
    const float* s = scores.data() + i * n_exp;
    int32_t* sel = experts.data() + i * k;
    if (w.hash) {
      const int64_t tok = tokens[i];
      if (tok < 0 || tok >= cfg.vocab_size)
        fail("token id ", tok, " is outside the vocabulary (", cfg.vocab_size, " ids)");
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = w.tid2eid.dtype == DType::I64 ? w.tid2eid.at<int64_t>(tok * k + j)
                                                        : w.tid2eid.at<int32_t>(tok * k + j);
        if (e < 0 || e >= n_exp)
          fail(w.tid2eid.file, ": ", w.tid2eid.name, " maps token ", tok, " to expert ", e,
               ", outside 0..", n_exp - 1);
        sel[j] = static_cast<int32_t>(e);
      }
    } else {
      std::vector<float> biased(s, s + n_exp);
      for (int64_t e = 0; e < n_exp; ++e) biased[e] += bias[e];
      const std::vector<int32_t> best = kernels::topk(biased.data(), n_exp, k);
      std::copy(best.begin(), best.end(), sel);
    }
    float* wt = weights.data() + i * k;
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += wt[j] = s[sel[j]];
    const bool normalise = cfg.score_func != ScoreFunc::kSoftmax;
    for (int64_t j = 0; j < k; ++j)
      wt[j] = (normalise ? wt[j] / sum : wt[j]) * static_cast<float>(cfg.route_scale);
  }
  if (observer) observer->on_moe_routing(layer, pos, n, k, experts.data(), weights.data());

  // Routed experts in expert order (the reference's accumulation order), fp32 sum.
  ScratchVector<float> acc(n * dim, 0.0f);
  ScratchVector<float> xs, ys;
  std::vector<float> ws;
  std::vector<int64_t> rows;
  for (int64_t e = 0; e < n_exp; ++e) {
    rows.clear();
    ws.clear();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < k; ++j)
        if (experts[i * k + j] == e) {
          rows.push_back(i);
          ws.push_back(weights[i * k + j]);
        }
    if (rows.empty()) continue;
    const int64_t m = static_cast<int64_t>(rows.size());
    xs.resize(m * dim);
    ys.resize(m * dim);
    for (int64_t r = 0; r < m; ++r) std::copy_n(x + rows[r] * dim, dim, xs.data() + r * dim);
    expert_forward(ctx, w.experts[e], xs.data(), m, ws.data(), ys.data());
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < dim; ++c) acc[rows[r] * dim + c] += ys[r * dim + c];
  }
  if (w.has_shared) {
    ys.resize(n * dim);
    expert_forward(ctx, w.shared, x, n, nullptr, ys.data());
    for (int64_t i = 0; i < n * dim; ++i) acc[i] += ys[i];
  }
  for (int64_t i = 0; i < n * dim; ++i) out[i] = kernels::bf16_round(acc[i]);
}

}  // namespace dsv4
