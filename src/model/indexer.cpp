#include "model/indexer.h"

#include <algorithm>
#include <cmath>

#include "kernels/numerics.h"
#include "model/compressor.h"
#include "util/threadpool.h"

namespace dsv4 {

IndexerSelection indexer_forward(const ModelContext& ctx, const IndexerWeights& w,
                                 LayerState& state, int64_t pos, int64_t n, const float* x,
                                 const float* qr) {
  const ModelConfig& cfg = ctx.cfg;
  const int64_t heads = cfg.index_n_heads, hd = cfg.index_head_dim, rd = cfg.rope_head_dim;
  const int64_t ratio = state.ratio;
  const kernels::RopeTable& rope = ctx.rope(ratio);

  // Queries: rope on the last rd dims, Hadamard, FP4 fake-quant (the keys got
  // the same treatment in the compressor).
  std::vector<float> q(n * heads * hd);
  kernels::quant_linear(qr, n, weight_ref(w.wq_b), q.data());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      float* qh = q.data() + (i * heads + h) * hd;
      rope.apply(qh + hd - rd, pos + i, false);
      kernels::hadamard(qh, hd, 1.0f / std::sqrt(static_cast<float>(hd)));
      kernels::bf16_round_inplace(qh, hd);
      kernels::fp4_fake_quant(qh, hd, 32);
    }

  compressor_forward(ctx, w.compressor, state.index_compressor, pos, n, x, &state.index_keys);
  const int64_t total = static_cast<int64_t>(state.index_keys.size()) / hd;

  // Head weights: bf16 linear, then the bf16 product with hd^-0.5 · heads^-0.5.
  std::vector<float> hw(n * heads);
  kernels::plain_linear(x, n, cfg.dim, weight_ref(w.weights_proj), 0, heads, hw.data(), heads,
                        true);
  const float wscale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5) *
                                          std::pow(static_cast<double>(heads), -0.5));
  for (float& v : hw) v = kernels::bf16_round(v * wscale);

  IndexerSelection sel;
  sel.width = std::min<int64_t>(cfg.index_topk, total);
  sel.entries.assign(n * sel.width, -1);
  sel.scores.assign(n * sel.width, 0.0f);
  const float* keys = state.index_keys.data();
  parallel_for(n, [&](int64_t i0, int64_t i1, int) {
    std::vector<float> score;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t visible = std::min(total, (pos + i + 1) / ratio);
      score.assign(visible, 0.0f);
      for (int64_t j = 0; j < visible; ++j) {
        // I[t, j] = Σ_h w[t, h]·relu(q[t, h]·K[j]); each einsum result and
        // product is bf16, the head sum accumulates in fp32 and rounds once.
        float sum = 0;
        for (int64_t h = 0; h < heads; ++h) {
          const float* qh = q.data() + (i * heads + h) * hd;
          const float* k = keys + j * hd;
          const float dot = kernels::bf16_round(static_cast<float>(kernels::dot_f64(qh, k, hd)));
          sum += kernels::bf16_round(std::max(dot, 0.0f) * hw[i * heads + h]);
        }
        score[j] = kernels::bf16_round(sum);
      }
      const std::vector<int32_t> best = kernels::topk(score.data(), visible, sel.width);
      for (size_t r = 0; r < best.size(); ++r) {
        sel.entries[i * sel.width + r] = best[r];
        sel.scores[i * sel.width + r] = score[best[r]];
      }
    }
  });
  return sel;
}

}  // namespace dsv4
