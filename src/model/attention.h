// Hybrid attention of one block (spec §3.3): shared-KV MQA over a sliding
// window of raw KV rows plus compressed entries (all of them for HCA, the
// indexer's choice for CSA), with attention sinks and the grouped low-rank
// output projection.
#pragma once

#include <cstdint>

#include "model/context.h"
#include "model/observer.h"
#include "model/state.h"

namespace dsv4 {

// x: attn_norm output [n, dim] (bf16 values) at positions pos..pos+n-1;
// out: [n, dim] bf16. Updates the layer's window ring, compressed KV and
// indexer keys. `layer` is the block id reported to the observer.
void attention_forward(const ModelContext& ctx, const AttentionWeights& w, LayerState& state,
                       int64_t layer, int64_t pos, int64_t n, const float* x, float* out,
                       const ForwardFrame& frame, ForwardObserver* observer);

}  // namespace dsv4
