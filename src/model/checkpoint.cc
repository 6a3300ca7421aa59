#include "model/checkpoint.h"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "model/gguf_checkpoint.h"
#include "model/safetensors.h"
#include "model/tensor_names.h"
#include "util/error.h"
#include "util/file.h"
#include "util/gguf.h"
#include "util/json.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

struct Located {
  const SafetensorsTensor* tensor = nullptr;
  const SafetensorsFile* file = nullptr;
};

class CheckpointImpl final : public Checkpoint {
 public:
  explicit CheckpointImpl(const fs::path& dir);

  const ModelConfig& config() const override { return config_; }
  const Weights& weights() const override { return weights_; }
  const fs::path& dir() const override { return dir_; }
  size_t mapped_bytes() const override { return mapped_bytes_; }
  const std::vector<WeightFileInfo>& weight_files() const override { return file_infos_; }
  ExpertLayout expert_layout() const override { return layout_; }
  std::optional<NonFiniteValue> find_non_finite() const override {
    for (const auto& file : files_) {
      if (auto found = model::find_non_finite(*file)) return found;
    }
    return std::nullopt;
  }

 private:
  void open_weight_files();
  void add_file(const fs::path& path);
  const Located* find(const std::string& name);
  const Located& require(const std::string& name);
  // Checks dtype, shape and alignment; `shape` is what the config implies.
  const Located& checked(const std::string& name, const std::vector<int64_t>& shape);
  TensorView matrix(const std::string& name, int64_t rows, int64_t cols);
  TensorView vector(const std::string& name, int64_t size);
  void load_experts(int layer, LayerWeights& lw, int* fused_layers);
  void check_unused() const;

  fs::path dir_;
  ModelConfig config_;
  Weights weights_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<WeightFileInfo> file_infos_;
  std::unordered_map<std::string, Located> tensors_;
  std::set<std::string> used_;
  std::string weight_source_;  // model.safetensors or the index, for "missing tensor" messages
  ExpertLayout layout_ = ExpertLayout::PerExpert;
  size_t mapped_bytes_ = 0;
};

CheckpointImpl::CheckpointImpl(const fs::path& dir) : dir_(dir) {
  try {
    require_directory(dir);
  } catch (const Error& e) {
    // Say what a model path is, so a typo and a wrong kind of path are told apart.
    fail(e.what(),
         " (a model is a Hugging Face checkpoint folder: config.json, model.safetensors "
         "or its shards, tokenizer.json; or a GGUF file)");
  }
  fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) fail(dir.string(), ": no config.json");
  config_ = load_config(config_path);
  open_weight_files();

  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size;
  weights_.embed = matrix(std::string(hf::kEmbed), c.vocab_size, d);
  // The layer count is checked against the tensors present before per-layer tables are sized.
  const std::string last_layer = hf::layer_name(c.num_layers - 1, hf::kLayerTensors[0].leaf);
  if (!find(last_layer)) {
    fail(weight_source_, ": missing tensor ", last_layer, " (config.json says num_hidden_layers ",
         c.num_layers, ")");
  }
  weights_.layers.resize(c.num_layers);
  int fused_layers = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = weights_.layers[l];
    for (const hf::LayerTensor& t : hf::kLayerTensors) {
      if (!hf::needed(t.needs, c, l)) continue;
      const std::string name = hf::layer_tensor_name(l, t, c);
      lw.*t.field = t.vector ? vector(name, hf::size(t.rows, c))
                             : matrix(name, hf::size(t.rows, c), hf::size(t.cols, c));
    }
    if (hf::is_moe_layer(c, l)) load_experts(l, lw, &fused_layers);
  }
  layout_ = fused_layers == 0                       ? ExpertLayout::PerExpert
            : fused_layers == c.num_routed_layers() ? ExpertLayout::Fused
                                                    : ExpertLayout::Mixed;
  weights_.final_norm = vector(std::string(hf::kFinalNorm), d);
  if (c.tie_word_embeddings) {
    weights_.lm_head = weights_.embed;
    if (find(std::string(hf::kLmHead))) used_.insert(std::string(hf::kLmHead));
  } else {
    weights_.lm_head = matrix(std::string(hf::kLmHead), c.vocab_size, d);
  }
  check_unused();
}

