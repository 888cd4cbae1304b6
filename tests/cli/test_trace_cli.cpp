// `dsv4 trace` on the golden tiny-a scenarios (the same §7 checks as the
// library tests, through the binary), plus `dsv4 logits` / `dsv4 generate`
// and their error handling.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "../model/golden_checks.h"
#include "model/trace.h"
#include "util/safetensors.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

struct Result {
  int status;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TraceCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("dsv4_trace_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result run(const std::string& args) {
    const std::string cmd = std::string(DSV4_BINARY) + " " + args + " > " +
                            (dir_ / "stdout").string() + " 2> " + (dir_ / "stderr").string();
    const int raw = std::system(cmd.c_str());
    return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(dir_ / "stdout"), slurp(dir_ / "stderr")};
  }

  TraceComparison trace(const std::string& scenario, const std::string& extra, bool teacher) {
    const std::string golden = testing::golden_dir() + "/" + scenario;
    const std::string out = (dir_ / "trace.safetensors").string();
    const Result r = run("trace --model " + testing::golden_dir() + "/checkpoint --trace " +
                         golden + " --out " + out + " " + extra);
    EXPECT_EQ(r.status, 0) << r.err;
    const SafetensorsFile g(golden), ours(out);
    // Every golden tensor is produced, with the same shape and dtype.
    for (const auto& [name, t] : g.tensors()) {
      if (name.find("_gap.") != std::string::npos) continue;  // golden-only tie diagnostics
      EXPECT_TRUE(ours.has(name)) << name;
      if (!ours.has(name)) continue;
      EXPECT_EQ(ours.get(name).shape, t.shape) << name;
      EXPECT_EQ(ours.get(name).dtype, t.dtype) << name;
    }
    const TraceComparison c = compare_trace(g, ours, teacher);
    std::printf("[dsv4 trace %s %s] %s", scenario.c_str(), extra.c_str(), c.summary().c_str());
    return c;
  }

  fs::path dir_;
};

TEST_F(TraceCli, ShortTeacherForced) {
  testing::expect_teacher_forced_ok(trace("golden_short.safetensors", "", true));
}

TEST_F(TraceCli, LongTeacherForced) {
  const TraceComparison c = trace("golden.safetensors", "", true);
  testing::expect_teacher_forced_ok(c);
  for (double r : c.prefill_block_rel) EXPECT_LE(r, 6.8e-3);
}

TEST_F(TraceCli, LongTeacherForcedInChunks) {
  testing::expect_teacher_forced_ok(trace("golden.safetensors", "--chunk 7", true));
}

TEST_F(TraceCli, FreeRunning) {
  testing::expect_free_running_ok(trace("golden_short.safetensors", "--free-running", false));
  testing::expect_free_running_ok(trace("golden.safetensors", "--free-running --chunk 64", false));
}

TEST_F(TraceCli, ErrorsNameTheProblem) {
  Result r = run("trace --model " + testing::golden_dir() + "/checkpoint --out x.safetensors");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--trace"), std::string::npos) << r.err;
  r = run("trace --model /nonexistent --trace x --out y");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("/nonexistent"), std::string::npos) << r.err;
  r = run("trace --model " + testing::golden_dir() + "/checkpoint --trace " +
          testing::golden_dir() + "/golden.safetensors --out y --chunk 0");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--chunk"), std::string::npos) << r.err;
}

TEST_F(TraceCli, LogitsMatchTheShortScenario) {
  // The short scenario's prompt and first decode tokens, through `dsv4 logits`.
  const std::string golden = testing::golden_dir() + "/golden_short.safetensors";
  const SafetensorsFile g(golden);
  const TensorView& tokens = g.get("tokens");
  const int64_t S = g.get("prefill.hidden.layer0").dim(0);
  std::string prompt, decode;
  for (int64_t i = 0; i < S + 2; ++i) {
    std::string& s = i < S ? prompt : decode;
    if (!s.empty()) s.push_back(',');
    s.append(std::to_string(tokens.as<int32_t>()[i]));
  }
  const std::string out = (dir_ / "logits.safetensors").string();
  const Result r = run("logits --model " + testing::golden_dir() + "/checkpoint --prompt-ids " +
                       prompt + " --decode-ids " + decode + " --chunk 2 --out " + out);
  ASSERT_EQ(r.status, 0) << r.err;
  const SafetensorsFile ours(out);
  const int64_t vocab = g.get("prefill.logits").dim(0);
  auto rel = [&](const float* a, const float* b) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < vocab; ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return std::sqrt(num / den);
  };
  EXPECT_LT(rel(ours.get("prefill").as<float>(), g.get("prefill.logits").as<float>()), 0.15);
  EXPECT_LT(rel(ours.get("decode.0").as<float>(), g.get("decode.logits").as<float>()), 0.15);
  EXPECT_LT(rel(ours.get("decode.1").as<float>(), g.get("decode.logits").as<float>() + vocab),
            0.15);
}

TEST_F(TraceCli, GenerateGreedyIsDeterministicAndSamplingIsSeeded) {
  const std::string base = "generate --model " + testing::golden_dir() +
                           "/checkpoint --prompt-ids 0,25,509,313,222 --max-tokens 6";
  const Result a = run(base), b = run(base);
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_FALSE(a.out.empty());
  const Result s1 = run(base + " --temperature 1 --seed 5"),
               s2 = run(base + " --temperature 1 --seed 5");
  ASSERT_EQ(s1.status, 0) << s1.err;
  EXPECT_EQ(s1.out, s2.out);
  const Result bad = run(base + " --temperature -1");
  EXPECT_EQ(bad.status, 1);
}

}  // namespace
}  // namespace dsv4
