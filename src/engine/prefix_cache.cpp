#include "engine/prefix_cache.h"

#include <algorithm>
#include <cstring>

#include "util/error.h"

namespace dsv4::engine {

namespace {

// 64-bit FNV-1a over bytes, then a splitmix64 finaliser: the chain only needs
// spreading (entries store their tokens, so collisions are harmless).
uint64_t mix(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t finish(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

PrefixCache::PrefixCache(PrefixCacheOptions options) : opt_(options) {
  if (opt_.block_tokens < 1)
    fail("prefix cache block size must be at least 1 token (got ", opt_.block_tokens, ")");
  if (opt_.interval_tokens < opt_.block_tokens || opt_.interval_tokens % opt_.block_tokens != 0)
    fail("prefix cache snapshot interval (", opt_.interval_tokens,
         " tokens) must be a positive multiple of the block size (", opt_.block_tokens, ")");
}

std::vector<uint64_t> PrefixCache::block_keys(std::span<const int32_t> tokens, int64_t blocks,
                                              const std::string& space,
                                              int64_t prefix_class) const {
  uint64_t h = 0xcbf29ce484222325ull;
  const uint64_t len = space.size();
  h = mix(h, &len, sizeof len);
  h = mix(h, space.data(), space.size());
  h = mix(h, &prefix_class, sizeof prefix_class);
  std::vector<uint64_t> keys(static_cast<size_t>(blocks));
  for (int64_t k = 0; k < blocks; ++k) {
    h = mix(h, tokens.data() + k * opt_.block_tokens,
            static_cast<size_t>(opt_.block_tokens) * sizeof(int32_t));
    keys[k] = finish(h);
  }
  return keys;
}

PrefixCache::Lru::iterator PrefixCache::find_locked(std::span<const int32_t> prompt,
                                                    int64_t max_tokens, const std::string& space,
                                                    int64_t prefix_class) const {
  const int64_t usable = std::min<int64_t>(max_tokens, static_cast<int64_t>(prompt.size()));
  const int64_t blocks = usable > 0 ? usable / opt_.block_tokens : 0;
  const std::vector<uint64_t> keys = block_keys(prompt, blocks, space, prefix_class);
  for (int64_t k = blocks; k >= 1; --k) {
    auto [lo, hi] = index_.equal_range(keys[k - 1]);
    const size_t n = static_cast<size_t>(k * opt_.block_tokens);
    for (auto it = lo; it != hi; ++it) {
      const Entry& e = *it->second;
      if (e.space == space && e.prefix_class == prefix_class && e.tokens.size() == n &&
          std::equal(e.tokens.begin(), e.tokens.end(), prompt.begin()))
        return it->second;
    }
  }
  return lru_.end();
}

int64_t PrefixCache::probe(std::span<const int32_t> prompt, int64_t max_tokens,
                           const std::string& space, int64_t prefix_class) const {
  if (!enabled()) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = find_locked(prompt, max_tokens, space, prefix_class);
  return it == lru_.end() ? 0 : static_cast<int64_t>(it->tokens.size());
}

PrefixCache::Hit PrefixCache::lookup(std::span<const int32_t> prompt, int64_t max_tokens,
                                     const std::string& space, int64_t prefix_class) {
  Hit hit;
  if (!enabled()) return hit;
  std::shared_ptr<const ModelSequence> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.lookups;
    {
      const int64_t usable = std::min<int64_t>(max_tokens, static_cast<int64_t>(prompt.size()));
      const std::vector<uint64_t> keys =
          block_keys(prompt, usable > 0 ? usable / opt_.block_tokens : 0, space, prefix_class);
      for (int64_t k = static_cast<int64_t>(keys.size()); k >= 1; --k)
        if (prefix_refs_.count(keys[k - 1])) {
          hit.shared_tokens = k * opt_.block_tokens;
          break;
        }
    }
    auto it = find_locked(prompt, max_tokens, space, prefix_class);
    if (it == lru_.end()) return hit;
    lru_.splice(lru_.begin(), lru_, it);
    snapshot = it->snapshot;
    hit.tokens = static_cast<int64_t>(it->tokens.size());
    ++stats_.hits;
    stats_.hit_tokens += static_cast<uint64_t>(hit.tokens);
  }
  // Copying a snapshot can take a while (its caches): outside the lock. The
  // shared_ptr keeps it alive even if it is evicted meanwhile.
  hit.sequence = snapshot->clone();
  if (!hit.sequence) hit.tokens = 0;
  return hit;
}

void PrefixCache::insert(std::span<const int32_t> prefix, const std::string& space,
                         int64_t prefix_class, const ModelSequence& seq) {
  insert_impl(prefix, space, prefix_class, seq, nullptr);
}

void PrefixCache::insert(std::span<const int32_t> prefix, const std::string& space,
                         int64_t prefix_class, std::unique_ptr<ModelSequence> snapshot) {
  if (!snapshot) return;
  const ModelSequence& seq = *snapshot;  // before the move: argument order is unspecified
  insert_impl(prefix, space, prefix_class, seq, std::move(snapshot));
}

void PrefixCache::insert_impl(std::span<const int32_t> prefix, const std::string& space,
                              int64_t prefix_class, const ModelSequence& seq,
                              std::unique_ptr<ModelSequence> owned) {
  if (!enabled() || prefix.empty()) return;
  const int64_t n = static_cast<int64_t>(prefix.size());
  if (n % opt_.block_tokens != 0)
    fail("prefix cache: a snapshot must cover whole blocks of ", opt_.block_tokens, " tokens (got ",
         n, ")");
  if (seq.position() != n)
    fail("prefix cache: the sequence is at position ", seq.position(), ", not at the end of the ",
         n, "-token prefix");
  const std::vector<uint64_t> keys = block_keys(prefix, n / opt_.block_tokens, space, prefix_class);
  const uint64_t key = keys.back();
  auto present = [&] {
    auto [lo, hi] = index_.equal_range(key);
    for (auto it = lo; it != hi; ++it) {
      const Entry& e = *it->second;
      if (e.space == space && e.prefix_class == prefix_class &&
          std::equal(e.tokens.begin(), e.tokens.end(), prefix.begin(), prefix.end())) {
        lru_.splice(lru_.begin(), lru_, it->second);
        return true;
      }
    }
    return false;
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (present()) return;
  }
  const uint64_t bytes = seq.memory_bytes() + prefix.size() * sizeof(int32_t) + sizeof(Entry);
  if (bytes > opt_.budget_bytes) return;
  // Copied outside the lock (or kept as given).
  std::shared_ptr<const ModelSequence> snapshot = owned ? std::move(owned) : seq.clone();
  if (!snapshot) return;

  std::lock_guard<std::mutex> lock(mu_);
  if (present()) return;  // another thread inserted it meanwhile
  evict_to_fit_locked(bytes);
  Entry e;
  e.key = key;
  e.space = space;
  e.prefix_class = prefix_class;
  e.tokens.assign(prefix.begin(), prefix.end());
  e.snapshot = std::move(snapshot);
  e.bytes = bytes;
  for (uint64_t k : keys) ++prefix_refs_[k];
  lru_.push_front(std::move(e));
  index_.emplace(key, lru_.begin());
  stats_.bytes += bytes;
  ++stats_.entries;
  ++stats_.inserts;
}

void PrefixCache::evict_to_fit_locked(uint64_t incoming) {
  while (!lru_.empty() && stats_.bytes + incoming > opt_.budget_bytes) {
    auto victim = std::prev(lru_.end());
    auto [lo, hi] = index_.equal_range(victim->key);
    for (auto it = lo; it != hi; ++it)
      if (it->second == victim) {
        index_.erase(it);
        break;
      }
    for (uint64_t k :
         block_keys(victim->tokens, static_cast<int64_t>(victim->tokens.size()) / opt_.block_tokens,
                    victim->space, victim->prefix_class)) {
      auto ref = prefix_refs_.find(k);
      if (ref != prefix_refs_.end() && --ref->second == 0) prefix_refs_.erase(ref);
    }
    stats_.bytes -= victim->bytes;
    --stats_.entries;
    ++stats_.evictions;
    lru_.erase(victim);
  }
}

std::vector<int64_t> PrefixCache::snapshot_points(int64_t prompt_tokens) const {
  std::vector<int64_t> points;
  if (!enabled()) return points;
  const int64_t b = opt_.block_tokens;
  for (int64_t p = opt_.interval_tokens; p <= prompt_tokens; p += opt_.interval_tokens)
    points.push_back(p);
  const int64_t last = prompt_tokens / b * b;
  for (int64_t p : {last - b, last})
    if (p > 0) points.push_back(p);
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  return points;
}

PrefixCacheStats PrefixCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void PrefixCache::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  lru_.clear();
  index_.clear();
  prefix_refs_.clear();
  stats_.entries = 0;
  stats_.bytes = 0;
}

}  // namespace dsv4::engine
