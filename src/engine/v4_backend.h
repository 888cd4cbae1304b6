// Binds the engine's narrow interfaces to the real layers below it: the
// DeepSeek V4 forward pass (dsv4::Model) and the byte-level BPE tokenizer.
#pragma once

#include <memory>

#include "engine/backend.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::engine {

class V4LanguageModel : public LanguageModel {
 public:
  explicit V4LanguageModel(std::shared_ptr<const Model> model);
  int vocab_size() const override;
  // config.json's max_position_embeddings.
  int64_t context_length() const override;
  std::unique_ptr<ModelSequence> new_sequence() const override;
  int64_t snapshot_granularity() const override;
  int64_t prefix_class(int64_t prompt_length) const override;
  bool decoded_snapshots_exact(int64_t prompt_length) const override;
  const Model& model() const { return *model_; }

 private:
  std::shared_ptr<const Model> model_;
};

// Generated ids -> text with special tokens kept (the chat output parser
// needs </think> and the DSML markers), UTF-8 sequences completed first.
class TokenizerDetokenizer : public Detokenizer {
 public:
  explicit TokenizerDetokenizer(std::shared_ptr<const Tokenizer> tok) : tok_(std::move(tok)) {}
  std::unique_ptr<TextStream> new_stream() const override;
  std::string token_bytes(int32_t token) const override;

 private:
  std::shared_ptr<const Tokenizer> tok_;
};

}  // namespace dsv4::engine
