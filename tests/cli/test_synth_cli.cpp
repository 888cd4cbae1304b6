// `dsv4 synth` and `dsv4 inspect` end to end: the binary's output folders
// load, inspect's JSON agrees with counts made here from the files, and user
// errors exit 1 with a message naming the problem.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "model/checkpoint.h"
#include "model/weights.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

struct CmdResult {
  int rc = -1;
  std::string out;  // stdout and stderr
};

CmdResult run(const std::string& args) {
  const std::string cmd = std::string(DSV4_BINARY) + " " + args + " 2>&1";
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

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class SynthCli : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("dsv4-test-synth-cli-") + info->name() + "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  fs::path dir_;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

TEST_F(SynthCli, TinyShardedLoadsAndInspectAgreesWithTheFiles) {
  const CmdResult s = run("synth --like tiny --seed 9 --shard-bytes 4000000 --out " + dir());
  ASSERT_EQ(s.rc, 0) << s.out;
  Checkpoint ckpt(dir());
  bind_weights(ckpt);
  EXPECT_EQ(ckpt.num_shards(), 3u);

  const CmdResult r = run("inspect --json --model " + dir());
  ASSERT_EQ(r.rc, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  // Counts made here from the tensors: parameters are the main model's
  // non-scale, non-table elements, a packed FP4 byte counting two.
  int64_t params = 0, tensors = 0;
  uint64_t bytes = 0;
  for (const auto& [name, t] : ckpt.tensors()) {
    ++tensors;
    bytes += t->nbytes;
    if (name.rfind("mtp.", 0) == 0 || ends_with(name, ".scale") || ends_with(name, ".tid2eid"))
      continue;
    params += t->numel() * (t->dtype == DType::I8 ? 2 : 1);
  }
  EXPECT_EQ(j["params"]["total"].get<int64_t>(), params);
  EXPECT_EQ(j["bytes"]["total"].get<uint64_t>(), bytes);
  EXPECT_EQ(j["num_tensors"].get<int64_t>(), tensors);
  const nlohmann::json index = nlohmann::json::parse(slurp(dir_ / "model.safetensors.index.json"));
  EXPECT_EQ(j["bytes"]["total"], index["metadata"]["total_size"]);
  int64_t dtype_count = 0;
  for (const auto& d : j["dtypes"]) dtype_count += d["count"].get<int64_t>();
  EXPECT_EQ(dtype_count, tensors);
  // Schedule as in the config: 0 window, 1 CSA, 2 HCA, 3 CSA, MTP window; 2 hash layers.
  const auto& cfg = ckpt.config();
  ASSERT_EQ(j["layers"].size(), static_cast<size_t>(cfg.n_layers + cfg.n_mtp_layers));
  const char* kinds[] = {"window", "CSA", "HCA", "CSA", "window"};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(j["layers"][i]["attention"], kinds[i]) << i;
    EXPECT_EQ(j["layers"][i]["routing"], i < 2 ? "hash" : "score") << i;
  }
  EXPECT_EQ(j["kv"]["row_bytes"], 584);
  EXPECT_DOUBLE_EQ(j["kv"]["bytes_per_token"].get<double>(), 2 * (584 + 68) / 4.0 + 584 / 128.0);
  // Weights are mapped, not copied: residency is reported, never above the file sizes.
  EXPECT_EQ(j["memory"]["checkpoint_bytes"].get<uint64_t>(), bytes);
  uint64_t file_pages = 0;  // what the mappings can hold: whole files, page-rounded
  for (const auto& e : std::filesystem::directory_iterator(dir_))
    if (e.path().extension() == ".safetensors") file_pages += (e.file_size() + 4095) / 4096 * 4096;
  EXPECT_LE(j["memory"]["checkpoint_resident_bytes"].get<uint64_t>(), file_pages);
  EXPECT_GT(j["memory"]["process_rss_bytes"].get<uint64_t>(), 0u);

  const CmdResult text = run("inspect --model " + dir());
  ASSERT_EQ(text.rc, 0) << text.out;
  for (const char* part : {"Layer schedule", "Parameters", "read per decoded token", "KV cache",
                           "Tensors by dtype", "F8_E4M3", "I8", "F8_E8M0", "resident"})
    EXPECT_NE(text.out.find(part), std::string::npos) << part << "\n" << text.out;
}

TEST_F(SynthCli, InspectLikeFlashWithoutFiles) {
  const CmdResult r = run("inspect --like flash");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (const char* part : {"3157.25 B", "3514.25 B", "2 window-only, 21 CSA, 20 HCA", "284.332B"})
    EXPECT_NE(r.out.find(part), std::string::npos) << part << "\n" << r.out;
  const CmdResult p = run("inspect --like pro --json");
  ASSERT_EQ(p.rc, 0) << p.out;
  const auto j = nlohmann::json::parse(p.out);
  EXPECT_NEAR(j["kv"]["main_bytes_per_token"].get<double>(), 4521, 1);
  EXPECT_NEAR(j["kv"]["bytes_per_token"].get<double>(), 5031, 1);
}

TEST_F(SynthCli, BaseVariantWithTokenizer) {
  const std::string tok = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";
  const CmdResult s =
      run("synth --like tiny --layers 2 --expert-dtype fp8 --tokenizer " + tok + " --out " + dir());
  ASSERT_EQ(s.rc, 0) << s.out;
  EXPECT_EQ(slurp(dir_ / "tokenizer.json"), slurp(fs::path(tok) / "tokenizer.json"));
  EXPECT_EQ(slurp(dir_ / "tokenizer_config.json"), slurp(fs::path(tok) / "tokenizer_config.json"));
  Checkpoint ckpt(dir());
  const ModelWeights w = bind_weights(ckpt);
  EXPECT_EQ(ckpt.config().vocab_size, 129280);
  EXPECT_EQ(ckpt.config().n_layers, 2);
  EXPECT_EQ(ckpt.config().compress_ratios, (std::vector<int64_t>{0, 4, 0}));
  EXPECT_EQ(w.layers[1].ffn.experts[0].w1.weight.dtype, DType::F8_E4M3);
  EXPECT_EQ(w.layers[1].ffn.experts[0].w1.scale.dtype, DType::F32);
  EXPECT_TRUE(fs::exists(dir_ / "model.safetensors"));  // under one shard: unsharded
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors.index.json"));
}

TEST_F(SynthCli, UserErrors) {
  struct Case {
    std::string args, message;
  } cases[] = {
      {"synth --like nope --out " + dir(), "dsv4 synth: --like nope is not a known preset"},
      {"synth --like tiny", "dsv4 synth: missing required option --out"},
      {"synth --like tiny --layers 0 --out " + dir(), "--layers must be at least 1"},
      {"synth --like flash --layers 44 --out " + dir(), "--layers 44 is out of range"},
      {"synth --like tiny --dim 100 --out " + dir(), "--dim 100 must be a multiple of 32"},
      {"synth --like tiny --expert-dtype int4 --out " + dir(), "--expert-dtype int4"},
      {"synth --like tiny --seed x --out " + dir(), "--seed expects an integer"},
      {"synth --like tiny --tokenizer /nonexistent --out " + dir(), "no tokenizer.json"},
      {"synth --like tiny --bogus --out " + dir(), "unknown option --bogus"},
      {"inspect --model /nonexistent/model", "/nonexistent/model: not a model folder"},
      {"inspect --like flash --model x", "either --model or --like"},
      {"inspect --model x --layers 2", "--layers only applies with --like"},
  };
  for (const auto& c : cases) {
    const CmdResult r = run(c.args);
    EXPECT_EQ(r.rc, 1) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.args << "\n" << r.out;
  }
  EXPECT_EQ(run("synth --help").rc, 0);
  EXPECT_EQ(run("inspect --help").rc, 0);
}

TEST_F(SynthCli, InspectRejectsABrokenCheckpoint) {
  ASSERT_EQ(run("synth --like tiny --shard-bytes 4000000 --out " + dir()).rc, 0);
  fs::remove(dir_ / "model-00002-of-00003.safetensors");
  const CmdResult r = run("inspect --model " + dir());
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("model-00002-of-00003.safetensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("missing shard"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace dsv4
