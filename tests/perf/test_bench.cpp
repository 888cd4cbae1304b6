// `dsv4 bench` end to end on a tiny synth checkpoint: every figure is present
// and sane, the KV bytes per token equal the spec §6.3 formula and the state's
// packed count made here from config.json (the state stores that layout),
// and user errors exit 1.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

struct CmdResult {
  int rc = -1;
  std::string out;
};

CmdResult run(const std::string& args, bool merge_stderr = true) {
  const std::string cmd =
      std::string(DSV4_BINARY) + " " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  CmdResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

class BenchCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new fs::path(fs::temp_directory_path() / ("dsv4-test-bench-" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    const CmdResult s = run("synth --like tiny --seed 3 --quiet --out " + dir_->string());
    ASSERT_EQ(s.rc, 0) << s.out;
    std::ifstream in(*dir_ / "config.json");
    config_ = new nlohmann::json(nlohmann::json::parse(in));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete config_;
  }
  static fs::path* dir_;
  static nlohmann::json* config_;
};
fs::path* BenchCli::dir_ = nullptr;
nlohmann::json* BenchCli::config_ = nullptr;

void expect_ratio(const nlohmann::json& v, const std::string& what) {
  ASSERT_TRUE(v.is_number()) << what;
  EXPECT_GT(v.get<double>(), 0) << what;
  EXPECT_LT(v.get<double>(), 1.5) << what;
}

TEST_F(BenchCli, JsonFiguresArePresentAndSane) {
  // Short contexts: 256 decodes entirely after a forward fill, 1024 is
  // forward-filled to 256 tokens and repeated.
  const CmdResult r = run("bench --json --model " + dir_->string() +
                              " --contexts 256,1024 --prefill 64 --decode-tokens 2"
                              " --fill-tokens 256 --stream-bytes 96M --stream-runs 2"
                              " --fma-seconds 0.1",
                          false);
  ASSERT_EQ(r.rc, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const nlohmann::json& c = *config_;

  EXPECT_GE(j["machine"]["threads"].get<int>(), 1);
  EXPECT_GT(j["bandwidth"]["bytes_per_second"].get<double>(), 1e8);  // any machine: > 100 MB/s
  EXPECT_EQ(j["bandwidth"]["bytes_counted_per_element"].get<int>(), 24);
  EXPECT_GT(j["fma_peak"]["flops_per_second"].get<double>(), 1e9);

  // Decode bytes per token: what `dsv4 inspect` counts for the checkpoint.
  const CmdResult inspect = run("inspect --json --model " + dir_->string(), false);
  ASSERT_EQ(inspect.rc, 0) << inspect.out;
  const nlohmann::json ins = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(j["model"]["decode_bytes_per_token"], ins["bytes"]["decode_per_token"]) << ins.dump();
  EXPECT_EQ(j["model"]["layers"].get<int64_t>(), c["num_hidden_layers"].get<int64_t>());

  const auto& p = j["prefill"];
  EXPECT_EQ(p["tokens"].get<int64_t>(), 64);
  EXPECT_NEAR(p["tokens_per_second"].get<double>(), 64 / p["seconds"].get<double>(), 1e-6);
  expect_ratio(p["fraction_of_fma_peak"], "prefill fraction of FMA peak");

  ASSERT_EQ(j["decode"].size(), 2u);
  const int64_t contexts[] = {256, 1024};
  for (size_t i = 0; i < 2; ++i) {
    const auto& d = j["decode"][i];
    EXPECT_EQ(d["context"].get<int64_t>(), contexts[i]);
    EXPECT_EQ(d["repeated_to"].get<int64_t>(), contexts[i] - 2);
    EXPECT_LE(d["forward_fill_tokens"].get<int64_t>(), 256);
    EXPECT_GT(d["tokens_per_second"].get<double>(), 0);
    const double bytes = j["model"]["decode_bytes_per_token"].get<double>();
    EXPECT_NEAR(d["weight_bytes_per_second"].get<double>(),
                bytes * d["tokens_per_second"].get<double>(),
                1e-6 * d["weight_bytes_per_second"].get<double>());
    expect_ratio(d["fraction_of_bandwidth"], "decode fraction of bandwidth");
    // The state stores the packed layout: it reads what the spec's does.
    EXPECT_EQ(d["kv_bytes_read_per_token_state"].get<double>(),
              d["kv_bytes_read_per_token_spec"].get<double>());
    EXPECT_GT(d["fraction_of_bandwidth_with_kv"].get<double>(),
              d["fraction_of_bandwidth"].get<double>());
  }
  EXPECT_EQ(j["decode"][0]["forward_fill_tokens"].get<int64_t>(), 254);  // all by forward
  EXPECT_LT(j["decode"][1]["forward_fill_tokens"].get<int64_t>(), 1022);
  // 254 ≡ 1022 (mod 128): the second context reuses the first one's fill.
  EXPECT_EQ(j["decode"][1]["forward_fill_tokens"].get<int64_t>(), 254);
  EXPECT_FALSE(j["decode"][0]["forward_fill_reused"].get<bool>());
  EXPECT_TRUE(j["decode"][1]["forward_fill_reused"].get<bool>());

  // KV per token, spec §6.3: a compressed row is (head_dim − rope) FP8 +
  // rope BF16 + one UE8M0 per 64 NoPE values padded to 8; an indexer key is
  // index_head_dim FP4 + one UE8M0 per 32. Per token: row / ratio per
  // compressed layer, key / 4 per CSA layer.
  const int64_t hd = c["head_dim"], rd = c["qk_rope_head_dim"], ihd = c["index_head_dim"];
  const int64_t nope = hd - rd;
  const int64_t row = nope + 2 * rd + (nope / 64 + 7) / 8 * 8;
  const int64_t key = ihd / 2 + ihd / 32;
  double spec = 0;
  const int64_t layers = c["num_hidden_layers"];
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t r = c["compress_ratios"][l];
    if (r == 0) continue;
    spec += static_cast<double>(row) / r;
    if (r == 4) spec += static_cast<double>(key) / 4;
  }
  const auto& kv = j["kv"];
  EXPECT_EQ(kv["spec_kv_row_bytes"].get<int64_t>(), row);
  EXPECT_EQ(kv["spec_indexer_key_bytes"].get<int64_t>(), key);
  EXPECT_NEAR(kv["spec_bytes_per_token"].get<double>(), spec, 1e-9);
  // The state (packed as above) at the last context: floor(P / ratio) rows
  // per compressed layer, as many keys per CSA layer.
  const int64_t P = kv["state_context_tokens"];
  EXPECT_EQ(P, 1024);  // after the two decode steps
  uint64_t state = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t r = c["compress_ratios"][l];
    if (r == 0) continue;
    state += static_cast<uint64_t>(P / r * row);
    if (r == 4) state += static_cast<uint64_t>(P / r * key);
  }
  EXPECT_EQ(kv["state_growing_bytes"].get<uint64_t>(), state);
  EXPECT_NEAR(kv["state_bytes_per_token"].get<double>(), double(state) / double(P), 1e-9);

  const auto& m = j["memory"];
  EXPECT_GT(m["peak_rss_bytes"].get<uint64_t>(), 0u);
  // The triad's 96 MB arrays are not in the model-phase peak when it could be reset.
  EXPECT_GE(m["peak_rss_with_rooflines_bytes"].get<uint64_t>(), 96u << 20);
  if (m["peak_rss_is_model_phase_only"].get<bool>()) {
    EXPECT_LT(m["peak_rss_bytes"].get<uint64_t>(),
              m["peak_rss_with_rooflines_bytes"].get<uint64_t>());
  }
  EXPECT_GE(m["peak_rss_bytes"].get<uint64_t>(), m["vm_rss_bytes"].get<uint64_t>() / 2);
  EXPECT_GT(m["checkpoint_resident_bytes"].get<uint64_t>(), 0u);
  EXPECT_LE(m["checkpoint_resident_bytes"].get<uint64_t>(),
            m["checkpoint_bytes"].get<uint64_t>() + (1u << 20) * 3);
}

