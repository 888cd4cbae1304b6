// The MoE feed-forward (spec §3.6): router (sqrt-softplus / sigmoid / softmax
// scores, bias for selection only, or the tid2eid table in hash layers),
// routed FP4 experts with clamped SwiGLU and the routing weight applied
// before w2, plus the shared FP8 expert.
#pragma once

#include <cstdint>
#include <span>

#include "model/context.h"
#include "model/observer.h"

namespace dsv4 {

// x: ffn_norm output [n, dim] (bf16 values); tokens: the input ids of these
// positions (hash routing); out: [n, dim] bf16.
void moe_forward(const ModelContext& ctx, const MoeWeights& w, int64_t layer, int64_t pos,
                 int64_t n, const float* x, std::span<const int32_t> tokens, float* out,
                 ForwardObserver* observer);

// One expert on m rows: w2(bf16(weight · silu(clamp(w1 x)) · clamp(w3 x))).
// `route_weights` may be null (shared expert).
void expert_forward(const ModelContext& ctx, const ExpertWeights& w, const float* x, int64_t m,
                    const float* route_weights, float* out);

}  // namespace dsv4
