#include "model/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "util/error.h"

namespace dsv4 {

namespace fs = std::filesystem;

namespace {

// Routed-expert tensors are read only when the router selects the expert.
bool is_routed_expert(const std::string& name) {
  return name.find(".ffn.experts.") != std::string::npos;
}

// Advice for the routed experts of a shard whose expert tensors average
// `avg_expert_tensor_bytes`. A fault in a mapping with default advice reads
// around the faulting page (128 KiB with the usual read-ahead setting). For
// a large expert tensor (V4-Flash: 4 MiB per w1/w2/w3) that is the rest of
// the selected tensor, which the kernel needs anyway; for small ones it is
// mostly unselected neighbours, which cost I/O and evict useful pages, so
// those get MADV_RANDOM. Measured (docs/bench.md) on a 1536-expert tiny synth
// (48 KiB tensors) from a cold page cache: default advice read 340 MB of the
// 415 MB file for a 128-token prompt, MADV_RANDOM 71 MB.
// DSV4_EXPERT_ADVICE=normal|random|sequential overrides, for measuring.
MapAdvice expert_advice(uint64_t avg_expert_tensor_bytes) {
  const char* env = std::getenv("DSV4_EXPERT_ADVICE");
  if (!env || !*env)
    return avg_expert_tensor_bytes < (1u << 20) ? MapAdvice::Random : MapAdvice::Normal;
  if (!std::strcmp(env, "normal")) return MapAdvice::Normal;
  if (!std::strcmp(env, "random")) return MapAdvice::Random;
  if (!std::strcmp(env, "sequential")) return MapAdvice::Sequential;
  fail("DSV4_EXPERT_ADVICE must be normal, random or sequential, got \"", env, "\"");
}

// Paging advice per shard: the dense weights (read for every token) are
// prefetched with MADV_WILLNEED when `prefetch_dense`; routed experts get
// expert_advice(...) and are otherwise left to fault in when selected, so a
// model larger than RAM only needs its dense part and the working set of
// experts resident. Advice is given per run of neighbouring tensors of one
// kind, not per tensor: each distinct advice splits the mapping's VMA and the
// kernel caps VMAs per process (vm.max_map_count, 65530 by default).
void advise_shard(const SafetensorsFile& shard, bool prefetch_dense) {
  struct Span {
    size_t begin, end;
    bool expert;
  };
  std::vector<Span> spans;
  const std::byte* base = shard.map().data();
  for (const auto& [name, t] : shard.tensors())
    if (t.nbytes)
      spans.push_back({static_cast<size_t>(t.data - base),
                       static_cast<size_t>(t.data - base) + t.nbytes, is_routed_expert(name)});
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  uint64_t expert_bytes = 0, expert_tensors = 0;
  for (const Span& sp : spans)
    if (sp.expert) expert_bytes += sp.end - sp.begin, ++expert_tensors;
  if (expert_tensors == 0) expert_tensors = 1;
  const MapAdvice expert = expert_advice(expert_bytes / expert_tensors);
  for (size_t i = 0; i < spans.size();) {
    size_t j = i + 1;
    size_t end = spans[i].end;
    while (j < spans.size() && spans[j].expert == spans[i].expert) end = spans[j++].end;
    if (spans[i].expert) {
      if (expert != MapAdvice::Normal)
        shard.map().advise(spans[i].begin, end - spans[i].begin, expert);
    } else if (prefetch_dense) {
      shard.map().advise(spans[i].begin, end - spans[i].begin, MapAdvice::WillNeed);
    }
    i = j;
  }
}

}  // namespace

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) fail(dir, ": not a model folder (no such directory)");
  const fs::path root(dir);
  const fs::path cfg = root / "config.json";
  if (!fs::exists(cfg)) fail(dir, ": no config.json in the model folder");
  config_ = load_model_config(cfg.string());

  const fs::path index = root / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream in(index);
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(ss.str());
    } catch (const std::exception& e) {
      fail(index.string(), ": not valid JSON: ", e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index.string(), ": missing \"weight_map\" object");
    std::map<std::string, SafetensorsFile*> by_file;
    std::set<std::string> listed;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        fail(index.string(), ": weight_map entry for ", it.key(), " is not a file name");
      const std::string file = it.value().get<std::string>();
      if (file.find('/') != std::string::npos || file.find("..") != std::string::npos)
        fail(index.string(), ": weight_map entry for ", it.key(),
             " names a file outside the folder: ", file);
      auto f = by_file.find(file);
      if (f == by_file.end()) {
        const fs::path p = root / file;
        if (!fs::exists(p))
          fail(index.string(), ": tensor ", it.key(), " is mapped to missing shard ", p.string());
        shards_.push_back(std::make_unique<SafetensorsFile>(p.string()));
        f = by_file.emplace(file, shards_.back().get()).first;
      }
      if (!f->second->has(it.key()))
        fail(f->second->path(), ": tensor ", it.key(), " is listed in ", index.string(),
             " but absent from this shard");
      tensors_[it.key()] = &f->second->get(it.key());
      listed.insert(it.key());
    }
    for (const auto& s : shards_)
      for (const auto& [name, t] : s->tensors())
        if (!listed.count(name))
          fail(s->path(), ": tensor ", name, " is not listed in ", index.string());
    if (j.contains("metadata") && j["metadata"].is_object() &&
        j["metadata"].contains("total_size")) {
      const auto& ts = j["metadata"]["total_size"];
      if (!ts.is_number_unsigned() &&
          !(ts.is_number_float() && ts.get<double>() >= 0 &&
            ts.get<double>() == static_cast<double>(ts.get<uint64_t>())))
        fail(index.string(), ": metadata.total_size must be a non-negative integer, got ",
             ts.dump());
      const size_t declared = ts.get<size_t>();
      if (declared != total_bytes())
        fail(index.string(), ": metadata.total_size = ", declared, " but the shards hold ",
             total_bytes(), " tensor bytes");
    }
  } else {
    const fs::path single = root / "model.safetensors";
    if (!fs::exists(single))
      fail(dir, ": no model.safetensors and no model.safetensors.index.json in the model folder");
    shards_.push_back(std::make_unique<SafetensorsFile>(single.string()));
    for (const auto& [name, t] : shards_.back()->tensors()) tensors_[name] = &t;
  }
  // Prefetching the dense weights only helps when they fit in memory with
  // room to spare; beyond half of RAM the read-ahead would evict its own
  // pages before the first token uses them.
  uint64_t dense = 0;
  for (const auto& [name, t] : tensors_)
    if (!is_routed_expert(name)) dense += t->nbytes;
  const uint64_t ram =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (const auto& s : shards_) advise_shard(*s, dense < ram / 2);
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

size_t Checkpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : tensors_) n += t->nbytes;
  return n;
}

}  // namespace dsv4
