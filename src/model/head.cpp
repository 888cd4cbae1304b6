#include "model/head.h"

#include <vector>

#include "model/mhc.h"

namespace dsv4 {

void head_forward(const ModelContext& ctx, const HyperConnection& hc, const TensorView& norm,
                  const TensorView& head, const float* x, float* logits) {
  const int64_t dim = ctx.cfg.dim;
  std::vector<float> y(dim);
  hc_head_reduce(ctx, hc, x, 1, y.data());
  const std::vector<float> w = to_f32(norm);
  kernels::rms_norm(y.data(), 1, dim, w.data(), ctx.eps(), y.data());
  const kernels::WeightRef ref = weight_ref(head);
  // The reference multiplies in fp32 (bf16-valued operands): fp32 accumulation, fixed order.
  kernels::fp32_bf16_linear(y.data(), 1, dim, ref, 0, ref.out, logits, ref.out);
}

}  // namespace dsv4
