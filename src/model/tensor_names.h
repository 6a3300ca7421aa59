// The Hugging Face OLMoE checkpoint's tensor names and shapes: the one place both the loader
// (checkpoint.cc) and the writer (make_model.cc) take them from, in the order make-model writes
// them. Shapes are PyTorch's ([out, in] for a matrix, [size] for a norm vector).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "model/config.h"
#include "model/weights.h"

namespace bhmoe::model::hf {

// A dimension of a tensor, resolved against a config by size().
enum class Size : uint8_t { D, Dkv, N, F, V };
int64_t size(Size s, const ModelConfig& c);

// A per-layer tensor: "model.layers.<l>." + leaf; a vector when `vector`, else [rows, cols]. In a
// GGUF file (llama.cpp's names): "blk.<l>." + gguf_leaf + ".weight".
struct LayerTensor {
  const char* leaf;
  TensorView LayerWeights::*field;
  Size rows;
  Size cols;
  bool vector;
  const char* gguf_leaf;
};
inline constexpr LayerTensor kLayerTensors[] = {
    {"input_layernorm.weight", &LayerWeights::input_norm, Size::D, Size::D, true, "attn_norm"},
    {"self_attn.q_proj.weight", &LayerWeights::q_proj, Size::D, Size::D, false, "attn_q"},
    {"self_attn.k_proj.weight", &LayerWeights::k_proj, Size::Dkv, Size::D, false, "attn_k"},
    {"self_attn.v_proj.weight", &LayerWeights::v_proj, Size::Dkv, Size::D, false, "attn_v"},
    {"self_attn.o_proj.weight", &LayerWeights::o_proj, Size::D, Size::D, false, "attn_output"},
    {"self_attn.q_norm.weight", &LayerWeights::q_norm, Size::D, Size::D, true, "attn_q_norm"},
    {"self_attn.k_norm.weight", &LayerWeights::k_norm, Size::Dkv, Size::Dkv, true, "attn_k_norm"},
    {"post_attention_layernorm.weight", &LayerWeights::post_norm, Size::D, Size::D, true,
     "ffn_norm"},
    {"mlp.gate.weight", &LayerWeights::router, Size::N, Size::D, false, "ffn_gate_inp"},
};

// A per-expert tensor: "model.layers.<l>.mlp.experts.<e>." + leaf, [rows, cols]. In a GGUF file the
// layer's experts are stacked: "blk.<l>." + gguf_stacked + ".weight", [N, rows, cols] (ggml ne
// {cols, rows, N}).
struct ExpertTensor {
  const char* leaf;
  TensorView ExpertWeights::*field;
  Size rows;
  Size cols;
  const char* gguf_stacked;
};
inline constexpr ExpertTensor kExpertTensors[] = {
    {"gate_proj.weight", &ExpertWeights::gate, Size::F, Size::D, "ffn_gate_exps"},
    {"up_proj.weight", &ExpertWeights::up, Size::F, Size::D, "ffn_up_exps"},
    {"down_proj.weight", &ExpertWeights::down, Size::D, Size::F, "ffn_down_exps"},
};

// transformers 5's fused expert tensors, "model.layers.<l>.mlp.experts." + name:
// gate_up_proj [N, 2F, D] (expert e's gate rows, then its up rows), down_proj [N, D, F].
inline constexpr std::string_view kFusedGateUp = "gate_up_proj";
inline constexpr std::string_view kFusedDown = "down_proj";

inline constexpr std::string_view kEmbed = "model.embed_tokens.weight";  // [V, D]
inline constexpr std::string_view kFinalNorm = "model.norm.weight";      // [D]
inline constexpr std::string_view kLmHead = "lm_head.weight";            // [V, D] unless tied
inline constexpr std::string_view kLayersPrefix = "model.layers.";

std::string layer_name(int layer, std::string_view leaf);  // "model.layers.<l>.<leaf>"
std::string experts_prefix(int layer);                     // "model.layers.<l>.mlp.experts."
std::string expert_name(int layer, int64_t expert, std::string_view leaf);

// GGUF (llama.cpp) names of the same tensors.
inline constexpr std::string_view kGgufEmbed = "token_embd.weight";       // ne {D, V}
inline constexpr std::string_view kGgufFinalNorm = "output_norm.weight";  // ne {D}
inline constexpr std::string_view kGgufLmHead = "output.weight";          // ne {D, V}; absent: tied
std::string gguf_layer_name(int layer, std::string_view gguf_leaf);       // "blk.<l>.<leaf>.weight"

}  // namespace bhmoe::model::hf
