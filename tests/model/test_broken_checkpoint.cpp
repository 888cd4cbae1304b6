// The broken-checkpoint corpus: each case starts from a good sharded tiny
// synth, breaks one thing (a tensor, a header, a shard, the index, the
// config) and checks the loader (Checkpoint + bind_weights) rejects it with a
// message that names the file and the tensor or field at fault.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "model/checkpoint.h"
#include "model/synth.h"
#include "model/weights.h"
#include "util/error.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file split into its header JSON and data region.
struct Shard {
  ojson header;
  std::string data;
};

Shard read_shard(const fs::path& p) {
  const std::string b = slurp(p);
  uint64_t n = 0;
  std::memcpy(&n, b.data(), 8);
  return {ojson::parse(b.substr(8, n)), b.substr(8 + n)};
}

void write_shard(const fs::path& p, const Shard& s) {
  std::string h = s.header.dump();
  while (h.size() % 8) h.push_back(' ');
  const uint64_t n = h.size();
  std::string b(reinterpret_cast<const char*>(&n), 8);
  spit(p, b + h + s.data);
}

class BrokenCheckpoint : public ::testing::Test {
 protected:
  static fs::path base_;

  static void SetUpTestSuite() {
    base_ = fs::temp_directory_path() / ("dsv4-test-broken-base-" + std::to_string(::getpid()));
    fs::remove_all(base_);
    SynthOptions o;
    o.like = "tiny";
    o.seed = 3;
    o.shard_bytes = 4 << 20;  // three shards
    o.out = base_.string();
    synth_checkpoint(o);
  }
  static void TearDownTestSuite() { fs::remove_all(base_); }

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string tag = info->name();
    for (char& ch : tag)
      if (ch == '/') ch = '_';  // parameterized names hold slashes
    dir_ =
        fs::temp_directory_path() / ("dsv4-test-broken-" + tag + "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::copy(base_, dir_, fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path index_path() const { return dir_ / "model.safetensors.index.json"; }
  ojson index() const { return ojson::parse(slurp(index_path())); }
  void set_index(const ojson& j) { spit(index_path(), j.dump(2)); }
  // The shard file that holds `tensor`, per the index.
  fs::path shard_of(const std::string& tensor) const {
    return dir_ / index()["weight_map"][tensor].get<std::string>();
  }
  ojson config() const { return ojson::parse(slurp(dir_ / "config.json")); }
  void set_config(const ojson& j) { spit(dir_ / "config.json", j.dump(2)); }

  // The loader's message, or "" if the folder loads.
  std::string load_error() const {
    try {
      Checkpoint ckpt(dir_.string());
      bind_weights(ckpt);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  // Loads must fail with a message holding every one of `parts`.
  void expect_rejected(std::initializer_list<std::string> parts) const {
    const std::string msg = load_error();
    ASSERT_FALSE(msg.empty()) << "the broken checkpoint loaded";
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks \"" << p << "\": " << msg;
  }

  fs::path dir_;
};

fs::path BrokenCheckpoint::base_;

constexpr const char* kWqA = "layers.1.attn.wq_a.weight";

TEST_F(BrokenCheckpoint, IntactCopyLoads) {
  EXPECT_EQ(load_error(), "");
}

TEST_F(BrokenCheckpoint, MissingTensor) {
  const std::string name = "layers.2.attn.compressor.ape";
  const fs::path shard = shard_of(name);
  Shard s = read_shard(shard);
  s.header.erase(name);  // its bytes stay as an unused gap
  write_shard(shard, s);
  ojson j = index();
  j["weight_map"].erase(name);
  j["metadata"]["total_size"] = j["metadata"]["total_size"].get<uint64_t>() - 128 * 512 * 4;
  set_index(j);
  expect_rejected({dir_.string(), name, "missing"});
}

TEST_F(BrokenCheckpoint, ExtraTensor) {
  const std::string name = "layers.0.attn.bogus.weight";
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  const uint64_t end = s.data.size();
  s.header[name] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {end, end + 8}}};
  s.data += std::string(8, '\0');
  write_shard(shard, s);
  ojson j = index();
  j["weight_map"][name] = shard.filename().string();
  j["metadata"]["total_size"] = j["metadata"]["total_size"].get<uint64_t>() + 8;
  set_index(j);
  expect_rejected({shard.filename().string(), name, "unexpected tensor"});
}

TEST_F(BrokenCheckpoint, WrongShape) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  auto shape = s.header[kWqA]["shape"];
  s.header[kWqA]["shape"] = {shape[1], shape[0]};  // same byte count, transposed
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), kWqA, "has shape [256, 128], expected [128, 256]"});
}

