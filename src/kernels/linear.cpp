#include "kernels/linear.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "kernels/isa.h"
#include "kernels/linear_simd.h"
#include "kernels/numerics.h"
#include "util/error.h"
#include "util/scratch.h"
#include "util/threadpool.h"

namespace dsv4::kernels {

namespace {

constexpr int64_t kFp8Block = 128;
constexpr int64_t kFp4Block = 32;

// Bytes of weight data per row, for sizing parallel tasks.
int64_t row_bytes(const WeightRef& w) {
  switch (w.format) {
    case WeightFormat::kFP8:
      return w.in;
    case WeightFormat::kFP4:
      return w.in / 2;
    case WeightFormat::kBF16:
      return w.in * 2;
    case WeightFormat::kF32:
      return w.in * 4;
  }
  return w.in;
}

// Output rows per parallel task: at least ~256 KB of weights (so a decode
// step, m = 1, is not dominated by dispatch), scaled down by m because each
// decoded row then serves m activation rows; a multiple of `multiple`.
int64_t row_grain(const WeightRef& w, int64_t m, int64_t multiple) {
  const int64_t bytes = std::max<int64_t>(1, row_bytes(w) * std::max<int64_t>(1, m));
  int64_t rows = std::max<int64_t>(1, (256 * 1024) / bytes);
  rows = std::max(rows, multiple);
  return (rows + multiple - 1) / multiple * multiple;
}

void check_weight(const WeightRef& w) {
  if (w.format == WeightFormat::kFP4 && w.in % kFp4Block != 0)
    fail("FP4 weight with ", w.in, " input columns: FP4 rows must be a multiple of ", kFp4Block);
}

// The scalar reference: decode a row into floats, then linear_dot_f64.
void scalar_rows(const detail::LinearTask& t, int64_t r0, int64_t r1) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in;
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t r = r0; r < r1; ++r) {
    dequant_row(w, r, row.data());
    for (int64_t i = 0; i < t.m; ++i) {
      const float* a = t.x + i * t.ldx;
      float v;
      if (t.tile > 0) {
        v = 0;
        for (int64_t k0 = 0; k0 < in; k0 += t.tile) {
          const int64_t k1 = std::min(in, k0 + t.tile);
          // Products are exact and a tile's sum is exact in double, so it
          // rounds once to fp32; the tiles add in fp32 in ascending K.
          v += static_cast<float>(linear_dot_f64(a + k0, row.data() + k0, k1 - k0));
        }
      } else {
        v = static_cast<float>(linear_dot_f64(a, row.data(), in));
      }
      t.y[i * t.ldy + (r - t.row_begin)] = t.round_bf16 ? bf16_round(v) : v;
    }
  }
}

// The calling thread's buffer for one call's activation layout (FP4 digit planes or
// fp32_bf16_linear's pair split: a call uses at most one), 64-byte aligned, grown as
// needed and reused across calls.
uint8_t* call_layout_buffer(int64_t bytes) {
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<uint8_t, Free> buffer;
  thread_local int64_t capacity = 0;
  if (bytes > capacity) {
    const int64_t rounded = (bytes + 63) / 64 * 64;
    buffer.reset(static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(rounded))));
    if (!buffer) throw std::bad_alloc();
    capacity = rounded;
  }
  return buffer.get();
}

// Lays out t's activations for the FP4 VNNI matrix-matrix kernel (in a per-thread buffer
// reused across calls); false if some value does not fit it.
bool prepare_fp4_batch(const detail::LinearTask& t, detail::Fp4BatchActs* a) {
  a->tiles = t.w->in / 32;
  a->blocks = (t.m + 15) / 16;
  const int64_t bt = a->tiles * a->blocks;
  const int64_t bytes = bt * (3 * 8 * 64 + 16 * 8 + 4 + 1);
  uint8_t* p = call_layout_buffer(bytes);
  a->digits = p;
  a->unit_bits = reinterpret_cast<int64_t*>(p + bt * 3 * 8 * 64);
  a->offset = reinterpret_cast<int32_t*>(p + bt * (3 * 8 * 64 + 16 * 8));
  a->planes = p + bt * (3 * 8 * 64 + 16 * 8 + 4);
  std::atomic<bool> ok{true};
  parallel_for(a->blocks, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1 && ok.load(std::memory_order_relaxed); ++b)
      if (!detail::prepare_fp4_batch_block(t, a, b)) ok.store(false);
  });
  if (!ok.load()) return false;
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (int64_t i = 0; i < bt * 16; ++i) {
    lo = std::min(lo, a->unit_bits[i]);
    hi = std::max(hi, a->unit_bits[i]);
  }
  // unit_bits = u − 1 − 127 + 1023.
  a->unit_min = static_cast<int32_t>(lo - 1023 + 128);
  a->unit_max = static_cast<int32_t>(hi - 1023 + 128);
  return true;
}

