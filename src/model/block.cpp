#include "model/block.h"

#include <vector>

#include "model/attention.h"
#include "model/mhc.h"
#include "model/moe.h"
#include "util/scratch.h"

namespace dsv4 {

void block_forward(const ModelContext& ctx, const BlockWeights& w, LayerState& state, int64_t pos,
                   int64_t n, std::span<const int32_t> tokens, float* x, const ForwardFrame& frame,
                   ForwardObserver* observer) {
  const int64_t dim = ctx.cfg.dim, layer = w.layer_id;
  ScratchVector<float> h(n * dim), out(n * dim);
  HcMix mix;

  hc_pre(ctx, w.hc_attn, x, n, h.data(), &mix);
  const std::vector<float> attn_norm = to_f32(w.attn_norm);
  kernels::rms_norm(h.data(), n, dim, attn_norm.data(), ctx.eps(), h.data());
  attention_forward(ctx, w.attn, state, layer, pos, n, h.data(), out.data(), frame, observer);
  if (observer) observer->on_attn_out(layer, pos, n, out.data());
  hc_post(ctx, out.data(), x, mix, n, x);

  hc_pre(ctx, w.hc_ffn, x, n, h.data(), &mix);
  const std::vector<float> ffn_norm = to_f32(w.ffn_norm);
  kernels::rms_norm(h.data(), n, dim, ffn_norm.data(), ctx.eps(), h.data());
  moe_forward(ctx, w.ffn, layer, pos, n, h.data(), tokens, out.data(), observer);
  if (observer) observer->on_ffn_out(layer, pos, n, out.data());
  hc_post(ctx, out.data(), x, mix, n, x);

  if (observer) observer->on_block_out(layer, pos, n, x);
}

}  // namespace dsv4
