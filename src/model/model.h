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
#include "model/observer.h"
#include "model/weights.h"

namespace dsv4 {

struct SequenceState;  // per-sequence caches (model/state.h)
struct ModelContext;   // config + RoPE tables (model/context.h)

class Model {
 public:
  // Opens the folder (config.json + safetensors), validates and binds every tensor.
  explicit Model(const std::string& dir);
  ~Model();

  const ModelConfig& config() const { return ckpt_.config(); }
  const ModelWeights& weights() const { return weights_; }
  const Checkpoint& checkpoint() const { return ckpt_; }
  const ModelContext& context() const { return *ctx_; }

  // A fresh sequence: empty window rings, compressed KV, indexer keys and
  // compressor states; position 0.
  std::unique_ptr<SequenceState> new_sequence() const;

  // Feeds `tokens` at positions state.pos .. state.pos + n - 1 (any chunk size,
  // any starting position) and advances state.pos. If `last_logits` is given it
  // receives the fp32 logits [vocab] after the last token.
  void forward(SequenceState& state, std::span<const int32_t> tokens,
               std::vector<float>* last_logits) const;

  struct ForwardOptions {
    ForwardObserver* observer = nullptr;
    // Receives the final residual streams of every position, [n, hc_mult, dim]
    // (what the head and the MTP block consume).
    std::vector<float>* hidden = nullptr;
  };
  void forward(SequenceState& state, std::span<const int32_t> tokens,
               std::vector<float>* last_logits, const ForwardOptions& options) const;

  // The pieces of forward(), for teacher-forced runs and traces.
  // Embedding copied to every stream: x [n, hc_mult, dim].
  void embed(std::span<const int32_t> tokens, float* x) const;
  // Block `layer` on input streams x [n, hc_mult, dim] at positions pos..
  // (replaced by the output), using and updating that block's caches only.
  void run_block(SequenceState& state, int64_t layer, int64_t pos, std::span<const int32_t> tokens,
                 float* x, ForwardObserver* observer) const;
  // The output head on the streams of one position, x [hc_mult, dim].
  void head_logits(const float* x, float* logits) const;

  // MTP block k at positions state.mtp_pos.. (advanced): hidden = main-model
  // streams [n, hc_mult, dim], next = the token after each position. Writes
  // the block's output streams `out` [n, hc_mult, dim] if given and the MTP
  // logits of the last position if asked.
  void mtp(SequenceState& state, int64_t k, const float* hidden, std::span<const int32_t> next,
           std::vector<float>* out, std::vector<float>* last_logits,
           ForwardObserver* observer) const;

 private:
  Checkpoint ckpt_;
  ModelWeights weights_;
  std::unique_ptr<ModelContext> ctx_;
};

}  // namespace dsv4