void CheckpointImpl::open_weight_files() {
  fs::path single = dir_ / "model.safetensors";
  fs::path index_path = dir_ / "model.safetensors.index.json";
  if (fs::exists(single)) {
    add_file(single);
    for (const auto& t : files_.back()->tensors()) tensors_[t.name] = {&t, files_.back().get()};
    weight_source_ = single.string();
    return;
  }
  if (!fs::exists(index_path)) {
    fail(dir_.string(), ": no model.safetensors or model.safetensors.index.json");
  }
  weight_source_ = index_path.string();
  const std::string where = index_path.string();
  const json index = read_json_file(index_path);
  if (!index.is_object()) fail(where, ": expected a JSON object");
  auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object()) fail(where, ": missing \"weight_map\" object");
  if (map->empty()) fail(where, ": \"weight_map\" is empty");
  std::unordered_map<std::string, SafetensorsFile*> by_shard;
  for (auto& [name, shard_value] : map->items()) {
    if (!shard_value.is_string())
      fail(where, ": weight_map entry of ", name, " is not a file name");
    std::string shard = shard_value.get<std::string>();
    // Shards live beside the index; refuse paths that would read elsewhere.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      fail(where, ": weight_map entry of ", name, " names \"", shard, "\", not a file in ",
           dir_.string());
    }
    auto [it, inserted] = by_shard.try_emplace(shard, nullptr);
    if (inserted) {
      fs::path shard_path = dir_ / shard;
      if (!fs::exists(shard_path)) {
        fail(where, ": shard ", shard, " (holding ", name, ") does not exist in ", dir_.string());
      }
      add_file(shard_path);
      it->second = files_.back().get();
    }
    const SafetensorsTensor* t = it->second->find(name);
    if (!t)
      fail(where, ": weight_map puts ", name, " in ", shard, " but that file does not hold it");
    tensors_[name] = {t, it->second};
  }
  std::sort(file_infos_.begin(), file_infos_.end(),
            [](const WeightFileInfo& a, const WeightFileInfo& b) { return a.path < b.path; });
}

void CheckpointImpl::add_file(const fs::path& path) {
  files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(path)));
  const SafetensorsFile& f = *files_.back();
  WeightFileInfo info;
  info.path = path;
  info.bytes = f.file_size();
  info.identity = f.identity();
  info.tensors = f.tensors().size();
  for (const auto& t : f.tensors()) {
    if (std::find(info.dtypes.begin(), info.dtypes.end(), t.dtype) == info.dtypes.end()) {
      info.dtypes.push_back(t.dtype);
    }
  }
  std::sort(info.dtypes.begin(), info.dtypes.end());
  mapped_bytes_ += f.file_size();
  file_infos_.push_back(std::move(info));
}

