// The output head (spec §3.7): hyper-connection reduction of the streams,
// final RMSNorm, fp32 projection onto the vocabulary.
#pragma once

#include "model/context.h"

namespace dsv4 {

// x: [hc_mult, dim] streams of one position → logits [vocab] (fp32).
void head_forward(const ModelContext& ctx, const HyperConnection& hc, const TensorView& norm,
                  const TensorView& head, const float* x, float* logits);

}  // namespace dsv4
