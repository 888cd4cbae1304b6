// The lightning indexer's scores over FP4 keys (spec §3.5), with integer dot products.
#pragma once

#include <cstdint>
#include <vector>

namespace dsv4::kernels {

// One query's FP4 codes, prepared once for every fp4_index_scores call over its keys.
struct Fp4IndexQuery {
  bool usable = false;  // false: the kernel declines (the caller scores every entry)
  int64_t heads = 0, dim = 0;
  std::vector<int8_t> codes;  // [heads, dim]: twice the E2M1 values
  std::vector<int32_t> bias;  // [heads, dim / 32]: 12·Σ codes of the block
  std::vector<double> scale;  // [heads, dim / 32]: half the block's power of two
  int span = 0;               // the widest spread of one head's nonzero block exponents
};

// Prepares q [heads, dim]; usable when the active ISA is AVX-512 with VNNI, dim is a multiple
// of 32 and every value is FP4 fake-quantized (per 32: an E2M1 grid times a power of two).
void prepare_fp4_index_query(const float* q, int64_t heads, int64_t dim, Fp4IndexQuery* out);

// Scores of a prepared query against n packed FP4 keys (rows of dim / 2 code bytes, low nibble
// the even dim, then one E8M0 scale byte per 32 dims: model/kv_cache.h's Fp4KeyLayout):
//   score[j] = bf16(Σ_h bf16(bf16(max(float(q_h·k_j), 0)) · w[h]))   (fp32 sum in head order),
// q_h·k_j the exact sum (the double dot product of the float values, which is exact whenever
// the products' block scales span at most 2^40, as here). Entries it cannot compute exactly
// this way (a NaN or zero scale byte, a wider span of scales) are flagged in fallback[j] (1)
// for the caller's float loop; their score is left unset. Returns false, computing nothing,
// when the query is not usable.
bool fp4_index_scores(const Fp4IndexQuery& q, const float* w, const uint8_t* const* keys, int64_t n,
                      float* score, uint8_t* fallback);

}  // namespace dsv4::kernels
