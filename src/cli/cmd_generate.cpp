// dsv4 generate: token ids in, generated token ids out, with the reference
// driver's sampling (inference/generate.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cli/command.h"
#include "model/model.h"
#include "model/state.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage = R"(usage: dsv4 generate --prompt-ids 0,17,42 [options]

Prefills the prompt and generates up to --max-tokens tokens, stopping at the
end-of-sequence token (not printed). Prints the generated ids, comma-separated.
At temperature 0 the choice is greedy (argmax, lowest id on ties); otherwise
the reference's sampling: probs = softmax(logits / T), token =
argmax(probs / E) with E ~ Exponential(1) per token, seeded.

options:
  --model DIR         model folder (default: the bundled demo model)
  --prompt-ids LIST   comma-separated prompt token ids
  --max-tokens N      at most N new tokens (default 16)
  --temperature T     sampling temperature (default 0)
  --seed S            random seed for sampling (default 0)
)";

int32_t choose(const std::vector<float>& logits, double temperature, std::mt19937_64& rng) {
  if (temperature <= 0)
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const double t = std::max(temperature, 1e-5);
  double mx = -INFINITY;
  for (float l : logits) mx = std::max(mx, l / t);
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] / t - mx);
  std::exponential_distribution<double> expo(1.0);
  int32_t best = 0;
  double best_v = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    const double v = (p[i] / sum) / expo(rng);
    if (v > best_v) best_v = v, best = static_cast<int32_t>(i);
  }
  return best;
}

int run_generate(int argc, char** argv) {
  Args args("generate", argc, argv,
            {{"model", true},
             {"prompt-ids", true},
             {"max-tokens", true},
             {"temperature", true},
             {"seed", true},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  const std::vector<int64_t> ids = parse_id_list(args.require("prompt-ids"), "--prompt-ids");
  const int64_t max_tokens = args.get_int("max-tokens", 16);
  if (max_tokens < 0) fail("--max-tokens must not be negative");
  const double temperature = args.get_double("temperature", 0.0);
  if (!(temperature >= 0)) fail("--temperature must be non-negative");
  std::mt19937_64 rng(static_cast<uint64_t>(args.get_int("seed", 0)));
  const Model model(args.has("model") ? args.get("model") : default_model_dir());

  std::vector<int32_t> prompt(ids.begin(), ids.end());
  auto state = model.new_sequence();
  state->frame.prompt_len = static_cast<int64_t>(prompt.size());
  std::vector<float> logits;
  model.forward(*state, prompt, &logits);
  std::string out;
  for (int64_t i = 0; i < max_tokens; ++i) {
    const int32_t tok = choose(logits, temperature, rng);
    if (tok == model.config().eos_token_id) break;
    if (!out.empty()) out.push_back(',');
    out.append(std::to_string(tok));
    if (i + 1 < max_tokens) model.forward(*state, std::span<const int32_t>(&tok, 1), &logits);
  }
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

DSV4_COMMAND("generate", "generate token ids from prompt ids", run_generate);

}  // namespace dsv4::cli
