#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/numerics.h"
#include "util/error.h"
#include "util/scratch.h"
#include "util/threadpool.h"

namespace dsv4 {

// Up to this many rows per expert, experts run in parallel (one per task) instead of each
// matrix over every thread.
constexpr int64_t kExpertParallelRows = 4;

void expert_forward(const ModelContext& ctx, const ExpertWeights& w, const float* x, int64_t m,
                    const float* route_weights, float* out) {
  const int64_t inter = w.w1.out;
  ScratchVector<float> g(m * inter), u(m * inter);
  kernels::quant_linear(x, m, weight_ref(w.w1), g.data());
  kernels::quant_linear(x, m, weight_ref(w.w3), u.data());
  const float limit = static_cast<float>(ctx.cfg.swiglu_limit);
  parallel_for_rows(m, inter, [&](int64_t i) {
    for (int64_t k = 0; k < inter; ++k) {
      float gv = g[i * inter + k], uv = u[i * inter + k];
      if (limit > 0) {
        uv = std::clamp(uv, -limit, limit);
        gv = std::min(gv, limit);
      }
      float h = kernels::silu(gv) * uv;
      if (route_weights) h = route_weights[i] * h;
      g[i * inter + k] = kernels::bf16_round(h);
    }
  });
  kernels::quant_linear(g.data(), m, weight_ref(w.w2), out);
}

void moe_forward(const ModelContext& ctx, const MoeWeights& w, int64_t layer, int64_t pos,
                 int64_t n, const float* x, std::span<const int32_t> tokens, float* out,
                 ForwardObserver* observer) {
  const ModelConfig& cfg = ctx.cfg;
  const int64_t dim = cfg.dim, n_exp = cfg.n_routed_experts, k = cfg.n_activated_experts;

  // Router scores in fp32.
  std::vector<float> scores(n * n_exp);
  kernels::plain_linear(x, n, dim, weight_ref(w.gate_weight), 0, n_exp, scores.data(), n_exp,
                        false);
  for (int64_t i = 0; i < n; ++i) {
    float* s = scores.data() + i * n_exp;
    switch (cfg.score_func) {
      case ScoreFunc::kSqrtSoftplus:
        for (int64_t e = 0; e < n_exp; ++e)  // torch softplus: linear above 20
          s[e] = std::sqrt(s[e] > 20.0f ? s[e] : std::log1p(std::exp(s[e])));
        break;
      case ScoreFunc::kSigmoid:
        for (int64_t e = 0; e < n_exp; ++e) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
        break;
      case ScoreFunc::kSoftmax:
        kernels::softmax(s, n_exp);
        break;
    }
  }

  // Selection (bias or table) and weights (from the unbiased scores).
  std::vector<int32_t> experts(n * k);
  std::vector<float> weights(n * k);
  const std::vector<float> bias = w.hash ? std::vector<float>() : to_f32(w.gate_bias);
  for (int64_t i = 0; i < n; ++i) {
    const float* s = scores.data() + i * n_exp;
    int32_t* sel = experts.data() + i * k;
    if (w.hash) {
      const int64_t tok = tokens[i];
      if (tok < 0 || tok >= cfg.vocab_size)
        fail("token id ", tok, " is outside the vocabulary (", cfg.vocab_size, " ids)");
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = w.tid2eid.dtype == DType::I64 ? w.tid2eid.at<int64_t>(tok * k + j)
                                                        : w.tid2eid.at<int32_t>(tok * k + j);
        if (e < 0 || e >= n_exp)
          fail(w.tid2eid.file, ": ", w.tid2eid.name, " maps token ", tok, " to expert ", e,
               ", outside 0..", n_exp - 1);
        sel[j] = static_cast<int32_t>(e);
      }
    } else {
      std::vector<float> biased(s, s + n_exp);
      for (int64_t e = 0; e < n_exp; ++e) biased[e] += bias[e];
      const std::vector<int32_t> best = kernels::topk(biased.data(), n_exp, k);
      std::copy(best.begin(), best.end(), sel);
    }
    float* wt = weights.data() + i * k;
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += wt[j] = s[sel[j]];
    const bool normalise = cfg.score_func != ScoreFunc::kSoftmax;
    for (int64_t j = 0; j < k; ++j)
      wt[j] = (normalise ? wt[j] / sum : wt[j]) * static_cast<float>(cfg.route_scale);
  }
  if (observer) observer->on_moe_routing(layer, pos, n, k, experts.data(), weights.data());

