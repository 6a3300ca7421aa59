// A Hugging Face OLMoE checkpoint directory, opened for inference: config.json validated,
// model.safetensors (or shards listed in model.safetensors.index.json) mmapped zero-copy, and every
// tensor checked against the config (present, shape, dtype, bytes inside the file) before use.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace bhmoe::model {

struct WeightFileInfo {
  std::filesystem::path path;
  size_t bytes = 0;                 // file size
  size_t tensors = 0;               // tensors the file holds
  std::vector<std::string> dtypes;  // distinct dtypes of those tensors, e.g. {"BF16"}
  FileIdentity identity;            // when it was mapped
};

// How the experts' weights are stored: one tensor per expert and projection (the hub layout), the
// fused gate_up_proj / down_proj of transformers 5.x, or different layers differently ("mixed").
enum class ExpertLayout { PerExpert, Fused, Mixed };
const char* expert_layout_name(ExpertLayout layout);  // "per-expert", "fused", "mixed"

class Checkpoint {
 public:
  // Throws bhmoe::Error naming the file, tensor or key at fault.
  static std::unique_ptr<Checkpoint> open(const std::filesystem::path& dir);

  virtual ~Checkpoint() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const Weights& weights() const = 0;
  virtual const std::filesystem::path& dir() const = 0;
  virtual size_t mapped_bytes() const = 0;  // total size of the mmapped weight files

  // What was loaded, for `bhmoe inspect` and messages.
  virtual const std::vector<WeightFileInfo>& weight_files() const = 0;
  virtual ExpertLayout expert_layout() const = 0;

  // The first NaN or infinity in any floating-point tensor of the weight files (in file order, then
  // offset order), or nullopt when every value is finite. Loading does not look at values (a
  // 14 GB checkpoint would be read whole); this reads every byte once.
  virtual std::optional<NonFiniteValue> find_non_finite() const = 0;
};

}  // namespace bhmoe::model
