// Per-sequence state: everything the forward pass remembers between calls.
// A fresh state equals a freshly built reference model (zero caches,
// compressor kv states 0 and score states −inf). States are plain values:
// copying one snapshots a sequence (for prefix caching / forking), and any
// number of them can exist for one Model.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

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

struct LayerState {
  int64_t head_dim = 0;
  // Raw KV rows of the last `window` positions; position p lives in slot p % window.
  int64_t window = 0;
  std::vector<float> window_kv;  // [window, head_dim]
  // Compressed KV entries (entry j pools positions [j·ratio, (j+1)·ratio)).
  int64_t ratio = 0;
  std::vector<float> compressed_kv;  // [n_compressed, head_dim]
  CompressorState compressor;
  // CSA only: the indexer's compressed keys and their compressor.
  int64_t index_head_dim = 0;
  std::vector<float> index_keys;  // [n_compressed, index_head_dim]
  CompressorState index_compressor;

  int64_t num_compressed() const {
    return head_dim ? static_cast<int64_t>(compressed_kv.size()) / head_dim : 0;
  }
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