const Located* CheckpointImpl::find(const std::string& name) {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const Located& CheckpointImpl::require(const std::string& name) {
  const Located* located = find(name);
  if (!located) fail(weight_source_, ": missing tensor ", name);
  used_.insert(name);
  return *located;
}

const Located& CheckpointImpl::checked(const std::string& name, const std::vector<int64_t>& shape) {
  const Located& located = require(name);
  const SafetensorsTensor& t = *located.tensor;
  const std::string where = cat(located.file->path().string(), ": tensor ", name);
  auto dtype = kernel_dtype(t.dtype);
  if (!dtype)
    fail(where, ": dtype ", t.dtype, " is not supported (weights must be BF16, F16 or F32)");
  if (t.shape != shape) {
    fail(where, ": shape ", shape_text(t.shape), " does not match ", shape_text(shape),
         " implied by config.json");
  }
  // Kernels read elements through typed pointers; the writers of real checkpoints pad the header so
  // this always holds, and a file that breaks it would make every read unaligned.
  if (reinterpret_cast<uintptr_t>(t.data) % safetensors_dtype_size(t.dtype) != 0) {
    fail(where, ": data is not aligned to its ", safetensors_dtype_size(t.dtype), "-byte elements");
  }
  return located;
}

TensorView CheckpointImpl::matrix(const std::string& name, int64_t rows, int64_t cols) {
  const Located& located = checked(name, {rows, cols});
  TensorView view;
  view.data = located.tensor->data;
  view.dtype = *kernel_dtype(located.tensor->dtype);
  view.rows = rows;
  view.cols = cols;
  view.name = name;
  return view;
}

TensorView CheckpointImpl::vector(const std::string& name, int64_t size) {
  const Located& located = checked(name, {size});
  TensorView view;
  view.data = located.tensor->data;
  view.dtype = *kernel_dtype(located.tensor->dtype);
  view.rows = 1;
  view.cols = size;
  view.name = name;
  return view;
}

// Rows [first, first + count) of a row-major [*, cols] tensor.
TensorView rows_of(const TensorView& whole, int64_t first, int64_t count, std::string name) {
  TensorView view;
  size_t element_size = safetensors_dtype_size(safetensors_dtype_name(whole.dtype));
  view.data = static_cast<const uint8_t*>(whole.data) + first * whole.cols * element_size;
  view.dtype = whole.dtype;
  view.rows = count;
  view.cols = whole.cols;
  view.name = std::move(name);
  return view;
}

void CheckpointImpl::load_experts(int layer, LayerWeights& lw, int* fused_layers) {
  const ModelConfig& c = config_;
  const int64_t n = c.num_experts, f = c.intermediate_size, d = c.hidden_size;
  const std::string p = hf::experts_prefix(layer, c);
  const std::string fused_gate_up = cat(p, hf::kFusedGateUp), fused_down = cat(p, hf::kFusedDown);
  const bool has_fused = find(fused_gate_up) || find(fused_down);
  bool has_per_expert = false;
  for (const hf::ExpertTensor& t : hf::kExpertTensors)
    has_per_expert |= find(hf::expert_name(layer, 0, t, c)) != nullptr;
  if (has_fused && has_per_expert) {
    fail(weight_source_, ": layer ", layer, " holds both fused (", fused_gate_up,
         ") and per-expert expert tensors; expected one layout");
  }
  lw.experts.resize(n);
  if (has_fused) {
    ++*fused_layers;
    // gate_up_proj [N, 2F, D]: expert e's gate rows, then its up rows. down_proj [N, D, F].
    const Located& gu = checked(fused_gate_up, {n, 2 * f, d});
    const Located& dn = checked(fused_down, {n, d, f});
    TensorView gate_up{{gu.tensor->data, *kernel_dtype(gu.tensor->dtype), n * 2 * f, d},
                       fused_gate_up};
    TensorView down{{dn.tensor->data, *kernel_dtype(dn.tensor->dtype), n * d, f}, fused_down};
    for (int64_t e = 0; e < n; ++e) {
      lw.experts[e].gate = rows_of(gate_up, e * 2 * f, f, cat(fused_gate_up, "[", e, "].gate"));
      lw.experts[e].up = rows_of(gate_up, e * 2 * f + f, f, cat(fused_gate_up, "[", e, "].up"));
      lw.experts[e].down = rows_of(down, e * d, d, cat(fused_down, "[", e, "]"));
    }
    return;
  }
  for (int64_t e = 0; e < n; ++e) {
    for (const hf::ExpertTensor& t : hf::kExpertTensors) {
      lw.experts[e].*t.field =
          matrix(hf::expert_name(layer, e, t, c), hf::size(t.rows, c), hf::size(t.cols, c));
    }
  }
}

// Parses the integer after `prefix` in `name` (e.g. the layer number), or -1.
long index_after(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  const char* start = name.c_str() + prefix.size();
  char* end = nullptr;
  long value = std::strtol(start, &end, 10);
  return (end == start || *end != '.') ? -1 : value;
}

// Tensors the config does not account for usually mean the config and the weights disagree (a file
// with more layers or experts than config.json says); those are errors. Others (e.g. rotary
// inv_freq buffers some exporters add) are ignored.
void CheckpointImpl::check_unused() const {
  for (const auto& [name, located] : tensors_) {
    if (used_.count(name)) continue;
    const std::string where = cat(located.file->path().string(), ": tensor ", name);
    long layer = index_after(name, std::string(hf::kLayersPrefix));
    if (layer >= config_.num_layers) {
      fail(where, " is beyond num_hidden_layers ", config_.num_layers, " of config.json");
    }
    if (layer >= 0) {
      long expert = index_after(name, hf::experts_prefix(static_cast<int>(layer), config_));
      if (expert >= config_.num_experts) {
        fail(where, " is beyond num_experts ", config_.num_experts, " of config.json");
      }
    }
  }
}

}  // namespace

const char* expert_layout_name(ExpertLayout layout) {
  switch (layout) {
    case ExpertLayout::PerExpert:
      return "per-expert";
    case ExpertLayout::Fused:
      return "fused";
    case ExpertLayout::Mixed:
      return "mixed";
  }
  return "?";
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::filesystem::path& dir) {
  // A GGUF file is recognised by its content (the magic), whatever its name.
  if (is_gguf_file(dir)) return open_gguf_checkpoint(dir);
  return std::make_unique<CheckpointImpl>(dir);
}

}  // namespace bhmoe::model
