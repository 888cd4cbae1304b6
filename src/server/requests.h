// Request bodies of the OpenAI-format and Anthropic-format routes, validated
// and turned into one internal job: the conversation for the chat encoder,
// sampling settings and response options. Validation errors are ApiErrors
// carrying DeepSeek's texts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/generation.h"
#include "engine/tool_constraint.h"
#include "server/api_error.h"

namespace dsv4::server {

inline constexpr int64_t kMaxOutputTokens = 393216;  // the platform's max_tokens range
inline constexpr int64_t kMaxFimTokens = 4096;

// The names the loaded model answers to.
class ModelNames {
 public:
  // served: --served-name values (may be empty).
  explicit ModelNames(std::vector<std::string> served = {});

  struct Resolved {
    std::string name;                    // echoed in responses
    std::string price_key;               // key in the price table
    std::optional<bool> force_thinking;  // legacy aliases fix the thinking mode
  };
  // OpenAI routes: the V4 names, --served-name, the legacy aliases
  // (deepseek-chat, deepseek-reasoner: one-time deprecation warning) and
  // deepseek-flash. Anything else: 400 "Model Not Exist".
  Resolved resolve_openai(const std::string& model) const;
  // Anthropic routes: also claude-opus* -> pro, other claude* -> flash, with a
  // trailing "[1m]" stripped; anything else: 404 not_found_error.
  Resolved resolve_anthropic(const std::string& model) const;

  // For GET /models: the V4 names and the served names.
  std::vector<std::string> listed() const;

 private:
  std::vector<std::string> served_;
};

struct ChatJob {
  ApiStyle style = ApiStyle::kOpenAI;
  ModelNames::Resolved model;
  Json conversation;  // the chat encoder's input (see ChatBackend)
  bool thinking = true;
  bool parser_thinking = true;  // output starts inside the reasoning section
  bool prefix = false;          // chat prefix completion (continues the last assistant)
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  bool has_tools = false;
  bool json_mode = false;  // response_format json_object: constrained decoding
  // Tool-call constrained decoding (strict tools; tool_choice required / named
  // / Anthropic any / tool): the tools' schemas, the names the block may call
  // (empty = all) and whether the answer must be a tool call.
  std::vector<engine::ToolSpec> constrained_tools;
  std::vector<std::string> tool_allowed;
  bool tool_required = false;
  std::optional<int64_t> max_tokens;  // as requested (validated range)
  engine::GenerationRequest gen;      // prompt is filled in after rendering
  std::string user_id;
};

struct FimJob {
  ModelNames::Resolved model;
  std::string prompt;
  std::optional<std::string> suffix;
  bool echo = false;
  bool stream = false;
  bool include_usage = false;
  int logprobs = 0;  // legacy completions: number of top tokens, 0 = off
  std::optional<int64_t> max_tokens;
  engine::GenerationRequest gen;
};

// POST /chat/completions. beta: the /beta prefix (prefix completion, strict tools).
ChatJob parse_openai_chat(const Json& body, bool beta, const ModelNames& names);

// POST /anthropic/v1/messages (count_only: /count_tokens, where max_tokens
// and stream are not required).
ChatJob parse_anthropic_messages(const Json& body, const ModelNames& names, bool count_only);

// POST /completions (FIM when suffix is given; plain continuation otherwise).
FimJob parse_completion(const Json& body, const ModelNames& names);

// reasoning_effort spellings -> "high" | "max" (April surface plus the later
// spellings of api-surface.md §0.2). Throws for unknown values.
std::string normalize_effort(const std::string& effort, const std::string& path, ApiStyle style);

}  // namespace dsv4::server
