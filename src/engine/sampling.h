// Token sampling: repetition penalties, temperature, nucleus (top_p) and
// log-probabilities, as the OpenAI / DeepSeek chat API defines them.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dsv4::engine {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy (argmax)
  float top_p = 1.0f;        // nucleus mass, (0, 1]
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  std::optional<uint64_t> seed;  // unset: a fresh random seed per request
  bool logprobs = false;
  int top_logprobs = 0;  // 0..20; only with logprobs
  // Added to the raw logits before penalties and sampling (OpenAI's
  // logit_bias; llama.cpp's --logit-bias). Ids outside the vocabulary are
  // ignored. A token masked by a constraint (-inf) stays masked.
  std::vector<std::pair<int32_t, float>> logit_bias;
};

struct TokenLogprob {
  int32_t token;
  float logprob;
};

struct SampledToken {
  int32_t token = -1;
  // log-softmax of the model's raw logits (before penalties, temperature and
  // top_p), the convention of vLLM's default and of the OpenAI API: the number
  // describes the model, not the sampler settings.
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;  // top_logprobs entries, most likely first
};

// OpenAI's penalty formula, applied in place:
//   logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty
void apply_penalties(std::span<float> logits, const std::unordered_map<int32_t, int>& counts,
                     float frequency_penalty, float presence_penalty);

// The distribution the sampler draws from for temperature > 0: softmax of
// logits / temperature, restricted to the smallest set of most likely tokens
// whose mass reaches top_p, renormalised. Returned as (token, probability)
// pairs, most likely first. Exposed so tests can compare sampling frequencies
// with exact probabilities.
std::vector<std::pair<int32_t, double>> nucleus_distribution(std::span<const float> logits,
                                                             float temperature, float top_p);

// log-softmax of `logits` at `token` and the k most likely tokens.
float token_logprob(std::span<const float> logits, int32_t token);
std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, int k);

// One request's sampler: holds the RNG and the counts of generated tokens for
// the penalties. Same params + same seed + same logits sequence = same tokens.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Draws the next token from `logits` (modified in place by the penalties)
  // and records it for later penalties.
  SampledToken sample(std::span<float> logits);

  const SamplingParams& params() const { return params_; }

 private:
  double uniform();  // [0, 1), 53 random bits

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int> counts_;
};

}  // namespace dsv4::engine