  // Routed experts in expert order (the reference's accumulation order), fp32 sum.
  struct Job {
    const ExpertWeights* weights;
    std::vector<int64_t> rows;  // empty: every row (the shared expert)
    std::vector<float> route;   // per row, or none (shared)
    ScratchVector<float> xs, ys;
  };
  std::vector<Job> jobs;
  int64_t max_rows = 0;
  for (int64_t e = 0; e < n_exp; ++e) {
    Job job{&w.experts[e], {}, {}, {}, {}};
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < k; ++j)
        if (experts[i * k + j] == e) {
          job.rows.push_back(i);
          job.route.push_back(weights[i * k + j]);
        }
    if (job.rows.empty()) continue;
    max_rows = std::max<int64_t>(max_rows, static_cast<int64_t>(job.rows.size()));
    jobs.push_back(std::move(job));
  }
  const size_t routed = jobs.size();
  if (w.has_shared) jobs.push_back(Job{&w.shared, {}, {}, {}, {}});
  auto run = [&](Job& job) {
    const bool shared = job.route.empty();
    const int64_t m = shared ? n : static_cast<int64_t>(job.rows.size());
    job.ys.resize(m * dim);
    if (!shared) {
      job.xs.resize(m * dim);
      parallel_for_rows(m, dim, [&](int64_t r) {
        std::copy_n(x + job.rows[r] * dim, dim, job.xs.data() + r * dim);
      });
    }
    expert_forward(ctx, *job.weights, shared ? x : job.xs.data(), m,
                   shared ? nullptr : job.route.data(), job.ys.data());
  };
  // Adds a job's output to acc (a routed job's rows are distinct, so its additions are
  // independent; jobs add in order: routed experts by index, then the shared one) and frees
  // its buffers.
  ScratchVector<float> acc(n * dim, 0.0f);
  auto add = [&](Job& job) {
    const bool shared = job.route.empty();
    parallel_for_rows(shared ? n : static_cast<int64_t>(job.rows.size()), dim, [&](int64_t r) {
      float* a = acc.data() + (shared ? r : job.rows[r]) * dim;
      for (int64_t c = 0; c < dim; ++c) a[c] += job.ys[r * dim + c];
    });
    ScratchVector<float>().swap(job.xs);
    ScratchVector<float>().swap(job.ys);
  };
  // Decoding (a few rows per expert), each expert is one task on one thread: its matrices
  // are small, so splitting each of them over the threads paid a wake-up and a join per
  // matrix; whole experts keep one weight stream per thread. The shared expert, the largest,
  // goes first. Prefill chunks split every matrix instead, one expert at a time, so that only
  // one expert's inputs and outputs are held at once.
  if (max_rows <= kExpertParallelRows && ThreadPool::global().num_threads() > 1 &&
      jobs.size() > 1) {
    parallel_for(static_cast<int64_t>(jobs.size()), [&](int64_t a, int64_t b, int) {
      for (int64_t q = a; q < b; ++q) run(jobs[(q + routed) % jobs.size()]);
    });
    for (Job& job : jobs) add(job);
  } else {
    for (Job& job : jobs) {
      run(job);
      add(job);
    }
  }
  parallel_for_rows(n, dim, [&](int64_t i) {
    for (int64_t c = 0; c < dim; ++c) out[i * dim + c] = kernels::bf16_round(acc[i * dim + c]);
  });
}

}  // namespace dsv4
