// Random-weight checkpoints (OLMoE and the other families) in the Hugging Face layout (config.json,
// model.safetensors or shards + model.safetensors.index.json, tokenizer.json), for tests and
// benchmarks when the real weights are not available. Weights are normal-like with standard
// deviation 0.02 (norm weights 1), generated from the seed alone: the same seed gives the same
// numbers whatever the thread count, sharding or expert layout (the fused layout holds exactly the
// per-expert layout's values).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/matrix.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace bhmoe::model {

struct MakeModelOptions {
  std::string preset = "tiny";                  // one of preset_names()
  std::optional<int> layers;                    // overrides the preset's num_hidden_layers
  kernels::DType dtype = kernels::DType::BF16;  // BF16, F16 or F32
  uint64_t seed = 0;
  std::optional<std::filesystem::path> tokenizer;  // copied; otherwise a byte-level tokenizer
  bool fused = false;  // transformers-5 fused experts instead of per-expert tensors
  uint64_t max_shard_bytes = 5'000'000'000;  // tensor bytes per shard, as the hub's "5GB"
  int threads = 2;
};

// "tiny": D 64, 2 layers, 4 heads, 8 experts top-2, F 32, V 1024 (the goldens' shape).
// "tiny256": the same with D and F 256, so rows hold whole 256-value blocks (GGUF's K types).
// "olmoe-1b-7b": the published OLMoE-1B-7B-0924 shape (6.92 B parameters).
// The other families, a tiny shape each (D 64, 2 layers, 4 heads over 2 key/value heads, 8 experts
// of width 32, V 1024) and a published one:
//   "qwen2-moe-tiny" (top-4, a shared expert of width 64), "qwen1.5-moe-a2.7b";
//   "qwen3-moe-tiny" (head_dim 32, so the query width 128 is not D; renormalised top-2),
//   "qwen3-30b-a3b";
//   "mixtral-tiny" (renormalised top-2), "mixtral-8x7b";
//   "deepseek-v2-tiny" (DeepSeek-V2-Lite's structure: 27 layers, the first dense of width 96, MLA
//   with kv_lora_rank 32, qk_nope 16, qk_rope 8, v_head 16, 2 shared experts, routed_scaling_factor
//   2, no RoPE scaling), "deepseek-v2-tiny-yarn" (the same with Lite's YaRN), "deepseek-v2-lite".
// Each preset is a config.json of that shape, read by parse_config (throws for an unknown name).
ModelConfig preset_config(std::string_view preset);
std::vector<std::string> preset_names();  // in the order above

// Every tensor of a checkpoint for `config`, in the order they are written.
std::vector<TensorSpec> checkpoint_tensor_specs(const ModelConfig& config, kernels::DType dtype,
                                                bool fused);

// A valid Hugging Face tokenizer.json: byte-level BPE with the 256 byte tokens (GPT-2
// byte-to-unicode mapping, id = byte value), no merges, and <|endoftext|> as id 256; NFC normaliser
// and ByteLevel pre-tokeniser, post-processor and decoder as in OLMoE's.
std::string byte_level_tokenizer_json();
inline constexpr int kByteTokenizerEos = 256;

struct MakeModelResult {
  ModelConfig config;
  std::vector<std::filesystem::path> weight_files;
  uint64_t weight_bytes = 0;  // sum of the safetensors file sizes
  int64_t parameters = 0;
};

// Writes the checkpoint into a temporary directory beside `dir` and renames it to `dir` when
// complete, so `dir` never holds a partial checkpoint. `dir` must not exist or be an empty
// directory.
MakeModelResult make_model(const std::filesystem::path& dir, const MakeModelOptions& options);

}  // namespace bhmoe::model
