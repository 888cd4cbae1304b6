// A Hugging Face model folder as DeepSeek publishes it: config.json plus
// model.safetensors or shards listed in model.safetensors.index.json. All
// shards are memory-mapped; tensors are views into the maps.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "util/safetensors.h"

namespace dsv4 {

class Checkpoint {
 public:
  // Opens and validates every shard (header, byte ranges) and the index.
  explicit Checkpoint(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  const std::map<std::string, const TensorView*>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  size_t total_bytes() const;
  size_t num_shards() const { return shards_.size(); }

 private:
  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const TensorView*> tensors_;
};

}  // namespace dsv4