TEST_F(BrokenCheckpoint, WrongDtype) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  s.header[kWqA]["dtype"] = "I8";  // same element size
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), kWqA, "has dtype I8, expected F8_E4M3"});
}

TEST_F(BrokenCheckpoint, WrongDtypeOfAScale) {
  const std::string name = "layers.0.ffn.experts.3.w2.scale";
  const fs::path shard = shard_of(name);
  Shard s = read_shard(shard);
  s.header[name]["dtype"] = "U8";
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), name, "expected F8_E8M0"});
}

TEST_F(BrokenCheckpoint, TruncatedShard) {
  const fs::path shard = shard_of(kWqA);
  const std::string b = slurp(shard);
  spit(shard, b.substr(0, b.size() - 1000));
  expect_rejected({shard.filename().string(), "beyond", "truncated"});
}

TEST_F(BrokenCheckpoint, ShardShorterThanItsHeaderLength) {
  const fs::path shard = shard_of(kWqA);
  spit(shard, slurp(shard).substr(0, 100));
  expect_rejected({shard.filename().string(), "header length", "exceeds the file size"});
}

TEST_F(BrokenCheckpoint, HeaderLengthBeyondTheFile) {
  const fs::path shard = shard_of(kWqA);
  std::string b = slurp(shard);
  const uint64_t huge = b.size() * 4;
  std::memcpy(b.data(), &huge, 8);
  spit(shard, b);
  expect_rejected({shard.filename().string(), "header length", "exceeds the file size"});
}

TEST_F(BrokenCheckpoint, FileTooShortForAHeaderLength) {
  const fs::path shard = shard_of(kWqA);
  spit(shard, "abc");
  expect_rejected({shard.filename().string(), "truncated"});
}

TEST_F(BrokenCheckpoint, HeaderLyingAboutLength) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  auto off = s.header[kWqA]["data_offsets"];
  s.header[kWqA]["data_offsets"] = {off[0], off[1].get<uint64_t>() - 1};
  write_shard(shard, s);
  expect_rejected(
      {shard.filename().string(), kWqA, "needs 32768 bytes but data_offsets give 32767"});
}

TEST_F(BrokenCheckpoint, HeaderOffsetsBeyondTheData) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  const uint64_t n = s.data.size();
  s.header[kWqA]["data_offsets"] = {n, n + 32768};
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), kWqA, "lies beyond"});
}

TEST_F(BrokenCheckpoint, HeaderOffsetsReversed) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  auto off = s.header[kWqA]["data_offsets"];
  s.header[kWqA]["data_offsets"] = {off[1], off[0]};
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), kWqA, "end < begin"});
}

TEST_F(BrokenCheckpoint, HeaderOffsetsOverlap) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  // Another 1-byte tensor of the same byte count pointed at wq_a's bytes.
  const std::string other = "layers.1.attn.wq_a.weight";
  std::string victim;
  for (auto it = s.header.begin(); it != s.header.end(); ++it)
    if (it.key() != "__metadata__" && it.key() != other && it.value()["dtype"] == "F8_E4M3" &&
        it.value()["shape"] == s.header[other]["shape"])
      victim = it.key();
  ASSERT_FALSE(victim.empty());
  s.header[victim]["data_offsets"] = s.header[other]["data_offsets"];
  write_shard(shard, s);
  // The reader names the file; it does not say which tensors collide.
  expect_rejected({shard.filename().string(), "overlap"});
}

TEST_F(BrokenCheckpoint, MalformedHeaderJson) {
  const fs::path shard = shard_of(kWqA);
  std::string b = slurp(shard);
  b[8] = '[';  // the opening brace
  b[9] = '}';
  spit(shard, b);
  expect_rejected({shard.filename().string(), "malformed safetensors header JSON"});
}

TEST_F(BrokenCheckpoint, HeaderEntryWithoutDtype) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  s.header[kWqA].erase("dtype");
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), kWqA, "needs dtype, shape and data_offsets"});
}

TEST_F(BrokenCheckpoint, UnknownDtype) {
  const fs::path shard = shard_of(kWqA);
  Shard s = read_shard(shard);
  s.header[kWqA]["dtype"] = "F8_E5M9";
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), kWqA, "unknown dtype"});
}

