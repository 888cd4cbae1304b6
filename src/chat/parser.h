// The DeepSeek V4 output parser: the official
// encoding_dsv4.parse_message_from_completion_text, made incremental so the
// server can stream reasoning, content and tool-call arguments as tokens are
// decoded. Text may be fed split anywhere (special tokens such as </think> or
// ｜DSML｜ may arrive in pieces); the final result and its error status equal
// the official parser's on the whole text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace dsv4::chat {

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // JSON text built as the official parser builds it
};

struct ParsedMessage {
  std::string content;
  std::string reasoning_content;
  std::vector<ParsedToolCall> tool_calls;

  // The official result dict: {"role": "assistant", "content", "reasoning_content",
  // "tool_calls": [{"type": "function", "function": {"name", "arguments"}}]}.
  nlohmann::ordered_json to_json() const;
  // The same as Python's json.dumps(result, ensure_ascii=False).
  std::string to_json_text() const;
};

struct ParseEvent {
  enum class Type {
    kReasoningDelta,     // text: more reasoning
    kContentDelta,       // text: more content
    kToolCallStart,      // tool_index, text: the function name
    kToolCallArguments,  // tool_index, text: the next piece of the arguments JSON text
    kToolCallEnd,        // tool_index
    kEnd,                // the completion parsed; result() is final
    kError,              // text: why the official parser would reject the completion
  };
  Type type;
  std::string text;
  int tool_index = -1;
};

// Thrown by parse(): where the official parser raises. python_type is
// "AssertionError" or "ValueError" as there.
class ParseError : public Error {
 public:
  ParseError(std::string python_type, const std::string& message)
      : Error(message), python_type_(std::move(python_type)) {}
  const std::string& python_type() const { return python_type_; }

 private:
  std::string python_type_;
};

class OutputParser {
 public:
  // thinking_mode: the prompt ended in <think>, so the text starts with the
  // reasoning and must contain </think> (the official thinking_mode == "thinking").
  explicit OutputParser(bool thinking_mode);

  // Feeds the next piece of generated text. Deltas never end inside a UTF-8
  // sequence nor inside what may become a special token.
  std::vector<ParseEvent> feed(std::string_view text);
  // The text is complete: flushes what was held back and emits kEnd or kError.
  std::vector<ParseEvent> finish();

  bool thinking_mode() const { return thinking_; }
  bool failed() const { return failed_; }
  bool finished() const { return finished_; }
  // Set once failed(): the official exception's message and type.
  const std::string& error_message() const { return error_message_; }
  const std::string& error_type() const { return error_type_; }
  // Everything parsed so far; the official result after finish() without error.
  const ParsedMessage& result() const { return result_; }
  // All text fed so far (what the server returns as content on an error).
  const std::string& text() const { return buf_; }

 private:
  enum class State {
    kReasoning,
    kContent,
    kBetweenInvokes,  // expects ">\n" then an invoke or the end of the block
    kInvokeName,
    kParameter,
    kAfterParameter,  // expects ">\n" then a parameter or the end of the invoke
    kAfterCalls,      // only EOS may follow the block
    kDone,            // EOS seen: nothing may follow
  };
  struct Scan;

  void advance(bool at_end, std::vector<ParseEvent>& events);
  bool step(bool at_end, std::vector<ParseEvent>& events);
  Scan scan(const std::vector<std::string_view>& stops, bool at_end);
  void fail(const char* type, std::string message, std::vector<ParseEvent>& events);
  void start_segment(size_t pos);
  void emit_text(ParseEvent::Type type, size_t end, bool final, std::vector<ParseEvent>& events);
  void emit_arguments(std::string fragment, std::vector<ParseEvent>& events);
  void stream_parameter(size_t safe_end, bool final, std::vector<ParseEvent>& events);
  void end_tool_call(std::vector<ParseEvent>& events);

  bool thinking_;
  State state_;
  std::string buf_;
  size_t seg_start_ = 0;  // where the current segment begins in buf_
  size_t scan_from_ = 0;  // no stop token starts in [seg_start_, scan_from_)
  size_t emitted_ = 0;    // buf_ offset up to which the segment was emitted as deltas
  bool failed_ = false;
  bool finished_ = false;
  std::string error_message_, error_type_;
  ParsedMessage result_;

  // The tool call being parsed.
  std::vector<std::string> param_names_;
  bool header_found_ = false;    // the current parameter's name and string="" are known
  size_t header_scan_from_ = 0;  // segment offset where the header search resumes
  bool value_is_string_ = false;
  size_t value_start_ = 0;  // buf_ offset of the parameter value
};

// The official parse_message_from_completion_text(text, thinking_mode), built
// on OutputParser. Throws ParseError where the official code raises.
ParsedMessage parse(std::string_view text, bool thinking_mode);

}  // namespace dsv4::chat
