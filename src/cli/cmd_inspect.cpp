// dsv4 inspect: architecture summary, layer schedule, parameter/byte/KV counts.
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/roofline.h"
#include "model/checkpoint.h"
#include "model/inspect.h"
#include "model/synth.h"
#include "model/weights.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: dsv4 inspect [--model DIR | --like tiny|flash|pro [--layers N] [--experts E]] [--json]

Prints the architecture, the layer schedule (window / CSA / HCA, hash or score
routing), parameter counts (total and active per token), weight bytes read per
decoded token, KV-cache bytes per token of context and tensors by dtype.
--model opens and validates a checkpoint folder (default: the bundled demo
model); --like counts a preset's configuration without any files.

options:
  --model DIR     checkpoint folder (config.json + safetensors)
  --like P        count the configuration `dsv4 synth --like P` would write
  --layers N, --experts E, --dim D, --vocab V, --expert-dtype T   with --like, as for synth
  --json          machine-readable output
)";

int run_inspect(int argc, char** argv) {
  Args args("inspect", argc, argv,
            {{"model", true},
             {"like", true},
             {"layers", true},
             {"experts", true},
             {"dim", true},
             {"vocab", true},
             {"expert-dtype", true},
             {"json", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  ModelSummary summary;
  if (args.has("like")) {
    if (args.has("model")) fail("give either --model or --like, not both");
    SynthOptions opt;
    opt.like = args.get("like");
    opt.layers = args.get_int("layers", 0);
    opt.experts = args.get_int("experts", 0);
    opt.dim = args.get_int("dim", 0);
    opt.vocab = args.get_int("vocab", 0);
    opt.expert_dtype = args.get("expert-dtype", "fp4");
    if (opt.layers < 0 || opt.experts < 0 || opt.dim < 0 || opt.vocab < 0 ||
        (args.has("layers") && opt.layers == 0) || (args.has("experts") && opt.experts == 0) ||
        (args.has("dim") && opt.dim == 0) || (args.has("vocab") && opt.vocab == 0))
      fail("--layers, --experts, --dim and --vocab must be positive");
    summary = summarize_config(synth_config(opt));
  } else {
    for (const char* o : {"layers", "experts", "dim", "vocab", "expert-dtype"})
      if (args.has(o)) fail("--", o, " only applies with --like");
    const std::string dir = args.has("model") ? args.get("model") : default_model_dir();
    Checkpoint ckpt(dir);
    bind_weights(ckpt);  // reject a checkpoint the engine would reject
    summary = summarize(ckpt.config(), checkpoint_tensor_stats(ckpt));
    if (!args.has("json"))
      std::printf("Model folder: %s (%zu shard file(s))\n\n", dir.c_str(), ckpt.num_shards());
    // Weights are mmapped, never copied: what is resident is what the page
    // cache holds for this process (after the load-time checks above).
    const uint64_t mapped = mapped_resident_bytes(dir), rss = read_memory_status().vm_rss;
    const uint64_t total = ckpt.total_bytes();
    if (args.has("json")) {
      nlohmann::json j = nlohmann::json::parse(summary_to_json(summary));
      j["memory"] = {{"checkpoint_bytes", total},
                     {"checkpoint_resident_bytes", mapped},
                     {"process_rss_bytes", rss}};
      const std::string text = j.dump(2) + "\n";
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else {
      const std::string text = summary_to_text(summary);
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::printf(
          "\nMemory: %.1f MB of the checkpoint's %.1f MB resident (mmapped, not copied); "
          "process RSS %.1f MB\n",
          static_cast<double>(mapped) / 1e6, static_cast<double>(total) / 1e6,
          static_cast<double>(rss) / 1e6);
    }
    return 0;
  }
  const std::string text = args.has("json") ? summary_to_json(summary) : summary_to_text(summary);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace

DSV4_COMMAND("inspect", "summarize a checkpoint: schedule, parameters, bytes per token, KV size",
             run_inspect);

}  // namespace dsv4::cli
