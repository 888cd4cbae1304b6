#include "model/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/numerics.h"
#include "model/compressor.h"
#include "model/indexer.h"
#include "util/scratch.h"
#include "util/threadpool.h"

namespace dsv4 {

namespace {
// Up to this many query rows, wo_a runs whole groups as parallel tasks.
constexpr int64_t kGroupParallelRows = 4;
}  // namespace

namespace {
// torch runs bf16 elementwise ops two 16-lane AVX2 vectors at a time; the
// golden reference's per-head rsqrt is exact only on that part (see
// rms_norm_bf16_noweight).
constexpr int64_t kTorchBf16Span = 32;
}  // namespace

void attention_forward(const ModelContext& ctx, const AttentionWeights& w, LayerState& state,
                       int64_t layer, int64_t pos, int64_t n, const float* x, float* out,
                       const ForwardFrame& frame, ForwardObserver* observer) {
  const ModelConfig& cfg = ctx.cfg;
  const int64_t heads = cfg.n_heads, hd = cfg.head_dim, rd = cfg.rope_head_dim;
  const int64_t nope = hd - rd, window = cfg.window_size, ratio = state.ratio;
  const kernels::RopeTable& rope = ctx.rope(ratio);

  // Queries: low-rank, normalised, per-head RMS (bf16 arithmetic), rotated.
  ScratchVector<float> qr(n * cfg.q_lora_rank);
  kernels::quant_linear(x, n, weight_ref(w.wq_a), qr.data());
  const std::vector<float> q_norm = to_f32(w.q_norm);
  kernels::rms_norm(qr.data(), n, cfg.q_lora_rank, q_norm.data(), ctx.eps(), qr.data());
  ScratchBuffer<float> q(n * heads * hd);  // every element written by quant_linear
  kernels::quant_linear(qr.data(), n, weight_ref(w.wq_b), q.data());
  parallel_for_rows(n, heads * hd, [&](int64_t i) {
    for (int64_t h = 0; h < heads; ++h) {
      float* qh = q.data() + (i * heads + h) * hd;
      // Which rows the reference computes in torch's vectorised loop: those of
      // its forward call (the whole prompt when its length is known).
      const int64_t t = pos + i;
      const bool in_prompt = frame.prompt_len > 0 && t < frame.prompt_len;
      const bool exact =
          in_prompt
              ? kernels::torch_vectorized(t * heads + h, frame.prompt_len * heads, kTorchBf16Span)
              : kernels::torch_vectorized(i * heads + h, n * heads, kTorchBf16Span);
      kernels::rms_norm_bf16_noweight(qh, hd, ctx.eps(), exact);
      rope.apply(qh + nope, pos + i, false);
    }
  });

  // This chunk's raw KV rows: normalised, rotated (RopeTable::apply rounds to
  // bf16), NoPE dims FP8 fake-quantised per 64: the values the packed window
  // ring stores exactly.
  ScratchVector<float> kv(n * hd);
  kernels::quant_linear(x, n, weight_ref(w.wkv), kv.data());
  const std::vector<float> kv_norm = to_f32(w.kv_norm);
  kernels::rms_norm(kv.data(), n, hd, kv_norm.data(), ctx.eps(), kv.data());
  parallel_for_rows(n, hd, [&](int64_t i) {
    rope.apply(kv.data() + i * hd + nope, pos + i, false);
    kernels::fp8_fake_quant(kv.data() + i * hd, nope, 64);
  });

  // Compressed entries completed in this chunk become visible to its later
  // queries. (Their NoPE dims are fp8_fake_quant'ed per 64 and their RoPE
  // dims bf16 in compressor_forward, as this chunk's raw rows are above: the
  // packed cache holds them exactly.)
  if (w.has_compressor) {
    std::vector<float> entries;
    compressor_forward(ctx, w.compressor, state.compressor, pos, n, x, &entries);
    state.append_compressed(entries);
  }
  IndexerSelection selection;
  if (w.has_indexer) {
    selection = indexer_forward(ctx, w.indexer, state, pos, n, x, qr.data());
    if (observer)
      observer->on_indexer_topk(layer, pos, n, selection.width, selection.entries.data());
  }

  // The rows attention may read: the window positions before this chunk still
  // in the ring, this chunk's rows, then every compressed entry. The cached
  // ones are decoded from the packed caches, only those some query reads
  // (CSA: the indexer's choice; HCA: all entries).
  const int64_t first = std::max<int64_t>(0, pos - (window - 1));
  const int64_t n_prev = pos - first;
  const int64_t n_comp = state.num_compressed();
  const int64_t comp_base = n_prev + n;
  std::vector<bool> used(n_comp, !w.has_indexer);
  if (w.has_indexer)
    for (int32_t e : selection.entries)
      if (e >= 0) used[e] = true;
  const int64_t n_used = std::count(used.begin(), used.end(), true);
  ScratchVector<float> decoded((n_prev + n_used) * hd);
  std::vector<const float*> rows(comp_base + n_comp, nullptr);
  for (int64_t p = first; p < pos; ++p) {
    float* row = decoded.data() + (p - first) * hd;
    state.window_row(p, row);
    rows[p - first] = row;
  }
  for (int64_t i = 0; i < n; ++i) rows[n_prev + i] = kv.data() + i * hd;
  for (int64_t j = 0, k = n_prev; j < n_comp; ++j) {
    if (!used[j]) continue;
    float* row = decoded.data() + (k++) * hd;
    state.compressed_row(j, row);
    rows[comp_base + j] = row;
  }

  // Index lists in the reference's layout: a window section (oldest → newest,
  // −1 padded) as wide as the reference's (min(S, window) in a prefill of S
  // tokens, window in decode), then the compressed section, then −1 padding.
  // The section widths only move the 64-entry tile boundaries.
  auto window_width = [&](int64_t t) {
    if (frame.prompt_len > 0 && t < frame.prompt_len) return std::min(frame.prompt_len, window);
    return pos == 0 ? std::min(n, window) : window;
  };
  const int64_t win_width = std::max(window_width(pos), window_width(pos + n - 1));
  int64_t comp_width = 0;
  if (w.has_indexer)
    comp_width = selection.width;
  else if (ratio > 0)
    comp_width = (pos + n) / ratio;
  const int64_t width = win_width + comp_width;
  ScratchVector<int32_t> idx(n * width, -1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = pos + i;
    int32_t* row = idx.data() + i * width;
    const int64_t lo = std::max<int64_t>(0, t - (window - 1));
    for (int64_t p = lo; p <= t; ++p) row[p - lo] = static_cast<int32_t>(p - first);
    int32_t* crow = row + window_width(t);
    if (w.has_indexer) {
      for (int64_t k = 0; k < comp_width; ++k) {
        const int32_t e = selection.entries[i * comp_width + k];
        crow[k] = e < 0 ? -1 : static_cast<int32_t>(comp_base + e);
      }
    } else if (ratio > 0) {
      const int64_t visible = std::min(n_comp, (t + 1) / ratio);
      for (int64_t j = 0; j < visible; ++j) crow[j] = static_cast<int32_t>(comp_base + j);
    }
  }

  const std::vector<float> sink = to_f32(w.attn_sink);
  ScratchBuffer<float> o(n * heads * hd);  // every element written by sparse_attention
  kernels::sparse_attention(q.data(), n, heads, hd, rows.data(), idx.data(), width, sink.data(),
                            1.0f / std::sqrt(static_cast<float>(hd)), o.data());
  parallel_for_rows(n, heads * hd, [&](int64_t i) {  // undo the rotation with the query's position
    for (int64_t h = 0; h < heads; ++h)
      rope.apply(o.data() + (i * heads + h) * hd + nope, pos + i, true);
  });

  // Grouped low-rank output: wo_a per group (the reference dequantises it to
  // bf16, exactly, and multiplies the bf16 o in a bf16 einsum: fp32
  // accumulation), then the FP8 wo_b.
  const int64_t groups = cfg.o_groups, rank = cfg.o_lora_rank, gin = cfg.group_in_dim();
  ScratchVector<float> oa(n * groups * rank);
  const kernels::WeightRef wo_a = weight_ref(w.wo_a);
  const auto group_output = [&](int64_t g) {
    const float* x = o.data() + g * gin;
    float* y = oa.data() + g * rank;
    if (wo_a.format == kernels::WeightFormat::kFP8)
      kernels::fp8_bf16_linear(x, n, heads * hd, wo_a, g * rank, (g + 1) * rank, y, groups * rank,
                               true);
    else
      kernels::plain_linear(x, n, heads * hd, wo_a, g * rank, (g + 1) * rank, y, groups * rank,
                            true);
  };
  // A decode step's groups are small matrices (4 MB in Flash): whole groups per task keep one
  // long weight stream per thread and one dispatch per layer instead of one per group (each
  // group's rows are computed the same way either way).
  if (n <= kGroupParallelRows && groups >= ThreadPool::global().num_threads() &&
      ThreadPool::global().num_threads() > 1)
    parallel_for(groups, [&](int64_t g0, int64_t g1, int) {
      for (int64_t g = g0; g < g1; ++g) group_output(g);
    });
  else
    for (int64_t g = 0; g < groups; ++g) group_output(g);
  kernels::quant_linear(oa.data(), n, weight_ref(w.wo_b), out);

  for (int64_t i = std::max<int64_t>(0, n - window); i < n; ++i)
    state.store_window_row(pos + i, kv.data() + i * hd);
}

}  // namespace dsv4
