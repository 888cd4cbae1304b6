// The DeepSeek V4 model: weights bound from a checkpoint, and the forward pass
// over one sequence's state. This is the interface the engine builds on.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv4 {

struct SequenceState;  // per-sequence caches (model/state.h)

class Model {
 public:
  // Opens the folder (config.json + safetensors), validates and binds every tensor.
  explicit Model(const std::string& dir);
  ~Model();

  const ModelConfig& config() const { return ckpt_.config(); }
  const ModelWeights& weights() const { return weights_; }
  const Checkpoint& checkpoint() const { return ckpt_; }

  // A fresh sequence: empty window rings, compressed KV, indexer keys and
  // compressor states; position 0.
  std::unique_ptr<SequenceState> new_sequence() const;

  // Feeds `tokens` at positions state.pos .. state.pos + n - 1 (any chunk size,
  // any starting position) and advances state.pos. If `last_logits` is given it
  // receives the fp32 logits [vocab] after the last token.
  void forward(SequenceState& state, std::span<const int32_t> tokens,
               std::vector<float>* last_logits) const;

 private:
  Checkpoint ckpt_;
  ModelWeights weights_;
};

}  // namespace dsv4
