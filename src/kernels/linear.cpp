#include "kernels/linear.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "kernels/numerics.h"
#include "util/error.h"
#include "util/threadpool.h"

namespace dsv4::kernels {

namespace {

constexpr int64_t kFp8Block = 128;
constexpr int64_t kFp4Block = 32;

float block_scale(const WeightRef& w, int64_t index) {
  if (w.scale_is_f32) {  // checkpoint data need not be 4-byte aligned
    float s;
    std::memcpy(&s, static_cast<const std::byte*>(w.scale) + index * 4, 4);
    return s;
  }
  return e8m0_decode(static_cast<const uint8_t*>(w.scale)[index]);
}

// Output rows per parallel task: enough work to amortise the dispatch.
int64_t row_grain(int64_t m, int64_t in) {
  const int64_t work = std::max<int64_t>(1, m * in);
  return std::clamp<int64_t>(65536 / work, 1, 64);
}

}  // namespace

void dequant_row(const WeightRef& w, int64_t row, float* out) {
  const int64_t in = w.in;
  switch (w.format) {
    case WeightFormat::kFP8: {
      const float* table = fp8_e4m3_table();
      const uint8_t* codes = static_cast<const uint8_t*>(w.data) + row * in;
      const int64_t scale_cols = (in + kFp8Block - 1) / kFp8Block;
      for (int64_t b = 0; b < scale_cols; ++b) {
        const float s = block_scale(w, (row / kFp8Block) * scale_cols + b);
        const int64_t end = std::min(in, (b + 1) * kFp8Block);
        for (int64_t k = b * kFp8Block; k < end; ++k) out[k] = table[codes[k]] * s;
      }
      break;
    }
    case WeightFormat::kFP4: {
      const float* table = fp4_e2m1_table();
      const uint8_t* packed = static_cast<const uint8_t*>(w.data) + row * (in / 2);
      const int64_t scale_cols = in / kFp4Block;
      for (int64_t b = 0; b < scale_cols; ++b) {
        const float s = block_scale(w, row * scale_cols + b);
        for (int64_t k = b * kFp4Block; k < (b + 1) * kFp4Block; k += 2) {
          const uint8_t byte = packed[k / 2];
          out[k] = table[byte & 0xf] * s;
          out[k + 1] = table[byte >> 4] * s;
        }
      }
      break;
    }
    case WeightFormat::kBF16: {
      const std::byte* v = static_cast<const std::byte*>(w.data) + row * in * 2;
      for (int64_t k = 0; k < in; ++k) {
        uint16_t b;
        std::memcpy(&b, v + k * 2, 2);
        out[k] = bf16_to_float(b);
      }
      break;
    }
    case WeightFormat::kF32: {
      std::memcpy(out, static_cast<const std::byte*>(w.data) + row * in * 4,
                  static_cast<size_t>(in) * 4);
      break;
    }
  }
}

void quant_linear(const float* x, int64_t m, const WeightRef& w, float* y) {
  if (w.format != WeightFormat::kFP8 && w.format != WeightFormat::kFP4)
    fail("quant_linear needs an FP8 or FP4 weight");
  const int64_t in = w.in, out = w.out;
  // Activation fake-quant: FP8 values times their block scale (exact in fp32).
  std::vector<float> xq(x, x + m * in);
  for (int64_t i = 0; i < m; ++i) fp8_fake_quant(xq.data() + i * in, in, kFp8Block);
  const int64_t tile = w.format == WeightFormat::kFP8 ? kFp8Block : kFp4Block;
  parallel_for(
      out,
      [&](int64_t r0, int64_t r1, int) {
        std::vector<float> row(in);
        for (int64_t r = r0; r < r1; ++r) {
          dequant_row(w, r, row.data());
          for (int64_t i = 0; i < m; ++i) {
            const float* a = xq.data() + i * in;
            float acc = 0;
            for (int64_t k0 = 0; k0 < in; k0 += tile) {
              const int64_t k1 = std::min(in, k0 + tile);
              // Products are exact; each tile's sum rounds once to fp32.
              acc += static_cast<float>(dot_f64(a + k0, row.data() + k0, k1 - k0));
            }
            y[i * out + r] = bf16_round(acc);
          }
        }
      },
      row_grain(m, in));
}

void plain_linear(const float* x, int64_t m, int64_t ldx, const WeightRef& w, int64_t row_begin,
                  int64_t row_end, float* y, int64_t ldy, bool round_bf16) {
  const int64_t in = w.in;
  parallel_for(
      row_end - row_begin,
      [&](int64_t r0, int64_t r1, int) {
        std::vector<float> row(in);
        for (int64_t r = r0; r < r1; ++r) {
          dequant_row(w, row_begin + r, row.data());
          for (int64_t i = 0; i < m; ++i) {
            const float* a = x + i * ldx;
            const float v = static_cast<float>(dot_f64(a, row.data(), in));
            y[i * ldy + r] = round_bf16 ? bf16_round(v) : v;
          }
        }
      },
      row_grain(m, in));
}

}  // namespace dsv4::kernels
