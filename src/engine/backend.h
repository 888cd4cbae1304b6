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

  // Prefix caching (engine/prefix_cache.h). A model that cannot snapshot its
  // sequences returns nullptr from clone(), and the cache stays empty.
  // clone(): an independent copy of this sequence (a snapshot to keep, or a
  // snapshot's copy to continue); must be safe to call on a const snapshot
  // from several threads at once.
  virtual std::unique_ptr<ModelSequence> clone() const { return nullptr; }
  // The length of the prompt this sequence is about to prefill, in one call
  // or in chunks, so that chunks compute what one whole-prompt call would.
  virtual void set_prompt_length(int64_t /*tokens*/) {}
  // Bytes this sequence holds (an upper bound; the cache's memory budget).
  virtual uint64_t memory_bytes() const { return 0; }
};

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual int vocab_size() const = 0;
  virtual int64_t context_length() const = 0;
  virtual std::unique_ptr<ModelSequence> new_sequence() const = 0;

  // Prefix caching: a snapshot taken at position p (a multiple of
  // snapshot_granularity()) while prefilling a prompt of length L can
  // continue a prompt of length L' exactly (bit for bit as a cold prefill of
  // L') when prefix_class(L) == prefix_class(L'). The cache keeps classes
  // apart. 0 granularity: the model cannot be snapshotted.
  virtual int64_t snapshot_granularity() const { return 0; }
  virtual int64_t prefix_class(int64_t /*prompt_length*/) const { return 0; }
  // Whether a snapshot taken after decoding tokens that follow a prompt of
  // this length (at a multiple of snapshot_granularity()) continues later
  // prompts of its class exactly too, so that a conversation's next turn can
  // hit the previous answer.
  virtual bool decoded_snapshots_exact(int64_t /*prompt_length*/) const { return false; }
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
