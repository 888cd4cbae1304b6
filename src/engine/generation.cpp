#include "engine/generation.h"

#include <algorithm>
#include <exception>
#include <new>

#include "engine/stop_matcher.h"
#include "util/error.h"

namespace dsv4::engine {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "null";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kInsufficientResource:
      return "insufficient_system_resource";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

bool prefix_cache_usable(const LanguageModel& model, const PrefixCache* cache) {
  const int64_t granularity = model.snapshot_granularity();
  return cache && cache->enabled() && granularity > 0 &&
         cache->options().block_tokens % granularity == 0;
}

int64_t cached_prompt_tokens(const LanguageModel& model, const PrefixCache* cache,
                             const GenerationRequest& request) {
  if (!prefix_cache_usable(model, cache) || request.prompt.empty()) return 0;
  const int64_t n = static_cast<int64_t>(request.prompt.size());
  return cache->probe(request.prompt, n - 1, request.cache_space, model.prefix_class(n));
}

void generate(const LanguageModel& model, const Detokenizer& detok,
              const GenerationRequest& request, const std::atomic<bool>& cancelled,
              const EventSink& emit, PrefixCache* cache) {
  GenerationEvent ev;
  ev.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  // Snapshots at the last two unit ends reached while decoding (the next
  // turn of a conversation may repeat the answer), kept in the cache when
  // the request ends: two entries per answer however long it is.
  std::vector<int32_t> consumed;  // prompt + decoded tokens, when keeping those
  std::unique_ptr<ModelSequence> decoded_units[2];
  std::string cache_space;
  int64_t decoded_class = 0;
  auto keep_decoded = [&] {
    for (auto& unit : decoded_units)
      if (unit) {
        const auto prefix = std::span<const int32_t>(consumed).first(unit->position());
        cache->insert(prefix, cache_space, decoded_class, std::move(unit));
      }
  };
  auto finish = [&](FinishReason reason, std::string error = {}) {
    try {
      keep_decoded();
    } catch (const std::exception&) {
      // Best effort: the answer is complete without its snapshots.
    }
    ev.done = true;
    ev.finish = reason;
    ev.error = std::move(error);
    ev.time = std::chrono::steady_clock::now();
    emit(std::move(ev));
  };
  if (request.prompt.empty()) return finish(FinishReason::kError, "the prompt has no tokens");
  if (request.max_tokens < 1) return finish(FinishReason::kError, "max_tokens must be >= 1");
  const int64_t context = model.context_length();
  if (static_cast<int64_t>(request.prompt.size()) >= context)
    return finish(FinishReason::kError,
                  str_cat("the prompt has ", request.prompt.size(),
                          " tokens; the model's context length is ", context));

  std::unique_ptr<Sampler> sampler;
  try {
    sampler = std::make_unique<Sampler>(request.sampling);
  } catch (const Error& e) {
    return finish(FinishReason::kError, e.what());
  }
  StopMatcher stops(request.stop);
  std::unique_ptr<TextStream> text = detok.new_stream();
  std::unique_ptr<ModelSequence> seq;
  std::vector<float> logits;

  if (cancelled.load()) return finish(FinishReason::kCancelled);
  int64_t cache_hit = 0;
  try {
    const int64_t n = static_cast<int64_t>(request.prompt.size());
    const bool use_cache = prefix_cache_usable(model, cache);
    int64_t shared = 0;
    const int64_t prefix_class = use_cache ? model.prefix_class(n) : 0;
    if (use_cache) {
      PrefixCache::Hit hit =
          cache->lookup(request.prompt, n - 1, request.cache_space, prefix_class);
      shared = hit.shared_tokens;
      if (hit.sequence) {
        seq = std::move(hit.sequence);
        cache_hit = hit.tokens;
      }
    }
    if (!seq) seq = model.new_sequence();
    // Chunks at the snapshot points compute what one whole-prompt call would.
    seq->set_prompt_length(n);
    int64_t pos = cache_hit;
    const std::span<const int32_t> prompt(request.prompt);
    std::vector<int64_t> points;
    if (use_cache) {
      points = cache->snapshot_points(n);
      // Where this prompt leaves the tokens another request cached: a unit
      // both share, for the next request that shares it too.
      if (shared > cache_hit && std::find(points.begin(), points.end(), shared) == points.end()) {
        points.push_back(shared);
        std::sort(points.begin(), points.end());
      }
    }
    for (int64_t point : points) {
      if (point <= pos) continue;
      seq->forward(prompt.subspan(pos, point - pos), point == n ? &logits : nullptr);
      pos = point;
      cache->insert(prompt.first(point), request.cache_space, prefix_class, *seq);
      if (cancelled.load()) return finish(FinishReason::kCancelled);
    }
    if (pos < n) seq->forward(prompt.subspan(pos), &logits);
    if (use_cache && model.decoded_snapshots_exact(n)) {
      consumed = request.prompt;
      cache_space = request.cache_space;
      decoded_class = prefix_class;
    }
  } catch (const std::bad_alloc&) {
    return finish(FinishReason::kInsufficientResource, "out of memory during prefill");
  } catch (const std::exception& e) {
    return finish(FinishReason::kInsufficientResource, e.what());
  }

  // End of output: releases text held by the detokenizer and the stop
  // matcher; true if that text completed a stop string.
  auto drain = [&]() {
    StopMatcher::Result r = stops.push(text->flush());
    ev.text += r.text;
    if (r.stopped) {
      ev.matched_stop = r.matched;
      return true;
    }
    ev.text += stops.flush();
    return false;
  };

  ev.prompt_cache_hit_tokens = cache_hit;
  int64_t generated = 0;
  while (true) {
    if (static_cast<int>(logits.size()) != model.vocab_size())
      return finish(
          FinishReason::kInsufficientResource,
          str_cat("the model returned ", logits.size(), " logits, expected ", model.vocab_size()));
    if (request.constraint) request.constraint->mask(logits);
    SampledToken tok;
    try {
      tok = sampler->sample(logits);
    } catch (const Error& e) {
      // Only reachable when a constraint masked every token.
      return finish(FinishReason::kInsufficientResource, e.what());
    }
    if (request.constraint) request.constraint->accept(tok.token);
    ++generated;
    ev.completion_tokens = generated;
    const int32_t id = tok.token;
    ev.tokens.push_back(std::move(tok));

    const bool is_stop_token = std::find(request.stop_tokens.begin(), request.stop_tokens.end(),
                                         id) != request.stop_tokens.end();
    if (is_stop_token) {
      ev.stopped_by_token = true;
      drain();
      return finish(FinishReason::kStop);
    }
    StopMatcher::Result r = stops.push(text->push(id));
    ev.text += r.text;
    if (r.stopped) {
      ev.matched_stop = r.matched;
      return finish(FinishReason::kStop);
    }
    if (generated >= request.max_tokens || seq->position() + 1 >= context)
      return finish(drain() ? FinishReason::kStop : FinishReason::kLength);
    ev.time = std::chrono::steady_clock::now();
    emit(std::move(ev));
    ev = GenerationEvent{};
    ev.prompt_tokens = static_cast<int64_t>(request.prompt.size());
    ev.prompt_cache_hit_tokens = cache_hit;
    ev.completion_tokens = generated;

    if (cancelled.load()) return finish(FinishReason::kCancelled);
    try {
      seq->forward(std::span<const int32_t>(&id, 1), &logits);
      if (!consumed.empty()) {
        consumed.push_back(id);
        if (seq->position() % cache->options().block_tokens == 0) {
          decoded_units[0] = std::move(decoded_units[1]);
          decoded_units[1] = seq->clone();
        }
      }
    } catch (const std::bad_alloc&) {
      return finish(FinishReason::kInsufficientResource, "out of memory during decoding");
    } catch (const std::exception& e) {
      return finish(FinishReason::kInsufficientResource, e.what());
    }
  }
}

}  // namespace dsv4::engine
