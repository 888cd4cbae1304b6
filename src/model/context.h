// What every part of the forward pass shares: the config, the RoPE tables and
// helpers that present bound tensors to the kernels.
#pragma once

#include <vector>

#include "kernels/linear.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv4 {

struct ModelContext {
  explicit ModelContext(const ModelConfig& config);
  const ModelConfig& cfg;
  // Window-only layers rotate with rope_theta and no YaRN; layers with a
  // compressor use compress_rope_theta with YaRN for everything (spec §3.3).
  kernels::RopeTable rope_plain;
  kernels::RopeTable rope_compressed;
  const kernels::RopeTable& rope(int64_t ratio) const {
    return ratio > 0 ? rope_compressed : rope_plain;
  }
  float eps() const { return static_cast<float>(cfg.norm_eps); }
};

// A small tensor (norm weight, ape, bias, sink) as fp32 values.
std::vector<float> to_f32(const TensorView& t);
// Bound weights as the kernels see them.
kernels::WeightRef weight_ref(const QuantLinear& l);
kernels::WeightRef weight_ref(const TensorView& t);  // plain BF16 / F32 [out, in]

}  // namespace dsv4
