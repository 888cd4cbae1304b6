// Tokenizer throughput on one core: encode MB/s on ordinary English text
// (Debian's license texts if present, else text generated from a word list),
// decode and streaming decode, and load time of the V4 tokenizer.json.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace {

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer";

std::shared_ptr<const dsv4::Tokenizer> v4() {
  static auto tok = dsv4::Tokenizer::load(kModelDir);
  return tok;
}

// English prose from a fixed word list with punctuation, numbers and line
// breaks, deterministic for a given size.
std::string generated_text(size_t bytes) {
  static const char* words[] = {"the",
                                "of",
                                "and",
                                "to",
                                "in",
                                "a",
                                "is",
                                "that",
                                "for",
                                "it",
                                "as",
                                "was",
                                "with",
                                "be",
                                "by",
                                "on",
                                "not",
                                "he",
                                "I",
                                "this",
                                "are",
                                "or",
                                "his",
                                "from",
                                "at",
                                "which",
                                "but",
                                "have",
                                "an",
                                "had",
                                "they",
                                "you",
                                "were",
                                "their",
                                "one",
                                "all",
                                "we",
                                "can",
                                "her",
                                "has",
                                "there",
                                "been",
                                "if",
                                "more",
                                "when",
                                "will",
                                "would",
                                "who",
                                "so",
                                "no",
                                "government",
                                "information",
                                "development",
                                "international",
                                "university",
                                "performance",
                                "understanding",
                                "responsibility",
                                "tokenizer",
                                "inference",
                                "attention",
                                "probability",
                                "Wednesday",
                                "London",
                                "Shakespeare",
                                "don't",
                                "it's",
                                "we'll",
                                "they've",
                                "example"};
  std::mt19937 rng(42);
  std::uniform_int_distribution<size_t> pick(0, std::size(words) - 1);
  std::uniform_int_distribution<int> punct(0, 19), number(0, 99999);
  std::string text;
  bool sentence_start = true;
  while (text.size() < bytes) {
    std::string w = words[pick(rng)];
    if (sentence_start) w[0] = static_cast<char>(std::toupper(w[0]));
    text += w;
    sentence_start = false;
    const int p = punct(rng);
    if (p == 0) {
      text += ". ";
      sentence_start = true;
    } else if (p == 1) {
      text += ", ";
    } else if (p == 2) {
      text += ' ';
      text += std::to_string(number(rng));
      text += ' ';
    } else if (p == 3) {
      text += ".\n\n";
      sentence_start = true;
    } else {
      text += ' ';
    }
  }
  return text;
}

std::string english_text() {
  std::string text;
  const std::filesystem::path dir = "/usr/share/common-licenses";
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec)) {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      text += ss.str();
    }
  }
  if (text.size() < 100000) text = generated_text(1 << 20);
  return text;
}

void BM_EncodeEnglish(benchmark::State& state) {
  auto tok = v4();
  const std::string text = english_text();
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = tok->encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["bytes_per_token"] = static_cast<double>(text.size()) / tokens;
}
BENCHMARK(BM_EncodeEnglish)->Unit(benchmark::kMillisecond);

void BM_EncodeGenerated(benchmark::State& state) {
  auto tok = v4();
  const std::string text = generated_text(1 << 20);
  for (auto _ : state) benchmark::DoNotOptimize(tok->encode(text).data());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_EncodeGenerated)->Unit(benchmark::kMillisecond);

void BM_Decode(benchmark::State& state) {
  auto tok = v4();
  const std::string text = english_text();
  const auto ids = tok->encode(text);
  for (auto _ : state) benchmark::DoNotOptimize(tok->decode(ids).data());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ids.size()));
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

void BM_StreamingDecode(benchmark::State& state) {
  auto tok = v4();
  const auto ids = tok->encode(english_text());
  for (auto _ : state) {
    dsv4::StreamingDetokenizer stream(tok);
    size_t n = 0;
    for (int32_t id : ids) n += stream.push(id).size();
    n += stream.flush().size();
    benchmark::DoNotOptimize(n);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ids.size()));
}
BENCHMARK(BM_StreamingDecode)->Unit(benchmark::kMillisecond);

void BM_Load(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(dsv4::Tokenizer::load(kModelDir).get());
}
BENCHMARK(BM_Load)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
