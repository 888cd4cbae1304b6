#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "util/error.h"

namespace dsv4::engine {

namespace {

double max_logit(std::span<const float> logits) {
  float m = -std::numeric_limits<float>::infinity();
  for (float x : logits) m = std::max(m, x);
  return m;
}

double log_sum_exp(std::span<const float> logits) {
  const double m = max_logit(logits);
  if (!std::isfinite(m)) return m;
  double s = 0.0;
  for (float x : logits) s += std::exp(double(x) - m);
  return m + std::log(s);
}

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  return best;
}

// Unnormalised softmax weights exp((logit - max) / T) in double precision.
std::vector<double> softmax_weights(std::span<const float> logits, float temperature,
                                    double* total) {
  const double m = max_logit(logits);
  if (!std::isfinite(m)) fail("sampling: every logit is -inf or NaN (all tokens masked)");
  std::vector<double> w(logits.size());
  double s = 0.0;
  const double inv_t = 1.0 / temperature;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double x = logits[i];
    w[i] = std::isnan(x) ? 0.0 : std::exp((x - m) * inv_t);
    s += w[i];
  }
  *total = s;
  return w;
}

// Token ids sorted by weight, most likely first, long enough to cover `mass`
// of `total`. Sorting the whole vocabulary (129k) every token is wasteful when
// the nucleus is small, so try the top 1024 first.
std::vector<int32_t> sorted_prefix_covering(const std::vector<double>& w, double total,
                                            double mass) {
  std::vector<int32_t> ids(w.size());
  std::iota(ids.begin(), ids.end(), 0);
  auto by_weight = [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  const size_t k = std::min<size_t>(ids.size(), 1024);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), by_weight);
  double acc = 0.0;
  for (size_t i = 0; i < k; ++i) {
    acc += w[ids[i]];
    if (acc >= mass * total) {
      ids.resize(i + 1);
      return ids;
    }
  }
  std::sort(ids.begin() + k, ids.end(), by_weight);
  for (size_t i = k; i < ids.size(); ++i) {
    acc += w[ids[i]];
    if (acc >= mass * total) {
      ids.resize(i + 1);
      return ids;
    }
  }
  return ids;  // rounding: the whole vocabulary
}

void check_params(float temperature, float top_p) {
  if (!(temperature >= 0.0f)) fail("sampling: temperature must be >= 0, got ", temperature);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("sampling: top_p must be in (0, 1], got ", top_p);
}

}  // namespace

void apply_penalties(std::span<float> logits, const std::unordered_map<int32_t, int>& counts,
                     float frequency_penalty, float presence_penalty) {
  if (frequency_penalty == 0.0f && presence_penalty == 0.0f) return;
  for (const auto& [token, count] : counts) {
    if (token < 0 || static_cast<size_t>(token) >= logits.size() || count <= 0) continue;
    logits[token] -= static_cast<float>(count) * frequency_penalty + presence_penalty;
  }
}

std::vector<std::pair<int32_t, double>> nucleus_distribution(std::span<const float> logits,
                                                             float temperature, float top_p) {
  check_params(temperature, top_p);
  if (temperature == 0.0f) return {{argmax(logits), 1.0}};
  double total = 0.0;
  std::vector<double> w = softmax_weights(logits, temperature, &total);
  std::vector<int32_t> ids = sorted_prefix_covering(w, total, top_p);
  double kept = 0.0;
  for (int32_t id : ids) kept += w[id];
  std::vector<std::pair<int32_t, double>> out;
  out.reserve(ids.size());
  for (int32_t id : ids) out.emplace_back(id, w[id] / kept);
  return out;
}

float token_logprob(std::span<const float> logits, int32_t token) {
  return static_cast<float>(double(logits[token]) - log_sum_exp(logits));
}

std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, int k) {
  k = std::clamp<int>(k, 0, static_cast<int>(logits.size()));
  if (k == 0) return {};
  const double lse = log_sum_exp(logits);
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<TokenLogprob> out;
  out.reserve(k);
  for (int i = 0; i < k; ++i)
    out.push_back({ids[i], static_cast<float>(double(logits[ids[i]]) - lse)});
  return out;
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  check_params(params.temperature, params.top_p);
  if (params.top_logprobs < 0 || params.top_logprobs > 20)
    fail("sampling: top_logprobs must be in [0, 20], got ", params.top_logprobs);
  if (params.seed) {
    rng_.seed(*params.seed);
  } else {
    std::random_device rd;
    rng_.seed((uint64_t(rd()) << 32) ^ rd());
  }
}

double Sampler::uniform() {
  return double(rng_() >> 11) * 0x1.0p-53;
}

SampledToken Sampler::sample(std::span<float> logits) {
  if (logits.empty()) fail("sampling: empty logits");
  SampledToken out;
  // The reported log-probabilities describe the raw model distribution, so
  // take them before the penalties change the logits.
  std::vector<float> raw;
  if (params_.logprobs) raw.assign(logits.begin(), logits.end());

  for (const auto& [token, bias] : params_.logit_bias)
    if (token >= 0 && static_cast<size_t>(token) < logits.size()) logits[token] += bias;
  apply_penalties(logits, counts_, params_.frequency_penalty, params_.presence_penalty);

  if (params_.temperature == 0.0f) {
    out.token = argmax(logits);
  } else if (params_.top_p >= 1.0f) {
    // Inverse CDF over the vocabulary in index order: exact, no sort needed.
    double total = 0.0;
    std::vector<double> w = softmax_weights(logits, params_.temperature, &total);
    const double target = uniform() * total;
    double acc = 0.0;
    out.token = -1;
    for (size_t i = 0; i < w.size(); ++i) {
      acc += w[i];
      if (w[i] > 0.0 && acc > target) {
        out.token = static_cast<int32_t>(i);
        break;
      }
    }
    if (out.token < 0) {  // rounding at the very end: the last token with mass
      for (size_t i = w.size(); i-- > 0;)
        if (w[i] > 0.0) {
          out.token = static_cast<int32_t>(i);
          break;
        }
    }
  } else {
    auto dist = nucleus_distribution(logits, params_.temperature, params_.top_p);
    const double target = uniform();
    double acc = 0.0;
    out.token = dist.back().first;
    for (const auto& [id, p] : dist) {
      acc += p;
      if (acc > target) {
        out.token = id;
        break;
      }
    }
  }

  if (params_.logprobs) {
    out.logprob = token_logprob(raw, out.token);
    out.top = top_logprobs(raw, params_.top_logprobs);
  }
  ++counts_[out.token];
  return out;
}

}  // namespace dsv4::engine
