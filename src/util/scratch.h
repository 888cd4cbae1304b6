// Recycled memory for the forward pass's large temporary buffers.
//
// A prefill of a few thousand tokens allocates buffers of tens to hundreds of
// megabytes per layer (queries of every head, expert inputs, the residual
// streams). glibc serves every block above 32 MB with a fresh mmap, so each
// layer paid a page fault and the kernel's page zeroing per 4 KB, then the
// vector's own zeroing: 6 % of a 512-token prefill in perf, more at 2K. Blocks
// of at least kScratchMinBytes now come from a process-wide cache of freed
// blocks instead (best fit, at most twice the size asked for), kept warm
// between layers and calls; smaller ones go to operator new as before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <vector>

namespace dsv4 {

inline constexpr size_t kScratchMinBytes = size_t{1} << 20;

// A block of at least `bytes` (64-byte aligned). Thread-safe.
void* scratch_alloc(size_t bytes);
// Returns a block from scratch_alloc(bytes) (same `bytes`) to the cache, or
// frees it when the cache would exceed its limit.
void scratch_free(void* p, size_t bytes) noexcept;

struct ScratchStats {
  size_t cached_bytes = 0;  // held in the cache now (not in use)
  size_t cached_blocks = 0;
  uint64_t reused = 0;  // allocations served from the cache
  uint64_t fresh = 0;   // large allocations that had to map new memory
};
ScratchStats scratch_stats();
// Frees every cached block (memory goes back to the system).
void scratch_release() noexcept;
// Cache limit in bytes (default 4 GiB; DSV4_SCRATCH_CACHE_BYTES overrides).
void scratch_set_limit(size_t bytes);

template <class T>
struct ScratchAllocator {
  using value_type = T;
  ScratchAllocator() = default;
  template <class U>
  ScratchAllocator(const ScratchAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > SIZE_MAX / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(scratch_alloc(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { scratch_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const ScratchAllocator<U>&) const noexcept {
    return true;
  }
};

// std::vector whose large buffers come from the scratch cache.
template <class T>
using ScratchVector = std::vector<T, ScratchAllocator<T>>;

// n elements from the scratch cache, not initialised (a ScratchVector zeroes its elements in
// one thread first: tens of MB per prefill call that parallel code then overwrites).
template <class T>
class ScratchBuffer {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>);

 public:
  explicit ScratchBuffer(size_t n)
      : n_(n), p_(n > 0 ? ScratchAllocator<T>().allocate(n) : nullptr) {}
  ~ScratchBuffer() {
    if (p_ != nullptr) ScratchAllocator<T>().deallocate(p_, n_);
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }

 private:
  size_t n_;
  T* p_;
};

}  // namespace dsv4
