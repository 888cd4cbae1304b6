#include "util/scratch.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace dsv4 {
namespace {

constexpr size_t kAlign = 64;
// A large block starts with a header holding its capacity, so that a block
// reused for a smaller request is cached again at its real size.
constexpr size_t kHeader = kAlign;

size_t default_limit() {
  if (const char* env = std::getenv("DSV4_SCRATCH_CACHE_BYTES")) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end != env && *end == '\0') return static_cast<size_t>(v);
  }
  return size_t{4} << 30;
}

struct Cache {
  std::mutex mu;
  std::multimap<size_t, char*> blocks;  // capacity -> block base (header first)
  size_t cached_bytes = 0;
  size_t limit = default_limit();
  uint64_t reused = 0, fresh = 0;

  void release_all() noexcept {
    std::lock_guard lock(mu);
    for (auto& [cap, base] : blocks) ::operator delete (base, std::align_val_t{kAlign});
    blocks.clear();
    cached_bytes = 0;
  }
};

// Never destroyed: blocks may be freed by other static objects' destructors at
// exit; the cache stays reachable, so leak checkers do not report its blocks.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

size_t& capacity_of(char* base) {
  return *reinterpret_cast<size_t*>(base);
}

}  // namespace

void* scratch_alloc(size_t bytes) {
  if (bytes < kScratchMinBytes) return ::operator new (bytes, std::align_val_t{kAlign});
  Cache& c = cache();
  {
    std::lock_guard lock(c.mu);
    // Best fit among the blocks no more than twice the request: a small request
    // must not pin a huge block that a later large request would need.
    auto it = c.blocks.lower_bound(bytes);
    if (it != c.blocks.end() && it->first / 2 <= bytes) {
      char* base = it->second;
      c.cached_bytes -= it->first;
      c.blocks.erase(it);
      ++c.reused;
      return base + kHeader;
    }
    ++c.fresh;
  }
  const size_t cap = (bytes + kAlign - 1) / kAlign * kAlign;
  char* base = static_cast<char*>(::operator new (cap + kHeader, std::align_val_t{kAlign}));
  capacity_of(base) = cap;
  return base + kHeader;
}

void scratch_free(void* p, size_t bytes) noexcept {
  if (p == nullptr) return;
  if (bytes < kScratchMinBytes) {
    ::operator delete (p, std::align_val_t{kAlign});
    return;
  }
  char* base = static_cast<char*>(p) - kHeader;
  const size_t cap = capacity_of(base);
  Cache& c = cache();
  {
    std::lock_guard lock(c.mu);
    if (c.cached_bytes + cap <= c.limit) {
      try {
        c.blocks.emplace(cap, base);
        c.cached_bytes += cap;
        return;
      } catch (...) {  // no memory for the map node: free the block instead
      }
    }
  }
  ::operator delete (base, std::align_val_t{kAlign});
}

ScratchStats scratch_stats() {
  Cache& c = cache();
  std::lock_guard lock(c.mu);
  return {c.cached_bytes, c.blocks.size(), c.reused, c.fresh};
}

void scratch_release() noexcept {
  cache().release_all();
}

void scratch_set_limit(size_t bytes) {
  Cache& c = cache();
  {
    std::lock_guard lock(c.mu);
    c.limit = bytes;
    if (c.cached_bytes <= bytes) return;
  }
  scratch_release();
}

}  // namespace dsv4
