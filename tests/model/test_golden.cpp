// Golden tiny-a (tests/data/golden/README.md): both scenarios through the
// library, teacher-forced (whole prompt and in chunks) and free-running,
// against the §7 tolerances. The measured figures are printed (and recorded
// in docs/fidelity.md).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <unistd.h>

#include "golden_checks.h"
#include "model/model.h"
#include "model/trace.h"

namespace dsv4 {
namespace {

class GoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = std::make_unique<Model>(testing::golden_dir() + "/checkpoint");
  }
  static void TearDownTestSuite() { model_.reset(); }

  // Runs a trace, writes it (the comparison reads files, like `dsv4 trace`)
  // and returns the §7 figures.
  TraceComparison run(const std::string& scenario, const TraceOptions& opt) {
    const SafetensorsFile golden(testing::golden_dir() + "/" + scenario);
    const std::string out = (std::filesystem::temp_directory_path() /
                             ("dsv4_golden_" + std::to_string(::getpid()) + ".safetensors"))
                                .string();
    write_trace(run_trace(*model_, golden, opt), out);
    const SafetensorsFile ours(out);
    TraceComparison c = compare_trace(golden, ours, opt.teacher_forced);
    std::filesystem::remove(out);
    std::printf("[%s, chunk %lld] %s", scenario.c_str(), static_cast<long long>(opt.chunk),
                c.summary().c_str());
    return c;
  }

  static std::unique_ptr<Model> model_;
};
std::unique_ptr<Model> GoldenTest::model_;

TEST_F(GoldenTest, ShortTeacherForced) {
  const TraceComparison c = run("golden_short.safetensors", {});
  testing::expect_teacher_forced_ok(c);
  // The short scenario has no near ties: the prefill is reproduced to the bit.
  for (double r : c.prefill_block_rel) EXPECT_LE(r, 1e-6);
}

TEST_F(GoldenTest, LongTeacherForced) {
  const TraceComparison c = run("golden.safetensors", {});
  testing::expect_teacher_forced_ok(c);
  // At the measured noise floor of correct implementations (6.8e-3 per prefill block).
  for (double r : c.prefill_block_rel) EXPECT_LE(r, 6.8e-3);
}

class GoldenChunkTest : public GoldenTest, public ::testing::WithParamInterface<int> {};

TEST_P(GoldenChunkTest, LongTeacherForcedInChunks) {
  TraceOptions opt;
  opt.chunk = GetParam();
  const TraceComparison c = run("golden.safetensors", opt);
  testing::expect_teacher_forced_ok(c);
  for (double r : c.prefill_block_rel) EXPECT_LE(r, 6.8e-3);
}

TEST_P(GoldenChunkTest, ShortTeacherForcedInChunks) {
  TraceOptions opt;
  opt.chunk = GetParam();
  testing::expect_teacher_forced_ok(run("golden_short.safetensors", opt));
}

INSTANTIATE_TEST_SUITE_P(Chunks, GoldenChunkTest, ::testing::Values(1, 7, 16, 64));

TEST_F(GoldenTest, FreeRunning) {
  TraceOptions opt;
  opt.teacher_forced = false;
  testing::expect_free_running_ok(run("golden.safetensors", opt));
  const TraceComparison s = run("golden_short.safetensors", opt);
  testing::expect_free_running_ok(s);
  EXPECT_GE(s.logits_top1_fraction, 0.9);  // the short scenario is almost exact
}

TEST_F(GoldenTest, FreeRunningInChunks) {
  TraceOptions opt;
  opt.teacher_forced = false;
  opt.chunk = 16;
  testing::expect_free_running_ok(run("golden.safetensors", opt));
}

}  // namespace
}  // namespace dsv4
