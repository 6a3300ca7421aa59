// A Hugging Face OLMoE checkpoint directory, opened for inference: config.json validated,
// model.safetensors (or shards listed in model.safetensors.index.json) mmapped zero-copy, and every
// tensor checked against the config (present, shape, dtype, bytes inside the file) before use.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace bhmoe::model {

class Checkpoint {
 public:
  // Throws bhmoe::Error naming the file, tensor or key at fault.
  static std::unique_ptr<Checkpoint> open(const std::filesystem::path& dir);

  virtual ~Checkpoint() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const Weights& weights() const = 0;
  virtual const std::filesystem::path& dir() const = 0;
  virtual size_t mapped_bytes() const = 0;  // total size of the mmapped weight files
};

}  // namespace bhmoe::model
