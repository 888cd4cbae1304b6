#include "model/indexer.h"

#include <algorithm>
#include <cmath>

#include "kernels/index_scores.h"
#include "kernels/numerics.h"
#include "model/compressor.h"
#include "util/scratch.h"
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
  ScratchVector<float> q(n * heads * hd);
  kernels::quant_linear(qr, n, weight_ref(w.wq_b), q.data());
  parallel_for_rows(n, heads * hd, [&](int64_t i) {
    for (int64_t h = 0; h < heads; ++h) {
      float* qh = q.data() + (i * heads + h) * hd;
      rope.apply(qh + hd - rd, pos + i, false);
      kernels::hadamard(qh, hd, 1.0f / std::sqrt(static_cast<float>(hd)));
      kernels::bf16_round_inplace(qh, hd);
      kernels::fp4_fake_quant(qh, hd, 32);
    }
  });

  // The keys come out of the compressor Hadamard-rotated, bf16 and
  // fp4_fake_quant'ed per 32: the FP4 cache holds them exactly.
  std::vector<float> new_keys;
  compressor_forward(ctx, w.compressor, state.index_compressor, pos, n, x, &new_keys);
  state.append_index_keys(new_keys);
  const int64_t total = state.num_index_keys();

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

  auto visible_to = [&](int64_t i) { return std::min(total, (pos + i + 1) / ratio); };
  // Scores of queries [i0, i1) for entries [j0, j1) that each can see, query
  // i's row at score + (i − i0)·stride. I[t, j] = Σ_h w[t, h]·relu(q[t, h]·K[j]);
  // each einsum result and product is bf16, the head sum accumulates in fp32
  // and rounds once. The integer kernel reads the packed FP4 keys directly;
  // entries it leaves (and every entry where it does not apply) take the
  // float loop below, on keys decoded from the FP4 cache a block at a time,
  // once for all the queries. Every score depends on its query and entry
  // only, so any split of the work gives the same scores.
  constexpr int64_t kKeyBlock = 64, kQueryBlock = 16;
  // The queries' FP4 codes for the integer kernel, once per query (prepared[i - i0]).
  auto prepare = [&](int64_t i0, int64_t i1, std::vector<kernels::Fp4IndexQuery>* prepared) {
    prepared->resize(static_cast<size_t>(i1 - i0));
    for (int64_t i = i0; i < i1; ++i)
      kernels::prepare_fp4_index_query(q.data() + i * heads * hd, heads, hd,
                                       &(*prepared)[static_cast<size_t>(i - i0)]);
  };
  auto score_block = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                         const kernels::Fp4IndexQuery* prepared, float* score, int64_t stride) {
    std::vector<float> keys(kKeyBlock * hd);
    const uint8_t* rows[kKeyBlock];
    uint8_t fallback[kKeyBlock];
    for (int64_t b0 = j0; b0 < j1; b0 += kKeyBlock) {
      const int64_t b1 = std::min(j1, b0 + kKeyBlock);
      for (int64_t j = b0; j < b1; ++j) rows[j - b0] = state.index_keys.row(j);
      bool decoded = false;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j_end = std::min(b1, visible_to(i));
        if (j_end <= b0) continue;
        float* out = score + (i - i0) * stride;
        // The integer kernel where it applies (exact: the same scores), else the float loop.
        const bool fast = kernels::fp4_index_scores(prepared[i - i0], hw.data() + i * heads, rows,
                                                    j_end - b0, out + b0, fallback);
        for (int64_t j = b0; j < j_end; ++j) {
          if (fast && !fallback[j - b0]) continue;
          if (!decoded) {
            for (int64_t jj = b0; jj < b1; ++jj) state.index_key(jj, keys.data() + (jj - b0) * hd);
            decoded = true;
          }
          const float* k = keys.data() + (j - b0) * hd;
          float sum = 0;
          for (int64_t h = 0; h < heads; ++h) {
            const float* qh = q.data() + (i * heads + h) * hd;
            const float dot = kernels::bf16_round(static_cast<float>(kernels::dot_f64(qh, k, hd)));
            sum += kernels::bf16_round(std::max(dot, 0.0f) * hw[i * heads + h]);
          }
          out[j] = kernels::bf16_round(sum);
        }
      }
    }
  };
  // Top-k of query i's scores (ties: the lower entry, as kernels::topk does).
  auto select = [&](int64_t i, const float* score) {
    const std::vector<int32_t> best = kernels::topk(score, visible_to(i), sel.width);
    for (size_t r = 0; r < best.size(); ++r) {
      sel.entries[i * sel.width + r] = best[r];
      sel.scores[i * sel.width + r] = score[best[r]];
    }
  };

  if (n >= ThreadPool::global().num_threads()) {
    // A prefill chunk: queries in parallel, in blocks that share key decodes.
    parallel_for(n, [&](int64_t i0, int64_t i1, int) {
      std::vector<float> score;
      std::vector<kernels::Fp4IndexQuery> prepared;
      for (int64_t b0 = i0; b0 < i1; b0 += kQueryBlock) {
        const int64_t b1 = std::min(i1, b0 + kQueryBlock);
        const int64_t stride = visible_to(b1 - 1);  // the block's last query sees the most
        score.assign((b1 - b0) * stride, 0.0f);
        prepare(b0, b1, &prepared);
        score_block(b0, b1, 0, stride, prepared.data(), score.data(), stride);
        for (int64_t i = b0; i < b1; ++i) select(i, score.data() + (i - b0) * stride);
      }
    });
  } else {
    // Decode (a token or a few): at long context scoring every entry
    // dominates the step, so the entries are split across the threads.
    std::vector<float> score;
    std::vector<kernels::Fp4IndexQuery> prepared;
    for (int64_t i = 0; i < n; ++i) {
      score.assign(visible_to(i), 0.0f);
      prepare(i, i + 1, &prepared);
      parallel_for(
          visible_to(i),
          [&](int64_t j0, int64_t j1, int) {
            score_block(i, i + 1, j0, j1, prepared.data(), score.data(), 0);
          },
          4 * kKeyBlock);
      select(i, score.data());
    }
  }
  return sel;
}

}  // namespace dsv4
