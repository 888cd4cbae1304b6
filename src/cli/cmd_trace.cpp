// dsv4 trace: replays a golden scenario and writes what dsv4 computes under
// the golden tensor names (tests/data/golden/README.md §4–§5).
#include <cstdio>
#include <string>

#include "cli/command.h"
#include "model/model.h"
#include "model/trace.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: dsv4 trace --model DIR --trace GOLDEN.safetensors --out OUT.safetensors [options]

Replays the scenario of a golden file (its `tokens`; prompt length = first
dimension of prefill.hidden.layer0; then one-token decode steps) and writes
what dsv4 computes under the golden tensor names: logits, block outputs,
attention / MoE outputs at prefill.sub_positions, MoE routing, indexer
selections, MTP outputs.

By default every block is teacher-forced (run on the golden output of the
previous block, its caches built from those inputs) and the logits come from
the golden final hidden states through the head only.

options:
  --model DIR        model folder (config.json + safetensors)
  --trace FILE       golden safetensors file with the scenario
  --out FILE         where to write the trace
  --free-running     run the ordinary forward pass instead
  --chunk N          feed the prompt in chunks of N tokens
  --compare          print the golden README §7 figures against the trace file
)";

int run_trace_cmd(int argc, char** argv) {
  Args args("trace", argc, argv,
            {{"model", true},
             {"trace", true},
             {"out", true},
             {"free-running", false},
             {"chunk", true},
             {"compare", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  TraceOptions opt;
  opt.teacher_forced = !args.has("free-running");
  opt.chunk = args.get_int("chunk", 0);
  if (args.has("chunk") && opt.chunk <= 0) fail("--chunk must be at least 1");
  const std::string out = args.require("out");
  const Model model(args.require("model"));
  const SafetensorsFile golden(args.require("trace"));
  write_trace(run_trace(model, golden, opt), out);
  if (args.has("compare")) {
    const SafetensorsFile ours(out);
    std::fputs(compare_trace(golden, ours, opt.teacher_forced).summary().c_str(), stdout);
  }
  return 0;
}

}  // namespace

DSV4_COMMAND("trace", "replay a golden scenario and write dsv4's tensors", run_trace_cmd);

}  // namespace dsv4::cli
