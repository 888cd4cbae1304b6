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
  s.kv_layout = KvRowLayout::for_dims(cfg.head_dim, cfg.rope_head_dim);
  s.window = cfg.window_size;
  // Zero rows: every code and scale byte 0 decodes to 0.
  s.window_kv.assign(static_cast<size_t>(cfg.window_size * s.kv_layout.bytes), 0);
  s.compressed_kv = PagedRows(s.kv_layout.bytes);
  s.ratio = cfg.ratio(layer_id);
  if (s.ratio > 0) {
    const int64_t coff = s.ratio == 4 ? 2 : 1;
    s.compressor.reset(coff * s.ratio, coff * cfg.head_dim);
    if (s.ratio == 4) {
      s.index_head_dim = cfg.index_head_dim;
      s.key_layout = Fp4KeyLayout::for_dim(cfg.index_head_dim);
      s.index_keys = PagedRows(s.key_layout.bytes);
      s.index_compressor.reset(coff * s.ratio, coff * cfg.index_head_dim);
    }
  }
  return s;
}

uint64_t LayerState::stored_bytes() const {
  auto compressor_bytes = [](const CompressorState& c) {
    return (c.kv.size() + c.score.size()) * sizeof(float);
  };
  return window_kv.size() + compressed_kv.stored_bytes() + index_keys.stored_bytes() +
         compressor_bytes(compressor) + compressor_bytes(index_compressor);
}

void LayerState::store_window_row(int64_t pos, const float* row) {
  kv_layout.pack(row, window_kv.data() + (pos % window) * kv_layout.bytes);
}

void LayerState::window_row(int64_t pos, float* row) const {
  kv_layout.unpack(window_kv.data() + (pos % window) * kv_layout.bytes, row);
}

void LayerState::append_compressed(const std::vector<float>& rows) {
  for (size_t off = 0; off < rows.size(); off += static_cast<size_t>(head_dim))
    kv_layout.pack(rows.data() + off, compressed_kv.append());
}

void LayerState::compressed_row(int64_t j, float* row) const {
  kv_layout.unpack(compressed_kv.row(j), row);
}

void LayerState::append_index_keys(const std::vector<float>& keys) {
  for (size_t off = 0; off < keys.size(); off += static_cast<size_t>(index_head_dim))
    key_layout.pack(keys.data() + off, index_keys.append());
}

void LayerState::index_key(int64_t j, float* key) const {
  key_layout.unpack(index_keys.row(j), key);
}

SequenceState make_sequence_state(const ModelConfig& cfg) {
  SequenceState s;
  for (int64_t i = 0; i < cfg.n_layers; ++i) s.layers.push_back(make_layer_state(cfg, i));
  for (int64_t k = 0; k < cfg.n_mtp_layers; ++k)
    s.mtp.push_back(make_layer_state(cfg, cfg.n_layers + k));
  return s;
}

}  // namespace dsv4
