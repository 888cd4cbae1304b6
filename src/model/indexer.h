// The lightning indexer of CSA layers (spec §3.5): scores every visible
// compressed entry for each query with FP4 (Hadamard-rotated) q and keys and
// bf16 arithmetic, and keeps the index_topk best.
#pragma once

#include <cstdint>
#include <vector>

#include "model/context.h"
#include "model/state.h"

namespace dsv4 {

struct IndexerSelection {
  int64_t width = 0;             // min(index_topk, compressed entries after this chunk)
  std::vector<int32_t> entries;  // [n, width]: best first, −1 padded
  std::vector<float> scores;     // [n, width]: the bf16 index scores of the chosen entries
};

// Feeds n tokens at positions pos.. (x: attn_norm output [n, dim]; qr: the
// normalised low-rank query [n, q_lora_rank]). Appends this chunk's
// compressed keys to state.index_keys first. Query t sees entries j < (t+1)/ratio.
IndexerSelection indexer_forward(const ModelContext& ctx, const IndexerWeights& w,
                                 LayerState& state, int64_t pos, int64_t n, const float* x,
                                 const float* qr);

}  // namespace dsv4
