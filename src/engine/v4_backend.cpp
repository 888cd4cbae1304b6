#include "engine/v4_backend.h"

#include <algorithm>
#include <numeric>

#include "model/state.h"

namespace dsv4::engine {

namespace {

class V4Sequence : public ModelSequence {
 public:
  explicit V4Sequence(const Model& model) : model_(model), state_(model.new_sequence()) {}
  // A SequenceState is a plain value: copying it snapshots the sequence.
  V4Sequence(const Model& model, const SequenceState& state)
      : model_(model), state_(std::make_unique<SequenceState>(state)) {}
  void forward(std::span<const int32_t> tokens, std::vector<float>* last_logits) override {
    model_.forward(*state_, tokens, last_logits);
  }
  int64_t position() const override { return state_->pos; }
  std::unique_ptr<ModelSequence> clone() const override {
    return std::make_unique<V4Sequence>(model_, *state_);
  }
  void set_prompt_length(int64_t tokens) override { state_->frame.prompt_len = tokens; }
  // The packed caches and the compressor states (LayerState::stored_bytes).
  // Full pages of compressed rows are shared between copies, and counted in
  // each: an upper bound.
  uint64_t memory_bytes() const override {
    uint64_t bytes = sizeof(SequenceState);
    for (const auto* layers : {&state_->layers, &state_->mtp})
      for (const LayerState& l : *layers) bytes += l.stored_bytes() + sizeof(LayerState);
    return bytes;
  }

 private:
  const Model& model_;
  std::unique_ptr<SequenceState> state_;
};

class TokenizerStream : public TextStream {
 public:
  explicit TokenizerStream(std::shared_ptr<const Tokenizer> tok) : detok_(std::move(tok), false) {}
  std::string push(int32_t token) override { return detok_.push(token); }
  std::string flush() override { return detok_.flush(); }

 private:
  StreamingDetokenizer detok_;
};

}  // namespace

V4LanguageModel::V4LanguageModel(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

int V4LanguageModel::vocab_size() const {
  return static_cast<int>(model_->config().vocab_size);
}

int64_t V4LanguageModel::context_length() const {
  return model_->config().max_position_embeddings;
}

std::unique_ptr<ModelSequence> V4LanguageModel::new_sequence() const {
  return std::make_unique<V4Sequence>(*model_);
}

int64_t V4LanguageModel::snapshot_granularity() const {
  // Which query rows get the reference's exact (vectorised) per-head norm
  // depends on the prompt length, in units of 32 (row, head) pairs (see
  // model/attention.cpp): before a position p with p * n_heads a multiple
  // of 32 the choice is the same for every prompt of length >= p.
  const int64_t heads = model_->config().n_heads;
  return 32 / std::gcd<int64_t, int64_t>(heads, 32);
}

int64_t V4LanguageModel::prefix_class(int64_t prompt_length) const {
  // The window section of a prompt's index lists is min(L, window) wide,
  // which moves the attention's 64-entry tile boundaries: prompts at least a
  // window long all agree.
  return std::min<int64_t>(prompt_length, model_->config().window_size);
}

bool V4LanguageModel::decoded_snapshots_exact(int64_t prompt_length) const {
  // A decode step is a frame of one row: its heads take the vectorised norm
  // when n_heads is a multiple of 32 (V4-Flash 64, V4-Pro 128), as the rows
  // of any prompt before its last unit do; its window section is `window`
  // wide, as in every prompt at least a window long.
  const ModelConfig& c = model_->config();
  return c.n_heads % 32 == 0 && prompt_length >= c.window_size;
}

std::unique_ptr<TextStream> TokenizerDetokenizer::new_stream() const {
  return std::make_unique<TokenizerStream>(tok_);
}

std::string TokenizerDetokenizer::token_bytes(int32_t token) const {
  return tok_->token_bytes(token);
}

}  // namespace dsv4::engine