TEST_F(BenchCli, DecodesAtAMillionTokensOfContext) {
  // The tiny config's full context (max_position_embeddings = 2^20). The
  // state holds the packed caches of 2^20 positions (~347 MB).
  const CmdResult r = run("bench --json --model " + dir_->string() +
                              " --contexts 1048576 --prefill 0 --decode-tokens 1"
                              " --fill-tokens 256 --stream-bytes 16M --stream-runs 1"
                              " --fma-seconds 0.02",
                          false);
  ASSERT_EQ(r.rc, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const nlohmann::json& c = *config_;
  ASSERT_EQ(j["decode"].size(), 1u);
  EXPECT_EQ(j["decode"][0]["repeated_to"].get<int64_t>(), 1048575);
  EXPECT_GT(j["decode"][0]["tokens_per_second"].get<double>(), 0);
  EXPECT_EQ(j["kv"]["state_context_tokens"].get<int64_t>(), 1048576);
  // Spec §6.3 packed rows and keys (as in JsonFiguresArePresentAndSane).
  const int64_t hd = c["head_dim"], rd = c["qk_rope_head_dim"], ihd = c["index_head_dim"];
  const int64_t nope = hd - rd;
  const int64_t row = nope + 2 * rd + (nope / 64 + 7) / 8 * 8;
  const int64_t key = ihd / 2 + ihd / 32;
  uint64_t state = 0;
  for (int64_t l = 0; l < c["num_hidden_layers"].get<int64_t>(); ++l) {
    const int64_t r = c["compress_ratios"][l];
    if (r == 0) continue;
    state += static_cast<uint64_t>(1048576 / r * row);
    if (r == 4) state += static_cast<uint64_t>(1048576 / r * key);
  }
  EXPECT_EQ(j["kv"]["state_growing_bytes"].get<uint64_t>(), state);
  EXPECT_GE(j["memory"]["peak_rss_bytes"].get<uint64_t>(), state);
}

TEST_F(BenchCli, TextOutputNamesEveryFigure) {
  const CmdResult r = run("bench --model " + dir_->string() +
                              " --contexts 256 --prefill 32 --decode-tokens 1 --fill-tokens 256"
                              " --stream-bytes 48M --stream-runs 1 --fma-seconds 0.05",
                          false);
  ASSERT_EQ(r.rc, 0) << r.out;
  for (const char* s :
       {"memory bandwidth (triad)", "FP32 FMA peak", "weight bytes read per decode",
        "of the FMA peak", "of bandwidth", "sequence state, measured", "spec 6.3 packed layout",
        "peak RSS (model)", "checkpoint resident", "KV read per token"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
}

TEST_F(BenchCli, UserErrorsExitOneWithAMessage) {
  const std::string m = " --model " + dir_->string() + " --fma-seconds 0.01";
  struct Case {
    std::string args, message;
  };
  for (const Case& k : std::vector<Case>{
           {"--decode-tokens 0", "--decode-tokens must be at least 1"},
           {"--threads 0", "--threads must be between"},
           {"--contexts 2 --prefill 0 --stream-bytes 1M", "is not longer than --decode-tokens"},
           {"--contexts 4000000 --prefill 0 --stream-bytes 1M",
            "exceeds the model's max_position_embeddings"},
           {"--fill-tokens 10 --prefill 0 --stream-bytes 1M", "--fill-tokens must be at least"},
           {"--stream-bytes 12Q", "unknown size suffix"},
       }) {
    const CmdResult r = run("bench " + k.args + m);
    EXPECT_EQ(r.rc, 1) << k.args << "\n" << r.out;
    EXPECT_NE(r.out.find("dsv4 bench: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(k.message), std::string::npos) << k.args << "\n" << r.out;
  }
}

}  // namespace
}  // namespace dsv4
