#include "model/tensor_names.h"

#include "util/error.h"

namespace bhmoe::model::hf {

int64_t size(Size s, const ModelConfig& c) {
  switch (s) {
    case Size::D:
      return c.hidden_size;
    case Size::Dkv:
      return int64_t{c.num_kv_heads} * c.head_dim;
    case Size::N:
      return c.num_experts;
    case Size::F:
      return c.intermediate_size;
    case Size::V:
      return c.vocab_size;
  }
  return 0;
}

std::string layer_name(int layer, std::string_view leaf) {
  return cat(kLayersPrefix, layer, ".", leaf);
}

std::string experts_prefix(int layer) {
  return cat(kLayersPrefix, layer, ".mlp.experts.");
}

std::string expert_name(int layer, int64_t expert, std::string_view leaf) {
  return cat(experts_prefix(layer), expert, ".", leaf);
}

std::string gguf_layer_name(int layer, std::string_view gguf_leaf) {
  return cat("blk.", layer, ".", gguf_leaf, ".weight");
}

}  // namespace bhmoe::model::hf
