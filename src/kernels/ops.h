// Transformer operations with the DeepSeek V4 reference's precision and
// rounding points (architecture spec §3). Scalar reference implementations;
// vectors hold bf16-representable floats wherever the reference holds bf16.
#pragma once

#include <cstdint>
#include <vector>

namespace dsv4::kernels {

// RMSNorm with an fp32 weight: y = bf16(w · (x · rsqrt(mean(x²) + eps))), fp32 math,
// for each of m rows of n values (y may alias x).
void rms_norm(const float* x, int64_t m, int64_t n, const float* weight, float eps, float* y);

// The per-head q normalisation of the reference, done in bf16 tensor
// arithmetic: every op (square, mean, + eps, rsqrt, multiply) rounds to bf16.
// torch computes a bf16 rsqrt in two ways: its vectorised loop rounds
// 1/sqrt(v) once (exact_rsqrt), its scalar loop (small tensors and the tail
// of large ones) rounds sqrt(v) to bf16 first and then the reciprocal.
void rms_norm_bf16_noweight(float* x, int64_t n, float eps, bool exact_rsqrt);

// Which elements of a bf16 elementwise op over `numel` values torch runs in
// its vectorised loop: the leading multiple of `vector_span` values.
inline bool torch_vectorized(int64_t index, int64_t numel, int64_t vector_span) {
  return index < numel / vector_span * vector_span;
}

// Rotary embedding on interleaved pairs (x[2i], x[2i+1]), with YaRN-corrected
// frequencies when `yarn` is set (the reference's precompute_freqs_cis).
class RopeTable {
 public:
  RopeTable(int64_t rope_dim, double base, bool yarn, double factor, int64_t original_seq_len,
            double beta_fast, double beta_slow);
  int64_t dim() const { return dim_; }
  const std::vector<float>& freqs() const { return freqs_; }  // [dim/2]
  // Rotates x[0..dim) (the rope part of a vector) by position `pos`, in fp32,
  // rounding the result to bf16; `inverse` rotates by −pos (the conjugate).
  void apply(float* x, int64_t pos, bool inverse) const;

 private:
  int64_t dim_;
  std::vector<float> freqs_;
};

// The YaRN correction range [low, high] of precompute_freqs_cis.
void yarn_correction_range(int64_t dim, double base, int64_t original_seq_len, double beta_fast,
                           double beta_slow, int64_t* low, int64_t* high);

// Normalised Walsh–Hadamard transform (Sylvester order) in fp32:
// x ← H·x · scale, n a power of two. No rounding (caller rounds).
void hadamard(float* x, int64_t n, float scale);

// hc_split_sinkhorn for one token (spec §3.2): mix [(2+hc)·hc] → pre [hc],
// post [hc], comb [hc·hc] (row-major comb[i·hc + j]).
void hc_split_sinkhorn(const float* mix, int64_t hc, const float* scale, const float* base,
                       int64_t iters, float eps, float* pre, float* post, float* comb);

// In-place max-subtracted softmax over n values (fp32).
void softmax(float* x, int64_t n);

// Indices of the k largest of s[0..n), largest first; ties go to the lower
// index. NaN is treated as smaller than everything. k is clamped to n.
std::vector<int32_t> topk(const float* s, int64_t n, int64_t k);

// Sparse attention with sinks (the reference's sparse_attn kernel):
//   q   [m, heads, dim]  bf16 values
//   kv  [rows, dim]      bf16 values, each row both key and value
//   idx [m, width]       rows of kv per query, −1 = masked
// Per (query, head): logits z = (q·k)·scale in fp32, processed in tiles of 64
// list entries with an online running max m; the numerators exp(z − m) are
// summed unrounded into the denominator but rounded to bf16 before P·V; the
// sink adds exp(sink − m) to the denominator once. out [m, heads, dim] bf16.
void sparse_attention(const float* q, int64_t m, int64_t heads, int64_t dim, const float* kv,
                      const int32_t* idx, int64_t width, const float* sink, float scale,
                      float* out);
// The same over rows held anywhere (window ring, this chunk, compressed
// cache): idx addresses `rows`, a table of pointers to dim-float rows, so
// caches are read in place instead of being gathered into one buffer.
void sparse_attention(const float* q, int64_t m, int64_t heads, int64_t dim,
                      const float* const* rows, const int32_t* idx, int64_t width,
                      const float* sink, float scale, float* out);
// The same, one (query, head) at a time: the definition sparse_attention must match bit for
// bit (it reorders only the loops, to read each kv row once per group of heads).
void sparse_attention_reference(const float* q, int64_t m, int64_t heads, int64_t dim,
                                const float* const* rows, const int32_t* idx, int64_t width,
                                const float* sink, float scale, float* out);

inline float silu(float x) {
  return x / (1.0f + __builtin_expf(-x));
}

}  // namespace dsv4::kernels
