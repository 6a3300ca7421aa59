#include "model/tensor_names.h"

#include "util/error.h"

namespace bhmoe::model::hf {

int64_t size(Size s, const ModelConfig& c) {
  switch (s) {
    case Size::D:
      return c.hidden_size;
    case Size::Dq:
      return int64_t{c.num_heads} * c.head_dim;
    case Size::Dkv:
      return int64_t{c.num_kv_heads} * c.head_dim;
    case Size::N:
      return c.num_experts;
    case Size::F:
      return c.intermediate_size;
    case Size::Fs:
      return c.shared_expert_intermediate_size;
    case Size::V:
      return c.vocab_size;
    case Size::One:
      return 1;
    case Size::QNorm:
      return c.qk_norm == QkNorm::PerHead ? c.head_dim : size(Size::Dq, c);
    case Size::KNorm:
      return c.qk_norm == QkNorm::PerHead ? c.head_dim : size(Size::Dkv, c);
    case Size::Do:
      return int64_t{c.num_heads} * c.value_head_dim();
    case Size::KvLora:
      return c.kv_lora_rank;
    case Size::KvA:
      return int64_t{c.kv_lora_rank} + c.qk_rope_head_dim;
    case Size::KvB:
      return int64_t{c.num_heads} * (c.qk_nope_head_dim + c.v_head_dim);
    case Size::Fd:
      return c.dense_intermediate_size;
  }
  return 0;
}

bool needed(Needs needs, const ModelConfig& c, int layer) {
  switch (needs) {
    case Needs::Always:
      return true;
    case Needs::QkNorm:
      return c.qk_norm != QkNorm::None;
    case Needs::QkvBias:
      return c.qkv_bias;
    case Needs::KvProj:
      return !c.mla();
    case Needs::Mla:
      return c.mla();
    case Needs::MoeLayer:
      return is_moe_layer(c, layer);
    case Needs::SharedExpert:
      return is_moe_layer(c, layer) && c.shared_expert_intermediate_size > 0;
    case Needs::SharedExpertGate:
      return is_moe_layer(c, layer) && c.shared_expert_intermediate_size > 0 &&
             c.shared_expert_gated;
    case Needs::DenseLayer:
      return !is_moe_layer(c, layer);
  }
  return false;
}

std::string layer_name(int layer, std::string_view leaf) {
  return cat(kLayersPrefix, layer, ".", leaf);
}

std::string layer_tensor_name(int layer, const LayerTensor& t, const ModelConfig& config) {
  if (config.family == Family::Mixtral && t.mixtral_leaf) return layer_name(layer, t.mixtral_leaf);
  if (config.family == Family::DeepseekV2 && t.deepseek_leaf)
    return layer_name(layer, t.deepseek_leaf);
  return layer_name(layer, t.leaf);
}

std::string experts_prefix(int layer, const ModelConfig& config) {
  return cat(kLayersPrefix, layer,
             config.family == Family::Mixtral ? ".block_sparse_moe.experts." : ".mlp.experts.");
}

std::string expert_name(int layer, int64_t expert, const ExpertTensor& t,
                        const ModelConfig& config) {
  return cat(experts_prefix(layer, config), expert, ".",
             config.family == Family::Mixtral ? t.mixtral_leaf : t.leaf);
}

std::string gguf_layer_name(int layer, std::string_view gguf) {
  return cat("blk.", layer, ".", gguf);
}

const char* gguf_architecture(Family family) {
  switch (family) {
    case Family::Olmoe:
      return "olmoe";
    case Family::Qwen2Moe:
      return "qwen2moe";
    case Family::Qwen3Moe:
      return "qwen3moe";
    case Family::Mixtral:
      return "llama";
    case Family::DeepseekV2:
      return "deepseek2";
  }
  return "?";
}

}  // namespace bhmoe::model::hf
