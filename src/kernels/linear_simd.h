// Internal interface between linear.cpp (argument checks, activation
// quantisation, threading) and the per-ISA kernels in linear_avx2.cpp and
// linear_avx512.cpp. Not part of the kernels' public API.
#pragma once

#include <cstdint>

#include "kernels/linear.h"

namespace dsv4::kernels::detail {

// Activations of an FP4 matrix-matrix product prepared for the AVX512-VNNI integer kernel
// (linear_avx512.cpp): per block of 16 rows and 32-element tile, up to three planes of 8 × 64
// digit bytes, the planes used, the digit offset, and per row the tile's power-of-two unit
// (as a biased double exponent before the weight scale is added).
struct Fp4BatchActs {
  int64_t tiles = 0, blocks = 0;
  uint8_t* digits = nullptr;     // [blocks][tiles][3][8][64], 64-byte aligned
  uint8_t* planes = nullptr;     // [blocks][tiles]
  int32_t* offset = nullptr;     // [blocks][tiles]
  int64_t* unit_bits = nullptr;  // [blocks][tiles][16]
  int32_t unit_min = 0, unit_max = 0;
};

// Activations of an FP4 matrix-vector product prepared for the AVX512-VNNI integer kernel
// (linear_avx512.cpp): per chunk of 128 elements, three planes of signed digits (even elements,
// then odd ones, 64 bytes each); per group of 16 tiles, the planes used and, in the kernel's
// lane order, each tile's power-of-two unit u − 1 and the bias 12·ΣX; per chunk, whether it
// needs the third plane.
struct Fp4VecActs {
  int64_t tiles = 0, groups = 0;
  int8_t* digits = nullptr;            // [groups * 4][3][2][64], 64-byte aligned
  int32_t* unit = nullptr;             // [groups][16]
  int32_t* bias = nullptr;             // [groups][16]
  uint8_t* planes = nullptr;           // [groups]
  uint8_t* third = nullptr;            // [groups * 4]: 1 where a chunk needs three planes
  int32_t unit_min = 0, unit_max = 0;  // extremes of u − 1 over the tiles
};

// Activations of an FP4 matrix-vector product prepared for the AVX2 word kernel
// (fp4_words_avx2.cpp): per chunk of 64 elements (two tiles), two planes of 64 words (X's low
// 16 bits as a signed word, then (X − low) / 2^16), in the kernel's word order; per group of 8
// tiles, in its lane order, each tile's power-of-two unit u − 1 and the bias 12·ΣX; per chunk
// and per group, whether the second plane is needed (some |X| ≥ 2^15).
struct Fp4WordActs {
  int64_t tiles = 0, groups = 0;
  int16_t* words = nullptr;            // [groups * 4][2][64], 64-byte aligned
  int32_t* unit = nullptr;             // [groups][8]
  int32_t* bias = nullptr;             // [groups][8]
  uint8_t* wide = nullptr;             // [groups * 4]
  uint8_t* group_wide = nullptr;       // [groups]
  int32_t unit_min = 0, unit_max = 0;  // extremes of u − 1 over the tiles
};

// Activations of an FP4 matrix-matrix product for the AVX2 fp32 kernel (fp4_gemm_avx2.cpp):
// per row and tile, 1 where fp32 sums are not exact for it; the extremes of the other tiles'
// units u (lowest set bits), INT32_MAX / INT32_MIN if there are none.
struct Fp4F32Acts {
  int64_t tiles = 0;
  const uint8_t* kind = nullptr;  // [m][tiles]: kFp4TileF32 / kFp4TileSplit / kFp4TileDouble
  // [m][in]: the activations, in split tiles only their high part (the low one is in x_lo).
  const float* x_hi = nullptr;
  const float* x_lo = nullptr;
  int32_t u_lo = 0, u_hi = 0;  // range of the parts' lowest set bits
};
enum : uint8_t { kFp4TileF32 = 0, kFp4TileSplit = 1, kFp4TileDouble = 2 };

// One linear over weight rows; the kernels compute rows [r0, r1) of it.
struct LinearTask {
  const WeightRef* w = nullptr;
  int64_t m = 0;
  const float* x = nullptr;  // [m, ldx] (scalar path); only the first w->in columns are read
  int64_t ldx = 0;
  // The same activations in double (SIMD paths): [m, padded_in(w->in)], zero
  // past w->in, so a kernel may read whole 16-element groups.
  const double* xd = nullptr;
  // K tile whose sum is rounded to fp32 before the fp32 accumulation over
  // tiles (quant_linear: 128 for FP8, 32 for FP4), or 0: one double sum over
  // the whole row, rounded once (plain_linear).
  int64_t tile = 0;
  float* y = nullptr;  // y[i * ldy + (r - row_begin)]
  int64_t ldy = 0, row_begin = 0;
  bool round_bf16 = false;
  // Set when the FP4 matrix-matrix product runs on the VNNI integer kernel.
  const Fp4BatchActs* fp4_batch = nullptr;
  // Set when the FP4 matrix-vector product runs on the VNNI integer kernel.
  const Fp4VecActs* fp4_vec = nullptr;
  // Set when the FP4 matrix-vector product runs on the AVX2 word kernel.
  const Fp4WordActs* fp4_words = nullptr;
  // Set when the FP4 matrix-matrix product runs on the AVX2 fp32 kernel.
  const Fp4F32Acts* fp4_f32 = nullptr;
};

// w.in rounded up to whole 16-element groups.
inline int64_t padded_in(int64_t in) {
  return (in + 15) / 16 * 16;
}

// Rows decoded per block (plain matrix-matrix and AVX2): the decoded block
// (doubles, ≤ ~512 KB) should stay in L2 while activation rows stream past it.
int64_t decode_block_rows(int64_t in, int64_t row_multiple);

// Per-thread scratch buffer `slot` of at least n doubles (64-byte aligned,
// reused across calls). Slots: 0 decoded weights, 1 fp32 accumulators (a
// matrix-matrix kernel's block outputs) or scaled activations of the
// matrix-vector paths, 2 scaled activations of the small-batch path (which may
// fall back to a path using 0 and 1). A larger request reallocates: a kernel
// that hands part of its rows to another fetches its buffers after that call.
double* thread_scratch(int64_t n, int slot);

// m rows of n outputs, `ld` apart at `from`, into y (rows ldy apart), rounded to bf16 if
// asked: the matrix-matrix kernels gather a weight block's outputs contiguously, as y's rows
// lie `out` floats apart.
void store_block_outputs(const float* from, int64_t ld, int64_t m, int64_t n, float* y, int64_t ldy,
                         bool round_bf16);

// The FP8 or FP4 block scale `index` as the scalar path decodes it.
float weight_block_scale(const WeightRef& w, int64_t index);

// Whether this CPU runs the FP4 VNNI matrix-matrix kernel (AVX512-VNNI, allowed).
bool fp4_batch_available();
// Fills block b (activation rows 16b .. 16b+15 of t.xd) of `a`, whose tiles, blocks and
// buffers are set; false if an activation does not fit the integer kernel.
bool prepare_fp4_batch_block(const LinearTask& t, Fp4BatchActs* a, int64_t b);

// Whether this CPU runs the FP4 VNNI matrix-vector kernel (AVX512-VNNI, allowed).
bool fp4_vec_available();
// Bytes of the buffer prepare_fp4_vec needs for rows of `in` elements.
int64_t fp4_vec_bytes(int64_t in);
// Lays out one activation row x (fake-quantized, `in` a multiple of 32) in `buffer`; false if
// a value does not fit the integer kernel.
bool prepare_fp4_vec(const float* x, int64_t in, Fp4VecActs* a, uint8_t* buffer);

// The AVX2 FP4 matrix-vector word kernel (any x86-64-v3 CPU): bytes of the buffer
// prepare_fp4_words needs for rows of `in` elements; the layout of one activation row x
// (fake-quantized, `in` a multiple of 32), false if a value does not fit the kernel; rows
// [r0, r1) of t (t.fp4_words set).
int64_t fp4_words_bytes(int64_t in);
bool prepare_fp4_words(const float* x, int64_t in, Fp4WordActs* a, uint8_t* buffer);
void gemv_fp4_words(const LinearTask& t, int64_t r0, int64_t r1);
// The AVX2 double-path FP4 (E8M0) matrix-vector rows, exact for any scale.
void gemv_fp4_e8m0_avx2(const LinearTask& t, int64_t r0, int64_t r1);
// The AVX2 FP4 (E8M0) matrix-matrix kernels: the fp32 one (t.fp4_f32 from prepare_fp4_f32,
// which needs fp4_f32_bytes(m, in) at `buffer`, 64-byte aligned) and the double one, exact for
// any scale.
int64_t fp4_f32_bytes(int64_t m, int64_t in);
void prepare_fp4_f32(const LinearTask& t, Fp4F32Acts* a, uint8_t* buffer);
void fp4_gemm_f32(const LinearTask& t, int64_t r0, int64_t r1);
void quant_gemm_e8m0_avx2(const LinearTask& t, int64_t r0, int64_t r1);

// One fp32_bf16_linear call. Activation row i is split into its odd and even
// elements per group of 32 (xo[i * ldp + 16g + j] = x[i, 32g + 2j + 1], xe the
// same for 32g + 2j; +0 past w->in), 64-byte aligned.
struct PairTask {
  const WeightRef* w = nullptr;
  int64_t m = 0;
  const float* xo = nullptr;
  const float* xe = nullptr;
  int64_t ldp = 0;  // floats per row of xo / xe: 16 per group of 32
  // Set (AVX2) when every activation is a bf16 value: row i's bf16 bits in element order at
  // xb + 2 * ldp * i (+0 past w->in), the weights' own layout. One 32-byte load then holds 16
  // odd and 16 even activations where xo / xe need two each: on Zen 1 the activation loads
  // held the head's read of the weights to 11.1 GB/s (13.9 without them).
  const uint16_t* xb = nullptr;
  float* y = nullptr;
  int64_t ldy = 0, row_begin = 0;
};
void pair_rows_avx2(const PairTask& t, int64_t r0, int64_t r1);
void pair_rows_avx512(const PairTask& t, int64_t r0, int64_t r1);

// One quant_linear call with an FP8 weight (the FP32-accumulation contract, docs/kernels.md):
// the activations as FP8 values (exact e4m3 values, +0 from `in` to a multiple of 32) and
// their power-of-two block scales. Which layout is set depends on the kernel that runs.
struct Fp8Task {
  const WeightRef* w = nullptr;
  int64_t m = 0;
  int64_t ldq = 0;               // values per activation row: in rounded up to 32
  const uint16_t* xb = nullptr;  // [m][ldq] bf16 bits (AVX512-BF16 kernel)
  const float* xo = nullptr;     // m = 1 (FMA kernel): [ldq / 2] odd elements × 2^8 (the FP8
  const float* xe = nullptr;     // decode yields value × 2^-8), xe the even ones
  // m = 1 (FMA kernel): the same odd and even elements × 2^112 in the lane order of its
  // four-tile step, which decodes weights to value × 2^-120 (per group of 32, lanes
  // 0..7 take pairs 0-3 and 8-11, lanes 8..15 pairs 4-7 and 12-15).
  const float* xo_q = nullptr;
  const float* xe_q = nullptr;
  // m > 1 (FMA kernel): the values × 2^8 packed once per call for its register blocks
  // (fp8_pack_avx2).
  const float* xpack = nullptr;
  const float* scales = nullptr;  // [m][tiles] activation block scales (tiles of 128)
  float* y = nullptr;             // y[i * ldy + (r - row_begin)]
  int64_t ldy = 0, row_begin = 0;
  bool round_bf16 = true;
};
// quant_linear with an FP8 weight, without the final rounding to bf16: the fp32 accumulators,
// where the summation order shows (tests compare the paths on these).
void fp8_quant_linear_f32(const float* x, int64_t m, const WeightRef& w, float* y);
// The rows [r0, r1) of an FP8 quant_linear: fp8_rows_avx2 with FMAs (AVX2 + FMA + F16C: also
// the AVX-512 fallback), fp8_rows_avx512 with the AVX512-BF16 dot product (needs VBMI too).
void fp8_rows_avx2(const Fp8Task& t, int64_t r0, int64_t r1);
// fp8_rows_avx2's m > 1 activation layout: activation rows per packed block, floats needed,
// and the packing of the blocks [b0, b1) of the values q ([t.m][t.ldq]) into out.
inline constexpr int64_t kFp8PackRowBlock = 6;
int64_t fp8_pack_floats_avx2(int64_t m, int64_t in);
void fp8_pack_avx2(const Fp8Task& t, const float* q, int64_t b0, int64_t b1, float* out);
void fp8_rows_avx512(const Fp8Task& t, int64_t r0, int64_t r1);
// Whether fp8_rows_avx512 runs here: AVX512-BF16 and VBMI present, the dot-product instruction
// verified once to add in linear_dot_pairs_f32's order, and not switched off (tests).
bool fp8_bf16_dot_available();
void set_avx512_bf16_allowed(bool allowed);

void linear_rows_avx2(const LinearTask& t, int64_t r0, int64_t r1);
void linear_rows_avx512(const LinearTask& t, int64_t r0, int64_t r1);
// Lets tests run the AVX-512 kernels as on a CPU without AVX512-VBMI (the FP4
// matrix-vector fast path needs it); true by default.
void set_avx512_vbmi_allowed(bool allowed);
// The same for AVX512-VNNI (the FP4 matrix-vector integer path); true by default.
void set_avx512_vnni_allowed(bool allowed);
// Whether the AVX512-VNNI integer kernels run here: the CPU has it and tests allow it.
bool avx512_vnni_usable();

// 2q for each e2m1 code q (bit 3 = sign; code 8 is -0), and 2q + 12 (unsigned bytes for
// vpdpbusd): the integer FP4 kernels' decode tables.
inline constexpr int8_t kFp4Twice[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
inline constexpr uint8_t kFp4TwicePlus12[16] = {12, 13, 14, 15, 16, 18, 20, 24,
                                                12, 11, 10, 9,  8,  6,  4,  0};

}  // namespace dsv4::kernels::detail
