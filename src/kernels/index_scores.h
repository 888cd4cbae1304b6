// The lightning indexer's scores over FP4 keys (spec §3.5), with integer dot products.
#pragma once

#include <cstdint>

namespace dsv4::kernels {

// Scores of one query against n packed FP4 keys (rows of dim / 2 code bytes, low nibble the
// even dim, then one E8M0 scale byte per 32 dims: model/kv_cache.h's Fp4KeyLayout):
//   score[j] = bf16(Σ_h bf16(bf16(max(float(q_h·k_j), 0)) · w[h]))   (fp32 sum in head order),
// q_h·k_j the exact sum (the double dot product of the float values, which is exact whenever
// the products' block scales span at most 2^40, as here). q [heads, dim] must hold FP4
// fake-quantized values (per 32: an E2M1 grid times a power of two), dim a multiple of 32.
// Entries it cannot compute exactly this way (a NaN scale, a wider span of scales) are
// flagged in fallback[j] (1) for the caller's scalar path; their score is left unset.
// Returns false, computing nothing, when the queries are not on such a grid or the CPU lacks
// AVX-512 VNNI (or the active ISA is not AVX-512): the caller then scores every entry itself.
bool fp4_index_scores(const float* q, const float* w, int64_t heads, int64_t dim,
                      const uint8_t* const* keys, int64_t n, float* score, uint8_t* fallback);

}  // namespace dsv4::kernels
