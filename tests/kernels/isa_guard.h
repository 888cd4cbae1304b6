// Test helper: restores the kernels' ISA chosen at start-up when a test ends.
#pragma once

#include "kernels/isa.h"

namespace dsv4::kernels {

class IsaGuard {
 public:
  IsaGuard() : saved_(active_isa()) {}
  ~IsaGuard() { set_isa(saved_); }
  IsaGuard(const IsaGuard&) = delete;
  IsaGuard& operator=(const IsaGuard&) = delete;

 private:
  Isa saved_;
};

}  // namespace dsv4::kernels
