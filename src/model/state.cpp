#include "model/state.h"

#include <limits>

namespace dsv4 {

void CompressorState::reset(int64_t num_slots, int64_t row_width) {
  slots = num_slots;
  width = row_width;
  kv.assign(num_slots * row_width, 0.0f);
  score.assign(num_slots * row_width, -std::numeric_limits<float>::infinity());
}

LayerState make_layer_state(const ModelConfig& cfg, int64_t layer_id) {
  LayerState s;
  s.head_dim = cfg.head_dim;
  s.window = cfg.window_size;
  s.window_kv.assign(cfg.window_size * cfg.head_dim, 0.0f);
  s.ratio = cfg.ratio(layer_id);
  if (s.ratio > 0) {
    const int64_t coff = s.ratio == 4 ? 2 : 1;
    s.compressor.reset(coff * s.ratio, coff * cfg.head_dim);
    if (s.ratio == 4) {
      s.index_head_dim = cfg.index_head_dim;
      s.index_compressor.reset(coff * s.ratio, coff * cfg.index_head_dim);
    }
  }
  return s;
}

SequenceState make_sequence_state(const ModelConfig& cfg) {
  SequenceState s;
  for (int64_t i = 0; i < cfg.n_layers; ++i) s.layers.push_back(make_layer_state(cfg, i));
  for (int64_t k = 0; k < cfg.n_mtp_layers; ++k)
    s.mtp.push_back(make_layer_state(cfg, cfg.n_layers + k));
  return s;
}

}  // namespace dsv4
