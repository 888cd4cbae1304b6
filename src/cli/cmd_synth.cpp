// dsv4 synth: writes a random-weight checkpoint in the official format.
#include <cstdio>
#include <string>

#include "cli/command.h"
#include "model/synth.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage = R"(usage: dsv4 synth --like tiny|flash|pro --out DIR [options]

Writes a random-weight DeepSeek V4 checkpoint in the official Hugging Face
format (config.json, safetensors with the native names, FP8 e4m3 linears with
UE8M0 128x128 block scales, packed FP4 experts), sharded with
model.safetensors.index.json when larger than --shard-bytes.

options:
  --like P            tiny (dimensions like tests/data/golden/tiny-a), flash or pro
  --layers N          keep the first N layers of the preset's schedule (+ the MTP block)
  --experts E         routed experts per layer (num_experts_per_tok = min(preset, E))
  --dim D             hidden_size (multiple of 32)
  --vocab V           vocab_size
  --tokenizer DIR     copy DIR/tokenizer.json (+ tokenizer_config.json); vocab = its max id + 1
  --seed S            random seed (default 0); the output is a function of the options
  --expert-dtype T    fp4 (instruct, default) or fp8 (Base: FP8 experts, F32 scales)
  --shard-bytes B     at most B tensor bytes per shard (default 4000000000)
  --out DIR           output folder (created; earlier model files there are replaced)
)";

int run_synth(int argc, char** argv) {
  Args args("synth", argc, argv,
            {{"like", true},
             {"layers", true},
             {"experts", true},
             {"dim", true},
             {"vocab", true},
             {"tokenizer", true},
             {"seed", true},
             {"expert-dtype", true},
             {"shard-bytes", true},
             {"out", true},
             {"quiet", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  SynthOptions opt;
  opt.like = args.require("like");
  opt.out = args.require("out");
  opt.layers = args.get_int("layers", 0);
  opt.experts = args.get_int("experts", 0);
  opt.dim = args.get_int("dim", 0);
  opt.vocab = args.get_int("vocab", 0);
  if (args.has("layers") && opt.layers <= 0) fail("--layers must be at least 1");
  if (args.has("experts") && opt.experts <= 0) fail("--experts must be at least 1");
  if (args.has("dim") && opt.dim <= 0) fail("--dim must be positive");
  if (args.has("vocab") && opt.vocab <= 0) fail("--vocab must be positive");
  opt.tokenizer_dir = args.get("tokenizer");
  const int64_t seed = args.get_int("seed", 0);
  if (seed < 0) fail("--seed must be non-negative");
  opt.seed = static_cast<uint64_t>(seed);
  opt.expert_dtype = args.get("expert-dtype", "fp4");
  const int64_t shard = args.get_int("shard-bytes", 4000000000ll);
  if (shard <= 0) fail("--shard-bytes must be positive");
  opt.shard_bytes = static_cast<uint64_t>(shard);
  const bool quiet = args.has("quiet");
  const SynthResult r = synth_checkpoint(opt, [&](const std::string& line) {
    if (!quiet) std::fprintf(stderr, "%s\n", line.c_str());
  });
  std::printf("%s: %zu tensors, %llu bytes in %zu file(s)\n", opt.out.c_str(), r.num_tensors,
              static_cast<unsigned long long>(r.tensor_bytes), r.files.size());
  return 0;
}

}  // namespace

DSV4_COMMAND("synth", "write a random-weight checkpoint in the official format", run_synth);

}  // namespace dsv4::cli
