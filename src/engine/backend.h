// The narrow interfaces the engine needs from the layers below it: a model
// that turns a sequence of tokens into next-token logits, and a detokenizer
// that turns generated tokens into text incrementally. Adapters bind them to
// dsv4::Model and dsv4::Tokenizer; tests bind them to small fakes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace dsv4::engine {

// One sequence's state inside a model (its KV caches and position).
class ModelSequence {
 public:
  virtual ~ModelSequence() = default;
  // Appends `tokens` and, when `last_logits` is given, writes the logits
  // [vocab_size] that follow the last of them.
  virtual void forward(std::span<const int32_t> tokens, std::vector<float>* last_logits) = 0;
  virtual int64_t position() const = 0;  // number of tokens fed so far
};

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual int vocab_size() const = 0;
  virtual int64_t context_length() const = 0;
  virtual std::unique_ptr<ModelSequence> new_sequence() const = 0;
};

// Incremental detokenizer of one generation: push returns the text that is
// complete so far (UTF-8 sequences split across tokens are held back).
class TextStream {
 public:
  virtual ~TextStream() = default;
  virtual std::string push(int32_t token) = 0;
  virtual std::string flush() = 0;
};

class Detokenizer {
 public:
  virtual ~Detokenizer() = default;
  virtual std::unique_ptr<TextStream> new_stream() const = 0;
  // The raw bytes of one token (possibly an incomplete UTF-8 sequence), for
  // logprobs' `token` and `bytes` fields.
  virtual std::string token_bytes(int32_t token) const = 0;
};

// Optional per-request hook that restricts the next token (constrained
// decoding: JSON mode, strict tool schemas). It sets disallowed logits to
// -inf before sampling and is told which token was chosen.
class LogitsConstraint {
 public:
  virtual ~LogitsConstraint() = default;
  virtual void mask(std::span<float> logits) = 0;
  virtual void accept(int32_t token) = 0;
};

}  // namespace dsv4::engine