void run_rows(detail::LinearTask t, int64_t row_begin, int64_t row_end) {
  const Isa isa = active_isa();
  // SIMD kernels work on blocks of up to 8 rows; keep task boundaries on
  // multiples of 8.
  const int64_t grain = row_grain(*t.w, t.m, 8);
  auto rows = [&](const detail::LinearTask& task) {
    parallel_for(
        row_end - row_begin,
        [&](int64_t a, int64_t b, int) {
          switch (isa) {
            case Isa::kAvx512:
              detail::linear_rows_avx512(task, row_begin + a, row_begin + b);
              break;
            case Isa::kAvx2:
              detail::linear_rows_avx2(task, row_begin + a, row_begin + b);
              break;
            case Isa::kScalar:
              scalar_rows(task, row_begin + a, row_begin + b);
              break;
          }
        },
        grain);
  };
  if (isa == Isa::kScalar) return rows(t);
  // The SIMD kernels read activations as zero-padded doubles (converted once
  // here, not once per weight row); chunks of activation rows bound the copy.
  const int64_t in = t.w->in, ld = detail::padded_in(in);
  const int64_t chunk = std::max<int64_t>(1, (int64_t{32} << 20) / (ld * 8));
  // 64-byte aligned (the kernels use aligned loads; rows are 128-byte multiples), and from the
  // scratch cache: a prefill's copy is tens of MB, freshly mapped and zeroed per call before.
  // Not value-initialised: every element is written below.
  const size_t xd_bytes = static_cast<size_t>(std::max<int64_t>(1, std::min(t.m, chunk) * ld)) * 8;
  const auto free_xd = [xd_bytes](double* p) { scratch_free(p, xd_bytes); };
  const std::unique_ptr<double, decltype(free_xd)> xd(static_cast<double*>(scratch_alloc(xd_bytes)),
                                                      free_xd);
  const int64_t m = t.m;
  for (int64_t i0 = 0; i0 < m; i0 += chunk) {
    detail::LinearTask c = t;
    c.m = std::min(chunk, m - i0);
    c.x = t.x + i0 * t.ldx;
    c.y = t.y + i0 * t.ldy;
    parallel_for_rows(c.m, in, [&](int64_t i) {
      const float* src = c.x + i * t.ldx;
      double* dst = xd.get() + i * ld;
      for (int64_t k = 0; k < in; ++k) dst[k] = src[k];
      for (int64_t k = in; k < ld; ++k) dst[k] = 0.0;
    });
    c.xd = xd.get();
    detail::Fp4BatchActs batch;
    detail::Fp4VecActs vec;
    detail::Fp4WordActs words;
    const bool fp4_e8m0 = t.tile > 0 && t.w->format == WeightFormat::kFP4 && !t.w->scale_is_f32;
    const bool avx512 = isa == Isa::kAvx512;
    if (avx512 && fp4_e8m0 && c.m > 1 && detail::fp4_batch_available() &&
        prepare_fp4_batch(c, &batch))
      c.fp4_batch = &batch;
    if (avx512 && fp4_e8m0 && c.m == 1 && detail::fp4_vec_available() &&
        detail::prepare_fp4_vec(c.x, in, &vec, call_layout_buffer(detail::fp4_vec_bytes(in))))
      c.fp4_vec = &vec;
    detail::Fp4F32Acts f32_acts;
    if (isa == Isa::kAvx2 && fp4_e8m0 && c.m > 1) {
      detail::prepare_fp4_f32(c, &f32_acts, call_layout_buffer(detail::fp4_f32_bytes(c.m, in)));
      c.fp4_f32 = &f32_acts;
    }
    // Without VNNI (AVX2 CPUs, AVX-512 ones that lack it): the AVX2 word kernel.
    if (fp4_e8m0 && c.m == 1 && c.fp4_vec == nullptr &&
        detail::prepare_fp4_words(c.x, in, &words, call_layout_buffer(detail::fp4_words_bytes(in))))
      c.fp4_words = &words;
    rows(c);
  }
}

}  // namespace

