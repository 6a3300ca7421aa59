// The checkpoint tensors of every family bhmoe runs: Hugging Face names and shapes, llama.cpp's
// GGUF names, and which Weights field each fills. The one place the loaders (checkpoint.cc,
// gguf_checkpoint.cc) and the writers (make_model.cc, gguf_export.cc) take them from, in the order
// make-model writes them. Shapes are PyTorch's ([out, in] for a matrix, [size] for a vector).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "model/config.h"
#include "model/weights.h"

namespace bhmoe::model::hf {

// A dimension of a tensor, resolved against a config by size(): D, the query width H*hd, the
// key/value width Hkv*hd, experts, the routed and shared expert widths, vocabulary, one, the
// q/k norm widths (the projection's for QkNorm::Full, hd for QkNorm::PerHead), the attention
// output width H * value_head_dim (o_proj's input), and DeepSeek-V2's: the latent kv_lora_rank, the
// kv_a projection kv_lora_rank + qk_rope_head_dim, the kv_b projection H * (qk_nope + v_head) and
// the leading dense layers' width.
enum class Size : uint8_t { D, Dq, Dkv, N, F, Fs, V, One, QNorm, KNorm, Do, KvLora, KvA, KvB, Fd };
int64_t size(Size s, const ModelConfig& c);

// Which configs (and layers) hold a tensor: every layer; the q/k norms, q/k/v biases; the separate
// k/v projections (all but MLA) or MLA's latent ones; tensors of layers with experts (router,
// shared expert) or of the leading dense layers (DeepSeek-V2's MLP); the shared expert's gate.
enum class Needs : uint8_t {
  Always,
  QkNorm,
  QkvBias,
  KvProj,
  Mla,
  MoeLayer,
  SharedExpert,
  SharedExpertGate,
  DenseLayer
};
bool needed(Needs needs, const ModelConfig& c, int layer);
// Whether decoder layer `layer` has a router and experts (DeepSeek-V2's leading layers do not).
inline bool is_moe_layer(const ModelConfig& c, int layer) {
  return layer >= c.first_k_dense_replace;
}

// A per-layer tensor: "model.layers.<l>." + leaf (Mixtral: mixtral_leaf, DeepSeek-V2:
// deepseek_leaf where they differ); a vector of `rows` values when `vector`, else [rows, cols]. In
// a GGUF file: "blk.<l>." + gguf, a vector also when rows is One (ggml ne {cols}).
struct LayerTensor {
  const char* leaf;
  const char* mixtral_leaf;   // nullptr: the same as leaf
  const char* deepseek_leaf;  // nullptr: the same as leaf
  TensorView LayerWeights::*field;
  Size rows;
  Size cols;
  bool vector;
  Needs needs;
  const char* gguf;
};
inline constexpr LayerTensor kLayerTensors[] = {
    {"input_layernorm.weight", nullptr, nullptr, &LayerWeights::input_norm, Size::D, Size::D, true,
     Needs::Always, "attn_norm.weight"},
    {"self_attn.q_proj.weight", nullptr, nullptr, &LayerWeights::q_proj, Size::Dq, Size::D, false,
     Needs::Always, "attn_q.weight"},
    {"self_attn.k_proj.weight", nullptr, nullptr, &LayerWeights::k_proj, Size::Dkv, Size::D, false,
     Needs::KvProj, "attn_k.weight"},
    {"self_attn.v_proj.weight", nullptr, nullptr, &LayerWeights::v_proj, Size::Dkv, Size::D, false,
     Needs::KvProj, "attn_v.weight"},
    {"self_attn.kv_a_proj_with_mqa.weight", nullptr, nullptr, &LayerWeights::kv_a_proj, Size::KvA,
     Size::D, false, Needs::Mla, "attn_kv_a_mqa.weight"},
    {"self_attn.kv_a_layernorm.weight", nullptr, nullptr, &LayerWeights::kv_a_norm, Size::KvLora,
     Size::KvLora, true, Needs::Mla, "attn_kv_a_norm.weight"},
    {"self_attn.kv_b_proj.weight", nullptr, nullptr, &LayerWeights::kv_b_proj, Size::KvB,
     Size::KvLora, false, Needs::Mla, "attn_kv_b.weight"},
    {"self_attn.q_proj.bias", nullptr, nullptr, &LayerWeights::q_bias, Size::Dq, Size::Dq, true,
     Needs::QkvBias, "attn_q.bias"},
    {"self_attn.k_proj.bias", nullptr, nullptr, &LayerWeights::k_bias, Size::Dkv, Size::Dkv, true,
     Needs::QkvBias, "attn_k.bias"},
    {"self_attn.v_proj.bias", nullptr, nullptr, &LayerWeights::v_bias, Size::Dkv, Size::Dkv, true,
     Needs::QkvBias, "attn_v.bias"},
    {"self_attn.o_proj.weight", nullptr, nullptr, &LayerWeights::o_proj, Size::D, Size::Do, false,
     Needs::Always, "attn_output.weight"},
    {"self_attn.q_norm.weight", nullptr, nullptr, &LayerWeights::q_norm, Size::QNorm, Size::QNorm,
     true, Needs::QkNorm, "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", nullptr, nullptr, &LayerWeights::k_norm, Size::KNorm, Size::KNorm,
     true, Needs::QkNorm, "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", nullptr, nullptr, &LayerWeights::post_norm, Size::D,
     Size::D, true, Needs::Always, "ffn_norm.weight"},
    {"mlp.gate.weight", "block_sparse_moe.gate.weight", nullptr, &LayerWeights::router, Size::N,
     Size::D, false, Needs::MoeLayer, "ffn_gate_inp.weight"},
    {"mlp.shared_expert.gate_proj.weight", nullptr, "mlp.shared_experts.gate_proj.weight",
     &LayerWeights::shared_gate_proj, Size::Fs, Size::D, false, Needs::SharedExpert,
     "ffn_gate_shexp.weight"},
    {"mlp.shared_expert.up_proj.weight", nullptr, "mlp.shared_experts.up_proj.weight",
     &LayerWeights::shared_up_proj, Size::Fs, Size::D, false, Needs::SharedExpert,
     "ffn_up_shexp.weight"},
    {"mlp.shared_expert.down_proj.weight", nullptr, "mlp.shared_experts.down_proj.weight",
     &LayerWeights::shared_down_proj, Size::D, Size::Fs, false, Needs::SharedExpert,
     "ffn_down_shexp.weight"},
    {"mlp.shared_expert_gate.weight", nullptr, nullptr, &LayerWeights::shared_gate, Size::One,
     Size::D, false, Needs::SharedExpertGate, "ffn_gate_inp_shexp.weight"},
    {"mlp.gate_proj.weight", nullptr, nullptr, &LayerWeights::mlp_gate, Size::Fd, Size::D, false,
     Needs::DenseLayer, "ffn_gate.weight"},
    {"mlp.up_proj.weight", nullptr, nullptr, &LayerWeights::mlp_up, Size::Fd, Size::D, false,
     Needs::DenseLayer, "ffn_up.weight"},
    {"mlp.down_proj.weight", nullptr, nullptr, &LayerWeights::mlp_down, Size::D, Size::Fd, false,
     Needs::DenseLayer, "ffn_down.weight"},
};

// The HF name of a per-layer tensor in `config`'s family.
std::string layer_tensor_name(int layer, const LayerTensor& t, const ModelConfig& config);

// A per-expert tensor: experts_prefix(layer) + "<e>." + leaf (Mixtral: mixtral_leaf), [rows, cols].
// In a GGUF file the layer's experts are stacked: "blk.<l>." + gguf_stacked, [N, rows, cols] (ggml
// ne {cols, rows, N}); files from llama.cpp's converter before April 2024 (many Mixtral GGUFs) hold
// one tensor per expert instead: "blk.<l>." + gguf_per_expert + ".<e>.weight", ne {cols, rows}.
struct ExpertTensor {
  const char* leaf;
  const char* mixtral_leaf;
  TensorView ExpertWeights::*field;
  Size rows;
  Size cols;
  const char* gguf_stacked;
  const char* gguf_per_expert;
};
inline constexpr ExpertTensor kExpertTensors[] = {
    {"gate_proj.weight", "w1.weight", &ExpertWeights::gate, Size::F, Size::D,
     "ffn_gate_exps.weight", "ffn_gate"},
    {"up_proj.weight", "w3.weight", &ExpertWeights::up, Size::F, Size::D, "ffn_up_exps.weight",
     "ffn_up"},
    {"down_proj.weight", "w2.weight", &ExpertWeights::down, Size::D, Size::F,
     "ffn_down_exps.weight", "ffn_down"},
};

// transformers 5's fused expert tensors, experts_prefix(layer) + name:
// gate_up_proj [N, 2F, D] (expert e's gate rows, then its up rows), down_proj [N, D, F].
inline constexpr std::string_view kFusedGateUp = "gate_up_proj";
inline constexpr std::string_view kFusedDown = "down_proj";

inline constexpr std::string_view kEmbed = "model.embed_tokens.weight";  // [V, D]
inline constexpr std::string_view kFinalNorm = "model.norm.weight";      // [D]
inline constexpr std::string_view kLmHead = "lm_head.weight";            // [V, D] unless tied
inline constexpr std::string_view kLayersPrefix = "model.layers.";

std::string layer_name(int layer, std::string_view leaf);  // "model.layers.<l>.<leaf>"
// "model.layers.<l>.mlp.experts." (Mixtral: "model.layers.<l>.block_sparse_moe.experts.")
std::string experts_prefix(int layer, const ModelConfig& config);
std::string expert_name(int layer, int64_t expert, const ExpertTensor& t,
                        const ModelConfig& config);

// GGUF (llama.cpp) names of the same tensors.
inline constexpr std::string_view kGgufEmbed = "token_embd.weight";       // ne {D, V}
inline constexpr std::string_view kGgufFinalNorm = "output_norm.weight";  // ne {D}
inline constexpr std::string_view kGgufLmHead = "output.weight";          // ne {D, V}; absent: tied
std::string gguf_layer_name(int layer, std::string_view gguf);            // "blk.<l>.<gguf>"

// llama.cpp's general.architecture of a family: "olmoe", "qwen2moe", "qwen3moe", "llama",
// "deepseek2".
const char* gguf_architecture(Family family);

}  // namespace bhmoe::model::hf
