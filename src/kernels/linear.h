// Linear layers over weights in their stored (quantized) form, read straight
// from the (mmapped) checkpoint bytes and decoded on the fly, never into a
// model-sized copy. Three paths compute the same bits (kernels/isa.h,
// docs/kernels.md): the scalar reference, AVX2 and AVX-512; every double dot
// product follows linear_dot_f64's association order.
#pragma once

#include <cstdint>

namespace dsv4::kernels {

enum class WeightFormat {
  kFP8,   // e4m3 [out, in], E8M0 (or F32) scale per 128×128 block
  kFP4,   // e2m1 pairs [out, in/2] (low nibble = even element), E8M0 scale per 1×32
  kBF16,  // [out, in]
  kF32,   // [out, in]
};

struct WeightRef {
  WeightFormat format = WeightFormat::kBF16;
  int64_t out = 0, in = 0;
  const void* data = nullptr;
  const void* scale = nullptr;  // kFP8 / kFP4 only
  bool scale_is_f32 = false;    // Base checkpoints store FP8 block scales as F32
};

// Decodes row `row` into out[0..in): the exact real value of every weight
// (FP8/FP4 code × its power-of-two scale, or the bf16/f32 value).
void dequant_row(const WeightRef& w, int64_t row, float* out);

// The reference's quantized linear (fp8_gemm / fp4_gemm): each row of x
// [m, in] is fake-quantized to FP8 in blocks of 128 with power-of-two scales,
// the K tiles (128 for FP8 weights, 32 for FP4) are accumulated in fp32 in
// ascending K, and y [m, out] is rounded to bf16. An FP8 tile is the fp32 sum,
// in linear_dot_pairs_f32's order, of the products of the FP8 values
// (activation and weight codes), times both block scales in double, rounded
// to fp32; an FP4 tile is its exact dot product rounded to fp32
// (docs/kernels.md). FP4 weights need `in` to be a multiple of 32.
void quant_linear(const float* x, int64_t m, const WeightRef& w, float* y);

// Plain linear (F.linear in the weight's precision; summed in double, rounded
// once to fp32) over weight rows [row_begin, row_end):
// y[i, r - row_begin] = Σ_k x[i, k]·W[r, k], with x rows `ldx` apart and y
// rows `ldy` apart; rounds y to bf16 if asked.
void plain_linear(const float* x, int64_t m, int64_t ldx, const WeightRef& w, int64_t row_begin,
                  int64_t row_end, float* y, int64_t ldy, bool round_bf16);

// An FP8 weight applied to activations that are not quantized (wo_a: the reference
// dequantizes it to bf16, exactly, and multiplies in a bf16 einsum with fp32 accumulation):
// over weight rows [row_begin, row_end), y[i, r - row_begin] is quant_linear's FP8 tile sum
// with each 128-block of x divided by the power of two 2^floor(log2 max|x|) in place of the
// FP8 activation codes (exact products for bf16-valued x) and that power of two in place of
// the activation scale; x rows `ldx` apart, y rows `ldy` apart; rounds y to bf16 if asked.
void fp8_bf16_linear(const float* x, int64_t m, int64_t ldx, const WeightRef& w, int64_t row_begin,
                     int64_t row_end, float* y, int64_t ldy, bool round_bf16);

// The reference's fp32 matmul with a BF16 weight (the output head,
// `norm(y).float() @ head.weight.T`): over weight rows [row_begin, row_end),
// y[i, r - row_begin] = Σ_k x[i, k]·W[r, k] accumulated in fp32 in
// linear_dot_pairs_f32's order (the AVX512-BF16 dot-product instruction's),
// x rows `ldx` apart, y rows `ldy` apart. One fused multiply-add per weight
// instead of the double path's conversions and two half-width ones: decode
// reads the head at the memory's pace. W must be BF16.
void fp32_bf16_linear(const float* x, int64_t m, int64_t ldx, const WeightRef& w, int64_t row_begin,
                      int64_t row_end, float* y, int64_t ldy);

}  // namespace dsv4::kernels
