// Manifold-constrained hyper-connections (spec §3.2): the residual is kept as
// hc_mult streams; hc_pre mixes them into one sub-layer input, hc_post writes
// the sub-layer output back into the streams.
#pragma once

#include <cstdint>
#include <vector>

#include "model/context.h"

namespace dsv4 {

struct HcMix {
  std::vector<float> post;  // [n, hc]
  std::vector<float> comb;  // [n, hc, hc]
};

// x [n, hc, dim] (bf16 values) → y [n, dim] (bf16) and the mixing weights.
void hc_pre(const ModelContext& ctx, const HyperConnection& w, const float* x, int64_t n, float* y,
            HcMix* mix);

// out[j] = post[j]·x + Σ_i comb[i][j]·residual[i], fp32 math, bf16 result;
// x [n, dim], residual and out [n, hc, dim] (out may alias residual).
void hc_post(const ModelContext& ctx, const float* x, const float* residual, const HcMix& mix,
             int64_t n, float* out);

// The head's variant: pre = sigmoid(mix·scale + base) + eps only; y [n, dim] bf16.
void hc_head_reduce(const ModelContext& ctx, const HyperConnection& w, const float* x, int64_t n,
                    float* y);

}  // namespace dsv4
