// `dsv4 tokenize` / `dsv4 detokenize` on every golden tokenizer case (batch
// mode, one process per mode) and a sample one process per text, and their
// error handling.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";

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

// Runs `dsv4 <args>` with `input` on stdin.
Result run(const std::string& args, const std::string& input) {
  static int counter = 0;
  const fs::path dir = fs::temp_directory_path() / ("dsv4_cli_tok_" + std::to_string(::getpid()) +
                                                    "_" + std::to_string(counter++));
  fs::create_directories(dir);
  std::ofstream(dir / "in", std::ios::binary) << input;
  const std::string cmd = std::string(DSV4_BINARY) + " " + args + " < " + (dir / "in").string() +
                          " > " + (dir / "out").string() + " 2> " + (dir / "err").string();
  const int raw = std::system(cmd.c_str());
  Result r{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(dir / "out"), slurp(dir / "err")};
  fs::remove_all(dir);
  return r;
}

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> rows;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

TEST(TokenizeCli, SampleOfGoldenCases) {
  const auto cases = read_jsonl(std::string(DSV4_TEST_DATA) + "/tokenizer/cases.jsonl");
  ASSERT_GT(cases.size(), 50u);
  int checked = 0;
  for (size_t i = 0; i < cases.size(); i += 90) {
    const json& c = cases[i];
    SCOPED_TRACE(c["id"].get<std::string>());
    const Result enc = run("tokenize --model " + kModelDir, c["text"].get<std::string>());
    ASSERT_EQ(enc.status, 0) << enc.err;
    EXPECT_EQ(json::parse(enc.out), c["ids"]);
    const Result toks = run("tokenize --tokens --model " + kModelDir, c["text"].get<std::string>());
    ASSERT_EQ(toks.status, 0) << toks.err;
    EXPECT_EQ(json::parse(toks.out), c["tokens"]);
    const Result dec = run("detokenize --model " + kModelDir, c["ids"].dump());
    ASSERT_EQ(dec.status, 0) << dec.err;
    EXPECT_EQ(dec.out, c["decoded"].get<std::string>());
    const Result skip = run("detokenize --skip-special --model " + kModelDir, c["ids"].dump());
    ASSERT_EQ(skip.status, 0) << skip.err;
    EXPECT_EQ(skip.out, c["decoded_skip_special"].get<std::string>());
    ++checked;
  }
  EXPECT_GT(checked, 4);
}

// Every golden case through the binary: one --jsonl process per mode.
TEST(TokenizeCli, EveryGoldenCaseInBatchMode) {
  const auto cases = read_jsonl(std::string(DSV4_TEST_DATA) + "/tokenizer/cases.jsonl");
  ASSERT_GT(cases.size(), 50u);
  std::string texts, id_lists;
  for (const json& c : cases) {
    texts += c["text"].dump() + "\n";
    id_lists += c["ids"].dump() + "\n";
  }
  auto lines = [](const std::string& out) {
    std::vector<json> rows;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) rows.push_back(json::parse(line));
    return rows;
  };
  const Result enc = run("tokenize --jsonl --model " + kModelDir, texts);
  ASSERT_EQ(enc.status, 0) << enc.err;
  const Result toks = run("tokenize --jsonl --tokens --model " + kModelDir, texts);
  ASSERT_EQ(toks.status, 0) << toks.err;
  const Result dec = run("detokenize --jsonl --model " + kModelDir, id_lists);
  ASSERT_EQ(dec.status, 0) << dec.err;
  const Result skip = run("detokenize --jsonl --skip-special --model " + kModelDir, id_lists);
  ASSERT_EQ(skip.status, 0) << skip.err;
  const auto ids = lines(enc.out), strs = lines(toks.out), decs = lines(dec.out),
             skips = lines(skip.out);
  ASSERT_EQ(ids.size(), cases.size());
  ASSERT_EQ(strs.size(), cases.size());
  ASSERT_EQ(decs.size(), cases.size());
  ASSERT_EQ(skips.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i]["id"].get<std::string>());
    EXPECT_EQ(ids[i], cases[i]["ids"]);
    EXPECT_EQ(strs[i], cases[i]["tokens"]);
    EXPECT_EQ(decs[i], cases[i]["decoded"]);
    EXPECT_EQ(skips[i], cases[i]["decoded_skip_special"]);
  }
  const Result bad = run("detokenize --jsonl --model " + kModelDir, "[1,2]\n[1,-5]\n");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.err.find("line 2"), std::string::npos) << bad.err;
}

TEST(TokenizeCli, CasesWithAddedTokenStrings) {
  const auto cases = read_jsonl(std::string(DSV4_TEST_DATA) + "/tokenizer/cases.jsonl");
  int checked = 0;
  for (const json& c : cases) {
    if (!c.contains("ids_without_added_tokens") || checked >= 5) continue;
    const Result plain = run("tokenize --no-added-tokens --model " + kModelDir, c["text"]);
    ASSERT_EQ(plain.status, 0) << plain.err;
    EXPECT_EQ(json::parse(plain.out), c["ids_without_added_tokens"]);
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST(TokenizeCli, DecodeCasesIncludingInvalidUtf8) {
  const auto cases = read_jsonl(std::string(DSV4_TEST_DATA) + "/tokenizer/decode_cases.jsonl");
  for (size_t i = 0; i < cases.size(); i += 20) {
    const json& c = cases[i];
    SCOPED_TRACE(c["id"].get<std::string>());
    const Result dec = run("detokenize --model " + kModelDir, c["ids"].dump());
    ASSERT_EQ(dec.status, 0) << dec.err;
    EXPECT_EQ(dec.out, c["decoded"].get<std::string>());
  }
}

TEST(TokenizeCli, BosAndStdinBytes) {
  const Result r = run("tokenize --bos --model " + kModelDir, "Hello\n");
  ASSERT_EQ(r.status, 0) << r.err;
  const json ids = json::parse(r.out);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 0);
  // The trailing newline is part of the text: decoding gives it back.
  const Result back = run("detokenize --model " + kModelDir, ids.dump());
  EXPECT_EQ(back.out, "<｜begin▁of▁sentence｜>Hello\n");
  const Result empty = run("tokenize --model " + kModelDir, "");
  ASSERT_EQ(empty.status, 0) << empty.err;
  EXPECT_EQ(json::parse(empty.out), json::array());
}

void expect_one_line_error(const Result& r, const std::string& needle) {
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(TokenizeCli, BadInputIsAOneLineError) {
  expect_one_line_error(run("detokenize --model " + kModelDir, "[1, 2"), "not valid JSON");
  expect_one_line_error(run("detokenize --model " + kModelDir, "{\"ids\": [1]}"), "JSON array");
  expect_one_line_error(run("detokenize --model " + kModelDir, "[1, \"x\"]"), "not an integer");
  expect_one_line_error(run("detokenize --model " + kModelDir, "[1, 129280]"), "129280");
  expect_one_line_error(run("detokenize --model " + kModelDir, "[-1]"), "-1");
  expect_one_line_error(run("tokenize --model " + kModelDir, "ok \xff"), "UTF-8");
  expect_one_line_error(run("tokenize --model /nonexistent/dsv4", "x"), "/nonexistent/dsv4");
  expect_one_line_error(run("tokenize --bogus --model " + kModelDir, "x"), "--bogus");
}

}  // namespace
