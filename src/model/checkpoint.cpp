#include "model/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "util/error.h"

namespace dsv4 {

namespace fs = std::filesystem;

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
