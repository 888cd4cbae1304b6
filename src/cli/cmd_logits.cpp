// dsv4 logits: the model's logits for a prompt and optional decode steps.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/command.h"
#include "model/model.h"
#include "model/state.h"
#include "util/error.h"
#include "util/safetensors.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: dsv4 logits --prompt-ids 0,17,42 --out FILE.safetensors [options]

Runs the ordinary forward pass over the prompt (prefill), then one token per
decode id, and writes the fp32 logits after the prompt (`prefill`, [vocab])
and after each decode token (`decode.0`, `decode.1`, ...). With
--all-positions it also writes `positions` [prompt length, vocab]: the head
applied to every prompt position's final streams of the same prefill (what a
teacher-forced reference forward computes).

options:
  --model DIR         model folder (default: the bundled demo model)
  --prompt-ids LIST   comma-separated prompt token ids
  --decode-ids LIST   comma-separated tokens fed one at a time after the prompt
  --chunk N           feed the prompt in chunks of N tokens (default: all at once)
  --all-positions     also write the logits of every prompt position
  --out FILE          output safetensors file
)";

std::vector<int32_t> to_tokens(const std::vector<int64_t>& ids) {
  return std::vector<int32_t>(ids.begin(), ids.end());
}

int run_logits(int argc, char** argv) {
  Args args("logits", argc, argv,
            {{"model", true},
             {"prompt-ids", true},
             {"decode-ids", true},
             {"chunk", true},
             {"out", true},
             {"all-positions", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  const std::vector<int32_t> prompt =
      to_tokens(parse_id_list(args.require("prompt-ids"), "--prompt-ids"));
  const std::vector<int32_t> decode =
      args.has("decode-ids") ? to_tokens(parse_id_list(args.get("decode-ids"), "--decode-ids"))
                             : std::vector<int32_t>();
  const int64_t chunk = args.get_int("chunk", static_cast<int64_t>(prompt.size()));
  if (chunk <= 0) fail("--chunk must be at least 1");
  const std::string out = args.require("out");
  const Model model(args.has("model") ? args.get("model") : default_model_dir());
  const int64_t vocab = model.config().vocab_size;

  auto state = model.new_sequence();
  state->frame.prompt_len = static_cast<int64_t>(prompt.size());
  std::vector<float> logits;
  SafetensorsWriter w;
  const bool all_positions = args.has("all-positions");
  const int64_t stream = model.config().hc_mult * model.config().dim;
  std::vector<float> hidden, positions;
  if (all_positions) positions.resize(prompt.size() * static_cast<size_t>(vocab));
  const std::span<const int32_t> all(prompt);
  for (size_t c0 = 0; c0 < prompt.size(); c0 += static_cast<size_t>(chunk)) {
    const size_t n = std::min<size_t>(static_cast<size_t>(chunk), prompt.size() - c0);
    Model::ForwardOptions opt;
    if (all_positions) opt.hidden = &hidden;
    model.forward(*state, all.subspan(c0, n), c0 + n == prompt.size() ? &logits : nullptr, opt);
    if (all_positions)
      for (size_t i = 0; i < n; ++i)
        model.head_logits(hidden.data() + i * stream, positions.data() + (c0 + i) * vocab);
  }
  w.add_f32("prefill", {vocab}, logits.data());
  if (all_positions)
    w.add_f32("positions", {static_cast<int64_t>(prompt.size()), vocab}, positions.data());
  for (size_t t = 0; t < decode.size(); ++t) {
    model.forward(*state, std::span<const int32_t>(&decode[t], 1), &logits);
    w.add_f32("decode." + std::to_string(t), {vocab}, logits.data());
  }
  w.write(out);
  return 0;
}

}  // namespace

DSV4_COMMAND("logits", "write the model's logits for a prompt (and decode steps)", run_logits);

}  // namespace dsv4::cli
