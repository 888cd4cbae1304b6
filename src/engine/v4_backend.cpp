#include "engine/v4_backend.h"

#include "model/state.h"

namespace dsv4::engine {

namespace {

class V4Sequence : public ModelSequence {
 public:
  explicit V4Sequence(const Model& model) : model_(model), state_(model.new_sequence()) {}
  void forward(std::span<const int32_t> tokens, std::vector<float>* last_logits) override {
    model_.forward(*state_, tokens, last_logits);
  }
  int64_t position() const override { return state_->pos; }

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

std::unique_ptr<TextStream> TokenizerDetokenizer::new_stream() const {
  return std::make_unique<TokenizerStream>(tok_);
}

std::string TokenizerDetokenizer::token_bytes(int32_t token) const {
  return tok_->token_bytes(token);
}

}  // namespace dsv4::engine