namespace detail {

int64_t decode_block_rows(int64_t in, int64_t row_multiple) {
  int64_t rows = (512 * 1024) / (padded_in(in) * 8);
  rows = std::clamp<int64_t>(rows / row_multiple * row_multiple, row_multiple, 64);
  return rows;
}

double* thread_scratch(int64_t n, int slot) {
  struct Free {
    void operator()(double* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<double, Free> buffer[3];
  thread_local int64_t capacity[3] = {0, 0, 0};
  if (n > capacity[slot]) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(double) + 63) / 64 * 64;
    buffer[slot].reset(static_cast<double*>(std::aligned_alloc(64, bytes)));
    if (!buffer[slot]) throw std::bad_alloc();
    capacity[slot] = n;
  }
  return buffer[slot].get();
}

void store_block_outputs(const float* from, int64_t ld, int64_t m, int64_t n, float* y, int64_t ldy,
                         bool round_bf16) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float v = from[i * ld + j];
      y[i * ldy + j] = round_bf16 ? bf16_round(v) : v;
    }
}

float weight_block_scale(const WeightRef& w, int64_t index) {
  if (w.scale_is_f32) {  // checkpoint data need not be 4-byte aligned
    float s;
    std::memcpy(&s, static_cast<const std::byte*>(w.scale) + index * 4, 4);
    return s;
  }
  return e8m0_decode(static_cast<const uint8_t*>(w.scale)[index]);
}

}  // namespace detail

