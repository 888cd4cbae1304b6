#include "model/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "kernels/numerics.h"
#include "util/error.h"

namespace dsv4 {

namespace {

bool same_value(float a, float b) {
  return kernels::float_bits(a) == kernels::float_bits(b) || (std::isnan(a) && std::isnan(b));
}

// The UE8M0 byte of a power-of-two scale is its float exponent field.
uint8_t scale_byte(float s) {
  return static_cast<uint8_t>(kernels::float_bits(s) >> 23);
}

[[noreturn]] void off_grid(const char* what, int64_t dim, float v) {
  fail("KV cache: value ", v, " at dim ", dim, " is not on the ", what,
       " grid it is stored in; the forward must fake-quantise a row before caching it "
       "(spec §6.3)");
}

}  // namespace

KvRowLayout KvRowLayout::for_dims(int64_t head_dim, int64_t rope_dim) {
  KvRowLayout l;
  l.rope = rope_dim;
  l.nope = head_dim - rope_dim;
  l.scales = (l.nope + kScaleBlock - 1) / kScaleBlock;
  l.bytes = l.nope + 2 * l.rope + (l.scales + 7) / 8 * 8;
  return l;
}

void KvRowLayout::pack(const float* row, uint8_t* out) const {
  uint8_t* codes = out;
  uint8_t* rope_bytes = out + nope;
  uint8_t* scale_bytes = out + nope + 2 * rope;
  std::memset(scale_bytes, 0, static_cast<size_t>(bytes - nope - 2 * rope));
  const float* table = kernels::fp8_e4m3_table();
  for (int64_t b = 0; b < scales; ++b) {
    const int64_t d0 = b * kScaleBlock, d1 = std::min(nope, d0 + kScaleBlock);
    float amax = 0;
    for (int64_t d = d0; d < d1; ++d) amax = std::max(amax, std::fabs(row[d]));
    // The scale fp8_fake_quant derives from these values: the one the
    // forward used, or half of it when the block's largest code rounded down
    // to 224; either way every value is a code times the scale.
    const float s = kernels::fp8_block_scale(amax);
    scale_bytes[b] = scale_byte(s);
    for (int64_t d = d0; d < d1; ++d) {
      codes[d] = kernels::fp8_e4m3_encode(row[d] / s);
      if (!same_value(table[codes[d]] * s, row[d])) off_grid("FP8 e4m3", d, row[d]);
    }
  }
  for (int64_t d = 0; d < rope; ++d) {
    const float v = row[nope + d];
    if (!same_value(kernels::bf16_round(v), v)) off_grid("BF16", nope + d, v);
    const uint16_t bits = kernels::float_to_bf16_bits(v);
    std::memcpy(rope_bytes + 2 * d, &bits, 2);
  }
}

void KvRowLayout::unpack(const uint8_t* in, float* row) const {
  const uint8_t* rope_bytes = in + nope;
  const uint8_t* scale_bytes = in + nope + 2 * rope;
  const float* table = kernels::fp8_e4m3_table();
  for (int64_t b = 0; b < scales; ++b) {
    const float s = kernels::e8m0_decode(scale_bytes[b]);
    const int64_t d0 = b * kScaleBlock, d1 = std::min(nope, d0 + kScaleBlock);
    for (int64_t d = d0; d < d1; ++d) row[d] = table[in[d]] * s;
  }
  for (int64_t d = 0; d < rope; ++d) {
    uint16_t bits;
    std::memcpy(&bits, rope_bytes + 2 * d, 2);
    row[nope + d] = kernels::bf16_to_float(bits);
  }
}

Fp4KeyLayout Fp4KeyLayout::for_dim(int64_t dim) {
  if (dim % 2 != 0) fail("KV cache: an FP4 indexer key needs an even dimension, got ", dim);
  Fp4KeyLayout l;
  l.dim = dim;
  l.scales = (dim + kScaleBlock - 1) / kScaleBlock;
  l.bytes = dim / 2 + l.scales;
  return l;
}

void Fp4KeyLayout::pack(const float* key, uint8_t* out) const {
  uint8_t* scale_bytes = out + dim / 2;
  std::memset(out, 0, static_cast<size_t>(dim / 2));
  const float* table = kernels::fp4_e2m1_table();
  for (int64_t b = 0; b < scales; ++b) {
    const int64_t d0 = b * kScaleBlock, d1 = std::min(dim, d0 + kScaleBlock);
    float amax = 0;
    bool nan = false;
    for (int64_t d = d0; d < d1; ++d) {
      amax = std::max(amax, std::fabs(key[d]));
      nan = nan || std::isnan(key[d]);
    }
    if (nan) {  // e2m1 has no NaN: the NaN scale makes the whole block NaN
      scale_bytes[b] = 0xff;
      continue;
    }
    // As for FP8: fp4_block_scale of the fake-quantised values is the
    // forward's scale or half of it, and the values stay on its grid.
    const float s = kernels::fp4_block_scale(amax);
    scale_bytes[b] = scale_byte(s);
    for (int64_t d = d0; d < d1; ++d) {
      const float v = key[d] / s;
      uint8_t code = 16;
      for (uint8_t c = 0; c < 16 && code == 16; ++c)
        if (same_value(table[c], v)) code = c;
      if (code == 16 || !same_value(table[code] * s, key[d])) off_grid("FP4 e2m1", d, key[d]);
      out[d / 2] |= static_cast<uint8_t>(code << (4 * (d % 2)));
    }
  }
}

void Fp4KeyLayout::unpack(const uint8_t* in, float* key) const {
  const uint8_t* scale_bytes = in + dim / 2;
  const float* table = kernels::fp4_e2m1_table();
  for (int64_t b = 0; b < scales; ++b) {
    const float s = kernels::e8m0_decode(scale_bytes[b]);
    const int64_t d0 = b * kScaleBlock, d1 = std::min(dim, d0 + kScaleBlock);
    // The indexer decodes every key of the context per decode step: eight
    // dims at a time (AVX2, the build's baseline). Lane k of a 32-bit word
    // of codes holds nibble k = dim 2·(k/2) + k%2 of its 4 bytes; the low 3
    // bits pick the magnitude, bit 3 the sign (so code 8 is −0, as in the
    // table). The products are the scalar loop's: t·s, sign applied after.
    const __m256 magnitudes = _mm256_mul_ps(_mm256_loadu_ps(table), _mm256_set1_ps(s));
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    int64_t d = d0;
    for (; d + 8 <= d1; d += 8) {
      uint32_t word;
      std::memcpy(&word, in + d / 2, 4);
      const __m256i codes = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts);
      const __m256 mag = _mm256_permutevar8x32_ps(magnitudes, codes);  // uses bits 0-2
      const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(codes, _mm256_set1_epi32(8)), 28);
      _mm256_storeu_ps(key + d, _mm256_xor_ps(mag, _mm256_castsi256_ps(sign)));
    }
    for (; d < d1; ++d) key[d] = table[(in[d / 2] >> (4 * (d % 2))) & 0xf] * s;
  }
}

uint8_t* PagedRows::append() {
  const size_t page_bytes = static_cast<size_t>(kRowsPerPage * row_bytes_);
  // The last page is published when the next row needs room (the caller
  // fills a row after append returns), and is never written again.
  if (tail_.size() == page_bytes) {
    full_.push_back(std::make_shared<const KvPage>(KvPage{std::move(tail_)}));
    tail_ = {};
  }
  // A copied store's tail has no spare capacity: reserve the whole page once
  // so that filling it moves it at most once.
  if (tail_.capacity() < page_bytes) tail_.reserve(page_bytes);
  tail_.resize(tail_.size() + static_cast<size_t>(row_bytes_));
  uint8_t* row = tail_.data() + tail_.size() - row_bytes_;
  ++rows_;
  return row;
}

}  // namespace dsv4
