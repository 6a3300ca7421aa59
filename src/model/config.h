// The configuration of a mixture-of-experts model bhmoe runs, read from a Hugging Face config.json:
// OLMoE (SPEC.md §1) and the families that differ from it in a few switches (model_type
// "qwen2_moe", "qwen3_moe", "mixtral"). Every family shares one forward pass: pre-norm decoder
// layers of RoPE attention and a softmax-routed MoE of SwiGLU experts; the fields below say what a
// family changes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace bhmoe::model {

// The model families, one per model_type.
enum class Family { Olmoe, Qwen2Moe, Qwen3Moe, Mixtral };

// Where the query and key RMSNorms sit: none, over the whole projection (OLMoE: weights [H*hd] and
// [Hkv*hd]) or per head (Qwen3: one [hd] weight each, shared by the heads).
enum class QkNorm { None, Full, PerHead };

struct ModelConfig {
  std::string model_type = "olmoe";
  Family family = Family::Olmoe;
  int hidden_size = 0;        // D
  int intermediate_size = 0;  // F, per routed expert (Qwen: moe_intermediate_size)
  int num_layers = 0;         // num_hidden_layers
  int num_heads = 0;          // num_attention_heads
  int num_kv_heads = 0;       // num_key_value_heads (GQA when fewer than num_heads)
  int head_dim = 0;           // D / num_heads unless declared (Qwen3, Mixtral)
  QkNorm qk_norm = QkNorm::Full;
  bool qkv_bias = false;  // biases on the q, k and v projections (Qwen2-MoE)
  // The always-computed shared expert of Qwen2-MoE, scaled by sigmoid(shared_expert_gate . h):
  // its width Fs, 0 when the family has none. Never routed, never counted as a selected expert.
  int shared_expert_intermediate_size = 0;
  // RoPE rotates pairs (2i, 2i+1) instead of NeoX's (i, i + hd/2): llama.cpp's "llama" GGUF files
  // (Mixtral) store q/k rows permuted for that. Set by the GGUF reader, never by config.json.
  bool rope_interleaved = false;
  int num_experts = 0;          // N
  int num_experts_per_tok = 0;  // native top-k
  bool norm_topk_prob = false;  // native renormalisation of the top-k weights
  int vocab_size = 0;           // V (embedding rows; may exceed the tokenizer's size)
  double rope_theta = 10000.0;
  float rms_norm_eps = 1e-5f;
  std::optional<float> clip_qkv;  // clamp q, k, v to [-c, c] after the q/k norms
  bool tie_word_embeddings = false;
  int max_position_embeddings = 4096;
  std::optional<int> eos_token_id;
  std::optional<int> bos_token_id;
  std::optional<int> pad_token_id;
  std::string torch_dtype;  // informational

  // The native router's spec for routing::make_router, e.g. "topk:k=8,renorm=false".
  std::string native_router_spec() const;
};

// "olmoe", "qwen2_moe", "qwen3_moe", "mixtral".
const char* model_type_name(Family family);

// Parses and validates: missing, mistyped, non-positive or contradictory keys (hidden_size not a
// multiple of num_attention_heads, num_experts_per_tok > num_experts, ...) are errors naming the
// key and `source` (the file path, for messages).
ModelConfig parse_config(const nlohmann::json& json, const std::string& source);
ModelConfig load_config(const std::filesystem::path& config_json);

// Hugging Face style config.json contents; parse_config(to_json(c)) reproduces c.
nlohmann::json to_json(const ModelConfig& config);

// Parameter counts implied by a config (what a checkpoint matching it holds).
struct ParameterCounts {
  int64_t total = 0;       // every stored parameter (lm_head counted once when tied)
  int64_t active = 0;      // used per token at the native top-k: total minus the unselected experts
  int64_t embedding = 0;   // embed_tokens
  int64_t lm_head = 0;     // 0 when tied to the embedding
  int64_t dense = 0;       // attention, norms and routers of all layers, plus the final norm
  int64_t experts = 0;     // all experts of all layers
  int64_t per_expert = 0;  // one expert's gate, up and down
};
ParameterCounts count_parameters(const ModelConfig& config);

}  // namespace bhmoe::model
