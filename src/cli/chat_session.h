// The turn logic of `dsv4 chat`, apart from the terminal: a conversation kept
// as the official encoder's input object, rendered and generated turn by turn,
// the output streamed through the incremental V4 parser, and tool calls of the
// demo tools executed locally and fed back until the model answers.
//
// The session depends only on the engine's narrow interfaces (LanguageModel,
// Detokenizer) and an encode function, so tests drive it with fakes that emit
// scripted assistant output (e.g. a DSML tool call).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/generation.h"
#include "engine/sampling.h"

namespace dsv4::cli {

using OrderedJson = nlohmann::ordered_json;

struct ChatSettings {
  std::string system;                 // the system prompt; empty = none
  bool thinking = true;               // thinking_mode "thinking" (else "chat")
  std::optional<std::string> effort;  // reasoning_effort: unset, "high" or "max"
  bool tools = false;                 // the demo tools are offered and executed
  engine::SamplingParams sampling;
  // Tokens one generation may sample; 0 = whatever the context leaves.
  int64_t max_tokens = 0;
  // Generations one user message may take (each tool round is one): a model
  // that keeps calling tools is stopped here instead of looping forever.
  int max_rounds = 8;
};

// Where a running turn reports what the terminal shows. Text arrives in the
// pieces the parser releases; a tool call arrives as begin, arguments pieces,
// end; a tool's result once it ran.
class TurnView {
 public:
  virtual ~TurnView() = default;
  // Before each generation: the exact prompt text and its token count.
  virtual void prompt(const std::string& text, size_t tokens) {
    (void)text;
    (void)tokens;
  }
  virtual void reasoning(std::string_view text) = 0;
  virtual void content(std::string_view text) = 0;
  virtual void tool_call_begin(const std::string& name) = 0;
  virtual void tool_call_arguments(std::string_view text) = 0;
  virtual void tool_call_end() = 0;
  virtual void tool_result(const std::string& name, const std::string& result) = 0;
  // Something the user should know that is not model output (e.g. the output
  // did not parse as V4 output and is shown as plain text from there on).
  virtual void notice(const std::string& text) = 0;
  // One generation ended (a turn with tool calls has several).
  // cached_tokens: how many prompt tokens were already in the model's state
  // from the previous generation (not prefilled again).
  virtual void generation_end(const engine::GenerationEvent& last, int64_t cached_tokens) = 0;
};

// Keeps the model state of the last generation, so that a prompt extending
// what that state has seen (the previous prompt + the answer, as in the next
// turn of a chat or after a tool result) prefills only its new tokens. The
// state cannot be rolled back: a prompt that diverges from it anywhere (e.g.
// the encoder dropped earlier reasoning) starts a fresh sequence.
class PrefixCachingModel : public engine::LanguageModel {
 public:
  explicit PrefixCachingModel(const engine::LanguageModel& inner) : inner_(inner) {}
  int vocab_size() const override { return inner_.vocab_size(); }
  int64_t context_length() const override { return inner_.context_length(); }
  // One sequence at a time: its state is kept when it is destroyed.
  std::unique_ptr<engine::ModelSequence> new_sequence() const override;
  // Prompt tokens the last sequence found already fed.
  int64_t last_reused() const { return last_reused_; }
  void clear() const { cached_.reset(); }

 private:
  struct Cached {
    std::unique_ptr<engine::ModelSequence> seq;
    std::vector<int32_t> tokens;  // everything fed to seq
  };
  class Sequence;
  const engine::LanguageModel& inner_;
  mutable std::unique_ptr<Cached> cached_;
  mutable int64_t last_reused_ = 0;
};

struct TurnResult {
  engine::FinishReason finish = engine::FinishReason::kNone;  // of the last generation
  std::string error;                                          // kError: why
  int rounds = 0;                                             // generations run
  int tools_run = 0;                                          // tool calls executed
  int64_t prompt_tokens = 0;                                  // of the last generation
  int64_t cached_tokens = 0;      // of those, already in the model state
  int64_t completion_tokens = 0;  // all generations together
};

// A demo tool call -> the JSON text of its result (errors are results too:
// {"error": "..."}, so the model can read them).
using ToolRunner =
    std::function<std::string(const std::string& name, const std::string& arguments)>;

class ChatSession {
 public:
  // encode: prompt text -> token ids (the V4 tokenizer with added tokens
  // matched, as `dsv4 render --ids`); stop_tokens: e.g. EOS.
  ChatSession(const engine::LanguageModel& model, const engine::Detokenizer& detok,
              std::function<std::vector<int32_t>(const std::string&)> encode,
              std::vector<int32_t> stop_tokens, ChatSettings settings);

  ChatSettings& settings() { return settings_; }
  const ChatSettings& settings() const { return settings_; }
  void set_tool_runner(ToolRunner runner) { run_tool_ = std::move(runner); }

  // Sends one user message and generates until the model answers without a
  // tool call to run (or stops: length, cancel, error, max_rounds). The
  // assistant's parsed messages and tool results join the conversation; a
  // cancelled answer is kept as far as it got. A turn that could not generate
  // anything at all (e.g. the conversation no longer fits the context) leaves
  // the conversation as it was.
  TurnResult send(const std::string& user_text, TurnView& view, const std::atomic<bool>& cancelled);

  void reset() { messages_ = OrderedJson::array(); }
  // The conversation without the system message (which comes from settings).
  const OrderedJson& messages() const { return messages_; }
  // The `dsv4 render` input object of the conversation as it stands:
  // {"messages", "thinking_mode", ["reasoning_effort"], ["tools", "tools_attached_to"]}.
  OrderedJson render_input() const;
  // The prompt the next generation would get (official encoder).
  std::string render_prompt() const;

 private:
  struct Generation;
  Generation generate_once(TurnView& view, const std::atomic<bool>& cancelled);

  PrefixCachingModel model_;
  const engine::Detokenizer& detok_;
  std::function<std::vector<int32_t>(const std::string&)> encode_;
  std::vector<int32_t> stop_tokens_;
  ChatSettings settings_;
  ToolRunner run_tool_;
  OrderedJson messages_ = OrderedJson::array();
  int next_call_id_ = 0;
  uint64_t generations_ = 0;  // generations run so far (offsets --seed)
};

// The demo tools: OpenAI function definitions of get_weather, calculator and
// get_time.
OrderedJson demo_tool_definitions();
// Runs one of them; the result is JSON text. get_weather returns made-up but
// stable data (it is a demo: nothing is fetched), calculator evaluates
// arithmetic, get_time reads the clock.
std::string run_demo_tool(const std::string& name, const std::string& arguments);

// + - * / % ^ (right-associative power), unary signs, parentheses, decimal
// and scientific numbers, and the functions sqrt/abs/round/floor/ceil/ln/log10/
// exp/sin/cos/tan plus the constants pi and e. Throws dsv4::Error naming
// what is wrong and where.
double evaluate_arithmetic(std::string_view expression);

}  // namespace dsv4::cli
