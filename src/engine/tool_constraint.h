// Constrained decoding of DeepSeek V4 tool calls (strict tools, tool_choice
// required / named): before each token of the answer, every token whose bytes
// would break the DSML tool-call grammar or the tools' JSON schemas is masked,
// so a tool-call block always parses and its arguments always validate.
//
// The block, as the official encoder writes it (encoding_dsv4.py):
//
//   CONTENT\n\n<｜DSML｜tool_calls>\n
//   <｜DSML｜invoke name="NAME">\n
//   <｜DSML｜parameter name="KEY" string="true">RAW TEXT</｜DSML｜parameter>\n
//   <｜DSML｜parameter name="KEY" string="false">JSON</｜DSML｜parameter>\n
//   </｜DSML｜invoke>\n
//   </｜DSML｜tool_calls><EOS>
//
// Strings are written raw with string="true"; every other type as JSON with
// string="false". The grammar enforced: NAME one of the offered tools (the
// named one for a named tool_choice); KEY a property of that tool's schema,
// each at most once, every required one before </｜DSML｜invoke>; string-typed
// properties raw (an enum: one of its values), others JSON valid for the
// property's schema (type, enum, properties / required / additionalProperties,
// items; anyOf / $ref / oneOf values only need to be valid JSON). No "｜"
// (the DeepSeek control-token bar) and no <think> tag inside values or content.
#pragma once

#include <bitset>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend.h"

namespace dsv4::engine {

struct ToolSpec {
  std::string name;
  nlohmann::ordered_json parameters;  // JSON schema of the arguments object
};

// The compiled grammar shared by all copies of the machine.
struct ToolGrammar;

// A byte-level recognizer of one answer (the text after </think> in thinking
// mode, the whole output otherwise). Copyable: the mask tries each token on a
// copy.
class ToolCallMachine {
 public:
  // required: the answer must be a tool-call block (no content); otherwise
  // content may come first and the block is optional.
  ToolCallMachine(std::shared_ptr<const ToolGrammar> grammar, bool required);

  // Feeds one byte; false if it cannot continue a valid answer (the machine is
  // then unusable).
  bool feed(uint8_t c);
  bool feed(const std::string& bytes);
  // The end token may come now: after </｜DSML｜tool_calls>, or in plain
  // content when no block is required.
  bool can_end() const;
  // A tool-call block has begun.
  bool in_block() const { return phase_ != Phase::kContent; }

  // Compiles tool schemas (throws dsv4::Error for a schema it cannot enforce,
  // e.g. more than 64 properties). allowed: names the block may call (empty =
  // every tool).
  static std::shared_ptr<const ToolGrammar> compile(const std::vector<ToolSpec>& tools,
                                                    const std::vector<std::string>& allowed);

  // One JSON value's recognizer state (schema-directed); public for the
  // implementation's helpers.
  struct Frame {
    int node;           // schema node
    uint8_t mode;       // see tool_constraint.cpp
    uint8_t aux = 0;    // number phase / unicode digits / literal index
    uint16_t pos = 0;   // bytes matched of a key or enum text
    uint64_t seen = 0;  // object: properties present
    int key = -1;       // object: the property being read
  };

 private:
  enum class Phase : uint8_t {
    kContent,  // free text, watching for "\n\n<｜DSML｜tool_calls"
    kChoice,   // matching one of a set of fixed strings
    kRaw,      // a string="true" value, up to </｜DSML｜parameter>
    kJson,     // a string="false" value
    kDone,     // after </｜DSML｜tool_calls>: only the end token
  };
  bool enter_choice(int set);
  bool on_choice_done(int alt);
  bool feed_json(uint8_t c, bool* done, bool* consumed);
  bool bar_ok(uint8_t c, bool allowed_here);

  std::shared_ptr<const ToolGrammar> g_;
  Phase phase_ = Phase::kContent;
  int set_ = -1;      // choice set being matched
  uint16_t pos_ = 0;  // bytes matched in the choice / marker
  std::bitset<256> alive_;
  int tool_ = -1;   // the invoke's tool
  int param_ = -1;  // the parameter being written
  uint64_t seen_ = 0;
  uint8_t bar_ = 0;    // bytes of "｜" just seen (0..2)
  uint8_t ws_ = 0;     // whitespace run in JSON
  uint8_t think_ = 0;  // bytes of "think>" just matched
  std::vector<Frame> stack_;
};

// The per-request constraint. Before `start_token` (the </think> of a
// thinking-mode answer; -1 = from the first token) nothing is masked.
class ToolCallConstraint : public LogitsConstraint {
 public:
  ToolCallConstraint(std::shared_ptr<const std::vector<std::string>> token_bytes,
                     std::vector<int32_t> end_tokens, int32_t start_token,
                     std::shared_ptr<const ToolGrammar> grammar, bool required);
  void mask(std::span<float> logits) override;
  void accept(int32_t token) override;

 private:
  std::shared_ptr<const std::vector<std::string>> bytes_;
  std::vector<int32_t> end_tokens_;
  int32_t start_token_;
  bool active_;
  ToolCallMachine machine_;
};

}  // namespace dsv4::engine