void dequant_row(const WeightRef& w, int64_t row, float* out) {
  const int64_t in = w.in;
  switch (w.format) {
    case WeightFormat::kFP8: {
      const float* table = fp8_e4m3_table();
      const uint8_t* codes = static_cast<const uint8_t*>(w.data) + row * in;
      const int64_t scale_cols = (in + kFp8Block - 1) / kFp8Block;
      for (int64_t b = 0; b < scale_cols; ++b) {
        const float s = detail::weight_block_scale(w, (row / kFp8Block) * scale_cols + b);
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
        const float s = detail::weight_block_scale(w, row * scale_cols + b);
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

namespace {

// FP8 weights, the scalar reference of the FP32-accumulation contract: per 128-tile the
// FP8 values (activation · weight codes, exact products) summed in fp32 in
// linear_dot_pairs_f32's order, scaled by both block scales in double, rounded to fp32 and
// accumulated in fp32 in ascending K.
void scalar_fp8_rows(const detail::Fp8Task& t, const float* q, int64_t r0, int64_t r1) {
  const WeightRef& w = *t.w;
  const int64_t in = w.in, tiles = (in + kFp8Block - 1) / kFp8Block;
  const float* table = fp8_e4m3_table();
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* codes = static_cast<const uint8_t*>(w.data) + r * in;
    for (int64_t k = 0; k < in; ++k) row[k] = table[codes[k]];
    for (int64_t i = 0; i < t.m; ++i) {
      float v = 0;
      for (int64_t b = 0; b < tiles; ++b) {
        const int64_t k0 = b * kFp8Block, len = std::min(kFp8Block, in - k0);
        const float sum = linear_dot_pairs_f32(q + i * t.ldq + k0, row.data() + k0, len);
        const double scale =
            static_cast<double>(t.scales[i * tiles + b]) *
            static_cast<double>(detail::weight_block_scale(w, (r / 128) * tiles + b));
        v += static_cast<float>(static_cast<double>(sum) * scale);
      }
      t.y[i * t.ldy + (r - t.row_begin)] = t.round_bf16 ? bf16_round(v) : v;
    }
  }
}

// Runs weight rows [row_begin, row_end) of an FP8 linear whose activation values q (m rows of
// t.ldq, +0 past `in`) and block scales are set in t. `bf16_values`: every q is a bf16 value
// (FP8 values are), so the AVX512-BF16 kernel may take them; `simd`: the SIMD kernels compute
// the contract for these values (finite, no fp32 subnormal on the way).
void run_fp8(detail::Fp8Task& t, const float* q, int64_t row_begin, int64_t row_end,
             bool bf16_values, bool simd) {
  const WeightRef& w = *t.w;
  const int64_t m = t.m;
  t.row_begin = row_begin;
  const Isa isa = simd ? active_isa() : Isa::kScalar;
  const int64_t grain = row_grain(w, m, 8);
  ScratchVector<uint16_t> bits;
  const bool bf16_dot = isa == Isa::kAvx512 && bf16_values && detail::fp8_bf16_dot_available();
  // m = 1 on the FMA kernel: odd/even copies and the four-tile step's, every element written
  // below. m > 1 packs the values straight from q for its register blocks instead.
  const bool fma = isa != Isa::kScalar && !bf16_dot;
  ScratchBuffer<float> split(fma && m == 1 ? 4 * (t.ldq / 2) : 0);
  ScratchBuffer<float> packed(fma && m > 1 ? detail::fp8_pack_floats_avx2(m, w.in) : 0);
  if (bf16_dot) {
    bits.resize(m * t.ldq);  // bf16 values: the high halves of the floats
    parallel_for_rows(m, t.ldq, [&](int64_t i) {
      for (int64_t k = i * t.ldq; k < (i + 1) * t.ldq; ++k)
        bits[k] = static_cast<uint16_t>(float_bits(q[k]) >> 16);
    });
    t.xb = bits.data();
  } else if (fma && m == 1) {
    // Odd and even elements per group of 32, times 2^8 (exact): the FMA kernels decode the
    // weights to value × 2^-8.
    const int64_t n = t.ldq / 2;
    for (int64_t p = 0; p < n; ++p) {
      const int64_t g = p / 16, j = p % 16, odd = 32 * g + 2 * j + 1;
      split[p] = q[odd] * 256.0f;
      split[n + p] = q[odd - 1] * 256.0f;
    }
    // The four-tile step's layout (linear_simd.h): ×2^104 more, pairs in its lane order.
    static constexpr int kPair[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
    for (int64_t p = 0; p < n; ++p) {
      const int64_t base = p / 16 * 16, from = base + kPair[p % 16];
      split[2 * n + p] = std::ldexp(split[from], 104);
      split[3 * n + p] = std::ldexp(split[n + from], 104);
    }
    t.xo = split.data();
    t.xe = split.data() + n;
    t.xo_q = split.data() + 2 * n;
    t.xe_q = split.data() + 3 * n;
  } else if (fma) {
    parallel_for(
        (m + detail::kFp8PackRowBlock - 1) / detail::kFp8PackRowBlock,
        [&](int64_t a, int64_t b, int) { detail::fp8_pack_avx2(t, q, a, b, packed.data()); }, 1);
    t.xpack = packed.data();
  }
  parallel_for(
      row_end - row_begin,
      [&](int64_t a, int64_t b, int) {
        if (isa == Isa::kScalar)
          scalar_fp8_rows(t, q, row_begin + a, row_begin + b);
        else if (t.xb != nullptr)
          detail::fp8_rows_avx512(t, row_begin + a, row_begin + b);
        else
          detail::fp8_rows_avx2(t, row_begin + a, row_begin + b);
      },
      grain);
}

// An FP8 call over m activation rows writing y rows `ldy` apart (the layouts come later).
detail::Fp8Task fp8_task(const WeightRef& w, int64_t m, float* y, int64_t ldy, bool round_bf16) {
  detail::Fp8Task t;
  t.w = &w;
  t.m = m;
  t.ldq = (w.in + 31) / 32 * 32;
  t.y = y;
  t.ldy = ldy;
  t.round_bf16 = round_bf16;
  return t;
}

void fp8_quant_linear(const float* x, int64_t m, const WeightRef& w, float* y, bool round_bf16) {
  const int64_t in = w.in, tiles = (in + kFp8Block - 1) / kFp8Block;
  detail::Fp8Task t = fp8_task(w, m, y, w.out, round_bf16);
  ScratchBuffer<float> q(m * t.ldq), scales(m * tiles);
  std::vector<uint8_t> row_finite(static_cast<size_t>(m));
  parallel_for_rows(m, in, [&](int64_t i) {
    float* qi = q.data() + i * t.ldq;
    fp8_quantize(x + i * in, in, kFp8Block, qi, scales.data() + i * tiles);
    std::fill(qi + in, qi + t.ldq, 0.0f);
    row_finite[i] = std::all_of(qi, qi + in, [](float v) { return std::isfinite(v); });
  });
  t.scales = scales.data();
  // Non-finite activations (NaN codes, NaN bf16 payloads) are the scalar path's alone.
  const bool finite =
      std::all_of(row_finite.begin(), row_finite.end(), [](uint8_t f) { return f; });
  run_fp8(t, q.data(), 0, w.out, true, finite);
}

// Exponent difference between a block's largest and smallest nonzero activation up to which
// the SIMD kernels see no fp32 subnormal: after dividing by the block's power of two the
// smallest nonzero value is ≥ 2^-(E+1), its products with FP8 values (≥ 2^-9, 12 significant
// bits) are multiples of ≥ 2^-(E+21), and so is every partial sum: normal for E ≤ 105.
constexpr int kFp8PlainMaxSpread = 100;

}  // namespace

void quant_linear(const float* x, int64_t m, const WeightRef& w, float* y) {
  if (w.format != WeightFormat::kFP8 && w.format != WeightFormat::kFP4)
    fail("quant_linear needs an FP8 or FP4 weight");
  check_weight(w);
  if (w.format == WeightFormat::kFP8) return fp8_quant_linear(x, m, w, y, true);
  const int64_t in = w.in;
  // Activation fake-quant: FP8 values times their block scale (exact in fp32).
  ScratchBuffer<float> xq(m * in);
  parallel_for_rows(m, in, [&](int64_t i) {
    std::copy(x + i * in, x + (i + 1) * in, xq.data() + i * in);
    fp8_fake_quant(xq.data() + i * in, in, kFp8Block);
  });
  detail::LinearTask t;
  t.w = &w;
  t.x = xq.data();
  t.m = m;
  t.ldx = in;
  t.tile = w.format == WeightFormat::kFP8 ? kFp8Block : kFp4Block;
  t.y = y;
  t.ldy = w.out;
  t.row_begin = 0;
  t.round_bf16 = true;
  run_rows(t, 0, w.out);
}

void fp8_bf16_linear(const float* x, int64_t m, int64_t ldx, const WeightRef& w, int64_t row_begin,
                     int64_t row_end, float* y, int64_t ldy, bool round_bf16) {
  if (w.format != WeightFormat::kFP8) fail("fp8_bf16_linear needs an FP8 weight");
  const int64_t in = w.in, tiles = (in + kFp8Block - 1) / kFp8Block;
  detail::Fp8Task t = fp8_task(w, m, y, ldy, round_bf16);
  // Per 128-block the activations over one power of two 2^floor(log2 amax) (exact), which the
  // contract then multiplies back with the weight's block scale.
  ScratchVector<float> q(m * t.ldq, 0.0f), scales(m * tiles);
  // Per row: whether its values are all bf16 values, and whether the SIMD kernels take it.
  std::vector<uint8_t> row_bf16(static_cast<size_t>(m), 1), row_simd(static_cast<size_t>(m), 1);
  parallel_for_rows(m, in, [&](int64_t i) {
    const float* xi = x + i * ldx;
    for (int64_t b = 0; b < tiles; ++b) {
      const int64_t k0 = b * kFp8Block, k1 = std::min(in, k0 + kFp8Block);
      float amax = 0, amin = std::numeric_limits<float>::infinity();
      for (int64_t k = k0; k < k1; ++k) {
        const float v = std::fabs(xi[k]);
        if (!std::isfinite(v)) row_simd[i] = 0;
        amax = std::max(amax, v);
        if (v != 0) amin = std::min(amin, v);
        if ((float_bits(xi[k]) & 0xFFFF) != 0) row_bf16[i] = 0;
      }
      int e = 0;
      if (amax > 0 && std::isfinite(amax)) {
        e = std::ilogb(amax);
        if (e - std::ilogb(amin) > kFp8PlainMaxSpread) row_simd[i] = 0;
      }
      const float sa = std::ldexp(1.0f, e);
      scales[i * tiles + b] = sa;
      for (int64_t k = k0; k < k1; ++k) q[i * t.ldq + k] = xi[k] / sa;
    }
  });
  const bool bf16_values =
      std::all_of(row_bf16.begin(), row_bf16.end(), [](uint8_t v) { return v; });
  const bool simd = std::all_of(row_simd.begin(), row_simd.end(), [](uint8_t v) { return v; });
  t.scales = scales.data();
  run_fp8(t, q.data(), row_begin, row_end, bf16_values, simd);
}

void plain_linear(const float* x, int64_t m, int64_t ldx, const WeightRef& w, int64_t row_begin,
                  int64_t row_end, float* y, int64_t ldy, bool round_bf16) {
  check_weight(w);
  detail::LinearTask t;
  t.w = &w;
  t.x = x;
  t.m = m;
  t.ldx = ldx;
  t.tile = 0;
  t.y = y;
  t.ldy = ldy;
  t.row_begin = row_begin;
  t.round_bf16 = round_bf16;
  run_rows(t, row_begin, row_end);
}

void fp32_bf16_linear(const float* x, int64_t m, int64_t ldx, const WeightRef& w, int64_t row_begin,
                      int64_t row_end, float* y, int64_t ldy) {
  if (w.format != WeightFormat::kBF16) fail("fp32_bf16_linear needs a BF16 weight");
  const int64_t in = w.in;
  const Isa isa = active_isa();
  const int64_t grain = row_grain(w, m, 8);
  if (isa == Isa::kScalar) {
    parallel_for(
        row_end - row_begin,
        [&](int64_t a, int64_t b, int) {
          std::vector<float> row(static_cast<size_t>(in));
          for (int64_t r = row_begin + a; r < row_begin + b; ++r) {
            dequant_row(w, r, row.data());
            for (int64_t i = 0; i < m; ++i)
              y[i * ldy + (r - row_begin)] = linear_dot_pairs4_f32(x + i * ldx, row.data(), in);
          }
        },
        grain);
    return;
  }
  // The kernels take each activation row as its odd and even elements (so that one weight
  // load, split into its high and low halves, meets both with two FMAs).
  detail::PairTask t;
  t.w = &w;
  t.m = m;
  t.ldp = (in + 31) / 32 * 16;
  const int64_t n = std::max<int64_t>(1, m * t.ldp);
  // xo, xe, and room for the bf16 copy (AVX2).
  auto* pairs = reinterpret_cast<float*>(call_layout_buffer(3 * n * 4));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < t.ldp; ++p) {
      const int64_t g = p / 16, j = p % 16, odd = 32 * g + 2 * j + 1, even = odd - 1;
      pairs[i * t.ldp + p] = odd < in ? x[i * ldx + odd] : 0.0f;
      pairs[n + i * t.ldp + p] = even < in ? x[i * ldx + even] : 0.0f;
    }
  t.xo = pairs;
  t.xe = pairs + n;
  if (isa == Isa::kAvx2) {
    bool bf16_values = true;
    for (int64_t i = 0; i < m && bf16_values; ++i)
      for (int64_t k = 0; k < in; ++k)
        if ((float_bits(x[i * ldx + k]) & 0xFFFF) != 0) {
          bf16_values = false;
          break;
        }
    if (bf16_values) {
      auto* bits = reinterpret_cast<uint16_t*>(pairs + 2 * n);  // 2·ldp bf16 per row
      for (int64_t i = 0; i < m; ++i)
        for (int64_t k = 0; k < 2 * t.ldp; ++k)
          bits[i * 2 * t.ldp + k] =
              k < in ? static_cast<uint16_t>(float_bits(x[i * ldx + k]) >> 16) : uint16_t{0};
      t.xb = bits;
    }
  }
  t.y = y;
  t.ldy = ldy;
  t.row_begin = row_begin;
  parallel_for(
      row_end - row_begin,
      [&](int64_t a, int64_t b, int) {
        if (isa == Isa::kAvx512)
          detail::pair_rows_avx512(t, row_begin + a, row_begin + b);
        else
          detail::pair_rows_avx2(t, row_begin + a, row_begin + b);
      },
      grain);
}

namespace detail {

void fp8_quant_linear_f32(const float* x, int64_t m, const WeightRef& w, float* y) {
  if (w.format != WeightFormat::kFP8) fail("fp8_quant_linear_f32 needs an FP8 weight");
  fp8_quant_linear(x, m, w, y, false);
}

}  // namespace detail

}  // namespace dsv4::kernels
