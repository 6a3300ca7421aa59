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
  }
  return 0;
}

bool needed(Needs needs, const ModelConfig& c) {
  switch (needs) {
    case Needs::Always:
      return true;
    case Needs::QkNorm:
      return c.qk_norm != QkNorm::None;
    case Needs::QkvBias:
      return c.qkv_bias;
    case Needs::SharedExpert:
      return c.shared_expert_intermediate_size > 0;
  }
  return false;
}

std::string layer_name(int layer, std::string_view leaf) {
  return cat(kLayersPrefix, layer, ".", leaf);
}

std::string layer_tensor_name(int layer, const LayerTensor& t, const ModelConfig& config) {
  const bool mixtral = config.family == Family::Mixtral && t.mixtral_leaf;
  return layer_name(layer, mixtral ? t.mixtral_leaf : t.leaf);
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
  }
  return "?";
}

}  // namespace bhmoe::model::hf
