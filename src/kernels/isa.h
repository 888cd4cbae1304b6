// Which instruction-set path the kernels run: the scalar reference, AVX2+FMA
// (the build's baseline) or AVX-512 (F/BW/VL, chosen only when the CPU has
// it). Every path computes bit-identical results (docs/kernels.md), so the
// choice only changes speed; tests pin each one in turn.
#pragma once

#include <string_view>

namespace dsv4::kernels {

enum class Isa { kScalar, kAvx2, kAvx512 };

const char* isa_name(Isa isa);
// Parses "scalar", "avx2" or "avx512"; throws dsv4::Error otherwise.
Isa parse_isa(std::string_view name);
// Whether this CPU can run the path.
bool isa_supported(Isa isa);
// The fastest path this CPU supports.
Isa best_isa();
// The path in use: set_isa()'s choice, else the DSV4_ISA environment variable
// (read once; a name the CPU cannot run is an error), else best_isa().
Isa active_isa();
// The path a DSV4_ISA value selects (null or empty: best_isa()); throws for
// an unknown name or one this CPU cannot run.
Isa isa_for_setting(const char* value);
// Pins the path for the whole process; throws if the CPU lacks it.
void set_isa(Isa isa);

}  // namespace dsv4::kernels
