// Small AVX2 building blocks shared by the AVX2 kernel files (linear_avx2.cpp,
// fp4_words_avx2.cpp, fp4_gemm_avx2.cpp), which the build compiles for x86-64-v3.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace dsv4::kernels::detail {

// The 8 × 8 floats r[i] (row i) transposed in place: r[j] becomes column j. The 128-bit halves
// are joined with inserts (vperm2f128 is slow on Zen 1).
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int b = 0; b < 2; ++b) {
    u[4 * b] = _mm256_shuffle_ps(t[4 * b], t[4 * b + 2], 0x44);
    u[4 * b + 1] = _mm256_shuffle_ps(t[4 * b], t[4 * b + 2], 0xEE);
    u[4 * b + 2] = _mm256_shuffle_ps(t[4 * b + 1], t[4 * b + 3], 0x44);
    u[4 * b + 3] = _mm256_shuffle_ps(t[4 * b + 1], t[4 * b + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_insertf128_ps(u[c], _mm256_castps256_ps128(u[4 + c]), 1);
    r[4 + c] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_extractf128_ps(u[c], 1)),
                                    _mm256_extractf128_ps(u[4 + c], 1), 1);
  }
}

// 8 FP4 e2m1 values from 4 packed bytes: magnitude from an 8-entry permute of `magnitudes`
// (fp4_e2m1_table()'s first 8), sign from bit 3.
inline __m256 fp4_values(const uint8_t* p, __m256 magnitudes) {
  uint32_t bytes;
  std::memcpy(&bytes, p, 4);
  const __m128i b = _mm_cvtsi32_si128(static_cast<int>(bytes));
  const __m256i idx = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(b, b)),
                                        _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0));
  const __m256 mag = _mm256_permutevar8x32_ps(magnitudes, idx);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(idx, _mm256_set1_epi32(8)), 28);
  return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
}

}  // namespace dsv4::kernels::detail
