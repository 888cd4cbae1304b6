#include "model/context.h"

#include "kernels/numerics.h"
#include "util/error.h"

namespace dsv4 {

ModelContext::ModelContext(const ModelConfig& config)
    : cfg(config),
      rope_plain(config.rope_head_dim, config.rope_theta, false, 1.0, 0, config.beta_fast,
                 config.beta_slow),
      rope_compressed(config.rope_head_dim, config.compress_rope_theta, config.yarn,
                      config.rope_factor, config.original_seq_len, config.beta_fast,
                      config.beta_slow) {}

std::vector<float> to_f32(const TensorView& t) {
  const int64_t n = t.numel();
  std::vector<float> v(n);
  switch (t.dtype) {
    case DType::F32:
      t.copy<float>(0, n, v.data());
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) v[i] = kernels::bf16_to_float(t.at<uint16_t>(i));
      break;
    default:
      fail(t.file, ": tensor ", t.name, " has dtype ", dtype_name(t.dtype),
           " where BF16 or F32 is needed");
  }
  return v;
}

kernels::WeightRef weight_ref(const QuantLinear& l) {
  kernels::WeightRef r;
  r.out = l.out;
  r.in = l.in;
  r.data = l.weight.data;
  switch (l.format) {
    case QuantLinear::Format::kFP8:
      r.format = kernels::WeightFormat::kFP8;
      r.scale = l.scale.data;
      r.scale_is_f32 = l.scale.dtype == DType::F32;
      break;
    case QuantLinear::Format::kFP4:
      r.format = kernels::WeightFormat::kFP4;
      r.scale = l.scale.data;
      r.scale_is_f32 = l.scale.dtype == DType::F32;
      break;
    case QuantLinear::Format::kBF16:
      r.format = kernels::WeightFormat::kBF16;
      break;
  }
  return r;
}

kernels::WeightRef weight_ref(const TensorView& t) {
  kernels::WeightRef r;
  if (t.shape.size() != 2) fail(t.file, ": tensor ", t.name, " is not a matrix");
  r.out = t.dim(0);
  r.in = t.dim(1);
  r.data = t.data;
  if (t.dtype == DType::BF16)
    r.format = kernels::WeightFormat::kBF16;
  else if (t.dtype == DType::F32)
    r.format = kernels::WeightFormat::kF32;
  else
    fail(t.file, ": tensor ", t.name, " has dtype ", dtype_name(t.dtype),
         " where BF16 or F32 is needed");
  return r;
}

}  // namespace dsv4