TEST_F(BrokenCheckpoint, IndexListsAMissingShard) {
  const fs::path shard = shard_of(kWqA);
  fs::remove(shard);
  expect_rejected({"model.safetensors.index.json", shard.filename().string(), "missing shard"});
}

TEST_F(BrokenCheckpoint, IndexMapsATensorToTheWrongShard) {
  ojson j = index();
  const std::string home = j["weight_map"][kWqA];
  std::string other;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
    if (it.value() != home) other = it.value();
  ASSERT_FALSE(other.empty());
  j["weight_map"][kWqA] = other;
  set_index(j);
  expect_rejected({other, kWqA, "absent from this shard"});
}

TEST_F(BrokenCheckpoint, ShardHoldsATensorTheIndexDoesNotList) {
  ojson j = index();
  const std::string file = j["weight_map"][kWqA];
  j["weight_map"].erase(kWqA);
  set_index(j);
  expect_rejected({file, kWqA, "not listed in", "model.safetensors.index.json"});
}

TEST_F(BrokenCheckpoint, IndexTotalSizeDisagrees) {
  ojson j = index();
  j["metadata"]["total_size"] = j["metadata"]["total_size"].get<uint64_t>() + 1;
  set_index(j);
  expect_rejected({"model.safetensors.index.json", "metadata.total_size"});
}

TEST_F(BrokenCheckpoint, IndexTotalSizeNotAnInteger) {
  ojson j = index();
  j["metadata"]["total_size"] = "12345";
  set_index(j);
  expect_rejected({"model.safetensors.index.json", "metadata.total_size", "integer"});
}

TEST_F(BrokenCheckpoint, HashTableNamesAnExpertOutOfRange) {
  const std::string name = "layers.0.ffn.gate.tid2eid";
  const fs::path shard = shard_of(name);
  Shard s = read_shard(shard);
  const uint64_t begin = s.header[name]["data_offsets"][0].get<uint64_t>();
  const std::string dtype = s.header[name]["dtype"].get<std::string>();
  const int64_t bad = config()["n_routed_experts"].get<int64_t>();  // one past the last expert
  // Row 3, column 1 (k = num_experts_per_tok entries per row).
  const int64_t k = config()["num_experts_per_tok"].get<int64_t>();
  const size_t width = dtype == "I64" ? 8 : 4;
  const size_t at = begin + static_cast<size_t>(3 * k + 1) * width;
  std::memcpy(s.data.data() + at, &bad, width);  // little-endian: low bytes first
  write_shard(shard, s);
  expect_rejected({shard.filename().string(), name, "token 3", "expert " + std::to_string(bad)});
}

TEST_F(BrokenCheckpoint, IndexNotJson) {
  spit(index_path(), "{\"weight_map\": {");
  expect_rejected({"model.safetensors.index.json", "not valid JSON"});
}

TEST_F(BrokenCheckpoint, IndexWithoutWeightMap) {
  spit(index_path(), "{\"metadata\": {}}");
  expect_rejected({"model.safetensors.index.json", "weight_map"});
}

TEST_F(BrokenCheckpoint, IndexNamesAFileOutsideTheFolder) {
  ojson j = index();
  j["weight_map"][kWqA] = "../elsewhere.safetensors";
  set_index(j);
  expect_rejected({"model.safetensors.index.json", kWqA, "outside the folder"});
}

TEST_F(BrokenCheckpoint, NoWeightsAtAll) {
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.path().extension() == ".safetensors" || e.path().extension() == ".json")
      if (e.path().filename() != "config.json") fs::remove(e.path());
  expect_rejected({dir_.string(), "no model.safetensors"});
}

TEST_F(BrokenCheckpoint, NoConfig) {
  fs::remove(dir_ / "config.json");
  expect_rejected({dir_.string(), "config.json"});
}

TEST_F(BrokenCheckpoint, ConfigNotJson) {
  spit(dir_ / "config.json", "{\"hidden_size\": 256,");
  expect_rejected({"config.json", "not valid JSON"});
}

// Config values: each case edits one field; the message names config.json and the field.
struct ConfigCase {
  const char* name;
  const char* field;     // JSON pointer of the edited field
  const char* value;     // JSON text; "" = remove the field
  const char* expected;  // text the message must hold
  // The file the message must name: config.json for values the parser
  // rejects; for values that parse but disagree with the weights, the shard
  // (".safetensors") or, for a tensor that is absent, the model folder ("").
  const char* where = "config.json";
};

