// Linear kernels at DeepSeek V4-Flash shapes (docs/v4-architecture.md §2:
// dim 4096, moe_inter_dim 2048, q_lora_rank 1024, o_lora_rank 1024,
// o_groups 8, head_dim 512, 64 heads), for every ISA path this CPU runs.
//
// Matrix-vector cases (m = 1, decode) cycle through enough distinct weight
// matrices that the working set (DSV4_BENCH_WORKING_SET_MB, default 768)
// is well above the last-level cache (32 MB here), so they measure memory, not
// cache. Matrix-matrix cases (m = 8, 64, 512: batched decode and prefill)
// reuse one matrix: they are compute-bound. Counters: bytes/s of weight data
// read and FLOP/s (2 per multiply-add, as the issue counts them).
//
// Threads: the kernels use the global pool (DSV4_THREADS, default all cores).
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/isa.h"
#include "kernels/linear.h"
#include "kernels/linear_simd.h"
#include "kernels/numerics.h"

namespace {

using dsv4::kernels::Isa;
using dsv4::kernels::WeightFormat;
using dsv4::kernels::WeightRef;

// Flash dims.
constexpr int64_t kDim = 4096;
constexpr int64_t kMoeInter = 2048;
constexpr int64_t kQLora = 1024;
constexpr int64_t kHeads = 64, kHeadDim = 512, kOGroups = 8, kOLora = 1024;
constexpr int64_t kVocab = 129280;

// How a shape is multiplied: quant_linear (FP8 / FP4) or plain_linear, fp32_bf16_linear (the
// output head), fp8_bf16_linear (wo_a).
enum class Call { kDefault, kHead, kWoA };

struct Shape {
  const char* name;
  WeightFormat format;
  int64_t out, in;
  Call call = Call::kDefault;
  bool decode_only = false;
};

// FP8: the attention projections; FP4: a routed expert; one wo_a group (FP8 in the official
// checkpoints, unquantized bf16 activations) as the model computes it (fp32) and as a plain
// double linear; the output head (decode only), in fp32 as the model computes it and as a
// plain double linear.
const Shape kShapes[] = {
    {"fp8_wq_a", WeightFormat::kFP8, kQLora, kDim},
    {"fp8_wq_b", WeightFormat::kFP8, kHeads* kHeadDim, kQLora},
    {"fp8_wo_b", WeightFormat::kFP8, kDim, kOGroups* kOLora},
    {"fp4_expert_w1", WeightFormat::kFP4, kMoeInter, kDim},
    {"fp4_expert_w2", WeightFormat::kFP4, kDim, kMoeInter},
    {"fp8_wo_a_group", WeightFormat::kFP8, kOLora, kHeads* kHeadDim / kOGroups, Call::kWoA},
    {"fp8_wo_a_group_double", WeightFormat::kFP8, kOLora, kHeads* kHeadDim / kOGroups},
    {"bf16_head_fp32", WeightFormat::kBF16, kVocab, kDim, Call::kHead, true},
    {"bf16_head_double", WeightFormat::kBF16, kVocab, kDim, Call::kDefault, true},
};

int64_t data_bytes(const Shape& s) {
  switch (s.format) {
    case WeightFormat::kFP8:
      return s.out * s.in;
    case WeightFormat::kFP4:
      return s.out * s.in / 2;
    case WeightFormat::kBF16:
      return s.out * s.in * 2;
    case WeightFormat::kF32:
      return s.out * s.in * 4;
  }
  return 0;
}

int64_t scale_bytes(const Shape& s) {
  if (s.format == WeightFormat::kFP8) return ((s.out + 127) / 128) * ((s.in + 127) / 128);
  if (s.format == WeightFormat::kFP4) return s.out * (s.in / 32);
  return 0;
}

// Random bytes that decode to finite values: FP8 codes avoid 0x7f/0xff, BF16
// values stay in a small range, scales are near 1.
template <class Bytes>
void fill(Bytes& v, WeightFormat format, bool is_scale, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < v.size(); ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint8_t b = static_cast<uint8_t>(x >> 24);
    if (is_scale) {
      b = static_cast<uint8_t>(120 + (b & 7));
    } else if (format == WeightFormat::kFP8 && (b & 0x7f) == 0x7f) {
      b ^= 0x01;
    } else if (format == WeightFormat::kBF16 && i % 2 == 1) {
      b = static_cast<uint8_t>((b & 0x80) | (0x3c + (b & 3)));  // exponent byte: ~2^-7..2^0
    }
    v[i] = b;
  }
}

// Weight bytes in 2 MiB-aligned anonymous memory with huge-page advice: the model's weights
// are read from the page cache, which a fresh read of a checkpoint fills with 2 MiB folios on
// current kernels (docs/performance.md), and 4 KiB pages would measure TLB misses as well.
class HugeBytes {
 public:
  explicit HugeBytes(size_t n) : size_(n) {
    constexpr size_t kHuge = size_t{2} << 20;
    mapped_ = (n + kHuge - 1) / kHuge * kHuge + kHuge;
    void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<uint8_t*>(p);
    data_ =
        reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base_) + kHuge - 1) & ~(kHuge - 1));
    ::madvise(data_, mapped_ - static_cast<size_t>(data_ - base_), MADV_HUGEPAGE);
  }
  ~HugeBytes() { ::munmap(base_, mapped_); }
  HugeBytes(const HugeBytes&) = delete;
  HugeBytes& operator=(const HugeBytes&) = delete;
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  uint8_t* data() { return data_; }
  uint8_t& operator[](size_t i) { return data_[i]; }

 private:
  uint8_t *base_ = nullptr, *data_ = nullptr;
  size_t size_ = 0, mapped_ = 0;
};

