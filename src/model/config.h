// The configuration of a mixture-of-experts model bhmoe runs, read from a Hugging Face config.json:
// OLMoE (SPEC.md §1) and the families that differ from it in a few switches (model_type
// "qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2"). Every family shares one forward pass:
// pre-norm decoder layers of RoPE attention and a softmax-routed MoE of SwiGLU experts; the fields
// below say what a family changes. DeepSeek-V2 changes the most: multi-head latent attention (MLA),
// YaRN RoPE, leading dense layers without a router, ungated shared experts and a routed scaling
// factor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace bhmoe::model {

// The model families, one per model_type.
enum class Family { Olmoe, Qwen2Moe, Qwen3Moe, Mixtral, DeepseekV2 };

// Where the query and key RMSNorms sit: none, over the whole projection (OLMoE: weights [H*hd] and
// [Hkv*hd]) or per head (Qwen3: one [hd] weight each, shared by the heads).
enum class QkNorm { None, Full, PerHead };

// YaRN RoPE scaling as DeepSeek-V2's config.json declares it (rope_scaling {"type": "yarn", ...};
// DeepseekV2YarnRotaryEmbedding): the rotary frequencies blend theta^(-2i/d) / factor
// (interpolated) and theta^(-2i/d) (extrapolated) by a linear ramp over the pair index i between
// the correction dims of beta_fast and beta_slow rotations in original_max_position_embeddings; cos
// and sin are scaled by mscale(factor, mscale) / mscale(factor, mscale_all_dim) and the attention's
// softmax scale by mscale(factor, mscale_all_dim)^2, where mscale(s, m) = 0.1 m ln(s) + 1 for s >
// 1, else 1.
struct YarnScaling {
  double factor = 1.0;
  int original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

// mscale(s, m) above.
double yarn_mscale(double factor, double m);

struct ModelConfig {
  std::string model_type = "olmoe";
  Family family = Family::Olmoe;
  int hidden_size = 0;        // D
  int intermediate_size = 0;  // F, per routed expert (Qwen, DeepSeek: moe_intermediate_size)
  int num_layers = 0;         // num_hidden_layers
  int num_heads = 0;          // num_attention_heads
  int num_kv_heads = 0;       // num_key_value_heads (GQA when fewer than num_heads)
  int head_dim = 0;           // D / num_heads unless declared (Qwen3, Mixtral)
  QkNorm qk_norm = QkNorm::Full;
  bool qkv_bias = false;  // biases on the q, k and v projections (Qwen2-MoE)
  // The always-computed shared expert of Qwen2-MoE, scaled by sigmoid(shared_expert_gate . h),
  // and DeepSeek-V2's n_shared_experts as one SwiGLU of n_shared_experts * moe_intermediate_size
  // without a gate: its width Fs, 0 when the family has none. Never routed, never counted as a
  // selected expert.
  int shared_expert_intermediate_size = 0;
  bool shared_expert_gated = false;  // the sigmoid gate (Qwen2-MoE); DeepSeek's has none
  // RoPE rotates pairs (2i, 2i+1) instead of NeoX's (i, i + hd/2): llama.cpp's "llama" GGUF files
  // (Mixtral) store q/k rows permuted for that (set by the GGUF reader); DeepSeek-V2 always pairs
  // its rope dims that way (HF's apply_rotary_pos_emb de-interleaves them before rotate_half, which
  // is the same rotation; llama.cpp's deepseek2 graph uses "normal" RoPE on unpermuted rows).
  bool rope_interleaved = false;

  // DeepSeek-V2 (0 or unset for the other families).
  // Multi-head latent attention: q = q_proj(h) ([H * (qk_nope + qk_rope)]); kv_a_proj_with_mqa(h)
  // gives a latent of kv_lora_rank values (RMSNormed by kv_a_layernorm) and one rope key of
  // qk_rope_head_dim values shared by all heads; kv_b_proj(latent) gives each head's no-rope key
  // (qk_nope_head_dim) and value (v_head_dim). head_dim is the query/key head width qk_nope +
  // qk_rope and num_kv_heads == num_heads. Only the last qk_rope_head_dim dims of a head are
  // rotated.
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;  // 0: the whole head is rotated (every other family)
  int v_head_dim = 0;        // 0: head_dim
  // The first first_k_dense_replace layers are dense SwiGLU MLPs of width dense_intermediate_size
  // (config.json's intermediate_size) with no router; routing layer r is decoder layer
  // first_k_dense_replace + r (routers, observers, calibrations and traces see routed layers only).
  int first_k_dense_replace = 0;
  int dense_intermediate_size = 0;
  double routed_scaling_factor = 1.0;  // multiplies the routed experts' weights (not the shared's)
  std::optional<YarnScaling> yarn;     // rope_scaling yarn; nullopt: plain RoPE

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
  // The layers with a router (num_layers - first_k_dense_replace); routing layer ids are 0..this-1.
  int num_routed_layers() const { return num_layers - first_k_dense_replace; }
  bool mla() const { return kv_lora_rank > 0; }
  // The width of a head's rotated part and of its value.
  int rope_head_dim() const { return qk_rope_head_dim > 0 ? qk_rope_head_dim : head_dim; }
  int value_head_dim() const { return v_head_dim > 0 ? v_head_dim : head_dim; }
};

// "olmoe", "qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2".
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
  int64_t total = 0;      // every stored parameter (lm_head counted once when tied)
  int64_t active = 0;     // used per token at the native top-k: total minus the unselected experts
  int64_t embedding = 0;  // embed_tokens
  int64_t lm_head = 0;    // 0 when tied to the embedding
  // attention, norms, routers, shared experts and leading dense MLPs of all layers, plus the final
  // norm
  int64_t dense = 0;
  int64_t experts = 0;     // all routed experts of all layers
  int64_t per_expert = 0;  // one expert's gate, up and down
};
ParameterCounts count_parameters(const ModelConfig& config);

}  // namespace bhmoe::model