class BrokenConfig : public BrokenCheckpoint, public ::testing::WithParamInterface<ConfigCase> {};

TEST_P(BrokenConfig, Rejected) {
  const ConfigCase& c = GetParam();
  ojson j = config();
  const ojson::json_pointer ptr(c.field);
  if (std::string(c.value).empty())
    j.at(ptr.parent_pointer()).erase(ptr.back());
  else
    j[ptr] = ojson::parse(c.value);
  set_config(j);
  expect_rejected({std::string(c.where).empty() ? dir_.string() : c.where, c.expected});
}

INSTANTIATE_TEST_SUITE_P(
    Corpus, BrokenConfig,
    ::testing::Values(
        ConfigCase{"model_type", "/model_type", "\"deepseek_v3\"", "model_type \"deepseek_v3\""},
        ConfigCase{"architectures", "/architectures", "[\"LlamaForCausalLM\"]", "architectures"},
        ConfigCase{"ratios_length", "/compress_ratios", "[0, 4, 128, 4]", "compress_ratios has 4"},
        ConfigCase{"ratio_value", "/compress_ratios/1", "3", "compress_ratios[1] = 3"},
        ConfigCase{"ratio_type", "/compress_ratios/1", "\"4\"", "compress_ratios"},
        ConfigCase{"scoring_func", "/scoring_func", "\"relu\"", "scoring_func \"relu\""},
        ConfigCase{"topk_method", "/topk_method", "\"greedy\"", "topk_method"},
        ConfigCase{"hidden_act", "/hidden_act", "\"gelu\"", "hidden_act"},
        ConfigCase{"expert_dtype", "/expert_dtype", "\"fp16\"", "expert_dtype \"fp16\""},
        ConfigCase{"missing_hidden", "/hidden_size", "", "hidden_size"},
        ConfigCase{"hidden_type", "/hidden_size", "\"256\"", "hidden_size"},
        ConfigCase{"hidden_negative", "/hidden_size", "-256", "hidden_size"},
        ConfigCase{"too_many_active", "/num_experts_per_tok", "9", "num_experts_per_tok"},
        ConfigCase{"kv_heads", "/num_key_value_heads", "8", "num_key_value_heads"},
        ConfigCase{"tied", "/tie_word_embeddings", "true", "tie_word_embeddings"},
        ConfigCase{"v41_field", "/engram_layer_ids", "[1]", "engram_layer_ids"},
        ConfigCase{"quant_fmt", "/quantization_config/fmt", "\"e5m2\"", "quantization_config.fmt"},
        ConfigCase{"block_size", "/quantization_config/weight_block_size", "[64, 64]",
                   "weight_block_size"},
        ConfigCase{"rope_type", "/rope_scaling/type", "\"linear\"", "rope_scaling.type"},
        ConfigCase{"rope_head_odd", "/qk_rope_head_dim", "63", "qk_rope_head_dim"},
        ConfigCase{"hash_layers", "/num_hash_layers", "7", "num_hash_layers"},
        ConfigCase{"o_groups", "/o_groups", "3", "o_groups"},
        // Values that parse but disagree with the weights: the first tensor that
        // no longer fits is named.
        ConfigCase{"hidden_vs_weights", "/hidden_size", "512",
                   "embed.weight has shape [512, 256], expected [512, 512]", ".safetensors"},
        ConfigCase{"vocab_vs_weights", "/vocab_size", "1000",
                   "embed.weight has shape [512, 256], expected [1000, 256]", ".safetensors"},
        ConfigCase{"expert_dtype_vs_weights", "/expert_dtype", "\"fp8\"",
                   "layers.0.ffn.experts.0.w1.weight has dtype I8, expected F8_E4M3",
                   ".safetensors"},
        ConfigCase{"hash_vs_weights", "/num_hash_layers", "1",
                   "tensor layers.1.ffn.gate.bias is missing", ""},
        ConfigCase{"schedule_vs_weights", "/compress_ratios/0", "4",
                   "tensor layers.0.attn.compressor.ape is missing", ""}),
    [](const ::testing::TestParamInfo<ConfigCase>& info) { return info.param.name; });

}  // namespace
}  // namespace dsv4
