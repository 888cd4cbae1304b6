// Prefix (context) cache: snapshots of model sequences keyed by the token
// prefix they have consumed, so that a request whose prompt starts with a
// cached prefix copies that snapshot and prefills only the rest (the
// platform's "context caching", reported as prompt_cache_hit_tokens).
//
// Snapshots sit at block boundaries (multiples of block_tokens, 64 by
// default: the platform's documented storage unit), so hits are whole blocks.
// Each is keyed by a hash chain over its blocks, seeded with a namespace (API
// key / user isolation) and the model's prefix class (model-dependent
// rounding details that must agree for a hit to be exact), and stores its
// tokens so that a hash collision can never produce a wrong hit. Entries are
// evicted least-recently-used once their bytes exceed the budget.
// Common prefixes: every block prefix of every entry is counted, so a lookup
// also reports how far the prompt runs along cached tokens (Hit::shared_tokens).
// Thread-safe; snapshots are copied outside the lock.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/backend.h"

namespace dsv4::engine {

struct PrefixCacheOptions {
  uint64_t budget_bytes = 4ull << 30;  // 0 disables the cache
  int64_t block_tokens = 64;           // snapshot granularity of hits
  // Besides the blocks at the end of each prompt, a snapshot every this many
  // tokens inside long prompts (a multiple of block_tokens), so a later
  // request sharing only the start of a long prompt still hits.
  int64_t interval_tokens = 1024;
};

struct PrefixCacheStats {
  uint64_t entries = 0, bytes = 0;
  uint64_t lookups = 0, hits = 0, hit_tokens = 0;
  uint64_t inserts = 0, evictions = 0;
};

class PrefixCache {
 public:
  // Throws dsv4::Error when block_tokens < 1 or interval_tokens is not a
  // positive multiple of block_tokens.
  explicit PrefixCache(PrefixCacheOptions options);
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  const PrefixCacheOptions& options() const { return opt_; }
  bool enabled() const { return opt_.budget_bytes > 0; }

  struct Hit {
    int64_t tokens = 0;                       // prompt tokens the snapshot covers (0: miss)
    std::unique_ptr<ModelSequence> sequence;  // a private copy of the snapshot
    // The longest whole-block prefix (at most max_tokens) that this prompt
    // shares with any cached snapshot's tokens, >= tokens. When it is longer
    // than the hit, another request diverged from this one there: the
    // prefill should snapshot at that point, so that a third request sharing
    // it hits (the platform's common-prefix units: A+B, then A+C persists A).
    int64_t shared_tokens = 0;
  };
  // The longest cached prefix of `prompt` of at most max_tokens tokens in
  // this namespace and prefix class; a miss has tokens 0 and no sequence.
  Hit lookup(std::span<const int32_t> prompt, int64_t max_tokens, const std::string& space,
             int64_t prefix_class);

  // How many tokens lookup() would serve now, without copying anything or
  // counting a lookup (e.g. for usage reported before a request runs).
  int64_t probe(std::span<const int32_t> prompt, int64_t max_tokens, const std::string& space,
                int64_t prefix_class) const;

  // Keeps a snapshot (seq.clone()) of `seq`, which has consumed exactly
  // `prefix` (a whole number of blocks). No-op when the prefix is already
  // cached, the snapshot alone exceeds the budget or the model cannot clone.
  void insert(std::span<const int32_t> prefix, const std::string& space, int64_t prefix_class,
              const ModelSequence& seq);
  // The same, keeping `snapshot` itself (no copy).
  void insert(std::span<const int32_t> prefix, const std::string& space, int64_t prefix_class,
              std::unique_ptr<ModelSequence> snapshot);

  // Where a prefill of a prompt of `prompt_tokens` tokens should snapshot,
  // ascending: every interval_tokens, and the last two block boundaries at or
  // before the end (the last one may hold the prompt's final token, which a
  // follow-up turn's rendering can change). Multiples of block_tokens.
  std::vector<int64_t> snapshot_points(int64_t prompt_tokens) const;

  PrefixCacheStats stats() const;
  void clear();

 private:
  struct Entry {
    uint64_t key = 0;
    std::string space;
    int64_t prefix_class = 0;
    std::vector<int32_t> tokens;
    std::shared_ptr<const ModelSequence> snapshot;
    uint64_t bytes = 0;
  };
  using Lru = std::list<Entry>;  // front = most recently used

  // Hash chain: key of blocks [0, k) for every k (index k-1).
  std::vector<uint64_t> block_keys(std::span<const int32_t> tokens, int64_t blocks,
                                   const std::string& space, int64_t prefix_class) const;
  void insert_impl(std::span<const int32_t> prefix, const std::string& space, int64_t prefix_class,
                   const ModelSequence& seq, std::unique_ptr<ModelSequence> owned);
  void evict_to_fit_locked(uint64_t incoming);
  // The entry of the longest cached prefix (end() if none).
  Lru::iterator find_locked(std::span<const int32_t> prompt, int64_t max_tokens,
                            const std::string& space, int64_t prefix_class) const;

  PrefixCacheOptions opt_;
  mutable std::mutex mu_;
  mutable Lru lru_;
  std::unordered_multimap<uint64_t, Lru::iterator> index_;
  // Hash-chain key of every block prefix of every entry -> number of entries
  // holding it (a hash collision only misplaces a snapshot point, never a hit).
  std::unordered_map<uint64_t, uint32_t> prefix_refs_;
  PrefixCacheStats stats_;
};

}  // namespace dsv4::engine
