// The model's weights: named, non-owning views into the mmapped safetensors file(s) (or, for
// --weights q8, into buffers quantised once at load). Immutable after loading; shared by every
// sequence and thread.
#pragma once

#include <string>
#include <vector>

#include "kernels/matrix.h"

namespace bhmoe::model {

using kernels::DType;

// A checkpoint tensor as a kernel matrix, with its name for messages. Vectors have rows == 1.
struct TensorView : kernels::Matrix {
  std::string name;
};

// One expert's SwiGLU FFN. With the fused transformers-5 layout these point into the fused tensors.
struct ExpertWeights {
  TensorView gate;  // [F, D]
  TensorView up;    // [F, D]
  TensorView down;  // [D, F]
};

struct LayerWeights {
  TensorView input_norm;   // [1, D]   input_layernorm
  TensorView q_proj;       // [D, D]
  TensorView k_proj;       // [D_kv, D]  (D_kv = num_kv_heads * head_dim)
  TensorView v_proj;       // [D_kv, D]
  TensorView o_proj;       // [D, D]
  TensorView q_norm;       // [1, D]   over the whole projection, not per head
  TensorView k_norm;       // [1, D_kv]
  TensorView post_norm;    // [1, D]   post_attention_layernorm
  TensorView router;       // [N, D]   mlp.gate
  std::vector<ExpertWeights> experts;  // N
};

struct Weights {
  TensorView embed;        // [V, D] model.embed_tokens
  std::vector<LayerWeights> layers;
  TensorView final_norm;   // [1, D] model.norm
  TensorView lm_head;      // [V, D] (the embedding when tie_word_embeddings)
};

}  // namespace bhmoe::model
