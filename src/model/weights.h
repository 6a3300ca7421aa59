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

// A decoder layer. Tensors a family does not have (tensor_names.h: Needs) are empty views
// (data == nullptr).
struct LayerWeights {
  TensorView input_norm;  // [1, D]   input_layernorm
  TensorView q_proj;      // [Dq, D]  (Dq = num_heads * head_dim)
  TensorView k_proj;      // [Dkv, D] (Dkv = num_kv_heads * head_dim)
  TensorView v_proj;      // [Dkv, D]
  TensorView q_bias;      // [1, Dq]  qkv_bias only
  TensorView k_bias;      // [1, Dkv] qkv_bias only
  TensorView v_bias;      // [1, Dkv] qkv_bias only
  TensorView o_proj;      // [D, Dq]
  TensorView q_norm;      // [1, Dq] over the whole projection (OLMoE), [1, hd] per head (Qwen3)
  TensorView k_norm;      // [1, Dkv] (OLMoE), [1, hd] (Qwen3)
  TensorView post_norm;   // [1, D]   post_attention_layernorm
  TensorView router;      // [N, D]   mlp.gate
  std::vector<ExpertWeights> experts;  // N
  // Qwen2-MoE's shared expert (Fs = shared_expert_intermediate_size) and its sigmoid gate.
  TensorView shared_gate_proj;  // [Fs, D]
  TensorView shared_up_proj;    // [Fs, D]
  TensorView shared_down_proj;  // [D, Fs]
  TensorView shared_gate;       // [1, D]  mlp.shared_expert_gate
};

struct Weights {
  TensorView embed;  // [V, D] model.embed_tokens
  std::vector<LayerWeights> layers;
  TensorView final_norm;  // [1, D] model.norm
  TensorView lm_head;     // [V, D] (the embedding when tie_word_embeddings)
};

}  // namespace bhmoe::model
