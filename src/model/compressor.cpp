#include "model/compressor.h"

#include <cmath>

#include "kernels/numerics.h"
#include "util/scratch.h"

namespace dsv4 {

namespace {

// Pools the state into one compressed entry [d] (fp32): per channel, a softmax
// over the pooled slots of score + ape, weighting kv. Overlapping compressors
// pool the previous block's first half-features with the current block's
// second half-features.
std::vector<float> pool(const CompressorWeights& w, const CompressorState& st) {
  const int64_t r = w.ratio, d = w.head_dim, width = st.width;
  const int64_t n = w.overlap ? 2 * r : r;
  std::vector<float> entry(d), sc(n);
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t col = (w.overlap && k >= r) ? d + c : c;
      sc[k] = st.score[k * width + col];
    }
    kernels::softmax(sc.data(), n);
    double acc = 0;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t col = (w.overlap && k >= r) ? d + c : c;
      acc += static_cast<double>(st.kv[k * width + col]) * sc[k];
    }
    entry[c] = static_cast<float>(acc);
  }
  return entry;
}

}  // namespace

void compressor_forward(const ModelContext& ctx, const CompressorWeights& w, CompressorState& state,
                        int64_t pos, int64_t n, const float* x, std::vector<float>* entries) {
  const ModelConfig& cfg = ctx.cfg;
  const int64_t r = w.ratio, d = w.head_dim, width = state.width;
  // The projections run in fp32 on the fp32 input (exact upcasts of bf16).
  ScratchVector<float> kv(n * width), score(n * width);
  kernels::plain_linear(x, n, cfg.dim, weight_ref(w.wkv), 0, width, kv.data(), width, false);
  kernels::plain_linear(x, n, cfg.dim, weight_ref(w.wgate), 0, width, score.data(), width, false);
  const std::vector<float> ape = to_f32(w.ape);
  const std::vector<float> norm = to_f32(w.norm);
  const kernels::RopeTable& rope = ctx.rope(r);
  const int64_t rd = cfg.rope_head_dim;

  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = pos + i;
    const int64_t slot = (w.overlap ? r : 0) + p % r;
    for (int64_t c = 0; c < width; ++c) {
      state.kv[slot * width + c] = kv[i * width + c];
      state.score[slot * width + c] = score[i * width + c] + ape[(p % r) * width + c];
    }
    if ((p + 1) % r != 0) continue;

    std::vector<float> entry = pool(w, state);
    kernels::bf16_round_inplace(entry.data(), d);
    kernels::rms_norm(entry.data(), 1, d, norm.data(), ctx.eps(), entry.data());
    rope.apply(entry.data() + d - rd, p + 1 - r, false);  // the block's first position
    if (w.rotate) {
      kernels::hadamard(entry.data(), d, 1.0f / std::sqrt(static_cast<float>(d)));
      kernels::bf16_round_inplace(entry.data(), d);
      kernels::fp4_fake_quant(entry.data(), d, 32);
    } else {
      kernels::fp8_fake_quant(entry.data(), d - rd, 64);
    }
    entries->insert(entries->end(), entry.begin(), entry.end());
    if (w.overlap) {  // the current block becomes the previous one
      std::copy(state.kv.begin() + r * width, state.kv.end(), state.kv.begin());
      std::copy(state.score.begin() + r * width, state.score.end(), state.score.begin());
    }
  }
}

}  // namespace dsv4
