#include "model/mtp.h"

#include <vector>

#include "kernels/numerics.h"
#include "model/block.h"
#include "util/error.h"

namespace dsv4 {

void mtp_forward(const ModelContext& ctx, const MtpWeights& w, const TensorView& embed,
                 LayerState& state, int64_t pos, int64_t n, const float* hidden,
                 std::span<const int32_t> next, float* out, const ForwardFrame& frame,
                 ForwardObserver* observer) {
  const ModelConfig& cfg = ctx.cfg;
  const int64_t dim = cfg.dim, hc = cfg.hc_mult;
  // e = e_proj(enorm(embed(next))), h = h_proj(hnorm(hidden)) per stream.
  std::vector<float> e(n * dim);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t tok = next[i];
    if (tok < 0 || tok >= cfg.vocab_size)
      fail("token id ", tok, " is outside the vocabulary (", cfg.vocab_size, " ids)");
    std::vector<uint16_t> row(dim);
    embed.copy<uint16_t>(tok * dim, dim, row.data());
    for (int64_t c = 0; c < dim; ++c) e[i * dim + c] = kernels::bf16_to_float(row[c]);
  }
  const std::vector<float> enorm = to_f32(w.enorm), hnorm = to_f32(w.hnorm);
  kernels::rms_norm(e.data(), n, dim, enorm.data(), ctx.eps(), e.data());
  std::vector<float> ep(n * dim);
  kernels::quant_linear(e.data(), n, weight_ref(w.e_proj), ep.data());
  std::vector<float> h(n * hc * dim);
  kernels::rms_norm(hidden, n * hc, dim, hnorm.data(), ctx.eps(), h.data());
  kernels::quant_linear(h.data(), n * hc, weight_ref(w.h_proj), out);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t s = 0; s < hc; ++s)
      for (int64_t c = 0; c < dim; ++c) {
        float& v = out[(i * hc + s) * dim + c];
        v = kernels::bf16_round(ep[i * dim + c] + v);
      }
  block_forward(ctx, w.block, state, pos, n, next, out, frame, observer);
}

}  // namespace dsv4
