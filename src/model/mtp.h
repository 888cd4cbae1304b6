// The multi-token-prediction block (spec §3.8): the main model's streams at
// position t combined with the embedding of token t+1, one window-only
// block, and a head of its own (sharing the main embedding and output head).
#pragma once

#include <cstdint>
#include <span>

#include "model/context.h"
#include "model/observer.h"
#include "model/state.h"

namespace dsv4 {

// hidden: main-model streams [n, hc_mult, dim] at positions pos..; next:
// the following token of each position; out: the MTP block's output streams
// [n, hc_mult, dim]. Logits are left to the caller (head_forward with the
// MTP block's hc_head and norm).
void mtp_forward(const ModelContext& ctx, const MtpWeights& w, const TensorView& embed,
                 LayerState& state, int64_t pos, int64_t n, const float* hidden,
                 std::span<const int32_t> next, float* out, const ForwardFrame& frame,
                 ForwardObserver* observer);

}  // namespace dsv4
