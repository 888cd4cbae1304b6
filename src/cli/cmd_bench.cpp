// dsv4 bench: this machine's rooflines (memory bandwidth, FP32 FMA peak) and
// the model's prefill and decode speed against them, in one run. The formulas
// are in docs/bench.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/roofline.h"
#include "kernels/isa.h"
#include "model/inspect.h"
#include "model/model.h"
#include "model/state.h"
#include "util/error.h"
#include "util/safetensors.h"
#include "util/threadpool.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage = R"(usage: dsv4 bench --model DIR [options]

Measures, in one run: this machine's memory bandwidth (STREAM triad over at
least 4x the last-level cache) and FP32 FMA peak (register-only FMA chains on
every thread); the model's prefill tokens/s and FLOP/s against that peak; its
decode tokens/s at each context length, the weight bytes read per decoded
token and the bandwidth that implies against the measured one; KV bytes per
token of context (as the sequence state stores them, and the packed layout of
the architecture spec 6.3); resident and peak memory. See docs/bench.md.

Context fill: the first tokens of each context (at most --fill-tokens) go
through the real forward; the compressed KV rows and indexer keys are then
repeated up to the context length (same cache sizes, repeated values), and the
timed decode steps are the real forward at that context.

options:
  --model DIR          checkpoint folder (default: the bundled demo model)
  --threads N          compute threads (default: DSV4_THREADS or all cores)
  --contexts LIST      context lengths to decode at (default 1024,16384,131072)
  --prefill N          prefill tokens timed in one forward call (default 2048; 0 = skip)
  --decode-tokens N    timed decode steps per context (default 8)
  --fill-tokens N      at most N tokens of each context through the real forward (default 1024)
  --stream-bytes B     triad arrays in total (default max(4 x LLC, 2G); K/M/G suffixes)
  --stream-runs N      triad runs, the best counts (default 5)
  --fma-seconds S      FMA peak measuring time (default 0.5)
  --max-resident-bytes B   keep the weights' resident pages under B (see DSV4_MAX_RESIDENT_BYTES)
  --seed S             seed of the random prompt tokens (default 0)
  --json               machine-readable output
)";

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double load_average() {
  double l[1] = {0};
  return getloadavg(l, 1) == 1 ? l[0] : -1;
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

std::string human(double v, const char* unit) {
  const char* prefix[] = {"", "k", "M", "G", "T", "P"};
  int i = 0;
  while (std::abs(v) >= 1000 && i < 5) v /= 1000, ++i;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g %s%s", v, prefix[i], unit);
  return buf;
}

int run_bench(int argc, char** argv) {
  Args args("bench", argc, argv,
            {{"model", true},
             {"threads", true},
             {"contexts", true},
             {"prefill", true},
             {"decode-tokens", true},
             {"fill-tokens", true},
             {"stream-bytes", true},
             {"stream-runs", true},
             {"fma-seconds", true},
             {"max-resident-bytes", true},
             {"seed", true},
             {"json", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!args.positional().empty()) fail("unexpected argument \"", args.positional()[0], "\"");
  if (args.has("threads")) {
    const int64_t t = args.get_int("threads", 0);
    if (t < 1 || t > 1024) fail("--threads must be between 1 and 1024");
    ThreadPool::set_global_threads(static_cast<int>(t));
  }
  const std::vector<int64_t> contexts =
      parse_id_list(args.get("contexts", "1024,16384,131072"), "--contexts");
  const int64_t prefill = args.get_int("prefill", 2048);
  const int64_t decode_tokens = args.get_int("decode-tokens", 8);
  const int64_t fill_limit = args.get_int("fill-tokens", 1024);
  const int stream_runs = static_cast<int>(args.get_int("stream-runs", 5));
  const double fma_seconds = args.get_double("fma-seconds", 0.5);
  if (prefill < 0) fail("--prefill must not be negative");
  if (decode_tokens < 1) fail("--decode-tokens must be at least 1");
  if (stream_runs < 1) fail("--stream-runs must be at least 1");
  if (!(fma_seconds > 0)) fail("--fma-seconds must be positive");
  if (args.has("max-resident-bytes"))
    set_max_resident_bytes(parse_byte_size(args.get("max-resident-bytes"), "--max-resident-bytes"));
  const bool json = args.has("json");
  auto note = [&](const std::string& s) {
    if (!json) std::fprintf(stderr, "%s\n", s.c_str());
  };

  nlohmann::ordered_json out;
  const int threads = ThreadPool::global().num_threads();
  const uint64_t llc = last_level_cache_bytes();
  out["machine"] = {{"threads", threads},
                    {"kernels", kernels::isa_name(kernels::active_isa())},
                    {"last_level_cache_bytes", llc},
                    {"load_average_at_start", load_average()}};

  // The model and its per-token costs (counted as `dsv4 inspect` counts them).
  const std::string dir = args.has("model") ? args.get("model") : default_model_dir();
  note("loading " + dir + "...");
  const double t_load = now_seconds();
  const Model model(dir);
  const double load_seconds = now_seconds() - t_load;
  const ModelConfig& cfg = model.config();
  const ModelSummary summary = summarize(cfg, checkpoint_tensor_stats(model.checkpoint()));
  const uint64_t bytes_per_token = summary.decode_bytes_per_token;
  // Matrix FLOP per prefilled token: 2 per active weight, without the
  // embedding (a row lookup) and the head (applied to the last token only).
  const double matrix_flop_per_token =
      2.0 * static_cast<double>(summary.params_active - summary.params_embed - summary.params_head);
  out["model"] = {{"dir", dir},
                  {"layers", cfg.n_layers},
                  {"hidden_size", cfg.dim},
                  {"checkpoint_bytes", summary.bytes_total},
                  {"load_seconds", load_seconds},
                  {"decode_bytes_per_token", bytes_per_token},
                  {"params_active", summary.params_active},
                  {"prefill_matrix_flop_per_token", matrix_flop_per_token}};

  const int64_t align = context_alignment(cfg);
  if (fill_limit < 2 * align)
    fail("--fill-tokens must be at least ", 2 * align,
         " (twice the lcm of the window and the compression ratios, so that every compressed "
         "layer has rows to repeat)");
  for (int64_t context : contexts) {
    if (context - decode_tokens < 1)
      fail("context ", context, " is not longer than --decode-tokens");
    if (context > cfg.max_position_embeddings)
      fail("context ", context, " exceeds the model's max_position_embeddings (",
           cfg.max_position_embeddings, ")");
  }

  // Rooflines.
  const uint64_t stream_bytes = args.has("stream-bytes")
                                    ? parse_byte_size(args.get("stream-bytes"), "--stream-bytes")
                                    : std::max<uint64_t>(4 * llc, uint64_t(2) << 30);
  note("measuring memory bandwidth (triad over " + human(double(stream_bytes), "B") + ")...");
  const TriadResult triad = measure_triad(stream_bytes, stream_runs);
  out["bandwidth"] = {{"bytes_per_second", triad.bytes_per_second},
                      {"array_bytes_total", 3 * triad.elements * 8},
                      {"bytes_counted_per_element", 24},
                      {"runs", triad.runs},
                      {"best_seconds", triad.best_seconds}};
  note("measuring FP32 FMA peak...");
  const FmaPeakResult fma = measure_fma_peak(fma_seconds);
  out["fma_peak"] = {{"isa", fma.isa},
                     {"threads", fma.threads},
                     {"flops_per_second", fma.flops_per_second},
                     {"seconds", fma.seconds}};

  // The triad's arrays (gigabytes) would dominate the high-water mark: reset
  // it (clear_refs "5", Linux >= 4.0) so that the peak reported is the
  // model's. ru_maxrss from before is kept as the whole run's peak.
  const uint64_t peak_with_rooflines = read_memory_status().peak_rss;
  const bool peak_reset = reset_peak_rss();

  std::mt19937_64 rng(static_cast<uint64_t>(args.get_int("seed", 0)));
  auto random_tokens = [&](int64_t n) {
    std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(cfg.vocab_size - 1));
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = d(rng);
    return t;
  };

  // Prefill: one forward call over `prefill` tokens.
  if (prefill > 0) {
    note("prefill of " + std::to_string(prefill) + " tokens...");
    const std::vector<int32_t> tokens = random_tokens(prefill);
    auto state = model.new_sequence();
    state->frame.prompt_len = prefill;
    std::vector<float> logits;
    const double t0 = now_seconds();
    model.forward(*state, tokens, &logits);
    const double dt = now_seconds() - t0;
    const double flops =
        matrix_flop_per_token * static_cast<double>(prefill) + 2.0 * summary.params_head;
    out["prefill"] = {{"tokens", prefill},
                      {"seconds", dt},
                      {"tokens_per_second", static_cast<double>(prefill) / dt},
                      {"matrix_flops_per_second", flops / dt},
                      {"fraction_of_fma_peak", flops / dt / fma.flops_per_second}};
  }

  // Decode at each context.
  nlohmann::ordered_json decode = nlohmann::ordered_json::array();
  nlohmann::ordered_json kv;
  double first_seconds_per_token = 0;
  std::unique_ptr<SequenceState> cached_fill;
  int64_t cached_fill_tokens = -1;
  std::vector<float> cached_logits;
  for (size_t ci = 0; ci < contexts.size(); ++ci) {
    const int64_t context = contexts[ci];
    // The timed steps run at positions context − N .. context − 1, so the last
    // one attends to exactly `context` tokens.
    const int64_t start = context - decode_tokens;
    // Real-forward part: all of it when short, else the largest F ≤ fill
    // limit in the same phase as `start` (mod align), so that the caches can
    // be extended by whole periods.
    int64_t fill = start;
    if (start > fill_limit) fill = fill_limit - ((fill_limit - start) % align + align) % align;
    // Contexts whose starts agree mod `align` share the same forward fill
    // (the defaults do: all are multiples of 128): reuse a copy of the last one.
    const bool reuse = cached_fill && cached_fill_tokens == fill;
    note("context " + std::to_string(context) + ": forward fill of " + std::to_string(fill) +
         " tokens" + (reuse ? " (reused)" : "") +
         (fill < start ? ", repeated to " + std::to_string(start) : std::string()) + "...");
    std::vector<float> logits;
    const double t0 = now_seconds();
    if (!reuse) {
      cached_fill = model.new_sequence();
      cached_fill->frame.prompt_len = fill;
      const std::vector<int32_t> tokens = random_tokens(fill);
      const int64_t chunk = std::max<int64_t>(prefill, 256);
      for (int64_t p = 0; p < fill; p += chunk) {
        const int64_t n = std::min(chunk, fill - p);
        model.forward(*cached_fill,
                      std::span<const int32_t>(tokens.data() + p, static_cast<size_t>(n)),
                      &cached_logits);
      }
      cached_fill_tokens = fill;
    }
    const double fill_forward_seconds = now_seconds() - t0;
    auto state = std::make_unique<SequenceState>(*cached_fill);
    logits = cached_logits;
    const double t1 = now_seconds();
    if (start > fill) replicate_context(cfg, *state, start);
    const double replicate_seconds = now_seconds() - t1;
    state->frame = ForwardFrame{};  // decode calls: each its own frame

    // Timed decode: the real forward, one token per call, greedy.
    int32_t tok = argmax(logits);
    std::vector<double> step;
    for (int64_t i = 0; i < decode_tokens; ++i) {
      const double s0 = now_seconds();
      model.forward(*state, std::span<const int32_t>(&tok, 1), &logits);
      step.push_back(now_seconds() - s0);
      tok = argmax(logits);
    }
    double total = 0;
    for (double s : step) total += s;
    const double per_token = total / static_cast<double>(decode_tokens);
    std::vector<double> sorted = step;
    std::sort(sorted.begin(), sorted.end());
    if (ci == 0) first_seconds_per_token = per_token;
    const double achieved = static_cast<double>(bytes_per_token) / per_token;
    // KV reads of the steps, averaged over their contexts (start+1 .. context).
    KvReadBytes kv_read;
    for (int64_t i = 1; i <= decode_tokens; ++i) {
      const KvReadBytes k = kv_read_bytes_per_token(cfg, start + i);
      kv_read.state += k.state / static_cast<double>(decode_tokens);
      kv_read.spec += k.spec / static_cast<double>(decode_tokens);
    }
    decode.push_back(
        {{"context", context},
         {"forward_fill_tokens", fill},
         {"repeated_to", start},
         {"forward_fill_seconds", fill_forward_seconds},
         {"forward_fill_reused", reuse},
         {"repeat_seconds", replicate_seconds},
         {"decode_tokens", decode_tokens},
         {"seconds_per_token", per_token},
         {"median_seconds_per_token",
          (sorted[(sorted.size() - 1) / 2] + sorted[sorted.size() / 2]) / 2},
         {"tokens_per_second", 1.0 / per_token},
         {"weight_bytes_per_second", achieved},
         {"fraction_of_bandwidth", achieved / triad.bytes_per_second},
         {"kv_bytes_read_per_token_state", kv_read.state},
         {"kv_bytes_read_per_token_spec", kv_read.spec},
         {"weight_and_kv_bytes_per_second",
          (static_cast<double>(bytes_per_token) + kv_read.state) / per_token},
         {"fraction_of_bandwidth_with_kv", (static_cast<double>(bytes_per_token) + kv_read.state) /
                                               per_token / triad.bytes_per_second},
         {"time_vs_first_context", per_token / first_seconds_per_token}});

    // KV bytes per token, from the state at the largest context.
    if (ci + 1 == contexts.size()) {
      const StateBytes sb = state_bytes(*state);
      kv = {{"state_context_tokens", state->pos},
            {"state_layout",
             "packed (spec 6.3: FP8 NoPE + BF16 RoPE + UE8M0 rows, FP4 indexer keys)"},
            {"state_growing_bytes", sb.growing},
            {"state_fixed_bytes", sb.fixed},
            {"state_bytes_per_token", static_cast<double>(sb.growing) / double(state->pos)},
            {"spec_kv_row_bytes", summary.kv_row_bytes},
            {"spec_indexer_key_bytes", summary.indexer_key_bytes},
            {"spec_main_bytes_per_token", summary.kv_main_bytes_per_token},
            {"spec_indexer_bytes_per_token", summary.kv_indexer_bytes_per_token},
            {"spec_bytes_per_token", summary.kv_bytes_per_token}};
    }
  }
  out["decode"] = decode;
  out["kv"] = kv;

  const MemoryStatus mem = read_memory_status();
  const ResidencyStats res = residency_stats();
  out["memory"] = {
      {"peak_rss_bytes", peak_reset ? mem.vm_hwm : mem.peak_rss},
      {"peak_rss_is_model_phase_only", peak_reset},
      {"peak_rss_with_rooflines_bytes", std::max(peak_with_rooflines, mem.peak_rss)},
      {"vm_rss_bytes", mem.vm_rss},
      {"rss_anon_bytes", mem.rss_anon},
      {"rss_file_bytes", mem.rss_file},
      {"checkpoint_resident_bytes", mapped_resident_bytes(model.checkpoint().dir())},
      {"checkpoint_resident_2mib_page_bytes", mapped_huge_page_bytes(model.checkpoint().dir())},
      {"checkpoint_bytes", summary.bytes_total},
      {"resident_budget_bytes", res.budget},
      {"resident_trims", res.trims},
      {"max_file_rss_seen_bytes", res.max_file_rss}};
  out["machine"]["load_average_at_end"] = load_average();

  if (json) {
    write_stdout(out.dump(2) + "\n");
    return 0;
  }
  std::string t;
  auto line = [&](const std::string& k, const std::string& v) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "  %-34s %s\n", k.c_str(), v.c_str());
    t += buf;
  };
  char b[128];
  t += "Machine\n";
  line("threads", std::to_string(threads));
  line("linear kernels", std::string(kernels::isa_name(kernels::active_isa())) +
                             " (DSV4_ISA=scalar|avx2|avx512 pins one)");
  line("last-level cache (sysfs)", human(double(llc), "B"));
  std::snprintf(b, sizeof b, "%.2f at start, %.2f at end (other load distorts every figure)",
                out["machine"]["load_average_at_start"].get<double>(), load_average());
  line("load average (1 min)", b);
  line("memory bandwidth (triad)", human(triad.bytes_per_second, "B/s") +
                                       " (24 B/element, best of " + std::to_string(triad.runs) +
                                       " over " + human(double(3 * triad.elements * 8), "B") + ")");
  line("FP32 FMA peak", human(fma.flops_per_second, "FLOP/s") + " (" + fma.isa + ", " +
                            std::to_string(fma.threads) + " threads)");
  t += "\nModel " + dir + "\n";
  line("checkpoint", human(double(summary.bytes_total), "B") + ", loaded in " +
                         std::to_string(load_seconds).substr(0, 5) + " s");
  line("weight bytes read per decode token", human(double(bytes_per_token), "B"));
  if (out.contains("prefill")) {
    const auto& p = out["prefill"];
    t += "\nPrefill\n";
    std::snprintf(b, sizeof b, "%lld tokens in %.3f s: %.4g tokens/s",
                  static_cast<long long>(prefill), p["seconds"].get<double>(),
                  p["tokens_per_second"].get<double>());
    line("prefill", b);
    std::snprintf(b, sizeof b, "%s = %.4f of the FMA peak",
                  human(p["matrix_flops_per_second"].get<double>(), "FLOP/s").c_str(),
                  p["fraction_of_fma_peak"].get<double>());
    line("matrix FLOP/s", b);
  }
  t += "\nDecode (weights read per token / time per token = achieved bandwidth)\n";
  for (const auto& d : decode) {
    std::snprintf(b, sizeof b, "%.4g tok/s, %s = %.4f of bandwidth, %.3gx time of the first",
                  d["tokens_per_second"].get<double>(),
                  human(d["weight_bytes_per_second"].get<double>(), "B/s").c_str(),
                  d["fraction_of_bandwidth"].get<double>(),
                  d["time_vs_first_context"].get<double>());
    line("context " + std::to_string(d["context"].get<int64_t>()), b);
    std::snprintf(
        b, sizeof b, "%lld tokens by forward (%s), repeated to %lld (%.3f s)",
        static_cast<long long>(d["forward_fill_tokens"].get<int64_t>()),
        d["forward_fill_reused"].get<bool>()
            ? "reused"
            : (std::to_string(d["forward_fill_seconds"].get<double>()).substr(0, 5) + " s").c_str(),
        static_cast<long long>(d["repeated_to"].get<int64_t>()), d["repeat_seconds"].get<double>());
    line("  fill", b);
    std::snprintf(b, sizeof b, "%s (state; %s spec packed); with the weights %.4f of bandwidth",
                  human(d["kv_bytes_read_per_token_state"].get<double>(), "B").c_str(),
                  human(d["kv_bytes_read_per_token_spec"].get<double>(), "B").c_str(),
                  d["fraction_of_bandwidth_with_kv"].get<double>());
    line("  KV read per token", b);
  }
  t += "\nKV cache per token of context\n";
  std::snprintf(b, sizeof b, "%.2f B (packed rows; at %lld tokens)",
                kv["state_bytes_per_token"].get<double>(),
                static_cast<long long>(kv["state_context_tokens"].get<int64_t>()));
  line("sequence state, measured", b);
  std::snprintf(b, sizeof b, "%.2f B (%.2f compressed KV + %.2f indexer keys)",
                summary.kv_bytes_per_token, summary.kv_main_bytes_per_token,
                summary.kv_indexer_bytes_per_token);
  line("spec 6.3 packed layout", b);
  t += "\nMemory\n";
  line("peak RSS (model)",
       human(double(out["memory"]["peak_rss_bytes"].get<uint64_t>()), "B") +
           (peak_reset ? " (after the rooflines)" : " (includes the triad arrays)"));
  line("RSS now (anon + file)", human(double(mem.vm_rss), "B") + " (" +
                                    human(double(mem.rss_anon), "B") + " + " +
                                    human(double(mem.rss_file), "B") + ")");
  line(
      "checkpoint resident (smaps)",
      human(double(out["memory"]["checkpoint_resident_bytes"].get<uint64_t>()), "B") + " of " +
          human(double(summary.bytes_total), "B") + " (" +
          human(double(out["memory"]["checkpoint_resident_2mib_page_bytes"].get<uint64_t>()), "B") +
          " of it in 2 MiB pages)");
  if (res.budget)
    line("resident budget", human(double(res.budget), "B") + ", " + std::to_string(res.trims) +
                                " trims, max file RSS seen " +
                                human(double(res.max_file_rss), "B"));
  write_stdout(t);
  return 0;
}

}  // namespace

DSV4_COMMAND("bench", "measure bandwidth/FMA rooflines and the model's prefill and decode speed",
             run_bench);

}  // namespace dsv4::cli
