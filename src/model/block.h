// One transformer block with hyper-connections (spec §3.2).
#pragma once

#include <cstdint>
#include <span>

#include "model/context.h"
#include "model/observer.h"
#include "model/state.h"

namespace dsv4 {

// x: the block's input streams [n, hc_mult, dim] (bf16 values) at positions
// pos..pos+n-1, replaced by its output. tokens: the ids of these positions.
void block_forward(const ModelContext& ctx, const BlockWeights& w, LayerState& state, int64_t pos,
                   int64_t n, std::span<const int32_t> tokens, float* x, const ForwardFrame& frame,
                   ForwardObserver* observer);

}  // namespace dsv4
