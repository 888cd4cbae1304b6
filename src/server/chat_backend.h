// What the server needs from the tokenizer and the chat layer, behind a narrow
// interface: render a conversation to prompt tokens, and turn generated text
// back into reasoning / content / tool-call events. The real binding wraps
// dsv4::Tokenizer and src/chat; tests use a small fake.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "server/api_error.h"

namespace dsv4::server {

struct OutputEvent {
  enum class Kind {
    kReasoning,      // text: reasoning delta
    kContent,        // text: answer delta
    kToolCallBegin,  // text: the function name
    kToolCallArgs,   // text: a fragment of the arguments JSON
    kToolCallEnd,
  };
  Kind kind;
  std::string text;
};

class OutputParser {
 public:
  virtual ~OutputParser() = default;
  virtual std::vector<OutputEvent> push(std::string_view text) = 0;
  // End of output; ended_by_eos: the model stopped on its end token (as
  // opposed to a length limit, a stop string or a cancel).
  virtual std::vector<OutputEvent> finish(bool ended_by_eos) = 0;
};

class ChatBackend {
 public:
  virtual ~ChatBackend() = default;

  // conversation = the official V4 encoder's input:
  //   {"messages": [...], "tools": [...]?, "thinking_mode": "thinking"|"chat",
  //    "reasoning_effort": "high"|"max"|null, "response_format": {...}?}
  // with messages in OpenAI form (role, content, reasoning_content,
  // tool_calls, tool_call_id; a final assistant message may carry
  // "wo_eos": true to be continued). Throws dsv4::Error for conversations the
  // encoder rejects (the server answers 400 with its message).
  virtual std::vector<int32_t> encode_chat(const Json& conversation) const = 0;

  // Fill-in-the-middle prompt: prefix, then the model writes what goes before `suffix`.
  virtual std::vector<int32_t> encode_fim(const std::string& prefix,
                                          const std::optional<std::string>& suffix) const = 0;

  // Plain text (special tokens matched, no BOS).
  virtual std::vector<int32_t> encode_text(std::string_view text) const = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual bool valid_token(int32_t id) const = 0;

  // Tokens that end generation (EOS).
  virtual std::vector<int32_t> stop_tokens() const = 0;

  // thinking: the prompt opened a reasoning section, so output starts there;
  // false (chat mode, or a prefix completion continuing the answer) starts in
  // the answer.
  virtual std::unique_ptr<OutputParser> new_output_parser(bool thinking) const = 0;

  // The bytes of every token id (constrained decoding), shared, built once.
  virtual std::shared_ptr<const std::vector<std::string>> token_table() const = 0;
  // The single token that ends the reasoning section, -1 if there is none.
  virtual int32_t think_end_token() const = 0;

  // Generated tokens -> text, and the raw bytes of one token (logprobs).
  virtual std::shared_ptr<const engine::Detokenizer> detokenizer() const = 0;
};

}  // namespace dsv4::server
