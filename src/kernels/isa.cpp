#include "kernels/isa.h"

#include <atomic>
#include <cstdlib>

#include "util/error.h"

namespace dsv4::kernels {

namespace {

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

// -1 = not chosen yet; otherwise the Isa value.
std::atomic<int> g_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

Isa parse_isa(std::string_view name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  fail("unknown instruction set '", name, "': expected scalar, avx2 or avx512");
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return cpu_has_avx2();
    case Isa::kAvx512:
      return cpu_has_avx2() && cpu_has_avx512();
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa isa_for_setting(const char* value) {
  if (value == nullptr || *value == '\0') return best_isa();
  const Isa isa = parse_isa(value);
  if (!isa_supported(isa))
    fail("DSV4_ISA=", value,
         ": this CPU does not support it (best available: ", isa_name(best_isa()), ")");
  return isa;
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v < 0) {
    int expected = -1;
    g_isa.compare_exchange_strong(expected,
                                  static_cast<int>(isa_for_setting(std::getenv("DSV4_ISA"))));
    v = g_isa.load(std::memory_order_acquire);
  }
  return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
  if (!isa_supported(isa)) fail("this CPU does not support the ", isa_name(isa), " kernels");
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
}

}  // namespace dsv4::kernels
