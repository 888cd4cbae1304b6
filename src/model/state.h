// Per-sequence state: everything the forward pass remembers between calls.
// A fresh state equals a freshly built reference model (zero caches,
// compressor kv states 0 and score states −inf). States are plain values:
// copying one snapshots a sequence (for prefix caching / forking), and any
// number of them can exist for one Model. A copy shares the full pages of
// the compressed caches (immutable) and copies the rest: the window rings,
// the compressor states and each cache's partial last page.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/kv_cache.h"

namespace dsv4 {

// A compressor's not-yet-pooled tokens (spec §3.4): `slots` rows of `width`
// fp32 values. Overlapping compressors (ratio 4) keep 2·ratio slots, the
// previous block in [0, ratio) and the current one in [ratio, 2·ratio).
struct CompressorState {
  int64_t slots = 0, width = 0;
  std::vector<float> kv;     // [slots, width], 0 when empty
  std::vector<float> score;  // [slots, width], score + ape; −inf when empty
  void reset(int64_t num_slots, int64_t row_width);
};

// The caches of one layer, stored as the production layout does (spec §6.3,
// model/kv_cache.h): main KV rows packed (FP8 NoPE + BF16 RoPE + UE8M0
// scales), indexer keys FP4; compressed rows and keys in shared pages.
// Packing is lossless: the forward caches values already on those grids.
struct LayerState {
  int64_t head_dim = 0;
  KvRowLayout kv_layout;
  // Raw KV rows of the last `window` positions; position p lives in slot p % window.
  int64_t window = 0;
  std::vector<uint8_t> window_kv;  // [window, kv_layout.bytes]
  // Compressed KV entries (entry j pools positions [j·ratio, (j+1)·ratio)).
  int64_t ratio = 0;
  PagedRows compressed_kv;  // rows of kv_layout.bytes
  CompressorState compressor;
  // CSA only: the indexer's compressed keys and their compressor.
  int64_t index_head_dim = 0;
  Fp4KeyLayout key_layout;
  PagedRows index_keys;  // rows of key_layout.bytes
  CompressorState index_compressor;

  int64_t num_compressed() const { return compressed_kv.size(); }
  int64_t num_index_keys() const { return index_keys.size(); }
  // Bytes held by this layer's caches as stored: window ring, compressed rows
  // and indexer keys (rows in use), compressor states. Full pages may be
  // shared with copies of the state.
  uint64_t stored_bytes() const;

  // Float views (head_dim / index_head_dim values per row).
  void store_window_row(int64_t pos, const float* row);
  void window_row(int64_t pos, float* row) const;
  void append_compressed(const std::vector<float>& rows);  // [k, head_dim]
  void compressed_row(int64_t j, float* row) const;
  void append_index_keys(const std::vector<float>& keys);  // [k, index_head_dim]
  void index_key(int64_t j, float* key) const;
};

// How the current forward call relates to the reference's calls. The
// reference prefills a whole prompt in one call and decodes one token per
// call; a few bf16 rounding details (torch's vectorised vs scalar loops, the
// width of the window section of the index lists) depend on the call's size.
// Knowing the prompt length lets a prompt fed in chunks reproduce the
// whole-prompt prefill exactly.
struct ForwardFrame {
  int64_t prompt_len = 0;  // 0 = unknown: every call is its own frame
};

struct SequenceState {
  int64_t pos = 0;      // next position of the main model
  int64_t mtp_pos = 0;  // next position of the MTP block(s)
  ForwardFrame frame;   // set by callers that prefill a known prompt in chunks
  std::vector<LayerState> layers;
  std::vector<LayerState> mtp;
};

// A fresh state for a model with this config.
SequenceState make_sequence_state(const ModelConfig& cfg);
LayerState make_layer_state(const ModelConfig& cfg, int64_t layer_id);

}  // namespace dsv4
