// The KV compressor (spec §3.4), shared by CSA/HCA attention (512-dim main
// KV) and by the lightning indexer (its keys, Hadamard-rotated and FP4).
// Tokens are fed one position at a time through the compressor state, so a
// prompt in chunks of any size pools exactly as the whole prompt does.
#pragma once

#include <cstdint>
#include <vector>

#include "model/context.h"
#include "model/state.h"

namespace dsv4 {

// Feeds n tokens at positions pos..pos+n-1 (x: attn_norm output [n, dim],
// bf16 values). Every completed block appends one finished entry
// (normalised, rotated, fake-quantised) of head_dim values to `entries`.
void compressor_forward(const ModelContext& ctx, const CompressorWeights& w, CompressorState& state,
                        int64_t pos, int64_t n, const float* x, std::vector<float>* entries);

}  // namespace dsv4