struct WeightSet {
  std::vector<std::unique_ptr<HugeBytes>> data, scale;
  std::vector<WeightRef> refs;
};

// Enough copies of the matrix to exceed the working-set target (one for
// matrix-matrix cases).
// Checkpoint tensors start wherever the safetensors header leaves them: the weights sit this
// many bytes past a 64-byte boundary (DSV4_BENCH_WEIGHT_OFFSET, default 20: the offset of the
// routed experts in the Flash-shaped synth checkpoint; 0 measures aligned weights). Rounded
// down to even: fill() writes BF16 values as byte pairs from the buffer's start, and a checkpoint
// never places a 2-byte tensor at an odd offset.
size_t weight_offset() {
  const char* env = std::getenv("DSV4_BENCH_WEIGHT_OFFSET");
  return env ? static_cast<size_t>(std::atoll(env)) % 64 / 2 * 2 : 20;
}

std::unique_ptr<WeightSet> make_weights(const Shape& s, bool big_working_set) {
  int64_t target_mb = 768;
  if (const char* env = std::getenv("DSV4_BENCH_WORKING_SET_MB")) target_mb = std::atoll(env);
  const size_t offset = weight_offset();
  const int64_t per = data_bytes(s) + scale_bytes(s);
  const int64_t copies =
      big_working_set ? std::max<int64_t>(1, (target_mb << 20) / per + 1) : int64_t{1};
  auto set = std::make_unique<WeightSet>();
  for (int64_t c = 0; c < copies; ++c) {
    set->data.push_back(std::make_unique<HugeBytes>(data_bytes(s) + offset));
    fill(*set->data.back(), s.format, false, 2 * c + 1);
    set->scale.push_back(std::make_unique<HugeBytes>(scale_bytes(s) + offset));
    fill(*set->scale.back(), s.format, true, 2 * c + 2);
  }
  for (int64_t c = 0; c < copies; ++c) {
    WeightRef w;
    w.format = s.format;
    w.out = s.out;
    w.in = s.in;
    w.data = set->data[c]->data() + offset;
    w.scale = scale_bytes(s) == 0 ? nullptr : set->scale[c]->data() + offset;
    set->refs.push_back(w);
  }
  return set;
}

// vnni = false: the AVX-512 FP4 kernels as on a CPU without AVX512-VNNI.
void run_linear(benchmark::State& state, Shape s, Isa isa, int64_t m, bool vnni) {
  dsv4::kernels::set_isa(isa);
  dsv4::kernels::detail::set_avx512_vnni_allowed(vnni);
  const auto weights = make_weights(s, m == 1);
  std::vector<float> x(m * s.in), y(m * s.out);
  // Gaussian bf16 values, as the model's activations are (wo_a's bf16 kernel needs bf16). The
  // distribution matters: the FP4 integer kernel needs a third digit plane for the tiles whose
  // values span more than about 2^11 (a Gaussian's smallest values do; an evenly spread grid's
  // do not, and made FP4 look 16 % faster than on the model's activations).
  std::mt19937_64 rng(12345);
  std::normal_distribution<float> normal;
  for (float& v : x) v = dsv4::kernels::bf16_round(normal(rng));
  size_t next = 0;
  for (auto _ : state) {
    const WeightRef& w = weights->refs[next];
    next = (next + 1) % weights->refs.size();
    if (s.call == Call::kHead)
      dsv4::kernels::fp32_bf16_linear(x.data(), m, s.in, w, 0, s.out, y.data(), s.out);
    else if (s.call == Call::kWoA)
      dsv4::kernels::fp8_bf16_linear(x.data(), m, s.in, w, 0, s.out, y.data(), s.out, true);
    else if (std::string_view(s.name).ends_with("_double"))
      dsv4::kernels::plain_linear(x.data(), m, s.in, w, 0, s.out, y.data(), s.out, true);
    else if (s.format == WeightFormat::kFP8 || s.format == WeightFormat::kFP4)
      dsv4::kernels::quant_linear(x.data(), m, w, y.data());
    else
      dsv4::kernels::plain_linear(x.data(), m, s.in, w, 0, s.out, y.data(), s.out, false);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const int64_t it = state.iterations();
  state.SetBytesProcessed(it * (data_bytes(s) + scale_bytes(s)));
  state.counters["FLOP/s"] = benchmark::Counter(static_cast<double>(2 * m * s.out * s.in * it),
                                                benchmark::Counter::kIsRate);
  state.counters["working_set_MB"] =
      static_cast<double>(weights->refs.size() * (data_bytes(s) + scale_bytes(s)) / (1 << 20));
  state.SetLabel(dsv4::kernels::isa_name(isa));
  dsv4::kernels::detail::set_avx512_vnni_allowed(true);
}

void register_all() {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!dsv4::kernels::isa_supported(isa)) continue;
    for (const Shape& s : kShapes)
      for (int64_t m : {1, 8, 64, 512}) {
        // The scalar reference is far too slow for prefill-sized batches.
        if (isa == Isa::kScalar && m > 8) continue;
        if (s.decode_only && m > 1) continue;
        const std::string name =
            std::string(s.name) + "/" + dsv4::kernels::isa_name(isa) + "/m=" + std::to_string(m);
        benchmark::RegisterBenchmark(name.c_str(), run_linear, s, isa, m, true)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        if (isa == Isa::kAvx512 && s.format == WeightFormat::kFP4) {
          const std::string plain = std::string(s.name) + "/avx512-no-vnni/m=" + std::to_string(m);
          benchmark::RegisterBenchmark(plain.c_str(), run_linear, s, isa, m, false)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
