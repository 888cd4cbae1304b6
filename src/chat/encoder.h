// The DeepSeek V4 prompt encoding: a C++ rendering of the official
// encoding/encoding_dsv4.py `encode_messages`, byte for byte, including what
// it rejects (tests/data/chat holds the golden cases).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "chat/json_py.h"
#include "util/error.h"

namespace dsv4::chat {

inline constexpr std::string_view kBosToken = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEosToken = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";
inline constexpr std::string_view kDsmlToken = "｜DSML｜";
inline constexpr std::string_view kUserToken = "<｜User｜>";
inline constexpr std::string_view kAssistantToken = "<｜Assistant｜>";
inline constexpr std::string_view kLatestReminderToken = "<｜latest_reminder｜>";

// An input the official encoder rejects. `python_type` names what Python
// raised there (AssertionError, NotImplementedError, KeyError, TypeError, ...).
class EncodeError : public Error {
 public:
  EncodeError(std::string python_type, const std::string& message)
      : Error(message), python_type_(std::move(python_type)) {}
  const std::string& python_type() const { return python_type_; }

 private:
  std::string python_type_;
};

struct EncodeOptions {
  std::string thinking_mode = "thinking";       // "thinking" or "chat"
  std::optional<std::string> reasoning_effort;  // none, "high" or "max"
  bool drop_thinking = true;
  bool add_default_bos_token = true;
  PyJson context;  // null, or earlier messages already in the KV cache
};

// encode_messages(messages, ...): messages is a list of OpenAI-style message
// objects (tools / response_format attached to system or developer messages).
std::string encode_messages(const PyJson& messages, const EncodeOptions& options);

// The golden-case `input` object: {"messages", "thinking_mode", optional
// "tools" + "tools_attached_to", "reasoning_effort", "drop_thinking",
// "add_default_bos_token", "context"}, mapped onto encode_messages exactly as
// the golden generator did. Throws EncodeError where the official code raises.
std::string render(const PyJson& input_object);
std::string render(const nlohmann::ordered_json& input_object);
// Same, from JSON text parsed with Python's number semantics (1.0 stays a
// float, big integers stay exact): what the CLI and server should use.
std::string render_json_text(std::string_view input_json);

// Maps an Anthropic Messages request ({"system", "messages", "tools",
// "thinking", "output_config"}) onto the input object render() takes:
//  * system: string or list of text blocks (joined by a blank line);
//  * user content: string or blocks; text -> user message, tool_result ->
//    tool message (string or block-list content, passed on as the official
//    encoder renders it; is_error is ignored), image/document/other blocks ->
//    Error (DeepSeek V4 reads text only);
//  * assistant content: text -> content, thinking -> reasoning_content,
//    redacted_thinking -> dropped (its text is encrypted), tool_use ->
//    OpenAI tool_calls with the input re-serialised as the arguments string;
//  * tools [{name, description, input_schema}] -> OpenAI function tools on the
//    system message (see attach_tools); server tools -> Error;
//  * thinking {"type": "enabled"|"adaptive"} -> "thinking", {"type": "disabled"}
//    -> "chat", absent -> thinking_default (DeepSeek: thinking is on by default);
//  * output_config.effort -> reasoning_effort (normalize_reasoning_effort).
// Throws dsv4::Error (a 400 for the server) on a malformed request.
PyJson anthropic_to_conversation(const PyJson& request, bool thinking_default = true);
PyJson anthropic_to_conversation(const nlohmann::ordered_json& request,
                                 bool thinking_default = true);

// The same for an OpenAI chat-completions request: messages as they are (an
// assistant message with "prefix": true gets wo_eos, for prefix completion),
// top-level tools attached as above, "thinking" and "reasoning_effort" as
// for Anthropic. Model-name rules (deepseek-chat = no thinking) are the caller's.
PyJson openai_to_conversation(const PyJson& request, bool thinking_default = true);
PyJson openai_to_conversation(const nlohmann::ordered_json& request, bool thinking_default = true);

// The API's effort spellings onto what the V4 encoder accepts: null -> none,
// minimal/low/medium/high -> "high", xhigh/max/ultra -> "max"; else Error.
std::optional<std::string> normalize_reasoning_effort(const PyJson& effort);

// Tools go on the first message when it is a system message (as the official
// tests attach them); otherwise an empty system message is inserted for them.
// (On a user message the encoder would drop them.)
void attach_tools(PyJson& messages, PyJson tools);

}  // namespace dsv4::chat
