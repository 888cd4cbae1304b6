// One generation request run over a model sequence: prefill, then sample,
// detokenize and check stops token by token, reporting progress as events.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/prefix_cache.h"
#include "engine/sampling.h"

namespace dsv4::engine {

enum class FinishReason {
  kNone,                  // not finished
  kStop,                  // a stop token (EOS) or a stop string
  kLength,                // max_tokens or the context limit
  kCancelled,             // the client went away
  kInsufficientResource,  // the model failed mid-generation (e.g. out of memory): partial answer
  kError,                 // the request could not run at all (message in `error`)
};

// The API spelling: "stop", "length", "insufficient_system_resource", ...
const char* finish_reason_name(FinishReason reason);

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int64_t max_tokens = 1;
  std::vector<std::string> stop;                 // stop strings; their text is not returned
  std::vector<int32_t> stop_tokens;              // e.g. EOS; ends generation, text not returned
  std::shared_ptr<LogitsConstraint> constraint;  // optional
  // Prefix-cache isolation: requests share cached prefixes only within one
  // space (the server uses the API key and user_id).
  std::string cache_space;
};

struct GenerationEvent {
  std::string text;                  // new output text, safe to show (stops resolved)
  std::vector<SampledToken> tokens;  // tokens sampled since the previous event
  bool done = false;
  FinishReason finish = FinishReason::kNone;
  bool stopped_by_token = false;  // kStop because a stop token was sampled
  std::string matched_stop;       // kStop by a stop string: which one
  std::string error;              // kInsufficientResource / kError: why
  int64_t prompt_tokens = 0;
  int64_t prompt_cache_hit_tokens = 0;  // of prompt_tokens, served from the prefix cache
  int64_t completion_tokens = 0;        // tokens sampled so far, stop tokens included
  std::chrono::steady_clock::time_point time;
};

using EventSink = std::function<void(GenerationEvent&&)>;

// Runs `request` to completion on the calling thread. `emit` is called once
// after prefill-and-first-token and then once per token, the last event has
// done = true. `cancelled` is checked before every model step, so a cancel
// takes effect within one token. Errors of the model during generation end
// the request with kInsufficientResource instead of propagating.
// With a prefix cache (optional), the prompt continues the longest cached
// prefix of it (at most prompt - 1 tokens: the last one is always computed,
// for its logits) and the prefill leaves snapshots at the cache's points.
// Whether `cache` can serve `model` (its blocks are whole snapshot units).
bool prefix_cache_usable(const LanguageModel& model, const PrefixCache* cache);
// The prompt tokens generate() would serve from `cache` if it ran now.
int64_t cached_prompt_tokens(const LanguageModel& model, const PrefixCache* cache,
                             const GenerationRequest& request);

void generate(const LanguageModel& model, const Detokenizer& detok,
              const GenerationRequest& request, const std::atomic<bool>& cancelled,
              const EventSink& emit, PrefixCache* cache = nullptr);

}  // namespace dsv4::engine
