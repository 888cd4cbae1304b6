// Constrained decoding for JSON output (response_format json_object): before
// each token, every token whose bytes would break the JSON grammar is masked
// out, so the output is always a prefix of a valid JSON object and, when the
// model stops on its own, a complete one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace dsv4::engine {

// A byte-level JSON recognizer (RFC 8259; top level must be an object).
class JsonMachine {
 public:
  // Feeds one byte; false if it cannot continue a valid document (the
  // machine is then unusable).
  bool feed(uint8_t c);
  bool feed(const std::string& bytes);
  // The top-level object is closed; only whitespace may follow.
  bool complete() const { return mode_ == Mode::kDone; }

 private:
  enum class Mode : uint8_t {
    kStart,          // before the top-level value
    kValue,          // a value is expected
    kKeyOrEnd,       // after '{'
    kKey,            // after ',' in an object
    kColon,          // after a key
    kCommaOrObjEnd,  // after a member value
    kValueOrArrEnd,  // after '['
    kCommaOrArrEnd,  // after an element
    kString,
    kEscape,
    kUnicode,  // \uXXXX; count_ = hex digits still needed
    kNumber,   // num_ = phase
    kLiteral,  // literal_ = what remains of true/false/null
    kDone,
  };
  bool value_start(uint8_t c);
  bool after_value();
  bool whitespace(uint8_t c);

  Mode mode_ = Mode::kStart;
  bool string_is_key_ = false;
  uint8_t count_ = 0;
  uint8_t num_ = 0;
  uint8_t ws_run_ = 0;
  const char* literal_ = nullptr;
  std::string stack_;  // '{' / '[' of the open containers
};

// The per-request constraint. token_bytes[i] = the bytes of token i ("" for
// ids with no text). Before `start_token` is generated (the </think> of a
// thinking-mode answer; -1 = from the first token) nothing is masked.
class JsonObjectConstraint : public LogitsConstraint {
 public:
  JsonObjectConstraint(std::shared_ptr<const std::vector<std::string>> token_bytes,
                       std::vector<int32_t> end_tokens, int32_t start_token);
  void mask(std::span<float> logits) override;
  void accept(int32_t token) override;

  // Tokens whose text could be mistaken for chat markup are never allowed
  // inside the JSON (they would end the answer for the output parser).
  static bool markup(const std::string& bytes);

 private:
  std::shared_ptr<const std::vector<std::string>> bytes_;
  std::vector<int32_t> end_tokens_;
  int32_t start_token_;
  bool active_;
  JsonMachine machine_;
};

}  // namespace dsv4::engine
